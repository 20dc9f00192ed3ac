import Glibc
import SiloOperations
import Synchronization

/// A lease on a LUN: something outside storage uses it (a compute system it is attached to), for
/// as long as any process holds the lease's descriptor open. Delete and offline refuse a leased
/// LUN with `deviceInUse` naming the holder (S10).
///
/// The lease is a shared `flock` on `<state>/leases/<lun>@<holder>`; the lock belongs to the open
/// file, so a process that inherits or receives `descriptor` holds the lease too, and it ends
/// when the last of them closes it or dies. Storage asks the kernel, never a record that could
/// outlive a crash.
public final class LunLease: Sendable {
    public let lun: String
    public let holder: String
    let path: String
    private let held: Atomic<Int32>

    init(lun: String, holder: String, descriptor: Int32, path: String) {
        self.lun = lun
        self.holder = holder
        self.path = path
        self.held = Atomic(descriptor)
    }

    deinit { release() }

    /// The locked descriptor (close-on-exec), -1 once released: pass it to whatever should hold
    /// the lease (a process that inherits or receives it holds the lock too).
    public var descriptor: Int32 { held.load(ordering: .relaxed) }

    /// Gives up this process's hold. The lease lasts while another process holds it; the file
    /// goes with the last holder.
    public func release() {
        let fd = held.exchange(-1, ordering: .relaxed)
        guard fd >= 0 else { return }
        Glibc.close(fd)
        let directory = String(path[..<(path.lastIndex(of: "/") ?? path.endIndex)])
        _ = withLeaseLock(directory: directory) { removeIfUnheld(path) }
    }
}

/// Runs `body` holding the lease folder's lock (a `flock` on the folder itself, so no file is
/// added), which orders taking a lease, checking the live ones and removing a stale file: without
/// it, a file found unheld could be removed between another taker's open and its lock, and that
/// lease would be on no name. Without the folder there is nothing to order.
func withLeaseLock<T, E: Error>(directory: String, _ body: () throws(E) -> T) throws(E) -> T {
    let lock = Glibc.open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
    if lock >= 0 { while flock(lock, LOCK_EX) != 0, errno == EINTR {} }
    defer { if lock >= 0 { Glibc.close(lock) } }
    return try body()
}

/// Removes lease file `path` when nobody holds it; true if removed (or gone).
@discardableResult
private func removeIfUnheld(_ path: String) -> Bool {
    let probe = Glibc.open(path, O_RDONLY | O_CLOEXEC)
    guard probe >= 0 else { return true }
    defer { Glibc.close(probe) }
    guard flock(probe, LOCK_EX | LOCK_NB) == 0 else { return false }
    unlink(path)
    return true
}

extension StorageProvider {
    var leaseDirectory: String { configuration.stateDirectory + "/leases" }

    /// Runs `body` under the lease lock, the lease folder made first so that there is a lock to
    /// hold even before the first lease.
    func underLeaseLock<T>(_ body: () throws(SiloError) -> T) throws(SiloError) -> T {
        if mkdir(leaseDirectory, 0o700) != 0, errno != EEXIST { throw SiloError.system("mkdir", errno: errno, path: leaseDirectory) }
        return try withLeaseLock(directory: leaseDirectory, body)
    }

    /// Takes a lease on LUN `name` for `holder` (such as "compute system 'web'"), once `check` has
    /// seen the live holders and thrown nothing: both under the lease lock, so two leases
    /// taken at once cannot each pass a check the other would fail.
    /// - Throws: `objectNotFound` for an unknown LUN; `invalidArgument` for a holder with '/';
    ///   what `check` throws.
    ///
    /// The LUN is looked up under the lease lock, which a delete or an offline also holds from its
    /// last check for leases until its device is unbound (and, for a delete, its record removed):
    /// a LUN leased here keeps its device until the lease ends, and a LUN being deleted is not
    /// leased. `id`, when given, must still be the LUN's (a name deleted and made again is
    /// another LUN).
    /// - Throws: `objectNotFound` for an unknown LUN (or one whose id is no longer `id`);
    ///   `anotherCallInProgress` while a delete of it runs; `invalidArgument` for a holder with
    ///   '/'; what `check` throws.
    public func lease(_ name: String, holder: String, id: String? = nil,
                      checking check: ([String]) throws(SiloError) -> Void = { _ in }) throws(SiloError) -> LunLease {
        try Names.validate(name, field: "name", what: "a LUN name")
        guard !holder.isEmpty, !holder.contains("/"), holder.utf8.count <= 128 else {
            throw SiloError.invalidArgument(field: "holder", value: holder, reason: "1 to 128 characters, without '/'")
        }
        return try underLeaseLock { () throws(SiloError) -> LunLease in
            let record = try record(named: name)
            if let id, record.id != id { throw SiloError.notFound("LUN", field: "name", value: name) }
            if let deleting = registry.mark(.deleting, name), ProcessIdentity.isAlive(deleting) {
                throw SiloError(.anotherCallInProgress, "LUN '\(name)' is being deleted (pid \(deleting.pid))", field: "name", value: name)
            }
            try check(liveHolders(name))
            let path = leaseDirectory + "/" + name + "@" + holder
            let fd = Glibc.open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
            guard fd >= 0 else { throw SiloError.system("open", errno: errno, path: path) }
            guard flock(fd, LOCK_SH) == 0 else {
                let error = errno
                Glibc.close(fd)
                throw SiloError.system("flock", errno: error, path: path)
            }
            return LunLease(lun: name, holder: holder, descriptor: fd, path: path)
        }
    }

    /// The lease holder a clone into LUN `name` is while it reads its source's file.
    static func cloneHolder(_ name: String) -> String { "clone '\(name)'" }

    /// Whether a lease holder is a clone reading its source (``cloneHolder(_:)``).
    public static func isCloneHolder(_ holder: String) -> Bool { holder.hasPrefix(cloneHolder("").dropLast()) }

    /// Clones reading LUN `name` now (live holders of a ``cloneHolder(_:)`` lease on it). Asked
    /// under the registry lock too: the lease lock is always taken after it (a delete's checks).
    func cloneReaders(_ name: String) -> [String] {
        leaseHolders(name).filter(Self.isCloneHolder)
    }

    /// - Throws: `anotherCallInProgress` while a clone reads LUN `name`'s file: a change of its
    ///   size under the copy would leave the clone with neither size. The caller has marked it.
    func refuseWhileCloned(_ name: String, what: String) throws(SiloError) {
        guard let reader = cloneReaders(name).first else { return }
        throw SiloError(.anotherCallInProgress, "cannot \(what) LUN '\(name)' while \(reader) copies it; try again when that completes",
                        field: "name", value: name)
    }

    /// Holders of live leases on LUN `name`; stale lease files (their holders died) are removed.
    public func leaseHolders(_ name: String) -> [String] {
        withLeaseLock(directory: leaseDirectory) { liveHolders(name) }
    }

    /// The compute system a lease holder names ("compute system 'web'", with " (raw)" for a raw
    /// device), or nil for another holder (a clone).
    static func system(ofHolder holder: String) -> String? {
        let prefix = "compute system '"
        guard holder.hasPrefix(prefix) else { return nil }
        let rest = holder.dropFirst(prefix.count)
        guard let end = rest.firstIndex(of: "'") else { return nil }
        return String(rest[..<end])
    }

    /// What `leaseHolders` finds; the caller holds the lease lock. A lease folder that cannot be
    /// listed is one holder that cannot be named, so every check that asks refuses.
    func liveHolders(_ name: String) -> [String] {
        let entries: [String]
        do throws(SiloError) {
            entries = try listedEntries(leaseDirectory)
        } catch {
            return ["a holder that cannot be told (\(error.message))"]
        }
        return entries.filter { $0.hasPrefix(name + "@") }.sorted().compactMap { entry in
            removeIfUnheld(leaseDirectory + "/" + entry) ? nil : String(entry.dropFirst(name.count + 1))
        }
    }

    /// Why LUN `name`'s device is busy on the host now (mounted anywhere, held, active swap,
    /// opened exclusively), leases aside; nil when it is not, or has no device.
    public func deviceUse(ofLun name: String) throws(SiloError) -> String? {
        guard let path = try lun(named: name).devicePath, let device = LoopDevice(path: path) else { return nil }
        return InUse.check(device)
    }

    /// - Throws: `deviceInUse` while a compute system or a clone holds LUN `name` (a lease).
    func refuseLeased(_ name: String) throws(SiloError) {
        let holders = leaseHolders(name)
        guard !holders.isEmpty, let use = use(of: name, device: nil, holders: holders) else { return }
        throw SiloError(.deviceInUse, "LUN '\(name)' is in use (\(use)); release it first", field: "name", value: name)
    }

    /// Why LUN `name` (attached as `device`) may not be deleted or taken offline, or nil.
    func use(of name: String, device: LoopDevice?) -> String? {
        use(of: name, device: device, holders: leaseHolders(name))
    }

    private func use(of name: String, device: LoopDevice?, holders: [String]) -> String? {
        if !holders.isEmpty {
            let attached = holders.filter { !Self.isCloneHolder($0) }, clones = holders.filter(Self.isCloneHolder)
            var use: [String] = []
            if !attached.isEmpty { use.append("attached to " + attached.joinedPlainly(", ")) }
            if !clones.isEmpty { use.append("read by " + clones.joinedPlainly(", ")) }
            return use.joinedPlainly("; ")
        }
        return device.flatMap { InUse.check($0) }
    }

    /// Runs `body` (which unbinds LUN `name`'s device, and for a delete removes its record) under
    /// the lease lock, once no lease holds the LUN: a lease taken after the call's first check
    /// (a system started meanwhile) is found here, and one asked for while `body` runs waits for
    /// it and then finds the LUN without its device, or gone.
    /// - Throws: `deviceInUse` naming the holder; what `body` throws.
    func unleased<T>(_ name: String, device: LoopDevice?, _ body: () throws(SiloError) -> T) throws(SiloError) -> T {
        return try underLeaseLock { () throws(SiloError) -> T in
            let holders = liveHolders(name)
            if !holders.isEmpty, let use = use(of: name, device: device, holders: holders) {
                throw SiloError(.deviceInUse, "LUN '\(name)' is in use as \(device?.path ?? "a file") (\(use)); release it first",
                                field: "name", value: name)
            }
            return try body()
        }
    }
}
