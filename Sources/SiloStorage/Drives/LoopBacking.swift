import CSiloLinux
import Glibc
import SiloOperations

/// A bound loop device's backing file, as the device's loop status names it: what a probe reads in
/// place of the device when the two hold the same bytes.
///
/// They do when none of the device's pages is in the page cache where libblkid reads. A write
/// through the device that the file has not seen yet is a dirty page of the device's own cache,
/// and the kernel writes that cache back and drops it when the device's last opener closes it. So
/// a device that nobody holds open has nothing cached, and reading it would only fill the cache
/// for the kernel to drop again when the probe closes the device; one that someone holds (a
/// mount, a writer) may have pages the file lacks, and is read through itself, mostly from cache.
public struct LoopBacking: Sendable, Hashable {
    public let file: String
    /// `st_dev` and `st_ino` of the file the device is bound to (LOOP_GET_STATUS64).
    let fileDevice: UInt64
    let inode: UInt64
    /// Where the device's first byte lies in the file.
    let offset: UInt64

    /// libblkid (util-linux 2.38) reads within the first 4 MiB and the last 2 MiB of a device;
    /// twice as much is checked at each end.
    static let window: UInt64 = 8 << 20

    /// The backing file and where the device is in it, from the device's loop status; nil for a
    /// device that is not bound, or whose status asks for a transfer (encryption) the file lacks.
    init?(device fd: Int32, file: String) {
        var info = loop_info64()
        guard silo_loop_get_status64(fd, &info) == 0, info.lo_encrypt_type == 0 else { return nil }
        self.file = file
        self.fileDevice = info.lo_device
        self.inode = info.lo_inode
        self.offset = info.lo_offset
    }

    /// The backing file, opened read-only, and the device's bytes in it; nil when the device has
    /// pages cached near either end or the file at `file` is no longer the one bound (renamed,
    /// deleted, shorter than the device).
    func open(device fd: Int32) -> (fd: Int32, offset: UInt64, size: UInt64)? {
        var size: UInt64 = 0
        guard silo_blk_get_size64(fd, &size) == 0, size > 0 else { return nil }
        let span = min(size, Self.window)
        guard !Self.cached(fd, from: 0, count: span), !Self.cached(fd, from: size - span, count: span) else { return nil }
        // O_NONBLOCK: should the path now name a FIFO, the open must not wait for a writer.
        let file = Glibc.open(self.file, O_RDONLY | O_CLOEXEC | O_NONBLOCK)
        guard file >= 0 else { return nil }
        var info = stat()
        guard fstat(file, &info) == 0, info.st_mode & S_IFMT == S_IFREG,
              UInt64(info.st_dev) == fileDevice, UInt64(info.st_ino) == inode,
              offset + size <= UInt64(info.st_size)
        else {
            close(file)
            return nil
        }
        return (file, offset, size)
    }

    /// Whether any page of the `count` bytes from `start` of the block device `fd` is in its page
    /// cache (`mincore` of a mapping that is never touched, so nothing is read in). True when it
    /// cannot tell.
    static func cached(_ fd: Int32, from start: UInt64, count: UInt64) -> Bool {
        let page = UInt64(sysconf(Int32(_SC_PAGESIZE)))
        let first = start / page * page
        let length = Int(start + count - first)
        guard length > 0 else { return false }
        let map = mmap(nil, length, PROT_READ, MAP_SHARED, fd, off_t(first))
        guard let map, map != MAP_FAILED else { return true }
        defer { munmap(map, length) }
        var resident = [UInt8](repeating: 0, count: (length + Int(page) - 1) / Int(page))
        guard mincore(map, length, &resident) == 0 else { return true }
        return resident.contains { $0 & 1 != 0 }
    }
}
