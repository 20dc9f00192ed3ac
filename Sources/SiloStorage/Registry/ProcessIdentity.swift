import Glibc

/// A process identity that survives pid reuse: the pid and its start time.
enum ProcessIdentity {
    static func current(operation: String) -> LunRecord.Owner {
        let pid = getpid()
        return LunRecord.Owner(pid: pid, startTime: startTime(of: pid) ?? 0, operation: operation)
    }

    static func isAlive(_ owner: LunRecord.Owner) -> Bool {
        guard let start = startTime(of: owner.pid) else { return false }
        return start == owner.startTime
    }

    /// Field 22 of /proc/<pid>/stat (after the parenthesised command name, which may hold spaces).
    static func startTime(of pid: Int32) -> UInt64? {
        guard let stat = readSmallFile("/proc/\(pid)/stat"), let close = stat.lastIndex(of: ")") else { return nil }
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        // fields[0] is field 3 (state); field 22 is fields[19].
        guard fields.count > 19 else { return nil }
        return UInt64(fields[19])
    }
}
