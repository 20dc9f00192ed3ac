/// One step of an ``OperationChain``: a weight for the combined percent, the work, and how to
/// undo it [WsAsyncExecute's WS_ASYNC_FUNCTION, with rollback].
///
/// A step completes at once (its body returns) or later (its body returns ``Outcome/pending`` and
/// something calls ``StepContext/finish(_:)`` from any thread). When a later step fails or the
/// operation is cancelled, the rollbacks of the steps that completed run in reverse order; a step
/// that fails cleans up its own partial work before it throws.
public struct OperationStep: Sendable {
    public enum Outcome: Sendable, Hashable {
        /// The step is done.
        case finished
        /// The step completes later through ``StepContext/finish(_:)``.
        case pending
    }

    public let name: String
    public let weight: Int
    /// Entering this step commits the operation: `cancel()` throws `cancelTooLate` from then on,
    /// and once the step is done, a later failure rolls back only the steps after it.
    public let isPointOfNoReturn: Bool
    let body: @Sendable (StepContext) throws -> Outcome
    let rollback: (@Sendable () throws -> Void)?

    /// A step that is done when `run` returns. `run` may block; it runs on a Silo worker thread.
    public init(
        _ name: String,
        weight: Int = 1,
        pointOfNoReturn: Bool = false,
        run: @escaping @Sendable (StepContext) throws -> Void,
        rollback: (@Sendable () throws -> Void)? = nil
    ) {
        self.init(name, weight: weight, pointOfNoReturn: pointOfNoReturn, start: { context in
            try run(context)
            return .finished
        }, rollback: rollback)
    }

    /// A step that may complete at once or later: `start` returns `.finished`, or `.pending` and
    /// calls `context.finish(_:)` when the work it started is done.
    public init(
        _ name: String,
        weight: Int = 1,
        pointOfNoReturn: Bool = false,
        start: @escaping @Sendable (StepContext) throws -> Outcome,
        rollback: (@Sendable () throws -> Void)? = nil
    ) {
        precondition(weight >= 0, "a step's weight is not negative")
        self.name = name
        self.weight = weight
        self.isPointOfNoReturn = pointOfNoReturn
        self.body = start
        self.rollback = rollback
    }
}

/// A multi-step operation: the steps run in order, report one combined percent, stop at the first
/// failure, roll back in reverse on failure or cancel, and complete the operation once
/// [WsAsyncExecute]. `output` makes the result once every step is done.
public struct OperationChain<Output: Sendable>: Sendable {
    public var steps: [OperationStep]
    public var output: @Sendable () throws -> Output
    /// Runs when the chain fails or is cancelled, after the completed steps' rollbacks, however far
    /// it got (a cancel may come before the first step runs): release what the call took before
    /// the chain started, such as a reservation.
    public var cleanup: (@Sendable () throws -> Void)?

    public init(
        _ steps: [OperationStep],
        output: @escaping @Sendable () throws -> Output,
        cleanup: (@Sendable () throws -> Void)? = nil
    ) {
        self.steps = steps
        self.output = output
        self.cleanup = cleanup
    }
}

extension OperationChain where Output == Void {
    public init(_ steps: [OperationStep], cleanup: (@Sendable () throws -> Void)? = nil) {
        self.init(steps, output: {}, cleanup: cleanup)
    }
}

extension OperationScheduler {
    /// Runs a chain as one operation, its steps on worker threads.
    public func run<Output: Sendable>(
        _ type: OperationType,
        chain: OperationChain<Output>,
        context: (any Sendable)? = nil,
        callback: OperationCallback<Output>? = nil,
        events: EventChannel? = nil
    ) throws(SiloError) -> SiloOperation<Output> {
        let cancellable = !(chain.steps.first?.isPointOfNoReturn ?? false)
        return try start(
            type, context: context, callback: callback, events: events, cancellable: cancellable,
            placement: .worker, withdrawn: chain.cleanup
        ) { driver in
            ChainRun(driver: driver, chain: chain, continueOn: self).run(from: 0)
        }
    }
}
