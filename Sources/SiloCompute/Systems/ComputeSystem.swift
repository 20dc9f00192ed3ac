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
    private let handleLock: Atomic<Int32>

    init(id: String, service: ComputeService) {
        self.id = id
        self.service = service
        self.events = EventChannel(owner: id)
        let path = service.store.directory(id) + "/handles"
        let fd = Glibc.open(path, O_RDONLY | O_CREAT | O_CLOEXEC, 0o600)
        if fd >= 0 { flock(fd, LOCK_SH) }
        self.handleLock = Atomic(fd)
    }

    deinit {
        let fd = handleLock.exchange(-1, ordering: .relaxed)
        if fd >= 0 { Glibc.close(fd) }
    }

    var store: SystemStore { service.store }
    var cgroup: Cgroup { Cgroup.open(name: id, layout: service.configuration.layout) }

    /// How long `shutdown` waits after SIGTERM before it kills.
    public static let shutdownGrace: Duration = .seconds(10)

    public func properties() throws(SiloError) -> ComputeSystemProperties {
        service.properties(of: service.refreshed(try store.load(id)))
    }

    /// Created -> Running: starts Silo's init as pid 1 of the system's namespaces, in its cgroup.
    public func start(context: (any Sendable)? = nil, callback: OperationCallback<Void>? = nil) throws(SiloError) -> SiloOperation<Void> {
        try change(.start, from: [.created], context: context, callback: callback) { [self] in
            let configuration = service.configuration
            var spec = SandboxSpec(root: store.root(id), hostname: id, arguments: ["/.silo/init", "--idle"],
                                   initBinary: configuration.initBinary)
            if let runtime = configuration.swiftRuntimeDirectory { spec.readOnlyBinds.append(runtime) }
            if mkdir(store.root(id), 0o755) != 0, errno != EEXIST { throw SiloError.system("mkdir", errno: errno, path: store.root(id)) }
            // The system outlives the call: its init must not hold the caller's stdio (a pipe
            // would never see EOF). Processes get their own stdio when they are created.
            let null = Glibc.open("/dev/null", O_RDWR | O_CLOEXEC)
            defer { if null >= 0 { Glibc.close(null) } }
            spec.standardInput = null
            spec.standardOutput = null
            spec.standardError = null
            let process = try Sandbox.spawn(spec, cgroup: cgroup)
            Glibc.close(process.pidfd)
            return { record in
                record.state = .running
                record.initPID = process.pid
                record.initStartTime = processStartTime(process.pid)
            }
        }
    }

    /// Running -> Paused: freezes every process, those forked meanwhile too.
    public func pause(context: (any Sendable)? = nil, callback: OperationCallback<Void>? = nil) throws(SiloError) -> SiloOperation<Void> {
        try change(.pause, from: [.running], context: context, callback: callback) { [self] in
            try cgroup.freeze()
            return { $0.state = .paused }
        }
    }

    /// Paused -> Running.
    public func resume(context: (any Sendable)? = nil, callback: OperationCallback<Void>? = nil) throws(SiloError) -> SiloOperation<Void> {
        try change(.resume, from: [.paused], context: context, callback: callback) { [self] in
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
        let fd = handleLock.exchange(-1, ordering: .relaxed)
        guard fd >= 0 else { return }
        Glibc.close(fd)  // releases this handle's shared lock
        // Whoever can take the lock exclusively now holds the only remaining interest: the last.
        let probe = Glibc.open(store.directory(id) + "/handles", O_RDONLY | O_CLOEXEC)
        guard probe >= 0 else { return }
        defer { Glibc.close(probe) }
        guard flock(probe, LOCK_EX | LOCK_NB) == 0, let record = try? store.load(id) else { return }
        if record.state != .stopped, record.shouldTerminateOnLastHandleClosed {
            // Through no channel and with no event: the handle is closed (O18).
            _ = try? stop(.terminate, graceful: false, notify: false, context: nil, callback: nil).wait(timeout: .seconds(30))
        }
        if (try? store.load(id))?.state == .stopped { store.remove(id) }
    }

    // MARK: Transitions

    private func stop(_ type: OperationType, graceful: Bool, notify: Bool, context: (any Sendable)?,
                      callback: OperationCallback<Void>?) throws(SiloError) -> SiloOperation<Void> {
        let record = try store.load(id)
        if record.state == .stopped || service.refreshed(record).state == .stopped {
            throw SiloError(.systemAlreadyStopped, "compute system '\(id)' is already stopped", field: "id", value: id)
        }
        return try change(type, from: [.created, .running, .paused], context: context, callback: callback,
                          throughChannel: notify) { [self] in
            let cgroup = self.cgroup
            var exit = SystemExitType.forced
            if graceful, let pid = record.initPID, processStartTime(pid) == record.initStartTime {
                if cgroup.isFrozen { try cgroup.thaw() }
                kill(pid, SIGTERM)
                let deadline = ContinuousClock.now + Self.shutdownGrace
                while !cgroup.pids.isEmpty, ContinuousClock.now < deadline { usleep(2000) }
                if cgroup.pids.isEmpty { exit = .graceful }
            }
            try cgroup.destroy()
            if let pid = record.initPID { waitpid(pid, nil, WNOHANG) }  // reap it if it is our child
            rmdir(store.root(id))
            let exitType = record.state == .created ? SystemExitType.graceful : exit
            if notify { events.post(SiloEvent(type: .systemExited, data: #"{"ExitType":"\#(exitType.rawValue)"}"#)) }
            return { stopped in
                stopped.state = .stopped
                stopped.exitType = exitType
            }
        }
    }

    /// Checks the state at once (E3, C4), then runs `work` as an operation; its returned update is
    /// saved under the system's lock.
    private func change(
        _ type: OperationType,
        from allowed: Set<ComputeSystemState>,
        context: (any Sendable)?,
        callback: OperationCallback<Void>?,
        throughChannel: Bool = true,
        _ work: @escaping @Sendable () throws -> (inout SystemRecord) -> Void
    ) throws(SiloError) -> SiloOperation<Void> {
        let record = try store.load(id)
        guard allowed.contains(record.state) else {
            if record.state == .stopped, type == .shutdown || type == .terminate {
                throw SiloError(.systemAlreadyStopped, "compute system '\(id)' is already stopped", field: "id", value: id)
            }
            throw SiloError(.invalidState, "cannot \(type) compute system '\(id)': it is \(record.state.rawValue)",
                            field: "state", value: record.state.rawValue)
        }
        return try service.scheduler.run(type, context: context, callback: callback, events: throughChannel ? events : nil,
                                          cancellable: false) {
            [self] _ in
            try store.locked(id) { () throws(SiloError) in
                let update: (inout SystemRecord) -> Void
                do { update = try work() } catch { throw SiloError(error) }
                var current = try store.load(id)
                update(&current)
                try store.save(current)
            }
        }
    }
}
