import FoundationEssentials
import Glibc
import SiloOperations
import Testing

@testable import SiloStorage

@Suite("Drives", .tags(.root), .requiresLoopDevices, .serialized)
struct DriveTests {
    /// A loop device that is not Silo's, with an ext4 file system labelled as asked.
    private func foreignLoop(_ scratch: Scratch, label: String, file name: String = "foreign.img") throws -> String {
        let file = scratch.path + "/" + name
        try makeSparseFile(file, size: 32 << 20)
        #expect(run("/sbin/mkfs.ext4", ["-q", "-F", "-L", label, file]).status == 0)
        let device = run("/sbin/losetup", ["-f", "--show", "--read-only", file]).output.trimmingSpaces
        try #require(device.hasPrefix("/dev/loop"))
        return device
    }

    @Test("libblkid is loaded by the commands that probe, libudev where udevd keeps its database, and neither by others", .requiresSiloBinary)
    func probeLibrariesLoadedWhenUsed() throws {
        let scratch = Scratch()
        defer { scratch.cleanup() }
        // LD_DEBUG=files makes the dynamic loader name every library it loads, dlopen's included.
        func loaded(_ arguments: [String]) -> Outcome {
            let outcome = execute(siloBinary, ["--state-dir", scratch.path + "/state"] + arguments, environment: ["LD_DEBUG": "files"])
            #expect(outcome.status == 0, "silo \(arguments): \(outcome.error.suffix(400))")
            return outcome
        }
        let list = loaded(["lun", "list"]).error
        #expect(list.contains("file=libc.so.6"), "LD_DEBUG=files printed nothing: the check would prove nothing")
        #expect(!list.contains("libblkid") && !list.contains("libudev"))
        // A drive whose contents can be read, so that listing drives probes one.
        let device = try foreignLoop(scratch, label: "silo-lazy")
        defer { _ = run("/sbin/losetup", ["-d", device]) }
        let database = "/run/udev/data"
        let udevd = fileExists(database)
        if !udevd {
            // No udevd: libudev would add nothing to sysfs, and is not loaded.
            let drives = loaded(["drive", "list", "--json"])
            #expect(drives.error.contains("file=libblkid.so.1") && !drives.error.contains("libudev"))
            #expect(drives.output.contains("\"silo-lazy\""), "the probe through the loaded libblkid found the label")
        }
        // With a database (udevd's, or one written here as udevd writes it for this device),
        // libudev is loaded and what it holds comes through.
        let number = try #require(readSmallFile("/sys/class/block/\(device.dropFirst(5))/dev"))
        var made: [String] = []
        if !udevd {
            for folder in ["/run/udev", database] where !fileExists(folder) {
                #expect(mkdir(folder, 0o755) == 0)
                made.insert(folder, at: 0)
            }
            let entry = "E:ID_SERIAL_SHORT=silo-udev-db\nE:ID_VENDOR=SiloTest\n"
            #expect(FileManager.default.createFile(atPath: "\(database)/b\(number)", contents: Data(entry.utf8)))
            made.insert("\(database)/b\(number)", at: 0)
        }
        defer { for path in made { if unlink(path) != 0 { rmdir(path) } } }
        let drives = loaded(["drive", "list", "--json"])
        #expect(drives.error.contains("file=libudev.so.1") && drives.error.contains("file=libblkid.so.1"))
        #expect(drives.output.contains("\"silo-lazy\""))
        if !udevd {
            #expect(drives.output.contains("\"serial\" : \"silo-udev-db\"") && drives.output.contains("\"vendor\" : \"SiloTest\""),
                    "the serial and vendor from the database, through libudev")
        }
    }

    @Test("S1 drives match the kernel's view: /sys/block and lsblk, with sizes and sector sizes; model, vendor, serial and WWN as sysfs has them")
    func matchesKernel() throws {
        let storage = TestStorage()
        defer { storage.finish() }
        // Other suites run beside this one and attach loop devices over their scratch files:
        // leave those out of both sides.
        func otherTests(_ backing: String?) -> Bool {
            guard let backing else { return false }
            return backing.hasPrefix("/tmp/silo-test-") || backing.hasPrefix("/var/tmp/silo-temporary-")
        }
        let drives = try storage.provider.drives().filter { !otherTests($0.backingFile) }
        // /sys/block minus what is not a drive: unbound loop devices, ram disks, Silo's LUNs.
        let expected = directoryEntries("/sys/block").filter { name in
            if name.hasPrefix("ram") { return false }
            if name.hasPrefix("loop") {
                guard let backing = readSmallFile("/sys/block/\(name)/loop/backing_file"), !otherTests(backing) else { return false }
                return LoopDevice(number: Int(name.dropFirst(4)) ?? -1).tag?.hasPrefix("silo:") != true
            }
            return true
        }
        #expect(drives.map(\.name) == expected.sorted())
        // lsblk, an independent reader of the same sysfs, agrees on sizes and sector sizes.
        struct Listing: Decodable {
            struct Device: Decodable {
                let name: String
                let size: UInt64
                let logSec: Int
                let phySec: Int
                enum CodingKeys: String, CodingKey {
                    case name, size
                    case logSec = "log-sec"
                    case phySec = "phy-sec"
                }
            }
            let blockdevices: [Device]
        }
        let lsblk = run("/bin/lsblk", ["--json", "--bytes", "--nodeps", "-o", "NAME,SIZE,LOG-SEC,PHY-SEC"])
        let listing = try JSONDecoder().decode(Listing.self, from: Data(lsblk.output.utf8))
        for drive in drives {
            guard let device = listing.blockdevices.first(where: { $0.name == drive.name }) else {
                Issue.record("lsblk does not list \(drive.name)")
                continue
            }
            #expect(drive.size == device.size, "\(drive.name)")
            #expect(Int(drive.logicalSectorSize) == device.logSec, "\(drive.name)")
            #expect(Int(drive.physicalSectorSize) == device.phySec, "\(drive.name)")
            #expect(drive.devicePath == "/dev/" + drive.name)
            #expect(!drive.id.isEmpty)
            // The rest of S1, against sysfs itself: the flags, the model, the holders.
            let block = "/sys/block/" + drive.name
            #expect(drive.isRotational == (readSmallFile(block + "/queue/rotational") == "1"), "\(drive.name) rotational")
            #expect(drive.isRemovable == (readSmallFile(block + "/removable") == "1"), "\(drive.name) removable")
            #expect(drive.isReadOnly == (readSmallFile(block + "/ro") == "1"), "\(drive.name) read-only")
            if let model = readSmallFile(block + "/device/model")?.trimmingSpaces, !model.isEmpty {
                #expect(drive.model == model, "\(drive.name) model")
            }
            // Vendor, serial and WWN where the kernel has them (without udevd, sysfs is all there is).
            func kernel(_ files: String...) -> String? {
                files.lazy.compactMap { readSmallFile(block + "/" + $0)?.trimmingSpaces }.first { !$0.isEmpty }
            }
            if let vendor = kernel("device/vendor") { #expect(drive.vendor == vendor, "\(drive.name) vendor") }
            if let serial = kernel("serial", "device/serial") { #expect(drive.serial == serial, "\(drive.name) serial") }
            if let wwn = kernel("wwid", "device/wwid") { #expect(drive.wwn == wwn, "\(drive.name) wwn") }
            #expect(Set(drive.holders) == Set(directoryEntries(block + "/holders")), "\(drive.name) holders")
        }
        // Ids are stable across enumerations.
        #expect(try storage.provider.drives().filter { !otherTests($0.backingFile) }.map(\.id) == drives.map(\.id))
        #expect(Set(drives.map(\.id)).count == drives.count)
        // The pool's drive is marked.
        #expect(drives.contains { $0.pool == storage.provider.configuration.poolDirectory })
    }

    @Test("S1 a drive's id is the same in another process (the CLI's listing), not only across calls", .requiresSiloBinary)
    func idsStableAcrossProcesses() throws {
        let scratch = Scratch()
        defer { scratch.cleanup() }
        let provider = StorageProvider(configuration: StorageConfiguration(stateDirectory: scratch.path + "/state"))
        // The host's own drives: other tests' loop devices come and go meanwhile.
        let here = Dictionary(uniqueKeysWithValues: try provider.drives().filter { $0.busType != "loop" }.map { ($0.name, $0.id) })
        try #require(!here.isEmpty, "no drive but loop devices on this host")
        struct Listed: Decodable { let name: String; let id: String }
        let listing = execute(siloBinary, ["--state-dir", scratch.path + "/state", "drive", "list", "--json"])
        #expect(listing.status == 0, "\(listing.error)")
        let there = try JSONDecoder().decode([Listed].self, from: Data(listing.output.utf8))
        for (name, id) in here {
            #expect(there.first { $0.name == name }?.id == id, "\(name): \(id) here")
        }
    }

    @Test("S1 listing and probing drives never opens one for writing (inotify sees every close of a written open)")
    func neverOpensForWriting() throws {
        let scratch = Scratch()
        defer { scratch.cleanup() }
        let foreign = try foreignLoop(scratch, label: "silo-watched")
        defer { _ = run("/sbin/losetup", ["-d", foreign]) }
        let provider = StorageProvider(configuration: StorageConfiguration(stateDirectory: scratch.path + "/state"))
        // The host's own drives and this test's device: no other test writes to those. An idle loop
        // device is probed through its backing file, so that file is watched too.
        let drives = try provider.drives().filter { $0.busType != "loop" || $0.devicePath == foreign }
        try #require(drives.contains { $0.devicePath == foreign })
        let watched = drives.map(\.devicePath) + [scratch.path + "/foreign.img"]
        let notify = inotify_init1(Int32(IN_NONBLOCK | IN_CLOEXEC))
        try #require(notify >= 0)
        defer { close(notify) }
        var watches: [Int32: String] = [:]
        for path in watched {
            let watch = inotify_add_watch(notify, path, UInt32(IN_OPEN | IN_CLOSE_WRITE | IN_MODIFY))
            #expect(watch >= 0, "\(path)")
            watches[watch] = path
        }
        _ = try provider.drives()
        for drive in drives { _ = try provider.drive(drive.devicePath) }
        var buffer = [UInt8](repeating: 0, count: 65536)
        var openedForeign = 0
        var written: [String] = []
        while true {
            let count = buffer.withUnsafeMutableBytes { read(notify, $0.baseAddress, $0.count) }
            guard count > 0 else { break }
            var offset = 0
            while offset + 16 <= count {
                let watch = buffer.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: offset, as: Int32.self) }
                let mask = buffer.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: offset + 4, as: UInt32.self) }
                let length = buffer.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: offset + 12, as: UInt32.self) }
                let path = watches[watch] ?? "watch \(watch)"
                if mask & UInt32(IN_OPEN) != 0, path == foreign || path.hasSuffix("/foreign.img") { openedForeign += 1 }
                if mask & UInt32(IN_CLOSE_WRITE | IN_MODIFY) != 0 { written.append(path) }
                offset += 16 + Int(length)
            }
        }
        #expect(openedForeign > 0, "the listing opened neither this test's device nor its file: the watch would prove nothing")
        #expect(written.isEmpty, "a drive was opened for writing: \(written)")
    }

    @Test("S1 file system type, UUID, label, mount points and partitions come through libblkid without udevd")
    func probesContents() throws {
        let scratch = Scratch()
        defer { scratch.cleanup() }
        let device = try foreignLoop(scratch, label: "silo-probe")
        defer { _ = run("/sbin/losetup", ["-d", device]) }
        let provider = StorageProvider(configuration: StorageConfiguration(stateDirectory: scratch.path + "/state"))
        let drive = try provider.drive(device)
        #expect(drive.busType == "loop")
        #expect(drive.isReadOnly)
        #expect(drive.filesystemType == "ext4")
        #expect(drive.filesystemLabel == "silo-probe")
        let uuid = run("/sbin/blkid", ["-p", "-s", "UUID", "-o", "value", device]).output.trimmingSpaces
        #expect(drive.filesystemUUID == uuid && !uuid.isEmpty)
        #expect(drive.backingFile == scratch.path + "/foreign.img")
        let mountPoint = scratch.path + "/mnt"
        mkdir(mountPoint, 0o755)
        #expect(run("/bin/mount", ["-o", "ro", device, mountPoint]).status == 0)
        defer { _ = run("/bin/umount", [mountPoint]) }
        #expect(try provider.drive(device).mountPoints == [mountPoint])

        // Several devices probed at once (on threads of their own): each gets its own findings.
        // Each detached even when a later one could not be made.
        var others: [String] = []
        defer { others.forEach { _ = run("/sbin/losetup", ["-d", $0]) } }
        for index in 1...3 { others.append(try foreignLoop(scratch, label: "silo-probe-\(index)", file: "other\(index).img")) }
        let listed = try provider.drives()
        for (index, other) in others.enumerated() {
            #expect(listed.first { $0.devicePath == other }?.filesystemLabel == "silo-probe-\(index + 1)", "\(other)")
        }
        #expect(listed.first { $0.devicePath == device }?.filesystemLabel == "silo-probe")

        // A partitioned image: the partition table and its partitions.
        try withTemporaryLun(size: 64 << 20, directory: scratch.path) { lun in
            let table = "label: gpt\nstart=2048, size=32768, name=first\nstart=34816, size=32768, name=second\n"
            let sfdisk = spawnWithInput("/usr/sbin/sfdisk", ["--quiet", lun.devicePath], input: table)
            #expect(sfdisk == 0)
            let probe = try BlockProbe.probe(path: lun.devicePath)
            #expect(probe.partitionTableType == "gpt")
            #expect(probe.partitions.map(\.start) == [2048 * 512, 34816 * 512])
            #expect(probe.partitions.map(\.size) == [32768 * 512, 32768 * 512])
            // A GPT's backup header and entries are its device's last sectors, past any partition.
            #expect(probe.dataEnd(deviceSize: 64 << 20) == 64 << 20)
            var dos = probe
            dos.partitionTableType = "dos"
            #expect(dos.dataEnd(deviceSize: 64 << 20) == (34816 + 32768) * 512, "an MBR's data ends with its last partition")
        }
    }

    @Test("S1 a drive's partitions: the kernel's devices where it made them, else the table's entries without a device; either way with libblkid's type, PARTUUID, name and file system",
          arguments: ["dos", "gpt"])
    func drivePartitions(label: String) throws {
        let scratch = Scratch()
        defer { scratch.cleanup() }
        let provider = StorageProvider(configuration: StorageConfiguration(stateDirectory: scratch.path + "/state"))
        let linux = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
        let table = label == "dos"
            ? "label: dos\nlabel-id: 0x5110cafe\nstart=2048, size=40960, type=83\nstart=43008, size=20480, type=83\n"
            : "label: gpt\nstart=2048, size=40960, type=\(linux), name=silo-one, uuid=11111111-2222-4333-8444-555555555555\n"
                + "start=43008, size=20480, type=\(linux), name=silo-two, uuid=66666666-7777-4888-8999-aaaaaaaaaaaa\n"
        // A file system in the second partition.
        let device = try partitionedDrive(scratch, table: table, ext4: "silo-p2", atSector: 43008, size: "10M")
        defer { _ = run("/sbin/losetup", ["-d", device]) }
        let name = String(device.dropFirst(5))
        let drive = try provider.drive(device)
        #expect(drive.partitionTableType == label, "\(String(describing: drive.partitionTableType))")
        #expect(drive.partitions.map(\.name) == [name + "p1", name + "p2"], "\(drive.partitions)")
        #expect(drive.partitions.map(\.number) == [1, 2])
        #expect(drive.partitions.map(\.start) == [2048 * 512, 43008 * 512])
        #expect(drive.partitions.map(\.size) == [40960 * 512, 20480 * 512])
        if label == "dos" {
            #expect(drive.partitions.map(\.partitionType) == ["0x83", "0x83"])
            #expect(drive.partitions.map(\.partitionUUID) == ["5110cafe-01", "5110cafe-02"])
            #expect(drive.partitions.map(\.partitionLabel) == [nil, nil])
        } else {
            #expect(drive.partitions.map(\.partitionType) == [linux.lowercased(), linux.lowercased()])
            #expect(drive.partitions.map(\.partitionUUID) == ["11111111-2222-4333-8444-555555555555", "66666666-7777-4888-8999-aaaaaaaaaaaa"])
            #expect(drive.partitions.map(\.partitionLabel) == ["silo-one", "silo-two"])
        }
        #expect(drive.partitions.map(\.filesystemType) == [nil, "ext4"])
        #expect(drive.partitions.map(\.filesystemLabel) == [nil, "silo-p2"])
        // Devices are the kernel's to make: this VM's kernel, built without partition table parsers
        // (no CONFIG_MSDOS_PARTITION, no CONFIG_EFI_PARTITION), makes none, and then none is named.
        let kernelPartitions = directoryEntries("/sys/block/" + name).filter { fileExists("/sys/block/\(name)/\($0)/partition") }.sorted()
        if kernelPartitions.isEmpty {
            #expect(drive.partitions.allSatisfy { $0.devicePath == nil && $0.deviceNumber == nil && $0.mountPoints.isEmpty })
        } else {
            #expect(drive.partitions.map(\.name) == kernelPartitions)
            for partition in drive.partitions {
                let sysfs = "/sys/block/\(name)/\(partition.name)"
                #expect(readSmallFile(sysfs + "/start").flatMap { UInt64($0.trimmingSpaces) }.map { $0 * 512 } == partition.start, "\(partition)")
                #expect(partition.devicePath == "/dev/" + partition.name)
                #expect(partition.deviceNumber == readSmallFile(sysfs + "/dev")?.trimmingSpaces)
            }
        }
        // The listing says the same; the CLI's JSON decodes to the same partitions (no devicePath
        // key where the kernel made no device), and its table and facts say which kind each is.
        let listed = try #require(try provider.drives().first { $0.name == name })
        #expect(listed.partitions == drive.partitions)
        try #require(access(siloBinary, X_OK) == 0, "needs the silo executable built beside the tests (swift build --build-tests)")
        let state = ["--state-dir", scratch.path + "/state"]
        let shown = execute(siloBinary, state + ["drive", "show", device, "--json"])
        #expect(shown.status == 0, "\(shown.error)")
        #expect(try JSONDecoder().decode(Drive.self, from: Data(shown.output.utf8)).partitions == drive.partitions)
        let rows = execute(siloBinary, state + ["drive", "list"]).output
        let facts = execute(siloBinary, state + ["drive", "show", device]).output
        let kind = kernelPartitions.isEmpty ? "table" : "part"
        #expect(rows.split(separator: "\n").filter { $0.contains("─\(name)p") && $0.contains(" \(kind) ") }.count == 2, "\(rows)")
        #expect(facts.contains("partition 2") && facts.contains("ext4, label silo-p2"), "\(facts)")
        #expect(facts.contains("no device (the kernel made none)") == kernelPartitions.isEmpty, "\(facts)")
    }

    /// A loop device of someone else's (a drive), read-only, over a 64 MiB image holding `table`
    /// (an sfdisk script) and an ext4 labelled `label`, `size` long, at 512-byte sector `sector`
    /// (written at its offset in the image); the kernel is asked to scan its partitions.
    private func partitionedDrive(_ scratch: Scratch, table: String, ext4 label: String, atSector sector: Int, size: String) throws -> String {
        let image = scratch.path + "/\(label).img"
        try makeSparseFile(image, size: 64 << 20)
        #expect(spawnWithInput("/usr/sbin/sfdisk", ["--quiet", image], input: table) == 0)
        #expect(run("/sbin/mke2fs", ["-q", "-F", "-t", "ext4", "-L", label, "-E", "offset=\(sector * 512)", image, size]).status == 0)
        let device = run("/sbin/losetup", ["-f", "--show", "-P", "--read-only", image]).output.trimmingSpaces
        try #require(device.hasPrefix("/dev/loop"))
        return device
    }

    @Test("S1 a DOS table's extended partition is listed as the kernel lists it (1 KiB), its logical partitions after it, with their file systems")
    func extendedPartitions() throws {
        let scratch = Scratch()
        defer { scratch.cleanup() }
        let provider = StorageProvider(configuration: StorageConfiguration(stateDirectory: scratch.path + "/state"))
        let table = "label: dos\nstart=2048, size=20480, type=83\nstart=22528, size=40960, type=5\nstart=24576, size=16384, type=83\n"
        let device = try partitionedDrive(scratch, table: table, ext4: "silo-p5", atSector: 24576, size: "8M")
        defer { _ = run("/sbin/losetup", ["-d", device]) }
        let drive = try provider.drive(device)
        #expect(drive.partitions.map(\.number) == [1, 2, 5], "\(drive.partitions)")
        let starts: [UInt64] = [2048 * 512, 22528 * 512, 24576 * 512]
        let sizes: [UInt64] = [20480 * 512, 1024, 16384 * 512]
        #expect(drive.partitions.map(\.start) == starts)
        #expect(drive.partitions.map(\.size) == sizes, "the container as the kernel gives it")
        #expect(drive.partitions.map(\.partitionType) == ["0x83", "0x5", "0x83"])
        #expect(drive.partitions.map(\.filesystemLabel) == [nil, nil, "silo-p5"])
    }

    @Test("S1 an idle loop device is probed through its backing file; one holding changes the file lacks, through itself")
    func probesThroughBackingFile() throws {
        let scratch = Scratch()
        defer { scratch.cleanup() }
        // A swap signature (mkswap's first page) is what gets written through the device.
        let template = scratch.path + "/swap.img"
        try makeSparseFile(template, size: 1 << 20)
        #expect(run("/sbin/mkswap", ["-L", "silo-swap", template]).status == 0)
        let header = try readBytes(template, offset: 0, count: 4096)
        let file = scratch.path + "/backing.img"
        try makeSparseFile(file, size: 32 << 20)
        // losetup's default: buffered, so a write through the device sits in the device's page cache.
        let device = run("/sbin/losetup", ["-f", "--show", file]).output.trimmingSpaces
        try #require(device.hasPrefix("/dev/loop"))
        defer { _ = run("/sbin/losetup", ["-d", device]) }
        var reader = open(device, O_RDONLY | O_CLOEXEC)
        try #require(reader >= 0)
        defer { close(reader) }
        let backing = try #require(LoopBacking(device: reader, file: file))
        #expect(backing.offset == 0)

        // Idle: nothing of it cached, so the probe may read the file.
        let idle = try #require(backing.open(device: reader))
        close(idle.fd)
        #expect(idle.size == 32 << 20)

        // A writer holds it with the signature in the device's cache, not yet in the file.
        var writer = open(device, O_RDWR | O_CLOEXEC)
        try #require(writer >= 0)
        // Closed before the deferred detach, also when a check below throws: it holds the device.
        defer { if writer >= 0 { close(writer) } }
        #expect(header.withUnsafeBytes { pwrite(writer, $0.baseAddress, 4096, 0) } == 4096)
        #expect(try readBytes(file, offset: 0, count: 4096) == [UInt8](repeating: 0, count: 4096),
                "the file has not seen the write yet, so only a probe through the device finds it")
        #expect(LoopBacking.unwritten(reader) != false, "dirty pages (cachestat), where the kernel can count them")
        #expect(LoopBacking.cached(reader, from: 0, count: 4096), "and cached (mincore)")
        #expect(backing.open(device: reader) == nil, "unwritten pages send the probe through the device")
        #expect(try BlockProbe.probe(path: device, backing: backing).filesystemType == "swap")
        let provider = StorageProvider(configuration: StorageConfiguration(stateDirectory: scratch.path + "/state"))
        #expect(try provider.drive(device).filesystemLabel == "silo-swap")

        // The last close (the writer's, then this test's) writes the cache back and drops it:
        // through the file again, which now has it.
        close(writer)
        writer = -1
        #expect(backing.open(device: reader) == nil, "still open here, still unwritten")
        close(reader)
        reader = open(device, O_RDONLY | O_CLOEXEC)
        #expect(!LoopBacking.cached(reader, from: 0, count: 32 << 20))
        close(try #require(backing.open(device: reader)).fd)
        // Read through the device while this test holds it: cached, but clean. cachestat tells
        // the two apart.
        _ = try readBytes(device, offset: 0, count: 4096)
        #expect(LoopBacking.cached(reader, from: 0, count: 4096))
        if let unwritten = LoopBacking.unwritten(reader) {
            #expect(!unwritten)
            close(try #require(backing.open(device: reader), "clean pages only: the file has the same bytes").fd)
        } else {
            #expect(backing.open(device: reader) == nil, "without cachestat, any cached page sends the probe through the device")
        }
        #expect(try readBytes(file, offset: 0, count: 4096) == header)
        #expect(try BlockProbe.probe(path: device, backing: backing).label == "silo-swap")

        // Another file at the path than the one bound: through the device.
        let other = scratch.path + "/other.img"
        try makeSparseFile(other, size: 32 << 20)
        #expect(try #require(LoopBacking(device: reader, file: other)).open(device: reader) == nil)

        // A device that starts 1 MiB into its file: the probe reads from there.
        let shifted = scratch.path + "/shifted.img"
        try makeSparseFile(shifted, size: 33 << 20)
        try writeBytes(shifted, offset: 1 << 20, header)
        let offsetDevice = run("/sbin/losetup", ["-f", "--show", "-o", "\(1 << 20)", shifted]).output.trimmingSpaces
        try #require(offsetDevice.hasPrefix("/dev/loop"))
        defer { _ = run("/sbin/losetup", ["-d", offsetDevice]) }
        let offsetReader = open(offsetDevice, O_RDONLY | O_CLOEXEC)
        defer { close(offsetReader) }
        let offsetBacking = try #require(LoopBacking(device: offsetReader, file: shifted))
        #expect(offsetBacking.offset == 1 << 20)
        let window = try #require(offsetBacking.open(device: offsetReader))
        close(window.fd)
        #expect(window.offset == 1 << 20 && window.size == 32 << 20)
        #expect(try BlockProbe.probe(path: offsetDevice, backing: offsetBacking).label == "silo-swap")
        #expect(try BlockProbe.probe(path: shifted).filesystemType == nil, "at the file's start there is nothing")
    }

    @Test("S1 a loop device of 4096-byte sectors is read through itself: its partition table is where its sectors put it")
    func fourKibibyteSectors() throws {
        let scratch = Scratch()
        defer { scratch.cleanup() }
        let file = scratch.path + "/4k.img"
        try makeSparseFile(file, size: 64 << 20)
        let device = run("/sbin/losetup", ["-f", "--show", "-b", "4096", file]).output.trimmingSpaces
        try #require(device.hasPrefix("/dev/loop"))
        defer { _ = run("/sbin/losetup", ["-d", device]) }
        // 4096-byte sectors: the GPT header is at byte 4096, the partition at sector 256 (1 MiB).
        #expect(spawnWithInput("/usr/sbin/sfdisk", ["--quiet", device], input: "label: gpt\nstart=256, size=2048, name=only\n") == 0)
        var reader = open(device, O_RDONLY | O_CLOEXEC)
        try #require(reader >= 0)
        defer { if reader >= 0 { close(reader) } }  // before the detach, also when a check throws
        let backing = try #require(LoopBacking(device: reader, file: file))
        #expect(backing.open(device: reader) == nil, "its file would be read as 512-byte sectors")
        close(reader)
        reader = -1
        let probe = try BlockProbe.probe(path: device, backing: backing)
        #expect(probe.partitionTableType == "gpt")
        #expect(probe.partitions.map(\.start) == [1 << 20] && probe.partitions.map(\.size) == [8 << 20], "\(probe.partitions)")
    }

    @Test("S9 a superblock whose block count overflows, or whose size is none or past belief, reads as an unknown size, not a crash nor a size of 0")
    func superblockOverflow() throws {
        let scratch = Scratch()
        defer { scratch.cleanup() }
        let file = scratch.path + "/sb.img"
        try makeSparseFile(file, size: 1 << 20)
        // ext4: s_blocks_count_lo, s_log_block_size 2 (4 KiB), INCOMPAT_64BIT, s_blocks_count_hi all ones.
        try writeBytes(file, offset: 1024 + 4, [0xff, 0xff, 0xff, 0xff])
        try writeBytes(file, offset: 1024 + 24, [2, 0, 0, 0])
        try writeBytes(file, offset: 1024 + 96, [0x80, 0, 0, 0])
        try writeBytes(file, offset: 1024 + 0x150, [0xff, 0xff, 0xff, 0xff])
        let fd = open(file, O_RDONLY | O_CLOEXEC)
        defer { close(fd) }
        #expect(SuperblockSize.read(fd: fd, type: "ext4") == nil)
        // A sane count still reads: 1,000 blocks of 4 KiB.
        try writeBytes(file, offset: 1024 + 4, [0xe8, 0x03, 0, 0])
        try writeBytes(file, offset: 1024 + 0x150, [0, 0, 0, 0])
        #expect(SuperblockSize.read(fd: fd, type: "ext4") == 1000 * 4096)
        // A block size past 64 KiB, and a count of none: damage, so unknown, never a size of 0
        // (which the shrink guard would take as a file system ending at the start).
        try writeBytes(file, offset: 1024 + 24, [64, 0, 0, 0])
        #expect(SuperblockSize.read(fd: fd, type: "ext4") == nil)
        try writeBytes(file, offset: 1024 + 24, [2, 0, 0, 0])
        try writeBytes(file, offset: 1024 + 4, [0, 0, 0, 0])
        #expect(SuperblockSize.read(fd: fd, type: "ext4") == nil)
    }

    @Test("S1 mount points whose paths hold a space, a tab and a backslash are reported as they are")
    func escapedMountPoints() throws {
        let scratch = Scratch()
        defer { scratch.cleanup() }
        let device = try foreignLoop(scratch, label: "silo-escape")
        defer { _ = run("/sbin/losetup", ["-d", device]) }
        // mountinfo writes these as \040, \011 and \134.
        let mountPoint = scratch.path + "/a b\tc\\d"
        #expect(mkdir(mountPoint, 0o755) == 0)
        #expect(run("/bin/mount", ["-o", "ro", device, mountPoint]).status == 0)
        defer { _ = run("/bin/umount", [mountPoint]) }
        let provider = StorageProvider(configuration: StorageConfiguration(stateDirectory: scratch.path + "/state"))
        #expect(try provider.drive(device).mountPoints == [mountPoint])
    }

    @Test("S2 Silo's LUN devices are LUNs, not drives; other loop devices are drives of bus loop, untouched")
    func lunsAreNotDrives() throws {
        let storage = TestStorage()
        defer { storage.finish() }
        let lun = try storage.create("not-a-drive", size: 8 << 20)
        let device = try foreignLoop(storage.scratch, label: "foreign")
        defer { _ = run("/sbin/losetup", ["-d", device]) }
        let drives = try storage.provider.drives()
        #expect(!drives.contains { $0.devicePath == lun.devicePath })
        let foreign = try #require(drives.first { $0.devicePath == device })
        #expect(foreign.busType == "loop")
        #expect(foreign.id == "loop-" + device.dropFirst(5))
        #expect(readSmallFile("/sys/block/\(device.dropFirst(5))/loop/backing_file") == storage.path + "/foreign.img")
        // The pool's drive lists the LUN's backing file as an extent.
        let poolDrive = try #require(drives.first { $0.pool != nil })
        #expect(poolDrive.extents.contains { $0.lun == "not-a-drive" && $0.backingFile == lun.backingFile })
    }

    @Test("S2 a LUN's device is no drive where it cannot be opened to read its owner tag (no /dev node): its record tells", .requiresSiloBinary)
    func lunsAreNotDrivesWithoutNodes() throws {
        let storage = TestStorage()
        defer { storage.finish() }
        let lun = try storage.create("no-node", size: 8 << 20)
        let name = try #require(lun.devicePath).dropFirst(5)
        // A /dev of its own, empty: no loop node to open.
        let listed = run("/usr/bin/unshare", ["-m", "/bin/sh", "-c",
                                              "mount -t tmpfs none /dev && \(siloBinary) --state-dir \(storage.path)/state drive list --json"])
        #expect(listed.status == 0 && listed.output.contains("\"devicePath\""), "\(listed.output)")
        #expect(!listed.output.contains("\"/dev/\(name)\""), "the LUN's \(name) listed as a drive: \(listed.output)")
    }
}

/// Runs a program with `input` on its standard input; returns its exit status.
func spawnWithInput(_ program: String, _ arguments: [String], input: String) -> Int32 {
    let script = "printf '%s' \"$SILO_INPUT\" | \(program) \(arguments.map { "'\($0)'" }.joined(separator: " ")) >/dev/null 2>&1"
    return execute("/bin/sh", ["-c", script], environment: ["SILO_INPUT": input]).status
}
