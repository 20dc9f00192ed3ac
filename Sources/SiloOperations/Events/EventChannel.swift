import Dispatch
import Synchronization

/// The event source of one handle (a compute system or process handle): at most one handler,
/// events delivered in order, nothing after ``close()`` [HcsSetComputeSystemCallback].
///
/// Producers ``post(_:)`` events; operations started with `events:` set to the channel route their
/// completion here when the handler asked for ``EventOptions/operationCallbacks`` and the call
/// brought no callback of its own.
public final class EventChannel: Sendable {
    public typealias Handler = @Sendable (SiloEvent) -> Void

    private struct State {
        var handler: Handler?
        var options: EventOptions = []
        var model: CallbackModel = .short
        var closed = false
        var pending = FIFO<SiloEvent>()
        var draining = false
        /// The thread inside the handler right now, so `close()` can wait for it (unless it is
        /// that thread: a handler may close its own handle).
        var handlerThread: UInt?
        var closeWaiters: [DispatchSemaphore] = []
        var onHandlerSet: (@Sendable () -> Void)?
    }

    /// What the channel belongs to, for messages (a system id, say).
    public let owner: String
    private let state = SiloMutex(State())
    /// Events a drain delivers before yielding its thread to other channels' events.
    private static let batch = 64

    public init(owner: String) {
        self.owner = owner
    }

    /// Registers the handler [HcsSetComputeSystemCallback].
    /// - Throws: `operationSystemCallbackAlreadySet` if a handler is set already (O17), and
    ///   `invalidOperation` on a closed channel.
    public func setHandler(
        options: EventOptions = [],
        model: CallbackModel = .short,
        _ handler: @escaping Handler
    ) throws(SiloError) {
        try state.withLock { (state) throws(SiloError) in
            guard !state.closed else { throw closedError() }
            guard state.handler == nil else {
                throw SiloError(
                    .operationSystemCallbackAlreadySet,
                    "handle '\(owner)' already has an event handler; one handle takes one handler",
                    field: "handler",
                    value: owner
                )
            }
            state.handler = handler
            state.options = options
            state.model = model
        }
        // Taken, not read: the hook runs once, here or in `whenHandlerSet`, whichever sees the
        // handler and the hook both.
        state.withLock { state in
            defer { state.onHandlerSet = nil }
            return state.onHandlerSet
        }?()
    }

    /// Calls `hook` when a handler is set (at once if one is): for an owner that produces events
    /// only while someone listens for them.
    package func whenHandlerSet(_ hook: @escaping @Sendable () -> Void) {
        let set: Bool = state.withLock { state in
            if state.handler != nil { return true }
            state.onHandlerSet = hook
            return false
        }
        if set { hook() }
    }

    /// True when completions of callback-less operations go to the handler.
    public var routesOperationCompletions: Bool {
        state.withLock { $0.handler != nil && $0.options.contains(.operationCallbacks) && !$0.closed }
    }

    public var isClosed: Bool { state.withLock { $0.closed } }

    /// Refuses a call that brings its own operation callback while the handler takes them all (O17),
    /// and any call on a closed handle. Called before the operation is created (E3).
    public func checkCall(bringsCallback: Bool) throws(SiloError) {
        try state.withLock { (state) throws(SiloError) in
            guard !state.closed else { throw closedError() }
            if bringsCallback, state.handler != nil, state.options.contains(.operationCallbacks) {
                throw SiloError(
                    .operationSystemCallbackAlreadySet,
                    "handle '\(owner)' routes operation completions to its event handler; "
                        + "call without an operation callback",
                    field: "callback",
                    value: owner
                )
            }
        }
    }

    /// Queues an event for the handler. Dropped when no handler is set or the channel is closed.
    public func post(_ event: SiloEvent) {
        let model: CallbackModel? = state.withLock { state in
            guard !state.closed, state.handler != nil else { return nil }
            state.pending.append(event)
            if state.draining { return nil }
            state.draining = true
            return state.model
        }
        if let model { CallbackThreads.run(model) { self.drain(model) } }
    }

    /// Closes the handle: no event is delivered from now on, queued ones are dropped, and no
    /// closing event is sent. If the handler is running on another thread, waits for it to return.
    public func close() {
        let wait: DispatchSemaphore? = state.withLock { state in
            state.closed = true
            state.handler = nil
            _ = state.pending.removeAll()
            guard let thread = state.handlerThread, thread != PlatformThread.current else { return nil }
            let semaphore = DispatchSemaphore(value: 0)
            state.closeWaiters.append(semaphore)
            return semaphore
        }
        wait?.wait()
    }

    private func drain(_ model: CallbackModel) {
        for _ in 0..<Self.batch {
            let next: (Handler, SiloEvent)? = state.withLock { state in
                guard !state.closed, let handler = state.handler, let event = state.pending.popFirst() else {
                    state.draining = false
                    return nil
                }
                state.handlerThread = PlatformThread.current
                return (handler, event)
            }
            guard let (handler, event) = next else { return }
            handler(event)
            let waiters = state.withLock { state in
                state.handlerThread = nil
                let waiters = state.closeWaiters
                state.closeWaiters = []
                return waiters
            }
            for waiter in waiters { waiter.signal() }
        }
        // More queued than one batch: yield the thread, continue behind other work.
        CallbackThreads.run(model) { self.drain(model) }
    }

    private func closedError() -> SiloError {
        SiloError(.invalidOperation, "handle '\(owner)' is closed", field: "handle", value: owner)
    }
}
