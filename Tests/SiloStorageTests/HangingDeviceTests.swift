import Dispatch
import Glibc
import SiloOperations
import Synchronization
import Testing

@testable import SiloStorage

/// A FUSE file system (the kernel's, through /dev/fuse, answered here) holding one 16 MiB file
/// whose reads are never answered: a loop device over it is a block device whose reads never
/// return, as a suspended device-mapper table's or a network disk's whose server went.
final class HangingFileSystem: @unchecked Sendable {
    let mountPoint: String
    var file: String { mountPoint + "/disk" }
    private let device: Int32
    private let stop = Atomic<Bool>(false)
    private let stopped = DispatchSemaphore(value: 0)
    /// Fired at the first read the kernel asks for (the one never answered).
    let readAsked = DispatchSemaphore(value: 0)
    private let reads = Atomic<Int>(0)

    init(mountPoint: String) throws {
        self.mountPoint = mountPoint
        mkdir(mountPoint, 0o755)
        device = open("/dev/fuse", O_RDWR | O_CLOEXEC)
        guard device >= 0 else { throw SiloError.system("open", errno: errno, path: "/dev/fuse") }
        let options = "fd=\(device),rootmode=40000,user_id=0,group_id=0,allow_other"
        guard mount("silo-hanging", mountPoint, "fuse", UInt(MS_NOSUID | MS_NODEV), options) == 0 else {
            let error = errno
            close(device)
            throw SiloError.system("mount(fuse)", errno: error, path: mountPoint)
        }
        guard PlatformThread.spawn({ [self] in serve() }) else {
            umount2(mountPoint, Int32(MNT_DETACH))
            close(device)
            throw SiloError.system("thread", errno: EAGAIN)
        }
    }

    /// Ends the file system: its device closed (which fails every request still waiting, the
    /// unanswered reads included, so whatever waited on them goes on), then unmounted.
    func finish() {
        stop.store(true, ordering: .relaxed)
        _ = stopped.wait(timeout: .now() + 10)
        umount2(mountPoint, Int32(MNT_DETACH))
        rmdir(mountPoint)
    }

    private func serve() {
        var buffer = [UInt8](repeating: 0, count: 1 << 20 + 4096)
        while !stop.load(ordering: .relaxed) {
            var ready = pollfd(fd: device, events: Int16(POLLIN), revents: 0)
            guard poll(&ready, 1, 100) > 0 else { continue }
            let count = buffer.withUnsafeMutableBytes { read(device, $0.baseAddress, $0.count) }
            if count < 0, errno == EINTR || errno == EAGAIN || errno == ENOENT { continue }
            guard count >= 40 else { break }  // the connection went
            answer(Array(buffer[0..<count]))
        }
        close(device)  // the last descriptor of the connection: the kernel aborts it
        stopped.signal()
    }

    private func answer(_ request: [UInt8]) {
        func u32(_ at: Int) -> UInt32 { request[at..<(at + 4)].enumerated().reduce(0) { $0 | UInt32($1.element) << (8 * $1.offset) } }
        func u64(_ at: Int) -> UInt64 { request[at..<(at + 8)].enumerated().reduce(0) { $0 | UInt64($1.element) << (8 * $1.offset) } }
        let opcode = u32(4), unique = u64(8), node = u64(16)
        switch opcode {
        case 2, 42, 36: return  // FORGET, BATCH_FORGET, INTERRUPT: no reply
        case 26:  // INIT: 7.x, as the kernel asks; reads asynchronous (FUSE_ASYNC_READ): a reader
            // then waits on the page killably, so that this process, killed while a probe waits
            // on this server, can still exit (a synchronous read's wait is not killable once this
            // server took the request, and the server is this process)
            var body = Bytes()
            body.u32(7); body.u32(min(u32(44), 38)); body.u32(0); body.u32(1)
            body.u16(16); body.u16(12); body.u32(4096); body.u32(1); body.u16(0); body.u16(0); body.u32(0)
            body.zeros(64 - body.count)
            reply(unique, error: 0, body.bytes)
        case 1:  // LOOKUP: only "disk", node 2
            let name = String(decoding: request[40...].prefix { $0 != 0 }, as: UTF8.self)
            guard node == 1, name == "disk" else { return reply(unique, error: -ENOENT, []) }
            var body = Bytes()
            body.u64(2); body.u64(0); body.u64(60); body.u64(60); body.u32(0); body.u32(0)
            body.append(attributes(of: 2))
            reply(unique, error: 0, body.bytes)
        case 3:  // GETATTR
            var body = Bytes()
            body.u64(60); body.u32(0); body.u32(0)
            body.append(attributes(of: node))
            reply(unique, error: 0, body.bytes)
        case 14, 27:  // OPEN, OPENDIR: with FOPEN_NOFLUSH, whose close asks this server nothing
            // (a close at this process's exit would wait for this server's answer for good)
            var body = Bytes()
            body.u64(1); body.u32(1 << 5); body.u32(0)
            reply(unique, error: 0, body.bytes)
        case 15:  // READ: never answered
            if reads.add(1, ordering: .relaxed).oldValue == 0 { readAsked.signal() }
        case 18, 25, 29, 34, 20:  // RELEASE, FLUSH, RELEASEDIR, ACCESS, FSYNC
            reply(unique, error: 0, [])
        default:
            reply(unique, error: -ENOSYS, [])
        }
    }

    /// fuse_attr: the root folder (node 1) or the 16 MiB file (node 2).
    private func attributes(of node: UInt64) -> Bytes {
        var attr = Bytes()
        let size: UInt64 = node == 1 ? 0 : 16 << 20
        attr.u64(node); attr.u64(size); attr.u64(size / 512)
        attr.u64(0); attr.u64(0); attr.u64(0); attr.u32(0); attr.u32(0); attr.u32(0)
        attr.u32(node == 1 ? UInt32(S_IFDIR) | 0o755 : UInt32(S_IFREG) | 0o644)
        attr.u32(node == 1 ? 2 : 1); attr.u32(0); attr.u32(0); attr.u32(0); attr.u32(4096); attr.u32(0)
        return attr
    }

    private func reply(_ unique: UInt64, error: Int32, _ body: [UInt8]) {
        var header = Bytes()
        header.u32(UInt32(16 + body.count)); header.u32(UInt32(bitPattern: error)); header.u64(unique)
        let packet = header.bytes + body
        _ = packet.withUnsafeBytes { write(device, $0.baseAddress, $0.count) }
    }
}

/// Whether /dev/fuse opens (a node without the module loaded says ENODEV).
let fuseAvailable: Bool = {
    let fd = open("/dev/fuse", O_RDWR | O_CLOEXEC)
    if fd >= 0 { close(fd) }
    return fd >= 0
}()

/// Little-endian fields, appended.
struct Bytes {
    var bytes: [UInt8] = []
    var count: Int { bytes.count }
    mutating func u16(_ value: UInt16) { bytes += [UInt8(value & 0xff), UInt8(value >> 8)] }
    mutating func u32(_ value: UInt32) { for shift in stride(from: 0, to: 32, by: 8) { bytes.append(UInt8((value >> UInt32(shift)) & 0xff)) } }
    mutating func u64(_ value: UInt64) { for shift in stride(from: 0, to: 64, by: 8) { bytes.append(UInt8((value >> UInt64(shift)) & 0xff)) } }
    mutating func zeros(_ count: Int) { bytes += [UInt8](repeating: 0, count: max(0, count)) }
    mutating func append(_ other: Bytes) { bytes += other.bytes }
}

@Suite("A device whose reads never return", .tags(.root), .requiresLoopDevices, .serialized,
       .enabled(if: fuseAvailable, "needs FUSE (/dev/fuse that opens) to make a file whose reads never return"))
struct HangingDeviceTests {
    @Test("S1 a drive whose reads never return is listed without its probe's findings once the probe timeout passes; the listing does not wait for it", .timeLimit(.minutes(3)))
    func driveListDoesNotHang() throws {
        let storage = TestStorage()
        defer { storage.finish() }
        let filesystem = try HangingFileSystem(mountPoint: storage.path + "/hanging")
        var attachedDevice: String?
        defer {
            // The file system first: its end fails the waiting reads, which a detach waits out.
            filesystem.finish()
            if let attachedDevice { _ = run("/sbin/losetup", ["-d", attachedDevice]) }
        }
        // Another tool's loop device over the file (read-only: nothing is written to it).
        let attached = run("/sbin/losetup", ["--find", "--show", "--read-only", filesystem.file])
        let device = attached.output.trimmingSpaces
        try #require(attached.status == 0 && device.hasPrefix("/dev/loop"), "losetup: \(attached.output)")
        attachedDevice = device

        let provider = StorageProvider(configuration: StorageConfiguration(
            stateDirectory: storage.provider.configuration.stateDirectory, probeTimeout: .seconds(3)))
        let listed = DispatchSemaphore(value: 0)
        let drives = Mutex<[Drive]?>(nil)
        let started = ContinuousClock.now
        try #require(PlatformThread.spawn {
            // Listed outside the lock: were the listing to hang, the checks below must still run,
            // and the file system end (its end fails the waiting reads; a process killed with one
            // of its threads waiting on its own FUSE server would never exit).
            let found = try? provider.drives()
            drives.withLock { $0 = found }
            listed.signal()
        })
        #expect(filesystem.readAsked.wait(timeout: .now() + 60) == .success, "the probe asked the file system for a read")
        #expect(listed.wait(timeout: .now() + 60) == .success, "the listing waited for the device's reads")
        let elapsed = ContinuousClock.now - started
        let found = drives.withLock { $0 }?.first { $0.devicePath == device }
        #expect(found != nil, "the device is listed: \(drives.withLock { $0 }?.map(\.devicePath) ?? [])")
        #expect(found?.size == 16 << 20 && found?.filesystemType == nil, "without what its probe would find")
        #expect(elapsed >= .seconds(3), "the probe had its time: \(elapsed)")
        // The listing ended once the probe timeout passed, not when some later bound gave up.
        #expect(elapsed < .seconds(13), "the listing waited past the probe timeout: \(elapsed)")
        // A second listing meanwhile starts no second probe of the device still being read: one
        // would wait the probe timeout out again.
        let secondStart = ContinuousClock.now
        let again = try provider.drives()
        let second = ContinuousClock.now - secondStart
        #expect(again.contains { $0.devicePath == device && $0.filesystemType == nil })
        #expect(second < .seconds(2), "the second listing waited for a second probe of the device: \(second)")
    }
}
