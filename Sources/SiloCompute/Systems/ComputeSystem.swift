import CSiloAgent
import CSiloLinux
import Dispatch
import Glibc
import SiloOperations
import Synchronization

/// A handle on one compute system [HCS_SYSTEM]. State changes are operations; each checks the
/// HCS state rules at once (C4): a wrong state throws `invalidState`, stopping a stopped system
/// `systemAlreadyStopped`. Events (SystemExited, and operation completions with
/// `.operationCallbacks`) reach the handler set on ``events``.
public final class ComputeSystem: Sendable {
    public let id: String
    public let events: EventChannel
    let service: ComputeService
    /// This handle's shared flock on `<system>/handles`: the count of handles across processes
    /// is the count of shared locks (C6). -1 once closed.
    let handleLock: Atomic<Int32>

    private struct WeakProcess: Sendable {
        weak var process: ComputeProcess?
    }

    private struct Agent {
        /// This handle's connection to the system's agent, made when the system runs: it counts
        /// the handle where the agent can see it go, even if this process dies (C6).
        var connection: AgentConnection?
        /// Processes with a handle here, by pid inside; exits route to them.
        var processes: [Int32: [WeakProcess]] = [:]
        /// Exits that came before their process's handle was made (the reply and the event race).
        var unclaimedExits: [Int32: Int32] = [:]
        /// Running processes whose last handle here was closed: their exit is dropped when it
        /// comes, not kept as unclaimed for a later process that the same pid might name.
        var forgotten: Set<Int32> = []
        /// Processes whose exit the agent no longer keeps, found when watched again on a new connection.
        var lostExits: Set<Int32> = []
        var closed = false
        /// An event handler is set on this handle or on one of its processes: the connection keeps
        /// a reader thread, so that events come with nobody waiting for them.
        var wantsEvents = false
        /// A thread waits for the system to start, to connect then (see ``deliverEvents()``).
        var waitsForStart = false
    }

    private let agentState = Mutex(Agent())
    /// Set once this handle has reported (or is about to report) the system's exit: SystemExited
    /// goes out once per handle, whoever stopped the system.
    private let exitReported = Atomic<Bool>(false)
    /// Set by an ``agentDisconnected()`` that may return at the claim above: a failed stop that
    /// takes the claim back takes this too, and calls it again; only one of them goes on.
    private let disconnectDeferred = Atomic<Bool>(false)

    /// `record` is the system's record as `open` just read it (read once, not twice).
    init(id: String, service: ComputeService, record: SystemRecord) {
        self.id = id
        self.service = service
        self.cgroupParent = record.cgroupParent
        self.events = EventChannel(owner: id)
        let path = service.store.directory(id) + "/handles"
        let fd = Glibc.open(path, O_RDONLY | O_CREAT | O_CLOEXEC, 0o600)
        if fd >= 0 { flock(fd, LOCK_SH) }
        self.handleLock = Atomic(fd)
        if record.state == .running || record.state == .paused {
            _ = try? agent()
        }
        events.whenHandlerSet { [weak self] in self?.deliverEvents() }
    }

    /// Events must reach this handle's handlers with nobody waiting: a reader thread reads the
    /// agent's connection from now on (see ``AgentConnection``).
    ///
    /// A handle opened before its system started (another handle, maybe in another process, starts
    /// it) has no connection yet: a thread watches the record and connects once it says Running,
    /// so that this handle's handlers hear its processes and its exit, and its agent counts it.
    func deliverEvents() {
        let (connection, waits) = agentState.withLock { agent in
            agent.wantsEvents = true
            let waits = agent.connection == nil && !agent.waitsForStart && !agent.closed
            if waits { agent.waitsForStart = true }
            return (agent.connection, waits)
        }
        if let connection { return connection.startReader() }
        guard waits else { return }  // a thread watches already, or the handle is closed
        let state = (try? store.load(id))?.state
        guard state == .created else {
            agentState.withLock { $0.waitsForStart = false }
            if state == .running || state == .paused { _ = try? agent() }
            return
        }
        let started = PlatformThread.spawn { [weak self] in
            while let system = self {
                let record = try? system.store.load(system.id)
                let closed = system.agentState.withLock { $0.closed }
                if closed || record == nil { break }
                if record?.state == .stopped {
                    // Started and stopped between two looks (or stopped before its start was
                    // seen): this handle hears SystemExited all the same, once.
                    system.reportStoppedUnseen(record)
                    break
                }
                if record?.state == .running || record?.state == .paused {
                    // Starts its reader: events are wanted. No agent to reach: the system is
                    // stopping (its socket goes before its record says Stopped), or stopped; looked
                    // at again, and its end reported once its record says so.
                    if (try? system.agent()) != nil { break }
                }
                usleep(20_000)
            }
            self?.agentState.withLock { $0.waitsForStart = false }
        }
        if !started { agentState.withLock { $0.waitsForStart = false } }
    }

    /// SystemExited for a stop this handle had no connection to hear (see ``deliverEvents()``):
    /// its processes' ends first, then the system's, through the same once-only claim.
    private func reportStoppedUnseen(_ record: SystemRecord?) {
        guard let record, record.state == .stopped, !events.isClosed else { return }
        processesEndedWithSystem()
        guard !exitReported.exchange(true, ordering: .sequentiallyConsistent) else { return }
        let exitType = record.exitType ?? .unexpected
        events.post(SiloEvent(type: .systemExited, data: #"{"ExitType":"\#(exitType.rawValue)"}"#))
    }

    /// This handle's connection to the agent, if it has one.
    var connection: AgentConnection? { agentState.withLock { $0.connection } }

    deinit {
        let fd = handleLock.exchange(-1, ordering: .relaxed)
        if fd >= 0 { Glibc.close(fd) }
        agentState.withLock { $0.connection }?.close()
    }

    var store: SystemStore { service.store }
    /// The cgroup parent the system was created under (its record's; nil: the default).
    private let cgroupParent: String?
    var cgroup: Cgroup { service.configuration.cgroup(of: id, parent: cgroupParent) }

    /// How long `shutdown` waits after SIGTERM before it kills.
    public static let shutdownGrace: Duration = .seconds(10)

    /// The ComputeSystem document the system was created from.
    public func document() throws(SiloError) -> ComputeSystemDocument {
        try ComputeSystemDocument(json: store.load(id).document)
    }

    public func properties() throws(SiloError) -> ComputeSystemProperties {
        service.properties(of: service.refreshed(try store.load(id)))
    }

    /// Created -> Running: starts Silo's init as pid 1 of the system's namespaces, in its cgroup.
    /// - Parameter blockDevices: the LUNs the document attaches (`Devices.Scsi`), resolved by
    ///   storage (Silo's `start(storage:)` does it); each appears in /dev, mounted where asked,
    ///   and its lease is held by the system's agent while it runs (C12, S10).
    /// - Throws: at once, `objectNotFound` (field `init`) when Silo's init is not there;
    ///   `invalidState` unless Created; `invalidArgument` when the document
    ///   attaches LUNs and `blockDevices` does not bring them.
    public func start(blockDevices: [BlockDevice] = [], context: (any Sendable)? = nil,
                      callback: OperationCallback<Void>? = nil) throws(SiloError) -> SiloOperation<Void> {
        let stored = try store.load(id)
        // Only a start that could go on needs init: a system in another state is refused as such.
        if stored.state == .created { try service.configuration.checkInit() }
        let attached = try ComputeSystemDocument(json: stored.document).scsiAttachments
        let missing = attached.map(\.lun).filter { name in !blockDevices.contains { $0.lun == name } }
        if let first = missing.first {
            throw SiloError.invalidArgument(field: "Devices.Scsi", value: first,
                                            reason: "the document attaches LUN '\(first)': start the system through Silo's start(storage:) (or `silo system start`), which resolves it")
        }
        // The caller may release its leases once this returns: the operation holds copies (a copy
        // that cannot be made is an error: without it storage would let the LUN go under the system).
        let leases = try Self.copyLeases(blockDevices.map(\.leaseDescriptor))
        let cgroup = self.cgroup
        let grants = blockDevices.compactMap(\.grant)
        // A start that fails takes its grants back (the cgroup stays for the next start).
        let revokeGrants: @Sendable () -> Void = {
            if !grants.isEmpty { try? cgroup.setBlockDevices([], removing: grants.map(\.number)) }
        }
        let directory = store.directory(id)
        return try change(.start, from: [.created], context: context, callback: callback, finally: {
            leases.filter { $0 >= 0 }.forEach { _ = Glibc.close($0) }
        }, unsaved: {
            // Started, but the record cannot say so: what it started goes (the next start would
            // start another init beside one no record names), and its grants.
            try? cgroup.killAll(keepingCgroup: true)
            unlink(directory + "/agent.sock")
            reapStartedInits()
            revokeGrants()
            rmdir(directory + "/root")
        }) { [self] record in
            let configuration = service.configuration
            // A start that fails takes back what it made: its grants, the root folder, the agent's
            // socket (a stop removes them too).
            var started = false
            defer { if !started { revokeGrants() } }
            // A start killed before its record said Running left its init here, with the LUNs it
            // held and their grants: it goes, or this start would run a second init beside it.
            if !cgroup.hasNoProcesses { try service.clearDeadStart(of: record.id, cgroup: cgroup) }
            if !grants.isEmpty { try cgroup.setBlockDevices(grants) }
            var arguments = ["/.silo/init", "--agent"]
            if record.shouldTerminateOnLastHandleClosed { arguments.append("--terminate-on-last-handle") }
            var spec = SandboxSpec(root: store.root(id), hostname: id, arguments: arguments, initBinary: configuration.initBinary)
            if let runtime = configuration.swiftRuntimeDirectory { spec.readOnlyBinds.append(runtime) }
            let root = store.root(id)
            let madeRoot = mkdir(root, 0o755) == 0
            if !madeRoot, errno != EEXIST { throw SiloError.system("mkdir", errno: errno, path: root) }
            defer { if !started, madeRoot { rmdir(root) } }
            // The agent's socket is made here, on the host, and inherited: inside, the agent
            // cannot reach this folder. The handles file lets it see when no handle is left.
            let listener = try AgentListener(directory: store.directory(id))
            defer {
                if !started { listener.remove() }
                listener.close()
            }
            let handles = Glibc.open(store.directory(id) + "/handles", O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
            guard handles >= 0 else { throw SiloError.system("open", errno: errno, path: store.directory(id) + "/handles") }
            defer { Glibc.close(handles) }
            spec.inheritedDescriptors = [listener.fd, handles]
            spec.blockDevices = blockDevices
            // To start processes as other users, and to signal them (a kill of another user's
            // process needs CAP_KILL: a process started with User could be neither signalled nor
            // sent the shutdown's SIGTERM); each process it starts drops them.
            spec.keptCapabilities = [5, 6, 7, 8]  // CAP_KILL, CAP_SETGID, CAP_SETUID, CAP_SETPCAP
            // The system outlives the call: its init must not hold the caller's stdio (a pipe
            // would never see EOF). Processes get their own stdio when they are created.
            let null = Glibc.open("/dev/null", O_RDWR | O_CLOEXEC)
            defer { if null >= 0 { Glibc.close(null) } }
            spec.standardInput = null
            spec.standardOutput = null
            spec.standardError = null
            let process = try Sandbox.spawn(spec, cgroup: cgroup)
            Glibc.close(process.pidfd)
            // This handle now counts where the agent sees it, so even this process's death is seen (C6).
            let connection = try? agent()
            do throws(SiloError) {
                // Its LUNs' leases, before the system counts as started: without them storage
                // would let them go (deleted, mounted elsewhere) under a running system.
                for (device, lease) in zip(blockDevices, leases) where lease >= 0 {
                    guard let connection else {
                        throw SiloError(.systemCallFailed, "compute system '\(id)' started, but its agent did not answer to take its LUNs' leases",
                                        field: "id", value: id)
                    }
                    try holdLease(of: device, descriptor: lease, through: connection)
                }
            } catch {
                // Not started after all: its init goes (its pid namespace with it), still Created.
                try? cgroup.killAll(keepingCgroup: true)
                _ = kill(process.pid, SIGKILL)
                var status: Int32 = 0
                while waitpid(process.pid, &status, 0) < 0, errno == EINTR {}
                throw error
            }
            let attachments = blockDevices.map(Attachment.init)
            let rawLeases = blockDevices.filter { $0.mountPath == nil }.map { $0.lun ?? $0.devicePath }
            // Started: this process's child until someone here reaps it.
            startedInits.withLock { _ = $0.insert(process.pid) }
            started = true
            return { record in
                record.attachments = attachments
                record.rawLeases = rawLeases.isEmpty ? nil : rawLeases
                record.state = .running
                record.initPID = process.pid
                record.initStartTime = processStartTime(process.pid)
            }
        }
    }

    /// Running -> Paused: freezes every process, those forked meanwhile too.
    public func pause(context: (any Sendable)? = nil, callback: OperationCallback<Void>? = nil) throws(SiloError) -> SiloOperation<Void> {
        // The request gate, held from before the freeze until the record says Paused (`finally`).
        // Taken before the system's lock: while the pause waits (5 s at most) for the process
        // starts and signals already on their way, a terminate or a modify is not held up.
        let gate = Mutex<Int32>(-1)
        // A record that cannot say Paused must not be left with a frozen system: every call would
        // wait on its agent, and resume would be refused.
        return try change(.pause, from: [.running], context: context, callback: callback,
                          before: { [self] () throws(SiloError) in
                              let fd = try openRequestGate(exclusive: true)
                              gate.withLock { $0 = fd }
                          },
                          finally: { gate.withLock { fd in if fd >= 0 { Glibc.close(fd) }; fd = -1 } },
                          unsaved: { [cgroup] in try? cgroup.thaw() }) { [self] _ in
            try cgroup.freeze()
            return { $0.state = .paused }
        }
    }

    /// The gate of requests that change what runs inside (a process start, a signal): each holds
    /// it shared, from its check that the system runs until the agent's reply; a pause holds it
    /// exclusively from before its freeze until its record says Paused. Without it, a request
    /// checked against a Running record and sent as the freeze came waited in the frozen agent's
    /// socket, timed out for its caller, and was carried out at the resume: a process nobody
    /// owned, a signal its sender was told had failed.
    /// The lock is on the system's folder itself: no file to make that a start racing a removal
    /// could make again after the removal's unlink, and keep the folder.
    /// - Throws: `operationTimeout` when the gate cannot be had within 5 seconds (nothing changed).
    func openRequestGate(exclusive: Bool) throws(SiloError) -> Int32 {
        let fd = Glibc.open(store.directory(id), O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { throw SiloError(.systemNotFound, "no compute system with id '\(id)'", field: "id", value: id) }
        if lockFile(fd, exclusive ? LOCK_EX : LOCK_SH, waitingAtMost: 5000) == 0 { return fd }
        Glibc.close(fd)
        throw SiloError(.operationTimeout, exclusive
                            ? "compute system '\(id)' is starting or signalling a process; it was not paused, try again"
                            : "compute system '\(id)' is being paused; nothing was sent to it, try again",
                        field: "id", value: id)
    }

    /// Paused -> Running.
    public func resume(context: (any Sendable)? = nil, callback: OperationCallback<Void>? = nil) throws(SiloError) -> SiloOperation<Void> {
        try change(.resume, from: [.paused], context: context, callback: callback, unsaved: { [cgroup] in try? cgroup.freeze() }) {
            [self] _ in
            try cgroup.thaw()
            return { $0.state = .running }
        }
    }

    /// Graceful stop (C5): SIGTERM to init, which ends the system; SIGKILL to all after the grace period.
    public func shutdown(context: (any Sendable)? = nil, callback: OperationCallback<Void>? = nil) throws(SiloError) -> SiloOperation<Void> {
        try stop(.shutdown, graceful: true, notify: true, context: context, callback: callback)
    }

    /// Immediate stop (C5): every process killed, paused or not.
    public func terminate(context: (any Sendable)? = nil, callback: OperationCallback<Void>? = nil) throws(SiloError) -> SiloOperation<Void> {
        try stop(.terminate, graceful: false, notify: true, context: context, callback: callback)
    }

    /// Closes the handle: no event after this (O18). With ShouldTerminateOnLastHandleClosed, the
    /// last handle, in any process, terminates the system; the last handle of a stopped system
    /// removes its state.
    public func close() {
        events.close()
        let connection = agentState.withLock { agent in
            agent.closed = true
            return agent.connection
        }
        // The connection goes last: the agent, seeing it close, would end the system too, and the
        // host's own stop below records how it ended.
        defer { connection?.close() }
        let fd = handleLock.exchange(-1, ordering: .relaxed)
        guard fd >= 0 else { return }
        Glibc.close(fd)  // releases this handle's shared lock
        // Whoever can take the lock exclusively now holds the only remaining interest: the last.
        let probe = Glibc.open(store.directory(id) + "/handles", O_RDONLY | O_CLOEXEC)
        guard probe >= 0 else { return }
        defer { Glibc.close(probe) }
        guard flock(probe, LOCK_EX | LOCK_NB) == 0, let record = try? store.load(id) else { return }
        var stopped = record.state == .stopped
        if !stopped, record.shouldTerminateOnLastHandleClosed {
            // Through no channel and with no event: the handle is closed (O18).
            _ = try? stop(.terminate, graceful: false, notify: false, context: nil, callback: nil).wait(timeout: .seconds(30))
            stopped = (try? store.load(id))?.state == .stopped
        }
        if stopped { store.remove(id) }
    }

    // MARK: LUNs (C12)

    /// Attaches a block device (a LUN storage resolved) to the running system [HcsModifyComputeSystem,
    /// Add]: its file system is mounted where asked, or else its node appears in /dev and the cgroup
    /// allows it; the agent holds its lease.
    /// - Throws: at once, `invalidState` unless Running; `invalidArgument` when that LUN is attached.
    public func attach(_ device: BlockDevice, context: (any Sendable)? = nil,
                       callback: OperationCallback<Void>? = nil) throws(SiloError) -> SiloOperation<Void> {
        let name = device.lun ?? device.devicePath
        try checkAttachable(lun: name, devicePath: device.devicePath, mountPath: device.mountPath, in: try store.load(id))
        let lease = try Self.copyLeases([device.leaseDescriptor])[0]
        // What to undo when the LUN is in but the record cannot say so: set once it is in.
        let undo = Mutex<(@Sendable () -> Void)?>(nil)
        return try change(.modify, from: [.running], context: context, callback: callback, finally: {
            if lease >= 0 { Glibc.close(lease) }
        }, unsaved: {
            undo.withLock { $0 }?()
        }) { [self] record in
            // Again under the lock: two attaches of one LUN at once both passed the first check.
            try checkAttachable(lun: name, devicePath: device.devicePath, mountPath: device.mountPath, in: record)
            // One LUN at one SCSI location: checked here, where two Adds at once cannot both pass.
            if let location = device.location, record.attachments?.contains(where: { $0.location == location }) == true {
                throw SiloError.invalidArgument(field: "ResourcePath", value: location, reason: "a LUN is attached there already")
            }
            let attached = record.attachments?.compactMap(\.device.grant) ?? []
            // Given raw before (and detached since): its lease must stay, whatever happens now.
            let heldBefore = device.mountPath == nil && record.rawLeases?.contains(name) == true
            // The agent holds the lease before anything of the LUN's is inside: a process there
            // could open a raw node at once, and keep it past any rollback.
            if lease >= 0 {
                do throws(SiloError) {
                    try holdLease(of: device, descriptor: lease, through: agent())
                } catch {
                    // The agent may have taken it and its answer got lost: it goes again, unless
                    // the agent held this LUN's lease before (a raw LUN's stays until the stop).
                    if error.code != .invalidOperation, !heldBefore { try? agent().release(tag: device.leaseTag) }
                    throw error
                }
            }
            // The lease goes back only once nothing of the LUN's is left inside. `opened`: the
            // system may have opened the raw node meanwhile (a descriptor Linux does not revoke),
            // and a raw LUN's lease then stays until the system stops, as after a detach.
            let takeBack: @Sendable (_ opened: Bool) -> Void = { [self] opened in
                let undone = (try? enter(record, device, attach: false)) != nil
                if device.grant != nil { try? cgroup.setBlockDevices(attached, removing: [device.deviceNumber]) }
                if lease >= 0, undone, !heldBefore, !(opened && device.mountPath == nil) { try? agent().release(tag: device.leaseTag) }
            }
            do {
                if let grant = device.grant { try cgroup.setBlockDevices(attached + [grant]) }
                try enter(record, device, attach: true)
            } catch {
                takeBack(false)
                throw error
            }
            undo.withLock { $0 = { takeBack(true) } }
            let raw = device.mountPath == nil
            return {
                $0.attachments = ($0.attachments ?? []) + [Attachment(device)]
                if raw, $0.rawLeases?.contains(name) != true { $0.rawLeases = ($0.rawLeases ?? []) + [name] }
            }
        }
    }

    /// Refuses LUN `name` (at `devicePath`, mounted at `mountPath`) as a new attachment where it
    /// cannot join those the system has (``BlockDevice/conflict(at:in:)``), or its device is attached
    /// already.
    /// - Throws: `invalidArgument` naming `lun` or `mountPath`.
    public func checkAttachable(lun name: String, mountPath: String?) throws(SiloError) {
        try checkAttachable(lun: name, devicePath: nil, mountPath: mountPath, in: try store.load(id))
    }

    /// As the public one, against `record`.
    func checkAttachable(lun name: String, devicePath: String?, mountPath: String?, in record: SystemRecord) throws(SiloError) {
        let attachments = record.attachments ?? []
        let places = attachments.map { (lun: $0.lun, mountPath: $0.mountPath) } + [(lun: name, mountPath: mountPath.map(BlockDevice.canonicalMountPath))]
        if let (reason, onMountPath) = BlockDevice.conflict(at: attachments.count, in: places) {
            throw onMountPath ? SiloError.invalidArgument(field: "mountPath", value: mountPath ?? "", reason: reason)
                : SiloError.invalidArgument(field: "lun", value: name, reason: "it is attached to compute system '\(id)' already")
        }
        if let devicePath, attachments.contains(where: { $0.devicePath == devicePath }) {
            throw SiloError.invalidArgument(field: "lun", value: name, reason: "its device is attached to compute system '\(id)' already")
        }
    }

    /// Has the agent hold `device`'s lease (`descriptor`); past the agent's most, says so.
    /// Copies of the callers' lease descriptors (-1 where there is none), for the operation to hold.
    /// - Throws: when one cannot be copied (no descriptor left), with the copies made closed.
    static func copyLeases(_ descriptors: [Int32?]) throws(SiloError) -> [Int32] {
        var copies: [Int32] = []
        for descriptor in descriptors {
            guard let descriptor else {
                copies.append(-1)
                continue
            }
            let copy = fcntl(descriptor, F_DUPFD_CLOEXEC, 0)
            guard copy >= 0 else {
                let error = SiloError.system("fcntl", errno: errno, message: "cannot copy a LUN's lease descriptor: \(String(cString: strerror(errno)))")
                copies.filter { $0 >= 0 }.forEach { _ = Glibc.close($0) }
                throw error
            }
            copies.append(copy)
        }
        return copies
    }

    private func holdLease(of device: BlockDevice, descriptor: Int32, through connection: AgentConnection) throws(SiloError) {
        do throws(SiloError) {
            try connection.hold(tag: device.leaseTag, descriptor: descriptor)
        } catch {
            guard error.errno == ENOSPC else { throw error }
            throw SiloError(.invalidOperation,
                            "compute system '\(id)' holds \(SILO_AGENT_MAX_HELD) LUN leases, its most (a LUN given raw keeps its lease "
                                + "until the system stops, detached or not)",
                            field: "lun", value: device.lun ?? device.devicePath)
        }
    }

    /// Detaches LUN `lun` from the running system [HcsModifyComputeSystem, Remove]: unmounted
    /// (refused while busy inside) and its lease given back, or, given raw, its node removed and
    /// denied in the cgroup, its lease kept until the system stops (a descriptor opened inside
    /// meanwhile still works: Linux revokes none).
    /// - Throws: at once, `invalidState` unless Running (a paused system's agent could not give
    ///   the lease back); `objectNotFound` when it is not attached.
    public func detach(lun name: String, context: (any Sendable)? = nil,
                       callback: OperationCallback<Void>? = nil) throws(SiloError) -> SiloOperation<Void> {
        guard let attachment = try store.load(id).attachments?.first(where: { $0.lun == name }) else {
            throw SiloError(.objectNotFound, "LUN '\(name)' is not attached to compute system '\(id)'", field: "lun", value: name)
        }
        // Not while paused: the agent, frozen, could not give the lease back.
        return try change(.modify, from: [.running], context: context, callback: callback) { [self] record in
            // Again under the lock: a detach of the same LUN may have run meanwhile.
            guard record.attachments?.contains(where: { $0.lun == name && $0.devicePath == attachment.devicePath }) == true else {
                throw SiloError(.objectNotFound, "LUN '\(name)' is not attached to compute system '\(id)'", field: "lun", value: name)
            }
            let device = attachment.device
            // The agent must give a mounted LUN's lease back after the unmount: one it cannot be
            // reached through (its connections full, this handle closed) fails the detach here,
            // before anything of the LUN's has changed.
            if device.mountPath != nil { _ = try agent().request(SILO_AGENT_LIST) }
            try enter(record, device, attach: false)
            let remaining = try store.load(id).attachments?.filter { $0.lun != name }.compactMap(\.device.grant) ?? []
            try cgroup.setBlockDevices(remaining, removing: [device.deviceNumber])
            // A raw LUN's lease stays with the system until it stops (see DeviceGrant): only a
            // mounted one's is given back, now that it is unmounted. An agent that cannot be told
            // (at its most connections, or this handle closed meanwhile) fails the detach, with the
            // LUN still listed: a lease kept by the agent would keep storage from deleting the LUN
            // with nothing attached to say why. A retry finishes (nothing mounted is no error).
            if device.mountPath != nil {
                do throws(SiloError) {
                    try agent().release(tag: device.leaseTag)
                } catch {
                    if error.errno != ENOENT { throw error }  // not held: nothing to give back
                }
            }
            return { $0.attachments = ($0.attachments ?? []).filter { $0.lun != name } }
        }
    }

    /// Applies a ModifySettingRequest [HcsModifyComputeSystem]: a SCSI attachment removed by its
    /// location, or a new memory or processor limit, at once on the live cgroup. An Add names a LUN
    /// that storage resolves: use Silo's `modify(_:storage:)` (or ``attach(_:)`` with the device).
    /// - Throws: at once, `invalidState` unless Running (or Paused); `objectNotFound` for an empty location.
    public func modify(_ request: ModifyRequest, context: (any Sendable)? = nil,
                       callback: OperationCallback<Void>? = nil) throws(SiloError) -> SiloOperation<Void> {
        try request.validate()
        switch request.change {
        case .attach(let attachment):
            throw SiloError.invalidArgument(field: "Settings.Path", value: attachment.lun,
                                            reason: "an Add attaches a LUN that storage resolves: use Silo's modify(_:storage:) or `silo system modify`")
        case .detach(let controller, let index):
            let location = "\(controller)/\(index)"
            guard let attachment = try store.load(id).attachments?.first(where: { $0.location == location }) else {
                throw SiloError(.objectNotFound, "nothing is attached at SCSI \(location) of compute system '\(id)'",
                                field: "ResourcePath", value: location)
            }
            return try detach(lun: attachment.lun, context: context, callback: callback)
        case .memory(let megabytes):
            return try change(.modify, from: [.running, .paused], context: context, callback: callback) { [self] _ in
                do throws(SiloError) {
                    try cgroup.update(CgroupLimits(memory: UInt64(megabytes) << 20, pids: nil))
                } catch {
                    throw Self.namingSettings(error, megabytes: megabytes)
                }
                return { $0.memoryLimit = UInt64(megabytes) << 20 }
            }
        case .processorCount(let count):
            return try change(.modify, from: [.running, .paused], context: context, callback: callback) { [self] record in
                // Scaled by Processor.Limit (the document's, or the last modify's), as at the start.
                try cgroup.update(CgroupLimits(cpus: Self.cpus(record, count: count), pids: nil))
                return { $0.processorCount = count }
            }
        case .processorLimit(let limit):
            return try change(.modify, from: [.running, .paused], context: context, callback: callback) { [self] record in
                try cgroup.update(CgroupLimits(cpus: Self.cpus(record, limit: limit), pids: nil))
                return { $0.processorLimit = limit }
            }
        case .processorWeight(let weight):
            return try change(.modify, from: [.running, .paused], context: context, callback: callback) { [self] _ in
                try cgroup.update(CgroupLimits(cpuWeight: weight, pids: nil))
                return { _ in }
            }
        }
    }

    /// A memory limit the system's usage does not fit under, named as the request's `Settings`.
    private static func namingSettings(_ error: SiloError, megabytes: Int) -> SiloError {
        guard error.field == "memory", error.code == .invalidArgument else { return error }
        var named = error
        named.field = "Settings"
        named.value = String(megabytes)
        return named
    }

    /// The CPUs a system gets with `count` or `limit` changed: the rest from the last modify, else
    /// from its document.
    private static func cpus(_ record: SystemRecord, count: Int? = nil, limit: Int? = nil) throws(SiloError) -> Double? {
        var document = try ComputeSystemDocument(json: record.document)
        document.processorCount = count ?? record.processorCount ?? document.processorCount
        document.processorLimit = limit ?? record.processorLimit ?? document.processorLimit
        return CgroupLimits(document).cpus
    }

    /// The agent's connection ended: the system stopped, whoever stopped it (another handle, the
    /// last handle's holder dying, its init killed). Every handle hears SystemExited with how it
    /// ended (C5); the one that stopped it reports that itself.
    private func agentDisconnected() {
        // A stop of this handle's that fails takes the claim back, and calls this again if it
        // returned here meanwhile (the connection's end was taken then, and would not come again):
        // the mark first, then the claim; whichever of the two takes the mark back goes on.
        guard !events.isClosed else { return }
        disconnectDeferred.store(true, ordering: .sequentiallyConsistent)
        guard !exitReported.load(ordering: .sequentiallyConsistent),
              disconnectDeferred.exchange(false, ordering: .sequentiallyConsistent) else { return }
        // A stop by another process holds the system's lock until its record says Stopped.
        guard var record = try? store.locked(id, { () throws(SiloError) in try store.load(id) }) else { return }
        var final = service.refreshed(record)
        // Init's death ends the pid namespace; its last processes may take a moment to go.
        for _ in 0..<100 where final.state != .stopped {
            usleep(10_000)
            guard let again = try? store.load(id) else { return }
            record = again
            final = service.refreshed(record)
        }
        guard final.state == .stopped else {
            events.post(SiloEvent(type: .serviceDisconnect, data: #"{"Reason":"the agent closed this handle's connection"}"#))
            return
        }
        processesEndedWithSystem()
        guard !exitReported.exchange(true, ordering: .sequentiallyConsistent) else { return }
        let exitType = final.exitType ?? .unexpected
        events.post(SiloEvent(type: .systemExited, data: #"{"ExitType":"\#(exitType.rawValue)"}"#))
    }

    /// Makes (or removes) the device node and mount inside the system's mount namespace.
    private func enter(_ record: SystemRecord, _ device: BlockDevice, attach: Bool) throws(SiloError) {
        // The pidfd first, then the start time: init still the process that started then means the
        // pidfd names it (its pid was not free to be reused while it lived), whatever the pid
        // names afterwards. The other way round, an init that died in between and a pid reused
        // would have sent the attach into another process's namespace.
        let pidfd = record.initPID.map { silo_pidfd_open($0) } ?? -1
        let pidfdError = errno
        defer { if pidfd >= 0 { Glibc.close(pidfd) } }
        guard let pid = record.initPID, pidfd >= 0 || pidfdError == ENOSYS, processStartTime(pid) == record.initStartTime else {
            throw SiloError(.invalidState, "compute system '\(id)' has no running init", field: "state", value: record.state.rawValue)
        }
        let parts = device.deviceNumber.split(separator: ":").compactMap { UInt32($0) }
        guard parts.count == 2 else { throw SiloError.invalidArgument(field: "deviceNumber", value: device.deviceNumber, reason: "major:minor") }
        // The system's processes stand still while its root and /dev are briefly writable and the
        // mount path is walked (the freezer; a paused system stays paused): none of them can race
        // the change (a link swapped in, a file planted, a node made first).
        let wasFrozen = cgroup.isFrozen
        if !wasFrozen { try cgroup.freeze() }
        defer { if !wasFrozen { try? cgroup.thaw() } }
        var failure = silo_sandbox_failure()
        let result = device.devicePath.withCString { path in
            (device.filesystemType ?? "auto").withCString { type in
                withOptionalCString(device.mountPath) { target in
                    var config = silo_attach_config(device_path: path, major: parts[0], minor: parts[1], mount_target: target,
                                                    filesystem_type: type, read_only: device.readOnly ? 1 : 0)
                    return silo_sandbox_attach(pid, pidfd, &config, attach ? 1 : 0, &failure)
                }
            }
        }
        guard result == 0 else {
            let step = String(cString: silo_sandbox_step_name(failure.step))
            let busy = failure.error == EBUSY
            throw SiloError(busy ? .deviceInUse : .systemCallFailed,
                            "compute system '\(id)' could not \(step) for \(device.lun.map { "LUN '\($0)'" } ?? device.devicePath): "
                                + "\(String(cString: strerror(failure.error))) (errno \(failure.error))",
                            field: "lun", value: device.lun ?? device.devicePath, syscall: step, errno: failure.error)
        }
        // A detach is done only when the LUN is mounted nowhere inside: its lease is given back
        // after this, and the LUN may then go to another system or be deleted.
        if !attach, let place = Self.mountPoint(of: device, inNamespaceOf: pid) {
            throw SiloError(.deviceInUse, "LUN '\(device.lun ?? device.devicePath)' is still mounted at \(place) inside compute system '\(id)'; "
                                + "unmount it there, or terminate the system",
                            field: "lun", value: device.lun ?? device.devicePath)
        }
    }

    /// Where `device` is mounted in the mount namespace of process `pid`, if anywhere: by its
    /// node (mountinfo's source) or its number.
    static func mountPoint(of device: BlockDevice, inNamespaceOf pid: Int32) -> String? {
        guard let text = readText("/proc/\(pid)/mountinfo") else { return nil }
        for line in text.split(separator: "\n") {
            let fields = line.split(separator: " ")
            guard fields.count > 4, let dash = fields.firstIndex(of: "-"), fields.count > dash + 2 else { continue }
            if fields[2] == device.deviceNumber || fields[dash + 2] == device.devicePath { return String(fields[4]) }
        }
        return nil
    }

    // MARK: Processes

    /// Starts a process in the running system through its agent [HcsCreateProcess] (C7). The
    /// parameters are checked at once; the operation's output has the process's pid and exactly
    /// the pipes (or the console) asked for.
    /// - Parameter standardStreams: descriptors of the caller's to give the process as its stdin,
    ///   stdout and stderr (-1: /dev/null) instead of the pipes the parameters ask for; a CLI
    ///   passes its own terminal through this way. The caller keeps (and closes) them.
    /// - Throws: at once, `invalidState` unless the system runs; bad parameters name their field.
    public func createProcess(_ parameters: ProcessParameters, standardStreams: [Int32]? = nil, context: (any Sendable)? = nil,
                              callback: OperationCallback<ComputeProcess>? = nil) throws(SiloError) -> SiloOperation<ComputeProcess> {
        let record = try store.load(id)
        // A live connection to its agent is a live init: the cgroup need not be asked.
        let state = hasLiveAgent ? record.state : service.refreshed(record).state
        guard state == .running else {
            throw SiloError(.invalidState, "cannot create a process in compute system '\(id)': it is \(state.rawValue)",
                            field: "state", value: state.rawValue)
        }
        try parameters.validate()
        let user = try ProcessUser(parameters.user)
        if let standardStreams, standardStreams.count != 3 || standardStreams.contains(where: { $0 >= 0 && fcntl($0, F_GETFD) < 0 }) {
            throw SiloError.invalidArgument(field: "standardStreams", value: "\(standardStreams)", reason: "three open descriptors (or -1)")
        }
        return try service.scheduler.run(.createProcess, context: context, callback: callback, events: events, cancellable: false) {
            [self] _ in try spawnProcess(parameters, user: user, standardStreams: standardStreams)
        }
    }

    /// A handle on a process of this system started by any handle, in any process: its exit (with
    /// its code) reaches this handle too, even when it came before this call.
    /// - Throws: `processInfoNotAvailable` for a pid the agent did not start.
    public func openProcess(_ pid: Int32) throws(SiloError) -> ComputeProcess {
        try checkAgentAwake("open a process")
        let process = ComputeProcess(pid: pid, system: self, standardInput: nil, standardOutput: nil, standardError: nil,
                                     isConsole: false, oomKillsAtStart: cgroup.oomKills)
        register(process)
        do {
            let connection = try agent()
            if let status = try watch(pid, on: connection) { watchedExit(pid, status: status) }
        } catch {
            forget(process)
            if error.code == .processAlreadyStopped {
                throw SiloError(.processInfoNotAvailable, "compute system '\(id)' has no process \(pid) that Silo started",
                                field: "pid", value: "\(pid)")
            }
            throw error
        }
        return process
    }

    /// The processes running in the system, as its agent sees them (pids inside, pid 1 is the agent).
    /// - Throws: `invalidState` while the system is paused.
    public func processes() throws(SiloError) -> [ProcessSummary] {
        try checkAgentAwake("list the processes")
        let bytes = try agent().request(SILO_AGENT_LIST)
        return ProcessSummary.decode(bytes)
    }

    func spawnProcess(_ parameters: ProcessParameters, user: ProcessUser, standardStreams: [Int32]?) throws(SiloError) -> ComputeProcess {
        let connection = try agent()
        var environment = Dictionary(uniqueKeysWithValues: SandboxSpec.defaultEnvironment.map { line in
            let parts = line.split(separator: "=", maxSplits: 1)
            return (String(parts[0]), parts.count > 1 ? String(parts[1]) : "")
        })
        environment.merge(parameters.environment) { _, new in new }
        let stdio: ProcessStdio
        if let standardStreams { stdio = ProcessStdio(passing: standardStreams) } else { stdio = try ProcessStdio(parameters) }
        var sent = false
        defer { stdio.closeChildEnds(); if !sent { stdio.closeParentEnds() } }
        var fixed = silo_agent_spawn(flags: stdio.flags | (user.switches ? UInt32(SILO_SPAWN_USER.rawValue) : 0),
                                     argc: UInt32(parameters.arguments.count), envc: UInt32(environment.count),
                                     uid: user.uid, gid: user.gid)
        let variables = environment.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }
        // Not zeroed first: the encoder writes the `length` bytes that are sent, and zeroing 64 KiB
        // (and faulting its pages in) was most of a process start's client-side work.
        var length = 0
        let payload = [UInt8](unsafeUninitializedCapacity: Int(SILO_AGENT_MAX_PAYLOAD)) { raw, count in
            length = withCStrings(parameters.arguments) { argv in
                withCStrings(variables) { envp in
                    silo_agent_encode_spawn(raw.baseAddress, raw.count, &fixed, parameters.workingDirectory ?? "/",
                                            UnsafePointer(OpaquePointer(argv)), UnsafePointer(OpaquePointer(envp)))
                }
            }
            count = max(length, 0)
        }
        guard length > 0 else {
            throw SiloError.invalidArgument(field: "CommandLine", value: parameters.arguments.joined(separator: " ").prefix(80) + "...",
                                            reason: "the command and environment exceed \(SILO_AGENT_MAX_PAYLOAD) bytes")
        }
        let oomKills = cgroup.oomKills
        let gate = try openRequestGate(exclusive: false)
        defer { Glibc.close(gate) }
        try checkAgentAwake("create a process")  // a pause that came since the call's check
        let reply = try connection.request(SILO_AGENT_SPAWN, payload: payload, descriptors: stdio.descriptors)
        // A reply with no pid leaves no process to own this side's pipe ends: they close (above).
        guard reply.count == 4 else { throw SiloError(.protocolError, "a damaged reply to a process start from '\(id)'") }
        sent = true
        // Not DataProtocol's copyBytes: FoundationEssentials' generic path cost a process 73k
        // instructions of first-use metadata work, a sixth of `silo process create`'s own.
        let pid = reply.withUnsafeBytes { $0.loadUnaligned(as: Int32.self) }
        let process = ComputeProcess(pid: pid, system: self, standardInput: stdio.input, standardOutput: stdio.output,
                                     standardError: stdio.error, isConsole: parameters.emulateConsole, oomKillsAtStart: oomKills)
        register(process)
        return process
    }

    /// Refuses a request to the agent while the system is paused: the agent is frozen with the
    /// rest, and the request would wait out its 30-second timeout.
    func checkAgentAwake(_ what: String) throws(SiloError) {
        guard (try? store.load(id))?.state == .paused else { return }
        throw SiloError(.invalidState, "cannot \(what) in compute system '\(id)': it is paused (its agent with it); resume it first",
                        field: "state", value: ComputeSystemState.paused.rawValue)
    }

    /// This handle's live connection to the agent, made on first use.
    func agent() throws(SiloError) -> AgentConnection {
        let (connection, watched) = try agentState.withLock { (agent) throws(SiloError) -> (AgentConnection, [Int32]) in
            if agent.closed { throw SiloError(.invalidOperation, "the handle on compute system '\(id)' is closed", field: "id", value: id) }
            if let connection = agent.connection, !connection.isClosed { return (connection, []) }
            let ended = agent.connection != nil
            let connection = try AgentConnection(system: id, directory: store.directory(id))
            connection.setExitHandler { [weak self] pid, status in self?.processExited(pid, status: status) }
            connection.setDisconnectHandler { [weak self] in self?.agentDisconnected() }
            agent.connection = connection
            if agent.wantsEvents { connection.startReader() }
            // A connection after one that ended (the agent dropped it, alive): the exits of this
            // handle's processes would still go to the old one. Asked for again, below.
            let watched = ended ? agent.processes.compactMap { pid, handles in
                handles.contains { $0.process.map { !$0.hasExited } ?? false } ? pid : nil
            } : []
            return (connection, watched)
        }
        for pid in watched {
            do throws(SiloError) {
                if let status = try watch(pid, on: connection) { watchedExit(pid, status: status) }
            } catch where error.code == .processAlreadyStopped {
                // Exited, and its exit no longer kept (the agent's table reuses the oldest): its
                // waiters are told, not left to wait for an exit that will not come.
                agentState.withLock { _ = $0.lostExits.insert(pid) }
                processes(withPID: pid).forEach { $0.wakeWaiters() }
            } catch {}
        }
        return connection
    }

    /// Asks the agent for `pid`'s exit on `connection`: the status when it has exited (in the
    /// reply, and nowhere after it), nil while it runs (its EXITED comes at its exit). An agent
    /// older than that form of WATCH refuses it (EBADMSG): its first form then, whose exit comes
    /// as an event after the reply.
    private func watch(_ pid: Int32, on connection: AgentConnection) throws(SiloError) -> Int32? {
        var body = silo_agent_watch(pid: pid, flags: UInt32(SILO_WATCH_EXIT_IN_REPLY.rawValue))
        let reply: [UInt8]
        do throws(SiloError) {
            reply = try connection.request(SILO_AGENT_WATCH, payload: withUnsafeBytes(of: &body) { Array($0) })
        } catch where error.errno == EBADMSG {
            var first = pid
            _ = try connection.request(SILO_AGENT_WATCH, payload: withUnsafeBytes(of: &first) { Array($0) })
            return nil
        }
        if reply.isEmpty { return nil }
        var exited = silo_agent_exited()
        guard reply.withUnsafeBytes({ silo_agent_decode_fixed($0.baseAddress, $0.count, &exited, MemoryLayout<silo_agent_exited>.size) }) == 0,
              exited.pid == pid
        else { throw SiloError(.protocolError, "a damaged reply to a watch of process \(pid) in '\(id)'") }
        return exited.status
    }

    /// An exit a WATCH's reply carried: to this handle's processes of that pid that are still
    /// registered. Never kept as unclaimed: where none is left, an EXITED read before the reply
    /// (sent earlier, unread until then) gave them this same exit.
    private func watchedExit(_ pid: Int32, status: Int32) {
        let handles = agentState.withLock { $0.processes.removeValue(forKey: pid)?.compactMap(\.process) ?? [] }
        handles.forEach { $0.exited(waitStatus: status, fromAgent: true) }
    }

    private func processes(withPID pid: Int32) -> [ComputeProcess] {
        agentState.withLock { $0.processes[pid]?.compactMap(\.process) ?? [] }
    }

    /// Whether the agent answered that it no longer keeps the exit of `pid`, a process this handle
    /// watched (after a connection it dropped).
    func hasLostExit(of pid: Int32) -> Bool { agentState.withLock { $0.lostExits.contains(pid) } }

    /// Whether this handle is connected to the system's agent, and the connection has not ended.
    var hasLiveAgent: Bool { agentState.withLock { $0.connection.map { !$0.isClosed } ?? false } }

    /// Exits kept for a handle not made yet (the tests' view of the bookkeeping).
    var unclaimedExitCount: Int { agentState.withLock { $0.unclaimedExits.count } }

    /// Whether the system's agent is gone for good: this handle's connection ended, and the
    /// system's init is no longer the process that started it. A connection the agent dropped
    /// for this client alone (a reply it could not deliver, its connections all taken), or one
    /// this handle closed, ends with the agent alive: no process of it is known to have exited.
    var agentIsGone: Bool {
        guard connectionEnded else { return false }
        guard let record = try? store.load(id), let pid = record.initPID, let started = record.initStartTime else { return true }
        return !processIsLive(pid, startedAt: started)
    }

    /// The system stopped: this handle's processes that no exit was heard of ended with it. What
    /// the agent sent before it went is taken in first (an exit just before the stop is its own);
    /// the rest are reported killed (SIGKILL), each with its ProcessExited (C8), before the
    /// system's SystemExited. A handle's process never hears of its end otherwise: the agent that
    /// would report it died with the system.
    func processesEndedWithSystem() {
        connection?.takeArrived()
        let running = agentState.withLock { agent in agent.processes.values.flatMap { $0.compactMap(\.process) } }
        for process in running where !process.hasExited {
            process.exited(waitStatus: Int32(SIGKILL), fromAgent: false, announce: true)
        }
    }

    /// Whether this handle's agent connection ended (whatever the agent's fate).
    var connectionEnded: Bool { agentState.withLock { $0.connection?.isClosed ?? false } }

    /// Whether ``close()`` was called.
    var isClosedHandle: Bool { agentState.withLock { $0.closed } }

    private func register(_ process: ComputeProcess) {
        let unclaimed = agentState.withLock { agent -> Int32? in
            agent.processes[process.pid, default: []].append(WeakProcess(process: process))
            agent.forgotten.remove(process.pid)
            return agent.unclaimedExits.removeValue(forKey: process.pid)
        }
        if let unclaimed { processExited(process.pid, status: unclaimed) }
    }

    func forget(_ process: ComputeProcess) {
        let running = !process.hasExited
        agentState.withLock { agent in
            agent.processes[process.pid]?.removeAll { $0.process == nil || $0.process === process }
            if agent.processes[process.pid]?.isEmpty == true {
                agent.processes[process.pid] = nil
                if running { agent.forgotten.insert(process.pid) }
            }
        }
    }

    private func processExited(_ pid: Int32, status: Int32) {
        let handles = agentState.withLock { agent -> [ComputeProcess] in
            guard let entries = agent.processes.removeValue(forKey: pid) else {
                if agent.forgotten.remove(pid) != nil { return [] }
                if agent.unclaimedExits.count > 1024 { agent.unclaimedExits.removeAll() }
                agent.unclaimedExits[pid] = status
                return []
            }
            return entries.compactMap(\.process)
        }
        handles.forEach { $0.exited(waitStatus: status, fromAgent: true) }
    }

    // MARK: Transitions

    private func stop(_ type: OperationType, graceful: Bool, notify: Bool, context: (any Sendable)?,
                      callback: OperationCallback<Void>?) throws(SiloError) -> SiloOperation<Void> {
        let before = try store.load(id)
        if before.state == .stopped || service.refreshed(before).state == .stopped {
            throw SiloError(.systemAlreadyStopped, "compute system '\(id)' is already stopped", field: "id", value: id)
        }
        return try change(type, from: [.created, .running, .paused], context: context, callback: callback,
                          throughChannel: notify) { [self] record in
            exitReported.store(true, ordering: .sequentiallyConsistent)  // this handle reports it below
            let cgroup = self.cgroup
            var exit = SystemExitType.forced
            do throws(SiloError) {
                if graceful, let pid = record.initPID, processStartTime(pid) == record.initStartTime {
                    if cgroup.freezeRequested { try cgroup.thaw() }
                    kill(pid, SIGTERM)
                    let deadline = ContinuousClock.now + Self.shutdownGrace
                    while !cgroup.hasNoProcesses, ContinuousClock.now < deadline { usleep(2000) }
                    if cgroup.hasNoProcesses { exit = .graceful }
                }
                try cgroup.destroy()
            } catch {
                // Not stopped after all (a task stuck in uninterruptible I/O kept the cgroup):
                // the exit is still to be reported, by this handle when it sees it, or another.
                // Its connection may have ended already (init killed), seen while this claim
                // stood: looked at again once this stop lets the system's lock go. A re-call
                // finds the mark set and goes on only if it takes the mark back itself.
                exitReported.store(false, ordering: .sequentiallyConsistent)
                if disconnectDeferred.exchange(false, ordering: .sequentiallyConsistent) {
                    DispatchQueue.global().async { [weak self] in self?.agentDisconnected() }
                }
                throw error
            }
            // Reap it if it is this process's child (and forget it: its pid may name another later).
            if let pid = record.initPID {
                startedInits.withLock { pids in
                    if pids.contains(pid), waitpid(pid, nil, WNOHANG) == pid { pids.remove(pid) }
                }
            }
            rmdir(store.root(id))
            unlink(store.directory(id) + "/agent.sock")
            processesEndedWithSystem()
            let exitType = record.state == .created ? SystemExitType.graceful : exit
            if notify { events.post(SiloEvent(type: .systemExited, data: #"{"ExitType":"\#(exitType.rawValue)"}"#)) }
            return { stopped in
                stopped.state = .stopped
                stopped.exitType = exitType
            }
        }
    }

    /// Checks the state at once (E3, C4), then runs `work` as an operation, under the system's
    /// lock, with the record read again there and its state checked again: another call (in this
    /// process or another) may have changed it between the two (two starts at once would each
    /// start an init). `work`'s returned update is saved under the same lock. `finally` runs once:
    /// when the operation ends, whether `work` ran or not, or when the call is refused at once (it
    /// closes what the caller handed over); `unsaved` when `work` ran but its update could not be
    /// saved (a full /run): it undoes what `work` made that the record does not name.
    private func change(
        _ type: OperationType,
        from allowed: Set<ComputeSystemState>,
        context: (any Sendable)?,
        callback: OperationCallback<Void>?,
        throughChannel: Bool = true,
        before: @escaping @Sendable () throws(SiloError) -> Void = {},
        finally: @escaping @Sendable () -> Void = {},
        unsaved: @escaping @Sendable () -> Void = {},
        _ work: @escaping @Sendable (SystemRecord) throws -> (inout SystemRecord) -> Void
    ) throws(SiloError) -> SiloOperation<Void> {
        // Refused at once, the operation never runs to call it: called here then.
        do throws(SiloError) {
            try checkState(type, allowed, try store.load(id))
            // Cancelled in the queue, the work never runs: what it would have let go, goes then
            // (the copies of LUN leases a start or an attach made, which kept the LUNs leased).
            return try service.scheduler.run(type, context: context, callback: callback, events: throughChannel ? events : nil,
                                              cancellable: false, withdrawn: { finally() }) {
                [self] _ in
                defer { finally() }
                try before()  // what may wait, before the system's lock: other changes go on meanwhile
                try store.locked(id) { () throws(SiloError) in
                    let current = service.refreshedHoldingLock(try store.load(id))
                    try checkState(type, allowed, current)
                    let update: (inout SystemRecord) -> Void
                    do { update = try work(current) } catch { throw SiloError(error) }
                    do throws(SiloError) {
                        var changed = try store.load(id)
                        update(&changed)
                        try store.save(changed)
                    } catch {
                        unsaved()
                        throw error
                    }
                }
            }
        } catch {
            finally()
            throw error
        }
    }

    private func checkState(_ type: OperationType, _ allowed: Set<ComputeSystemState>, _ record: SystemRecord) throws(SiloError) {
        guard allowed.contains(record.state) else {
            if record.state == .stopped, type == .shutdown || type == .terminate {
                throw SiloError(.systemAlreadyStopped, "compute system '\(id)' is already stopped", field: "id", value: id)
            }
            throw SiloError(.invalidState, "cannot \(type) compute system '\(id)': it is \(record.state.rawValue)",
                            field: "state", value: record.state.rawValue)
        }
    }
}
