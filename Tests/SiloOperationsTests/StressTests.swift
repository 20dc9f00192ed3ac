import Dispatch
import Synchronization
import Testing

@testable import SiloOperations

@Suite("Many threads at once")
struct StressTests {
    @Test("Stress: thousands of operations complete while others wait, cancel and register callbacks")
    func thousandsAtOnce() throws {
        let scheduler = OperationScheduler(limits: .init(maxRunning: 16, maxQueued: 100_000))
        let count = 4000
        let callbacks = Recorder<OperationID>()
        let events = Counter()
        let channel = EventChannel(owner: "stress")
        try channel.setHandler(options: .operationCallbacks) { _ in events.increment() }
        let allCallbacks = DispatchGroup()
        let operations = SiloMutex<[SiloOperation<Int>]>([])

        DispatchQueue.concurrentPerform(iterations: count) { index in
            let withCallback = index % 4 != 0
            if withCallback { allCallbacks.enter() }
            let callback: OperationCallback<Int>? = withCallback
                ? OperationCallback(model: index % 3 == 0 ? .long : .short) { operation in
                    callbacks.append(operation.id)
                    allCallbacks.leave()
                } : nil
            let operation: SiloOperation<Int>? = try? scheduler.start(
                .createLun, callback: callback, events: withCallback ? nil : channel,
                placement: index.isMultiple(of: 2) ? .inline : .worker
            ) { driver in
                if index % 5 == 0 {
                    // Completes later, from another thread.
                    DispatchQueue.global().async {
                        if driver.isCancelled { driver.fail(driver.cancellationError) } else { driver.succeed(index) }
                    }
                } else {
                    driver.reportProgress(percent: index % 100)
                    driver.succeed(index)
                }
            }
            guard let operation else {
                Issue.record("start refused at \(index)")
                if withCallback { allCallbacks.leave() }
                return
            }
            operations.withLock { $0.append(operation) }
            if index % 7 == 0 { try? operation.cancel() }
            _ = operation.status
        }

        let all = operations.withLock { $0 }
        #expect(all.count == count)
        let outcomes = SiloMutex<(succeeded: Int, cancelled: Int, other: Int)>((0, 0, 0))
        DispatchQueue.concurrentPerform(iterations: all.count) { index in
            let operation = all[index]
            do throws(SiloError) {
                let value = try operation.wait(timeout: .seconds(60))
                let again = try operation.wait()
                if value != again { Issue.record("two waits disagree") }
                outcomes.withLock { $0.succeeded += 1 }
            } catch {
                outcomes.withLock { error.code == .operationCancelled ? ($0.cancelled += 1) : ($0.other += 1) }
            }
        }
        let totals = outcomes.withLock { $0 }
        #expect(totals.other == 0)
        #expect(totals.succeeded + totals.cancelled == count)
        #expect(allCallbacks.wait(timeout: .now() + 60) == .success)
        #expect(callbacks.count == count - count / 4)
        #expect(Set(callbacks.values).count == callbacks.count, "every callback runs exactly once")
        #expect(eventually { events.value == count / 4 })
        #expect(eventually { scheduler.load == (running: 0, queued: 0) })
        channel.close()
    }

    @Test("Stress: waits with timeouts racing completions always see one consistent result")
    func timedWaitsRaceCompletion() throws {
        let scheduler = OperationScheduler(limits: .init(maxRunning: 64, maxQueued: 10_000))
        DispatchQueue.concurrentPerform(iterations: 2000) { index in
            let operation: SiloOperation<Int>? = try? scheduler.start(.start) { driver in
                driver.succeed(index)
            }
            guard let operation else {
                Issue.record("start refused at \(index)")
                return
            }
            var seen: Int?
            while seen == nil {
                do throws(SiloError) {
                    seen = try operation.wait(timeout: .microseconds(Int64(index % 50)))
                } catch {
                    if error.code != .operationTimeout { Issue.record("unexpected \(error)") ; return }
                }
            }
            #expect(seen == index)
        }
        #expect(eventually { scheduler.load == (running: 0, queued: 0) })
    }

    @Test("Stress: concurrent awaits and task cancellation")
    func concurrentAwaits() async throws {
        let scheduler = OperationScheduler(limits: .init(maxRunning: 32, maxQueued: 10_000))
        // Every tenth operation ends only when cancelled, and its awaiting task is cancelled: the
        // task's cancellation must reach the operation, or that await never ends.
        var tasks: [(index: Int, task: Task<Int, any Error>)] = []
        for index in 0..<1000 {
            let operation: SiloOperation<Int> = try scheduler.start(.getProperties) { driver in
                if index % 10 == 0 {
                    driver.onCancel { driver.fail(driver.cancellationError) }
                } else {
                    driver.succeed(index)
                }
            }
            tasks.append((index, Task { try await operation.value }))
        }
        for (index, task) in tasks where index % 10 == 0 { task.cancel() }
        var sum = 0
        var cancelled = 0
        for (index, task) in tasks {
            do {
                sum += try await task.value
            } catch {
                #expect(index % 10 == 0 && (error as? SiloError)?.code == .operationCancelled, "\(index): \(error)")
                cancelled += 1
            }
        }
        #expect(sum == (0..<1000).filter { $0 % 10 != 0 }.reduce(0, +))
        #expect(cancelled == 100)
    }
}
