import CSiloAgent
import CSiloLinux
import Dispatch
import Glibc
import SiloOperations
import Synchronization

/// One connection to a compute system's agent (silo-init, pid 1 inside): a handle's link to the
/// processes of the system. Requests wait for their reply; EXITED events go to `exitHandler`.
///
/// Who reads the socket: a caller that waits for something (a reply, a process's exit) and finds
/// nobody reading reads it itself, on its own thread, until what it waits for has come. Only when
/// something must arrive with nobody there to read it (another caller still waits when the one
/// reading stops, or a handle set an event handler) does a reader thread start, and then it reads from
/// there on. A command that starts a process and waits for its exit thus needs no thread: the
/// thread's creation (0.1-0.25 ms here) and two hand-overs were a third of its client side.
/// Protocol: silo_agent.h.
final class AgentConnection: Sendable {
    typealias ExitHandler = @Sendable (_ pid: Int32, _ status: Int32) -> Void

    private struct Pending {
        let done = DispatchSemaphore(value: 0)
        var reply: Result<[UInt8], SiloError>?
    }

    /// Who reads the socket now.
    private enum Reading {
        /// Nobody: the next waiter reads.
        case idle
        /// A waiting caller, on its own thread, until its wait is over.
        case caller
        /// The reader thread, until the connection ends.
        case thread
        /// Nobody ever again: the connection ended and its socket is closed.
        case ended
    }

    private struct State {
        var nextID: UInt32 = 1
        var pending: [UInt32: Pending] = [:]
        var closed: SiloError?
        var exitHandler: ExitHandler?
        var disconnectHandler: (@Sendable () -> Void)?
        var reading = Reading.idle
        /// Callers waiting on their semaphore while another caller reads: when that one stops, the
        /// reader thread takes over for them.
        var watchers = 0
        /// The semaphores of every caller asleep while someone else reads (a caller or the thread):
        /// the connection's end wakes them, and so does a reader thread that could not start, so
        /// that one of them reads instead.
        var sleepers: [DispatchSemaphore] = []
        /// `close()` shut the socket down while a caller read: if that caller stops before it
        /// sees the end, it ends the connection itself.
        var hungUp = false
        /// Requests sending on the socket right now: the connection's end closes the socket only
        /// after them (the last one closes it then), so that no send reaches a descriptor number
        /// a later open took.
        var sending = 0
        var socketClosed = false
    }

    let system: String
    private let socket: Int32
    private let state = Mutex(State())

    /// Connects to `<directory>/agent.sock` through the directory's descriptor, so the socket's
    /// path never meets the 108-byte limit of a socket address.
    init(system: String, directory: String) throws(SiloError) {
        self.system = system
        let folder = Glibc.open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard folder >= 0 else { throw SiloError(.systemNotFound, "no compute system with id '\(system)'", field: "id", value: system) }
        defer { Glibc.close(folder) }
        // Non-blocking for the connect: a connection waits in the agent's queue until the agent
        // takes it, and a paused (frozen) agent takes none, so past its 64 (closed ones count
        // until it is thawed) a blocking connect would wait for good, a resume's or terminate's
        // open included. A full queue is EAGAIN at once instead.
        let fd = Glibc.socket(AF_UNIX, Int32(SOCK_SEQPACKET.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
        guard fd >= 0 else { throw SiloError.system("socket", errno: errno) }
        let connected = withSocketAddress("/proc/self/fd/\(folder)/agent.sock") { address, length in
            Glibc.connect(fd, address, length)
        }
        guard connected == 0, fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK) == 0 else {
            let error = errno
            Glibc.close(fd)
            let reason = error == EAGAIN ? "it takes no more connections now (its queue is full: a paused system takes none until resumed)"
                : String(cString: strerror(error))
            throw SiloError(.connectFailed, "cannot reach the agent of compute system '\(system)': \(reason)",
                            field: "id", value: system, syscall: "connect", errno: error)
        }
        socket = fd
    }

    deinit {
        // Nobody read to the end (a reader thread holds this object until it has): the socket is
        // still open.
        if !state.withLock({ $0.socketClosed }) { Glibc.close(socket) }
    }

    func setExitHandler(_ handler: @escaping ExitHandler) { state.withLock { $0.exitHandler = handler } }
    func setDisconnectHandler(_ handler: @escaping @Sendable () -> Void) { state.withLock { $0.disconnectHandler = handler } }

    var isClosed: Bool { state.withLock { $0.closed != nil } }

    /// Sends a request with `descriptors` attached and waits for its reply's payload.
    /// - Throws: the agent's error mapped by `mapError`, `connectionClosed` when the agent went.
    func request(_ type: silo_agent_type, payload: [UInt8] = [], descriptors: [Int32] = [],
                 timeout: Duration = .seconds(30)) throws(SiloError) -> [UInt8] {
        let (id, done): (UInt32, DispatchSemaphore) = try state.withLock { (state) throws(SiloError) in
            if let error = state.closed { throw error }
            let id = state.nextID
            state.nextID = state.nextID == UInt32.max ? 1 : state.nextID + 1
            let pending = Pending()
            state.pending[id] = pending
            state.sending += 1
            return (id, pending.done)
        }
        var header = silo_agent_header(magic: SILO_AGENT_MAGIC, version: UInt16(SILO_AGENT_VERSION), type: UInt16(type.rawValue),
                                       id: id, length: UInt32(payload.count))
        let sent = send(header: &header, payload: payload, descriptors: descriptors)
        let sendError = errno
        state.withLock { state in
            state.sending -= 1
            if state.sending == 0, state.reading == .ended, !state.socketClosed {
                Glibc.close(socket)  // the connection ended while this sent: its close waited for it
                state.socketClosed = true
            }
        }
        if sent < 0 {
            let error = sendError
            state.withLock { _ = $0.pending.removeValue(forKey: id) }
            // The agent hung up: the connection is over for every waiter (and the next request
            // makes a new one), not kept to fail each request until a read happens to see it.
            if error == EPIPE || error == ECONNRESET || error == ENOTCONN {
                let reads = state.withLock { state -> Bool in
                    guard state.reading == .idle else { return false }  // a reader sees the end
                    state.reading = .caller
                    return true
                }
                if reads { end() }
            }
            throw SiloError(.connectionClosed, "the agent of compute system '\(system)' is gone: \(String(cString: strerror(error)))",
                            field: "id", value: system, syscall: "sendmsg", errno: error)
        }
        let arrived = wait(until: { [self] in state.withLock { $0.pending[id]?.reply != nil } }, signalled: done,
                           deadline: .now + timeout)
        let reply = state.withLock { $0.pending.removeValue(forKey: id)?.reply }
        if !arrived, reply == nil {
            throw SiloError(.operationTimeout, "the agent of compute system '\(system)' did not answer within \(timeout)",
                            field: "id", value: system)
        }
        switch reply {
        case .success(let bytes)?: return bytes
        case .failure(let error)?: throw error
        case nil: throw SiloError(.connectionClosed, "the agent of compute system '\(system)' is gone", field: "id", value: system)
        }
    }

    /// Blocks until `isDone()` or `deadline`, whichever comes first; false when the deadline came.
    /// Reads the socket on this thread when nobody else does; otherwise sleeps on `semaphore`,
    /// which whoever delivers what `isDone` waits for signals, and which the connection's end
    /// signals too. Returns when the connection ends (what it ended fails or is settled then), and
    /// takes over the reading when the one reading stops and no thread could take it.
    func wait(until isDone: () -> Bool, signalled semaphore: DispatchSemaphore, deadline: ContinuousClock.Instant) -> Bool {
        enum Role { case stop, read, sleep(counted: Bool) }
        while !isDone() {
            let role: Role = state.withLock { state in
                switch state.reading {
                case .ended:
                    return .stop  // nothing more will come
                case .idle:
                    state.reading = .caller
                    return .read
                case .caller:
                    state.watchers += 1
                    state.sleepers.append(semaphore)
                    return .sleep(counted: true)
                case .thread:
                    state.sleepers.append(semaphore)
                    return .sleep(counted: false)
                }
            }
            switch role {
            case .stop:
                return isDone()
            case .read:
                return read(until: isDone, deadline: deadline)
            case .sleep(let counted):
                let remaining = deadline - .now
                let nanoseconds = max(remaining.components.seconds * 1_000_000_000 + remaining.components.attoseconds / 1_000_000_000, 0)
                let woken = semaphore.wait(timeout: .now() + .nanoseconds(Int(nanoseconds))) == .success
                state.withLock { state in
                    if counted, state.watchers > 0 { state.watchers -= 1 }
                    state.sleepers.removeAll { $0 === semaphore }
                }
                // Woken without what it waits for: the end came, or the reading is free: look again.
                if !woken { return isDone() }
            }
        }
        return true
    }

    /// This caller reads until `isDone()`, the deadline or the connection's end.
    private func read(until isDone: () -> Bool, deadline: ContinuousClock.Instant) -> Bool {
        while !isDone() {
            let remaining = deadline - .now
            guard remaining > .zero else { break }
            let milliseconds = remaining.components.seconds * 1000 + remaining.components.attoseconds / 1_000_000_000_000_000 + 1
            if !receive(waitingAtMost: Int32(min(milliseconds, 60_000))) { return isDone() }
        }
        releaseReading()
        return isDone()
    }

    /// Takes in what has arrived, without blocking, when nobody reads: for a look at a state the
    /// agent's messages change (a process's status) that is not a wait.
    func takeArrived() {
        let reads: Bool = state.withLock { state in
            guard state.reading == .idle else { return false }
            state.reading = .caller
            return true
        }
        guard reads else { return }
        while true {
            var descriptor = pollfd(fd: socket, events: Int16(POLLIN), revents: 0)
            guard poll(&descriptor, 1, 0) > 0 else { break }
            if !receive(waitingAtMost: 0) { return }
        }
        releaseReading()
    }

    /// Starts the reader thread unless it runs (or the connection ended): for a handle that wants
    /// events delivered when nobody waits for them.
    func startReader() {
        let start: Bool = state.withLock { state in
            guard state.reading == .idle else {
                // A caller reads: it hands over to the thread when it stops.
                if state.reading == .caller { state.watchers += 1 }
                return false
            }
            state.reading = .thread
            return true
        }
        if start { spawnReader() }
    }

    /// A caller stops reading: the reader thread takes over when others still wait; after a
    /// `close()` that this caller did not see through, it ends the connection.
    private func releaseReading() {
        enum Next { case none, thread, end }
        let next: Next = state.withLock { state in
            guard state.reading == .caller else { return .none }
            if state.watchers > 0 {
                state.reading = .thread
                return .thread
            }
            if state.hungUp { return .end }
            state.reading = .idle
            return .none
        }
        switch next {
        case .none: break
        case .thread: spawnReader()
        case .end: end()
        }
    }

    private func spawnReader() {
        let started = PlatformThread.spawn { [self] in
            while receive(waitingAtMost: -1) {}
        }
        if !started {
            // No thread to be had: the callers that wait read for themselves again; with none
            // left, after a close(), the connection ends here.
            let (sleepers, ends) = state.withLock { state in
                let ends = state.hungUp && state.sleepers.isEmpty
                state.reading = ends ? .caller : .idle
                return (state.sleepers, ends)
            }
            sleepers.forEach { $0.signal() }
            if ends { end() }
        }
    }

    /// Gives the agent a descriptor to keep open under `tag` (a LUN's lease) until RELEASE.
    func hold(tag: String, descriptor: Int32) throws(SiloError) {
        _ = try request(SILO_AGENT_HOLD, payload: Array(tag.utf8.prefix(Int(SILO_AGENT_MAX_TAG))) + [0], descriptors: [descriptor])
    }

    /// Closes the descriptor the agent holds under `tag`.
    func release(tag: String) throws(SiloError) {
        _ = try request(SILO_AGENT_RELEASE, payload: Array(tag.utf8.prefix(Int(SILO_AGENT_MAX_TAG))) + [0])
    }

    /// Hangs up. Whoever reads sees the end, fails what still waits and closes the socket: only
    /// the one reading closes it, so its number is never reused under a reader. With nobody
    /// reading, this call ends the connection itself.
    /// Calling it again does nothing: the shutdown and the close happen under the state lock, so
    /// a later call never reaches a descriptor number that now names another file.
    /// A hang-up by this side tells nobody: the disconnect handler is for an agent that went away
    /// (its handle closes first and would ignore it; calling it cost a dispatch thread's start).
    func close() {
        let reads: Bool = state.withLock { state in
            guard state.reading != .ended else { return false }
            Glibc.shutdown(socket, Int32(SHUT_RDWR))
            state.hungUp = true
            state.disconnectHandler = nil
            guard state.reading == .idle else { return false }
            state.reading = .caller
            return true
        }
        if reads { end() }
    }

    private func send(header: inout silo_agent_header, payload: [UInt8], descriptors: [Int32]) -> Int {
        withUnsafeMutableBytes(of: &header) { headerBytes in
            var payload = payload
            return payload.withUnsafeMutableBytes { payloadBytes in
                var parts = [
                    iovec(iov_base: headerBytes.baseAddress, iov_len: headerBytes.count),
                    iovec(iov_base: payloadBytes.baseAddress, iov_len: payloadBytes.count),
                ]
                let controlSize = descriptors.isEmpty ? 0 : silo_cmsg_space(descriptors.count * MemoryLayout<Int32>.size)
                var control = [UInt8](repeating: 0, count: max(controlSize, 1))
                return parts.withUnsafeMutableBufferPointer { iov in
                    control.withUnsafeMutableBytes { controlBytes in
                        var message = msghdr()
                        message.msg_iov = iov.baseAddress
                        message.msg_iovlen = payloadBytes.isEmpty ? 1 : 2
                        if !descriptors.isEmpty {
                            message.msg_control = controlBytes.baseAddress
                            message.msg_controllen = controlSize
                            silo_cmsg_put_fds(&message, descriptors, Int32(descriptors.count))
                        }
                        var sent: Int
                        repeat { sent = sendmsg(socket, &message, Int32(MSG_NOSIGNAL)) } while sent < 0 && errno == EINTR
                        return sent
                    }
                }
            }
        }
    }

    /// Receives and handles one message, waiting up to `milliseconds` (-1: no limit) for it; the
    /// caller is the one reading. False when the connection ended: then it is closed, and what
    /// waited has been told.
    private func receive(waitingAtMost milliseconds: Int32) -> Bool {
        var descriptor = pollfd(fd: socket, events: Int16(POLLIN), revents: 0)
        let ready = poll(&descriptor, 1, milliseconds)
        if ready == 0 || (ready < 0 && errno == EINTR) { return true }
        let capacity = MemoryLayout<silo_agent_header>.size + Int(SILO_AGENT_MAX_PAYLOAD)
        // Uninitialised: recv fills what is read, and only that is read (zeroing 64 KiB and
        // faulting its pages in cost every connection more than its requests).
        var buffer = [UInt8](unsafeUninitializedCapacity: capacity) { _, count in count = capacity }
        var size: Int
        repeat { size = buffer.withUnsafeMutableBytes { recv(socket, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) } } while size < 0 && errno == EINTR
        if size < 0, errno == EAGAIN { return true }
        var header = silo_agent_header()
        // An end, or an agent that does not speak this protocol: hang up.
        guard size > 0, buffer.withUnsafeBytes({ silo_agent_check_header($0.baseAddress, size, &header) }) == 0 else {
            end()
            return false
        }
        let payload = Array(buffer[MemoryLayout<silo_agent_header>.size..<size])
        switch Int(header.type) {
        case Int(SILO_AGENT_OK.rawValue):
            complete(header.id, .success(payload))
        case Int(SILO_AGENT_ERROR.rawValue):
            var body = silo_agent_error()
            let decoded = payload.withUnsafeBytes { silo_agent_decode_fixed($0.baseAddress, $0.count, &body, MemoryLayout<silo_agent_error>.size) }
            complete(header.id, .failure(decoded == 0 ? agentError(body) : SiloError(.protocolError, "a damaged error reply from the agent of '\(system)'")))
        case Int(SILO_AGENT_EXITED.rawValue):
            var body = silo_agent_exited()
            let decoded = payload.withUnsafeBytes { silo_agent_decode_fixed($0.baseAddress, $0.count, &body, MemoryLayout<silo_agent_exited>.size) }
            if decoded == 0, let handler = state.withLock({ $0.exitHandler }) { handler(body.pid, body.status) }
        default:
            break
        }
        return true
    }

    /// The connection ended: fails what still waits, closes the socket, tells the handle. Called
    /// by the one reading.
    private func end() {
        let (waiting, disconnect) = state.withLock { state in
            let error = SiloError(.connectionClosed, "the agent of compute system '\(system)' is gone (the system stopped)",
                                  field: "id", value: system)
            state.closed = error
            state.reading = .ended
            for id in state.pending.keys { state.pending[id]?.reply = .failure(error) }
            let waiting = state.pending.values.map(\.done) + state.sleepers
            state.sleepers = []
            let disconnect = state.disconnectHandler
            state.exitHandler = nil
            state.disconnectHandler = nil
            if state.sending == 0 {
                Glibc.close(socket)
                state.socketClosed = true
            }
            return (waiting, disconnect)
        }
        waiting.forEach { $0.signal() }
        // Not on this thread: the one reading may be inside a change that holds the system's lock
        // (a start's HOLD), which the handler takes to read how the system ended.
        if let disconnect { DispatchQueue.global().async(execute: disconnect) }
    }

    private func complete(_ id: UInt32, _ reply: Result<[UInt8], SiloError>) {
        let done: DispatchSemaphore? = state.withLock { state in
            guard state.pending[id] != nil else { return nil }  // timed out meanwhile
            state.pending[id]?.reply = reply
            return state.pending[id]?.done
        }
        done?.signal()
    }

    private func agentError(_ body: silo_agent_error) -> SiloError {
        let message = String(cString: strerror(body.error))
        if body.step != 0 {
            let step = String(cString: silo_agent_step_name(body.step))
            return SiloError(body.error == EPERM || body.error == EACCES ? .accessDenied : .systemCallFailed,
                             "the process could not \(step) in compute system '\(system)': \(message) (errno \(body.error))",
                             field: "process", value: step, syscall: step, errno: body.error)
        }
        switch body.error {
        case ESRCH:
            return SiloError(.processAlreadyStopped, "the process is not running in compute system '\(system)'", errno: body.error)
        case ESHUTDOWN:
            return SiloError(.invalidState, "compute system '\(system)' is shutting down", field: "state", value: "stopping")
        case ETIMEDOUT:
            // The agent took the request up too late (it serves one at a time, and others before
            // it took long): the caller may have given up on it, so it was not carried out.
            return SiloError(.operationTimeout, "the agent of compute system '\(system)' was busy with other requests for too long; "
                             + "this one was not carried out: try again", errno: body.error)
        case EAGAIN:
            return SiloError(.operationDenied, "compute system '\(system)' runs as many processes as its agent tracks", errno: body.error)
        case EMFILE, ENFILE:
            return SiloError(.systemCallFailed, "the agent of compute system '\(system)' had no room for the request's descriptors: \(message); try again",
                             errno: body.error)
        case EPERM, EACCES:
            return SiloError(.accessDenied, "the agent of compute system '\(system)' was refused: \(message) (errno \(body.error))",
                             errno: body.error)
        default:
            return SiloError(.protocolError, "the agent of compute system '\(system)' refused a request: \(message) (errno \(body.error))",
                             errno: body.error)
        }
    }
}

/// Calls `body` with a `sockaddr_un` for `path` (at most 107 bytes).
func withSocketAddress<T>(_ path: String, _ body: (UnsafePointer<sockaddr>, socklen_t) -> T) -> T {
    var address = sockaddr_un()
    address.sun_family = sa_family_t(AF_UNIX)
    let bytes = Array(path.utf8.prefix(107))
    withUnsafeMutableBytes(of: &address.sun_path) { raw in
        raw.copyBytes(from: bytes)
        raw[bytes.count] = 0
    }
    return withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
    }
}
