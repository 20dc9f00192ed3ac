import Dispatch
import Synchronization
import Testing

@testable import SiloOperations

@Suite("Operations: status, wait, cancel, await")
struct OperationTests {
    let scheduler = OperationScheduler()

    @Test("O1 a call returns an operation even when the work finished before it returned")
    func returnsOperationWhenDoneAtOnce() throws {
        let operation: SiloOperation<String> = try scheduler.start(.createLun, placement: .inline) {
            $0.succeed("lun0")
        }
        #expect(operation.status == .succeeded)
        #expect(try operation.wait() == "lun0")
    }

    @Test("O2 operations have unique ids, their type and the caller's context")
    func idTypeContext() throws {
        let ids = Recorder<OperationID>()
        DispatchQueue.concurrentPerform(iterations: 2000) { index in
            let operation: SiloOperation<Int>? = try? scheduler.start(
                index.isMultiple(of: 2) ? .createLun : .start, context: index, placement: .inline
            ) { $0.succeed(index) }
            if let operation {
                ids.append(operation.id)
                #expect(operation.context as? Int == index)
                #expect(operation.type == (index.isMultiple(of: 2) ? .createLun : .start))
            }
        }
        #expect(ids.count == 2000)
        #expect(Set(ids.values).count == 2000)
    }

    @Test("O3 status never blocks: pending with 0...99 while running, 100 with the result when done")
    func statusWhileRunning() throws {
        let release = Signal()
        let reported = Signal()
        let operation: SiloOperation<Int> = try scheduler.start(.extendLun) { driver in
            driver.reportProgress(percent: 250)
            reported.fire()
            _ = release.wait()
            driver.succeed(7)
        }
        #expect(reported.wait())
        let status = operation.status
        #expect(status.isPending)
        #expect(status.percentComplete == 99)
        #expect(operation.result == nil)
        #expect(operation.resultDocument == nil)
        release.fire()
        #expect(try operation.wait() == 7)
        #expect(operation.status == .succeeded)
        #expect(operation.status.percentComplete == 100)
    }

    @Test("O3 status is read while the producer is inside its work and a waiter is parked")
    func statusDoesNotWaitForProducer() throws {
        let release = Signal()
        let started = Signal()
        let operation = try blockedOperation(on: scheduler, output: 1, release: release, started: started)
        #expect(started.wait())
        let waiterDone = Signal()
        let waiting = Signal()
        DispatchQueue.global().async {
            waiting.fire()
            _ = try? operation.wait()
            waiterDone.fire()
        }
        // The waiter is at its wait (parked there by now) before status is read beside it.
        #expect(waiting.wait())
        usleepMilliseconds(20)
        // Read on a thread of its own, so that a status that waited for the producer fails this
        // test (the reads never end before the release below) instead of hanging it.
        let read = Signal()
        let pending = Locked(0)
        DispatchQueue.global().async {
            for _ in 0..<1000 where operation.status.isPending { pending.with { $0 += 1 } }
            read.fire()
        }
        #expect(read.wait(), "status waited for the producer")
        #expect(pending.value == 1000)
        release.fire()
        #expect(waiterDone.wait())
    }

    @Test("O4 percent never decreases while running and is 0 after failure")
    func percentMonotonic() throws {
        let step = Signal()
        let next = Signal()
        let operation: SiloOperation<Void> = try scheduler.start(.shrinkLun) { driver in
            driver.reportProgress(percent: 40)
            driver.reportProgress(percent: 20)
            step.fire()
            _ = next.wait()
            driver.reportProgress(completed: 10, of: 100)
            step.fire()
            _ = next.wait()
            driver.fail(SiloError(.shrinkOverData, "data past the new end"))
        }
        #expect(step.wait())
        #expect(operation.status.percentComplete == 40)
        next.fire()
        #expect(step.wait())
        #expect(operation.status.percentComplete == 40)
        next.fire()
        #expect(throws: SiloError.self) { try operation.wait() }
        #expect(operation.status.percentComplete == 0)
    }

    @Test("O4 progress in bytes reports units, a rate and the time left")
    func progressInBytes() throws {
        let reported = Signal()
        let release = Signal()
        let operation: SiloOperation<Void> = try scheduler.start(.createLun) { driver in
            driver.reportProgress(completed: 0, of: 1 << 30, stage: "zero")
            usleepMilliseconds(20)
            driver.reportProgress(completed: 1 << 28, of: 1 << 30, stage: "zero")
            reported.fire()
            _ = release.wait()
            driver.succeed()
        }
        #expect(reported.wait())
        guard case .running(let progress) = operation.status else {
            Issue.record("expected running, got \(operation.status)")
            return
        }
        #expect(progress.percent == 25)
        #expect(progress.completedUnits == 1 << 28)
        #expect(progress.totalUnits == 1 << 30)
        #expect(progress.stage == "zero")
        #expect((progress.unitsPerSecond ?? 0) > 0)
        #expect((progress.estimatedTimeRemaining ?? .zero) > .zero)
        #expect(operation.progress?.completedUnits == 1 << 28, "the operation's own accessor says the same")
        release.fire()
        try operation.wait()
        #expect(operation.progress == nil, "no progress once complete")
    }

    @Test("O5 wait blocks until completion and returns the output or throws the error")
    func waitBlocks() throws {
        let release = Signal()
        let operation = try blockedOperation(on: scheduler, output: "done", release: release)
        let finished = Counter()
        DispatchQueue.global().asyncAfter(deadline: .now() + .milliseconds(50)) {
            finished.increment()
            release.fire()
        }
        #expect(try operation.wait() == "done")
        #expect(finished.value == 1)

        let failing: SiloOperation<Int> = try scheduler.start(.start) {
            $0.fail(SiloError(.invalidState, "system is paused", field: "state", value: "Paused"))
        }
        let error = #expect(throws: SiloError.self) { try failing.wait() }
        #expect(error?.code == .invalidState)
    }

    @Test("O6 a wait that times out throws operationTimeout; the operation goes on")
    func waitTimeout() throws {
        let release = Signal()
        let operation = try blockedOperation(on: scheduler, output: 42, release: release)
        let error = #expect(throws: SiloError.self) { try operation.wait(timeout: .milliseconds(20)) }
        #expect(error?.code == .operationTimeout)
        #expect(error?.field == "timeout")
        #expect(operation.status.isPending)
        release.fire()
        #expect(try operation.wait(timeout: .seconds(10)) == 42)
    }

    @Test("O6 a zero or negative timeout, however large, times out at once; the operation goes on", arguments: [
        Duration.zero, .nanoseconds(-1), .seconds(-5), .seconds(Int64.min), .seconds(Int64.min / 1_000_000_000 - 1),
        // The last whole second in range, plus a fraction that takes it past: the sum overflows.
        Duration(secondsComponent: Int64.min / 1_000_000_000, attosecondsComponent: -900_000_000_000_000_000),
    ])
    func awkwardTimeouts(timeout: Duration) throws {
        let scheduler = OperationScheduler()
        let release = Signal()
        let operation = try blockedOperation(on: scheduler, output: 7, release: release)
        let error = #expect(throws: SiloError.self) { try operation.wait(timeout: timeout) }
        #expect(error?.code == .operationTimeout)
        release.fire()
        #expect(try operation.wait(timeout: .seconds(10)) == 7)
    }

    @Test("O7 waiting on a completed operation returns the same result at once, from many threads")
    func waitAfterCompletion() throws {
        final class Box: Sendable { let id = 1 }
        let box = Box()
        let operation: SiloOperation<Box> = try scheduler.start(.getProperties, placement: .inline) {
            $0.succeed(box)
        }
        let same = Counter()
        DispatchQueue.concurrentPerform(iterations: 64) { _ in
            for _ in 0..<100 where (try? operation.wait(timeout: .zero)) === box { same.increment() }
        }
        #expect(same.value == 6400)

        let failure = SiloError(.objectDeleted, "LUN 'db1' was deleted", field: "name", value: "db1")
        let failed: SiloOperation<Int> = try scheduler.start(.deleteLun, placement: .inline) { $0.fail(failure) }
        DispatchQueue.concurrentPerform(iterations: 16) { _ in
            #expect(throws: failure) { try failed.wait() }
        }
    }

    @Test("O8 cancel completes a running operation with operationCancelled, rolls back, wakes every waiter")
    func cancelRunning() throws {
        let resources = SiloMutex<Set<String>>([])
        let inSecondStep = Signal()
        let chain = OperationChain<Void>([
            OperationStep("create file", run: { _ in resources.withLock { _ = $0.insert("file") } },
                          rollback: { resources.withLock { _ = $0.remove("file") } }),
            OperationStep("attach", run: { _ in resources.withLock { _ = $0.insert("loop") } },
                          rollback: { resources.withLock { _ = $0.remove("loop") } }),
            OperationStep("zero", weight: 10, run: { step in
                inSecondStep.fire()
                while !step.isCancelled { usleepMilliseconds(1) }
                try step.checkCancellation()
            }),
        ])
        let operation = try scheduler.run(.createLun, chain: chain)
        #expect(inSecondStep.wait())
        #expect(resources.withLock { $0 } == ["file", "loop"])

        let woken = Recorder<SiloError.Code?>()
        let allWoken = DispatchGroup()
        let allWaiting = DispatchGroup()
        for _ in 0..<8 {
            allWoken.enter()
            allWaiting.enter()
            DispatchQueue.global().async {
                allWaiting.leave()
                do throws(SiloError) { try operation.wait() } catch { woken.append(error.code) }
                allWoken.leave()
            }
        }
        // Every waiter is at its wait (parked there by now), not one that reads a result it finds.
        #expect(allWaiting.wait(timeout: .now() + 10) == .success)
        usleepMilliseconds(20)
        #expect(operation.status.error == nil, "still running: the waiters are parked")
        try operation.cancel()
        #expect(allWoken.wait(timeout: .now() + 10) == .success)
        #expect(woken.values == Array(repeating: .operationCancelled, count: 8))
        #expect(operation.status.error?.code == .operationCancelled)
        #expect(resources.withLock { $0 }.isEmpty, "rollback must undo every completed step")
    }

    @Test("O8 cancel interrupts a blocking step through its cancel handler")
    func cancelInterruptsBlockingWork() throws {
        let started = Signal()
        let operation: SiloOperation<Int> = try scheduler.run(.start) { driver in
            let interrupt = Signal()
            driver.onCancel { interrupt.fire() }
            started.fire()
            _ = interrupt.wait(seconds: 30)
            try driver.checkCancellation()
            return 1
        }
        #expect(started.wait())
        try operation.cancel()
        let error = #expect(throws: SiloError.self) { try operation.wait(timeout: .seconds(10)) }
        #expect(error?.code == .operationCancelled)
    }

    @Test("O9 cancel past the point of no return reports cancelTooLate and changes nothing")
    func cancelTooLate() throws {
        let committed = Signal()
        let release = Signal()
        let operation: SiloOperation<String> = try scheduler.start(.extendLun) { driver in
            do throws(SiloError) { try driver.enterPointOfNoReturn() } catch { driver.fail(error) }
            committed.fire()
            _ = release.wait()
            driver.succeed("extended")
        }
        #expect(committed.wait())
        let error = #expect(throws: SiloError.self) { try operation.cancel() }
        #expect(error?.code == .cancelTooLate)
        #expect(operation.status.isPending)
        release.fire()
        #expect(try operation.wait() == "extended")
    }

    @Test("O9 cancel of a non-cancellable operation reports cancelTooLate")
    func cancelNotCancellable() throws {
        let release = Signal()
        let operation: SiloOperation<Int> = try scheduler.start(.terminate, cancellable: false) { driver in
            _ = release.wait()
            driver.succeed(0)
        }
        #expect((#expect(throws: SiloError.self) { try operation.cancel() })?.code == .cancelTooLate)
        release.fire()
        #expect(try operation.wait() == 0)
    }

    @Test("O9 cancel on a completed or cancelled operation changes nothing")
    func cancelCompleted() throws {
        let done: SiloOperation<Int> = try scheduler.start(.start, placement: .inline) { $0.succeed(3) }
        try done.cancel()
        #expect(done.status == .succeeded)
        #expect(try done.wait() == 3)

        let release = Signal()
        let cancelled = try blockedOperationCancellable(release: release)
        try cancelled.cancel()
        release.fire()
        _ = try? cancelled.wait(timeout: .seconds(10))
        let first = cancelled.status
        try cancelled.cancel()
        #expect(cancelled.status == first)
        #expect(first.error?.code == .operationCancelled)
    }

    private func blockedOperationCancellable(release: Signal) throws -> SiloOperation<Int> {
        let operation: SiloOperation<Int> = try scheduler.start(.start) { driver in
            _ = release.wait()
            if driver.isCancelled { driver.fail(driver.cancellationError) } else { driver.succeed(1) }
        }
        return operation
    }

    @Test("O10 await returns the output")
    func awaitValue() async throws {
        let operation: SiloOperation<[Int]> = try scheduler.run(.enumerate) { _ in [1, 2, 3] }
        #expect(try await operation.value == [1, 2, 3])
        #expect(try await operation.value == [1, 2, 3])
    }

    @Test("O10 cancelling the awaiting task cancels the operation")
    func awaitCancellation() async throws {
        let started = Signal()
        let operation: SiloOperation<Int> = try scheduler.run(.createLun) { driver in
            started.fire()
            // Bounded: a cancel that never reaches the operation fails the test instead of hanging it.
            for _ in 0..<30_000 where !driver.isCancelled { usleepMilliseconds(1) }
            if driver.isCancelled { throw driver.cancellationError }
            return 0
        }
        #expect(started.wait())
        let task = Task { try await operation.value }
        task.cancel()
        let result = await task.result
        #expect(throws: SiloError.self) { try result.get() }
        #expect(operation.status.error?.code == .operationCancelled)
    }

    @Test("Producer: a driver dropped without completing fails its operation with operationAbandoned")
    func abandonedDriver() throws {
        let operation: SiloOperation<Int> = try scheduler.start(.modify) { _ in }
        let error = #expect(throws: SiloError.self) { try operation.wait(timeout: .seconds(10)) }
        #expect(error?.code == .operationAbandoned)
    }

    @Test("Producer: a driver dropped without completing is caught even when it registered a cancel handler that takes the driver")
    func abandonedDriverWithCancelHandler() throws {
        let operation: SiloOperation<Int> = try scheduler.start(.modify) { driver in
            driver.onCancel { (driver: OperationDriver<Int>) in driver.fail(driver.cancellationError) }
        }
        let error = #expect(throws: SiloError.self) { try operation.wait(timeout: .seconds(10)) }
        #expect(error?.code == .operationAbandoned)
    }

    @Test("Producer: the first completion wins; later ones change nothing")
    func completeOnce() throws {
        let results = Recorder<Bool>()
        let operation: SiloOperation<Int> = try scheduler.start(.modify, placement: .inline) { driver in
            results.append(driver.succeed(1))
            results.append(driver.succeed(2))
            results.append(driver.fail(SiloError(.unexpected, "late")))
        }
        #expect(results.values == [true, false, false])
        #expect(try operation.wait() == 1)
    }
}
