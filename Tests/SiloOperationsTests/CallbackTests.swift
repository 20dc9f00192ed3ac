import Dispatch
import Synchronization
import Testing

@testable import SiloOperations

@Suite("Completion callbacks")
struct CallbackTests {
    let scheduler = OperationScheduler()

    @Test("O11 a callback runs exactly once, off the caller's thread, never before the call returns")
    func callbackAfterReturn() throws {
        let runs = Recorder<UInt>()
        let done = Signal()
        let callerThread = currentThread
        let ranDuringCall = Atomic<Bool>(false)
        let callbackRan = Atomic<Bool>(false)
        let operation: SiloOperation<Int> = try scheduler.start(
            .createLun,
            callback: .short { _ in
                callbackRan.store(true, ordering: .releasing)
                runs.append(currentThread)
                done.fire()
            },
            placement: .inline
        ) { driver in
            // Completes inside the call, then lingers: the callback must wait for the call to return.
            driver.succeed(5)
            usleepMilliseconds(50)
            ranDuringCall.store(callbackRan.load(ordering: .acquiring), ordering: .relaxed)
        }
        #expect(try operation.wait() == 5)
        #expect(done.wait())
        usleepMilliseconds(50)
        #expect(runs.count == 1)
        #expect(runs.values.first != callerThread)
        #expect(ranDuringCall.load(ordering: .relaxed) == false)
    }

    @Test("O1 O11 a scheduler that runs on the caller: worker work runs inside the call, the call returns it done, its callback still comes after")
    func runsOnCaller() throws {
        let onCaller = OperationScheduler(runsOnCaller: true)
        let callerThread = currentThread
        let workThread = Recorder<UInt>()
        let callbackThread = Recorder<UInt>()
        let callbackRan = Atomic<Bool>(false)
        let ranDuringCall = Atomic<Bool>(false)
        let done = Signal()
        // Placed on a worker by default; this scheduler runs it here, inside the call.
        let operation: SiloOperation<Int> = try onCaller.start(
            .createLun,
            callback: .short { _ in
                callbackRan.store(true, ordering: .releasing)
                callbackThread.append(currentThread)
                done.fire()
            }
        ) { driver in
            workThread.append(currentThread)
            // Completes inside the call, then blocks: the callback must wait for the call to return.
            driver.succeed(7)
            usleepMilliseconds(50)
            ranDuringCall.store(callbackRan.load(ordering: .acquiring), ordering: .relaxed)
        }
        #expect(workThread.values == [callerThread])
        #expect(operation.status.isPending == false, "done when the call returns: \(operation.status)")
        #expect(try operation.wait(timeout: .seconds(0)) == 7)
        #expect(done.wait())
        let during = ranDuringCall.load(ordering: .relaxed)
        #expect(!during, "the callback ran before the call returned")
        #expect(callbackThread.values.first != callerThread)
        // The shared scheduler still hands the same work to a worker thread.
        let elsewhere = Recorder<UInt>()
        let onWorker: SiloOperation<Int> = try scheduler.run(.createLun) { _ in
            elsewhere.append(currentThread)
            return 8
        }
        #expect(try onWorker.wait(timeout: .seconds(10)) == 8)
        #expect(elsewhere.values.first != callerThread)
    }

    @Test("O11 no callback runs when the call throws")
    func noCallbackWhenCallThrows() throws {
        let tight = OperationScheduler(limits: .init(maxRunning: 1, maxQueued: 0))
        let release = Signal()
        let holder = try blockedOperation(on: tight, output: 0, release: release)
        let ran = Counter()
        let refused = #expect(throws: SiloError.self) {
            _ = try tight.start(.start, callback: .long { (_: SiloOperation<Int>) in ran.increment() }) {
                $0.succeed(1)
            }
        }
        #expect(refused?.code == .tooManyOperations, "\(String(describing: refused))")
        release.fire()
        _ = try holder.wait()
        usleepMilliseconds(50)
        #expect(ran.value == 0)
    }

    @Test("O12 a callback may release the operation, read its result and start another operation")
    func callbackMayReenter() throws {
        weak var weakOperation: SiloOperation<Int>?
        let results = Recorder<Int>()
        let done = Signal()
        let scheduler = self.scheduler
        do {
            let operation: SiloOperation<Int> = try scheduler.start(.createComputeSystem, callback: .long {
                operation in
                results.append((try? operation.wait()) ?? -1)
                results.append(operation.resultDocument == "1" ? 1 : -1)
                // A new operation from inside the callback, waited for right here.
                let next: SiloOperation<Int>? = try? scheduler.run(.start) { _ in 2 }
                results.append((try? next?.wait(timeout: .seconds(10))) ?? -1)
                // And one with a callback of its own.
                _ = try? scheduler.start(.getProperties, callback: .short { (inner: SiloOperation<Int>) in
                    results.append((try? inner.wait()) ?? -1)
                    done.fire()
                }) { $0.succeed(3) }
            }) { $0.succeed(1) }
            weakOperation = operation
        }
        #expect(done.wait())
        #expect(results.values == [1, 1, 2, 3])
        #expect(eventually { weakOperation == nil }, "the operation must be freed once its callback has run")
    }

    @Test("O12 a callback that holds its own operation (to close it when called) does not keep it alive once it has run")
    func callbackHoldingItsOperation() throws {
        weak var weakOperation: SiloOperation<Int>?
        let called = Signal()
        do {
            let holder = Locked<SiloOperation<Int>?>(nil)
            let release = Signal()
            let operation: SiloOperation<Int> = try scheduler.start(.createLun, callback: .short { _ in
                // The usual shape: the callback reaches its operation through what it captured.
                _ = holder.value?.resultDocument
                called.fire()
            }) { driver in
                _ = release.wait()
                driver.succeed(1)
            }
            holder.with { $0 = operation }  // operation -> callback -> holder -> operation
            weakOperation = operation
            release.fire()
        }
        #expect(called.wait())
        #expect(eventually { weakOperation == nil }, "freed once its callback has run: the callback goes with its call")
    }

    @Test("O13 short callbacks run in order on Silo's one completion thread")
    func shortCallbacksOnCompletionThread() throws {
        let threads = Recorder<UInt>()
        let order = Recorder<Int>()
        let all = DispatchGroup()
        for index in 0..<200 {
            all.enter()
            _ = try scheduler.start(.start, callback: .short { (operation: SiloOperation<Int>) in
                threads.append(currentThread)
                order.append((try? operation.wait()) ?? -1)
                all.leave()
            }, placement: .inline) { $0.succeed(index) }
        }
        #expect(all.wait(timeout: .now() + 10) == .success)
        #expect(Set(threads.values).count == 1)
        #expect(threads.values.first != currentThread, "on the completion thread, not the caller's")
        #expect(order.values == Array(0..<200))
    }

    @Test("O13 a blocking long callback delays neither other completions nor other long callbacks")
    func longCallbacksDoNotBlockOthers() throws {
        // Eight long callbacks that can only finish once all eight run at the same time, and a
        // short callback that must run while they all block.
        let gate = Signal()
        let arrived = Counter()
        let finished = Recorder<Bool>()
        let all = DispatchGroup()
        for _ in 0..<8 {
            all.enter()
            _ = try scheduler.start(.shutdown, callback: .long { (_: SiloOperation<Int>) in
                if arrived.increment() == 8 { for _ in 0..<8 { gate.fire() } }
                finished.append(gate.wait(seconds: 10))
                all.leave()
            }, placement: .inline) { $0.succeed(0) }
        }
        let shortRan = Signal()
        _ = try scheduler.start(.start, callback: .short { (_: SiloOperation<Int>) in shortRan.fire() },
                                placement: .inline) { $0.succeed(1) }
        #expect(shortRan.wait(), "a short callback must not wait behind blocking long callbacks")
        #expect(all.wait(timeout: .now() + 20) == .success)
        #expect(finished.values == Array(repeating: true, count: 8))
    }
}
