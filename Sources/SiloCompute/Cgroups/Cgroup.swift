import CSiloLinux
import Glibc
import SiloOperations

/// Resource limits for a compute system's cgroup, from its document (C1, C10).
public struct CgroupLimits: Sendable, Hashable {
    /// Bytes of memory (and no swap beyond it); nil for none.
    public var memory: UInt64?
    /// CPUs' worth of time per period; nil for no cap.
    public var cpus: Double?
    /// Relative CPU share, HCS units: 1...10000, 100 the default.
    public var cpuWeight: Int?
    /// Processes and threads at most; a fork bomb stops here.
    public var pids: Int?
    /// Block devices the system may use (its LUNs); every other block device, and every
    /// character device but the minimal /dev, is denied.
    public var blockDevices: [DeviceGrant] = []

    public init(memory: UInt64? = nil, cpus: Double? = nil, cpuWeight: Int? = nil, pids: Int? = 1024) {
        self.memory = memory
        self.cpus = cpus
        self.cpuWeight = cpuWeight
        self.pids = pids
    }

    /// The limits a document asks for: `SizeInMB`, `Processor.Count` (scaled by `Limit`), `Weight`.
    public init(_ document: ComputeSystemDocument, pids: Int = 1024) {
        var cpus = document.processorCount.map(Double.init)
        if let limit = document.processorLimit { cpus = (cpus ?? 1) * Double(limit) / 100_000 }
        self.init(memory: document.memoryLimit, cpus: cpus, cpuWeight: document.processorWeight, pids: pids)
    }
}

/// A block device a compute system may use, and how: a LUN attached raw is read and written, or
/// only read when attached read-only. One whose file system is mounted inside gets no node and no
/// grant: a write through the node under the mounted file system would change what the host's
/// kernel parses (a crafted image is a way into the kernel), and a descriptor opened on it would
/// outlive the detach (Linux revokes none).
public struct DeviceGrant: Sendable, Hashable {
    /// `major:minor`.
    public var number: String
    public var writable: Bool

    public init(number: String, writable: Bool) {
        self.number = number
        self.writable = writable
    }

    /// A LUN's: none when mounted at `mountPath`, read-only when attached so.
    public init?(number: String, readOnly: Bool, mountPath: String?) {
        guard mountPath == nil else { return nil }
        self.init(number: number, writable: !readOnly)
    }

    /// The rule as v1's devices.allow takes it: "b 7:3 rw" or "b 7:3 r".
    var rule: String { "b \(number) \(writable ? "rw" : "r")" }
}

/// One compute system's cgroup: a directory in each hierarchy that serves it, behind one
/// interface whatever the host's layout (C13). Limits, freeze and thaw, kill, statistics, OOM count.
public final class Cgroup: Sendable {
    public let name: String
    public let layout: CgroupLayout
    /// Directories by feature: "memory", "cpu", "cpuacct", "pids", "freezer", "devices", and "unified".
    let directories: [String: String]

    /// Creates the cgroup `<parent>/<name>` (`silo/<name>` by default) in every hierarchy it
    /// needs, with `limits`. The parent is made where missing; on cgroup2 the controllers Silo
    /// limits with are enabled on the way down, in each level that lacks them (a delegated
    /// subtree's own levels are written only when they lack one).
    /// - Parameter enforcingOnly: only the v1 hierarchies that enforce something: devices (the
    ///   device policy), and pids, memory and cpu when `limits` sets them. No statistics (cpuacct,
    ///   and memory without a limit) and no freezer: for a system nobody pauses or asks about, such
    ///   as a `run`'s, each hierarchy less is a directory less to make, join and remove.
    /// - Throws: when a hierarchy refuses; everything made so far is removed again (a parent that
    ///   was made stays: other systems may share it).
    public static func create(name: String, limits: CgroupLimits, layout: CgroupLayout = .detect(),
                              enforcingOnly: Bool = false) throws(SiloError) -> Cgroup {
        try CgroupLayout.checkParent(layout.parent)
        let suffix = "/" + layout.parent + "/" + name
        var directories: [String: String] = [:]
        var roots: [String: String] = [:]
        if let unified = layout.unified {
            directories["unified"] = unified + suffix
            roots[unified + suffix] = unified
        }
        var controllers = ["memory", "cpu", "cpuacct", "pids", "freezer", "devices"]
        if enforcingOnly {
            controllers = ["devices"] + (limits.pids != nil ? ["pids"] : []) + (limits.memory != nil ? ["memory"] : [])
                + (limits.cpus != nil || limits.cpuWeight != nil ? ["cpu"] : [])
        }
        for controller in controllers where layout.place(controller) == .v1 {
            guard let root = layout.legacy[controller] else { continue }
            // cpu and cpuacct are often one hierarchy (cpu,cpuacct): one directory serves both.
            directories[controller] = root + suffix
            roots[root + suffix] = root
        }
        let cgroup = Cgroup(name: name, layout: layout, directories: directories)
        // The directories this call made: on failure only these go. One that was there (another
        // system's of the same name, EEXIST) is not this call's to remove.
        var made: [String] = []
        do throws(SiloError) {
            let wanted = unifiedControllers(for: limits, enforcingOnly: enforcingOnly, layout: layout)
            for path in Set(directories.values) {
                // Another process removes the shared default parent `silo` when its last system
                // goes: if that happens between the parent's mkdir and this one, make it again.
                var attempts = 0
                while true {
                    do throws(SiloError) {
                        try makeParent(layout.parent, under: roots[path] ?? "",
                                       enabling: path == directories["unified"] ? wanted : [])
                    } catch {
                        // Only a level that vanished under a mkdir or an open is the race; a
                        // controller the kernel refuses to enable is not, and names itself.
                        guard error.errno == ENOENT, error.syscall == "mkdir" || error.syscall == "open", attempts < 20 else { throw error }
                        attempts += 1
                        continue
                    }
                    if mkdir(path, 0o755) == 0 {
                        made.append(path)
                        break
                    }
                    if errno == ENOENT, attempts < 20 {
                        attempts += 1
                        continue
                    }
                    if errno == EEXIST {
                        // A file, not a cgroup: the id is the name of one of the parent's own
                        // interface files (`tasks`, `cgroup.procs`, `memory.max`), which no
                        // cgroup can take.
                        var info = stat()
                        if lstat(path, &info) == 0, info.st_mode & S_IFMT != S_IFDIR {
                            throw SiloError.invalidArgument(field: "id", value: String(name.split(separator: "/").last ?? ""),
                                                            reason: "a file of the cgroup parent is named so (\(path)); choose another id")
                        }
                        throw SiloError(.systemAlreadyExists, "cgroup \(path) already exists", field: "id", value: name)
                    }
                    throw SiloError.system("mkdir", errno: errno, path: path)
                }
            }
            try cgroup.apply(limits)
        } catch {
            Cgroup(name: name, layout: layout, directories: Dictionary(uniqueKeysWithValues: made.enumerated().map { ("\($0.offset)", $0.element) }))
                .removeDirectories()
            // The shared default parent a hierarchy made for this call, whose own directory then
            // failed, goes too (kept while another system is in it).
            for path in Set(directories.values) where !made.contains(path) { cgroup.removeDefaultParent(of: path) }
            throw error
        }
        return cgroup
    }

    /// The cgroup2 controllers a cgroup with `limits` needs enabled above it: those that enforce a
    /// limit; and for a compute system, memory (its statistics' `memory.current`) and cpu (a
    /// weight of its own, so that systems share the CPU fairly, whatever number of tasks each
    /// runs). A `run`'s (`enforcingOnly`) gets only what it limits: each controller is one more
    /// thing a delegated subtree must allow.
    static func unifiedControllers(for limits: CgroupLimits, enforcingOnly: Bool, layout: CgroupLayout) -> [String] {
        var wanted: [String] = []
        if limits.memory != nil || !enforcingOnly { wanted.append("memory") }
        if limits.cpus != nil || limits.cpuWeight != nil || !enforcingOnly { wanted.append("cpu") }
        if limits.pids != nil { wanted.append("pids") }
        return wanted.filter { layout.unifiedControllers.contains($0) }
    }

    /// Makes `parent` (one level or more) under a hierarchy's `root`, enabling `controllers` (on
    /// cgroup2; none on v1) in the subtree_control of the root and of each level made or found.
    /// A level that is there must be a folder: a parent naming one of a cgroup's files
    /// (`tasks`, `memory.max`) is refused by name.
    static func makeParent(_ parent: String, under root: String, enabling controllers: [String]) throws(SiloError) {
        var current = root
        for component in parent.split(separator: "/") {
            if !controllers.isEmpty { try enable(controllers, in: current) }
            // Two concrete appends: "/" + component, a Substring, is the generic append(contentsOf:)
            // whose first use scans every conformance record (scripts/bench/startup).
            current += "/"
            current += String(component)
            guard mkdir(current, 0o755) != 0 else { continue }
            guard errno == EEXIST else { throw SiloError.system("mkdir", errno: errno, path: current) }
            // `silo` is no cgroup file's name: the default parent needs no look.
            if parent == CgroupLayout.defaultParent { continue }
            var info = stat()
            if stat(current, &info) == 0, (info.st_mode & S_IFMT) != S_IFDIR {
                throw SiloError.invalidArgument(field: "cgroup parent", value: parent, reason: "\(current) is a cgroup's file, not a folder")
            }
        }
        if !controllers.isEmpty { try enable(controllers, in: current) }
    }

    /// Writes the controllers `directory`'s subtree_control lacks, one write each, so a refusal
    /// names its controller. The kernel's two refusals get messages that say what to do:
    /// - EBUSY: the level holds processes of its own, and cgroup2 gives controllers only to the
    ///   children of a level without them ("no internal processes"). A container's cgroup
    ///   namespace root, or a delegated unit whose own processes sit in its top cgroup, does this.
    /// - ENOENT: the controller is not in the level's `cgroup.controllers` (not delegated to it).
    static func enable(_ controllers: [String], in directory: String) throws(SiloError) {
        let path = directory + "/cgroup.subtree_control"
        guard let enabled = readText(path) else { throw SiloError.system("open", errno: errno, path: path) }
        let present = enabled.split(separator: " ")
        let missing = controllers.filter { controller in !present.contains(where: { $0 == controller }) }
        if missing.isEmpty { return }
        let fd = Glibc.open(path, O_WRONLY | O_CLOEXEC)
        guard fd >= 0 else { throw SiloError.system("open", errno: errno, path: path) }
        defer { Glibc.close(fd) }
        for controller in missing {
            let value = "+" + controller
            if value.withCString({ write(fd, $0, strlen($0)) }) >= 0 { continue }
            let error = errno
            let reason: String
            switch error {
            case EBUSY:
                reason = "\(directory) holds processes of its own, and cgroup v2 enables controllers only below a cgroup "
                    + "without them; set SILO_CGROUP_PARENT to a subtree delegated to Silo whose processes sit in a leaf"
            case ENOENT:
                reason = "the \(controller) controller is not delegated to \(directory) (it is not in its cgroup.controllers)"
            default:
                reason = "writing '\(value)' to \(path) failed: \(String(cString: strerror(error))) (errno \(error))"
            }
            throw SiloError(.systemNotConfiguredForOperation, "cannot enable the \(controller) cgroup controller: \(reason)",
                            field: "cgroup parent", value: directory, syscall: "write", errno: error)
        }
    }

    init(name: String, layout: CgroupLayout, directories: [String: String]) {
        self.name = name
        self.layout = layout
        self.directories = directories
    }

    /// Re-opens an existing cgroup by name, as another process finds a running system's.
    /// One under a parent ``CgroupLayout/checkParent(_:)`` refuses has no directory: nothing of it
    /// is read, written or removed (a parent read back from a file could be anything).
    public static func open(name: String, layout: CgroupLayout = .detect()) -> Cgroup {
        var directories: [String: String] = [:]
        guard (try? CgroupLayout.checkParent(layout.parent)) != nil else { return Cgroup(name: name, layout: layout, directories: directories) }
        let suffix = "/" + layout.parent + "/" + name
        if let unified = layout.unified { directories["unified"] = unified + suffix }
        for controller in ["memory", "cpu", "cpuacct", "pids", "freezer", "devices"] where layout.place(controller) == .v1 {
            if let root = layout.legacy[controller] { directories[controller] = root + suffix }
        }
        return Cgroup(name: name, layout: layout, directories: directories)
    }

    /// The directory of a hierarchy this cgroup has.
    func path(_ key: String) throws(SiloError) -> String {
        guard let path = directories[key] else { throw unavailable(key) }
        return path
    }

    /// The directory serving `feature`: its v1 hierarchy's, or the unified one.
    func directory(_ feature: String) -> String? {
        directories[feature] ?? (layout.place(feature) == .v2 ? directories["unified"] : nil)
    }

    // MARK: Limits

    func apply(_ limits: CgroupLimits) throws(SiloError) {
        try applyResources(limits)
        // v1's devices controller: deny everything, then allow the minimal /dev and the LUNs;
        // cgroup2's the same as a BPF program.
        if let devices = directories["devices"] {
            try writeText(devices + "/devices.deny", "a")
            try writeText(devices + "/devices.allow", Self.minimalDevices + limits.blockDevices.map(\.rule))
        }
        try attachDeviceProgram(blockDevices: limits.blockDevices)
    }

    /// Changes the memory, CPU and pids limits of a live cgroup (the fields that are set); the
    /// devices stay as they are [HcsModifyComputeSystem Update].
    public func update(_ limits: CgroupLimits) throws(SiloError) {
        // A limit the system did not have at its create may need a controller its parent was
        // not given then (cgroup2 enables them per level): enabled on the way down, as create does.
        if let unified = layout.unified, directories["unified"] != nil {
            let wanted = Self.unifiedControllers(for: limits, enforcingOnly: true, layout: layout)
            if !wanted.isEmpty { try Self.makeParent(layout.parent, under: unified, enabling: wanted) }
        }
        try applyResources(limits)
    }

    private func applyResources(_ limits: CgroupLimits) throws(SiloError) {
        if let bytes = limits.memory {
            switch layout.place("memory") {
            case .v2?:
                let path = try path("unified")
                let high = try Self.reclaim(path, under: bytes)
                do throws(SiloError) {
                    try writeText(path + "/memory.max", "\(bytes)")
                } catch {
                    throw Self.puttingBack(high, in: path, after: error)
                }
                // Set to the limit, memory.high would throttle the system near it from now on.
                if let high { try? writeText(path + "/memory.high", high) }
                try? writeText(path + "/memory.swap.max", "0")
            case .v1?:
                let path = try path("memory")
                let limit = path + "/memory.limit_in_bytes", memsw = path + "/memory.memsw.limit_in_bytes"
                // memsw is memory plus swap: equal means no swap (absent without swap accounting).
                // The kernel keeps memsw at or above the limit at every write: a limit that grows
                // raises memsw first (the other order failed with EINVAL), one that shrinks lowers it after.
                // A second write refused (EBUSY: the usage did not fit under the new figure) puts
                // the first back, so a failed modify leaves both as they were.
                // The kernel reclaims what it can first, and refuses with EBUSY what still does not fit.
                do throws(SiloError) {
                    if access(memsw, F_OK) == 0 {
                        let current = readText(limit).flatMap { UInt64($0) } ?? 0
                        let (first, second) = bytes > current ? (memsw, limit) : (limit, memsw)
                        try Self.writeBoth("\(bytes)", to: first, then: second)
                    } else {
                        try writeText(limit, "\(bytes)")
                        // No swap accounting (a kernel without swapaccount=1): at the limit the
                        // kernel would swap the system's memory out rather than kill, and the limit
                        // would hold nothing. No swapping for this cgroup keeps it a limit.
                        try? writeText(path + "/memory.swappiness", "0")
                    }
                } catch where error.errno == EBUSY {
                    let usage = readText(path + "/memory.usage_in_bytes").flatMap { UInt64($0) }
                    var refused = Self.memoryInUse(usage, limit: bytes, kept: error.events.isEmpty)
                    refused.events += error.events
                    throw refused
                }
            case nil:
                throw unavailable("memory")
            }
        }
        if limits.cpus != nil || limits.cpuWeight != nil {
            let period = 100_000
            let quota = limits.cpus.map { max(1000, Int($0 * Double(period))) }
            switch layout.place("cpu") {
            case .v2?:
                let path = try path("unified")
                if let quota { try writeText(path + "/cpu.max", "\(quota) \(period)") }
                // HCS weight 1...10000 (100 default) is cgroup v2's cpu.weight scale as it is.
                if let weight = limits.cpuWeight { try writeText(path + "/cpu.weight", "\(min(max(weight, 1), 10_000))") }
            case .v1?:
                let path = try path("cpu")
                if let quota, let cpus = limits.cpus {
                    let oldPeriod = readText(path + "/cpu.cfs_period_us")
                    try writeText(path + "/cpu.cfs_period_us", "\(period)")
                    do throws(SiloError) {
                        try writeText(path + "/cpu.cfs_quota_us", "\(quota)")
                    } catch {
                        // A failed change leaves both as they were.
                        if let oldPeriod, oldPeriod != "\(period)" { try? writeText(path + "/cpu.cfs_period_us", oldPeriod) }
                        // v1 refuses a quota over what an ancestor allows (v2 takes it and the
                        // ancestor's holds): said with the ancestor and its limit.
                        guard error.errno == EINVAL else { throw error }
                        throw Self.quotaOverAncestor(path, root: layout.legacy["cpu"] ?? "", cpus: cpus) ?? error
                    }
                }
                // v1 shares: 1024 is the default, as 100 is HCS's.
                if let weight = limits.cpuWeight { try writeText(path + "/cpu.shares", "\(max(2, weight * 1024 / 100))") }
            case nil:
                throw unavailable("cpu")
            }
        }
        if let pids = limits.pids {
            guard let path = directory("pids") else { throw unavailable("pids") }
            try writeText(path + "/pids.max", "\(pids)")
        }
    }

    /// Makes room for a memory limit of `bytes` on cgroup2 before it is set. There the kernel takes
    /// a `memory.max` under what the cgroup uses, then reclaims and, what it cannot reclaim (tmpfs
    /// files and anonymous memory without swap), frees by OOM-killing the system's processes one
    /// after another: a modify would end the payload, even a paused one, and report success. v1
    /// refuses it (EBUSY). So a lower limit is tried as `memory.high` first, which reclaims and
    /// throttles but never kills; if the usage still does not fit, `memory.high` goes back and the
    /// change is refused as v1 refuses it. Returns the `memory.high` to put back once `memory.max`
    /// is written (nil when nothing was changed): it holds the usage down until then.
    static func reclaim(_ directory: String, under bytes: UInt64) throws(SiloError) -> String? {
        // Unread, the usage could be anything: the limit is not written blind.
        func read(_ file: String) throws(SiloError) -> String {
            guard let text = readText(directory + "/" + file) else {
                throw SiloError(.systemCallFailed,
                                "\(directory)/\(file) could not be read, so a memory limit of \(bytes >> 20) MiB "
                                    + "cannot be checked against the usage; the limit stays as it was",
                                field: "memory", value: "\(bytes >> 20)")
            }
            return text
        }
        let usage = UInt64(try read("memory.current")) ?? 0
        guard usage > bytes else { return nil }
        let high = try read("memory.high")
        try writeText(directory + "/memory.high", "\(bytes)")
        let after = readText(directory + "/memory.current").flatMap { UInt64($0) } ?? usage
        guard after <= bytes else {
            throw puttingBack(high, in: directory, after: memoryInUse(after, limit: bytes, kept: true))
        }
        return high
    }

    /// `error`, after `memory.high` got back `high` (nil: it was not changed); a failure to put
    /// it back is added to the error as a rollback event (the limit, memory.max, stays as it was).
    static func puttingBack(_ high: String?, in directory: String, after error: SiloError) -> SiloError {
        guard let high else { return error }
        do throws(SiloError) {
            try writeText(directory + "/memory.high", high)
            return error
        } catch let undo {
            return error.adding(.init(message: "memory.high could not be put back to \(high): \(undo.message)",
                                      source: "rollback"))
        }
    }

    /// The refusal of a v1 CPU limit of `cpus` processors in the cgroup at `path` that an ancestor
    /// below `root` (the hierarchy's mount) limits to fewer; nil when no ancestor does.
    static func quotaOverAncestor(_ path: String, root: String, cpus: Double) -> SiloError? {
        var folder = path
        var tightest: (folder: String, cpus: Double)?
        while let slash = folder.lastIndex(of: "/"), folder.count > root.count {
            folder = String(folder[..<slash])
            guard folder.count >= root.count, let quota = readText(folder + "/cpu.cfs_quota_us").flatMap({ Int($0) }), quota > 0,
                  let period = readText(folder + "/cpu.cfs_period_us").flatMap({ Int($0) }), period > 0 else { continue }
            let allowed = Double(quota) / Double(period)
            if tightest.map({ allowed < $0.cpus }) ?? true { tightest = (folder, allowed) }
        }
        guard let tightest, tightest.cpus < cpus else { return nil }
        let shown = { (value: Double) in "\((value * 100).rounded() / 100)" }
        return SiloError(.invalidArgument,
                         "a CPU limit of \(shown(cpus)) processors is more than the cgroup \(tightest.folder) allows "
                         + "(\(shown(tightest.cpus)) processors: its cpu.cfs_quota_us over cpu.cfs_period_us); "
                         + "ask for \(shown(tightest.cpus)) or fewer, or raise that limit",
                         field: "cpus", value: shown(cpus))
    }

    /// A memory limit refused because the system uses more than it even after reclaim; `kept`:
    /// the limits are as they were (a rollback that failed says otherwise in its event).
    static func memoryInUse(_ usage: UInt64?, limit: UInt64, kept: Bool) -> SiloError {
        let uses = usage.map { "uses \($0 >> 20) MiB" } ?? "uses more"
        return SiloError(.invalidArgument,
                         "the compute system \(uses) that cannot be reclaimed, "
                         + "more than a memory limit of \(limit >> 20) MiB"
                         + (kept ? "; the limit stays as it was" : "") + " (free memory inside the system first)",
                         field: "memory", value: "\(limit >> 20)")
    }

    /// Writes `text` to `first`, then to `second`; when `second` refuses it, `first` gets back what
    /// it held, so a failed change leaves both files as they were.
    static func writeBoth(_ text: String, to first: String, then second: String) throws(SiloError) {
        let before = readText(first)
        try writeText(first, text)
        do throws(SiloError) {
            try writeText(second, text)
        } catch {
            guard let before else {
                throw error.adding(.init(message: "\(first) could not be read before, so it keeps \(text)", source: "rollback"))
            }
            do throws(SiloError) {
                try writeText(first, before)
            } catch let undo {
                throw error.adding(.init(message: "\(first) could not be put back to \(before): \(undo.message)", source: "rollback"))
            }
            throw error
        }
    }

    /// Sets the block devices the system's processes may use besides the minimal /dev: raw LUNs
    /// attached or detached while the system runs, or a grant cut back to reading. v1:
    /// devices.deny for `removed` (`major:minor`) and for what a grant no longer gives (write),
    /// devices.allow for each grant; cgroup2: a new device program (replacing the old one).
    public func setBlockDevices(_ grants: [DeviceGrant], removing removed: [String] = []) throws(SiloError) {
        if let devices = directories["devices"] {
            for number in removed { try writeText(devices + "/devices.deny", "b \(number) rwm") }
            for grant in grants {
                if !grant.writable { try writeText(devices + "/devices.deny", "b \(grant.number) wm") }
                try writeText(devices + "/devices.allow", grant.rule)
            }
            // A system started by a Silo that still loaded a program here (before 5 December
            // 2026) keeps it, and it would deny what devices.allow now grants: it goes.
            if let unified = directories["unified"] {
                let directory = Glibc.open(unified, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
                if directory >= 0 {
                    _ = silo_device_filter_detach(directory)
                    Glibc.close(directory)
                }
            }
        }
        try attachDeviceProgram(blockDevices: grants)
    }

    /// Takes back every block device the cgroup grants, whoever granted it (a start that died
    /// before its record said so): on v1, each `b` rule in devices.list is denied; on cgroup2 the
    /// program allows the minimal /dev alone.
    public func revokeBlockDevices() throws(SiloError) {
        if let devices = directories["devices"] {
            for rule in (readText(devices + "/devices.list") ?? "").split(separator: "\n") where rule.hasPrefix("b ") {
                let number = rule.split(separator: " ").dropFirst().first.map(String.init) ?? ""
                try writeText(devices + "/devices.deny", "b \(number) rwm")
            }
        }
        try attachDeviceProgram(blockDevices: [])
    }

    /// cgroup2 controls devices with a BPF program on the cgroup's directory: allow the minimal
    /// /dev and `blockDevices`, deny the rest. Where v1's devices controller governs (hybrid hosts
    /// such as this project's), it already holds the same rules and the kernel asks it too, so no
    /// program is loaded: the verifier's load cost 0.26 ms of every start and modify there. Where
    /// there is only cgroup2, a program that cannot be attached is an error, not a silent open door.
    func attachDeviceProgram(blockDevices: [DeviceGrant]) throws(SiloError) {
        guard let unified = directories["unified"], directories["devices"] == nil else { return }
        let rules = (Self.minimalDevices + blockDevices.map(\.rule)).compactMap(Self.deviceRule)
        // Loaded without the verifier's log: with one, the verifier prints its state at every
        // instruction: a load took 0.9 ms here, 0.35 ms without. Only a program it
        // refuses is loaded again with the log, for the error to say why.
        var log = [CChar](repeating: 0, count: 1)
        var program = rules.withUnsafeBufferPointer { silo_device_filter_load($0.baseAddress, Int32($0.count), nil, 0) }
        if program < 0, errno != E2BIG {
            log = [CChar](repeating: 0, count: 4096)
            program = rules.withUnsafeBufferPointer { silo_device_filter_load($0.baseAddress, Int32($0.count), &log, UInt32(log.count)) }
        }
        let loadError = errno
        let directory = Glibc.open(unified, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        defer {
            if program >= 0 { Glibc.close(program) }
            if directory >= 0 { Glibc.close(directory) }
        }
        let attached = program >= 0 && directory >= 0 && silo_device_filter_attach(directory, program) == 0
        let error = program < 0 ? loadError : errno
        guard !attached else { return }
        throw SiloError(.systemCallFailed,
                        "cannot attach the device program to \(unified): \(String(cString: strerror(error))) (errno \(error)) "
                            + String(decoding: log.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self),
                        field: "cgroup", value: name, syscall: "bpf", errno: error)
    }

    /// "c 1:3 rwm" or "b 7:2 r" or "c 136:* rwm" as a rule for the device program.
    static func deviceRule(_ text: String) -> silo_device_rule? {
        let parts = text.split(separator: " ")
        guard parts.count == 3, parts[0] == "b" || parts[0] == "c" else { return nil }
        let numbers = parts[1].split(separator: ":")
        guard numbers.count == 2, let major = UInt32(numbers[0]) else { return nil }
        let minor = numbers[1] == "*" ? -1 : Int32(numbers[1]) ?? -2
        guard minor >= -1, !parts[2].isEmpty, parts[2].allSatisfy({ "rwm".contains($0) }) else { return nil }
        // BPF_DEVCG_ACC_MKNOD, _READ, _WRITE
        let access = (parts[2].contains("m") ? 1 : 0) | (parts[2].contains("r") ? 2 : 0) | (parts[2].contains("w") ? 4 : 0)
        return silo_device_rule(block: parts[0] == "b" ? 1 : 0, major: major, minor: minor, access: UInt32(access))
    }

    /// null, zero, full, random, urandom, tty, ptmx and the pts terminals.
    static let minimalDevices = ["c 1:3 rwm", "c 1:5 rwm", "c 1:7 rwm", "c 1:8 rwm", "c 1:9 rwm", "c 5:0 rwm", "c 5:2 rwm", "c 136:* rwm"]

    func unavailable(_ controller: String) -> SiloError {
        SiloError(.systemNotConfiguredForOperation,
                  "the \(controller) cgroup controller is not available on this host (cgroup layout: \(layout.description))",
                  field: "controller", value: controller)
    }

    // MARK: Processes

    /// Puts a process in every hierarchy of this cgroup (v1 needs one write per hierarchy).
    /// - Parameter skippingUnified: the process was started in the cgroup2 directory already
    ///   (CLONE_INTO_CGROUP).
    public func add(pid: pid_t, skippingUnified: Bool = false) throws(SiloError) {
        for (key, path) in directories.sorted(by: { $0.key < $1.key }) where !(skippingUnified && key == "unified") {
            try writeText(path + "/cgroup.procs", "\(pid)")
        }
    }

    /// The files through which a new process joins this cgroup itself (``Sandbox/spawn(_:cgroup:)``
    /// writes "0" to each from the child, before its exec): every v1 hierarchy's `tasks`, and the
    /// cgroup2 `cgroup.procs` unless the process is born there (CLONE_INTO_CGROUP). Open for writing;
    /// the caller closes them.
    public func openTaskFiles(skippingUnified: Bool) throws(SiloError) -> [Int32] {
        var files: [String] = []
        for (key, path) in directories.sorted(by: { $0.key < $1.key }) where !(skippingUnified && key == "unified") {
            let file = path + (key == "unified" ? "/cgroup.procs" : "/tasks")
            if !files.contains(file) { files.append(file) }  // cpu and cpuacct may share a directory
        }
        var descriptors: [Int32] = []
        for file in files {
            let fd = Glibc.open(file, O_WRONLY | O_CLOEXEC)
            guard fd >= 0 else {
                let error = errno
                descriptors.forEach { close($0) }
                throw SiloError.system("open", errno: error, path: file)
            }
            descriptors.append(fd)
        }
        return descriptors
    }

    /// The cgroup2 directory, opened for CLONE_INTO_CGROUP; nil without a cgroup2 mount.
    public func openUnifiedDirectory() -> Int32? {
        guard let unified = directories["unified"] else { return nil }
        let fd = Glibc.open(unified, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        return fd >= 0 ? fd : nil
    }

    /// The processes in the cgroup (none when they cannot be read: see ``hasNoProcesses``).
    public var pids: [pid_t] {
        (readText(processesFile) ?? "").split(separator: "\n").compactMap { pid_t($0) }
    }

    /// Whether the cgroup holds no process: its cgroup.procs reads empty, or the cgroup is gone.
    /// False when that cannot be told (the file could not be opened or read for another reason:
    /// no descriptor left, say): a live system must never be taken for a stopped one, recorded
    /// so and its cgroup destroyed with it.
    public var hasNoProcesses: Bool {
        guard !directories.isEmpty else { return false }
        let fd = Glibc.open(processesFile, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return errno == ENOENT }
        defer { Glibc.close(fd) }
        var byte: UInt8 = 0
        while true {
            let count = read(fd, &byte, 1)
            if count < 0, errno == EINTR { continue }
            return count == 0
        }
    }

    /// cgroup.procs of the hierarchy every system has: devices on v1 (a `run`'s has no freezer).
    private var processesFile: String {
        (directories["unified"] ?? directories["devices"] ?? directories["freezer"] ?? directories["pids"]
            ?? directories.values.first ?? "") + "/cgroup.procs"
    }

    // MARK: Freeze, thaw, kill

    private var usesLegacyFreezer: Bool {
        directories["freezer"] != nil && (layout.preferLegacyFreezer || directories["unified"] == nil)
    }

    /// Freezes every process, those forked meanwhile included; returns once they all are frozen.
    /// Freezes every task, or throws `operationTimeout` after a second with the cgroup thawed
    /// again: a freeze that times out must not finish later, behind its caller's back, and leave
    /// a system frozen that its record calls Running (a task in uninterruptible I/O can hold
    /// v1 in FREEZING, and v2 short of frozen, for as long as its I/O takes).
    public func freeze() throws(SiloError) {
        if usesLegacyFreezer {
            let path = try path("freezer") + "/freezer.state"
            // v1 passes through FREEZING while tasks are caught; it may need the write repeated.
            for attempt in 0..<1000 {
                if attempt.isMultiple(of: 10) { try writeText(path, "FROZEN") }
                if readText(path) == "FROZEN" { return }
                usleep(1000)
            }
            try? writeText(path, "THAWED")
            throw SiloError(.operationTimeout, "cgroup \(name) stayed FREEZING for a second (thawed again)", field: "cgroup", value: name)
        }
        guard let unified = directories["unified"] else { throw unavailable("freezer") }
        try writeText(unified + "/cgroup.freeze", "1")
        for _ in 0..<1000 {
            if reportsFrozen(unified) { return }
            usleep(1000)
        }
        try? writeText(unified + "/cgroup.freeze", "0")
        throw SiloError(.operationTimeout, "cgroup \(name) did not report frozen within a second (thawed again)", field: "cgroup", value: name)
    }

    public func thaw() throws(SiloError) {
        if usesLegacyFreezer {
            try writeText(try path("freezer") + "/freezer.state", "THAWED")
            return
        }
        guard let unified = directories["unified"] else { throw unavailable("freezer") }
        try writeText(unified + "/cgroup.freeze", "0")
    }

    /// Whether the cgroup is frozen now.
    public var isFrozen: Bool {
        if usesLegacyFreezer, let freezer = directories["freezer"] { return readText(freezer + "/freezer.state") == "FROZEN" }
        return directories["unified"].map(reportsFrozen) ?? false
    }

    /// Whether a freeze was asked for, finished or not: v1's freezer.state FREEZING or FROZEN,
    /// cgroup2's `cgroup.freeze` 1 (its `frozen 1` in cgroup.events comes only once every task
    /// stopped). What to thaw before a signal must reach the processes, or before removal.
    var freezeRequested: Bool {
        if usesLegacyFreezer, let freezer = directories["freezer"] {
            return readText(freezer + "/freezer.state").map { $0 != "THAWED" } ?? false
        }
        return directories["unified"].map { readText($0 + "/cgroup.freeze") == "1" } ?? false
    }

    /// Whether cgroup.events has the line `frozen 1`. Compared as bytes: a first
    /// `String.contains(String)` costs a process 0.28M instructions (its searcher's skip table is
    /// a dictionary whose type the runtime looks up), a fifth of a terminate's work.
    private func reportsFrozen(_ directory: String) -> Bool {
        let events = readText(directory + "/cgroup.events") ?? ""
        return events.utf8.split(separator: UInt8(ascii: "\n")).contains { $0.elementsEqual("frozen 1".utf8) }
    }

    /// How ``killAll()`` kills.
    enum KillMethod: Equatable {
        /// cgroup2's `cgroup.kill` (Linux 5.14 on): the kernel kills every task, forks racing it included.
        case cgroupKill
        /// Freeze (v1's freezer, or cgroup2's `cgroup.freeze` from Linux 5.2), SIGKILL each task,
        /// thaw: nothing forks between the listing and the signals.
        case freezeFirst
        /// No way to freeze (a v1 cgroup made enforcingOnly): SIGKILL what is listed until nothing is.
        case signalsOnly
    }

    var killMethod: KillMethod {
        if layout.usesCgroupKill, let unified = directories["unified"], fileExists(unified + "/cgroup.kill") { return .cgroupKill }
        // cgroup2 without cgroup.kill (5.8 to 5.13) still freezes: a cgroup of a cgroup2-only
        // host has no v1 freezer, and was signalled without freezing.
        return withoutCgroupKill
    }

    /// How to kill without `cgroup.kill`: freezing first where the cgroup can be frozen.
    private var withoutCgroupKill: KillMethod {
        let freezable = usesLegacyFreezer ? directories["freezer"].map { fileExists($0) } : directories["unified"].map { fileExists($0 + "/cgroup.freeze") }
        return freezable == true ? .freezeFirst : .signalsOnly
    }

    /// Kills every process and waits until none is left (see ``KillMethod``).
    /// - Parameter keepingCgroup: the cgroup is used again (a system that stays Created): never
    ///   with `cgroup.kill`. After one, Linux 6.18 kills every process later cloned into the
    ///   cgroup (`CLONE_INTO_CGROUP`) at birth: the cgroup's kill count no longer matches the
    ///   one the clone read (measured here: a child cloned into an empty cgroup killed once got
    ///   SIGKILL before its first instruction), so the next start's init would die unseen.
    public func killAll(keepingCgroup: Bool = false) throws(SiloError) {
        var method = killMethod
        if keepingCgroup, method == .cgroupKill { method = withoutCgroupKill }
        switch method {
        case .cgroupKill:
            try writeText(try path("unified") + "/cgroup.kill", "1")
            // Tasks held by v1's freezer take no signal until thawed (cgroup.kill only overrides
            // v2's own freeze): thaw so the SIGKILL lands.
            // FREEZING too: tasks caught already take no signal either.
            if usesLegacyFreezer, let freezer = directories["freezer"], readText(freezer + "/freezer.state") != "THAWED" { try thaw() }
        case .freezeFirst:
            // Frozen, nothing forks while each task gets its SIGKILL (a fatal signal reaches a
            // task frozen by either freezer once thawed; cgroup2's lets it die at once); a freeze
            // that cannot finish (a task in uninterruptible I/O) leaves the signals to the loop below.
            let frozen = (try? freeze()) != nil
            for pid in pids { kill(pid, SIGKILL) }
            if frozen { try thaw() }
            signalUntilEmpty()
        case .signalsOnly:
            // The pids limit bounds what can fork meanwhile.
            signalUntilEmpty()
        }
        for _ in 0..<5000 {
            if pids.isEmpty { return }
            usleep(1000)
        }
        throw SiloError(.operationTimeout, "processes of cgroup \(name) outlived SIGKILL for 5 seconds: \(pids)",
                        field: "cgroup", value: name)
    }

    /// SIGKILL what the cgroup lists, a millisecond apart, until it lists nothing (100 rounds at most).
    private func signalUntilEmpty() {
        for _ in 0..<100 {
            let left = pids
            if left.isEmpty { break }
            for pid in left { kill(pid, SIGKILL) }
            usleep(1000)
        }
    }

    // MARK: Statistics and events

    public struct Statistics: Sendable, Hashable, Codable {
        public var memoryUsage: UInt64
        /// 100-nanosecond units, as HCS reports processor time.
        public var cpuUser100ns: UInt64
        public var cpuKernel100ns: UInt64
        public var processes: Int
    }

    public var statistics: Statistics {
        var stats = Statistics(memoryUsage: 0, cpuUser100ns: 0, cpuKernel100ns: 0, processes: pids.count)
        switch layout.place("memory") {
        case .v2?: stats.memoryUsage = directories["unified"].flatMap { readText($0 + "/memory.current") }.flatMap { UInt64($0) } ?? 0
        case .v1?: stats.memoryUsage = directories["memory"].flatMap { readText($0 + "/memory.usage_in_bytes") }.flatMap { UInt64($0) } ?? 0
        case nil: break
        }
        // v1's accounting where a v1 hierarchy has it; else cgroup2's cpu.stat, which every
        // cgroup2 directory has whether the cpu controller is enabled there or not (a subtree
        // delegated without it, a hybrid host's cgroup2 mount holding no controller).
        let legacy = layout.place("cpu") == .v2 ? nil : directory("cpuacct") ?? directories["cpu"]
        if legacy == nil, let unified = directories["unified"] {
            // cpu.stat: user_usec, system_usec.
            let fields = keyValues(readText(unified + "/cpu.stat"))
            stats.cpuUser100ns = (fields["user_usec"] ?? 0) * 10
            stats.cpuKernel100ns = (fields["system_usec"] ?? 0) * 10
        } else if let cpuacct = legacy {
            if let user = readText(cpuacct + "/cpuacct.usage_user").flatMap({ UInt64($0) }),
               let system = readText(cpuacct + "/cpuacct.usage_sys").flatMap({ UInt64($0) }) {
                // Nanoseconds (Linux 4.7 on): a process that ran for less than a tick counts too.
                stats.cpuUser100ns = user / 100
                stats.cpuKernel100ns = system / 100
            } else {
                // cpuacct.stat counts USER_HZ ticks (100 a second on Linux): 100,000 100-ns units each.
                let fields = keyValues(readText(cpuacct + "/cpuacct.stat"))
                stats.cpuUser100ns = (fields["user"] ?? 0) * 100_000
                stats.cpuKernel100ns = (fields["system"] ?? 0) * 100_000
            }
        }
        return stats
    }

    /// How many processes the kernel's OOM killer has killed in this cgroup.
    public var oomKills: UInt64 {
        switch layout.place("memory") {
        case .v2?: keyValues(directories["unified"].flatMap { readText($0 + "/memory.events") })["oom_kill"] ?? 0
        case .v1?: keyValues(directories["memory"].flatMap { readText($0 + "/memory.oom_control") })["oom_kill"] ?? 0
        case nil: 0
        }
    }

    // MARK: Removal

    /// Kills what is left and removes every directory: nothing remains after a system stops (C5).
    public func destroy() throws(SiloError) {
        if !pids.isEmpty { try killAll() }
        if freezeRequested { try? thaw() }
        let left = removeDirectories()
        guard left.isEmpty else {
            throw SiloError(.deviceInUse, "cgroup directories remain: \(left.joined(separator: ", "))",
                            field: "cgroup", value: name)
        }
    }

    /// Removes the directories of a cgroup whose processes are gone (such as a `run`'s, once its
    /// init is reaped: its pid namespace ended with it) without reading its state first; where a
    /// directory is still busy, as ``destroy()``.
    public func remove() throws(SiloError) {
        var busy = false
        for path in Set(directories.values) {
            if rmdir(path) != 0, errno != ENOENT {
                busy = true
                continue
            }
            removeDefaultParent(of: path)
        }
        if busy { try destroy() }
    }

    /// - Returns: the directories that remain.
    @discardableResult
    func removeDirectories() -> [String] {
        var left: [String] = []
        for path in Set(directories.values) {
            var removed = false
            for _ in 0..<100 {
                if rmdir(path) == 0 || errno == ENOENT {
                    removed = true
                    break
                }
                usleep(1000)  // the last task's exit may still be settling
            }
            if !removed { left.append(path) }
            removeDefaultParent(of: path)
        }
        return left.sorted()
    }

    /// The shared default parent `silo` goes with the last system (EBUSY while others remain).
    /// A parent the caller chose is theirs, and stays.
    private func removeDefaultParent(of path: String) {
        guard layout.parent == CgroupLayout.defaultParent else { return }
        rmdir(String(path[..<(path.lastIndex(of: "/") ?? path.endIndex)]))
    }
}

func keyValues(_ text: String?) -> [String: UInt64] {
    var values: [String: UInt64] = [:]
    for line in (text ?? "").split(separator: "\n") {
        let parts = line.split(separator: " ")
        if parts.count == 2, let number = UInt64(parts[1]) { values[String(parts[0])] = number }
    }
    return values
}

func fileExists(_ path: String) -> Bool {
    var info = stat()
    return stat(path, &info) == 0
}

func makeDirectory(_ path: String) throws(SiloError) {
    if mkdir(path, 0o755) != 0, errno != EEXIST { throw SiloError.system("mkdir", errno: errno, path: path) }
}
