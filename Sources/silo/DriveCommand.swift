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
                        // A partition in the table that the kernel made no device for: "table", not "part".
                        rows.append(["└─" + part.name, human(part.size), part.devicePath == nil ? "table" : "part", part.filesystemType,
                                     part.filesystemLabel, part.mountPoints.joinedPlainly(","), nil])
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
            ] + drive.partitions.map { part in ("partition \(part.number)", Self.describe(part)) }
            printTable(["PROPERTY", "VALUE"], facts.map { [$0.0, $0.1] })
        }

        /// "/dev/vda1, 512M at 1M, type 0x83, partuuid 5110cafe-01, ext4, label data", naming no
        /// device for a partition the kernel made none for.
        static func describe(_ part: DrivePartition) -> String {
            var facts: [String] = [part.devicePath ?? "no device (the kernel made none)"]
            facts.append(human(part.size) + " at " + human(part.start))
            if let type = part.partitionType { facts.append("type " + type) }
            if let name = part.partitionLabel { facts.append("name " + name) }
            if let uuid = part.partitionUUID { facts.append("partuuid " + uuid) }
            if let type = part.filesystemType { facts.append(type) }
            if let label = part.filesystemLabel { facts.append("label " + label) }
            if !part.mountPoints.isEmpty { facts.append("mounted at " + part.mountPoints.joined(separator: " ")) }
            return facts.joined(separator: ", ")
        }
    }
}
