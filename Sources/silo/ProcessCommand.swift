import ArgumentParser
import Glibc
import Silo

struct ProcessCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "process",
        abstract: "Processes inside a running compute system, started by its agent.",
        subcommands: [Create.self, List.self, Signal.self, Kill.self, Wait.self]
    )

    struct Create: HotCommand {
        static let configuration = CommandConfiguration(
            commandName: "create",
            abstract: "Start a process in a running system; attached by default: exit with its code.",
            discussion: """
                Attached, the process gets this command's stdin, stdout and stderr as they are, and \
                SIGINT, SIGTERM and SIGHUP sent to this command go to it. --detach prints its pid and \
                leaves it running, with /dev/null for stdio.
                """
        )
        @OptionGroup var global: GlobalOptions
        @Argument(help: "The system's id.") var id: String
        @Option(help: "A ProcessParameters JSON document (the command may come from it instead).") var config: String?
        @Option(help: "Working directory inside (absolute).") var cwd: String?
        @Option(parsing: .unconditionalSingleValue, help: "An environment variable, NAME=VALUE (repeatable).") var env: [String] = []
        @Option(help: "A user name, uid or uid:gid inside.") var user: String?
        @Flag(help: "Print the pid and leave the process running.") var detach = false
        @Flag(name: [.customShort("t"), .long], help: "Give the process a terminal of its own (a console), relayed to this one.")
        var tty = false
        @Flag(help: "With --detach: print the process as JSON ({\"ProcessId\": N}).") var json = false
        @Argument(parsing: .postTerminator, help: "The command and its arguments, after --.") var command: [String] = []

        var invocation: Invocation {
            Invocation(global: global.values, id: id, config: config, cwd: cwd, env: env, user: user, detach: detach, tty: tty,
                       json: json, command: command)
        }

        func run() throws { try invocation.run() }

        struct Invocation: HotInvocation {
            var global: Globals
            var id: String
            var config: String?
            var cwd: String?
            var env: [String] = []
            var user: String?
            var detach = false
            var tty = false
            var json = false
            var command: [String] = []

            func run() throws {
                let arguments = command
                // Blocked before the process exists, and before the console's size is read: a
                // SIGTERM or SIGHUP (or a window change) that comes while it starts waits for the
                // relay to pass it on, rather than ending this command (and leaving a terminal raw)
                // with the process running on, or being lost.
                if !detach { blockForwardedSignals() }
                let parameters = try cli(options: ["document": "--config", "environment": "--env", "command": "CMD", "tty": "--tty",
                                                   "cwd": "--cwd", "json": "--json"].merging(user == nil ? [:] : ["User": "--user"]) { $1 },
                                         document: "--config") { () throws(SiloError) -> ProcessParameters in
                    var parameters: ProcessParameters
                    if let config {
                        guard let text = readWholeFile(config) else {
                            throw SiloError.invalidArgument(field: "document", value: config, reason: "cannot read the file")
                        }
                        parameters = try ProcessParameters(json: text)
                        if !arguments.isEmpty { parameters.arguments = arguments }
                    } else {
                        guard !arguments.isEmpty else { throw SiloError.missingArgument(field: "command", reason: "give a command after --") }
                        parameters = ProcessParameters(arguments: arguments)
                    }
                    if !arguments.isEmpty, arguments[0].isEmpty {
                        throw SiloError.missingArgument(field: "command", reason: "the program to run is an empty word")
                    }
                    if let cwd {
                        guard cwd.hasPrefix("/") else { throw SiloError.invalidArgument(field: "cwd", value: cwd, reason: "an absolute path") }
                        parameters.workingDirectory = cwd
                    }
                    for item in env {
                        guard let equals = item.firstIndex(of: "="), equals != item.startIndex else {
                            throw SiloError.invalidArgument(field: "environment", value: item, reason: "use NAME=VALUE")
                        }
                        parameters.environment[String(item[..<equals])] = String(item[item.index(after: equals)...])
                    }
                    if let user { parameters.user = user }
                    // An attached process's stdout is the process's own: no JSON of Silo's goes there.
                    guard !json || detach else {
                        throw SiloError.invalidArgument(field: "json", value: "--json", reason: "JSON is printed for a --detach process only")
                    }
                    if tty {
                        guard isatty(0) == 1 else { throw SiloError.invalidArgument(field: "tty", value: "stdin", reason: "stdin is not a terminal") }
                        // A background job (`&`) would be stopped by its terminal at the first
                        // change of its settings, and could then be ended only by SIGKILL.
                        guard tcgetpgrp(0) == getpgrp() else {
                            throw SiloError.invalidArgument(field: "tty", value: "--tty", reason: "this command is not the terminal's foreground job")
                        }
                        guard !detach else { throw SiloError.invalidArgument(field: "tty", value: "--detach", reason: "a detached process has no terminal to relay") }
                        parameters.emulateConsole = true
                        parameters.consoleSize = terminalSize()
                        if let term = getenv("TERM") { parameters.environment["TERM"] = String(cString: term) }
                    }
                    return parameters
                }
                // A user given here is --user's; one from a document is the document's.
                try act(global, id, onCaller: true, options: ["User": user == nil ? "--config" : "--user"]) { system in
                    if detach {
                        let process = try system.createProcess(parameters, standardStreams: [-1, -1, -1]).wait()
                        defer { process.close() }
                        if json { print(#"{"ProcessId":\#(process.pid)}"#) } else { print(process.pid) }
                        return
                    }
                    if tty {
                        let process = try system.createProcess(parameters).wait()
                        defer { process.close() }
                        throw ExitCode(try relayTerminal(process))
                    }
                    // In a background job, the terminal is the foreground's to read: the process, in
                    // a session of its own, would not be stopped as a shell's own job is (SIGTTIN),
                    // and would take its keys. It reads nothing then, as a shell without job
                    // control gives `&` /dev/null.
                    let background = isatty(0) == 1 && tcgetpgrp(0) != getpgrp()
                    let process = try system.createProcess(parameters, standardStreams: [background ? -1 : 0, 1, 2]).wait()
                    defer { process.close() }
                    throw ExitCode(try waitForwardingSignals(process))
                }
            }
        }
    }

    struct List: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "list", abstract: "The processes of a running system (pids inside; 1 is Silo's agent).")
        @OptionGroup var global: GlobalOptions
        @Argument(help: "The system's id.") var id: String
        @Flag(help: "Print JSON.") var json = false

        func run() throws {
            try act(global, id) { system in
                let processes = try system.processes()
                if json { return try printJSON(processes) }
                printTable(["PID", "COMMAND"], processes.map { ["\($0.processId)", $0.commandLine] })
            }
        }
    }

    struct Signal: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "signal", abstract: "Send a signal to a process.")
        @OptionGroup var global: GlobalOptions
        @Argument(help: "The system's id.") var id: String
        @Argument(help: "The process's pid inside the system.") var pid: Int32
        @Option(help: "A signal name or number: TERM, INT, HUP, KILL, USR1, 15...") var signal = "TERM"

        func run() throws {
            let number = try cli(options: ["signal": "--signal"]) { () throws(SiloError) -> Int32 in try signalNumber(signal) }
            try act(global, id) { system in
                let process = try system.openProcess(pid)
                defer { process.close() }
                try process.signal(number).wait()
            }
        }
    }

    struct Kill: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "kill", abstract: "Terminate a process (SIGKILL).")
        @OptionGroup var global: GlobalOptions
        @Argument(help: "The system's id.") var id: String
        @Argument(help: "The process's pid inside the system.") var pid: Int32

        func run() throws {
            try act(global, id) { system in
                let process = try system.openProcess(pid)
                defer { process.close() }
                try process.terminate().wait()
            }
        }
    }

    struct Wait: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "wait", abstract: "Wait for a process to exit; exit with its code.")
        @OptionGroup var global: GlobalOptions
        @Argument(help: "The system's id.") var id: String
        @Argument(help: "The process's pid inside the system.") var pid: Int32
        @Flag(help: "Print its status as JSON.") var json = false

        func run() throws {
            try act(global, id) { system in
                let process = try system.openProcess(pid)
                defer { process.close() }
                // Only waits: Ctrl-C, or a `timeout`'s SIGTERM, stops the waiting, not the process.
                let code = try waitForwardingSignals(process, forward: false)
                if json { try printJSON(process.status) }
                throw ExitCode(code)
            }
        }
    }
}

/// Blocks the signals an attached process's relay passes on (SIGINT, SIGTERM, SIGHUP, SIGWINCH).
func blockForwardedSignals() {
    var forwarded = sigset_t()
    sigemptyset(&forwarded)
    for signal in [SIGINT, SIGTERM, SIGHUP, SIGWINCH] { sigaddset(&forwarded, signal) }
    pthread_sigmask(SIG_BLOCK, &forwarded, nil)
}

/// Waits for `process` to exit, passing SIGINT, SIGTERM and SIGHUP sent to this command on to it;
/// returns its exit code.
/// - Throws: what the wait throws but its timeout: `connectionClosed` when the process's exit can no
///   longer reach this handle (the agent forgot it), which no further wait would change.
/// - Parameter forward: false for a command that only watches: such a signal ends the waiting,
///   with 128 + its number as a shell reports it, and the process runs on untouched.
func waitForwardingSignals(_ process: ComputeProcess, forward: Bool = true) throws -> Int32 {
    var forwarded = sigset_t()
    sigemptyset(&forwarded)
    for signal in [SIGINT, SIGTERM, SIGHUP] { sigaddset(&forwarded, signal) }
    blockForwardedSignals()
    var tick = timespec(tv_sec: 0, tv_nsec: 0)
    while true {
        do throws(SiloError) {
            if let code = try process.wait(timeout: .milliseconds(50)).exitCode { return code }
        } catch {
            if error.code != .operationTimeout { throw error }
        }
        let signal = sigtimedwait(&forwarded, nil, &tick)
        guard signal > 0 else { continue }
        if !forward { return 128 + signal }
        _ = try? process.signal(signal).wait(timeout: .seconds(5))
    }
}

func signalNumber(_ text: String) throws(SiloError) -> Int32 {
    let names: [String: Int32] = ["HUP": SIGHUP, "INT": SIGINT, "QUIT": SIGQUIT, "KILL": SIGKILL, "USR1": SIGUSR1, "USR2": SIGUSR2,
                                  "TERM": SIGTERM, "CONT": SIGCONT, "STOP": SIGSTOP, "WINCH": SIGWINCH, "ALRM": SIGALRM]
    let name = text.uppercased().hasPrefix("SIG") ? String(text.uppercased().dropFirst(3)) : text.uppercased()
    if let number = names[name] ?? Int32(text), (1...64).contains(number) { return number }
    throw SiloError.invalidArgument(field: "signal", value: text, reason: "a signal name (TERM, INT, KILL, ...) or a number 1...64")
}
