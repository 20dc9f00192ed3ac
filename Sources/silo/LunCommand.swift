import ArgumentParser
import Silo

struct LunCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "lun", abstract: "LUNs: sparse files on loop devices.",
        subcommands: [Create.self, List.self, Show.self, Extend.self, Shrink.self, Delete.self, Mask.self,
                      Online.self, Offline.self, Clone.self, Temporary.self]
    )

    struct Create: HotCommand {
        static let configuration = CommandConfiguration(commandName: "create", abstract: "Create a LUN and attach it; prints its properties.")
        @OptionGroup var global: GlobalOptions
        @Option(parsing: .unconditional, help: "The LUN's name (letters, digits, . _ -; at most 64).") var name: String
        @Option(parsing: .unconditional, help: "Size, such as 512M, 10G, 1GiB or 4096 (bytes).") var size: String
        @Option(help: "thin (sparse), thick (fallocate) or zeroed (written with zeros).") var provisioning = "thin"
        @Option(help: "default or simple; span, stripe, mirror and parity are not supported.") var type = "default"
        @Option(help: "A drive whose pool holds the backing file (repeatable).") var drive: [String] = []
        @Option(help: "The pool that holds the backing file, by name (silo pool list).") var pool: String?
        @Option(parsing: .unconditional, help: "Compute systems that may see it: SYSTEM,... or * (default: none).")
        var mask = ""
        @Option(name: .customLong("block-size"), help: "Logical block size: 512 or 4096.") var blockSize = "512"
        @Flag(name: .customLong("read-only"), help: "Attach read-only.") var readOnly = false
        @Flag(help: "Buffered I/O instead of direct I/O.") var buffered = false
        @Option(name: .customLong("friendly-name"), help: "A free-form description.") var friendlyName: String?
        @Option(help: "Make a file system on it: ext4, ext3, ext2, xfs, btrfs or vfat (its mkfs, on the new device).")
        var filesystem: String?
        @Option(help: "The file system's label (with --filesystem).") var label: String?
        @Flag(help: "Print JSON.") var json = false

        var invocation: Invocation {
            Invocation(global: global.values, name: name, size: size, provisioning: provisioning, type: type, drive: drive,
                       pool: pool, mask: mask, blockSize: blockSize, readOnly: readOnly, buffered: buffered,
                       friendlyName: friendlyName, filesystem: filesystem, label: label, json: json)
        }

        func run() throws { try invocation.run() }

        struct Invocation: HotInvocation {
            var global: Globals
            var name: String
            var size: String
            var provisioning = "thin"
            var type = "default"
            var drive: [String] = []
            var pool: String?
            var mask = ""
            var blockSize = "512"
            var readOnly = false
            var buffered = false
            var friendlyName: String?
            var filesystem: String?
            var label: String?
            var json = false

            func run() throws {
                let spec = try cli(options: ["name": "--name"], typed: ["size": size]) { () throws(SiloError) -> LunSpec in
                    guard let block = UInt32(blockSize) else {
                        throw SiloError.invalidArgument(field: "block size", value: blockSize, reason: "use 512 or 4096")
                    }
                    if let label, filesystem == nil {
                        throw SiloError.invalidArgument(field: "label", value: label, reason: "a label names a file system: give --filesystem too")
                    }
                    return LunSpec(
                        name: name, size: try ByteCount.parse(size), type: try LunType.parse(type),
                        provisioning: try Provisioning.parse(provisioning), drives: drive,
                        unmasking: try UnmaskingList.parse(mask), logicalBlockSize: block,
                        directIO: !buffered, readOnly: readOnly, friendlyName: friendlyName, pool: pool,
                        fileSystem: try filesystem.map { text throws(SiloError) in LunFileSystem(try LunFileSystem.Kind.parse(text), label: label) }
                    )
                }
                // A thick or zeroed LUN may take a while (allocating, writing zeros), and so may a
                // file system: its progress is shown and Ctrl-C cancels it. A thin one is made in
                // milliseconds.
                let provider = spec.provisioning == .thin && spec.fileSystem == nil ? global.quickProvider : global.provider
                let lun = try waitShowingProgress(try cli(options: ["name": "--name"], typed: ["size": size]) { try provider.createLun(spec) },
                                                  options: ["name": "--name"], typed: ["size": size])
                if json { return print(lun.json) }
                printLuns([lun])
            }
        }
    }

    struct List: HotCommand {
        static let configuration = CommandConfiguration(commandName: "list", abstract: "List LUNs.")
        @OptionGroup var global: GlobalOptions
        @Flag(help: "Print JSON.") var json = false

        var invocation: Invocation { Invocation(global: global.values, json: json) }

        func run() throws { try invocation.run() }

        struct Invocation: HotInvocation {
            var global: Globals
            var json = false

            func run() throws {
                let luns = try cli { try global.provider.luns() }
                if json { return print(LunProperties.json(luns)) }
                printLuns(luns)
            }
        }
    }

    struct Show: HotCommand {
        static let configuration = CommandConfiguration(commandName: "show", abstract: "Show one LUN's properties.")
        @OptionGroup var global: GlobalOptions
        @Argument(help: "The LUN's name.") var name: String
        @Flag(help: "Print JSON.") var json = false

        var invocation: Invocation { Invocation(global: global.values, name: name, json: json) }

        func run() throws { try invocation.run() }

        struct Invocation: HotInvocation {
            var global: Globals
            var name: String
            var json = false

            func run() throws {
                let lun = try cli { try global.provider.lun(named: name) }
                if json { return print(lun.json) }
                let facts: [(String, String?)] = [
                    ("name", lun.name), ("id", lun.id), ("friendly name", lun.friendlyName), ("type", lun.type),
                    ("size", "\(human(lun.size)) (\(lun.size) bytes)"), ("allocated", human(lun.allocatedBytes)),
                    ("block size", "\(lun.logicalBlockSize)"), ("provisioning", lun.provisioning.rawValue),
                    ("status", lun.status.rawValue), ("device", lun.devicePath), ("link", lun.link),
                    ("backing file", lun.backingFile), ("serial", lun.serialNumber),
                    ("unmasking list", lun.unmaskingList.isEmpty ? "(none)" : lun.unmaskingList),
                    ("read-only", "\(lun.readOnly)"), ("direct I/O", "\(lun.directIO)"),
                ]
                printTable(["PROPERTY", "VALUE"], facts.map { [$0.0, $0.1] })
            }
        }
    }

    struct Extend: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "extend", abstract: "Grow a LUN online, by or to a size.")
        @OptionGroup var global: GlobalOptions
        @Argument(help: "The LUN's name.") var name: String
        @Option(parsing: .unconditional, help: "Bytes to add, such as 1G.") var by: String?
        @Option(parsing: .unconditional, help: "The new size, such as 20G.") var to: String?
        @Flag(help: "Print JSON.") var json = false

        func validate() throws {
            if (by == nil) == (to == nil) { throw ValidationError("give exactly one of --by SIZE and --to SIZE [invalidArgument]") }
        }

        func run() throws {
            let typed = ["by": by ?? "", "to": to ?? ""]
            // The growth's allocation (thick, zeroed) names its bytes `size`: here, what was typed.
            let option = by != nil ? "by" : "to"
            let lun = try waitShowingProgress(
                try cli(typed: typed) { () throws(SiloError) -> SiloOperation<LunProperties> in
                    try global.provider.extendLun(
                        name, by: try by.map { s throws(SiloError) in try ByteCount.parse(s, field: "by") },
                        to: try to.map { s throws(SiloError) in try ByteCount.parse(s, field: "to") }
                    )
                },
                options: ["size": "--" + option], typed: ["size": typed[option] ?? ""]
            )
            if json { return print(lun.json) }
            printLuns([lun])
        }
    }

    struct Shrink: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "shrink", abstract: "Remove bytes from the end of a LUN.")
        @OptionGroup var global: GlobalOptions
        @Argument(help: "The LUN's name.") var name: String
        @Option(parsing: .unconditional, help: "Bytes to remove, such as 1G.") var by: String
        @Flag(help: "Shrink even over a mounted file system or data past the new end (not a LUN a system holds).")
        var force = false
        @Flag(help: "Print JSON.") var json = false

        func run() throws {
            let lun = try waitShowingProgress(try cli(typed: ["by": by]) { () throws(SiloError) -> SiloOperation<LunProperties> in
                try global.provider.shrinkLun(name, by: try ByteCount.parse(by, field: "by"), force: force)
            })
            if json { return print(lun.json) }
            printLuns([lun])
        }
    }

    struct Delete: HotCommand {
        static let configuration = CommandConfiguration(commandName: "delete", abstract: "Detach and delete a LUN and its data.")
        @OptionGroup var global: GlobalOptions
        @Argument(help: "The LUN's name.") var name: String
        @Flag(help: "Reserved: a LUN in use (mounted, held open, attached to a compute system) is never deleted; detach or unmount it first.")
        var force = false

        var invocation: Invocation { Invocation(global: global.values, name: name, force: force) }

        func run() throws { try invocation.run() }

        struct Invocation: HotInvocation {
            var global: Globals
            var name: String
            var force = false

            func run() throws {
                try waitShowingProgress(try cli { try global.quickProvider.deleteLun(name, force: force) }, quiet: true)
            }
        }
    }

    struct Mask: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "mask", abstract: "Replace the list of compute systems that may see a LUN.")
        @OptionGroup var global: GlobalOptions
        @Argument(help: "The LUN's name.") var name: String
        @Argument(help: "SYSTEM,... or * for every system or '' for none.") var systems: String
        @Flag(help: "Print JSON.") var json = false

        func run() throws {
            let lun = try cli(options: ["unmasking list": "SYSTEMS"]) { try global.provider.setMask(name, systems) }
            if json { return print(lun.json) }
            printLuns([lun])
        }
    }

    struct Online: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "online", abstract: "Attach a LUN that is offline or was detached.")
        @OptionGroup var global: GlobalOptions
        @Argument(help: "The LUN's name.") var name: String
        @Flag(help: "Print JSON.") var json = false

        func run() throws {
            let lun = try waitShowingProgress(try cli { try global.provider.setOnline(name, true) }, quiet: true)
            if json { return print(lun.json) }
            printLuns([lun])
        }
    }

    struct Offline: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "offline", abstract: "Detach a LUN's loop device, keeping its data.")
        @OptionGroup var global: GlobalOptions
        @Argument(help: "The LUN's name.") var name: String
        @Flag(help: "Print JSON.") var json = false

        func run() throws {
            let lun = try waitShowingProgress(try cli { try global.provider.setOnline(name, false) }, quiet: true)
            if json { return print(lun.json) }
            printLuns([lun])
        }
    }
}

extension LunCommand {
    struct Clone: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "clone",
            abstract: "Create a LUN as a copy of another: instant by reflink where the file system allows."
        )
        @OptionGroup var global: GlobalOptions
        @Argument(help: "The LUN to copy.") var source: String
        @Option(parsing: .unconditional, help: "The new LUN's name.") var name: String
        @Flag(help: "Print JSON.") var json = false

        func run() throws {
            // A clone takes the source's size: room for it is the source's to answer for, not a --size's.
            let lun = try waitShowingProgress(try cli(options: ["name": "--name", "source": "SOURCE", "size": "SOURCE"]) {
                try global.provider.cloneLun(source, as: name)
            })
            if json { return print(lun.json) }
            printLuns([lun])
        }
    }
}

/// The CLI writes masks with commas; the library takes the VDS form with semicolons.
func printLuns(_ luns: [LunProperties]) {
    printTable(
        ["NAME", "SIZE", "ALLOC", "TYPE", "PROV", "STATUS", "DEVICE", "MASK"],
        luns.map { lun in
            [lun.name, human(lun.size), human(lun.allocatedBytes), lun.type, lun.provisioning.rawValue,
             lun.status.rawValue, lun.devicePath, lun.unmaskingList.isEmpty ? nil : lun.unmaskingList]
        }
    )
}

extension LunCommand {
    struct Temporary: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "temporary",
            abstract: "Run a command with a scratch block device that is gone afterwards.",
            discussion: """
                The device's path is in SILO_LUN_DEVICE. The LUN is an autoclear loop device over an \
                unlinked file: it disappears when the command ends, and also if silo is killed. \
                Exits with the command's exit code.
                """
        )
        // Global options too: `silo --state-dir D lun temporary ...` is moved after the leaf, and a
        // leaf without them would take it for the command (it keeps no state itself).
        @OptionGroup var global: GlobalOptions
        @Option(parsing: .unconditional, help: "Size, such as 1G.") var size: String
        @Option(name: .customLong("block-size"), help: "Logical block size: 512 or 4096.") var blockSize = "512"
        @Option(help: "Where the (unlinked) backing file lives.") var directory = "/var/tmp"
        // After -- only: a mistyped option before it is an error, not the program to run.
        @Argument(parsing: .postTerminator, help: "The command and its arguments, after --.") var command: [String] = []

        func run() throws {
            let arguments = command
            guard let program = arguments.first else {
                let failure = CLIFailure(error: .missingArgument(field: "command", reason: "give a command after --"), option: "COMMAND")
                printError("Error: \(failure)")
                throw failure.exitCode
            }
            let bytes = try cli { try ByteCount.parse(size) }
            guard let block = UInt32(blockSize) else {
                let failure = CLIFailure(error: .invalidArgument(field: "block size", value: blockSize, reason: "use 512 or 4096"),
                                         option: "--block-size")
                printError("Error: \(failure)")
                throw failure.exitCode
            }
            let status = try cli(options: ["directory": "--directory"]) {
                try withTemporaryLun(size: bytes, logicalBlockSize: block, directory: directory) { lun in
                    try runForeground(program, arguments, environment: ["SILO_LUN_DEVICE": lun.devicePath], keep: lun.descriptor)
                }
            }
            throw ExitCode(status)
        }
    }
}
