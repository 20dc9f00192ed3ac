import ArgumentParser
import Silo

struct StorageCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "storage", abstract: "The storage subsystem as a whole.", subcommands: [Reenumerate.self]
    )

    struct Reenumerate: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "reenumerate",
            abstract: "Reconcile the registry with the kernel: re-attach after a reboot, repair what crashed calls left."
        )
        @OptionGroup var global: GlobalOptions
        @Flag(help: "Print JSON.") var json = false

        func run() throws {
            let report = try waitShowingProgress(try cli { try global.provider.reenumerate() })
            if json { return try printJSON(report) }
            let lines: [(String, [String])] = [
                ("attached", report.attached), ("rolled back", report.rolledBack), ("repaired", report.repaired),
                ("orphan devices detached", report.orphanDevicesDetached),
                ("orphan files removed", report.orphanFilesRemoved), ("links fixed", report.linksFixed),
                ("drift", report.drift),
            ]
            let done = lines.filter { !$0.1.isEmpty }
            if done.isEmpty { print("in step: nothing to repair") }
            for (label, items) in done { print("\(label): \(items.joined(separator: "; "))") }
        }
    }
}
