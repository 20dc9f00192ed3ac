import Dispatch
import Synchronization
import Testing

@testable import SiloOperations

/// A one-shot signal. Waits are bounded so that a broken rule fails its test instead of hanging it.
final class Signal: Sendable {
    private let semaphore = DispatchSemaphore(value: 0)

    func fire() { semaphore.signal() }

    /// True if fired within `seconds`.
    func wait(seconds: Double = 10) -> Bool {
        semaphore.wait(timeout: .now() + .milliseconds(Int(seconds * 1000))) == .success
    }
}

/// Values appended from any thread, read in order.
final class Recorder<Value: Sendable>: Sendable {
    private let storage = SiloMutex<[Value]>([])
    func append(_ value: Value) { storage.withLock { $0.append(value) } }
    var values: [Value] { storage.withLock { $0 } }
    var count: Int { storage.withLock { $0.count } }
}

/// One value, read and changed under a lock from any thread.
final class Locked<Value: Sendable>: Sendable {
    private let storage: SiloMutex<Value>
    init(_ value: Value) { storage = SiloMutex(value) }
    func with<Result: Sendable>(_ body: @Sendable (inout Value) -> Result) -> Result { storage.withLock { body(&$0) } }
    var value: Value { storage.withLock { $0 } }
}

final class Counter: Sendable {
    private let storage = Atomic<Int>(0)
    @discardableResult
    func increment() -> Int { storage.add(1, ordering: .relaxed).newValue }
    var value: Int { storage.load(ordering: .relaxed) }
}

var currentThread: UInt { PlatformThread.current }

/// Polls `condition` until it holds or `seconds` pass.
func eventually(seconds: Double = 10, _ condition: () -> Bool) -> Bool {
    let deadline = ContinuousClock.now + .milliseconds(Int(seconds * 1000))
    while ContinuousClock.now < deadline {
        if condition() { return true }
        usleepMilliseconds(1)
    }
    return condition()
}

func usleepMilliseconds(_ milliseconds: Int) {
    Thread_sleep(milliseconds)
}

private func Thread_sleep(_ milliseconds: Int) {
    let semaphore = DispatchSemaphore(value: 0)
    _ = semaphore.wait(timeout: .now() + .milliseconds(milliseconds))
}

/// An operation whose work blocks until `release` fires, then succeeds with `output`.
func blockedOperation<Output: Sendable>(
    on scheduler: OperationScheduler,
    output: Output,
    release: Signal,
    started: Signal? = nil,
    callback: OperationCallback<Output>? = nil,
    events: EventChannel? = nil
) throws -> SiloOperation<Output> {
    try scheduler.start(.createLun, callback: callback, events: events) { driver in
        started?.fire()
        _ = release.wait(seconds: 30)
        driver.succeed(output)
    }
}

extension SiloError.Code {
    var hex: String { "0x" + String(rawValue, radix: 16, uppercase: true) }
}
