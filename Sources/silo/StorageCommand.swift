import ArgumentParser
import Silo

struct StorageCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "storage", abstract: "The storage subsystem as a whole.", subcommands: [Reenumerate.self, Orphans.self]
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

    struct Orphans: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "orphans",
            abstract: "Silo's loop devices on the whole host that no state directory claims (its state directory or pool removed while they were attached), and stable names of no device.",
            discussion: "A device is claimed when the state directory its pool's marker names, --state-dir, or the default one has a LUN with its id. With --detach, orphans nothing holds are detached (a device whose backing file was deleted holds the only copy of its data: gone once detached) and stale names removed."
        )
        @OptionGroup var global: GlobalOptions
        @Flag(help: "Detach the orphans nothing holds, and remove the stale names.") var detach = false
        @Flag(help: "Print JSON.") var json = false

        func run() throws {
            let report = try cli { try global.provider.orphans(detach: detach) }
            if json { return try printJSON(report) }
            if report.devices.isEmpty && report.staleNames.isEmpty && report.undetermined.isEmpty {
                return print("no orphans")
            }
            for device in report.devices {
                let outcome = detach ? (device.detached ? "detached" : "kept: \(device.kept ?? "")") : "orphan"
                print("\(device.devicePath)  silo:\(device.lunID)  \(device.backingFile)  \(outcome): \(device.reason)")
            }
            for name in report.staleNames { print("\(name)  \(detach ? "removed" : "stale"): names no device of Silo's") }
            for item in report.undetermined { print("left alone: \(item)") }
        }
    }
}
