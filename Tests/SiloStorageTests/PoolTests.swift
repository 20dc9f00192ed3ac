import Dispatch
import Glibc
import SiloOperations
import Synchronization
import Testing

@testable import SiloStorage

/// A drive of its own for a test: a loop device (not Silo's) over a file, with ext4 mounted.
struct TestDrive {
    let device: String
    let mountPoint: String

    init(in scratch: String, size: String = "256M") throws {
        let image = scratch + "/drive.img"
        #expect(run("/usr/bin/truncate", ["-s", size, image]).status == 0)
        let attached = run("/sbin/losetup", ["-f", "--show", image])
        try #require(attached.status == 0, "losetup: \(attached.output)")
        device = attached.output.split(separator: "\n").first.map(String.init) ?? ""
        mountPoint = scratch + "/mnt"
        mkdir(mountPoint, 0o755)
        #expect(run("/sbin/mkfs.ext4", ["-q", "-F", device]).status == 0)
        #expect(run("/bin/mount", [device, mountPoint]).status == 0)
    }

    func remove() {
        _ = run("/bin/umount", [mountPoint])
        _ = run("/sbin/losetup", ["-d", device])
    }
}

@Suite("Pools on drives", .tags(.root), .requiresLoopDevices, .serialized)
struct PoolTests {
    @Test("S13 a damaged pool list: reenumerate says so, finds an added pool's LUN by its tag, and attaches no second device to it or sweeps anything")
    func reenumerateWithDamagedPoolList() throws {
        let storage = TestStorage()
        defer { storage.finish() }
        let folder = storage.path + "/side"
        #expect(mkdir(folder, 0o755) == 0)
        _ = try storage.provider.addPool("side", directory: folder)
        let lun = try storage.provider.createLun(LunSpec(name: "aside", size: 8 << 20, pool: "side")).wait(timeout: .seconds(60))
        let device = try #require(lun.devicePath)
        try makeSparseFile(folder + "/stray.img", size: 1 << 20)
        #expect(writeFile(storage.provider.poolsFile, "{ damaged"))
        let report = try storage.provider.reenumerate().wait(timeout: .seconds(60))
        #expect(report.drift.contains { $0.contains("pool list") && $0.contains("damaged") }, "\(report.drift)")
        #expect(report.attached.isEmpty, "attached again: \(report.attached)")
        #expect(loopDevices(backedUnder: storage.path).map(\.path) == [device], "one device for the LUN")
        #expect(try storage.provider.lun(named: "aside").devicePath == device)
        #expect(report.orphanFilesRemoved.isEmpty && report.orphanDevicesDetached.isEmpty)
        #expect(fileExists(folder + "/stray.img"), "nothing is swept while the list is damaged")
        #expect(unlink(storage.provider.poolsFile) == 0)
        unlink(folder + "/stray.img")
    }

    @Test("S5 a pool on another drive: LUNs placed by drive or by name, capacity per pool, listed on its drive; S13 its orphans repaired")
    func poolOnADrive() throws {
        let storage = TestStorage()
        defer { storage.finish() }
        let drive = try TestDrive(in: storage.path)
        defer {
            // The LUNs on that drive go before it is unmounted, even when an expectation failed.
            for lun in (try? storage.provider.luns()) ?? [] { _ = try? storage.provider.deleteLun(lun.name).wait(timeout: .seconds(60)) }
            drive.remove()
        }
        let driveID = try #require(try storage.provider.drives().first { $0.devicePath == drive.device }?.id)

        let added = try storage.provider.addPool("second", directory: drive.mountPoint + "/pool")
        #expect(added.drive == driveID && added.totalBytes > 200 << 20 && added.totalBytes < 256 << 20, "\(added)")
        #expect(try storage.provider.pools().map(\.name) == ["default", "second"])

        let byDrive = try storage.provider.createLun(LunSpec(name: "placed", size: 64 << 20, drives: [driveID])).wait(timeout: .seconds(60))
        #expect(byDrive.backingFile.hasPrefix(drive.mountPoint + "/pool/"), "\(byDrive.backingFile)")
        // A drive given by its name or its device path, as `silo drive show` takes it.
        let driveName = String(drive.device.dropFirst("/dev/".count))
        for key in [driveName, drive.device] {
            let placed = try storage.provider.placement(pool: nil, drives: [key])
            #expect(placed.name == "second", "\(key): \(placed.name)")
        }
        #expect(byDrive.pool == "second")
        let byName = try storage.provider.createLun(LunSpec(name: "named", size: 16 << 20, provisioning: .thick, pool: "second"))
            .wait(timeout: .seconds(60))
        #expect(byName.backingFile.hasPrefix(drive.mountPoint + "/pool/"))
        let home = try storage.create("home", size: 8 << 20)
        #expect(home.pool == "default" && !home.backingFile.hasPrefix(drive.mountPoint))

        // Capacity is the pool's own: a thick LUN larger than that file system is refused there.
        let tooBig = #expect(throws: SiloError.self) {
            _ = try storage.provider.createLun(LunSpec(name: "big", size: 300 << 20, provisioning: .thick, pool: "second"))
        }
        #expect(tooBig?.code == .notEnoughSpace && tooBig?.message.contains("second") == true)
        #expect(try storage.provider.maximumLunSize(provisioning: .thin, pool: "second") < 1100 << 20)

        let listed = try #require(try storage.provider.drives().first { $0.id == driveID })
        #expect(listed.pools == ["second"] && listed.pool == drive.mountPoint + "/pool")
        #expect(listed.extents.count == 2, "the two LUNs' files are on this drive: \(listed.extents)")
        #expect(try storage.provider.pools().first { $0.name == "second" }?.luns == 2)

        // An orphan file in the second pool is found by reenumerate.
        let orphan = drive.mountPoint + "/pool/00000000-0000-0000-0000-000000000000.img"
        close(open(orphan, O_WRONLY | O_CREAT, 0o600))
        let report = try storage.provider.reenumerate().wait(timeout: .seconds(60))
        #expect(report.orphanFilesRemoved == [orphan])

        let busy = #expect(throws: SiloError.self) { try storage.provider.removePool("second") }
        #expect(busy?.code == .deviceInUse && busy?.message.contains("named") == true)
        try storage.provider.deleteLun("placed").wait(timeout: .seconds(60))
        try storage.provider.deleteLun("named").wait(timeout: .seconds(60))
        try storage.provider.removePool("second")
        #expect(try storage.provider.pools().map(\.name) == ["default"])
        #expect(try storage.provider.drives().first { $0.id == driveID }?.pools.isEmpty == true)
        #expect(loopDevices(backedUnder: drive.mountPoint).isEmpty)
    }

    @Test("S5 a pool whose file system is not mounted (its folder without its marker) takes no LUN: nothing lands on the file system under it")
    func poolNotMounted() throws {
        let storage = TestStorage()
        defer { storage.finish() }
        let mountPoint = storage.path + "/big"
        mkdir(mountPoint, 0o755)
        try #require(mount("tmpfs", mountPoint, "tmpfs", 0, "size=64m") == 0, "tmpfs: errno \(errno)")
        var mounted = true
        defer { if mounted { umount2(mountPoint, Int32(MNT_DETACH)) } }
        _ = try storage.provider.addPool("big", directory: mountPoint + "/pool")
        _ = try storage.create("source", size: 1 << 20)
        // The mount gone (a reboot where it failed): the folder under it is the parent's own.
        #expect(umount2(mountPoint, 0) == 0)
        mounted = false
        mkdir(mountPoint + "/pool", 0o755)
        defer { rmdir(mountPoint + "/pool") }
        let refused = #expect(throws: SiloError.self) { _ = try storage.provider.createLun(LunSpec(name: "lost", size: 1 << 20, pool: "big")) }
        #expect(refused?.code == .invalidOperation && refused?.field == "pool" && refused?.message.contains("mounted") == true,
                "\(String(describing: refused))")
        #expect(directoryEntries(mountPoint + "/pool").isEmpty, "nothing made under the mount point")
        #expect(try storage.provider.luns().map(\.name) == ["source"])
        // Nor does reenumerate mark the folder as the pool (after which creates would land there).
        let report = try storage.provider.reenumerate().wait(timeout: .seconds(60))
        #expect(report.drift.contains { $0.contains("pool 'big'") && $0.contains("mounted") }, "\(report.drift)")
        #expect(directoryEntries(mountPoint + "/pool").isEmpty, "no marker written under the mount point")
        #expect((#expect(throws: SiloError.self) { _ = try storage.provider.createLun(LunSpec(name: "lost", size: 1 << 20, pool: "big")) })?.code
                == .invalidOperation)
    }

    @Test("S5 a pool removed while a create that chose it waits for the registry lock: the create is refused, and no LUN sits in an unlisted folder")
    func poolRemovedUnderCreate() throws {
        let storage = TestStorage()
        defer { storage.finish() }
        let folder = storage.path + "/side"
        mkdir(folder, 0o700)
        _ = try storage.provider.addPool("side", directory: folder)
        let configuration = storage.provider.configuration
        // The registry lock, held here, as a removePool holds it; the create picks the pool, then waits.
        let lock = open(configuration.lockFile, O_RDWR | O_CLOEXEC)
        try #require(lock >= 0 && flock(lock, LOCK_EX) == 0)
        var held = true
        defer { if held { close(lock) } }  // a failed requirement must not leave the create waiting
        let refused = Mutex<SiloError?>(nil)
        let done = DispatchSemaphore(value: 0)
        let provider = storage.provider
        DispatchQueue.global().async {
            do throws(SiloError) {
                _ = try provider.createLun(LunSpec(name: "late", size: 8 << 20, pool: "side")).wait(timeout: .seconds(60))
            } catch {
                refused.withLock { $0 = error }
            }
            done.signal()
        }
        #expect(eventually { waitsForFlock(getpid()) }, "the create waits for the lock, its pool chosen")
        // What removePool does under the lock: the list without the pool. The create's capacity
        // check, under the lock, looks the pool up again by name.
        try #require(unlink(configuration.stateDirectory + "/pools.json") == 0)
        close(lock)
        held = false
        #expect(done.wait(timeout: .now() + 60) == .success)
        let error = refused.withLock { $0 }
        #expect(error?.code == .objectNotFound && error?.field == "pool", "\(String(describing: error))")
        #expect(directoryEntries(folder).filter { $0.hasSuffix(".img") }.isEmpty, "no LUN file in the unlisted folder")
        #expect((try? storage.provider.lun(named: "late")) == nil)
    }

    @Test("S5 S13 a pool added on a folder with a user's files: they are never counted as promised, never swept as orphans; a folder with files named like a LUN's is refused")
    func poolOnAFolderWithOtherFiles() throws {
        let storage = TestStorage()
        defer { storage.finish() }
        let folder = storage.path + "/images"
        #expect(mkdir(folder, 0o755) == 0)
        let userFiles = ["disk.img", "vm-01.img", "notes.txt"]
        for file in userFiles { try makeSparseFile(folder + "/" + file, size: 64 << 20) }
        _ = try storage.provider.addPool("images", directory: folder)
        #expect(try storage.provider.pools().first { $0.name == "images" }?.promisedBytes == 0, "the user's 192 MiB is no LUN's")
        let lun = try storage.provider.createLun(LunSpec(name: "mine", size: 8 << 20, pool: "images")).wait(timeout: .seconds(60))
        #expect(try storage.provider.pools().first { $0.name == "images" }?.promisedBytes == 8 << 20)
        let report = try storage.provider.reenumerate().wait(timeout: .seconds(60))
        #expect(report.orphanFilesRemoved.isEmpty, "\(report.orphanFilesRemoved)")
        for file in userFiles { #expect(fileExists(folder + "/" + file), "\(file) is the user's") }
        try storage.provider.deleteLun(lun.name).wait(timeout: .seconds(60))
        try storage.provider.removePool("images")

        // Files named as Silo names backing files, with no marker: another state directory's.
        let other = storage.path + "/leftovers"
        #expect(mkdir(other, 0o755) == 0)
        let foreign = other + "/0f0e0d0c-0b0a-4908-8706-050403020100.img"
        try makeSparseFile(foreign, size: 1 << 20)
        let refused = #expect(throws: SiloError.self) { _ = try storage.provider.addPool("leftovers", directory: other) }
        #expect(refused?.field == "directory" && refused?.message.contains("0f0e0d0c") == true, "\(String(describing: refused))")
        #expect(try storage.provider.pools().map(\.name) == ["default"] && fileExists(foreign))
        #expect(access(other + "/" + StorageProvider.poolMarker, F_OK) != 0, "not claimed")

        // A refused add removes the folders it made.
        let deep = storage.path + "/new/deeper"
        // (The new pool list cannot be written, after the folders are made: a folder stands where
        // its temporary file goes. The list itself stays readable, so the add gets that far.)
        let temporary = storage.provider.poolsFile + ".\(getpid()).tmp"
        #expect(mkdir(temporary, 0o755) == 0)
        let unsaved = #expect(throws: SiloError.self) { _ = try storage.provider.addPool("deep", directory: deep) }
        #expect(unsaved?.syscall == "open" && unsaved?.errno == EISDIR && unsaved?.message.contains(temporary) == true,
                "the add failed writing the list, after it made the folders: \(String(describing: unsaved))")
        #expect(access(storage.path + "/new", F_OK) != 0, "the folders the refused add made are gone")
        #expect(access(deep + "/" + StorageProvider.poolMarker, F_OK) != 0)
        #expect(rmdir(temporary) == 0)
        #expect(try storage.provider.pools().map(\.name) == ["default"])
    }

    @Test("S5 E1 pools refuse bad input: names, relative or overlapping folders, unknown pools and drives, drives without a pool")
    func badInput() throws {
        let storage = TestStorage()
        defer { storage.finish() }
        let state = storage.provider.configuration.stateDirectory
        let cases: [(() throws -> Void, String)] = [
            ({ _ = try storage.provider.addPool("../x", directory: storage.path + "/p") }, "pool"),
            ({ _ = try storage.provider.addPool("p", directory: "relative/p") }, "directory"),
            ({ _ = try storage.provider.addPool("p", directory: storage.path + "/a/../b") }, "directory"),
            ({ _ = try storage.provider.addPool("p", directory: state + "/pool/inner") }, "directory"),
            ({ _ = try storage.provider.addPool("default", directory: storage.path + "/p") }, "pool"),
            ({ try storage.provider.removePool("default") }, "pool"),
            ({ try storage.provider.removePool("nope") }, "pool"),
            ({ _ = try storage.provider.createLun(LunSpec(name: "x", size: 1 << 20, pool: "nope")) }, "pool"),
            ({ _ = try storage.provider.createLun(LunSpec(name: "x", size: 1 << 20, drives: ["no-such-drive"])) }, "drive"),
        ]
        for (call, field) in cases {
            let error = #expect(throws: SiloError.self) { try call() }
            #expect(error?.field == field, "\(String(describing: error?.message))")
        }
        // A real drive without a pool (a loop device of the test's own): the error says which
        // drives have one.
        try makeSparseFile(storage.path + "/poolless.img", size: 8 << 20)
        let poolless = run("/sbin/losetup", ["-f", "--show", "--read-only", storage.path + "/poolless.img"]).output.trimmingSpaces
        try #require(poolless.hasPrefix("/dev/loop"))
        defer { _ = run("/sbin/losetup", ["-d", poolless]) }
        let other = try #require(try storage.provider.drives().first { $0.devicePath == poolless })
        #expect(other.pools.isEmpty)
        let error = #expect(throws: SiloError.self) {
            _ = try storage.provider.createLun(LunSpec(name: "x", size: 1 << 20, drives: [other.id]))
        }
        #expect(error?.field == "drive" && error?.message.contains("drives with pools") == true, "\(String(describing: error?.message))")
        #expect(try storage.provider.pools().map(\.name) == ["default"])
        #expect(try storage.provider.luns().isEmpty)
        #expect(access(storage.path + "/p", F_OK) != 0, "nothing made")
    }

    @Test("S13 a pool is one state directory's: another cannot add it, and its reenumerate leaves the files there alone")
    func poolsBelongToOneStateDirectory() throws {
        let first = TestStorage()
        defer { first.finish() }
        let second = TestStorage()
        defer { second.finish() }
        let shared = first.path + "/shared"
        _ = try first.provider.addPool("shared", directory: shared)
        let lun = try first.provider.createLun(LunSpec(name: "theirs", size: 4 << 20, pool: "shared")).wait(timeout: .seconds(60))
        let home = try first.create("home", size: 4 << 20)
        for directory in [shared, shared + "/inner", first.path + "/state/pool"] {
            let refused = #expect(throws: SiloError.self) { _ = try second.provider.addPool("taken", directory: directory) }
            #expect(refused?.code == .invalidArgument && refused?.message.contains(first.path + "/state") == true,
                    "\(directory): \(String(describing: refused?.message))")
        }
        #expect(try second.provider.pools().map(\.name) == ["default"], "nothing added")
        // The same state folder reached another way (a link to it) is still the owner, and its
        // LUNs' files are no orphans of it, though their records spell their paths otherwise.
        #expect(symlink(first.path + "/state", first.path + "/state-link") == 0)
        let sameFolder = StorageProvider(configuration: StorageConfiguration(stateDirectory: first.path + "/state-link"))
        let again = try sameFolder.reenumerate().wait(timeout: .seconds(60))
        #expect(!again.drift.contains { $0.contains("is a pool of") } && again.orphanFilesRemoved.isEmpty, "\(again)")

        // A list that names the first's pool anyway (written by hand, or before pools were marked):
        // the second's reenumerate reports it and removes none of its files, nor detaches their
        // devices; and puts no LUN of its own there.
        #expect(writeFile(second.path + "/state/pools.json", #"[{"directory":"\#(shared)","name":"shared"}]"#))
        let report = try second.provider.reenumerate().wait(timeout: .seconds(60))
        #expect(report.orphanFilesRemoved.isEmpty && fileExists(lun.backingFile) && fileExists(home.backingFile), "\(report)")
        #expect(report.orphanDevicesDetached.isEmpty, "\(report.orphanDevicesDetached)")
        #expect(try first.provider.lun(named: "theirs").devicePath == lun.devicePath, "the first's LUN keeps its device")
        #expect(report.drift.contains { $0.contains(shared) && $0.contains(first.path + "/state") }, "\(report.drift)")
        let placed = #expect(throws: SiloError.self) { _ = try second.provider.createLun(LunSpec(name: "intruder", size: 1 << 20, pool: "shared")) }
        #expect(placed?.code == .invalidOperation && placed?.field == "pool" && placed?.message.contains(first.path + "/state") == true,
                "\(String(describing: placed))")
        #expect(directoryEntries(shared).filter(StorageProvider.isBackingFileName).count == 1, "no file of the second's in it")
        #expect(writeFile(second.path + "/state/pools.json", "[]"))

        // Its own pool by another path (a link to it) is that pool already.
        #expect(symlink(shared, first.path + "/shared-link") == 0)
        let again2 = #expect(throws: SiloError.self) { _ = try first.provider.addPool("twice", directory: first.path + "/shared-link") }
        #expect(again2?.message.contains("a pool of this state directory already") == true, "\(String(describing: again2?.message))")

        // Removed from the first's list, the folder is free for another.
        try first.provider.deleteLun("theirs").wait(timeout: .seconds(30))
        try first.provider.removePool("shared")
        _ = try second.provider.addPool("shared", directory: shared)
        #expect(StorageProvider.poolOwner(of: shared) == second.path + "/state")
    }

    @Test("E1 S13 a damaged pool list is refused by the changes to it, never written over")
    func damagedPoolList() throws {
        let storage = TestStorage()
        defer { storage.finish() }
        _ = try storage.provider.addPool("first", directory: storage.path + "/first")
        let file = storage.provider.configuration.stateDirectory + "/pools.json"
        let damaged = Array(#"[{"name": "first", "directory": "#.utf8)
        let fd = open(file, O_WRONLY | O_TRUNC | O_CLOEXEC)
        try #require(fd >= 0)
        _ = damaged.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        close(fd)
        for call in [{ _ = try storage.provider.addPool("second", directory: storage.path + "/second") },
                     { try storage.provider.removePool("first") }] as [() throws -> Void] {
            let error = #expect(throws: SiloError.self) { try call() }
            #expect(error?.code == .invalidJSON && error?.field == "pool list", "\(String(describing: error?.message))")
        }
        #expect(readFile(file) == damaged, "the damaged list is left as it was")
        #expect(access(storage.path + "/second", F_OK) != 0, "nothing made")
    }
}
