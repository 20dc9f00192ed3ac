import Dispatch
import Synchronization

/// A counting semaphore that polls an atomic count for a short while before it sleeps.
///
/// `DispatchSemaphore.wait(timeout: .now())` is no cheap poll on Linux (about 80 microseconds a
/// call measured here), and a thread woken from the kernel takes 10 to 30 microseconds to run, so
/// the pool threads poll this count instead and fall back to the kernel only when nothing comes.
///
/// `count` is the number of signals not yet taken; when negative, its magnitude is the number of
/// threads asleep (or about to sleep) on `sleepers`, each owed one `sleepers.signal()`.
final class SpinningSemaphore: Sendable {
    private let count = Atomic<Int>(0)
    private let sleepers = DispatchSemaphore(value: 0)
    private let spin: Duration

    init(spin: Duration) {
        self.spin = spin
    }

    func signal() {
        if count.add(1, ordering: .releasing).oldValue < 0 {
            sleepers.signal()
        }
    }

    /// Takes one signal. False if `timeout` passed first.
    func wait(timeout: Duration) -> Bool {
        if tryTake() { return true }
        let clock = ContinuousClock()
        let spinUntil = clock.now + spin
        while clock.now < spinUntil {
            if tryTake() { return true }
        }
        // Register as a sleeper: the count goes negative by one.
        if count.subtract(1, ordering: .acquiring).oldValue > 0 { return true }
        let deadline = DispatchTime.now() + .nanoseconds(Int(timeout.nanoseconds))
        if sleepers.wait(timeout: deadline) == .success { return true }
        // Timed out: withdraw, unless a signal arrived meanwhile and is owed to us.
        var current = count.load(ordering: .relaxed)
        while current < 0 {
            let (exchanged, original) = count.compareExchange(
                expected: current, desired: current + 1, ordering: .acquiring
            )
            if exchanged { return false }
            current = original
        }
        // A signaller saw us asleep and will signal `sleepers`: take that signal.
        sleepers.wait()
        return true
    }

    private func tryTake() -> Bool {
        var current = count.load(ordering: .relaxed)
        while current > 0 {
            let (exchanged, original) = count.compareExchange(
                expected: current, desired: current - 1, ordering: .acquiring
            )
            if exchanged { return true }
            current = original
        }
        return false
    }
}
