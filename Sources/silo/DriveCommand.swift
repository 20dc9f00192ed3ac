import ArgumentParser
import Silo
import SiloOperations

struct DriveCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "drive", abstract: "The host's block devices (read-only).",
        subcommands: [List.self, Show.self]
    )

    struct List: HotCommand {
        static let configuration = CommandConfiguration(commandName: "list", abstract: "List drives, with their partitions and file systems.")
        @OptionGroup var global: GlobalOptions
        @Flag(help: "Print JSON.") var json = false

        var invocation: Invocation { Invocation(global: global.values, json: json) }

        func run() throws { try invocation.run() }

        struct Invocation: HotInvocation {
            var global: Globals
            var json = false

            func run() throws {
                let drives = try cli { try global.provider.drives() }
                if json { return print(Drive.json(drives)) }
                var rows: [[String?]] = []
                for drive in drives {
                    rows.append([drive.name, human(drive.size), drive.busType, drive.partitionTableType ?? drive.filesystemType,
                                 drive.filesystemLabel, drive.mountPoints.joinedPlainly(","), drive.id])
                    for part in drive.partitions {
                        rows.append(["└─" + part.name, human(part.size), "part", part.filesystemType, part.filesystemLabel,
                                     part.mountPoints.joinedPlainly(","), nil])
                    }
                }
                printTable(["NAME", "SIZE", "BUS", "TYPE", "LABEL", "MOUNTPOINTS", "ID"], rows)
            }
        }
    }

    struct Show: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "show", abstract: "Show one drive by id, name (vda) or path (/dev/vda).")
        @OptionGroup var global: GlobalOptions
        @Argument(help: "The drive's id, kernel name or device path.") var id: String
        @Flag(help: "Print JSON.") var json = false

        func run() throws {
            let drive = try cli(options: ["drive": "ID"]) { try global.provider.drive(id) }
            if json { return print(drive.json) }
            let facts: [(String, String?)] = [
                ("id", drive.id), ("device", drive.devicePath), ("size", "\(human(drive.size)) (\(drive.size) bytes)"),
                ("bus", drive.busType), ("model", drive.model), ("vendor", drive.vendor), ("serial", drive.serial),
                ("wwn", drive.wwn), ("sectors", "\(drive.logicalSectorSize) logical, \(drive.physicalSectorSize) physical"),
                ("rotational", "\(drive.isRotational)"), ("removable", "\(drive.isRemovable)"),
                ("read-only", "\(drive.isReadOnly)"), ("partition table", drive.partitionTableType),
                ("file system", drive.filesystemType), ("uuid", drive.filesystemUUID), ("label", drive.filesystemLabel),
                ("mount points", drive.mountPoints.joined(separator: ", ")),
                ("holders", drive.holders.joined(separator: ", ")), ("pool", drive.pool),
                ("LUN extents", drive.extents.map { "\($0.lun) \(human($0.allocatedBytes))" }.joined(separator: ", ")),
            ]
            printTable(["PROPERTY", "VALUE"], facts.map { [$0.0, $0.1] })
        }
    }
}
