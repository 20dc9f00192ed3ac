import Glibc
import SiloOperations
import Testing

@testable import SiloStorage

@Suite("Clones", .tags(.root), .requiresLoopDevices, .serialized)
struct CloneTests {
    @Test("A clone holds the source's data, stays sparse, and is independent of it")
    func sparseCopy() throws {
        let storage = TestStorage()
        defer { storage.finish() }
        let source = try storage.create("origin", size: 256 << 20)
        let device = try #require(source.devicePath)
        let marks: [(UInt64, [UInt8])] = [(0, [1, 2, 3]), (100 << 20, [4, 5, 6]), ((256 << 20) - 4096, [7, 8, 9])]
        for (offset, bytes) in marks { try writeBytes(device, offset: offset, bytes) }
        let clone = try storage.provider.cloneLun("origin", as: "copy").wait(timeout: .seconds(120))
        let copy = try #require(clone.devicePath)
        #expect(clone.size == source.size)
        #expect(copy != device)
        for (offset, bytes) in marks { #expect(try readBytes(copy, offset: offset, count: bytes.count) == bytes) }
        #expect(clone.allocatedBytes < 8 << 20, "holes stay holes: \(clone.allocatedBytes)")
        try writeBytes(copy, offset: 0, [42])
        #expect(try readBytes(device, offset: 0, count: 1) == [1])
        #expect(clone.unmaskingList == "")
        let taken = #expect(throws: SiloError.self) { _ = try storage.provider.cloneLun("origin", as: "copy") }
        #expect(taken?.code == .invalidArgument && taken?.field == "name" && taken?.value == "copy", "\(String(describing: taken))")
        #expect((#expect(throws: SiloError.self) { _ = try storage.provider.cloneLun("nothing", as: "x") })?.code == .objectNotFound)
    }

    @Test("A clone holds what was written through the source's device moments ago and still sits in its page cache (the device held open)")
    func cloneSeesCachedWrites() throws {
        let storage = TestStorage()
        defer { storage.finish() }
        let source = try storage.create("cached", size: 16 << 20)
        let device = try #require(source.devicePath)
        // Held open, as a mount or a system would: the last close would flush the cache itself.
        let fd = open(device, O_RDWR | O_CLOEXEC)
        try #require(fd >= 0)
        defer { close(fd) }
        let pattern = [UInt8](repeating: 0xA5, count: 4096)
        #expect(pwrite(fd, pattern, pattern.count, 1 << 20) == pattern.count)  // buffered: no fsync
        let clone = try storage.provider.cloneLun("cached", as: "cached-copy").wait(timeout: .seconds(120))
        #expect(try readBytes(clone.backingFile, offset: 1 << 20, count: 4096) == pattern, "the clone's file has the write")
    }

    @Test("S5 a clone keeps its source's provisioning: a thick clone is given all its space, a thin one counts against the overcommit ratio")
    func cloneProvisioning() throws {
        let storage = TestStorage(overcommit: 1)
        defer { storage.finish() }
        let thick = try storage.create("thick", size: 32 << 20, provisioning: .thick)
        try writeBytes(try #require(thick.devicePath), offset: 4096, [1, 2, 3])
        let copy = try storage.provider.cloneLun("thick", as: "thick-copy").wait(timeout: .seconds(120))
        #expect(copy.provisioning == .thick)
        #expect(copy.allocatedBytes >= 32 << 20, "a sparse copy of a thick LUN: \(copy.allocatedBytes)")
        #expect(try readBytes(try #require(copy.devicePath), offset: 4096, count: 3) == [1, 2, 3])
        // A thin source larger than half of what the pool may promise: its clone would pass it.
        let room = try storage.provider.maximumLunSize(provisioning: .thin)
        _ = try storage.create("big", size: room / 2 + (1 << 20))
        let refused = #expect(throws: SiloError.self) { _ = try storage.provider.cloneLun("big", as: "big-copy") }
        #expect(refused?.code == .notEnoughSpace, "\(String(describing: refused))")
        #expect(try storage.provider.luns().map(\.name).sorted() == ["big", "thick", "thick-copy"])
        #expect(directoryEntries(storage.provider.configuration.poolDirectory).filter { $0.hasSuffix(".img") }.count == 3)
    }

    @Test("A clone cancelled part-way leaves no file, device or record")
    func cancelledClone() throws {
        let storage = TestStorage()
        defer { storage.finish() }
        _ = try storage.create("big", size: 1 << 30, provisioning: .zeroed)
        let operation = try storage.provider.cloneLun("big", as: "half")
        waitForProgress(operation, percent: 5)
        try? operation.cancel()
        _ = try? operation.wait(timeout: .seconds(60))
        if operation.status.error?.code == .operationCancelled {
            #expect(try storage.provider.luns().map(\.name) == ["big"])
            #expect(directoryEntries(storage.provider.configuration.poolDirectory).count == 1)
        } else {
            Issue.record("the clone finished before the cancel: \(operation.status)")
        }
    }

    @Test("While a clone reads its source, the source is not deleted, taken offline, extended or shrunk; clones of one source run at once")
    func sourceHeldWhileCopied() throws {
        let storage = TestStorage()
        defer { storage.finish() }
        _ = try storage.create("golden", size: 1 << 30, provisioning: .zeroed)
        let first = try storage.provider.cloneLun("golden", as: "first")
        waitForProgress(first, percent: 5)
        // A second clone of the same source at the same time: allowed.
        let second = try storage.provider.cloneLun("golden", as: "second")
        let delete = #expect(throws: SiloError.self) { _ = try storage.provider.deleteLun("golden") }
        let offline = #expect(throws: SiloError.self) { _ = try storage.provider.setOnline("golden", false) }
        let extend = #expect(throws: SiloError.self) { _ = try storage.provider.extendLun("golden", by: 1 << 20) }
        let shrink = #expect(throws: SiloError.self) { _ = try storage.provider.shrinkLun("golden", by: 1 << 20, force: true) }
        // Only meaningful while the first copy ran the whole time.
        guard first.status.isPending else {
            Issue.record("the clone finished before the checks: \(first.status)")
            return
        }
        #expect(delete?.code == .deviceInUse && delete?.message.contains("read by clone 'first'") == true, "\(String(describing: delete))")
        #expect(offline?.code == .deviceInUse, "\(String(describing: offline))")
        #expect(extend?.code == .anotherCallInProgress && extend?.message.contains("clone '") == true, "\(String(describing: extend))")
        #expect(shrink?.code == .anotherCallInProgress, "\(String(describing: shrink))")
        let copies = [try first.wait(timeout: .seconds(120)), try second.wait(timeout: .seconds(120))]
        #expect(copies.map(\.size) == [1 << 30, 1 << 30])
        // The source's size and device are as they were, and it is free again once both copies are done.
        let golden = try storage.provider.lun(named: "golden")
        #expect(golden.size == 1 << 30 && golden.status == .online)
        #expect(try storage.provider.extendLun("golden", by: 1 << 20).wait(timeout: .seconds(60)).size == (1 << 30) + (1 << 20))
        try storage.provider.deleteLun("golden").wait(timeout: .seconds(60))
        #expect(try storage.provider.luns().map(\.name).sorted() == ["first", "second"])
    }

    @Test("A clone whose source is being changed is refused, and holds nothing; a dead change of it is settled before the copy")
    func cloneOfChangingSource() throws {
        let storage = TestStorage()
        defer { storage.finish() }
        _ = try storage.create("moving", size: 8 << 20)
        // This process is in the middle of a change to it (an extend between its steps).
        let change = try storage.provider.beginChange("moving", operation: "extendLun")
        let refused = #expect(throws: SiloError.self) { _ = try storage.provider.cloneLun("moving", as: "copy") }
        #expect(refused?.code == .anotherCallInProgress && refused?.field == "source", "\(String(describing: refused))")
        try storage.provider.endChange("moving", mark: change.mark)
        #expect(storage.provider.leaseHolders("moving").isEmpty, "the refused clone's lease was let go")
        #expect(try storage.provider.luns().map(\.name) == ["moving"])
        _ = try storage.provider.cloneLun("moving", as: "copy").wait(timeout: .seconds(60))
        #expect(storage.provider.leaseHolders("moving").isEmpty, "a finished clone's lease was let go")

        // An extend whose process died after it grew the file (its mark left): the clone settles
        // it first, and copies the LUN at the size its file has, as its record then says.
        let dead = fork()
        if dead == 0 { _exit(0) }
        waitpid(dead, nil, 0)
        try storage.provider.registry.locked { () throws(SiloError) in
            try storage.provider.registry.placeMark(.changing, "moving", owner: LunRecord.Owner(pid: dead, startTime: 1, operation: "extendLun"))
        }
        let file = try storage.provider.lun(named: "moving").backingFile
        #expect(truncate(file, 12 << 20) == 0)
        let settled = try storage.provider.cloneLun("moving", as: "settled").wait(timeout: .seconds(60))
        #expect(settled.size == 12 << 20, "\(settled.size)")
        #expect(try storage.provider.lun(named: "moving").size == 12 << 20)
        #expect(!fileExists(storage.path + "/state/luns/.moving.changing"))
        try storage.provider.deleteLun("moving").wait(timeout: .seconds(60))
    }

    @Test("On a file system with reflink (XFS), a thin clone shares extents (no new space); a zeroed one takes all of its own")
    func reflinkClone() throws {
        guard access("/sbin/mkfs.xfs", X_OK) == 0 else {
            Issue.record("mkfs.xfs is missing: install xfsprogs")
            return
        }
        let scratch = Scratch()
        defer { scratch.cleanup() }
        try withTemporaryLun(size: 1 << 30, directory: scratch.path) { disk in
            #expect(run("/sbin/mkfs.xfs", ["-q", "-f", "-m", "reflink=1", disk.devicePath]).status == 0)
            let mount = scratch.path + "/xfs"
            mkdir(mount, 0o755)
            try #require(run("/bin/mount", [disk.devicePath, mount]).status == 0)
            defer { _ = run("/bin/umount", [mount]) }
            let provider = StorageProvider(configuration: StorageConfiguration(
                stateDirectory: mount + "/state", linkDirectory: scratch.path + "/links"
            ))
            defer {
                for lun in (try? provider.luns()) ?? [] { _ = try? provider.deleteLun(lun.name).wait() }
            }
            func used(_ body: () throws -> LunProperties) rethrows -> (LunProperties, Int64) {
                var before = statvfs()
                statvfs(mount, &before)
                let made = try body()
                var after = statvfs()
                statvfs(mount, &after)
                return (made, (Int64(before.f_bfree) - Int64(after.f_bfree)) * Int64(after.f_frsize))
            }
            // A thin source with 64 MiB written: its clone shares them.
            let thin = try provider.createLun(LunSpec(name: "thin", size: 256 << 20)).wait()
            let thinDevice = try #require(thin.devicePath)
            #expect(run("/bin/dd", ["if=/dev/urandom", "of=\(thinDevice)", "bs=1M", "count=64", "oflag=direct"]).status == 0)
            try writeBytes(thinDevice, offset: 4096, [7, 7, 7])
            let (shared, sharedSpace) = try used { try provider.cloneLun("thin", as: "shared").wait() }
            #expect(sharedSpace < 16 << 20, "a reflink takes no space for data: \(sharedSpace) bytes")
            #expect(try readBytes(try #require(shared.devicePath), offset: 4096, count: 3) == [7, 7, 7])
            // A zeroed source: its clone is given its whole size, shared with nothing.
            let zeroed = try provider.createLun(LunSpec(name: "origin", size: 256 << 20, provisioning: .zeroed)).wait()
            try writeBytes(try #require(zeroed.devicePath), offset: 4096, [8, 8, 8])
            let (own, ownSpace) = try used { try provider.cloneLun("origin", as: "own").wait() }
            #expect(ownSpace >= 250 << 20, "a zeroed clone's space is its own: \(ownSpace) bytes taken")
            #expect(try readBytes(try #require(own.devicePath), offset: 4096, count: 3) == [8, 8, 8])
        }
    }
}

/// Polls until `operation` reports `percent` or more done, or ends: a minute at most.
private func waitForProgress<Output>(_ operation: SiloOperation<Output>, percent: Int) {
    for _ in 0..<120_000 where operation.status.percentComplete < percent && operation.status.isPending { usleep(500) }
}
