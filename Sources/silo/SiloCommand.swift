import ArgumentParser
import CSiloLinux
import Glibc
import Silo

@main
struct SiloCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "silo",
        abstract: "Provision block storage and process sandboxes on real Linux kernel parts.",
        discussion: """
            Exit codes: 0 success; 1 the operation failed; 64 bad usage or a bad value (the message \
            names the option); 130 cancelled with Ctrl-C and rolled back (or, after a second Ctrl-C, quit: reenumerate tidies), 143 or 129 by SIGTERM or SIGHUP; lun temporary, run and process create exit with their command's code (127 not found, 126 not runnable).
            State lives in --state-dir (or SILO_STATE_DIR), /var/lib/silo by default. Systems' \
            cgroups go under silo/ in each hierarchy, or under SILO_CGROUP_PARENT (a delegated subtree). Silo's init is SILO_INIT, else silo-init beside silo, else in /usr/local/libexec/silo or /usr/libexec/silo.
            """,
        version: siloVersion,
        subcommands: [DriveCommand.self, LunCommand.self, PoolCommand.self, StorageCommand.self, SystemCommand.self, ProcessCommand.self, RunCommand.self]
    )

    static func main() {
        // Block SIGINT before any thread starts, so every thread inherits the mask and Ctrl-C
        // waits for the command's wait loop to take it (Interrupts, in Progress.swift).
        var interrupt = sigset_t()
        sigemptyset(&interrupt)
        sigaddset(&interrupt, SIGINT)
        pthread_sigmask(SIG_BLOCK, &interrupt, nil)
        // A SIGCHLD ignored by whoever started silo would reap its children before it could wait
        // for them (and read their exit codes): silo takes its children's exits itself.
        signal(SIGCHLD, SIG_DFL)
        // A reader that quits (`silo lun list | head -1`, a pager closed on a --tty relay) must not
        // kill silo mid-operation, leaving a create half made or a terminal raw: a write fails
        // with EPIPE instead. Sandboxes and the programs silo runs get SIGPIPE's default back.
        signal(SIGPIPE, SIG_IGN)
        assert(everyCommandNamed(SiloCommand.self), "a command without configuration.commandName")
        // What ParsableCommand.main(_:) does, with three shortcuts that change no output.
        do {
            let arguments = Array(CommandLine.arguments.dropFirst())
            if let invocation = QuickParse.parse(arguments) {
                try invocation.run()
            } else {
                var command = try parsed(placingGlobalOptions(arguments))
                try command.run()
            }
            flushStandardOutput()
        } catch let code as ExitCode {
            flushStandardOutput()
            // exit(withError:) prints nothing for an ExitCode, but renders the root's usage first.
            Glibc.exit(code.rawValue)
        } catch {
            flushStandardOutput()
            exit(withError: error)
        }
    }

    /// Standard output written, or the command fails: JSON cut short by a full disk must not exit
    /// 0. A reader that quit (a pipe's EPIPE) ends silo as SIGPIPE would have, as other tools end.
    static func flushStandardOutput() {
        let error = silo_flush_standard_output()
        guard error != 0 else { return }
        // An earlier write failed (its error is gone): a pipe whose reader quit polls as POLLERR.
        var output = pollfd(fd: 1, events: 0, revents: 0)
        let readerGone = error < 0 && poll(&output, 1, 0) == 1 && output.revents & Int16(POLLERR) != 0
        if error == EPIPE || readerGone {
            signal(SIGPIPE, SIG_DFL)
            raise(SIGPIPE)
        }
        printError("Error: cannot write standard output" + (error > 0 ? ": \(String(cString: strerror(error)))" : "") + " [systemCallFailed]")
        Glibc.exit(1)
    }

    /// Parses the leaf command the arguments name on its own, without the tree above it: the
    /// whole tree costs the start-up a reflection pass over every command type. Anything but a
    /// clean parse of that leaf (help, a completion script, a usage error, a path that stops short
    /// of a leaf) is parsed again from the root, so its output names the full command path.
    static func parsed(_ arguments: [String]) throws -> any ParsableCommand {
        var command: any ParsableCommand.Type = SiloCommand.self
        var rest = arguments[...]
        while let name = rest.first, let sub = subcommand(of: command, named: name) {
            command = sub
            rest = rest.dropFirst()
        }
        if command != SiloCommand.self, command.configuration.subcommands.isEmpty,
           let leaf = try? command.parseAsRoot(Array(rest)), type(of: leaf) == command {
            return leaf
        }
        return try parseAsRoot(arguments)
    }

    /// The subcommand of `command` called `name` or one of its aliases (`system show`).
    static func subcommand(of command: any ParsableCommand.Type, named name: String) -> (any ParsableCommand.Type)? {
        command.configuration.subcommands.first { $0._commandName == name || $0.configuration.aliases.contains(name) }
    }

    /// ArgumentParser reads a subcommand's options only after its name, while scripts write
    /// `silo --state-dir D lun list` (or `silo lun --state-dir D list`): move the global options
    /// written before or within the subcommand path to just after it (never past a `--`).
    static func placingGlobalOptions(_ arguments: [String]) -> [String] {
        var globals: [String] = []
        var command: any ParsableCommand.Type = SiloCommand.self
        var path: [String] = []
        var rest = arguments[...]
        while let first = rest.first {
            if first == "--state-dir" || first.hasPrefix("--state-dir=") {
                rest = rest.dropFirst()
                globals.append(first)
                if first == "--state-dir", let value = rest.first {
                    globals.append(value)
                    rest = rest.dropFirst()
                }
            } else if let sub = subcommand(of: command, named: first) {
                path.append(first)
                command = sub
                rest = rest.dropFirst()
            } else {
                break
            }
        }
        guard !globals.isEmpty else { return arguments }
        return path + globals + Array(rest)
    }
}

/// Every command names itself in its configuration (`commandName:`), though ArgumentParser would
/// derive the same name from the type's: that derivation is `String(describing: Self.self)`, each
/// of which scans the binary's protocol conformance tables several times over, and the parser asks
/// every command of the tree for its name (about 1.5 ms of each start, of 5, in a static-stdlib
/// build). Checked in debug builds, which the tests run.
func everyCommandNamed(_ command: any ParsableCommand.Type) -> Bool {
    command.configuration.commandName != nil && command.configuration.subcommands.allSatisfy(everyCommandNamed)
}

/// Options every command takes; they may stand before the subcommand: `silo --state-dir D lun list`.
struct GlobalOptions: ParsableArguments {
    @Option(name: .customLong("state-dir"), help: "The state directory (default: $SILO_STATE_DIR or /var/lib/silo).")
    var stateDirectory: String?

    func validate() throws {
        // An empty value would be read as the working directory (an empty SILO_STATE_DIR means unset).
        if stateDirectory?.isEmpty == true { throw ValidationError("invalid state-dir '': give a folder (--state-dir) [invalidArgument]") }
    }

    var values: Globals { Globals(stateDirectory: stateDirectory) }
    var provider: StorageProvider { values.provider }
}

/// The global options as plain values, which the hot commands run with (see `HotCommand`).
struct Globals: Equatable {
    var stateDirectory: String?

    var provider: StorageProvider {
        StorageProvider(configuration: StorageConfiguration(stateDirectory: stateDirectory, lockWaitGivesUp: Self.interrupted))
    }

    /// For the calls that end in milliseconds, with nothing to show or cancel meanwhile (a create
    /// that writes no zeros, a delete): they run on this command's own thread, with no worker
    /// thread to start and hand over to.
    var quickProvider: StorageProvider {
        StorageProvider(configuration: StorageConfiguration(stateDirectory: stateDirectory, scheduler: Self.onCaller,
                                                            lockWaitGivesUp: Self.interrupted))
    }

    static let onCaller = OperationScheduler(runsOnCaller: true)

    /// Whether a Ctrl-C came, or a SIGTERM or SIGHUP kept for an operation's wait (and takes it): a
    /// call waiting for another silo's registry lock then gives up, with nothing changed, and the
    /// command exits 130 (143, 129).
    static let interrupted: @Sendable () -> Bool = {
        if takePendingInterrupt() { return true }
        let stop = silo_stop_signal_take()
        if stop != 0 { cancellingSignal.store(stop, ordering: .relaxed) }
        return stop != 0
    }
}

/// A command scripts run in loops, split in two: the ArgumentParser command, which reads its
/// words and documents them, and its `Invocation`, plain values that do the work. `QuickParse`
/// makes the invocation straight from plainly written words, so such a start creates no
/// ArgumentParser command: each property wrapper's first use costs the Swift runtime generic
/// metadata and protocol conformance scans (about 0.25 ms of a `silo lun list` here).
protocol HotCommand: ParsableCommand {
    associatedtype Invocation: HotInvocation
    var invocation: Invocation { get }
}

protocol HotInvocation: Equatable {
    func run() throws
}
