import ArgumentParser
import Silo

struct SystemCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "system",
        abstract: "Compute systems: process sandboxes with their own namespaces, cgroup and init.",
        discussion: """
            Each command opens the system by id and closes its handle when it ends. A system whose \
            document sets ShouldTerminateOnLastHandleClosed is terminated by the last close, so give \
            systems you drive from the command line "ShouldTerminateOnLastHandleClosed": false.
            """,
        subcommands: [Create.self, Start.self, List.self, Show.self, Pause.self, Resume.self, Shutdown.self, Terminate.self,
                      Modify.self, Reenumerate.self]
    )

    struct Create: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "create", abstract: "Create a system from a ComputeSystem document (schema 2.x).")
        @OptionGroup var global: GlobalOptions
        @Option(help: "The system's id (and hostname).") var id: String
        @Option(help: "The ComputeSystem JSON document.") var config: String
        @Flag(help: "Print JSON.") var json = false

        func run() throws {
            let service = ComputeService(configuration: ComputeConfiguration(stateDirectory: global.stateDirectory))
            let system = try cli(options: ["id": "--id", "document": "--config"], document: "--config") { () throws(SiloError) -> ComputeSystem in
                guard let text = readWholeFile(config) else {
                    throw SiloError.invalidArgument(field: "document", value: config, reason: "cannot read the file")
                }
                // This command's handle is the only one, and it closes when the command ends: such
                // a system would be gone before anyone could use it.
                if try ComputeSystemDocument(json: text).shouldTerminateOnLastHandleClosed {
                    throw SiloError.invalidArgument(
                        field: "document", value: config,
                        reason: "ShouldTerminateOnLastHandleClosed is true, so the system would end as soon as this command's handle "
                            + "closes; set it to false for a system driven from the shell (or hold a handle from Swift)")
                }
                return try waitInterruptibly(service.createComputeSystem(id: id, document: text))
            }
            defer { system.close() }
            try show(try cli { try system.properties() }, json: json)
        }
    }

    struct List: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "list", abstract: "List systems, optionally by owner or state.")
        @OptionGroup var global: GlobalOptions
        @Option(help: "Only systems of this owner.") var owner: String?
        @Option(help: "Only systems in this state: Created, Running, Paused, Stopped.") var state: String?
        @Flag(help: "Print JSON.") var json = false

        func run() throws {
            let service = ComputeService(configuration: ComputeConfiguration(stateDirectory: global.stateDirectory))
            let wanted = try cli(options: ["state": "--state"]) { () throws(SiloError) -> ComputeSystemState? in
                guard let state else { return nil }
                guard let value = ComputeSystemState.allCases.first(where: { $0.rawValue.lowercased() == state.lowercased() }) else {
                    throw SiloError.invalidArgument(field: "state", value: state, reason: "use Created, Running, Paused or Stopped")
                }
                return value
            }
            let systems = service.enumerate(owner: owner, state: wanted)
            if json { return try printJSON(systems) }
            printTable(["ID", "STATE", "OWNER", "MEMORY", "PROCESSES"], systems.map { system in
                [system.id, system.state.rawValue, system.owner, system.memoryLimitBytes.map(human), "\(system.processList.count)"]
            })
        }
    }

    struct Show: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "properties", abstract: "A system's properties and statistics.",
                                                        aliases: ["show"])
        @OptionGroup var global: GlobalOptions
        @Argument(help: "The system's id.") var id: String
        @Flag(help: "Print JSON.") var json = false

        func run() throws {
            try act(global, id) { system in try show(try system.properties(), json: json) }
        }
    }

    struct Start: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "start",
            abstract: "Start a created system: its init becomes pid 1.",
            discussion: "LUNs the document attaches (Devices.Scsi, Path = LUN name, MountPath) must be online and unmasked to the id."
        )
        @OptionGroup var global: GlobalOptions
        @Argument(help: "The system's id.") var id: String
        func run() throws {
            try act(global, id) { system in
                try cli(options: ["lun": "Devices.Scsi"]) { try waitInterruptibly(system.start(storage: global.provider)) }
            }
        }
    }

    struct Reenumerate: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "reenumerate",
            abstract: "Reconcile systems with the kernel: record dead ones as stopped, remove what killed runs left."
        )
        @OptionGroup var global: GlobalOptions
        @Flag(help: "Print JSON.") var json = false

        func run() throws {
            let repaired = ComputeService(configuration: ComputeConfiguration(stateDirectory: global.stateDirectory)).reenumerate()
            if json { return try printJSON(["repaired": repaired]) }
            print(repaired.isEmpty ? "in step: nothing to repair" : "repaired: \(repaired.joined(separator: ", "))")
        }
    }

    struct Modify: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "modify",
            abstract: "Attach or detach a LUN, or change a limit, while the system runs.",
            discussion: """
                --attach NAME[:/PATH] makes the LUN's block device appear in the system's /dev and, with \
                a path, mounts its file system there; the LUN must be unmasked to the system. --detach \
                unmounts it (refused while busy inside) and removes the device. --config takes HCS's \
                ModifySettingRequest: {"ResourcePath": "VirtualMachine/Devices/Scsi/0/Attachments/1", \
                "RequestType": "Add", "Settings": {"Path": "data", "MountPath": "/data"}}, a Remove of that \
                path, or an Update of VirtualMachine/ComputeTopology/Memory/SizeInMB or .../Processor/Count|Weight|Limit.
                """
        )
        @OptionGroup var global: GlobalOptions
        @Argument(help: "The system's id.") var id: String
        @Option(help: "A LUN to attach: NAME or NAME:/mount/path.") var attach: String?
        @Option(help: "A LUN to detach.") var detach: String?
        @Flag(help: "Attach read-only.") var readOnly = false
        @Option(help: "A ModifySettingRequest JSON document: a SCSI attachment Add or Remove, or a Memory/Processor Update.")
        var config: String?

        func validate() throws {
            if [attach, detach, config].compactMap({ $0 }).count != 1 {
                throw ValidationError("give exactly one of --attach NAME[:/PATH], --detach NAME and --config REQUEST.json [invalidArgument]")
            }
            if readOnly, attach == nil { throw ValidationError("--read-only goes with --attach only [invalidArgument]") }
        }

        func run() throws {
            let request = try cli(options: ["document": "--config"], document: "--config") { () throws(SiloError) -> ModifyRequest? in
                guard let config else { return nil }
                guard let text = readWholeFile(config) else {
                    throw SiloError.invalidArgument(field: "document", value: config, reason: "cannot read the file")
                }
                return try ModifyRequest(json: text)
            }
            // --attach's value is read before the system is opened: a bad one changes nothing.
            let place = try attach.map { attach in
                try cli(options: ["lun": "--attach", "mountPath": "--attach"]) { try lunPlace(attach, option: "lun") }
            }
            try act(global, id) { system in
                if let request {
                    let fields = ["lun": "--config", "ResourcePath": "--config", "Settings": "--config",
                                  "Settings.Path": "--config", "mountPath": "--config"]
                    try cli(options: fields) { try waitInterruptibly(system.modify(request, storage: global.provider)) }
                } else if let place {
                    try cli(options: ["lun": "--attach", "mountPath": "--attach"]) {
                        try waitInterruptibly(system.attachLun(place.lun, mountPath: place.mountPath, readOnly: readOnly, storage: global.provider))
                    }
                } else if let detach {
                    try cli(options: ["lun": "--detach"]) { try waitInterruptibly(system.detach(lun: detach)) }
                }
            }
        }
    }

    struct Pause: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "pause", abstract: "Freeze every process of a running system.")
        @OptionGroup var global: GlobalOptions
        @Argument(help: "The system's id.") var id: String
        func run() throws { try act(global, id) { system in try waitInterruptibly(system.pause()) } }
    }

    struct Resume: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "resume", abstract: "Thaw a paused system.")
        @OptionGroup var global: GlobalOptions
        @Argument(help: "The system's id.") var id: String
        func run() throws { try act(global, id) { system in try waitInterruptibly(system.resume()) } }
    }

    struct Shutdown: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "shutdown", abstract: "Stop gracefully: SIGTERM, then SIGKILL after 10 s.")
        @OptionGroup var global: GlobalOptions
        @Argument(help: "The system's id.") var id: String
        func run() throws { try act(global, id) { system in try waitInterruptibly(system.shutdown()) } }
    }

    struct Terminate: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "terminate", abstract: "Stop at once: every process killed.")
        @OptionGroup var global: GlobalOptions
        @Argument(help: "The system's id.") var id: String
        func run() throws { try act(global, id) { system in try waitInterruptibly(system.terminate()) } }
    }
}

/// Opens the system, runs one call, closes the handle.
func act(_ global: GlobalOptions, _ id: String, _ body: (ComputeSystem) throws -> Void) throws {
    try act(global.values, id, body)
}

/// `onCaller`: the calls run on this command's thread (`Globals.onCaller`), for one that waits for
/// each right away and shows no progress.
/// `options`: the command's own names for fields the body's calls may name.
func act(_ global: Globals, _ id: String, onCaller: Bool = false, options: [String: String] = [:],
         _ body: (ComputeSystem) throws -> Void) throws {
    let configuration = ComputeConfiguration(stateDirectory: global.stateDirectory)
    let service = onCaller ? ComputeService(configuration: configuration, scheduler: Globals.onCaller)
        : ComputeService(configuration: configuration)
    let system = try cli(options: ["id": "ID"]) { try service.open(id) }
    defer { system.close() }
    try cli(options: options.merging(["id": "ID"]) { $1 }) { try body(system) }
}

/// Processor time as a person reads it: seconds to the millisecond (`0.016 s`).
func seconds(hundredNanoseconds value: UInt64) -> String {
    let milliseconds = (value + 5_000) / 10_000
    let fraction = String(milliseconds % 1000)
    return "\(milliseconds / 1000)." + String(repeating: "0", count: 3 - fraction.count) + fraction + " s"
}

func show(_ properties: ComputeSystemProperties, json: Bool) throws {
    if json { return try printJSON(properties) }
    let facts: [(String, String?)] = [
        ("id", properties.id), ("state", properties.state.rawValue), ("exit", properties.exitType?.rawValue),
        ("owner", properties.owner), ("memory limit", properties.memoryLimitBytes.map(human)),
        ("processors", properties.processorCount.map(String.init)),
        ("processes", properties.processList.map(String.init).joined(separator: " ")),
        ("memory used", properties.statistics.map { human($0.memoryUsageBytes) }),
        ("cpu user", properties.statistics.map { seconds(hundredNanoseconds: $0.processorTimeUser) }),
        ("cpu kernel", properties.statistics.map { seconds(hundredNanoseconds: $0.processorTimeKernel) }),
        ("uptime", properties.statistics.map { "\($0.uptimeSeconds) s" }),
        ("ignored fields", properties.ignoredFields.joined(separator: ", ")), ("cgroup layout", properties.cgroupLayout),
        ("cgroup parent", properties.cgroupParent),
        ("luns", properties.attachments.map { "\($0.lun) \($0.devicePath)\($0.mountPath.map { " on " + $0 } ?? "")" }
            .joined(separator: "; ")),
    ]
    printTable(["PROPERTY", "VALUE"], facts.map { [$0.0, $0.1] })
}
