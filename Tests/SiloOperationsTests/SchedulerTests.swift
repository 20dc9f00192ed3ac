import Dispatch
import Synchronization
import Testing

@testable import SiloOperations

@Suite("Scheduler limits")
struct SchedulerTests {
    @Test("O15 excess operations wait in FIFO order as pending at 0%; a full queue is refused")
    func boundedFIFO() throws {
        // One slot, so queued operations run one after another and their order is observable.
        let scheduler = OperationScheduler(limits: .init(maxRunning: 1, maxQueued: 3))
        let release = Signal()
        let first = try blockedOperation(on: scheduler, output: 0, release: release)
        let order = Recorder<Int>()
        var queued: [SiloOperation<Int>] = []
        for index in 1...3 {
            queued.append(try scheduler.start(.createLun) { driver in
                order.append(index)
                driver.succeed(index)
            })
        }
        #expect(scheduler.load == (running: 1, queued: 3))
        for operation in queued {
            #expect(operation.status == .queued)
            #expect(operation.status.isPending && operation.status.percentComplete == 0)
        }
        let refused = #expect(throws: SiloError.self) {
            _ = try scheduler.start(.createLun) { (driver: OperationDriver<Int>) in driver.succeed(9) }
        }
        #expect(refused?.code == .tooManyOperations)

        release.fire()
        _ = try first.wait()
        #expect(try queued.map { try $0.wait(timeout: .seconds(10)) } == [1, 2, 3])
        #expect(order.values == [1, 2, 3])
        #expect(eventually { scheduler.load == (running: 0, queued: 0) })
    }

    @Test("O15 the slot is free once a wait returns: the next operation starts at once, never refused")
    func slotFreeAfterWait() throws {
        // One slot and no queue: a start is refused unless the finished operation gave its slot
        // back before its waiter woke.
        let scheduler = OperationScheduler(limits: .init(maxRunning: 1, maxQueued: 0))
        for round in 0..<300 {
            let operation = try scheduler.start(.createLun) { (driver: OperationDriver<Int>) in driver.succeed(round) }
            #expect(try operation.wait(timeout: .seconds(10)) == round)
        }
        #expect(scheduler.load == (running: 0, queued: 0))
    }

    @Test("O15 no more than the limit run at once under load")
    func neverMoreThanLimit() throws {
        let scheduler = OperationScheduler(limits: .init(maxRunning: 3, maxQueued: 1000))
        let running = Atomic<Int>(0)
        let peak = Atomic<Int>(0)
        var operations: [SiloOperation<Void>] = []
        for _ in 0..<200 {
            operations.append(try scheduler.run(.createLun) { _ in
                let now = running.add(1, ordering: .relaxed).newValue
                peak.max(now, ordering: .relaxed)
                usleepMilliseconds(1)
                running.subtract(1, ordering: .relaxed)
            })
        }
        for operation in operations { try operation.wait(timeout: .seconds(30)) }
        #expect(peak.load(ordering: .relaxed) <= 3)
        #expect(peak.load(ordering: .relaxed) >= 1)
    }

    @Test("O15 cancelling a queued operation completes it at once; its work never runs")
    func cancelQueued() throws {
        let scheduler = OperationScheduler(limits: .init(maxRunning: 1, maxQueued: 4))
        let release = Signal()
        let holder = try blockedOperation(on: scheduler, output: 0, release: release)
        let ran = Counter()
        let queued: SiloOperation<Int> = try scheduler.start(.createLun) { driver in
            ran.increment()
            driver.succeed(1)
        }
        let after: SiloOperation<Int> = try scheduler.start(.createLun) { $0.succeed(2) }
        try queued.cancel()
        #expect(queued.status.error?.code == .operationCancelled)
        #expect(scheduler.load == (running: 1, queued: 1))
        release.fire()
        _ = try holder.wait()
        #expect(try after.wait(timeout: .seconds(10)) == 2)
        #expect(ran.value == 0)
        #expect(eventually { scheduler.load == (running: 0, queued: 0) })
    }
}
