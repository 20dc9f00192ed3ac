import Dispatch
import Synchronization

/// The "async object": a handle on one long call [VDS IVdsAsync, HCS HCS_OPERATION].
///
/// Every long call in Silo returns one, even when the work finished before the call returned.
/// Query ``status`` without blocking, block in ``wait(timeout:)``, `await` ``value``, ``cancel()``,
/// or give an ``OperationCallback`` with the call. Completion happens once; afterwards every query
/// and wait returns the same result, from any number of threads.
///
/// Producers create operations through ``OperationScheduler`` and drive them with the
/// ``OperationDriver`` it hands them.
public final class SiloOperation<Output: Sendable>: AnySiloOperation {
    public let id: OperationID
    public let type: OperationType
    /// The caller's value given with the call [HcsGetOperationContext].
    public let context: (any Sendable)?
    /// Whether `cancel()` may stop this operation before its point of no return.
    public let isCancellable: Bool

    /// The caller's callback until it is dispatched: a callback that holds its own operation (to
    /// close it when called, O12) would otherwise keep both alive for good.
    private let callback: SiloMutex<OperationCallback<Output>?>
    private let hasCallback: Bool
    let channel: EventChannel?
    let scheduler: OperationScheduler?
    private let state: SiloMutex<OperationState>
    /// Set after completion, for waiters that poll briefly before they sleep.
    private let done = Atomic<Bool>(false)
    /// How long `wait` polls before it sleeps: a wake from the kernel costs 10 to 30 microseconds
    /// here, longer than many operations take.
    static var spinBeforeSleep: Duration { .microseconds(20) }

    private enum CancelAction {
        case nothing
        case withdraw
        case notify([@Sendable () -> Void])
    }

    init(
        id: OperationID,
        type: OperationType,
        context: (any Sendable)?,
        cancellable: Bool,
        callback: OperationCallback<Output>?,
        channel: EventChannel?,
        scheduler: OperationScheduler?
    ) {
        self.id = id
        self.type = type
        self.context = context
        self.isCancellable = cancellable
        self.callback = SiloMutex(callback)
        self.hasCallback = callback != nil
        self.channel = channel
        self.scheduler = scheduler
        self.state = SiloMutex(OperationState(phase: .running))
    }

    // MARK: Consumer side

    /// Where the operation stands. Never blocks.
    public var status: OperationStatus {
        state.withLock { state in
            switch state.phase {
            case .queued: .queued
            case .running: .running(state.progress)
            case .succeeded: .succeeded
            case .failed(let error): .failed(error)
            }
        }
    }

    /// The progress while it runs (``OperationStatus/progress``); nil when queued or complete. Never blocks.
    public var progress: OperationProgress? { status.progress }

    /// The final result, or nil while the operation is pending. Never blocks.
    public var result: Result<Output, SiloError>? {
        state.withLock { $0.result }.map(Self.typed)
    }

    /// The phase keeps the output type-erased so that the state's layout is not generic: generic
    /// nested types cost a runtime metadata lookup on every lock.
    private static func typed(_ result: Result<any Sendable, SiloError>) -> Result<Output, SiloError> {
        result.map { output in
            guard let output = output as? Output else {
                preconditionFailure("operation output of type \(Swift.type(of: output)) is not \(Output.self)")
            }
            return output
        }
    }

    /// Blocks until the operation completes and returns its output or throws its error
    /// [IVdsAsync::Wait, HcsWaitForOperationResult].
    ///
    /// - Parameter timeout: how long to wait; `nil` waits for as long as it takes. When it runs
    ///   out, throws `operationTimeout` and the operation goes on: a later wait returns its real result.
    public func wait(timeout: Duration? = nil) throws(SiloError) -> Output {
        spinUntilDone(atMost: min(Self.spinBeforeSleep, timeout ?? Self.spinBeforeSleep))
        let registration: WaitRegistration = state.withLock { state in
            if state.isCompleted { return .completed(state.phase) }
            let semaphore = DispatchSemaphore(value: 0)
            state.nextWaiterID += 1
            state.waiters.append(.thread(id: state.nextWaiterID, semaphore))
            return .waiting(semaphore, state.nextWaiterID)
        }
        let semaphore: DispatchSemaphore
        let waiterID: UInt64
        switch registration {
        case .completed(let phase): return try output(of: phase)
        case .waiting(let waitOn, let id): (semaphore, waiterID) = (waitOn, id)
        }
        if let timeout {
            let deadline = DispatchTime.now() + .nanoseconds(Int(timeout.nanoseconds))
            if semaphore.wait(timeout: deadline) == .timedOut {
                let stillWaiting = state.withLock { state in
                    guard let index = state.waiters.firstIndex(where: { waiter in
                        if case .thread(let id, _) = waiter { return id == waiterID }
                        return false
                    }) else { return false }
                    state.waiters.remove(at: index)
                    return true
                }
                // Not in the list any more: completion took it in the same instant; its result is set.
                if stillWaiting { throw SiloError.timedOut(id, type, after: timeout) }
            }
        } else {
            semaphore.wait()
        }
        return try completedOutput()
    }

    /// The output, awaited [O10]. Cancelling the awaiting task cancels the operation, as far as
    /// ``cancel()`` can; the await still ends only when the operation completes.
    public var value: Output {
        get async throws(SiloError) {
            spinUntilDone(atMost: Self.spinBeforeSleep)
            if let result = self.result { return try result.get() }
            await withTaskCancellationHandler {
                await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                    let completed = state.withLock { state in
                        if state.isCompleted { return true }
                        state.waiters.append(.task(continuation))
                        return false
                    }
                    if completed { continuation.resume() }
                }
            } onCancel: {
                // On a Silo thread, not the canceller's: a queued operation's cancel runs its
                // cleanup (file locks, a registry write), and this handler may run on a thread of
                // the cooperative pool or under the task's own lock.
                CallbackThreads.run(.long) { try? self.cancel() }
            }
            return try completedOutput()
        }
    }

    /// Asks the operation to stop and roll back [IVdsAsync::Cancel].
    ///
    /// Does not wait for the work: the operation completes with `operationCancelled` once the
    /// producer has rolled back what it did, and every waiter wakes then. A queued operation is
    /// completed within this call, after its chain's cleanup (run on this thread). On a completed
    /// operation this does nothing.
    /// - Throws: `cancelTooLate` when the running operation passed its point of no return or
    ///   cannot be cancelled; nothing changes then. A queued one is always withdrawn: none of it ran.
    public func cancel() throws(SiloError) {
        let action: CancelAction = try state.withLock { (state) throws(SiloError) -> CancelAction in
            switch state.phase {
            case .succeeded, .failed:
                return .nothing
            case .queued:
                if state.cancelRequested { return .nothing }
                state.cancelRequested = true
                return .withdraw
            case .running:
                guard isCancellable else {
                    throw SiloError.tooLate(id, type, reason: "this kind of operation cannot be cancelled")
                }
                guard !state.pastPointOfNoReturn else {
                    throw SiloError.tooLate(id, type, reason: "it has passed its point of no return")
                }
                if state.cancelRequested { return .nothing }
                state.cancelRequested = true
                let handlers = state.cancelHandlers
                state.cancelHandlers = []
                return .notify(handlers)
            }
        }
        switch action {
        case .nothing:
            break
        case .withdraw:
            // Still queued: the work never started, so only what the call took before it is released.
            if scheduler?.withdraw(id) ?? false { completeWithdrawn() }
        case .notify(let handlers):
            for handler in handlers { handler() }
        }
    }

    /// The result document [HcsGetOperationResult]: nil while pending; on failure the
    /// ResultError JSON; on success the output as JSON when it is `Encodable`, otherwise `{}`.
    public var resultDocument: String? {
        guard let result else { return nil }
        switch result {
        case .failure(let error):
            return error.resultDocument
        case .success(let output):
            guard let encodable = output as? any Encodable else { return "{}" }
            return (try? JSONCoding.encodeString(encodable)) ?? "{}"
        }
    }

    /// Polls for completion for up to `limit` before the caller sleeps or suspends.
    private func spinUntilDone(atMost limit: Duration) {
        guard limit > .zero, !done.load(ordering: .acquiring) else { return }
        let clock = ContinuousClock()
        let spinUntil = clock.now + limit
        while !done.load(ordering: .acquiring), clock.now < spinUntil {}
    }

    public func waitForCompletion(timeout: Duration?) throws(SiloError) {
        _ = try wait(timeout: timeout)
    }

    /// The output of a completed operation, without building a generic `Result`: in unspecialised
    /// code every generic type costs a metadata lookup, and this is the hot path of every wait.
    private func completedOutput() throws(SiloError) -> Output {
        try output(of: state.withLock { $0.phase })
    }

    private func output(of phase: OperationPhase) throws(SiloError) -> Output {
        switch phase {
        case .succeeded(let output):
            guard let output = output as? Output else {
                preconditionFailure("operation output of type \(Swift.type(of: output)) is not \(Output.self)")
            }
            return output
        case .failed(let error):
            throw error
        case .queued, .running:
            preconditionFailure("operation \(id) woke a waiter before completing")
        }
    }

    // MARK: Producer side (through OperationDriver and OperationScheduler)

    var isCancelRequested: Bool { state.withLock { $0.cancelRequested } }

    var isPending: Bool { state.withLock { !$0.isCompleted } }

    /// Run when a queued operation is cancelled before its work starts: releases what the call
    /// took before the work (a chain's cleanup). Set by the scheduler before the operation is seen.
    private let withdrawnCleanup = SiloMutex<(@Sendable () throws -> Void)?>(nil)

    func setWithdrawnCleanup(_ cleanup: (@Sendable () throws -> Void)?) {
        withdrawnCleanup.withLock { $0 = cleanup }
    }

    /// Completes a queued operation cancelled before it started, after its cleanup.
    func completeWithdrawn() {
        var failure = SiloError.cancelled(id, type)
        if let cleanup = withdrawnCleanup.withLock({ $0 }) {
            do {
                try cleanup()
            } catch {
                failure = failure.adding(.init(message: "cleanup failed: \(SiloError(error).message)", source: "rollback"))
            }
        }
        complete(.failed(failure))
    }

    /// Marks a new operation queued: the scheduler does so before anyone else can see it.
    func markQueued() {
        state.withLock { $0.phase = .queued }
    }

    /// Moves a queued operation to running. False if it was cancelled while queued.
    func admit() -> Bool {
        state.withLock { state in
            guard case .queued = state.phase, !state.cancelRequested else { return false }
            state.phase = .running
            return true
        }
    }

    /// Marks the operation handed to its caller; delivers the completion if it came first.
    func publish() {
        // Publishing only orders notifications after the call returns: with nothing to notify,
        // there is nothing to order (and one lock fewer on the hot path).
        guard hasCallback || channel != nil else { return }
        let completed = state.withLock { state in
            state.published = true
            return state.isCompleted
        }
        if completed { notifyCompletion() }
    }

    func reportProgress(percent: Int?, completed: UInt64?, total: UInt64?, stage: String?) {
        let now = completed == nil ? nil : ContinuousClock.now
        state.withLock { state in
            guard case .running = state.phase else { return }
            if let stage, stage != state.progress.stage {
                state.progress.stage = stage
                state.progress.completedUnits = nil
                state.progress.totalUnits = nil
                state.progress.unitsPerSecond = nil
                state.progress.estimatedTimeRemaining = nil
                state.unitsSince = nil
            }
            if let completed, let total, let now {
                if state.unitsSince == nil || completed < (state.progress.completedUnits ?? 0) {
                    state.unitsSince = now
                }
                state.progress.completedUnits = completed
                state.progress.totalUnits = total
                if let since = state.unitsSince {
                    let elapsed = Double((now - since).nanoseconds) / 1e9
                    if elapsed > 0, completed > 0 {
                        let rate = Double(completed) / elapsed
                        state.progress.unitsPerSecond = rate
                        let left = Double(total > completed ? total - completed : 0) / rate
                        state.progress.estimatedTimeRemaining = .nanoseconds(Int64(min(left * 1e9, 9e18)))
                    }
                }
            }
            if let percent {
                // O3/O4: 0...99 while running, never decreasing.
                state.progress.percent = max(state.progress.percent, min(max(percent, 0), 99))
            }
        }
    }

    func enterPointOfNoReturn() throws(SiloError) {
        try state.withLock { (state) throws(SiloError) in
            if state.cancelRequested { throw SiloError.cancelled(id, type) }
            state.pastPointOfNoReturn = true
        }
    }

    func addCancelHandler(_ handler: @escaping @Sendable () -> Void) {
        let runNow = state.withLock { state in
            if state.cancelRequested || state.isCompleted { return state.cancelRequested && !state.isCompleted }
            state.cancelHandlers.append(handler)
            return false
        }
        if runNow { handler() }
    }

    /// Completes the operation once; later calls return false and change nothing.
    @discardableResult
    func complete(_ result: Result<Output, SiloError>) -> Bool {
        switch result {
        case .success(let output): complete(.succeeded(output))
        case .failure(let error): complete(.failed(error))
        }
    }

    /// Completes the operation once; later calls return false and change nothing.
    @discardableResult
    func complete(_ final: OperationPhase) -> Bool {
        let outcome: (waiters: [OperationWaiter], published: Bool, heldSlot: Bool)? = state.withLock { state in
            let wasRunning: Bool
            switch state.phase {
            case .succeeded, .failed: return nil
            case .queued: wasRunning = false
            case .running: wasRunning = true
            }
            // The slot is given back before the completion shows (here, under the lock, and in
            // `done`): a waiter that sees it and starts the next operation finds the slot free (O15).
            if wasRunning { scheduler?.releaseSlot() }
            state.phase = final
            state.cancelHandlers = []
            withdrawnCleanup.withLock { $0 = nil }
            let waiters = state.waiters
            state.waiters = []
            return (waiters, state.published, wasRunning)
        }
        guard let outcome else { return false }
        done.store(true, ordering: .releasing)
        if outcome.heldSlot { scheduler?.admitAfterRelease() }
        for waiter in outcome.waiters { waiter.wake() }
        if outcome.published { notifyCompletion() }
        return true
    }

    private func notifyCompletion() {
        if hasCallback {
            let taken = callback.withLock { callback in
                defer { callback = nil }
                return callback
            }
            if let taken { CallbackThreads.run(taken.model) { taken.body(self) } }
        } else if let channel, channel.routesOperationCompletions {
            channel.post(SiloEvent(type: .operationCompleted, operation: self))
        }
    }
}

enum OperationPhase {
    case queued
    case running
    case succeeded(any Sendable)
    case failed(SiloError)
}

enum OperationWaiter {
    case thread(id: UInt64, DispatchSemaphore)
    case task(CheckedContinuation<Void, Never>)

    func wake() {
        switch self {
        case .thread(_, let semaphore): semaphore.signal()
        case .task(let continuation): continuation.resume()
        }
    }
}

struct OperationState {
    var phase: OperationPhase
    var progress = OperationProgress()
    var unitsSince: ContinuousClock.Instant?
    var cancelRequested = false
    var pastPointOfNoReturn = false
    /// Set once the call that created the operation has handed it to its caller; callbacks and
    /// events wait for it (O11: never before the call returns).
    var published = false
    var cancelHandlers: [@Sendable () -> Void] = []
    var waiters: [OperationWaiter] = []
    var nextWaiterID: UInt64 = 0

    var isCompleted: Bool {
        switch phase {
        case .succeeded, .failed: true
        case .queued, .running: false
        }
    }

    var result: Result<any Sendable, SiloError>? {
        switch phase {
        case .succeeded(let output): .success(output)
        case .failed(let error): .failure(error)
        case .queued, .running: nil
        }
    }
}

enum WaitRegistration {
    case completed(OperationPhase)
    case waiting(DispatchSemaphore, UInt64)
}
