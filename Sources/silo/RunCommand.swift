import ArgumentParser
import Glibc
import Silo

struct RunCommand: HotCommand {
    static let configuration = CommandConfiguration(
        commandName: "run",
        abstract: "Run a command in a fresh compute system, attached to this terminal; exit with its code.",
        discussion: """
            The system gets new pid, mount, UTS, IPC, network and cgroup namespaces, a read-only root \
            with the host's /usr, a private /tmp, no capabilities, no_new_privs and a seccomp filter; \
            Silo's init is pid 1 and the command its child. The system is removed when the command ends.
            """
    )
    @OptionGroup var global: GlobalOptions
    @Option(help: "The system's id and hostname (default: run-<pid>).") var id: String?
    @Option(help: "A ComputeSystem JSON document (schema 2.x): its limits, and the LUNs its Devices.Scsi attaches.") var config: String?
    @Option(parsing: .unconditional, help: "Memory limit, such as 512M.") var memory: String?
    @Option(parsing: .unconditional, help: "CPU limit in CPUs, such as 2 or 0.5.") var cpus: String?
    @Option(help: "Process limit (default 1024).") var pids = 1024
    @Option(parsing: .unconditionalSingleValue, help: "A LUN to give the system, NAME or NAME:/mount/path (repeatable); it must be unmasked to the id.")
    var lun: [String] = []
    // After `--` only: everything before it is silo's (so `silo run --help` is silo's help).
    @Argument(parsing: .postTerminator, help: "The command and its arguments, after --.") var command: [String] = []

    var invocation: Invocation {
        Invocation(global: global.values, id: id, config: config, memory: memory, cpus: cpus, pids: pids, lun: lun,
                   command: command)
    }

    func run() throws { try invocation.run() }

    struct Invocation: HotInvocation {
        var global: Globals
        var id: String?
        var config: String?
        var memory: String?
        var cpus: String?
        var pids = 1024
        var lun: [String] = []
        var command: [String] = []

        func run() throws {
            let arguments = command
            let settings = try cli(options: ["memory": "--memory", "cpus": "--cpus", "document": "--config", "pids": "--pids", "command": "CMD"],
                                 document: "--config") { () throws -> (CgroupLimits, [ComputeSystemDocument.ScsiAttachment]) in
                guard !arguments.isEmpty else { throw SiloError.missingArgument(field: "command", reason: "give a command after --") }
                guard !arguments[0].isEmpty else {
                    throw SiloError.missingArgument(field: "command", reason: "the program to run is an empty word")
                }
                // The kernel's own bounds for pids.max; 0 would leave init unable to start its command.
                guard (1...4_194_304).contains(pids) else {
                    throw SiloError.invalidArgument(field: "pids", value: "\(pids)", reason: "a number of processes from 1 to 4194304")
                }
                var limits = CgroupLimits(pids: pids)
                var attachments: [ComputeSystemDocument.ScsiAttachment] = []
                if let config {
                    guard let text = readWholeFile(config) else {
                        throw SiloError.invalidArgument(field: "document", value: config, reason: "cannot read the file")
                    }
                    let document = try ComputeSystemDocument(json: text)
                    limits = CgroupLimits(document, pids: pids)
                    attachments = document.scsiAttachments
                }
                if let memory {
                    // At least 4 MiB, as a document's SizeInMB: a sandbox's init needs that much.
                    let bytes = try ByteCount.parse(memory, field: "memory")
                    guard bytes >= 4 << 20 else {
                        throw SiloError.invalidArgument(field: "memory", value: memory, reason: "at least 4M: a sandbox's init needs that much")
                    }
                    limits.memory = bytes
                }
                if let cpus {
                    guard let value = Double(cpus), value > 0, value <= 4096 else {
                        throw SiloError.invalidArgument(field: "cpus", value: cpus, reason: "a number of CPUs above 0, such as 2 or 0.5")
                    }
                    limits.cpus = value
                }
                return (limits, attachments)
            }
            let (limits, attachments) = settings
            let configuration = ComputeConfiguration(stateDirectory: global.stateDirectory)
            let system = id ?? "run-\(getpid())"
            // Before any LUN is looked up and leased for it: a bad id would make "not unmasked to
            // 'a/b'" of what is a bad --id.
            // (Untyped, returning a value: a typed-throws Void closure here crashes Swift 6.3's compiler.)
            _ = try cli(options: ["id": "--id"]) { () throws -> Bool in
                try SandboxRun.validateID(system)
                try configuration.checkStateDirectory()  // before the LUNs are looked up
                return true
            }
            // Leased for as long as this command runs: storage refuses to delete them meanwhile (S10).
            // The --lun options, then the document's `Devices.Scsi` attachments, as a system's start
            // takes them; an error names the one it is about.
            typealias Place = (lun: String, mountPath: String?, readOnly: Bool, location: String?)
            let provider = global.provider
            func lease(_ places: [Place]) throws(SiloError) -> [(BlockDevice, LunLease)] {
                var leases: [(BlockDevice, LunLease)] = []
                var complete = false
                defer { if !complete { leases.forEach { $0.1.release() } } }  // a failed lookup gives back those taken
                for place in places {
                    var (device, taken) = try provider.leasedBlockDevice(forLun: place.lun, system: system, mountPath: place.mountPath,
                                                                         readOnly: place.readOnly)
                    device.location = place.location
                    leases.append((device, taken))
                }
                complete = true
                return leases
            }
            let fromDocument: [Place] = attachments.map { (lun: $0.lun, mountPath: $0.mountPath, readOnly: $0.readOnly, location: $0.location) }
            let fromOptions = try cli(options: ["lun": "--lun"]) { () throws(SiloError) -> [(BlockDevice, LunLease)] in
                let places: [Place] = try lun.map { (item) throws(SiloError) -> Place in
                    let place = try lunPlace(item, option: "lun")
                    return (lun: place.lun, mountPath: place.mountPath, readOnly: false, location: nil)
                }
                // Compared as Silo keeps mount paths (`/a/` is `/a`); each is checked as written below.
                let kept = (places + fromDocument).map { (lun: $0.lun, mountPath: $0.mountPath.map(BlockDevice.canonicalMountPath)) }
                for index in kept.indices {
                    if let (reason, _) = BlockDevice.conflict(at: index, in: kept) {
                        throw SiloError.invalidArgument(field: "lun", value: index < lun.count ? lun[index] : kept[index].lun, reason: reason)
                    }
                }
                return try lease(places)
            }
            let leased: [(BlockDevice, LunLease)]
            do {
                leased = try fromOptions + cli(options: ["lun": "Devices.Scsi"]) { () throws(SiloError) in try lease(fromDocument) }
            } catch {
                fromOptions.forEach { $0.1.release() }
                throw error
            }
            defer { leased.forEach { $0.1.release() } }
            let devices = leased.map(\.0)
            let code = try cli(options: ["id": "--id"]) {
                try SandboxRun.run(id: system, limits: limits, arguments: arguments, blockDevices: devices, configuration: configuration)
            }
            throw ExitCode(code)
        }
    }
}

func readWholeFile(_ path: String) -> String? {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { return nil }
    defer { close(fd) }
    var bytes: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 65536)
    while true {
        let count = read(fd, &buffer, buffer.count)
        if count <= 0 { break }
        bytes.append(contentsOf: buffer[0..<count])
    }
    return String(decoding: bytes, as: UTF8.self)
}

/// NAME or NAME:/absolute/path, as `--lun` and `--attach` take it: neither part empty, the path as
/// written (a relative one is refused, as in a document, not made absolute).
func lunPlace(_ item: String, option field: String) throws(SiloError) -> (lun: String, mountPath: String?) {
    let parts = item.split(separator: ":", maxSplits: 1, omittingEmptySubsequences: false).map(String.init)
    guard let name = parts.first, !name.isEmpty else {
        throw SiloError.invalidArgument(field: field, value: item, reason: "give the LUN's name, then :/path to mount it")
    }
    guard parts.count > 1 else { return (name, nil) }
    if let problem = BlockDevice.mountPathProblem(parts[1]) {
        throw SiloError.invalidArgument(field: field, value: item, reason: parts[1].isEmpty ? "give a path after ':'" : problem)
    }
    return (name, parts[1])
}
