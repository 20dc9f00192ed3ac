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
    /// Read byte by byte: splitting the line into strings cost each create 0.2M instructions.
    static func startTime(of pid: Int32) -> UInt64? {
        guard let stat = readSmallFile("/proc/\(pid)/stat") else { return nil }
        let bytes = Array(stat.utf8)
        guard let close = bytes.lastIndex(of: UInt8(ascii: ")")) else { return nil }
        // ") S ..." : the space after the parenthesis starts field 3.
        var field = 2
        var value: UInt64?
        for byte in bytes[(close + 1)...] {
            if byte == UInt8(ascii: " ") {
                if field == 22 { break }
                field += 1
            } else if field == 22 {
                guard (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte) else { return nil }
                let (shifted, overflow) = (value ?? 0).multipliedReportingOverflow(by: 10)
                guard !overflow else { return nil }
                value = shifted + UInt64(byte - UInt8(ascii: "0"))
            }
        }
        return field == 22 ? value : nil
    }
}
