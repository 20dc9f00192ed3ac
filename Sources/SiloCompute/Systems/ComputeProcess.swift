import CSiloAgent
import CSiloLinux
import Dispatch
import Glibc
import SiloOperations
import Synchronization

/// A process's state as HCS reports it [HCS ProcessStatus]: in properties and in the
/// ProcessExited event's document.
public struct ProcessStatus: Sendable, Codable, Hashable {
    /// The pid inside the system.
    public var processId: Int32
    public var exited: Bool
    /// The exit code; 128 + the signal when a signal ended it (137 after an OOM kill).
    public var exitCode: Int32?
    /// The signal that ended it, if one did.
    public var signal: Int32?
    /// True when the system's memory limit killed it.
    public var outOfMemory: Bool?

    enum CodingKeys: String, CodingKey {
        case processId = "ProcessId", exited = "Exited", exitCode = "ExitCode", signal = "Signal", outOfMemory = "OomKilled"
    }

    init(pid: Int32, waitStatus: Int32, outOfMemory: Bool) {
        processId = pid
        exited = true
        let signal = waitStatus & 0x7f
        self.signal = signal == 0 ? nil : signal
        exitCode = signal == 0 ? (waitStatus >> 8) & 0xff : 128 + signal
        self.outOfMemory = outOfMemory ? true : nil
    }

    init(running pid: Int32) {
        processId = pid
        exited = false
    }

    var document: String {
        var text = #"{"ProcessId":\#(processId),"Exited":\#(exited)"#
        if let exitCode { text += #","ExitCode":\#(exitCode)"# }
        if let signal { text += #","Signal":\#(signal)"# }
        if let outOfMemory { text += #","OomKilled":\#(outOfMemory)"# }
        return text + "}"
    }
}

/// A process in a compute system [HCS_PROCESS] (C7, C8), started through the system's agent. The
/// descriptors are the caller's ends of the pipes (or the console) asked for, owned by this object
/// until `close()`. Its exit reaches `events` as `processExited`, with a ``ProcessStatus`` document.
public final class ComputeProcess: Sendable {
    /// The pid inside the system (the agent's pid namespace).
    public let pid: Int32
    public let system: ComputeSystem
    public let events: EventChannel
    /// Write end of the process's stdin; with a console, the terminal (same as `standardOutput`).
    public let standardInput: Int32?
    /// Read end of the process's stdout; with a console, the terminal.
    public let standardOutput: Int32?
    /// Read end of the process's stderr (none with a console: it shares the terminal).
    public let standardError: Int32?
    /// Whether stdin/stdout are a pseudo-terminal's controlling side (EmulateConsole).
    public let isConsole: Bool

    private struct State {
        var status: ProcessStatus
        var stdinOpen: Bool
        var closed = false
        var waiters: [DispatchSemaphore] = []
    }

    private let state: Mutex<State>
    /// The system's OOM-kill count when the process started: more at a SIGKILL exit means the memory
    /// limit ended it.
    private let oomKillsAtStart: UInt64
    /// This handle sent it SIGKILL (terminate): its death is then no OOM kill.
    private let killedHere = Atomic<Bool>(false)

    init(pid: Int32, system: ComputeSystem, standardInput: Int32?, standardOutput: Int32?, standardError: Int32?,
         isConsole: Bool, oomKillsAtStart: UInt64) {
        self.pid = pid
        self.system = system
        self.events = EventChannel(owner: "\(system.id)/\(pid)")
        self.standardInput = standardInput
        self.standardOutput = standardOutput
        self.standardError = standardError
        self.isConsole = isConsole
        self.oomKillsAtStart = oomKillsAtStart
        self.state = Mutex(State(status: ProcessStatus(running: pid), stdinOpen: standardInput != nil))
        events.whenHandlerSet { [weak system] in system?.deliverEvents() }
    }

    deinit { closeDescriptors() }

    /// Wakes the threads asleep in ``wait(timeout:)`` to look again (an exit the agent no longer keeps).
    func wakeWaiters() {
        state.withLock { $0.waiters }.forEach { $0.signal() }
    }

    /// Whether the exit was seen, without taking in what arrived (for the system's bookkeeping).
    var hasExited: Bool { state.withLock { $0.status.exited } }

    /// Running, or how it ended. Takes in what the agent sent meanwhile when nobody reads its
    /// connection (see ``AgentConnection``), so that polling this sees the exit.
    public var status: ProcessStatus {
        if !state.withLock({ $0.status.exited }) {
            system.connection?.takeArrived()
            // The agent went with its system (terminated, its init killed): the system's end
            // ended this process, and no exit of it will come.
            if !state.withLock({ $0.status.exited }), system.agentIsGone { exited(waitStatus: Int32(SIGKILL), fromAgent: false, announce: true) }
        }
        return state.withLock { $0.status }
    }

    /// Blocks until the process exits, or `timeout` passes (`operationTimeout`).
    /// - Throws: `connectionClosed` when the exit can no longer reach this handle while the
    ///   system runs on: its system's handle was closed, or the agent ended the connection. (A
    ///   system that stopped ends its processes: they are reported killed, SIGKILL.)
    @discardableResult
    public func wait(timeout: Duration? = nil) throws(SiloError) -> ProcessStatus {
        let semaphore = DispatchSemaphore(value: 0)
        let done: ProcessStatus? = state.withLock { state in
            if state.status.exited { return state.status }
            state.waiters.append(semaphore)
            return nil
        }
        if let done { return done }
        // Its exit cannot reach this handle while the process may well run on: said, not made up.
        func lost(_ reason: String) throws(SiloError) -> ProcessStatus {
            state.withLock { state in state.waiters.removeAll { $0 === semaphore } }
            if state.withLock({ $0.status.exited }) { return state.withLock { $0.status } }
            throw SiloError(.connectionClosed, "process \(pid) in compute system '\(system.id)': \(reason); "
                                + "open the system again to wait for it", field: "id", value: system.id)
        }
        // With nobody reading the system's connection, this thread reads it until the exit comes.
        // A century at most: later instants overflow the clock's arithmetic.
        let century = Duration.seconds(86_400 * 365 * 100)
        let deadline = ContinuousClock.now + min(timeout ?? century, century)
        var exited = false
        var reconnects = 0
        while true {
            if system.agentIsGone {
                // The agent went with the system: no exit will be reported any more.
                self.exited(waitStatus: Int32(SIGKILL), fromAgent: false, announce: true)
                break
            }
            if system.isClosedHandle { return try lost("its system's handle is closed") }
            if system.hasLostExit(of: pid) { return try lost("the agent no longer keeps its exit") }
            if system.connectionEnded {
                // The agent dropped this handle's connection and lives on: a new one, which asks
                // for this process's exit again.
                guard reconnects < 3, (try? system.agent()) != nil else { return try lost("the agent ended this handle's connection") }
                reconnects += 1
                continue
            }
            guard let connection = system.connection else {
                let remaining = deadline - .now
                let nanoseconds = max(remaining.components.seconds * 1_000_000_000 + remaining.components.attoseconds / 1_000_000_000, 0)
                exited = semaphore.wait(timeout: .now() + .nanoseconds(Int(nanoseconds))) == .success
                break
            }
            exited = connection.wait(until: { [self] in state.withLock { $0.status.exited } || system.hasLostExit(of: pid) },
                                     signalled: semaphore, deadline: deadline)
            if system.hasLostExit(of: pid) { continue }
            if exited || !connection.isClosed || ContinuousClock.now >= deadline { break }
        }
        exited = state.withLock { $0.status.exited }
        if !exited {
            state.withLock { state in state.waiters.removeAll { $0 === semaphore } }
            throw SiloError(.operationTimeout, "process \(pid) in compute system '\(system.id)' is still running after \(timeout ?? .zero)",
                            field: "timeout", value: "\(timeout ?? .zero)")
        }
        return state.withLock { $0.status }
    }

    /// Sends `signal` to the process [HcsSignalProcess].
    /// - Throws: at once, `processAlreadyStopped` when it exited; `invalidArgument` for a bad signal.
    public func signal(_ signal: Int32, context: (any Sendable)? = nil,
                       callback: OperationCallback<Void>? = nil) throws(SiloError) -> SiloOperation<Void> {
        guard (1...64).contains(signal) else {
            throw SiloError.invalidArgument(field: "signal", value: "\(signal)", reason: "a signal number is 1...64")
        }
        try checkRunning()
        try system.checkAgentAwake("signal a process")
        // A SIGKILL of Silo's own is no OOM kill, whatever the cgroup's count did meanwhile. Marked
        // before it is sent (its exit may be read before the reply), and unmarked if it is not.
        let kills = signal == SIGKILL
        if kills { killedHere.store(true, ordering: .relaxed) }
        do throws(SiloError) {
            return try system.service.scheduler.run(.signalProcess, context: context, callback: callback, events: events, cancellable: false) {
                [self] _ in
                var body = silo_agent_signal(pid: pid, signal: signal)
                do {
                    let gate = try system.openRequestGate(exclusive: false)
                    defer { Glibc.close(gate) }
                    try system.checkAgentAwake("signal a process")  // a pause that came since the call's check
                    _ = try system.agent().request(SILO_AGENT_SIGNAL, payload: withUnsafeBytes(of: &body) { Array($0) })
                } catch {
                    if kills { killedHere.store(false, ordering: .relaxed) }
                    throw error
                }
            }
        } catch {
            if kills { killedHere.store(false, ordering: .relaxed) }
            throw error
        }
    }

    /// Kills the process (SIGKILL) [HcsTerminateProcess].
    /// - Throws: at once, `processAlreadyStopped` when it exited (C8).
    public func terminate(context: (any Sendable)? = nil, callback: OperationCallback<Void>? = nil) throws(SiloError) -> SiloOperation<Void> {
        try signal(SIGKILL, context: context, callback: callback)
    }

    /// Closes the process's stdin: the pipe's write end, or an end-of-file on a console.
    public func closeStandardInput() {
        let wasOpen = state.withLock { state in
            defer { state.stdinOpen = false }
            return state.stdinOpen
        }
        guard wasOpen, let fd = standardInput else { return }
        if isConsole {
            var endOfFile: UInt8 = 4  // ^D at the start of a line: the terminal's end of input
            _ = Glibc.write(fd, &endOfFile, 1)
        } else {
            Glibc.close(fd)
        }
    }

    /// Sets the console's size [HcsModifyProcess ConsoleSize].
    /// - Throws: `invalidOperation` for a process without a console; `invalidArgument` for sizes out of 1...10000.
    public func resizeConsole(height: Int, width: Int) throws(SiloError) {
        guard isConsole, let fd = standardOutput else {
            throw SiloError(.invalidOperation, "process \(pid) has no console to resize; create it with EmulateConsole",
                            field: "EmulateConsole", value: "false")
        }
        guard (1...10_000).contains(height), (1...10_000).contains(width) else {
            throw SiloError.invalidArgument(field: "ConsoleSize", value: "[\(height), \(width)]", reason: "each is 1...10000")
        }
        guard silo_set_window_size(fd, UInt16(height), UInt16(width)) == 0 else { throw SiloError.system("TIOCSWINSZ", errno: errno) }
    }

    /// Closes the handle and the caller's descriptors; no event after this (O18). The process runs on.
    public func close() {
        events.close()
        system.forget(self)
        closeDescriptors()
    }

    // MARK: From the system

    /// - Parameter announce: post ProcessExited (and OutOfMemory); by default for an exit the
    ///   agent reported. A process ended by its system's end is announced too, killed (SIGKILL).
    func exited(waitStatus: Int32, fromAgent: Bool, announce: Bool? = nil) {
        let killed = waitStatus & 0x7f == SIGKILL
        let outOfMemory = fromAgent && killed && !killedHere.load(ordering: .relaxed) && system.cgroup.oomKills > oomKillsAtStart
        let result: (ProcessStatus, [DispatchSemaphore])? = state.withLock { state in
            guard !state.status.exited else { return nil }
            state.status = ProcessStatus(pid: pid, waitStatus: waitStatus, outOfMemory: outOfMemory)
            defer { state.waiters = [] }
            return (state.status, state.waiters)
        }
        guard let (status, waiters) = result else { return }
        if announce ?? fromAgent {
            events.post(SiloEvent(type: .processExited, data: status.document))
            if outOfMemory { events.post(SiloEvent(type: .outOfMemory, data: status.document)) }
        }
        waiters.forEach { $0.signal() }
    }

    private func checkRunning() throws(SiloError) {
        if status.exited {
            throw SiloError(.processAlreadyStopped, "process \(pid) in compute system '\(system.id)' has exited already",
                            field: "pid", value: "\(pid)")
        }
    }

    private func closeDescriptors() {
        let (closeInput, alreadyClosed) = state.withLock { state in
            defer {
                state.closed = true
                state.stdinOpen = false
            }
            return (state.stdinOpen, state.closed)
        }
        guard !alreadyClosed else { return }
        var open = Set<Int32>()
        if closeInput || isConsole, let fd = standardInput { open.insert(fd) }
        if let fd = standardOutput { open.insert(fd) }
        if let fd = standardError { open.insert(fd) }
        open.forEach { _ = Glibc.close($0) }
    }
}
