import CSiloLinux
import Glibc
import SiloOperations

/// The sparse file behind a LUN.
enum BackingFile {
    /// Creates the file, empty and exclusive (it must not exist), mode 0600, at `size` bytes sparse.
    static func create(_ path: String, size: UInt64) throws(SiloError) {
        let fd = try syscall("open", path: path) { open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0o600) }
        defer { close(fd) }
        do throws(SiloError) {
            try syscall("ftruncate", path: path) { ftruncate(fd, off_t(size)) }
        } catch {
            unlink(path)
            throw spaceError(error, path: path, size: size)
        }
    }

    /// Reserves the blocks of `range` (`fallocate`): thick provisioning.
    ///
    /// Allocations in one folder take turns (a `flock` on `.allocate` beside the file): two that fit
    /// the free space only one at a time would otherwise each take part of it and both fail.
    static func allocate(_ path: String, from start: UInt64, to end: UInt64) throws(SiloError) {
        guard end > start else { return }
        let lockPath = String(path[..<(path.lastIndex(of: "/") ?? path.endIndex)]) + "/.allocate"
        let lock = try syscall("open", path: lockPath) { open(lockPath, O_RDWR | O_CREAT | O_CLOEXEC, 0o600) }
        defer { close(lock) }
        try syscall("flock", path: lockPath) { flock(lock, LOCK_EX) }
        // A fallocate that fails part-way holds what it took until it unwinds, and the registry
        // shares this file system: check first, and keep headroom for the records.
        let directory = String(lockPath.dropLast("/.allocate".count))
        let free = try Pool(directory: directory).capacity().free
        guard free >= (end - start) + allocationHeadroom else {
            throw SiloError(
                .notEnoughSpace,
                "not enough space for \(ByteCount.format(end - start)) at \(path): \(ByteCount.format(free)) free, "
                    + "and \(ByteCount.format(allocationHeadroom)) stays free for the registry",
                field: "size", value: "\(end - start)"
            )
        }
        let fd = try syscall("open", path: path) { open(path, O_RDWR | O_CLOEXEC) }
        defer { close(fd) }
        do throws(SiloError) {
            try syscall("fallocate", path: path) { silo_fallocate(fd, 0, Int64(start), Int64(end - start)) }
        } catch {
            throw spaceError(error, path: path, size: end - start)
        }
    }

    /// Writes zeros over `range` in chunks, reporting bytes done and stopping promptly on cancel.
    static func zero(
        _ path: String, from start: UInt64, to end: UInt64,
        progress: (UInt64, UInt64) -> Void, cancelled: () -> Bool
    ) throws(SiloError) {
        guard end > start else { return }
        let fd = try syscall("open", path: path) { open(path, O_RDWR | O_CLOEXEC) }
        defer { close(fd) }
        let chunk = 8 << 20
        let zeros = [UInt8](repeating: 0, count: chunk)
        var offset = start
        var sinceSync: UInt64 = 0
        while offset < end {
            if cancelled() { throw SiloError(.operationCancelled, "zeroing of \(path) was cancelled") }
            let count = Int(min(UInt64(chunk), end - offset))
            let written = try syscall("pwrite", path: path) {
                zeros.withUnsafeBytes { pwrite(fd, $0.baseAddress, count, off_t(offset)) }
            }
            offset += UInt64(written)
            sinceSync += UInt64(written)
            // Flush as we go so the page cache does not balloon and the progress means bytes on disk.
            if sinceSync >= 256 << 20 {
                try syscall("fdatasync", path: path) { fdatasync(fd) }
                sinceSync = 0
            }
            progress(offset - start, end - start)
        }
        try syscall("fdatasync", path: path) { fdatasync(fd) }
    }

    static func resize(_ path: String, to size: UInt64) throws(SiloError) {
        do throws(SiloError) {
            try syscall("truncate", path: path) { truncate(path, off_t(size)) }
        } catch {
            throw spaceError(error, path: path, size: size)
        }
    }

    static func size(_ path: String) -> UInt64? {
        var info = stat()
        guard stat(path, &info) == 0 else { return nil }
        return UInt64(info.st_size)
    }

    /// Bytes the file occupies on disk.
    static func allocatedBytes(_ path: String) -> UInt64 {
        var info = stat()
        guard stat(path, &info) == 0 else { return 0 }
        return UInt64(info.st_blocks) * 512
    }

    static func remove(_ path: String) throws(SiloError) {
        if unlink(path) != 0, errno != ENOENT { throw SiloError.system("unlink", errno: errno, path: path) }
    }

    private static func spaceError(_ error: SiloError, path: String, size: UInt64) -> SiloError {
        guard error.errno == ENOSPC || error.errno == EFBIG || error.errno == EDQUOT else { return error }
        var copy = error
        copy.code = .notEnoughSpace
        copy.message = "not enough space for \(ByteCount.format(size)) at \(path): \(error.message)"
        return copy
    }
}

/// Space every allocation leaves free, so registry records can always be written.
let allocationHeadroom: UInt64 = 1 << 20

/// A pool: a directory where backing files live, on one drive.
struct Pool: Sendable {
    let directory: String

    /// Bytes of the file system holding the pool: total and available to Silo.
    func capacity() throws(SiloError) -> (total: UInt64, free: UInt64) {
        var info = statvfs()
        try syscall("statvfs", path: directory) { statvfs(directory, &info) }
        return (UInt64(info.f_blocks) * UInt64(info.f_frsize), UInt64(info.f_bavail) * UInt64(info.f_frsize))
    }

    /// `major:minor` of the device holding the pool, or that will hold it: before the pool folder
    /// exists, its nearest existing parent tells.
    var deviceNumber: String? {
        var path = directory
        var info = stat()
        while stat(path, &info) != 0 {
            guard let slash = path.lastIndex(of: "/"), slash != path.startIndex else { path = "/"; break }
            path = String(path[..<slash])
        }
        if stat(path, &info) != 0 { return nil }
        return "\(silo_major(UInt64(info.st_dev))):\(silo_minor(UInt64(info.st_dev)))"
    }
}
