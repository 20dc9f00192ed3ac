#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Takes `operation` (`LOCK_EX` or `LOCK_SH`) on `fd`, trying again every millisecond for at most
/// `milliseconds`: a lock another program keeps for long makes the caller fail with something to
/// say, instead of waiting behind it for ever.
/// - Returns: 0 once the lock is held, `EWOULDBLOCK` when the time ran out, or the errno of a
///   failure that waiting cannot mend.
package func lockFile(_ fd: Int32, _ operation: Int32, waitingAtMost milliseconds: Int) -> Int32 {
    for _ in 0..<max(milliseconds, 1) {
        if flock(fd, operation | LOCK_NB) == 0 { return 0 }
        guard errno == EWOULDBLOCK || errno == EINTR else { return errno }
        usleep(1000)
    }
    return EWOULDBLOCK
}
