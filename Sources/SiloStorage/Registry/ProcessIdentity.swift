import Glibc

/// A process identity that survives pid reuse: the pid and its start time.
enum ProcessIdentity {
    static func current(operation: String) -> LunRecord.Owner {
        let pid = getpid()
        return LunRecord.Owner(pid: pid, startTime: startTime(of: pid) ?? 0, operation: operation, pidNamespace: pidNamespace)
    }

    /// Whether the owner still runs. One in another pid namespace (a container sharing the state
    /// directory, or the host seen from one) cannot be looked up by its pid here: it counts as
    /// alive, so nothing it is doing is taken for a dead call's and rolled back under it.
    static func isAlive(_ owner: LunRecord.Owner) -> Bool {
        if isForeign(owner) { return true }
        guard let start = startTime(of: owner.pid) else { return false }
        return start == owner.startTime
    }

    /// Whether the owner's pid belongs to another pid namespace than this process's.
    static func isForeign(_ owner: LunRecord.Owner) -> Bool {
        guard let theirs = owner.pidNamespace, let ours = pidNamespace else { return false }
        return theirs != ours
    }

    /// This process's pid namespace, by its inode (it never changes for a process).
    static let pidNamespace: UInt64? = {
        var info = stat()
        return stat("/proc/self/ns/pid", &info) == 0 ? UInt64(info.st_ino) : nil
    }()

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
