import Synchronization

/// What a running step sees of its operation: cancellation, progress within the step, and, for a
/// step that returned ``OperationStep/Outcome/pending``, the call that completes it.
public final class StepContext: Sendable {
    public let name: String
    let index: Int
    private let run: any ChainProgress
    private let state = SiloMutex(Phase.running)

    enum Phase {
        case running
        case returnedPending
        case finishedEarly(Result<Void, SiloError>)
        case done
    }

    init(name: String, index: Int, run: any ChainProgress) {
        self.name = name
        self.index = index
        self.run = run
    }

    public var isCancelled: Bool { run.isCancelled }

    /// Throws `operationCancelled` once a cancel was accepted.
    public func checkCancellation() throws(SiloError) {
        if run.isCancelled { throw run.cancellationError }
    }

    /// Reports how far this step is, 0...1; the operation's percent combines it with the weights.
    public func reportProgress(fraction: Double) {
        guard !isDone else { return }
        run.stepProgress(index: index, fraction: fraction, completed: nil, total: nil)
    }

    /// A step done reports no more: a late report (from a thread it started) would set the
    /// operation's stage, units and rate back to this step's while a later one runs.
    private var isDone: Bool { state.withLock { if case .done = $0 { true } else { false } } }

    /// Reports units (bytes) done in this step; percent, rate and time left follow.
    public func reportProgress(completed: UInt64, of total: UInt64) {
        guard !isDone else { return }
        let fraction = total == 0 ? 0 : Double(completed) / Double(total)
        run.stepProgress(index: index, fraction: fraction, completed: completed, total: total)
    }

    /// Runs `handler` if the operation is cancelled while this step runs (at once if it already was).
    /// A handler that captures this context keeps it alive until the operation completes: take it
    /// from the form that passes it to the handler instead, so that a step dropped without finishing still
    /// fails its operation with `operationAbandoned`.
    public func onCancel(_ handler: @escaping @Sendable () -> Void) {
        onCancel { (_: StepContext) in handler() }
    }

    /// Runs `handler` with this context if the operation is cancelled while this step runs (at
    /// once if it already was), holding no reference to the context meanwhile.
    public func onCancel(_ handler: @escaping @Sendable (StepContext) -> Void) {
        run.onCancel { [weak self] in
            guard let self else { return }
            if state.withLock({ if case .done = $0 { return false } else { return true } }) { handler(self) }
        }
    }

    /// Completes a step that returned `.pending`. Any thread; the first call counts.
    public func finish(_ result: Result<Void, SiloError> = .success(())) {
        let resume: Bool = state.withLock { phase in
            switch phase {
            case .running:
                phase = .finishedEarly(result)
                return false
            case .returnedPending:
                phase = .done
                return true
            case .finishedEarly, .done:
                return false
            }
        }
        if resume { run.resume(after: index, result: result) }
    }

    public func fail(_ error: SiloError) {
        finish(.failure(error))
    }

    /// Called by the chain when the body returned `.pending`: nil means wait for `finish`.
    func bodyReturnedPending() -> Result<Void, SiloError>? {
        state.withLock { phase in
            switch phase {
            case .running:
                phase = .returnedPending
                return nil
            case .finishedEarly(let result):
                phase = .done
                return result
            case .returnedPending, .done:
                preconditionFailure("step \(name) returned twice")
            }
        }
    }

    /// After a body returned `.finished`: the result it reported with `finish` or `fail` first, if any.
    func takeEarlyResult() -> Result<Void, SiloError>? {
        state.withLock { phase in
            guard case .finishedEarly(let result) = phase else { return nil }
            phase = .done
            return result
        }
    }

    func markDone() {
        state.withLock { $0 = .done }
    }
}

protocol ChainProgress: Sendable {
    var isCancelled: Bool { get }
    var cancellationError: SiloError { get }
    func stepProgress(index: Int, fraction: Double, completed: UInt64?, total: UInt64?)
    func onCancel(_ handler: @escaping @Sendable () -> Void)
    func resume(after index: Int, result: Result<Void, SiloError>)
}
