import Glibc
import SiloOperations
import Testing

@testable import SiloStorage

/// What a power cut keeps (S13): the file system holding a state directory is shut down the way
/// a power loss would leave it, with nothing written that was not synced (EXT4_IOC_SHUTDOWN with
/// NOLOGFLUSH, as xfstests' godown does), then mounted again.
@Suite("Durability", .tags(.root), .requiresLoopDevices, .serialized)
struct DurabilityTests {
    /// _IOR('X', 125, __u32) and EXT4_GOING_FLAGS_NOLOGFLUSH.
    static let ext4Shutdown: UInt = 0x8004_587D
    static let noLogFlush: UInt32 = 2

    /// Shuts the ext4 mounted at `mountPoint` down as a power cut would leave it: nothing more
    /// reaches its disk, and every call on it fails (EIO) from now on.
    static func shutDown(_ mountPoint: String) throws {
        let root = open(mountPoint, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        try #require(root >= 0)
        var flags = noLogFlush
        let shutdown = ioctl(root, ext4Shutdown, &flags)
        close(root)
        try #require(shutdown == 0, "EXT4_IOC_SHUTDOWN: errno \(errno)")
    }

    /// Direct and buffered. On Linux 6.16 and later (this machine's 6.18, which `thisKernel` checks
    /// is read so) `LOOP_CONFIGURE` fsyncs the backing file, and for a direct-I/O device on the
    /// registry's file system the create's `sync` step leaves it at that
    /// (`configureSyncsBackingFile`): the direct case's file at its size after the cut is what
    /// shows the kernel did. The step syncs a buffered device's file, and every file on earlier
    /// kernels. The record's fsyncs are what keep the record.
    @Test("S13 a LUN create returned is on disk after a power cut: its record, and its backing file at its size",
          arguments: [true, false])
    func createSurvivesPowerCut(directIO: Bool) throws {
        let storage = TestStorage()
        defer { storage.finish() }
        // No journal: what is on disk is exactly what was synced (a journal's commit would also
        // carry other changes of the moment along with the ones synced).
        let disk = try #require(try storage.create("disk", size: 64 << 20).devicePath)
        #expect(run("/sbin/mkfs.ext4", ["-q", "-F", "-O", "^has_journal", disk]).status == 0)
        let mountPoint = storage.path + "/mnt"
        mkdir(mountPoint, 0o755)
        try #require(run("/bin/mount", [disk, mountPoint]).status == 0)
        // Whatever fails below: the inner LUN's device goes, then the mount (finish() then
        // deletes the disk).
        var device: String?
        let inner = StorageProvider(configuration: StorageConfiguration(stateDirectory: mountPoint + "/state"))
        defer {
            if let device { _ = run("/sbin/losetup", ["-d", device]) }
            _ = run("/bin/umount", [mountPoint])
            // Its stable name, in /dev (the power cut left no Silo to remove it).
            if let names = inner.configuration.linkTarget { _ = run("/bin/rm", ["-rf", names]) }
        }
        let made = try inner.createLun(LunSpec(name: "inner", size: 8 << 20, directIO: directIO)).wait(timeout: .seconds(60))
        let file = made.backingFile
        device = made.devicePath
        try #require(device != nil)

        // The power cut, right after the create returned: nothing more reaches the disk's file
        // (an unmount would still write the block device's dirty buffers, so the disk is read
        // from its backing file, as it is now).
        try Self.shutDown(mountPoint)
        let image = storage.path + "/after-power-cut.img"
        #expect(run("/bin/cp", ["--sparse=always", try storage.provider.lun(named: "disk").backingFile, image]).status == 0)

        let inside = String(file.dropFirst(mountPoint.count))
        let record = run("/sbin/debugfs", ["-R", "cat /state/luns/inner.json", image])
        #expect(record.status == 0 && record.output.contains(file), "the record survived: \(record.output)")
        let backing = run("/sbin/debugfs", ["-R", "stat \(inside)", image])
        #expect(backing.output.contains("Size: \(8 << 20)"), "the backing file the record names survived, at its size: \(backing.output)")
    }

    @Test("S9 a device that cannot be read is taken to be full to its end: a shrink's guard does not read a read error as nothing there")
    func unreadableDeviceIsFull() throws {
        let storage = TestStorage()
        defer { storage.finish() }
        let disk = try #require(try storage.create("disk", size: 64 << 20).devicePath)
        #expect(run("/sbin/mkfs.ext4", ["-q", "-F", disk]).status == 0)
        let mountPoint = storage.path + "/mnt"
        mkdir(mountPoint, 0o755)
        try #require(run("/bin/mount", [disk, mountPoint]).status == 0)
        var device: String?
        defer {
            if let device { _ = run("/sbin/losetup", ["-d", device]) }
            _ = run("/bin/umount", [mountPoint])
        }
        let image = mountPoint + "/image"
        try makeSparseFile(image, size: 8 << 20)
        device = run("/sbin/losetup", ["-f", "--show", image]).output.trimmingSpaces
        let loop = try #require(device)
        #expect(try BlockProbe.probe(path: loop).dataEnd(deviceSize: 8 << 20) == 0, "an empty device ends nowhere")
        // The file system under the device goes away: every read of the device fails (EIO).
        try Self.shutDown(mountPoint)
        _ = run("/sbin/blockdev", ["--flushbufs", loop])
        let unreadable = try BlockProbe.probe(path: loop)
        #expect(unreadable.ambiguous, "\(unreadable)")
        #expect(unreadable.dataEnd(deviceSize: 8 << 20) == 8 << 20, "a read error is no empty device")
    }
}
