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
    /// - Parameter allocated: bytes of the range that hold space already (a clone's copied data):
    ///   only the rest must be free.
    static func allocate(_ path: String, from start: UInt64, to end: UInt64, allocated: UInt64 = 0) throws(SiloError) {
        guard end > start else { return }
        let needed = (end - start) - min(allocated, end - start)
        let lockPath = String(path[..<(path.lastIndex(of: "/") ?? path.endIndex)]) + "/.allocate"
        let lock = try syscall("open", path: lockPath) { open(lockPath, O_RDWR | O_CREAT | O_CLOEXEC, 0o600) }
        defer { close(lock) }
        try syscall("flock", path: lockPath) { flock(lock, LOCK_EX) }
        // A fallocate that fails part-way holds what it took until it unwinds, and the registry
        // shares this file system: check first, and keep headroom for the records.
        let directory = String(lockPath.dropLast("/.allocate".count))
        let free = try Pool(directory: directory).capacity().free
        guard free >= needed + allocationHeadroom else {
            throw SiloError(
                .notEnoughSpace,
                "not enough space for \(ByteCount.format(needed)) at \(path): \(ByteCount.format(free)) free, "
                    + "and \(ByteCount.format(allocationHeadroom)) stays free for the registry",
                field: "size", value: "\(needed)"
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

    /// Makes the file durable with its name: its size, blocks and bytes, and its entry in its
    /// folder. Before a record names it as a ready LUN: otherwise a power loss could leave a
    /// durable record whose file is gone, short, or without the bytes a clone copied. One fsync:
    /// the file systems pools live on make a new file's entry durable with it (ext4 commits the
    /// transaction that made both, or syncs the parent without a journal; XFS forces the log past
    /// the create; btrfs logs new names), and each fsync costs a device flush.
    static func sync(_ path: String) throws(SiloError) {
        try syncPath(path, directory: false)
    }

    static func remove(_ path: String) throws(SiloError) {
        if unlink(path) != 0, errno != ENOENT { throw SiloError.system("unlink", errno: errno, path: path) }
    }

    static func spaceError(_ error: SiloError, path: String, size: UInt64) -> SiloError {
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
    var name: String = "default"
    let directory: String

    /// Bytes of the file system holding the pool, or that will hold it (see ``existingFolder``):
    /// total and available to Silo.
    func capacity() throws(SiloError) -> (total: UInt64, free: UInt64) {
        var info = statvfs()
        let path = existingFolder
        try syscall("statvfs", path: path) { statvfs(path, &info) }
        return (UInt64(info.f_blocks) * UInt64(info.f_frsize), UInt64(info.f_bavail) * UInt64(info.f_frsize))
    }

    /// The pool's folder, or before it exists (a new state directory's default pool) its nearest
    /// existing parent, whose file system the folder will be made on: measured without making it.
    /// An added pool's folder is only ever itself: one missing is not measured as its parent's.
    var existingFolder: String {
        guard name == "default" else { return directory }
        var path = directory
        var info = stat()
        while stat(path, &info) != 0 {
            guard let slash = path.lastIndex(of: "/"), slash != path.startIndex else { return "/" }
            path = String(path[..<slash])
        }
        return path
    }

    /// `major:minor` of the device holding the pool, or that will hold it.
    var deviceNumber: String? {
        var info = stat()
        if stat(existingFolder, &info) != 0 { return nil }
        return "\(silo_major(UInt64(info.st_dev))):\(silo_minor(UInt64(info.st_dev)))"
    }
}

extension BackingFile {
    /// How a clone was made.
    enum CloneMethod: String, Sendable {
        /// `FICLONE`: the new file shares the source's extents, copy-on-write; instant.
        case reflink
        /// Only the source's data segments were copied (`SEEK_DATA`/`SEEK_HOLE`); holes stay holes.
        case sparseCopy
    }

    /// Makes `destination` a copy of `source`: by reflink where the file system can, otherwise
    /// copying only the data segments, reporting bytes done and stopping promptly on cancel.
    /// `destination` must not exist; on failure it is removed.
    static func clone(
        _ source: String, to destination: String, reflink: Bool = true,
        progress: (UInt64, UInt64) -> Void, cancelled: () -> Bool
    ) throws(SiloError) -> CloneMethod {
        let input = try syscall("open", path: source) { open(source, O_RDONLY | O_CLOEXEC) }
        defer { close(input) }
        let output = try syscall("open", path: destination) {
            open(destination, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        }
        defer { close(output) }
        do throws(SiloError) {
            if reflink, silo_ficlone(output, input) == 0 { return .reflink }
            var info = stat()
            try syscall("fstat", path: source) { fstat(input, &info) }
            let size = UInt64(info.st_size)
            try syscall("ftruncate", path: destination) { ftruncate(output, off_t(size)) }
            let segments = try dataSegments(input, size: size, path: source)
            let total = segments.reduce(UInt64(0)) { $0 + ($1.upperBound - $1.lowerBound) }
            var done: UInt64 = 0
            var buffer = [UInt8](repeating: 0, count: 4 << 20)
            for segment in segments {
                var offset = segment.lowerBound
                while offset < segment.upperBound {
                    if cancelled() { throw SiloError(.operationCancelled, "clone of \(source) was cancelled") }
                    let count = Int(min(UInt64(buffer.count), segment.upperBound - offset))
                    let got = try syscall("pread", path: source) {
                        buffer.withUnsafeMutableBytes { pread(input, $0.baseAddress, count, off_t(offset)) }
                    }
                    // The source is leased (no shrink meanwhile): an end inside a data segment is
                    // an error, never a copy with zeros where the data was.
                    guard got > 0 else {
                        throw SiloError(.systemCallFailed, "pread of \(source) ended at \(offset), inside its data that goes on to \(segment.upperBound)",
                                        field: "source", value: source)
                    }
                    // All of it: a short write (a file system nearly full) would leave zeros in
                    // the copy where the source has data.
                    var written = 0
                    while written < got {
                        written += try syscall("pwrite", path: destination) {
                            buffer.withUnsafeBytes { pwrite(output, $0.baseAddress! + written, got - written, off_t(offset) + off_t(written)) }
                        }
                    }
                    offset += UInt64(got)
                    done += UInt64(got)
                    progress(done, total)
                }
            }
            try syscall("fdatasync", path: destination) { fdatasync(output) }
            return .sparseCopy
        } catch {
            unlink(destination)
            throw spaceError(error, path: destination, size: UInt64(max(0, lseek(input, 0, SEEK_END))))
        }
    }

    /// The ranges of `fd` that hold data, by SEEK_DATA and SEEK_HOLE [man 2 lseek]. A file
    /// system without them (EINVAL, EOPNOTSUPP) has the whole file as data; any other failure
    /// (EIO reading the extents) throws: taken for "no more data", it made a copy with zeros.
    static func dataSegments(_ fd: Int32, size: UInt64, path: String) throws(SiloError) -> [Range<UInt64>] {
        var segments: [Range<UInt64>] = []
        var position: off_t = 0
        while UInt64(position) < size {
            let data = lseek(fd, position, silo_SEEK_DATA)
            if data < 0 {
                if errno == ENXIO { break }  // no data past here
                if errno == EINVAL || errno == EOPNOTSUPP { return segments + [UInt64(position)..<size] }
                throw SiloError.system("lseek(SEEK_DATA)", errno: errno, path: path)
            }
            var hole = lseek(fd, data, silo_SEEK_HOLE)
            if hole < 0 {
                guard errno == EINVAL || errno == EOPNOTSUPP || errno == ENXIO else { throw SiloError.system("lseek(SEEK_HOLE)", errno: errno, path: path) }
                hole = off_t(size)
            }
            segments.append(UInt64(data)..<UInt64(hole))
            position = hole
        }
        return segments
    }
}
