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
        let probe = Glibc.open(path, O_RDONLY | O_CLOEXEC)
        guard probe >= 0 else { return }
        if flock(probe, LOCK_EX | LOCK_NB) == 0 { unlink(path) }
        Glibc.close(probe)
    }
}

extension StorageProvider {
    var leaseDirectory: String { configuration.stateDirectory + "/leases" }

    /// Takes a lease on LUN `name` for `holder` (such as "compute system 'web'").
    /// - Throws: `objectNotFound` for an unknown LUN; `invalidArgument` for a holder with '/'.
    public func lease(_ name: String, holder: String) throws(SiloError) -> LunLease {
        _ = try lun(named: name)
        guard !holder.isEmpty, !holder.contains("/"), holder.utf8.count <= 128 else {
            throw SiloError.invalidArgument(field: "holder", value: holder, reason: "1 to 128 characters, without '/'")
        }
        if mkdir(leaseDirectory, 0o700) != 0, errno != EEXIST { throw SiloError.system("mkdir", errno: errno, path: leaseDirectory) }
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

    /// Holders of live leases on LUN `name`; stale lease files (their holders died) are removed.
    public func leaseHolders(_ name: String) -> [String] {
        directoryEntries(leaseDirectory).filter { $0.hasPrefix(name + "@") }.sorted().compactMap { entry in
            let path = leaseDirectory + "/" + entry
            let fd = Glibc.open(path, O_RDONLY | O_CLOEXEC)
            guard fd >= 0 else { return nil }
            defer { Glibc.close(fd) }
            if flock(fd, LOCK_EX | LOCK_NB) == 0 {
                unlink(path)
                return nil
            }
            return String(entry.dropFirst(name.count + 1))
        }
    }

    /// Why LUN `name` (attached as `device`) may not be deleted or taken offline, or nil.
    func use(of name: String, device: LoopDevice?) -> String? {
        let holders = leaseHolders(name)
        if !holders.isEmpty { return "attached to \(holders.joined(separator: ", "))" }
        return device.flatMap { InUse.check($0) }
    }
}
