import Synchronization

/// The producer's side of one operation: report progress, mark the point of no return, complete.
///
/// The scheduler hands a driver to the work it admits. Complete exactly once with ``succeed(_:)``,
/// ``fail(_:)`` or ``finish(_:)``, from any thread; later completions are ignored. A driver that
/// is released without completing fails its operation with `operationAbandoned`, so a forgotten
/// path in a producer never leaves a waiter hanging.
///
/// Cancellation is cooperative: poll ``isCancelled`` or ``checkCancellation()`` between units of
/// work, or register ``onCancel(_:)`` to interrupt something that blocks; then roll back and
/// complete with the `operationCancelled` error that ``checkCancellation()`` throws. Chains
/// (``OperationChain``) do all of this for their steps.
public final class OperationDriver<Output: Sendable>: Sendable {
    public let operation: SiloOperation<Output>
    /// Set when this driver completed the operation, so `deinit` needs no lock in the common case.
    private let completed = Atomic<Bool>(false)

    init(_ operation: SiloOperation<Output>) {
        self.operation = operation
    }

    deinit {
        guard !completed.load(ordering: .relaxed), operation.isPending else { return }
        operation.complete(.failed(SiloError(
            .operationAbandoned,
            "operation \(operation.id) (\(operation.type)) was dropped by its producer without completing",
            field: "operation",
            value: "\(operation.id)"
        )))
    }

    /// True once `cancel()` was accepted; the work should roll back and fail with `operationCancelled`.
    public var isCancelled: Bool { operation.isCancelRequested }

    /// Throws `operationCancelled` once `cancel()` was accepted.
    public func checkCancellation() throws(SiloError) {
        if operation.isCancelRequested { throw SiloError.cancelled(operation.id, operation.type) }
    }

    /// Reports percent complete. Values are clamped to 0...99 and never go down: 100 is for completion.
    public func reportProgress(percent: Int) {
        operation.reportProgress(percent: percent, completed: nil, total: nil, stage: nil)
    }

    /// Reports units (usually bytes) done of a total; percent, rate and time left follow from it.
    public func reportProgress(completed: UInt64, of total: UInt64, stage: String? = nil) {
        // At most 100 before the conversion: more done than the total must not trap.
        let percent = total == 0 ? 0 : Int((min(Double(completed) / Double(total), 1) * 100).rounded(.down))
        operation.reportProgress(percent: percent, completed: completed, total: total, stage: stage)
    }

    /// Marks the point after which the work can no longer be undone: `cancel()` throws
    /// `cancelTooLate` from now on.
    /// - Throws: `operationCancelled` if a cancel was accepted before this call; roll back then.
    public func enterPointOfNoReturn() throws(SiloError) {
        try operation.enterPointOfNoReturn()
    }

    /// Runs `handler` when a cancel is accepted (at once if one already was), on the thread that
    /// called `cancel()`. Use it to interrupt a blocking wait; it must not block itself.
    ///
    /// The operation keeps `handler` until it completes: a handler that captures this driver keeps
    /// it alive, so a producer that then drops the driver without completing is never caught
    /// (`operationAbandoned`). Use the form that passes the driver to the handler instead.
    public func onCancel(_ handler: @escaping @Sendable () -> Void) {
        operation.addCancelHandler(handler)
    }

    /// Runs `handler` with this driver when a cancel is accepted (at once if one already was), as
    /// the form without it does, but holds no reference to the driver meanwhile: a producer that
    /// drops the driver without completing still fails its operation with `operationAbandoned`.
    public func onCancel(_ handler: @escaping @Sendable (OperationDriver<Output>) -> Void) {
        operation.addCancelHandler { [weak self] in
            if let self { handler(self) }
        }
    }

    /// Completes with the output. Returns false if the operation had completed already.
    @discardableResult
    public func succeed(_ output: Output) -> Bool {
        completed.store(true, ordering: .relaxed)
        return operation.complete(.succeeded(output))
    }

    /// Completes with the error. Returns false if the operation had completed already.
    @discardableResult
    public func fail(_ error: SiloError) -> Bool {
        completed.store(true, ordering: .relaxed)
        return operation.complete(.failed(error))
    }

    @discardableResult
    public func finish(_ result: Result<Output, SiloError>) -> Bool {
        completed.store(true, ordering: .relaxed)
        return operation.complete(result)
    }

    /// The error to complete with after rolling back a cancelled operation.
    public var cancellationError: SiloError { .cancelled(operation.id, operation.type) }
}

extension OperationDriver where Output == Void {
    @discardableResult
    public func succeed() -> Bool { succeed(()) }
}
