import CSiloLinux
import Glibc
import Silo

/// Runs a program with the terminal attached and extra environment; returns its exit code
/// (128 + signal if a signal ended it). The program is tied to silo (SIGKILLed if silo dies), runs
/// in a mount namespace of its own (what it mounts goes with it, and never shows on the host), and
/// keeps `keep` open (the descriptor that holds a temporary LUN's device bound: while any process
/// it starts still runs, the device stays theirs, whatever happens to silo).
func runForeground(_ program: String, _ arguments: [String], environment: [String: String], keep: Int32) throws -> Int32 {
    // An inherited entry of a name given here goes: with two, getenv in C (and Go's copy) takes
    // the first, the inherited one, and a command told SILO_LUN_DEVICE would write elsewhere.
    var entries: [String] = []
    var index = 0
    while let entry = environ[index] {
        let text = String(cString: entry)
        index += 1
        if let equals = text.firstIndex(of: "="), environment[String(text[..<equals])] != nil { continue }
        entries.append(text)
    }
    entries += environment.map { "\($0.key)=\($0.value)" }
    let argv = arguments.map { strdup($0) } + [nil]
    let envp = entries.map { strdup($0) } + [nil]
    defer {
        argv.forEach { free($0) }
        envp.forEach { free($0) }
    }
    // No signal blocked (silo blocks SIGINT for its own use), SIGPIPE at its default (silo ignores
    // it for itself); what silo's caller ignored stays ignored.
    let pid = silo_spawn_scoped(program, argv, envp, keep, 1)
    guard pid > 0 else {
        let result = errno
        // As a shell says it: 127 for a program not found, 126 for one found but not runnable.
        let code: SiloError.Code = result == ENOENT ? .objectNotFound : result == EACCES || result == EPERM ? .accessDenied : .systemCallFailed
        let error = SiloError(code, "cannot run '\(program)': \(String(cString: strerror(result)))",
                              field: "command", value: program)
        printError("Error: \(CLIFailure(error: error, option: "COMMAND"))")
        return result == ENOENT ? 127 : 126
    }
    var status: Int32 = 0
    while waitpid(pid, &status, 0) < 0, errno == EINTR {}
    return (status & 0x7f) == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
}
