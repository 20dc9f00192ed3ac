import Synchronization

/// Executes one chain for one operation: the WsAsyncExecute loop. Steps that finish at once run
/// back to back on the same worker thread; after a step that finishes later, the chain goes on on
/// a worker thread again.
final class ChainRun<Output: Sendable>: ChainProgress {
    private let driver: OperationDriver<Output>
    private let chain: OperationChain<Output>
    private let scheduler: OperationScheduler
    private let totalWeight: Int
    /// Prefix sums of the weights: `doneWeight[i]` is the weight of steps before `i`.
    private let doneWeight: [Int]
    private let completed = SiloMutex<[OperationStep]>([])

    init(driver: OperationDriver<Output>, chain: OperationChain<Output>, continueOn scheduler: OperationScheduler) {
        self.driver = driver
        self.chain = chain
        self.scheduler = scheduler
        // Weights saturate: a sum past Int.max would trap on a worker thread.
        var sums = [0]
        for step in chain.steps {
            let (sum, overflow) = sums[sums.count - 1].addingReportingOverflow(step.weight)
            sums.append(overflow ? Int.max : sum)
        }
        self.doneWeight = sums
        self.totalWeight = max(sums[sums.count - 1], 1)
    }

    /// A chain dropped before it completed (a `.pending` step whose context nobody finishes)
    /// still rolls back its completed steps and runs its cleanup, then fails its operation with
    /// `operationAbandoned` (O14): the driver's own check would fail it with nothing undone.
    /// On a worker thread: the thread that dropped the chain may hold a lock its rollbacks take.
    deinit {
        guard driver.operation.isPending else { return }
        let error = SiloError(
            .operationAbandoned,
            "operation \(driver.operation.id) (\(driver.operation.type)) was dropped by a step that never finished",
            field: "operation",
            value: "\(driver.operation.id)"
        )
        let (driver, chain, done) = (self.driver, self.chain, completed.withLock { $0 })
        scheduler.continueChain { Self.rollBack(driver: driver, chain: chain, done: done, error: error) }
    }

    var isCancelled: Bool { driver.isCancelled }
    var cancellationError: SiloError { driver.cancellationError }

    func run(from start: Int) {
        var index = start
        while index < chain.steps.count {
            let step = chain.steps[index]
            let context = StepContext(name: step.name, index: index, run: self)
            do {
                try driver.checkCancellation()
                if step.isPointOfNoReturn { try driver.enterPointOfNoReturn() }
                report(percentAt: doneWeight[index], stage: step.name)
                if try step.body(context) == .pending {
                    guard let early = context.bodyReturnedPending() else { return }  // resumes in `resume`
                    try early.get()
                } else if let early = context.takeEarlyResult() {
                    try early.get()  // a body that called `fail` and then returned `.finished` failed
                }
                context.markDone()
            } catch {
                context.markDone()
                abort(SiloError(error))
                return
            }
            completed.withLock { $0.append(step) }
            index += 1
        }
        finishChain()
    }

    func resume(after index: Int, result: Result<Void, SiloError>) {
        scheduler.continueChain { [self] in
            switch result {
            case .success:
                completed.withLock { $0.append(chain.steps[index]) }
                run(from: index + 1)
            case .failure(let error):
                abort(error)
            }
        }
    }

    func stepProgress(index: Int, fraction: Double, completed: UInt64?, total: UInt64?) {
        let clamped = fraction.isNaN ? 0 : min(max(fraction, 0), 1)
        let weighted = Double(doneWeight[index]) + Double(doneWeight[index + 1] - doneWeight[index]) * clamped
        let percent = Int((weighted / Double(totalWeight) * 100).rounded(.down))
        driver.operation.reportProgress(
            percent: percent, completed: completed, total: total, stage: chain.steps[index].name
        )
    }

    func onCancel(_ handler: @escaping @Sendable () -> Void) {
        driver.onCancel(handler)
    }

    private func report(percentAt weight: Int, stage: String) {
        let percent = Int((Double(weight) / Double(totalWeight) * 100).rounded(.down))
        driver.operation.reportProgress(percent: percent, completed: nil, total: nil, stage: stage)
    }

    private func finishChain() {
        // A cancel accepted while the last step ran (one that is not a point of no return, which
        // refuses a late cancel) still rolls everything back (O8), even if that step ignored it.
        // Checked and closed in one step: a cancel from here on is too late (O9), not accepted
        // and then lost to the success below.
        do throws(SiloError) { try driver.enterPointOfNoReturn() } catch { return abort(error) }
        do {
            driver.succeed(try chain.output())
        } catch {
            abort(SiloError(error))
        }
    }

    /// Rolls back the completed steps in reverse, then fails the operation. A cancel that was
    /// accepted wins over the error the interrupted step reported (O8). Steps up to a completed
    /// point of no return are committed and stay: only those after it are rolled back (undoing
    /// what came before a commit under what the commit made, such as a file cut back under a
    /// device already grown, would leave neither state).
    private func abort(_ error: SiloError) {
        let done = completed.withLock { steps in
            defer { steps = [] }
            return steps
        }
        Self.rollBack(driver: driver, chain: chain, done: done, error: error)
    }

    private static func rollBack(driver: OperationDriver<Output>, chain: OperationChain<Output>, done: [OperationStep], error: SiloError) {
        var failure = error
        if driver.isCancelled, error.code != .operationCancelled {
            failure = driver.cancellationError.adding(.init(message: error.message, source: "step"))
        }
        let committed = done.lastIndex { $0.isPointOfNoReturn }.map { $0 + 1 } ?? 0
        for step in done[committed...].reversed() {
            guard let rollback = step.rollback else { continue }
            do {
                try rollback()
            } catch {
                failure = failure.adding(.init(
                    message: "rollback of step '\(step.name)' failed: \(SiloError(error).message)", source: "rollback"
                ))
            }
        }
        if let cleanup = chain.cleanup {
            do {
                try cleanup()
            } catch {
                failure = failure.adding(.init(message: "cleanup failed: \(SiloError(error).message)", source: "rollback"))
            }
        }
        driver.fail(failure)
    }
}

extension OperationScheduler {
    /// Continues a chain after a step that finished later. The operation holds its slot, so this
    /// never waits for admission.
    func continueChain(_ job: @escaping @Sendable () -> Void) {
        workerPool.submit(job)
    }
}
