#if SILO_TSAN
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// The lock every Silo type uses.
///
/// Normally `Synchronization.Mutex`. ThreadSanitizer cannot see that mutex on Linux: it locks with
/// raw futex calls in code TSan does not instrument, so TSan reports races on data the mutex does
/// protect (a two-thread counter behind `Mutex.withLock` is enough to show it). Test builds under
/// TSan (`scripts/test` passes `-DSILO_TSAN`) swap in this pthread mutex, which TSan intercepts,
/// with the same `withLock` API; the algorithms under test are the same.
typealias SiloMutex<Value> = PthreadMutex<Value>

final class PthreadMutex<Value>: @unchecked Sendable {
    // @unchecked: `value` is only touched between pthread_mutex_lock and pthread_mutex_unlock.
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>
    private var value: Value

    init(_ initialValue: Value) {
        mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
        mutex.initialize(to: pthread_mutex_t())
        pthread_mutex_init(mutex, nil)
        value = initialValue
    }

    deinit {
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
    }

    func withLock<Result, E: Error>(_ body: (inout Value) throws(E) -> Result) throws(E) -> Result {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body(&value)
    }
}
#else
import Synchronization

/// The lock every Silo type uses: `Synchronization.Mutex`, except under ThreadSanitizer (see the
/// `SILO_TSAN` branch of this file for why).
typealias SiloMutex<Value> = Mutex<Value>
#endif
