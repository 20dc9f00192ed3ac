import ArgumentParser
import Glibc
import Silo

/// Turns a SiloError into the CLI's message and exit code: 64 for bad input, 1 for failures.
struct CLIFailure: Error, CustomStringConvertible {
    let error: SiloError
    /// The option or argument the library's field corresponds to.
    let option: String?
    /// The error came from a document the user gave (--config): a damaged one is bad input.
    var fromDocument = false

    /// The message, the option, and the error's stable code last (`[deviceInUse]`), which a
    /// script can match where the exit code (1 for every failure) cannot tell failures apart (E1).
    var description: String {
        guard let option else { return "\(error.message) [\(error.code.name)]" }
        return "\(error.message) (\(option)) [\(error.code.name)]"
    }

    var exitCode: ExitCode {
        switch error.code {
        // A process's command that could not be run, as a shell says it: 127 not found, 126 not runnable.
        case _ where error.field == "process" && error.syscall == "exec": ExitCode(error.errno == ENOENT ? 127 : 126)
        // A name already taken is bad input, a LUN's (invalidArgument) and a system's alike.
        case .invalidArgument, .invalidShrinkSize, .systemAlreadyExists: ExitCode(64)
        case .invalidJSON where fromDocument: ExitCode(64)
        case .operationCancelled: ExitCode(128 + cancellingSignal.load(ordering: .relaxed))
        default: .failure
        }
    }
}

/// The library names fields; the CLI names options.
let optionNames: [String: String] = [
    "size": "--size", "name": "NAME", "by": "--by", "to": "--to", "block size": "--block-size",
    "unmasking list": "--mask", "drive": "--drive", "provisioning": "--provisioning", "type": "--type",
    "state directory": "--state-dir", "friendly name": "--friendly-name", "pool": "--pool",
    "file system": "--filesystem", "label": "--label", "cwd": "--cwd", "cgroup parent": "SILO_CGROUP_PARENT", "pid": "PID",
]

/// Runs a library call; a SiloError becomes a message naming the option, and the exit code.
/// `options` maps the library's fields to this command's options where they differ from the usual.
/// `document`: the option of a JSON document the body reads (--config): its errors (a field's
/// JSON path, a damaged document) name that option and are bad input.
/// `typed`: what the user wrote for fields the command parsed (a size): the error shows that,
/// not the number it was read as ('5G', not '5368709120').
func cli<T>(options: [String: String] = [:], document: String? = nil, typed: [String: String] = [:],
            _ body: () throws -> T) throws -> T {
    do {
        return try body()
    } catch var error as SiloError {
        // Only the value in the factory's "invalid <field> '<value>'" opening: a LUN or pool name
        // elsewhere in the message may spell the same number.
        if let field = error.field, let text = typed[field], let value = error.value, value != text {
            let opening = "invalid \(field) '\(value)'"
            if error.message.hasPrefix(opening) {
                error.message = "invalid \(field) '\(text)'" + error.message.dropFirst(opening.count)
            }
            error.value = text
        }
        var option = error.field.flatMap { options[$0] ?? optionNames[$0] }
        let fromDocument = document != nil && error.code == .invalidJSON
        if fromDocument, option == nil { option = document }
        let failure = CLIFailure(error: error, option: option, fromDocument: fromDocument)
        printError("Error: \(failure)")
        // What else went wrong on the way (a rollback that failed, the step a cancel stopped):
        // one indented line each, after the line scripts match.
        // One the line says already (a wrapped error's own text) is not said twice; a message of
        // several lines (a tool's output) stays indented.
        for event in error.events where !error.message.contains(event.message) {
            let lines = event.message.split(separator: "\n", omittingEmptySubsequences: false)
            var text = "  \(event.source ?? "detail"): \(lines.first ?? "")"
            for line in lines.dropFirst() { text += "\n    " + line }
            printError(text)
        }
        throw failure.exitCode
    }
}

func printError(_ text: String) {
    var standardError = StandardError()
    print(text, to: &standardError)
}

struct StandardError: TextOutputStream {
    mutating func write(_ string: String) {
        writeStandardError(string)
    }
}

/// Writes to file descriptor 2 directly: C's `stderr` is shared mutable state to Swift 6.
func writeStandardError(_ text: String) {
    var text = text
    text.withUTF8 { bytes in
        var offset = 0
        while offset < bytes.count {
            let written = Glibc.write(2, bytes.baseAddress.map { $0 + offset }, bytes.count - offset)
            if written <= 0 { return }
            offset += written
        }
    }
}
