import CSiloLinux
import Glibc
import SiloOperations

/// A bound loop device's backing file, as the device's loop status names it: what a probe reads in
/// place of the device when the two hold the same bytes.
///
/// They do unless the device's own page cache holds writes the file has not seen yet: dirty pages,
/// or pages being written back. `cachestat` (Linux 6.5) counts those over the whole device at the
/// cost of a walk of its cache's index. Before 6.5, `mincore` tells which pages are cached at all,
/// dirty or not, and the probe reads the file only where none is cached near either end of the
/// device, where libblkid reads. A device nobody holds open has nothing cached: the kernel writes
/// its cache back and drops it when the last opener closes it. So reading such a device would only
/// fill a cache for the kernel to drop again when the probe closes the device.
public struct LoopBacking: Sendable, Hashable {
    public let file: String
    /// `st_dev` and `st_ino` of the file the device is bound to (LOOP_GET_STATUS64).
    let fileDevice: UInt64
    let inode: UInt64
    /// Where the device's first byte lies in the file.
    let offset: UInt64

    /// libblkid (util-linux 2.38) reads within the first 4 MiB and the last 2 MiB of a device;
    /// where only `mincore` can tell, twice as much is checked at each end.
    static let window: UInt64 = 8 << 20

    /// The backing file and where the device is in it, from the device's loop status; nil for a
    /// device that is not bound, or whose status asks for a transfer (encryption) the file lacks.
    init?(device fd: Int32, file: String) {
        var info = loop_info64()
        guard silo_loop_get_status64(fd, &info) == 0 else { return nil }
        self.init(status: info, file: file)
    }

    /// The same, from a loop status the caller read already.
    init?(status info: loop_info64, file: String) {
        guard info.lo_encrypt_type == 0 else { return nil }
        self.file = file
        self.fileDevice = info.lo_device
        self.inode = info.lo_inode
        self.offset = info.lo_offset
    }

    /// The backing file, opened read-only, and the device's bytes in it; nil when the device's
    /// cache may hold writes the file lacks, or the file at `file` is no longer the one bound
    /// (renamed, deleted, shorter than the device).
    func open(device fd: Int32) -> (fd: Int32, offset: UInt64, size: UInt64)? {
        var size: UInt64 = 0
        guard silo_blk_get_size64(fd, &size) == 0, size > 0 else { return nil }
        // libblkid takes a file's sectors for 512 bytes: a device of 4096-byte sectors keeps its
        // partition table where only the device's own sector size finds it.
        var sectorSize: Int32 = 0
        guard silo_blk_ssz_get(fd, &sectorSize) == 0, sectorSize == 512 else { return nil }
        let span = min(size, Self.window)
        let mayDiffer = Self.unwritten(fd)
            ?? (Self.cached(fd, from: 0, count: span) || Self.cached(fd, from: size - span, count: span))
        guard !mayDiffer else { return nil }
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

    /// Whether the page cache of the block device `fd` holds dirty pages or pages under writeback;
    /// nil where the kernel has no `cachestat` (before 6.5).
    static func unwritten(_ fd: Int32) -> Bool? {
        var cached: UInt64 = 0
        var unwritten: UInt64 = 0
        guard silo_cachestat(fd, 0, 0, &cached, &unwritten) == 0 else { return errno == ENOSYS ? nil : true }
        return unwritten > 0
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
