import Glibc
import SiloOperations
import Testing

@testable import SiloStorage

@Suite("Orphan devices", .tags(.root), .requiresLoopDevices, .serialized)
struct OrphanTests {
    @Test("S13 a LUN's device left attached when its state directory was removed is found host-wide as an orphan and detached with its stable name; a claimed LUN of another state directory is left alone")
    func removedStateDirectory() throws {
        let lost = TestStorage()
        defer { lost.finish() }
        let kept = TestStorage()
        defer { kept.finish() }
        let lun = try lost.create("lost", size: 8 << 20)
        let device = try #require(lun.devicePath)
        // Its stable name where it is on /dev (the state directory's `dev` link to it goes with the folder).
        let link = try #require(lost.provider.configuration.linkTarget) + "/lost"
        #expect(resolveLink(link) == device)
        let other = try kept.create("kept", size: 8 << 20)
        // rm -rf of the state directory, the LUN attached: its device stays, over a deleted file.
        #expect(run("/bin/rm", ["-rf", lost.provider.configuration.stateDirectory]).status == 0)
        #expect(readSmallFile("/sys/block/\(device.dropFirst(5))/loop/backing_file") == lun.backingFile + " (deleted)")
        // Neither state directory's reenumerate sees it; the host-wide look does.
        let found = try kept.provider.orphans(detach: false, backedUnder: lost.path)
        #expect(found.devices.map(\.devicePath) == [device], "\(found)")
        #expect(found.devices.first?.lunID == lun.id && found.devices.first?.backingFile == lun.backingFile)
        #expect(found.devices.first?.reason.contains("backing file was deleted") == true, "\(found)")
        #expect(found.devices.first?.detached == false && found.staleNames.isEmpty, "a look changes nothing")
        #expect(try kept.provider.orphans(detach: false, backedUnder: kept.path).devices.isEmpty, "a claimed LUN is no orphan")
        // Held open (as a process still using it would): kept, and said.
        let holder = open(device, O_RDONLY | O_EXCL | O_CLOEXEC)
        try #require(holder >= 0)
        let held = try kept.provider.orphans(detach: true, backedUnder: lost.path)
        close(holder)
        #expect(held.devices.first?.detached == false && held.devices.first?.kept?.isEmpty == false, "\(held)")
        #expect(LoopDevice(number: Int(device.dropFirst(9))!).binding != nil, "an orphan in use is not detached")
        // Let go: detached, and its stable name, which would name the next device of that number, goes.
        let swept = try kept.provider.orphans(detach: true, backedUnder: lost.path)
        #expect(swept.devices.first?.detached == true, "\(swept)")
        #expect(LoopDevice(number: Int(device.dropFirst(9))!).binding == nil)
        #expect(swept.staleNames == [link] && !fileExists(link), "\(swept)")
        #expect(try kept.provider.lun(named: "kept").devicePath == other.devicePath, "the other state directory's LUN is untouched")
    }

    @Test("S13 a device whose state directory still has its record is claimed, even with the pool's marker gone; one whose record was removed is an orphan")
    func recordDecides() throws {
        let storage = TestStorage()
        defer { storage.finish() }
        let lun = try storage.create("r", size: 8 << 20)
        let device = try #require(lun.devicePath)
        // Claimed through the provider's own state directory when the marker cannot tell.
        unlink(storage.provider.configuration.poolDirectory + "/" + StorageProvider.poolMarker)
        #expect(try storage.provider.orphans(detach: true, backedUnder: storage.path).devices.isEmpty)
        #expect(LoopDevice(number: Int(device.dropFirst(9))!).binding != nil)
        // The record removed by hand: no state directory claims the device.
        try storage.provider.registry.locked { () throws(SiloError) in try storage.provider.registry.removeHoldingLock("r") }
        let found = try storage.provider.orphans(detach: false, backedUnder: storage.path)
        #expect(found.devices.map(\.devicePath) == [device] && found.devices.first?.reason.contains("no pool of any state directory") == true, "\(found)")
        _ = try storage.provider.orphans(detach: true, backedUnder: storage.path)
        #expect(LoopDevice(number: Int(device.dropFirst(9))!).binding == nil)
        if let link = lun.link { unlink(link) }
    }
}
