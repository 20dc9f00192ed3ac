import CSiloLinux
import Glibc
import SiloOperations

/// A loop device bound to a backing file [man 4 loop].
///
/// Attaching follows systemd's loop-util: lock `/dev/loop-control`, ask for a free device,
/// lock the device, bind it with one `LOOP_CONFIGURE`, verify that the size, block size and flags
/// took, and on a device someone else configured in between, move on to the next. Silo tags every
/// device it binds with `silo:<lun-id>` in the kernel's `lo_crypt_name`, so that reconciliation can
/// tell Silo's devices from anyone else's without the registry.
public struct LoopDevice: Sendable, Hashable, Codable {
    /// Writes what sits dirty in this device's page cache (written through the device, not yet
    /// passed on) to its backing file: an fsync through a read-only open, which writes nothing
    /// itself.
    func flush() throws(SiloError) {
        let fd = try syscall("open", path: path) { open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK) }
        defer { close(fd) }
        try syscall("fsync", path: path) { fsync(fd) }
    }

    /// N in `/dev/loopN`.
    public let number: Int

    public init(number: Int) {
        self.number = number
    }

    /// The device at `path`, `/dev/loopN`; nil for any other path.
    public init?(path: String) {
        guard path.hasPrefix("/dev/loop"), let number = Int(path.dropFirst("/dev/loop".count)), number >= 0 else { return nil }
        self.init(number: number)
    }

    public var path: String { "/dev/loop\(number)" }
    public var name: String { "loop\(number)" }
    var sysfs: String { "/sys/block/loop\(number)" }

    /// Options for ``attach(backing:options:)``.
    public struct Options: Sendable, Hashable {
        /// 512 or 4096.
        public var logicalBlockSize: UInt32 = 512
        public var readOnly = false
        /// Open the backing file with `O_DIRECT` (`LO_FLAGS_DIRECT_IO`); falls back to buffered
        /// I/O when the file system refuses it.
        public var directIO = true
        /// Detach when the last opener closes (`LO_FLAGS_AUTOCLEAR`).
        public var autoclear = false
        /// Scan the device for partitions (`LO_FLAGS_PARTSCAN`).
        public var partitionScan = false
        /// The owner tag, kept in the kernel (`lo_file_name`), at most 63 bytes.
        public var tag: String = ""
        /// The caller just made or wrote the file: fsync it before taking loop-control's lock, so
        /// that the kernel's own fsync in `LOOP_CONFIGURE`, which every other attach waits behind,
        /// finds nothing to write (0.03 ms instead of 0.1-0.4 for a new file here). For a file with
        /// nothing to write it is one more device flush (about 0.04 ms here), so only when asked.
        public var syncFirst = false

        public init(
            logicalBlockSize: UInt32 = 512, readOnly: Bool = false, directIO: Bool = true,
            autoclear: Bool = false, partitionScan: Bool = false, tag: String = "", syncFirst: Bool = false
        ) {
            self.logicalBlockSize = logicalBlockSize
            self.readOnly = readOnly
            self.directIO = directIO
            self.autoclear = autoclear
            self.partitionScan = partitionScan
            self.tag = tag
            self.syncFirst = syncFirst
        }
    }

    /// Whether `LOOP_CONFIGURE` makes the backing file durable itself, so that a create need not
    /// fsync it again after binding. `loop_configure` has called `vfs_fsync` on the file, whatever
    /// the flags, since "loop: move vfs_fsync() out of loop_update_dio()" (March 2025, in 6.15 and
    /// some stable kernels before it); counted from 6.16 here, to leave no doubt. Before it, a
    /// `LOOP_CONFIGURE` that already asked for `LO_FLAGS_DIRECT_IO` did not fsync. The kernel keeps
    /// that fsync to write the page cache back before direct I/O, not for durability: Silo relies
    /// on a detail, which the power-cut test (S13) guards on the kernels it runs on.
    /// The kernel ignores that fsync's result. A page's write-back error would not reach a later
    /// fsync of Silo's either (it is reported once to the files open when it happened); a file
    /// system that is shut down or failing would, so the create skips its own fsync only where the
    /// record's fsync, on the same file system, would fail then.
    static let configureSyncsBackingFile: Bool = {
        var names = utsname()
        guard uname(&names) == 0 else { return false }
        return kernelRelease(cName(names.release), isAtLeast: (6, 16))
    }()

    /// Whether a kernel release such as `6.18.0-1-cloud-amd64` is `minimum` or newer, by its first
    /// two numbers; false for one it cannot read.
    static func kernelRelease(_ release: String, isAtLeast minimum: (major: Int, minor: Int)) -> Bool {
        var numbers: [Int] = []
        var current: Int?
        for byte in release.utf8 {
            if byte >= UInt8(ascii: "0"), byte <= UInt8(ascii: "9") {
                current = (current ?? 0) * 10 + Int(byte - UInt8(ascii: "0"))
                if current! > 1_000_000 { return false }
            } else {
                guard let number = current else { break }
                numbers.append(number)
                current = nil
                if byte != UInt8(ascii: "."), numbers.count < 2 { return false }
                if numbers.count == 2 { break }
            }
        }
        if let number = current, numbers.count < 2 { numbers.append(number) }
        guard numbers.count == 2 else { return false }
        return (numbers[0], numbers[1]) >= minimum
    }

    /// What `attach` did: the device, and whether direct I/O took.
    public struct Attachment: Sendable, Hashable {
        public let device: LoopDevice
        public let directIO: Bool
        /// For autoclear attachments: an open descriptor of the device. The device detaches when
        /// it is closed (and with it, when the process dies); the caller owns it.
        public let holder: Int32?
    }

    /// Binds `backing` to a free loop device.
    /// - Throws: `SiloError.system` when the kernel refuses; nothing stays bound then.
    public static func attach(backing: String, options: Options) throws(SiloError) -> Attachment {
        var flags = options.readOnly ? O_RDONLY : O_RDWR
        flags |= O_CLOEXEC
        var backingFD: Int32 = -1
        if options.directIO {
            backingFD = open(backing, flags | silo_O_DIRECT)
            // EINVAL: the file system refuses O_DIRECT; fall back to buffered I/O.
        }
        if backingFD < 0 {
            backingFD = try syscall("open", path: backing) { open(backing, flags) }
        }
        defer { close(backingFD) }
        return try attach(backingDescriptor: backingFD, name: backing, options: options)
    }

    /// Binds an open file, such as an unnamed `O_TMPFILE` one, to a free loop device. The
    /// descriptor's `O_DIRECT` flag decides whether direct I/O takes.
    static func attach(backingDescriptor backingFD: Int32, name backing: String, options: Options) throws(SiloError) -> Attachment {
        let direct = options.directIO && fcntl(backingFD, F_GETFL) & silo_O_DIRECT != 0

        // LOOP_CONFIGURE fsyncs the backing file while this process holds loop-control's lock,
        // which every attach waits for: a new file synced here first, outside the lock, leaves
        // that fsync nothing to write (Options.syncFirst).
        if options.syncFirst, configureSyncsBackingFile { _ = fsync(backingFD) }
        let control = try syscall("open", path: "/dev/loop-control") { open("/dev/loop-control", O_RDWR | O_CLOEXEC) }
        defer { close(control) }
        // Serialise allocation with every other process that follows the same protocol
        // (systemd, Silo); LOOP_CTL_GET_FREE itself reserves nothing.
        try syscall("flock", path: "/dev/loop-control") { flock(control, LOCK_EX) }
        defer { flock(control, LOCK_UN) }

        var attempts = 0
        while true {
            attempts += 1
            let number = Int(try syscall("LOOP_CTL_GET_FREE", path: "/dev/loop-control") {
                silo_loop_ctl_get_free(control)
            })
            let device = LoopDevice(number: number)
            let deviceFD = try syscall("open", path: device.path) { open(device.path, O_RDWR | O_CLOEXEC) }
            // An autoclear device detaches at its last close: keep this descriptor for the caller.
            var keepOpen = false
            defer { if !keepOpen { close(deviceFD) } }
            // Waited for 5 s at most: a program keeping a free device's lock (`udevadm lock`)
            // would otherwise stop this attach, and with loop-control's lock held, every other.
            try device.lock(deviceFD)
            var config = loop_config()
            config.fd = UInt32(backingFD)
            config.block_size = options.logicalBlockSize
            config.info.lo_flags = options.loopFlags(directIO: direct)
            // lo_file_name is informational (sysfs's backing_file has the real path), so it carries
            // the tag; the kernel no longer keeps lo_crypt_name.
            setName(&config.info.lo_file_name, options.tag)
            if silo_loop_configure(deviceFD, &config) != 0 {
                let error = errno
                // Bound by a process that does not lock (losetup): try the next free device.
                if error == EBUSY, attempts < 64 { continue }
                throw SiloError.system("LOOP_CONFIGURE", errno: error, path: device.path,
                                       message: describe("LOOP_CONFIGURE", path: device.path, errno: error))
            }
            do {
                let directIO = try device.verify(fd: deviceFD, backingFD: backingFD, options: options)
                keepOpen = options.autoclear
                flock(deviceFD, LOCK_UN)
                return Attachment(device: device, directIO: directIO, holder: options.autoclear ? deviceFD : nil)
            } catch {
                _ = silo_loop_clr_fd(deviceFD)
                if attempts < 64, error.code == .unexpected { continue }
                throw error
            }
        }
    }

    /// Confirms the kernel took the configuration; returns whether direct I/O is on.
    private func verify(fd: Int32, backingFD: Int32, options: Options) throws(SiloError) -> Bool {
        var info = loop_info64()
        try syscall("LOOP_GET_STATUS64", path: path) { silo_loop_get_status64(fd, &info) }
        var backing = stat()
        try syscall("fstat") { fstat(backingFD, &backing) }
        guard info.lo_inode == backing.st_ino, info.lo_device == backing.st_dev,
              cName(info.lo_file_name) == options.tag
        else {
            throw SiloError(.unexpected, "\(path) was bound to another file in the meantime", field: "device", value: path)
        }
        var blockSize: Int32 = 0
        try syscall("BLKSSZGET", path: path) { silo_blk_ssz_get(fd, &blockSize) }
        guard UInt32(blockSize) == options.logicalBlockSize else {
            throw SiloError(
                .invalidArgument,
                "\(path) took logical block size \(blockSize), not \(options.logicalBlockSize)",
                field: "blockSize", value: "\(options.logicalBlockSize)"
            )
        }
        let readOnly = info.lo_flags & silo_LO_FLAGS_READ_ONLY != 0
        guard readOnly == options.readOnly else {
            throw SiloError(.unexpected, "\(path) did not take the read-only flag", field: "readOnly", value: "\(options.readOnly)")
        }
        return info.lo_flags & silo_LO_FLAGS_DIRECT_IO != 0
    }

    /// Unbinds the device. Refuses a device in use instead of letting the kernel detach it lazily
    /// (on this kernel `LOOP_CLR_FD` on a busy device succeeds and detaches later).
    /// - Throws: `deviceInUse` when mounted, held open exclusively, or holding other devices.
    /// - Parameter tag: the owner tag the device must still carry (a LUN's): a device that no
    ///   longer does was unbound and bound again by someone else since it was looked up, and is
    ///   left alone.
    /// - Returns: whether this call unbound it (false: it was unbound already, or is someone else's now).
    @discardableResult
    public func detach(expecting tag: String? = nil) throws(SiloError) -> Bool {
        if let tag, self.tag != tag { return false }
        if let use = InUse.check(self) {
            throw SiloError(.deviceInUse, "\(path) is in use (\(use)); unmount or close it first",
                            field: "device", value: path)
        }
        return try unbind(expecting: tag)
    }

    /// `detach` without its in-use check, for a caller that made it (the lazy-detach guard stays).
    /// The tag is checked again under the device's lock, which Silo's attaches take too.
    /// The device is opened read-only: `LOOP_CLR_FD` needs no write access, and a device whose
    /// binding changed since the caller looked is never opened for writing.
    /// - Returns: whether this call unbound it (false: unbound already, or someone else's now).
    @discardableResult
    func unbind(expecting tag: String? = nil) throws(SiloError) -> Bool {
        let fd = try syscall("open", path: path) { open(path, O_RDONLY | O_CLOEXEC) }
        do throws(SiloError) {
            try lock(fd)
        } catch {
            close(fd)
            throw error
        }
        var bound = loop_info64()
        if silo_loop_get_status64(fd, &bound) != 0 || tag.map({ cName(bound.lo_file_name) != $0 }) == true {
            close(fd)  // unbound, or someone else's now
            return false
        }
        if silo_loop_clr_fd(fd) != 0 {
            let error = errno
            close(fd)
            if error == ENXIO { return false }  // not bound: nothing to do
            throw SiloError.system("LOOP_CLR_FD", errno: error, path: path,
                                   message: describe("LOOP_CLR_FD", path: path, errno: error))
        }
        // The kernel only marks the device autoclear; it unbinds at the last close. With ours the
        // only open, that is this close. With another opener it would be a silent lazy detach
        // (losetup -d exits 0 and the device stays): undo the mark and refuse.
        close(fd)
        if waitUntilUnbound() { return true }
        // Under the device's lock, and only on the same binding: the other opener may have closed
        // after the wait, and an attach bound the number again, whose autoclear is its own.
        let again = open(path, O_RDONLY | O_CLOEXEC)
        guard again >= 0 else { return true }  // the node is gone: unbound first, by our mark
        // Our mark must be taken back even if another program keeps the lock: after 5 s, unlocked
        // (the binding is compared below, so an attach's new binding is still never touched).
        _ = lockFile(again, LOCK_EX, waitingAtMost: 5000)
        var info = loop_info64()
        guard silo_loop_get_status64(again, &info) == 0, cName(info.lo_file_name) == cName(bound.lo_file_name),
              info.lo_device == bound.lo_device, info.lo_inode == bound.lo_inode else {
            // Unbound (the other opener left after the wait: our mark fired), or bound again to
            // another file by an attach since: either way this call unbound ours.
            close(again)
            return true
        }
        if bound.lo_flags & silo_LO_FLAGS_AUTOCLEAR == 0 {  // autoclear before: it stays
            info.lo_flags &= ~silo_LO_FLAGS_AUTOCLEAR
            try? setStatus(again, &info)
        }
        close(again)
        // Unbound now, with our mark taken back: someone else's detach, not this call's.
        if !fileExists("\(sysfs)/loop/backing_file") { return false }
        throw SiloError(.deviceInUse, "\(path) is held open by another process; close it first",
                        field: "device", value: path)
    }

    /// Polls sysfs briefly for the unbind that follows the last close.
    private func waitUntilUnbound() -> Bool {
        for attempt in 0..<100 {
            if !fileExists("\(sysfs)/loop/backing_file") { return true }
            usleep(attempt < 10 ? 100 : 1000)
        }
        return false
    }

    /// Re-reads the backing file's size (`LOOP_SET_CAPACITY`): how a LUN grows or shrinks online.
    /// - Parameter tag: the owner tag the device must carry, checked under the device's lock (a
    ///   device bound again by someone else since the caller looked is left alone, and the call
    ///   throws `objectDeleted`). With it, a size cap a shrink left on the device (killed between
    ///   capping it and taking the cap away) goes too: the device is its file's size.
    public func refreshCapacity(expecting tag: String? = nil) throws(SiloError) {
        guard let tag else {
            let fd = try syscall("open", path: path) { open(path, O_RDONLY | O_CLOEXEC) }
            defer { close(fd) }
            _ = try syscall("LOOP_SET_CAPACITY", path: path) { silo_loop_set_capacity(fd) }
            return
        }
        try withOwned(tag) { (fd, info) throws(SiloError) in
            if info.lo_sizelimit != 0 {
                info.lo_sizelimit = 0
                return try setStatus(fd, &info)
            }
            try syscall("LOOP_SET_CAPACITY", path: path) { silo_loop_set_capacity(fd) }
        }
    }

    /// Runs `body` with the device open (read-only: no ioctl here needs more) and locked, its
    /// status read, once the status says the device carries `tag`.
    /// - Throws: `objectDeleted` when it does not (bound again by someone else since the caller
    ///   looked, or unbound); `deviceInUse` when another program holds the device's lock for 5 s
    ///   (`udevadm lock`, a partitioning tool): every LUN call waited behind it before.
    private func withOwned(_ tag: String, _ body: (Int32, inout loop_info64) throws(SiloError) -> Void) throws(SiloError) {
        let fd = try syscall("open", path: path) { open(path, O_RDONLY | O_CLOEXEC) }
        defer { close(fd) }
        try lock(fd)
        var info = loop_info64()
        guard silo_loop_get_status64(fd, &info) == 0, cName(info.lo_file_name) == tag else {
            throw SiloError(.objectDeleted, "\(path) is no longer bound to this LUN", field: "device", value: path)
        }
        try body(fd, &info)
    }

    /// Takes the device's lock on `fd`, waiting 5 s at most.
    /// - Throws: `deviceInUse` when another program holds it all that time (`udevadm lock`, a
    ///   partitioning tool): a call waiting behind it would hang with nothing to say. A device
    ///   whose lock cannot be had at all (no flock here) is used unlocked.
    private func lock(_ fd: Int32) throws(SiloError) {
        if lockFile(fd, LOCK_EX, waitingAtMost: 5000) == EWOULDBLOCK {
            throw SiloError(.deviceInUse, "\(path) is locked by another program (its flock held for 5 s); try again",
                            field: "device", value: path)
        }
    }

    /// `LOOP_SET_STATUS64`, again while the kernel says EAGAIN (kernels that refused while the
    /// device's page cache was dirtied again under its flush; util-linux retries the same way).
    private func setStatus(_ fd: Int32, _ info: inout loop_info64) throws(SiloError) {
        for _ in 0..<50 {
            if silo_loop_set_status64(fd, &info) == 0 { return }
            if errno != EAGAIN && errno != EINTR { break }
            usleep(2000)
        }
        let error = errno
        throw SiloError.system("LOOP_SET_STATUS64", errno: error, path: path,
                               message: describe("LOOP_SET_STATUS64", path: path, errno: error))
    }

    /// Caps the device at `bytes` (`lo_sizelimit`; 0 takes the cap away, and the device is its
    /// file's size again). The kernel drains the device's I/O and drops its page cache on the way:
    /// a write past a new cap fails instead of reaching the file. How a shrink cuts the device
    /// before its file, so no write can grow the file back meanwhile.
    /// - Parameter tag: the owner tag the device must carry, checked under the device's lock: a
    ///   device bound again by someone else since the caller looked is left alone.
    /// - Throws: `objectDeleted` naming the device when it no longer carries `tag`.
    func limitSize(to bytes: UInt64, expecting tag: String) throws(SiloError) {
        try withOwned(tag) { (fd, info) throws(SiloError) in
            info.lo_sizelimit = bytes
            try setStatus(fd, &info)
        }
    }

    /// The file the device is bound to, from sysfs (one file of the six `status` reads). Nil
    /// when the device is not bound.
    public var backingFile: String? { readSmallFile("\(sysfs)/loop/backing_file") }

    /// Whether the bound device does direct I/O, from sysfs.
    var directIO: Bool? { readSmallFile("\(sysfs)/loop/dio").map { $0 == "1" } }

    /// The device's size in bytes, from sysfs (one file of the six `status` reads); 0 unbound.
    var size: UInt64? { readNumber("\(sysfs)/size").map { $0 * 512 } }

    /// The kernel's view, from sysfs. Nil when the device is not bound.
    public var status: Status? {
        guard let backing = backingFile else { return nil }
        return Status(
            backingFile: backing,
            size: size ?? 0,
            autoclear: readSmallFile("\(sysfs)/loop/autoclear") == "1",
            directIO: directIO ?? false,
            readOnly: readSmallFile("\(sysfs)/ro") == "1",
            logicalBlockSize: UInt32(readNumber("\(sysfs)/queue/logical_block_size") ?? 512)
        )
    }

    /// The owner tag set at attach (`lo_file_name`), read with `LOOP_GET_STATUS64`.
    public var tag: String? {
        let fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var info = loop_info64()
        guard silo_loop_get_status64(fd, &info) == 0 else { return nil }
        return cName(info.lo_file_name)
    }

    /// The owner tag and the backing file's device and inode, from one `LOOP_GET_STATUS64`; nil
    /// when the device is not bound. The inode is what names the file: sysfs's path is the one the
    /// kernel resolved, which need not be the path it was bound by (a link on the way).
    var binding: (tag: String, fileDevice: UInt64, inode: UInt64)? {
        (try? readBinding()) ?? nil
    }

    /// `binding`, telling an unbound device (nil: the kernel's ENXIO) from one that could not be
    /// read (a throw: no device node, EMFILE...).
    func readBinding() throws(SiloError) -> (tag: String, fileDevice: UInt64, inode: UInt64)? {
        let fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK)
        guard fd >= 0 else { throw SiloError.system("open", errno: errno, path: path) }
        defer { close(fd) }
        var info = loop_info64()
        guard silo_loop_get_status64(fd, &info) == 0 else {
            if errno == ENXIO { return nil }
            throw SiloError.system("LOOP_GET_STATUS64", errno: errno, path: path)
        }
        return (cName(info.lo_file_name), info.lo_device, info.lo_inode)
    }

    public struct Status: Sendable, Hashable {
        public let backingFile: String
        public let size: UInt64
        public let autoclear: Bool
        public let directIO: Bool
        public let readOnly: Bool
        public let logicalBlockSize: UInt32
    }

    /// Every loop device the kernel has, bound or not.
    public static func all() -> [LoopDevice] {
        (try? listed()) ?? []
    }

    /// Every loop device the kernel has; a /sys/block that cannot be read throws.
    static func listed() throws(SiloError) -> [LoopDevice] {
        try listedEntries("/sys/block").compactMap { name in
            guard name.hasPrefix("loop"), let number = Int(name.dropFirst(4)) else { return nil }
            return LoopDevice(number: number)
        }.sorted { $0.number < $1.number }
    }

    /// The numbers of the loop devices with a size: those bound, from one read of
    /// /proc/partitions, which lists no disk of size 0 (an idle loop node). A walk of /sys/block
    /// tried each node's backing_file: with 600 idle nodes on a host, every `lun delete` took 1.5 ms
    /// more. (A device bound to an empty file, or past its end, has no size and is not listed:
    /// no LUN's is so.) Nil when the table cannot be read: the caller walks every node then.
    static func boundNumbers() -> [Int]? {
        guard let table = readFile("/proc/partitions") else { return nil }
        var numbers: [Int] = []
        var lineStart = 0
        while lineStart < table.count {
            var lineEnd = lineStart
            while lineEnd < table.count, table[lineEnd] != UInt8(ascii: "\n") { lineEnd += 1 }
            // The last field: the name, as "loop12" (a partition, "loop12p1", is no device of its own).
            var nameStart = lineEnd
            while nameStart > lineStart, table[nameStart - 1] != UInt8(ascii: " ") { nameStart -= 1 }
            if lineEnd - nameStart > 4, table[nameStart] == UInt8(ascii: "l"), table[nameStart + 1] == UInt8(ascii: "o"),
               table[nameStart + 2] == UInt8(ascii: "o"), table[nameStart + 3] == UInt8(ascii: "p") {
                var number = 0
                var digits = true
                for index in (nameStart + 4)..<lineEnd {
                    let byte = table[index]
                    guard byte >= UInt8(ascii: "0"), byte <= UInt8(ascii: "9"), number < 1 << 40 else {
                        digits = false
                        break
                    }
                    number = number * 10 + Int(byte - UInt8(ascii: "0"))
                }
                if digits { numbers.append(number) }
            }
            lineStart = lineEnd + 1
        }
        return numbers
    }

    /// The bound devices whose backing file's path, as sysfs gives it, contains `text` (a LUN's
    /// id, which names its file): a look that opens no device. Each bound device's `backing_file`
    /// is read relative to one open `/sys/block` into one buffer: a thousand LUNs cost 7 ms with a
    /// path and an allocation for each. Every loop node is tried where /proc/partitions cannot be
    /// read (no descriptor left, say): a look that fails must not find nothing.
    static func bound(naming text: String) -> [LoopDevice] {
        let needle = Array(text.utf8)
        let block = open("/sys/block", O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard block >= 0 else { return [] }
        defer { close(block) }
        var matches: [LoopDevice] = []
        withUnsafeTemporaryAllocation(of: UInt8.self, capacity: 4096) { buffer in
            for number in boundNumbers() ?? all().map(\.number) {
                let fd = openat(block, "loop\(number)/loop/backing_file", O_RDONLY | O_CLOEXEC)
                guard fd >= 0 else { continue }  // not bound
                let count = read(fd, buffer.baseAddress, buffer.count)
                close(fd)
                guard count >= needle.count, !needle.isEmpty else { continue }
                let found = (0...(count - needle.count)).contains { start in
                    (0..<needle.count).allSatisfy { buffer[start + $0] == needle[$0] }
                }
                if found { matches.append(LoopDevice(number: number)) }
            }
        }
        return matches.sorted { $0.number < $1.number }
    }

    /// The bound devices whose backing file is the file at `path` (same device and inode), with
    /// their tags; empty when the file cannot be read. Only those whose path names the same file
    /// (a LUN's file name is its id) are opened: opening every bound device would wait on any
    /// of them that a configure or clear holds.
    static func bound(toFile path: String) -> [(device: LoopDevice, tag: String)] {
        guard let file = FileIdentity(path: path) else { return [] }
        return bound(naming: String(path.split(separator: "/").last ?? Substring(path))).compactMap { device in
            guard let binding = device.binding, binding.fileDevice == file.device, binding.inode == file.inode else { return nil }
            return (device, binding.tag)
        }
    }

    /// The device's `major:minor`.
    public var deviceNumber: String? { readSmallFile("\(sysfs)/dev") }
}

extension LoopDevice.Options {
    func loopFlags(directIO: Bool) -> UInt32 {
        var flags: UInt32 = 0
        if readOnly { flags |= silo_LO_FLAGS_READ_ONLY }
        if autoclear { flags |= silo_LO_FLAGS_AUTOCLEAR }
        if partitionScan { flags |= silo_LO_FLAGS_PARTSCAN }
        if directIO { flags |= silo_LO_FLAGS_DIRECT_IO }
        return flags
    }
}

/// Copies a string into a fixed C char array (64 bytes, NUL-terminated).
func setName<T>(_ field: inout T, _ value: String) {
    withUnsafeMutableBytes(of: &field) { buffer in
        buffer.initializeMemory(as: UInt8.self, repeating: 0)
        let bytes = Array(value.utf8.prefix(buffer.count - 1))
        buffer.copyBytes(from: bytes)
    }
}

func cName<T>(_ field: T) -> String {
    withUnsafeBytes(of: field) { buffer in
        let bytes = buffer.prefix { $0 != 0 }
        return String(decoding: bytes, as: UTF8.self)
    }
}
