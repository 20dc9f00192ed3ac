import ArgumentParser
import Glibc
import Silo

@main
struct SiloCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "silo",
        abstract: "Provision block storage and process sandboxes on real Linux kernel parts.",
        discussion: """
            Exit codes: 0 success; 1 the operation failed; 64 bad usage or a bad value (the message \
            names the option); 130 cancelled with Ctrl-C and rolled back.
            State lives in --state-dir (or SILO_STATE_DIR), /var/lib/silo by default.
            """,
        subcommands: [DriveCommand.self, LunCommand.self, PoolCommand.self, StorageCommand.self, SystemCommand.self, ProcessCommand.self, RunCommand.self]
    )

    static func main() {
        // Block SIGINT before any thread starts, so every thread inherits the mask and Ctrl-C
        // waits for the progress loop to take it and cancel the running operation.
        var interrupt = sigset_t()
        sigemptyset(&interrupt)
        sigaddset(&interrupt, SIGINT)
        pthread_sigmask(SIG_BLOCK, &interrupt, nil)
        main(Array(placingGlobalOptions(Array(CommandLine.arguments.dropFirst()))))
    }

    /// ArgumentParser reads a subcommand's options only after its name, while scripts write
    /// `silo --state-dir D lun list`: move the global options written before the subcommand path
    /// to just after it (never past a `--`).
    static func placingGlobalOptions(_ arguments: [String]) -> [String] {
        var globals: [String] = []
        var rest = arguments[...]
        while let first = rest.first, first.hasPrefix("--state-dir") {
            rest = rest.dropFirst()
            globals.append(first)
            if first == "--state-dir", let value = rest.first {
                globals.append(value)
                rest = rest.dropFirst()
            }
        }
        guard !globals.isEmpty else { return arguments }
        var command: any ParsableCommand.Type = SiloCommand.self
        var path: [String] = []
        while let name = rest.first,
              let sub = command.configuration.subcommands.first(where: { $0._commandName == name }) {
            path.append(name)
            command = sub
            rest = rest.dropFirst()
        }
        return path + globals + Array(rest)
    }
}

/// Options every command takes; they may stand before the subcommand: `silo --state-dir D lun list`.
struct GlobalOptions: ParsableArguments {
    @Option(name: .customLong("state-dir"), help: "The state directory (default: $SILO_STATE_DIR or /var/lib/silo).")
    var stateDirectory: String?

    var provider: StorageProvider {
        StorageProvider(configuration: StorageConfiguration(stateDirectory: stateDirectory))
    }
}
