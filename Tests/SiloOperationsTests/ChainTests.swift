import Dispatch
import Synchronization
import Testing

@testable import SiloOperations

@Suite("Chains of steps")
struct ChainTests {
    let scheduler = OperationScheduler()

    @Test("O14 a chain reports one combined percent by weight")
    func combinedPercent() throws {
        let inStep = Signal()
        let proceed = Signal()
        let chain = OperationChain<String>([
            OperationStep("create", weight: 1, run: { _ in }),
            OperationStep("zero", weight: 3, run: { step in
                step.reportProgress(fraction: 0.5)
                inStep.fire()
                _ = proceed.wait()
            }),
        ], output: { "made" })
        let operation = try scheduler.run(.createLun, chain: chain)
        #expect(inStep.wait())
        guard case .running(let progress) = operation.status else {
            Issue.record("expected running")
            return
        }
        #expect(progress.percent == 62)  // (1 + 3 * 0.5) / 4
        #expect(progress.stage == "zero")
        proceed.fire()
        #expect(try operation.wait() == "made")
        #expect(operation.status.percentComplete == 100)
    }

    @Test("O4 O14 a report from a step that is done (a thread it left behind) changes nothing: the stage and units stay the running step's")
    func lateReportIgnored() throws {
        let earlier = Locked<StepContext?>(nil)
        let inStep = Signal()
        let proceed = Signal()
        let chain = OperationChain<String>([
            OperationStep("allocate", weight: 1, run: { step in earlier.with { $0 = step } }),
            OperationStep("zero", weight: 1, run: { step in
                step.reportProgress(completed: 8, of: 10)
                inStep.fire()
                _ = proceed.wait()
            }),
        ], output: { "made" })
        let operation = try scheduler.run(.createLun, chain: chain)
        #expect(inStep.wait())
        earlier.value?.reportProgress(completed: 1, of: 100)
        guard case .running(let progress) = operation.status else {
            Issue.record("expected running")
            return
        }
        #expect(progress.stage == "zero" && progress.completedUnits == 8 && progress.totalUnits == 10, "\(progress)")
        proceed.fire()
        #expect(try operation.wait() == "made")
    }

    @Test("O14 a chain stops at the first failure and rolls back completed steps in reverse")
    func stopsAndRollsBack() throws {
        let log = Recorder<String>()
        let callbacks = Counter()
        let called = Signal()
        let failure = SiloError(.notEnoughSpace, "pool is full", field: "size", value: "10G")
        let chain = OperationChain<Void>([
            OperationStep("one", run: { _ in log.append("run one") }, rollback: { log.append("undo one") }),
            OperationStep("two", run: { _ in log.append("run two") }, rollback: { log.append("undo two") }),
            OperationStep("three", run: { _ in
                log.append("run three")
                throw failure
            }, rollback: { log.append("undo three") }),
            OperationStep("four", run: { _ in log.append("run four") }),
        ])
        let operation = try scheduler.run(.createLun, chain: chain, callback: .short { _ in
            callbacks.increment()
            called.fire()
        })
        #expect(throws: failure) { try operation.wait() }
        #expect(log.values == ["run one", "run two", "run three", "undo two", "undo one"])
        #expect(called.wait())
        usleepMilliseconds(30)
        #expect(callbacks.value == 1)
    }

    @Test("O14 a failing rollback is reported in the error's events")
    func failingRollbackReported() throws {
        let chain = OperationChain<Void>([
            OperationStep("attach", run: { _ in }, rollback: {
                throw SiloError(.deviceInUse, "loop7 busy")
            }),
            OperationStep("register", run: { _ in throw SiloError(.unexpected, "disk full") }),
        ])
        let operation = try scheduler.run(.createLun, chain: chain)
        let error = #expect(throws: SiloError.self) { try operation.wait() }
        #expect(error?.code == .unexpected)
        #expect(error?.events.map(\.message) == ["rollback of step 'attach' failed: loop7 busy"])
    }

    @Test("O8 O9 a cancel once every step is done is too late: refused, and the operation succeeds (not accepted and then lost)")
    func cancelAfterLastStep() throws {
        let inOutput = Signal()
        let proceed = Signal()
        let chain = OperationChain<Int>([OperationStep("only", run: { _ in })], output: {
            inOutput.fire()
            _ = proceed.wait()
            return 7
        })
        let operation = try scheduler.run(.start, chain: chain)
        #expect(inOutput.wait())
        let refused = #expect(throws: SiloError.self) { try operation.cancel() }
        #expect(refused?.code == .cancelTooLate, "\(String(describing: refused))")
        proceed.fire()
        #expect(try operation.wait(timeout: .seconds(10)) == 7)
    }

    @Test("O14 steps may finish at once or later, from another thread")
    func stepsFinishLater() throws {
        let log = Recorder<String>()
        let chain = OperationChain<Int>([
            OperationStep("later", weight: 2, start: { step in
                DispatchQueue.global().asyncAfter(deadline: .now() + .milliseconds(20)) {
                    log.append("later done")
                    step.finish()
                }
                return .pending
            }, rollback: { log.append("undo later") }),
            OperationStep("at once though pending", start: { step in
                step.finish()  // finished before returning .pending
                log.append("early done")
                return .pending
            }),
            OperationStep("fails later", start: { step in
                DispatchQueue.global().async { step.fail(SiloError(.connectionClosed, "agent went away")) }
                return .pending
            }),
        ], output: { 1 })
        let operation = try scheduler.run(.start, chain: chain)
        let error = #expect(throws: SiloError.self) { try operation.wait(timeout: .seconds(10)) }
        #expect(error?.code == .connectionClosed)
        #expect(log.values == ["later done", "early done", "undo later"])
    }

    @Test("O14 cancel during a step that finishes later rolls back once the step reports")
    func cancelPendingStep() throws {
        let log = Recorder<String>()
        let pending = Signal()
        let chain = OperationChain<Void>([
            OperationStep("made", run: { _ in log.append("made") }, rollback: { log.append("unmade") }),
            OperationStep("wait for agent", start: { step in
                step.onCancel { step.fail(SiloError(.operationCancelled, "stopped waiting")) }
                pending.fire()
                return .pending
            }),
        ])
        let operation = try scheduler.run(.start, chain: chain)
        #expect(pending.wait())
        try operation.cancel()
        let error = #expect(throws: SiloError.self) { try operation.wait(timeout: .seconds(10)) }
        #expect(error?.code == .operationCancelled)
        #expect(log.values == ["made", "unmade"])
    }

    @Test("O14 a pending step dropped without finishing fails its operation with operationAbandoned, even with a cancel handler that takes the step; the completed steps are rolled back and the cleanup runs")
    func abandonedPendingStep() throws {
        let log = Recorder<String>()
        let chain = OperationChain<Void>([
            OperationStep("made", run: { _ in log.append("made") }, rollback: { log.append("unmade") }),
            OperationStep("forgotten", start: { step in
                step.onCancel { (step: StepContext) in step.fail(SiloError(.operationCancelled, "stopped waiting")) }
                return .pending
            }),
        ], output: {}, cleanup: { log.append("cleaned") })
        let operation = try scheduler.run(.start, chain: chain)
        let error = #expect(throws: SiloError.self) { try operation.wait(timeout: .seconds(10)) }
        #expect(error?.code == .operationAbandoned, "\(String(describing: error))")
        #expect(log.values == ["made", "unmade", "cleaned"])
    }

    @Test("O8 a cancel accepted while a plain run's body works, after its last look, ends the operation cancelled: not accepted and then lost to the body's output")
    func runCancelAfterLastLook() throws {
        let inBody = Signal()
        let proceed = Signal()
        let operation: SiloOperation<String> = try scheduler.run(.createLun) { _ in
            inBody.fire()
            _ = proceed.wait()  // the body's last look at the cancel was before this
            return "done"
        }
        #expect(inBody.wait())
        try operation.cancel()  // accepted: the body has not passed a point of no return
        proceed.fire()
        let error = #expect(throws: SiloError.self) { try operation.wait(timeout: .seconds(10)) }
        #expect(error?.code == .operationCancelled, "\(String(describing: error))")
    }

    @Test("O8 O9 a plain run's body that enters its point of no return keeps its output; a cancel after that is refused as too late")
    func runPointOfNoReturn() throws {
        let committed = Signal()
        let proceed = Signal()
        let operation: SiloOperation<String> = try scheduler.run(.createLun) { driver in
            try driver.enterPointOfNoReturn()
            committed.fire()
            _ = proceed.wait()
            return "kept"
        }
        #expect(committed.wait())
        let refused = #expect(throws: SiloError.self) { try operation.cancel() }
        #expect(refused?.code == .cancelTooLate)
        proceed.fire()
        #expect(try operation.wait(timeout: .seconds(10)) == "kept")
    }

    @Test("O8 O14 a cancel accepted during the last step rolls back even when that step ignores it")
    func cancelDuringLastStep() throws {
        let log = Recorder<String>()
        let inStep = Signal()
        let proceed = Signal()
        let chain = OperationChain<String>([
            OperationStep("made", run: { _ in log.append("made") }, rollback: { log.append("unmade") }),
            OperationStep("last", run: { _ in
                inStep.fire()
                _ = proceed.wait()  // never looks at the cancel
                log.append("last done")
            }, rollback: { log.append("last undone") }),
        ], output: { "made" })
        let operation = try scheduler.run(.createLun, chain: chain)
        #expect(inStep.wait())
        try operation.cancel()  // accepted: the step is not a point of no return
        proceed.fire()
        let error = #expect(throws: SiloError.self) { try operation.wait(timeout: .seconds(10)) }
        #expect(error?.code == .operationCancelled)
        #expect(log.values == ["made", "last done", "last undone", "unmade"])
    }

    @Test("O14 a step that reports a failure and then returns finished fails the chain")
    func failThenFinished() throws {
        let log = Recorder<String>()
        let chain = OperationChain<Void>([
            OperationStep("made", run: { _ in log.append("made") }, rollback: { log.append("unmade") }),
            OperationStep("reports", start: { step in
                step.fail(SiloError(.deviceInUse, "loop7 busy"))
                return .finished
            }),
            OperationStep("never", run: { _ in log.append("never") }),
        ])
        let operation = try scheduler.run(.createLun, chain: chain)
        let error = #expect(throws: SiloError.self) { try operation.wait(timeout: .seconds(10)) }
        #expect(error?.code == .deviceInUse)
        #expect(log.values == ["made", "unmade"])
    }

    @Test("O4 progress from a step is safe with any number: NaN, infinity, more done than the total")
    func awkwardProgress() throws {
        let inStep = Signal()
        let proceed = Signal()
        let chain = OperationChain<Int>([
            OperationStep("zero", run: { step in
                step.reportProgress(fraction: .nan)
                step.reportProgress(fraction: -.infinity)
                step.reportProgress(fraction: .infinity)
                step.reportProgress(completed: .max, of: 1)
                step.reportProgress(completed: 5, of: 0)
                inStep.fire()
                _ = proceed.wait()
            }),
        ], output: { 1 })
        let operation = try scheduler.run(.createLun, chain: chain)
        #expect(inStep.wait())
        #expect(operation.status.percentComplete == 99)  // never 100 while running
        proceed.fire()
        #expect(try operation.wait(timeout: .seconds(10)) == 1)
        let driven = try scheduler.run(.extendLun) { (driver: OperationDriver<Int>) in
            driver.reportProgress(completed: .max, of: 1)
            driver.reportProgress(completed: 1, of: 0)
            return 2
        }
        #expect(try driven.wait(timeout: .seconds(10)) == 2)
    }

    @Test("O14 a failure past a completed point of no return rolls back only the steps after it; cleanup still runs")
    func failurePastPointOfNoReturn() throws {
        let log = Recorder<String>()
        func step(_ name: String, commits: Bool = false) -> OperationStep {
            OperationStep(name, pointOfNoReturn: commits, run: { _ in log.append(name) }, rollback: { log.append("undo " + name) })
        }
        let failing = OperationChain<Int>([
            step("a"), step("commit", commits: true), step("b"),
            OperationStep("fails", run: { _ in throw SiloError(.unexpected, "after the commit") }),
        ], output: { 1 }, cleanup: { log.append("cleanup") })
        let error = #expect(throws: SiloError.self) { try scheduler.run(.start, chain: failing).wait(timeout: .seconds(10)) }
        #expect(error?.code == .unexpected)
        #expect(log.values == ["a", "commit", "b", "undo b", "cleanup"])

        // The output failing after a last step that commits: nothing is undone.
        let outputLog = Recorder<String>()
        let late = OperationChain<Int>([
            OperationStep("a", run: { _ in outputLog.append("a") }, rollback: { outputLog.append("undo a") }),
            OperationStep("register", pointOfNoReturn: true, run: { _ in outputLog.append("register") },
                          rollback: { outputLog.append("undo register") }),
        ], output: { throw SiloError(.objectNotFound, "gone meanwhile") }, cleanup: { outputLog.append("cleanup") })
        #expect(throws: SiloError.self) { try scheduler.run(.start, chain: late).wait(timeout: .seconds(10)) }
        #expect(outputLog.values == ["a", "register", "cleanup"])

        // Failing in the step that would commit commits nothing: everything before it is undone.
        let uncommitted = Recorder<String>()
        let refused = OperationChain<Int>([
            OperationStep("a", run: { _ in uncommitted.append("a") }, rollback: { uncommitted.append("undo a") }),
            OperationStep("commit", pointOfNoReturn: true, run: { _ in throw SiloError(.unexpected, "refused") }),
        ], output: { 1 })
        #expect(throws: SiloError.self) { try scheduler.run(.start, chain: refused).wait(timeout: .seconds(10)) }
        #expect(uncommitted.values == ["a", "undo a"])
    }

    @Test("O14 a step marked as the point of no return makes later cancels too late")
    func pointOfNoReturnStep() throws {
        let committed = Signal()
        let release = Signal()
        let chain = OperationChain<Void>([
            OperationStep("prepare", run: { _ in }),
            OperationStep("register", pointOfNoReturn: true, run: { _ in
                committed.fire()
                _ = release.wait()
            }),
        ])
        let operation = try scheduler.run(.createLun, chain: chain)
        #expect(committed.wait())
        #expect((#expect(throws: SiloError.self) { try operation.cancel() })?.code == .cancelTooLate)
        release.fire()
        try operation.wait()
    }
}

@Suite("Chain cleanup")
struct ChainCleanupTests {
    @Test("O14 cleanup runs once on cancel however early: while queued, or before the first step")
    func cleanupHoweverEarly() throws {
        let scheduler = OperationScheduler(limits: .init(maxRunning: 1, maxQueued: 4))
        let release = Signal()
        let holder = try blockedOperation(on: scheduler, output: 0, release: release)
        let cleanups = Counter()
        let ran = Counter()
        let chain = OperationChain<Void>([OperationStep("one", run: { _ in ran.increment() })], cleanup: {
            cleanups.increment()
        })
        // Queued behind the holder, cancelled before it ever starts.
        let queued = try scheduler.run(.createLun, chain: chain)
        #expect(queued.status == .queued)
        try queued.cancel()
        #expect((#expect(throws: SiloError.self) { try queued.wait(timeout: .seconds(10)) })?.code == .operationCancelled)
        #expect(cleanups.value == 1)
        release.fire()
        _ = try holder.wait()

        // Running, cancelled inside its first step: no step completed, cleanup still runs.
        let inStep = Signal()
        let running = try scheduler.run(.createLun, chain: OperationChain<Void>([
            OperationStep("wait", run: { step in
                inStep.fire()
                while !step.isCancelled { usleepMilliseconds(1) }
                try step.checkCancellation()
            }),
        ], cleanup: { cleanups.increment() }))
        #expect(inStep.wait())
        try running.cancel()
        #expect(throws: SiloError.self) { try running.wait(timeout: .seconds(10)) }
        #expect(cleanups.value == 2)
        #expect(ran.value == 0)

        try scheduler.run(.createLun, chain: chain).wait(timeout: .seconds(10))
        #expect(ran.value == 1)
        #expect(cleanups.value == 2, "cleanup is for failure and cancel only")
    }
}
