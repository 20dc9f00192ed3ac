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

    @Test("O15 no more than the limit are admitted at once under load: each admitted one stays open until the test completes it")
    func neverMoreThanLimit() throws {
        // Counted by admission, not by the bodies running: the worker pool's own size would cap
        // those whatever the scheduler admitted. Each admitted operation hands its driver over and
        // stays running until a completer thread takes it; only then may the next be admitted.
        let scheduler = OperationScheduler(limits: .init(maxRunning: 3, maxQueued: 1000))
        let open = Atomic<Int>(0)
        let peak = Atomic<Int>(0)
        let drivers = Locked<[OperationDriver<Int>]>([])
        var operations: [SiloOperation<Int>] = []
        for _ in 0..<200 {
            operations.append(try scheduler.start(.createLun) { driver in
                peak.max(open.add(1, ordering: .sequentiallyConsistent).newValue, ordering: .relaxed)
                drivers.with { $0.append(driver) }
            })
        }
        // The first three admitted before any completes (slow thread starts under emulation).
        #expect(eventually { open.load(ordering: .sequentiallyConsistent) == 3 })
        let completed = Atomic<Int>(0)
        DispatchQueue.concurrentPerform(iterations: 4) { _ in
            let deadline = ContinuousClock.now + .seconds(60)
            while completed.load(ordering: .relaxed) < 200, ContinuousClock.now < deadline {
                guard let driver = drivers.with({ $0.popLast() }) else { continue }
                open.subtract(1, ordering: .sequentiallyConsistent)  // before the completion admits the next
                completed.add(1, ordering: .relaxed)
                driver.succeed(1)
            }
        }
        #expect(try operations.map { try $0.wait(timeout: .seconds(10)) }.count == 200)
        #expect(peak.load(ordering: .relaxed) == 3, "three at once, never more")
        #expect(scheduler.load == (running: 0, queued: 0))
    }

    @Test("O15 with a cancel, a completion and a start at once, every operation is admitted: none waits beside a free slot", .timeLimit(.minutes(2)))
    func noneWaitsBesideAFreeSlot() throws {
        // The race this aims at: a completion takes the free slot to admit from the queue, finds
        // only an operation being cancelled, and gives the slot back; a start that queued in
        // between found no slot. Its window is a few instructions wide (the slot is now given back
        // under the queue's lock, which closes it), and 30,000 rounds of this did not hit it in
        // the old code here; what the test does catch is any coarser loss of an admission among
        // the three threads of each round.
        let scheduler = OperationScheduler(limits: .init(maxRunning: 1, maxQueued: 8))
        for round in 0..<3000 {
            let holder = Locked<OperationDriver<Int>?>(nil)
            let running = try scheduler.start(.createLun, placement: .inline) { driver in holder.with { $0 = driver } }
            let doomed: SiloOperation<Int> = try scheduler.start(.createLun) { driver in driver.succeed(1) }
            let late = Locked<SiloOperation<Int>?>(nil)
            DispatchQueue.concurrentPerform(iterations: 3) { index in
                switch index {
                case 0: try? doomed.cancel()
                case 1: holder.value?.succeed(0)
                default:
                    let started: SiloOperation<Int>? = try? scheduler.start(.createLun) { driver in driver.succeed(2) }
                    late.with { $0 = started }
                }
            }
            _ = try running.wait(timeout: .seconds(10))
            let operation = try #require(late.value)
            let output = try? operation.wait(timeout: .seconds(10))
            try #require(output == 2, "round \(round): the start's operation waits beside a free slot: \(operation.status), load \(scheduler.load)")
            _ = try? doomed.wait(timeout: .seconds(10))
        }
        #expect(scheduler.load == (running: 0, queued: 0))
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
