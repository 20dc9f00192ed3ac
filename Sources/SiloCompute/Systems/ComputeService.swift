import Glibc
import SiloOperations
import Synchronization

/// What a system's properties query returns [HCS Properties] (C9).
public struct ComputeSystemProperties: Sendable, Codable, Hashable {
    public struct Statistics: Sendable, Codable, Hashable {
        public var memoryUsageBytes: UInt64
        /// 100-nanosecond units.
        public var processorTimeUser: UInt64
        public var processorTimeKernel: UInt64
        /// Seconds since the system started (its init did), as HCS's uptime counts.
        public var uptimeSeconds: Int64
    }

    public var id: String
    public var owner: String?
    public var state: ComputeSystemState
    public var exitType: SystemExitType?
    public var memoryLimitBytes: UInt64?
    public var processorCount: Int?
    /// Host pids of the system's processes.
    public var processList: [Int32]
    public var statistics: Statistics?
    public var ignoredFields: [String]
    public var cgroupLayout: String
    /// LUNs attached now, with their device inside and mount path.
    public var attachments: [Attachment] = []
    /// Where the system's cgroups are in each hierarchy (``CgroupLayout/parent``).
    public var cgroupParent: String = CgroupLayout.defaultParent
}

/// Creates, finds and lists compute systems [HcsCreateComputeSystem, HcsOpenComputeSystem,
/// HcsEnumerateComputeSystems]. Daemonless: state lives in `<runtime>/systems/<id>`, and any
/// process can open a system by id.
public final class ComputeService: Sendable {
    public let configuration: ComputeConfiguration
    public let scheduler: OperationScheduler
    let store: SystemStore

    public init(configuration: ComputeConfiguration = ComputeConfiguration(), scheduler: OperationScheduler = .shared) {
        self.configuration = configuration
        self.scheduler = scheduler
        self.store = SystemStore(configuration: configuration)
    }

    /// Creates a system from a ComputeSystem document: the document is checked and the id
    /// reserved at once (C1-C3, E3); the operation makes its cgroup and folder. The system is
    /// `Created`: start it to run its init.
    public func createComputeSystem(
        id: String,
        document text: String,
        context: (any Sendable)? = nil,
        callback: OperationCallback<ComputeSystem>? = nil
    ) throws(SiloError) -> SiloOperation<ComputeSystem> {
        try SandboxRun.validateID(id)
        reapStartedInits()
        let document = try ComputeSystemDocument(json: text)
        // An id a system ended with its last handle still names is free (that system is gone).
        if let earlier = try? store.load(id), earlier.state == .stopped { removeIfEndedWithLastHandle(earlier) }
        // Held until the record is written (or the create fails): see SystemStore.reserve.
        let reservation = Mutex<Int32>(try store.reserve(id, parent: configuration.recordedCgroupParent))
        let letGo: @Sendable () -> Void = {
            reservation.withLock { fd in
                if fd >= 0 { Glibc.close(fd) }
                fd = -1
            }
        }
        let record = SystemRecord(
            id: id, owner: document.owner, state: .created, document: text, initPID: nil, initStartTime: nil,
            exitType: nil, createdAt: nowSeconds(), shouldTerminateOnLastHandleClosed: document.shouldTerminateOnLastHandleClosed,
            cgroupParent: configuration.recordedCgroupParent
        )
        // Past "record" the system exists: a failure after (its handle could not be opened) leaves it.
        let recorded = Atomic<Bool>(false)
        do {
            return try scheduler.run(.createComputeSystem, chain: OperationChain([
                OperationStep("cgroup", run: { [self] _ in
                    _ = try Cgroup.create(name: configuration.cgroupName(for: id), limits: CgroupLimits(document), layout: configuration.layout)
                }, rollback: { [self] in
                    try Cgroup.open(name: configuration.cgroupName(for: id), layout: configuration.layout).destroy()
                }),
                OperationStep("record", pointOfNoReturn: true, run: { [self] _ in
                    try store.save(record)
                    recorded.store(true, ordering: .releasing)
                }),
            ], output: { [self] in
                // Let go once the handle holds its share of the handles file: between the two, a
                // reenumerate would take a ShouldTerminateOnLastHandleClosed system for abandoned.
                defer { letGo() }
                return try open(id)
            }, cleanup: { [store] in
                // Only a folder that is still this create's (its lock the one held).
                if !recorded.load(ordering: .acquiring), reservation.withLock({ store.holds($0, id) }) { store.remove(id) }
                letGo()
            }), context: context, callback: callback)
        } catch {
            if reservation.withLock({ store.holds($0, id) }) { store.remove(id) }
            letGo()
            throw error
        }
    }

    /// A new handle on an existing system, from any process (C3, C6).
    public func open(_ id: String) throws(SiloError) -> ComputeSystem {
        reapStartedInits()
        try SandboxRun.validateID(id)
        let record = try store.load(id)
        if record.state == .stopped, removeIfEndedWithLastHandle(record) {
            throw SiloError(.systemNotFound, "no compute system with id '\(id)' (it ended with its last handle)", field: "id", value: id)
        }
        return ComputeSystem(id: id, service: self, record: record)
    }

    /// A system its agent ended because its last handle's holder died (C6) is gone, as HCS
    /// releases it; but no handle is left to remove it, as the last close of a stopped system
    /// does. Whoever sees it stopped so (a list, an open, a create of its id, reenumerate) removes
    /// it, while no handle holds it (the close's own test: the handles file's lock, exclusively).
    /// - Returns: whether it was removed.
    @discardableResult
    func removeIfEndedWithLastHandle(_ record: SystemRecord) -> Bool {
        guard record.state == .stopped, record.shouldTerminateOnLastHandleClosed else { return false }
        let handles = store.directory(record.id) + "/handles"
        guard (readText(handles) ?? "").hasPrefix("terminated: last handle closed") else { return false }
        let probe = Glibc.open(handles, O_RDONLY | O_CLOEXEC)
        guard probe >= 0 else { return false }
        defer { Glibc.close(probe) }
        guard flock(probe, LOCK_EX | LOCK_NB) == 0, (try? store.load(record.id))?.state == .stopped else { return false }
        store.remove(record.id)
        return true
    }

    /// Systems matching the query; nil fields match everything (C9).
    public func enumerate(id: String? = nil, owner: String? = nil, state: ComputeSystemState? = nil) -> [ComputeSystemProperties] {
        reapStartedInits()
        return store.ids().compactMap { name in
            guard let record = try? store.load(name) else { return nil }
            let current = refreshed(record)
            if removeIfEndedWithLastHandle(current) { return nil }  // gone with its last handle
            let properties = self.properties(of: current)
            if let id, properties.id != id { return nil }
            if let owner, properties.owner != owner { return nil }
            if let state, properties.state != state { return nil }
            return properties
        }
    }

    /// Reconciles this runtime folder with the kernel: a system whose init died is recorded as
    /// Stopped (UnexpectedExit, or Forced after its last handle's holder died), one left frozen
    /// while its record says Running (a pause killed midway) is thawed, and what a `run`
    /// killed mid-way left (its reservation file, its cgroup and anything still in it) is removed. Runs
    /// still going, and systems of other runtime folders, are left alone.
    /// - Returns: the ids it repaired.
    @discardableResult
    public func reenumerate() -> [String] {
        // Never a sweep of the host's /run/systems (the root folder as state directory).
        guard (try? configuration.checkStateDirectory()) != nil else { return [] }
        var repaired: [String] = []
        for id in store.ids() {
            let directory = store.directory(id)
            if let record = try? store.load(id) {
                let current = refreshed(record)
                if removeIfEndedWithLastHandle(current) || current.state != record.state {
                    repaired.append(id)
                } else if record.state == .created, !configuration.cgroup(of: id, parent: record.cgroupParent).hasNoProcesses,
                          store.lockedIfFree(id, { () -> Void in
                              // Read again under the lock: a start may have finished in between.
                              guard let current = try? store.load(id), current.state == .created else { return }
                              try? clearDeadStart(of: id, cgroup: configuration.cgroup(of: id, parent: current.cgroupParent))
                          }) {
                    repaired.append(id)
                } else if record.state == .running, configuration.cgroup(of: id, parent: record.cgroupParent).freezeRequested,
                          store.lockedIfFree(id, { () -> Void in
                              // Read again under the lock: a pause may have saved Paused in between.
                              guard let current = try? store.load(id), current.state == .running else { return }
                              try? configuration.cgroup(of: id, parent: current.cgroupParent).thaw()
                          }) {
                    // Frozen while its record says Running, and no call under way: a pause, or a
                    // stop's freeze-kill-thaw, died between its freeze and its record (or its thaw).
                    // Left so, every request to its agent waited out its timeout, a resume was
                    // refused (not Paused), and its last handle's end went unseen.
                    repaired.append(id)
                } else if record.shouldTerminateOnLastHandleClosed, record.state == .created || record.state == .paused,
                          store.isAbandoned(id) {
                    // The last handle's holder died where no agent could see it (a Created system has
                    // none, a Paused one's is frozen): a handle opened and closed here is the last,
                    // and its close ends the system (C6).
                    (try? open(id))?.close()
                    repaired.append(id)
                }
                continue
            }
            var kind = stat()
            let lockPath = SandboxRun.runLock(systems: store.systems, id: id)
            // A folder with a run lock beside it is a `run`'s (from older versions): the run's way, below.
            if stat(directory, &kind) == 0, kind.st_mode & S_IFMT == S_IFDIR, access(lockPath, F_OK) != 0 {
                // A system's folder with no record: a create that died before writing it (its
                // lock is free then), or a removal that an open raced. Only one a minute old: a
                // create is never that long between its folder and its lock.
                guard Int64(time(nil)) - Int64(kind.st_mtim.tv_sec) >= 60 else { continue }
                let lock = Glibc.open(directory + "/lock", O_RDWR | O_CLOEXEC)
                defer { if lock >= 0 { Glibc.close(lock) } }
                if lock >= 0, flock(lock, LOCK_EX | LOCK_NB) != 0 { continue }
                guard !fileExists(directory + "/state.json") else { continue }
                // Under the parent the create wrote in its lock (none: the default).
                try? configuration.cgroup(of: id, parent: SandboxRun.cgroupParent(writtenIn: lock)).destroy()
                store.remove(id)
                repaired.append(id)
                continue
            }
            // No record: a `run`'s reservation. Its runner holds the run lock while it lives.
            let lock = Glibc.open(lockPath, O_RDWR | O_CLOEXEC)
            guard lock >= 0 else { continue }  // being made or removed by its runner right now
            defer { Glibc.close(lock) }
            guard flock(lock, LOCK_EX | LOCK_NB) == 0 else { continue }
            // Under the parent the run wrote in its lock (none: the default), not this call's.
            let cgroup = configuration.cgroup(of: id, parent: SandboxRun.cgroupParent(writtenIn: lock))
            guard (try? cgroup.destroy()) != nil else { continue }
            if unlink(directory) != 0 { rmdir(directory) }  // a run's file (a folder, from older versions)
            unlink(lockPath)
            repaired.append(id)
        }
        // A run's lock with no reservation beside it, a minute old (a runner takes its lock at
        // once, and makes its reservation next): its runner died between the two.
        let ids = Set(store.ids())
        for name in SystemStore.entries(store.systems) where name.hasPrefix(".") && name.hasSuffix(".run") {
            let id = String(name.dropFirst().dropLast(4))
            let path = SandboxRun.runLock(systems: store.systems, id: id)
            var info = stat()
            guard !id.isEmpty, !ids.contains(id), stat(path, &info) == 0, Int64(time(nil)) - Int64(info.st_mtim.tv_sec) >= 60 else { continue }
            let lock = Glibc.open(path, O_RDWR | O_CLOEXEC)
            guard lock >= 0 else { continue }
            defer { Glibc.close(lock) }
            guard flock(lock, LOCK_EX | LOCK_NB) == 0 else { continue }
            // Under the parent it names (none: the default), the cgroup it may have made.
            try? configuration.cgroup(of: id, parent: SandboxRun.cgroupParent(writtenIn: lock)).destroy()
            unlink(path)
            repaired.append(id)
        }
        return repaired
    }

    /// What a start killed before its record said Running left in a Created system (its caller
    /// holds the system's lock): its init and everything in the cgroup, the block devices it
    /// granted, its agent's socket and root folder. The init's death gives its LUNs' leases back.
    func clearDeadStart(of id: String, cgroup: Cgroup) throws(SiloError) {
        try cgroup.killAll(keepingCgroup: true)
        try cgroup.revokeBlockDevices()
        unlink(store.directory(id) + "/agent.sock")
        rmdir(store.root(id))
    }

    /// A running system whose processes are all gone stopped unexpectedly: say so (C4).
    /// The record is read again under the system's lock and changed only if it still says Running
    /// or Paused: a stop holding the lock meanwhile (its cgroup empty already) records how it
    /// ended, which this must not overwrite.
    func refreshed(_ record: SystemRecord) -> SystemRecord {
        guard record.state == .running || record.state == .paused,
              configuration.cgroup(of: record.id, parent: record.cgroupParent).hasNoProcesses else { return record }
        var result = record
        try? store.locked(record.id) { () throws(SiloError) in
            result = refreshedHoldingLock(try store.load(record.id))
        }
        return result
    }

    /// ``refreshed(_:)`` for a caller that holds the system's lock and read `record` under it.
    func refreshedHoldingLock(_ record: SystemRecord) -> SystemRecord {
        guard record.state == .running || record.state == .paused else { return record }
        let cgroup = configuration.cgroup(of: record.id, parent: record.cgroupParent)
        guard cgroup.hasNoProcesses else { return record }
        var stopped = record
        stopped.state = .stopped
        // The agent ends the system when the last handle's holder died, and says so in the
        // handles file (C6): that is a forced stop, not a crash.
        let reason = readText(store.directory(record.id) + "/handles") ?? ""
        stopped.exitType = reason.hasPrefix("terminated: last handle closed") ? .forced : .unexpected
        unlink(store.directory(record.id) + "/agent.sock")
        try? cgroup.destroy()
        try? store.save(stopped)
        return stopped
    }

    func properties(of record: SystemRecord) -> ComputeSystemProperties {
        let document = try? ComputeSystemDocument(json: record.document)
        let cgroup = configuration.cgroup(of: record.id, parent: record.cgroupParent)
        let live = record.state == .running || record.state == .paused
        let stats = live ? cgroup.statistics : nil
        return ComputeSystemProperties(
            id: record.id, owner: record.owner, state: record.state, exitType: record.exitType,
            memoryLimitBytes: record.memoryLimit ?? document?.memoryLimit, processorCount: record.processorCount ?? document?.processorCount,
            processList: live ? cgroup.pids : [],
            statistics: stats.map {
                .init(memoryUsageBytes: $0.memoryUsage, processorTimeUser: $0.cpuUser100ns,
                      processorTimeKernel: $0.cpuKernel100ns, uptimeSeconds: uptime(of: record))
            },
            ignoredFields: document?.ignoredFields ?? [], cgroupLayout: configuration.layout.description,
            attachments: live ? record.attachments ?? [] : [],
            cgroupParent: record.cgroupParent ?? CgroupLayout.defaultParent
        )
    }
}

/// Seconds since the system's init started: its start time in /proc (clock ticks since boot)
/// against the boot clock; since the system's creation where its record has no start time.
func uptime(of record: SystemRecord) -> Int64 {
    var now = timespec()
    let ticks = Int64(sysconf(Int32(_SC_CLK_TCK)))
    guard let start = record.initStartTime, ticks > 0, clock_gettime(CLOCK_BOOTTIME, &now) == 0 else {
        return nowSeconds() - record.createdAt
    }
    return max(0, Int64(now.tv_sec) - Int64(start) / ticks)
}
