import Glibc
import Synchronization
import SiloOperations

/// HCS compute system states (C4).
public enum ComputeSystemState: String, Sendable, Codable, CaseIterable {
    case created = "Created", running = "Running", paused = "Paused", stopped = "Stopped"
}

/// How a system stopped, as HCS's SystemExited event says it.
public enum SystemExitType: String, Sendable, Codable {
    case graceful = "Graceful", forced = "Forced", unexpected = "UnexpectedExit"
}

/// One system's state on disk: `<runtime>/systems/<id>/state.json`, written atomically.
struct SystemRecord: Codable, Sendable, Equatable {
    var id: String
    var owner: String?
    var state: ComputeSystemState
    var document: String
    var initPID: Int32?
    /// Field 22 of /proc/<pid>/stat: tells init from a later process with the same pid.
    var initStartTime: UInt64?
    var exitType: SystemExitType?
    var createdAt: Int64
    var shouldTerminateOnLastHandleClosed: Bool
    /// LUNs attached now (C12).
    var attachments: [Attachment]? = nil
    /// LUNs this system was given raw since it started: their leases stay with it until it stops,
    /// detached or not (see ``DeviceGrant``).
    var rawLeases: [String]? = nil
    /// Limits changed by modify since the document.
    var memoryLimit: UInt64? = nil
    var processorCount: Int? = nil
    var processorLimit: Int? = nil
    /// Where the system's cgroups are in each hierarchy, when not the default `silo`
    /// (``CgroupLayout/parent``).
    var cgroupParent: String? = nil
}

/// A LUN attached to a system, as its properties show it (C12).
public struct Attachment: Sendable, Codable, Hashable {
    public var lun: String
    public var devicePath: String
    public var deviceNumber: String
    public var mountPath: String?
    public var readOnly: Bool
    /// `controller/index` in the document's Devices.Scsi, when attached there or by a modify request.
    public var location: String? = nil

    var device: BlockDevice {
        BlockDevice(devicePath: devicePath, deviceNumber: deviceNumber, mountPath: mountPath, readOnly: readOnly, lun: lun)
    }
}

struct SystemStore: Sendable {
    let configuration: ComputeConfiguration

    var systems: String { configuration.runtimeDirectory + "/systems" }
    func directory(_ id: String) -> String { systems + "/" + id }
    func root(_ id: String) -> String { directory(id) + "/root" }

    /// Makes the system's folder, which reserves its id (an existing one means the id is taken,
    /// C3), and takes the system's lock in it, which the caller holds until its handle is open: a
    /// folder without a record whose lock is free is a create that died (or a removal that raced
    /// an open), which ``ComputeService/reenumerate()`` removes. `parent`, the cgroup parent the
    /// create uses where it is not the default, is written in the lock for that sweep.
    /// Returns the lock's descriptor, which the caller closes.
    @discardableResult
    func reserve(_ id: String, parent: String? = nil) throws(SiloError) -> Int32 {
        try configuration.checkStateDirectory()
        var path = ""
        for component in systems.split(separator: "/") {
            path += "/" + String(component)
            if mkdir(path, 0o755) != 0, errno != EEXIST { throw SiloError.system("mkdir", errno: errno, path: path) }
        }
        guard mkdir(directory(id), 0o700) == 0 else {
            if errno == EEXIST {
                throw SiloError(.systemAlreadyExists, "a compute system with id '\(id)' already exists", field: "id", value: id)
            }
            throw SiloError.system("mkdir", errno: errno, path: directory(id))
        }
        let lockPath = directory(id) + "/lock"
        let lock = open(lockPath, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard lock >= 0, flock(lock, LOCK_EX) == 0 else {
            let error = SiloError.system("open", errno: errno, path: lockPath)
            if lock >= 0 { close(lock) }
            rmdir(directory(id))
            throw error
        }
        // Still the folder's lock: a sweep that took it between the open and the flock removed
        // the folder, and the id may be another create's by now. Nothing of it is this call's.
        guard holds(lock, id) else {
            close(lock)
            throw SiloError(.systemAlreadyExists, "the folder of compute system '\(id)' was removed while it was made; try again",
                            field: "id", value: id)
        }
        if let parent { _ = Array(parent.utf8).withUnsafeBytes { pwrite(lock, $0.baseAddress, $0.count, 0) } }
        return lock
    }

    /// Whether `lock` is the lock file in system `id`'s folder now (same file, still linked).
    func holds(_ lock: Int32, _ id: String) -> Bool {
        var held = stat(), named = stat()
        return fstat(lock, &held) == 0 && stat(directory(id) + "/lock", &named) == 0
            && held.st_dev == named.st_dev && held.st_ino == named.st_ino
    }

    func load(_ id: String) throws(SiloError) -> SystemRecord {
        // Read with the shared reader (EINTR retried; an 8 KiB buffer where a zeroed 64 KiB one
        // faulted in 16 pages on each of a process start's reads).
        guard let bytes = readFileBytes(directory(id) + "/state.json") else {
            throw SiloError(.systemNotFound, "no compute system with id '\(id)'", field: "id", value: id)
        }
        do {
            return try SystemRecord(json: String(decoding: bytes, as: UTF8.self))
        } catch {
            throw SiloError(.invalidJSON, "state of compute system '\(id)' is damaged: \(error.message)",
                            field: "id", value: id)
        }
    }

    func save(_ record: SystemRecord) throws(SiloError) {
        let final = directory(record.id) + "/state.json"
        let temporary = final + ".\(getpid()).tmp"
        let fd = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw SiloError.system("open", errno: errno, path: temporary) }
        let bytes = Array(record.json.utf8)
        // Every byte, through short writes and EINTR; a failure names the call that failed.
        var offset = 0
        var failed: (call: String, errno: Int32)?
        while offset < bytes.count, failed == nil {
            let written = bytes.withUnsafeBytes { write(fd, $0.baseAddress! + offset, $0.count - offset) }
            if written > 0 { offset += written } else if written < 0, errno == EINTR { continue } else {
                failed = ("write", written < 0 ? errno : EIO)
            }
        }
        close(fd)
        if failed == nil, rename(temporary, final) != 0 { failed = ("rename", errno) }
        if let failed {
            unlink(temporary)
            throw SiloError.system(failed.call, errno: failed.errno, path: final)
        }
    }

    /// Serialises state changes of one system across threads and processes.
    func locked<T>(_ id: String, _ body: () throws(SiloError) -> T) throws(SiloError) -> T {
        let path = directory(id) + "/lock"
        let fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw SiloError(.systemNotFound, "no compute system with id '\(id)'", field: "id", value: id) }
        defer { close(fd) }
        flock(fd, LOCK_EX)
        return try body()
    }

    /// Runs `body` under the system's lock if no call holds it now; false (and `body` not run) if
    /// one does, or the system has no folder.
    func lockedIfFree(_ id: String, _ body: () -> Void) -> Bool {
        let fd = open(directory(id) + "/lock", O_RDWR | O_CLOEXEC)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        guard flock(fd, LOCK_EX | LOCK_NB) == 0 else { return false }
        body()
        return true
    }

    /// Whether no handle holds the system (its handles file's lock is free, or was never taken) and
    /// no call is under way on it (its lock is free): probed and let go at once.
    func isAbandoned(_ id: String) -> Bool {
        for name in ["handles", "lock"] {
            let fd = open(directory(id) + "/" + name, O_RDONLY | O_CLOEXEC)
            if fd < 0 {
                if errno == ENOENT { continue }
                return false
            }
            defer { close(fd) }
            guard flock(fd, LOCK_EX | LOCK_NB) == 0 else { return false }
        }
        return true
    }

    func remove(_ id: String) {
        unlink(directory(id) + "/state.json")
        unlink(directory(id) + "/lock")
        unlink(directory(id) + "/handles")
        unlink(directory(id) + "/agent.sock")
        // A record's temporary copy a killed writer left would keep the folder, and the id, taken.
        for name in Self.entries(directory(id)) where name.hasPrefix("state.json.") && name.hasSuffix(".tmp") {
            unlink(directory(id) + "/" + name)
        }
        rmdir(root(id))
        rmdir(directory(id))
    }

    func ids() -> [String] {
        Self.entries(systems).filter { !$0.hasPrefix(".") }.sorted()
    }

    /// The names in folder `path` but `.` and `..`; none when it cannot be read.
    static func entries(_ path: String) -> [String] {
        guard let handle = opendir(path) else { return [] }
        defer { closedir(handle) }
        var names: [String] = []
        while let entry = readdir(handle) {
            let name = withUnsafePointer(to: entry.pointee.d_name) { $0.withMemoryRebound(to: CChar.self, capacity: 256) { String(cString: $0) } }
            if name != ".", name != ".." { names.append(name) }
        }
        return names
    }
}

/// Nil for a process that is gone, or a zombie (dead, not yet reaped: not a live init).
func processStartTime(_ pid: Int32) -> UInt64? {
    processStat(pid)?.startTime
}

/// Whether `pid` is still the process that started at `startTime` and is not on its way out: a
/// process in its exit (the kernel's PF_EXITING, in /proc's flags) has closed its sockets before
/// it becomes a zombie, tearing down its namespaces meanwhile.
func processIsLive(_ pid: Int32, startedAt startTime: UInt64) -> Bool {
    guard let stat = processStat(pid) else { return false }
    return stat.startTime == startTime && stat.flags & 0x4 == 0  // PF_EXITING
}

/// A live process's flags and start time from /proc/<pid>/stat; nil when it is gone or a zombie.
private func processStat(_ pid: Int32) -> (flags: UInt64, startTime: UInt64)? {
    guard let stat = readText("/proc/\(pid)/stat"), let close = stat.lastIndex(of: ")") else { return nil }
    let fields = stat[stat.index(after: close)...].split(separator: " ")
    guard fields.count > 19, fields[0] != "Z", fields[0] != "X", let flags = UInt64(fields[6]), let start = UInt64(fields[19]) else {
        return nil
    }
    return (flags, start)
}

/// Inits this process started: each is this process's child until reaped. A system stopped by
/// another process, or one that ended by itself, would stay a zombie here for as long as this
/// process lives; every entry to the service reaps those that are gone.
let startedInits = Mutex<Set<Int32>>([])

func reapStartedInits() {
    startedInits.withLock { pids in
        for pid in pids {
            var status: Int32 = 0
            let result = waitpid(pid, &status, WNOHANG)
            if result == pid || (result < 0 && errno == ECHILD) { pids.remove(pid) }
        }
    }
}

func nowSeconds() -> Int64 {
    var spec = timespec()
    clock_gettime(CLOCK_REALTIME, &spec)
    return Int64(spec.tv_sec)
}

extension Attachment {
    init(_ device: BlockDevice) {
        self.init(lun: device.lun ?? device.devicePath, devicePath: device.devicePath, deviceNumber: device.deviceNumber,
                  mountPath: device.mountPath, readOnly: device.readOnly, location: device.location)
    }
}

/// Calls `body` with a C string for `text`, or NULL.
func withOptionalCString<T>(_ text: String?, _ body: (UnsafePointer<CChar>?) -> T) -> T {
    guard let text else { return body(nil) }
    return text.withCString { body($0) }
}
