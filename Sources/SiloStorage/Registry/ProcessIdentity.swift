import Glibc
import Synchronization
import SiloOperations

/// A process identity that survives pid reuse: the pid and its start time.
enum ProcessIdentity {
    /// This process, as the /proc it reads shows it: its pid there (`/proc/self`, which is
    /// getpid() unless /proc is another pid namespace's, as under `unshare --pid` without a /proc
    /// of its own), its start time, and that /proc's pid namespace. Anyone reading the same /proc
    /// looks it up the same way.
    ///
    /// Throws when this process cannot read its own start time (no descriptor left, a /proc it may
    /// not read): an owner written without it would look dead to everyone, who would roll back the
    /// call it marks while it runs.
    static func current(operation: String) throws(SiloError) -> LunRecord.Owner {
        guard case .running(let start) = lookUp(procPID) else {
            throw SiloError(.systemNotConfiguredForOperation,
                            "cannot read this process's start time from /proc/\(procPID)/stat (\(String(cString: strerror(errno)))), which marks the \(operation) as its own")
        }
        return LunRecord.Owner(pid: procPID, startTime: start, operation: operation, pidNamespace: pidNamespace, boot: bootID)
    }

    /// This boot of the kernel: a UUID made at each boot. Nil where it cannot be read; a read that
    /// failed (no descriptor left) is tried again next time, not kept for the process's life.
    static var bootID: String? {
        if let known = knownBootID.withLock({ $0 }) { return known }
        let read = readSmallFile("/proc/sys/kernel/random/boot_id").flatMap { $0.count == 36 ? $0 : nil }
        if let read { knownBootID.withLock { $0 = read } }
        return read
    }
    private static let knownBootID = Mutex<String?>(nil)

    /// Whether the owner still runs. One of another pid namespace (a container sharing the state
    /// directory, or the host seen from one) cannot be looked up by its pid here. From the
    /// initial pid namespace, which sees every process, it runs while its namespace does (a
    /// container gone, or a reboot, ends it); from any other it counts as alive, so nothing it
    /// may be doing is rolled back under it.
    static func isAlive(_ owner: LunRecord.Owner) -> Bool {
        // Pid 0: a mark its own change gave up (`LunRegistry.abandonMark`), in any namespace.
        if owner.pid <= 0 { return false }
        // Written before this boot: whatever process has its pid, start time or namespace now is
        // another.
        if let boot = owner.boot, let current = bootID, boot != current { return false }
        if isForeign(owner) { return pidNamespace != initialPidNamespace || namespaceExists(owner.pidNamespace ?? 0) }
        switch lookUp(owner.pid) {
        case .running(let start): return start == owner.startTime
        case .gone: return false
        // A read that failed for another reason (no descriptor left, a /proc this process may not
        // read) tells nothing: counted alive, so nothing the owner may be doing is undone.
        case .unknown: return true
        }
    }

    /// Whether the owner's pid belongs to another pid namespace than this process's /proc.
    static func isForeign(_ owner: LunRecord.Owner) -> Bool {
        guard let theirs = owner.pidNamespace, let ours = pidNamespace else { return false }
        return theirs != ours
    }

    /// The pid /proc gives this process (`/proc/self`).
    static let procPID: Int32 = {
        var buffer = [CChar](repeating: 0, count: 32)
        let count = readlink("/proc/self", &buffer, buffer.count - 1)
        guard count > 0 else { return getpid() }
        return Int32(String(decoding: buffer[0..<count].map { UInt8(bitPattern: $0) }, as: UTF8.self)) ?? getpid()
    }()

    /// The pid namespace of the /proc this process reads, by inode: its own when /proc gives it
    /// its own pid. Nil when /proc is an ancestor namespace's (`unshare --pid` without a /proc of
    /// its own), whose inode it cannot name: its pid is then the ancestor's, looked up as anyone's
    /// of that /proc is.
    static let pidNamespace: UInt64? = procPID == getpid() ? namespaceInode("/proc/self/ns/pid") : nil

    /// The kernel's fixed inode of the initial pid namespace (PROC_PID_INIT_INO).
    static let initialPidNamespace: UInt64 = 0xEFFF_FFFC

    private static func namespaceInode(_ path: String) -> UInt64? {
        var info = stat()
        return stat(path, &info) == 0 ? UInt64(info.st_ino) : nil
    }

    /// Whether any process /proc shows is in the pid namespace with this inode.
    static func namespaceExists(_ inode: UInt64) -> Bool {
        directoryEntries("/proc").contains { entry in
            entry.first?.isNumber == true && namespaceInode("/proc/" + entry + "/ns/pid") == inode
        }
    }

    /// What /proc says of a pid: running since a start time, gone, or nothing it could read.
    enum Lookup: Equatable {
        case running(UInt64)
        case gone
        case unknown
    }

    /// Field 22 of /proc/<pid>/stat (after the parenthesised command name, which may hold spaces),
    /// the process's start time; gone for a process that has exited (a zombie) as for one that is
    /// not there (ENOENT, ESRCH); unknown when the file cannot be opened or read for any other
    /// reason, or does not read as a stat line.
    static func lookUp(_ pid: Int32) -> Lookup {
        let fd = open("/proc/\(pid)/stat", O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return errno == ENOENT || errno == ESRCH ? .gone : .unknown }
        defer { close(fd) }
        var buffer = [UInt8](repeating: 0, count: 1024)
        var count = 0
        while count < buffer.count {
            let got = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress! + count, $0.count - count) }
            if got < 0, errno == EINTR { continue }
            if got < 0 { return errno == ESRCH ? .gone : .unknown }
            if got == 0 { break }
            count += got
        }
        return parse(buffer[0..<count])
    }

    /// A stat line's start time; gone for a process that has exited; unknown for what is no stat
    /// line. Read byte by byte: splitting the line into strings cost each create 0.2M instructions.
    static func parse(_ bytes: ArraySlice<UInt8>) -> Lookup {
        guard let close = bytes.lastIndex(of: UInt8(ascii: ")")) else { return .unknown }
        // ") S ..." : the space after the parenthesis starts field 3.
        var field = 2
        var value: UInt64?
        for byte in bytes[(close + 1)...] {
            if byte == UInt8(ascii: " ") {
                if field == 22 { break }
                field += 1
            } else if field == 3, byte == UInt8(ascii: "Z") || byte == UInt8(ascii: "X") {
                return .gone  // exited, not yet reaped: as good as gone (a killed owner's parent may be slow to reap it)
            } else if field == 22 {
                guard (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte) else { return .unknown }
                let (shifted, overflow) = (value ?? 0).multipliedReportingOverflow(by: 10)
                guard !overflow else { return .unknown }
                value = shifted + UInt64(byte - UInt8(ascii: "0"))
            }
        }
        return field == 22 ? value.map(Lookup.running) ?? .unknown : .unknown
    }

    /// The start time of a running process, nil for any other answer.
    static func startTime(of pid: Int32) -> UInt64? {
        if case .running(let start) = lookUp(pid) { return start }
        return nil
    }
}
