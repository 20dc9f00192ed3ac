import Glibc
import SiloOperations

/// The registry: one JSON record per LUN under `<state>/luns`, each written atomically (temp
/// file, fsync, rename, fsync of the directory), changes serialised across processes and threads
/// with `flock` on `<state>/lock`.
struct LunRegistry: Sendable {
    let configuration: StorageConfiguration

    var directory: String { configuration.registryDirectory }

    /// Creates the state directory layout; checks it is usable. The root folder is refused: its
    /// stable names would be made in `/dev` itself (`<state>/dev`), over the host's own nodes.
    func prepare() throws(SiloError) {
        guard configuration.stateDirectory != "/" else {
            throw SiloError.invalidArgument(field: "state directory", value: configuration.stateDirectory,
                                            reason: "the root folder cannot be a state directory; give a folder of its own, such as /var/lib/silo")
        }
        for path in [configuration.stateDirectory, configuration.registryDirectory, configuration.poolDirectory] {
            try makeDirectory(path)
        }
        if StorageProvider.poolOwner(of: configuration.poolDirectory) == nil {
            try StorageProvider.markPool(configuration.poolDirectory, stateDirectory: configuration.stateDirectory)
        }
    }

    /// Runs `body` holding the registry lock. The lock file's open is the check that the state
    /// directory is there; only when it fails does `prepare` make the folders (or explain why it
    /// cannot), instead of checking all three at every lock.
    ///
    /// - Parameter missing: for a call that only changes what exists (a delete, an extend): the
    ///   error to throw, with nothing made, when the state directory has no registry yet, so a
    ///   mistyped `--state-dir` is not made into a new state directory before "no LUN" (E3).
    /// - Parameter givingUp: the wait may give up (``StorageConfiguration/lockWaitGivesUp``):
    ///   only for a call's first lock, taken before it has done anything, so a call given up has
    ///   changed nothing. Every later lock of a call waits as long as it takes.
    func locked<T>(missing: SiloError? = nil, givingUp: Bool = false, _ body: () throws(SiloError) -> T) throws(SiloError) -> T {
        let path = configuration.lockFile
        var fd = open(path, O_RDWR | O_CLOEXEC)
        if fd < 0 {
            if let missing, errno == ENOENT, !fileExists(configuration.registryDirectory) { throw missing }
            try prepare()
            fd = try syscall("open", path: path) { open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o600) }
        }
        defer { close(fd) }  // closing releases the lock
        try acquire(fd, path: path, givingUp: givingUp)
        return try body()
    }

    /// Takes the lock: at once when it is free; else by blocking, or, with the configuration's
    /// `lockWaitGivesUp` (for a lock that may give up), in sleeps from 50 µs doubling to 1 ms,
    /// asking it whether to give up.
    private func acquire(_ fd: Int32, path: String, givingUp: Bool) throws(SiloError) {
        guard givingUp, let givesUp = configuration.lockWaitGivesUp else {
            _ = try syscall("flock", path: path) { flock(fd, LOCK_EX) }
            return
        }
        var pause: UInt32 = 50
        while flock(fd, LOCK_EX | LOCK_NB) != 0 {
            guard errno == EWOULDBLOCK || errno == EINTR else { throw SiloError.system("flock", errno: errno, path: path) }
            if givesUp() {
                throw SiloError(.operationCancelled, "cancelled while waiting for \(path), which another process holds; nothing was changed")
            }
            usleep(pause)
            pause = min(pause * 2, 1000)
        }
    }

    func load(_ name: String) throws(SiloError) -> LunRecord? {
        let path = recordPath(name)
        guard let bytes = try readExistingFile(path) else { return nil }
        return try decode(bytes, path: path)
    }

    /// Every record; a damaged one throws (naming its file).
    func loadAll() throws(SiloError) -> [LunRecord] {
        var damaged: [SiloError] = []
        let records = try loadAll(damaged: &damaged)
        if let first = damaged.first { throw first }
        return records
    }

    /// Every record that decodes; what each damaged or unreadable one said goes to `damaged`
    /// (reenumerate reports them rather than stop at the first, and sweeps no orphan while there
    /// are any). A folder that cannot be listed throws: its records are not known to be none.
    func loadAll(damaged: inout [SiloError]) throws(SiloError) -> [LunRecord] {
        var records: [LunRecord] = []
        for entry in try listedEntries(directory) where entry.hasSuffix(".json") {
            let path = directory + "/" + entry
            do throws(SiloError) {
                guard let bytes = try readExistingFile(path) else { continue }
                records.append(try decode(bytes, path: path))
            } catch {
                damaged.append(error)
            }
        }
        return records.sorted { $0.name < $1.name }
    }

    /// Writes a record atomically (temp file, rename). `durable` adds the fsyncs that make it
    /// survive power loss. Intents and owner marks need not: they only have to survive the death of
    /// the process, which the page cache does, and after a reboot `reenumerate` removes what an
    /// intent would have named (orphan files; the loop devices are gone with the reboot).
    func save(_ record: LunRecord, durable: Bool = true) throws(SiloError) {
        try writeJSONAtomically(record.json, to: recordPath(record.name), temporary: temporaryPath(record.name),
                                durable: durable)
    }

    /// Makes `change` applied to `expected` the durable record of its LUN, where `expected` is the
    /// record as the caller read it while holding the LUN's owner mark (so nobody else writes it
    /// meanwhile). The new file is written and synced before the registry lock is taken; under the
    /// lock it is only checked against the stored record and renamed, and the folder is synced
    /// after it. The lock is held for microseconds instead of two fsyncs: 16 processes creating
    /// LUNs at once queued on it for 60 ms here. Should the stored record differ all the same,
    /// `change` is applied to it under the lock, the slow way; one removed meanwhile stays removed.
    func replace(_ expected: LunRecord, changing change: (inout LunRecord) -> Void) throws(SiloError) {
        var record = expected
        change(&record)
        let path = recordPath(record.name)
        let temporary = temporaryPath(record.name)
        try writeJSONFile(record.json, to: temporary, durable: true)
        do throws(SiloError) {
            try locked { () throws(SiloError) in
                guard var stored = try load(record.name) else {
                    unlink(temporary)
                    return
                }
                guard stored == expected else {
                    unlink(temporary)
                    change(&stored)
                    return try save(stored)
                }
                try syscall("rename", path: path) { rename(temporary, path) }
            }
        } catch {
            unlink(temporary)
            throw error
        }
        try syncDirectory(directory)
    }

    /// Undoes a provisioning's reservation: its record (and `file`, if given) while the record is
    /// still this provisioning's and not registered. Once "register" made the LUN ready, or the
    /// name holds another LUN's record, nothing is removed.
    func removeReservation(_ record: LunRecord, file: String?) throws(SiloError) {
        guard let stored = try load(record.name), stored.id == record.id, stored.state == .creating else { return }
        if let file { try BackingFile.remove(file) }
        try remove(record.name)
    }

    /// Removes a record, holding the registry lock; the folder's fsync that makes the removal
    /// durable comes after the lock.
    func remove(_ name: String) throws(SiloError) {
        try locked { () throws(SiloError) in try removeHoldingLock(name, durable: false) }
        try syncDirectory(directory)
    }

    // MARK: Marks

    /// What a call in progress marks a LUN with: a small file beside its record holding the
    /// calling process's identity and operation, `.<name>.deleting` for a delete and
    /// `.<name>.changing` for a change (extend, shrink, mask, online, offline). A new file, not
    /// the record rewritten: a marked copy renamed over the record was a write of the durable
    /// record that nothing made durable (after a power loss, a file system that does not order a
    /// rename after the data it renames could bring the record back empty), and on ext4 the
    /// rename wrote the new file at once and freed the old record's block (with the `discard`
    /// mount option, a synchronous discard: 0.44 ms of every delete here). Made and removed within
    /// the call, it never reaches the disk. Only needs to outlive this process.
    enum Mark: String, CaseIterable {
        case deleting, changing
    }

    /// The caller holds the registry lock.
    func placeMark(_ mark: Mark, _ name: String, owner: LunRecord.Owner) throws(SiloError) {
        let path = markPath(mark, name)
        unlink(path)  // a dead owner's (the caller checked that no live one holds it)
        let fd = try syscall("open", path: path) { open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600) }
        defer { close(fd) }
        do throws(SiloError) {
            try writeAll(fd, Array("\(owner.pid) \(owner.startTime) \(owner.operation) \(owner.pidNamespace ?? 0) \(owner.change ?? 0) \(owner.boot ?? "-")\n".utf8),
                         path: path)
        } catch {
            unlink(path)  // a part of a mark (a full disk) names no owner; none is left
            throw error
        }
    }

    /// The process that placed `mark` on LUN `name`, if the mark is there (alive or not).
    func mark(_ mark: Mark, _ name: String) -> LunRecord.Owner? {
        readSmallFile(markPath(mark, name)).flatMap { Self.owner(ofMark: mark, text: $0) }
    }

    /// A mark's text read: "pid start operation pid-namespace change boot", the last three from
    /// the versions that wrote them on (0 or "-": not known).
    private static func owner(ofMark mark: Mark, text: String) -> LunRecord.Owner? {
        let fields = text.split(separator: " ")
        guard fields.count >= 2, let pid = Int32(fields[0]), let start = UInt64(fields[1]) else { return nil }
        let operation = fields.count > 2 ? String(fields[2]) : (mark == .deleting ? "deleteLun" : "change")
        func number(_ index: Int) -> UInt64? {
            fields.count > index ? UInt64(fields[index].filter { $0 != "\n" }).flatMap { $0 == 0 ? nil : $0 } : nil
        }
        let boot = fields.count > 5 ? String(fields[5].filter { $0 != "\n" }) : "-"
        return LunRecord.Owner(pid: pid, startTime: start, operation: operation, pidNamespace: number(3), change: number(4),
                               boot: boot == "-" || boot.isEmpty ? nil : boot)
    }

    /// Makes change `change`'s mark on `name` read as a dead process's, in place: its pid
    /// overwritten with 0 and spaces, through the descriptor its token was read from, so that no
    /// mark placed since is touched; on a file system that overwrites in place, no new block is
    /// needed, as on a full one. For a change whose last record write failed: left as it was, the
    /// mark of a live process would keep every later change of the LUN off for that process's life;
    /// a dead one's is settled by the next change or reenumerate, by the LUN's file, as after a
    /// change that was killed.
    func abandonMark(_ mark: Mark, _ name: String, change: UInt64) {
        let fd = open(markPath(mark, name), O_RDWR | O_CLOEXEC)
        guard fd >= 0 else { return }
        defer { close(fd) }
        var buffer = [UInt8](repeating: 0, count: 256)
        let count = read(fd, &buffer, buffer.count)
        guard count > 0 else { return }
        let text = String(decoding: buffer[0..<count], as: UTF8.self)
        let width = text.prefix { $0 != " " }.utf8.count
        guard Self.owner(ofMark: mark, text: text)?.change == change, width > 0 else { return }
        let dead = [UInt8(ascii: "0")] + [UInt8](repeating: UInt8(ascii: " "), count: width - 1)
        _ = pwrite(fd, dead, dead.count, 0)
    }

    func removeMark(_ mark: Mark, _ name: String) {
        unlink(markPath(mark, name))
    }

    /// The names marked `mark`, for reenumerate to settle the marks of dead processes; a folder
    /// that cannot be listed throws (a live call's mark missed would leave its LUN to be settled
    /// under it).
    func markNames(_ mark: Mark) throws(SiloError) -> [String] {
        let suffix = "." + mark.rawValue
        return try listedEntries(directory, hidden: true).compactMap { entry in
            guard entry.hasPrefix("."), entry.hasSuffix(suffix) else { return nil }
            return String(entry.dropFirst().dropLast(suffix.count))
        }
    }

    private func markPath(_ mark: Mark, _ name: String) -> String { directory + "/." + name + "." + mark.rawValue }


    /// Makes the registry folder's changes durable (after a removal under the lock).
    func syncFolder() throws(SiloError) {
        try syncDirectory(directory)
    }

    /// Removes a record; the caller holds the registry lock.
    func removeHoldingLock(_ name: String, durable: Bool = true) throws(SiloError) {
        let path = recordPath(name)
        if unlink(path) != 0, errno != ENOENT {
            throw SiloError.system("unlink", errno: errno, path: path)
        }
        if durable { try syncDirectory(directory) }
    }

    private func recordPath(_ name: String) -> String { directory + "/" + name + ".json" }

    private func temporaryPath(_ name: String) -> String { directory + "/.\(name).json.\(ProcessIdentity.procPID).tmp" }

    private func decode(_ bytes: [UInt8], path: String) throws(SiloError) -> LunRecord {
        do {
            return try LunRecord(json: String(decoding: bytes, as: UTF8.self))
        } catch {
            throw SiloError(.invalidJSON, "registry record \(path) is damaged: \(error.message)",
                            field: "record", value: path)
        }
    }
}

func makeDirectory(_ path: String) throws(SiloError) {
    var info = stat()
    if stat(path, &info) == 0 {
        guard info.st_mode & S_IFMT == S_IFDIR else {
            throw SiloError.invalidArgument(field: "state directory", value: path, reason: "it is not a directory")
        }
        guard access(path, W_OK | X_OK) == 0 else {
            throw SiloError(.accessDenied, "state directory '\(path)' is not writable", field: "state directory", value: path)
        }
        return
    }
    if mkdir(path, 0o700) != 0, errno != EEXIST {
        let error = errno
        throw SiloError(
            error == EACCES || error == EPERM || error == EROFS ? .accessDenied : .systemCallFailed,
            "cannot create state directory '\(path)': \(String(cString: strerror(error)))",
            field: "state directory", value: path, syscall: "mkdir", errno: error
        )
    }
}

/// Writes JSON `text` to `path` atomically: a temporary file in the same folder, renamed over it.
/// `durable` adds the fsyncs (the file's and the folder's) that make it survive power loss.
func writeJSONAtomically(_ text: String, to path: String, temporary: String, durable: Bool) throws(SiloError) {
    try writeJSONFile(text, to: temporary, durable: durable)
    do throws(SiloError) {
        try syscall("rename", path: path) { rename(temporary, path) }
    } catch {
        unlink(temporary)
        throw error
    }
    if durable { try syncDirectory(String(path[..<(path.lastIndex(of: "/") ?? path.endIndex)])) }
}

/// Writes JSON `text` to a new file at `temporary`, synced when `durable`; removed again if
/// anything fails.
func writeJSONFile(_ text: String, to temporary: String, durable: Bool) throws(SiloError) {
    let fd = try syscall("open", path: temporary) { open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600) }
    do throws(SiloError) {
        defer { close(fd) }
        try writeAll(fd, Array(text.utf8), path: temporary)
        if durable { try syscall("fsync", path: temporary) { fsync(fd) } }
    } catch {
        unlink(temporary)
        throw error
    }
}

func syncDirectory(_ path: String) throws(SiloError) {
    try syncPath(path, directory: true)
}

/// fsync of the file or folder at `path`.
func syncPath(_ path: String, directory: Bool) throws(SiloError) {
    let fd = try syscall("open", path: path) { open(path, O_RDONLY | O_CLOEXEC | (directory ? O_DIRECTORY : 0)) }
    defer { close(fd) }
    try syscall("fsync", path: path) { fsync(fd) }
}

func writeAll(_ fd: Int32, _ bytes: [UInt8], path: String) throws(SiloError) {
    var offset = 0
    while offset < bytes.count {
        let written = try syscall("write", path: path) {
            bytes.withUnsafeBytes { buffer in write(fd, buffer.baseAddress.map { $0 + offset }, buffer.count - offset) }
        }
        offset += written
    }
}

/// The whole file; nil when it is not there or cannot be read.
func readFile(_ path: String) -> [UInt8]? {
    (try? readExistingFile(path)) ?? nil
}

/// The whole file; nil when it is not there, and a throw when it cannot be opened or read
/// (EMFILE, ENOMEM, EIO): a record that failed to read is no missing record.
func readExistingFile(_ path: String) throws(SiloError) -> [UInt8]? {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else {
        if errno == ENOENT { return nil }
        throw SiloError.system("open", errno: errno, path: path)
    }
    defer { close(fd) }
    var bytes: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 16384)
    while true {
        let count = read(fd, &buffer, buffer.count)
        if count < 0, errno == EINTR { continue }
        if count < 0 { throw SiloError.system("read", errno: errno, path: path) }
        if count == 0 { break }
        bytes.append(contentsOf: buffer[0..<count])
    }
    return bytes
}
