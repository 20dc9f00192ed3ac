import CSiloLinux
import Dispatch
import Glibc
import SiloOperations
import Testing

@testable import SiloStorage

@Suite("Loop devices", .tags(.root), .requiresLoopDevices, .serialized)
struct LoopDeviceTests {
    @Test("Attach binds with the size, block size, flags and tag asked for; detach unbinds at once")
    func attachVerifyDetach() throws {
        let scratch = Scratch()
        defer { scratch.cleanup() }
        let file = scratch.path + "/a.img"
        try makeSparseFile(file, size: 64 << 20)
        let attachment = try LoopDevice.attach(
            backing: file, options: .init(logicalBlockSize: 4096, tag: "silo:test-attach")
        )
        let device = attachment.device
        var detached = false
        defer { if !detached { _ = try? device.detach() } }
        let status = try #require(device.status)
        #expect(status.backingFile == file)
        #expect(status.size == 64 << 20)
        #expect(status.logicalBlockSize == 4096)
        #expect(status.autoclear == false)
        #expect(device.tag == "silo:test-attach")
        #expect(status.directIO == attachment.directIO)
        // Where the file system takes O_DIRECT, the device runs with direct I/O (switched on after the bind).
        let probe = open(file, O_RDONLY | silo_O_DIRECT | O_CLOEXEC)
        if probe >= 0 {
            close(probe)
            #expect(attachment.directIO && status.directIO, "direct I/O is off on a file system that takes O_DIRECT")
        }
        // A detach that expects another owner's tag (the device was bound again by someone
        // else since it was looked up) leaves the device alone; so does an unbind.
        #expect(try device.detach(expecting: "silo:someone-else") == false)
        #expect(try device.unbind(expecting: "silo:someone-else") == false)
        #expect(device.status != nil, "another tag's device stays bound")
        #expect(try device.detach(expecting: "silo:test-attach"), "this call unbound it")
        detached = true
        #expect(device.status == nil, "detach must not be lazy")
        #expect(loopDevices(backedUnder: scratch.path).isEmpty)
        // Unbound already (a reenumerate's report must not claim it): says so.
        #expect(try device.unbind(expecting: "silo:test-attach") == false)
        #expect(try device.detach() == false)
    }

    @Test("The bound devices are read from /proc/partitions: a bound device is listed, an idle node is not; a device is found by its file's name")
    func boundDevices() throws {
        let scratch = Scratch()
        defer { scratch.cleanup() }
        let file = scratch.path + "/bound-by-name.img"
        try makeSparseFile(file, size: 8 << 20)
        let device = try LoopDevice.attach(backing: file, options: .init(tag: "silo:test-bound")).device
        defer { _ = try? device.detach() }
        // An idle node beside it, removed again if this test made it.
        let control = open("/dev/loop-control", O_RDWR | O_CLOEXEC)
        try #require(control >= 0)
        defer { close(control) }
        let before = Set(LoopDevice.all().map(\.number))
        let idle = ioctl(control, 0x4C82)  // LOOP_CTL_GET_FREE
        try #require(idle >= 0)
        let made = !before.contains(Int(idle))
        defer { if made { _ = ioctl(control, 0x4C81, idle) } }  // LOOP_CTL_REMOVE: an idle node of this test's
        let bound = try #require(LoopDevice.boundNumbers())
        #expect(bound.contains(device.number) && fileExists("/sys/block/\(device.path.dropFirst(5))/loop/backing_file"))
        #expect(!bound.contains(Int(idle)) && !fileExists("/sys/block/loop\(idle)/loop/backing_file"), "an idle node is not listed")
        #expect(LoopDevice.bound(naming: "bound-by-name.img") == [device])
        #expect(LoopDevice.bound(toFile: file).map(\.device) == [device])
    }

    @Test("Detach refuses a device held open by another process instead of detaching lazily")
    func detachRefusesHeldDevice() throws {
        let scratch = Scratch()
        defer { scratch.cleanup() }
        let file = scratch.path + "/b.img"
        try makeSparseFile(file, size: 8 << 20)
        let device = try LoopDevice.attach(backing: file, options: .init(tag: "silo:test-held")).device
        defer { _ = try? device.detach() }
        let holder = open(device.path, O_RDONLY | O_CLOEXEC)
        try #require(holder >= 0)
        let error = #expect(throws: SiloError.self) { try device.detach() }
        #expect(error?.code == .deviceInUse)
        #expect(device.status?.autoclear == false, "the refused detach must not leave autoclear set")
        close(holder)
        #expect(try device.detach(), "this call unbound it")
        #expect(device.status == nil)
    }

    @Test("Detach and refresh give up on a device whose lock another program keeps (5 s) with deviceInUse, and change nothing")
    func lockedDevice() throws {
        let scratch = Scratch()
        defer { scratch.cleanup() }
        let file = scratch.path + "/l.img"
        try makeSparseFile(file, size: 8 << 20)
        let device = try LoopDevice.attach(backing: file, options: .init(tag: "silo:test-locked")).device
        defer { _ = try? device.detach() }
        let holder = open(device.path, O_RDONLY | O_CLOEXEC)
        try #require(holder >= 0)
        try #require(flock(holder, LOCK_EX) == 0)
        let unbind = #expect(throws: SiloError.self) { try device.unbind(expecting: "silo:test-locked") }
        let refresh = #expect(throws: SiloError.self) { try device.refreshCapacity(expecting: "silo:test-locked") }
        close(holder)
        #expect(unbind?.code == .deviceInUse && unbind?.message.contains("locked by another program") == true, "\(String(describing: unbind))")
        #expect(refresh?.code == .deviceInUse, "\(String(describing: refresh))")
        #expect(device.status?.autoclear == false, "still bound, not marked to go")
        #expect(try device.detach(expecting: "silo:test-locked"), "free again: this call unbound it")
    }

    @Test("An attach gives up on a free device whose lock another program keeps (5 s) with deviceInUse, binding nothing (it waited for ever, holding loop-control's lock)")
    func lockedFreeDevice() throws {
        let scratch = Scratch()
        defer { scratch.cleanup() }
        let file = scratch.path + "/f.img"
        try makeSparseFile(file, size: 8 << 20)
        // The device the next attach gets (the tests run one at a time), locked as `udevadm lock` would.
        let control = open("/dev/loop-control", O_RDWR | O_CLOEXEC)
        try #require(control >= 0)
        defer { close(control) }
        let number = silo_loop_ctl_get_free(control)
        try #require(number >= 0)
        let holder = open("/dev/loop\(number)", O_RDONLY | O_CLOEXEC)
        try #require(holder >= 0)
        try #require(flock(holder, LOCK_EX) == 0)
        let refused = #expect(throws: SiloError.self) {
            let attached = try LoopDevice.attach(backing: file, options: .init(tag: "silo:test-free"))
            _ = try? attached.device.detach()  // bound after all: not left behind
        }
        close(holder)
        #expect(refused?.code == .deviceInUse && refused?.message.contains("locked by another program") == true, "\(String(describing: refused))")
        #expect(LoopDevice.bound(toFile: file).isEmpty, "nothing bound")
        #expect(flock(control, LOCK_EX | LOCK_NB) == 0, "loop-control's lock let go")
    }

    @Test("Parallel attaches from many threads never share a device")
    func parallelAttach() throws {
        let scratch = Scratch()
        defer { scratch.cleanup() }
        let count = 12
        for index in 0..<count { try makeSparseFile("\(scratch.path)/\(index).img", size: 1 << 20) }
        let devices = Recorder<(index: Int, number: Int)>()
        let errors = Recorder<String>()
        DispatchQueue.concurrentPerform(iterations: count) { index in
            do {
                let attachment = try LoopDevice.attach(backing: "\(scratch.path)/\(index).img", options: .init(tag: "silo:p\(index)"))
                devices.append((index, attachment.device.number))
            } catch {
                errors.append("\(error)")
            }
        }
        defer { for device in devices.values { _ = try? LoopDevice(number: device.number).detach() } }
        #expect(errors.values.isEmpty)
        #expect(Set(devices.values.map(\.number)).count == count)
        // Each device is bound to the file its caller asked for, with that caller's tag.
        for device in devices.values {
            let loop = LoopDevice(number: device.number)
            #expect(loop.status?.backingFile == "\(scratch.path)/\(device.index).img" && loop.tag == "silo:p\(device.index)",
                    "loop\(device.number) for \(device.index): \(String(describing: loop.status)), tag \(String(describing: loop.tag))")
        }
    }
}

@Suite("Kernel releases")
struct KernelReleaseTests {
    /// Whether a create fsyncs its backing file after binding turns on this: a release read too new
    /// would leave a create's file not durable on a kernel that does not sync it at LOOP_CONFIGURE.
    @Test("A kernel release is read by its first two numbers; one that cannot be read counts as old",
          arguments: [
              ("6.18.0-1-cloud-amd64", true), ("6.16", true), ("6.16-rc1", true), ("6.16.0", true),
              ("7.0.0", true), ("10.2.1", true), ("6.15.9", false), ("6.9", false), ("5.19.17-arch1", false),
              ("6", false), ("6-custom", false), ("", false), ("abc", false), (".6.16", false),
              ("6..16", false), ("99999999999.1", false), ("6.99999999999", false), ("6.16+", true),
              ("6.15-rc7", false), ("6.100", true),
          ] as [(String, Bool)])
    func kernelRelease(release: String, isAtLeast616: Bool) {
        #expect(LoopDevice.kernelRelease(release, isAtLeast: (6, 16)) == isAtLeast616, "\(release)")
    }

    @Test("This machine's kernel is read as the release /proc says it is")
    func thisKernel() throws {
        let release = try #require(readSmallFile("/proc/sys/kernel/osrelease"))
        let numbers = release.split(separator: ".", maxSplits: 2).prefix(2).map { Int($0.prefix { $0.isNumber }) }
        let atLeast616 = numbers.count == 2 && numbers.allSatisfy { $0 != nil } && (numbers[0]!, numbers[1]!) >= (6, 16)
        // A create leaves its backing file to LOOP_CONFIGURE's fsync exactly where this is true.
        #expect(LoopDevice.configureSyncsBackingFile == atLeast616, "\(release)")
    }

    @Test("Two paths are on one file system when their device numbers agree; not when either is missing")
    func fileSystems() {
        #expect(sameFileSystem("/proc/self", "/proc/sys"))
        #expect(!sameFileSystem("/proc/self", "/"))
        #expect(!sameFileSystem("/", "/no/such/path"))
    }
}
