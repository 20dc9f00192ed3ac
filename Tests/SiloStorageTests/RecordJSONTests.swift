import FoundationEssentials
import Glibc
import SiloOperations
import Testing

@testable import SiloStorage

/// The registry's records and the pool list on disk, read and written by hand, against what
/// JSONEncoder wrote before (the reference): both directions, byte for byte.
@Suite("LUN records and the pool list as JSON")
struct RecordJSONTests {
    static let awkward = "db \"main\" \\ a/b \t\n\u{0}\u{1f}\u{7f} é 日本 😀"

    let full = LunRecord(
        id: "6f1c2a9e-0b7d-4c55-9a43-2d3f5e6a7b8c", name: "db1", friendlyName: awkward, size: UInt64.max,
        blockSize: 4096, provisioning: .zeroed, readOnly: true, directIO: false, unmasking: .systems(["web-1", "db.2"]),
        backingFile: "/var/lib/silo/pool/6f1c2a9e.img", pool: "fast", state: .creating, online: false, device: 17,
        owner: LunRecord.Owner(pid: Int32.max, startTime: 123_456_789_012, operation: "create", pidNamespace: 4_026_531_836,
                               boot: "3f2b1c9e-5d4a-4e8f-9a7b-6c5d4e3f2a1b"), createdAt: Int64.min
    )

    let bare = LunRecord(
        id: "x", name: "x", friendlyName: nil, size: 0, blockSize: 512, provisioning: .thin, readOnly: false,
        directIO: true, unmasking: .nobody, backingFile: "", pool: "default", state: .ready, online: true, device: nil,
        owner: nil, createdAt: 0
    )

    /// What the registry wrote before, with JSONEncoder.
    func encoded(_ value: some Encodable) throws -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .prettyPrinted, .withoutEscapingSlashes]
        return String(decoding: try encoder.encode(value), as: UTF8.self)
    }

    @Test("S13 a record writes as JSONEncoder wrote it and reads back equal", arguments: [true, false])
    func roundTrip(everyField: Bool) throws {
        let record = everyField ? full : bare
        #expect(record.json == (try encoded(record)))
        #expect(try LunRecord(json: record.json) == record)
    }

    @Test("S13 a record JSONEncoder wrote reads equal", arguments: [true, false])
    func readsOldRecords(everyField: Bool) throws {
        let record = everyField ? full : bare
        #expect(try LunRecord(json: try encoded(record)) == record)
    }

    @Test("S13 JSONDecoder reads a record as written, awkward strings and all")
    func decoderReadsRecords() throws {
        #expect(try JSONDecoder().decode(LunRecord.self, from: Data(full.json.utf8)) == full)
        #expect(full.json.contains("\"backingFile\" : \"/var/lib/silo/pool/6f1c2a9e.img\""))
    }

    @Test("S13 unmasking every system, and fields a later Silo may add, read as before")
    func everyoneAndUnknownFields() throws {
        var record = bare
        record.unmasking = .everyone
        let later = "\"createdAt\" : 0,\n  \"later\" : [{\"a\" : null}],"
        let text = record.json.replacing("\"createdAt\" : 0,", with: later)
        #expect(text != record.json)
        #expect(try LunRecord(json: text) == record)
    }

    /// Damaged records as a crash, a full disk or a hand edit leaves them: each must be refused
    /// with invalidJSON naming the record's file, and the message naming what is wrong.
    static let damages: [(name: String, damage: @Sendable (String) -> String, names: String)] = [
        ("truncated", { String($0.prefix($0.count / 2)) }, "line"),
        ("empty", { _ in "" }, "line"),
        ("size as a string", { $0.replacing("\"size\" : 0", with: "\"size\" : \"0\"") }, "size"),
        ("negative size", { $0.replacing("\"size\" : 0", with: "\"size\" : -1") }, "size"),
        ("no pool", { $0.replacing("  \"pool\" : \"default\",\n", with: "") }, "pool"),
        ("null name", { $0.replacing("\"name\" : \"x\"", with: "\"name\" : null") }, "name"),
        ("unknown state", { $0.replacing("\"ready\"", with: "\"gone\"") }, "state"),
        ("unknown provisioning", { $0.replacing("\"thin\"", with: "\"thinner\"") }, "provisioning"),
        ("bad unmasking list", { $0.replacing("\"unmasking\" : \"\"", with: "\"unmasking\" : \"a;*\"") }, "unmasking"),
        ("owner without pid", {
            $0.replacing("\"online\"", with: "\"owner\" : {\"startTime\" : 1, \"operation\" : \"x\"},\n  \"online\"")
        }, "owner.pid"),
        ("an array", { _ in "[]" }, "record"),
    ]

    @Test("S13 a damaged record is invalidJSON naming the file and what is wrong", arguments: 0..<damages.count)
    func damaged(index: Int) throws {
        let (name, damage, names) = Self.damages[index]
        let scratch = Scratch()
        defer { scratch.cleanup() }
        let registry = LunRegistry(configuration: StorageConfiguration(stateDirectory: scratch.path + "/state"))
        try registry.prepare()
        try registry.save(bare, durable: false)
        let path = registry.directory + "/x.json"
        let text = damage(String(decoding: readFile(path) ?? [], as: UTF8.self))
        #expect(text != bare.json, "\(name): the damage changed nothing")
        let fd = open(path, O_WRONLY | O_TRUNC | O_CLOEXEC)
        try #require(fd >= 0)
        try writeAll(fd, Array(text.utf8), path: path)
        close(fd)
        let errors = [#expect(throws: SiloError.self, "\(name)") { _ = try registry.load("x") },
                      #expect(throws: SiloError.self, "\(name)") { _ = try registry.loadAll() }]
        for error in errors {
            #expect(error?.code == .invalidJSON, "\(name)")
            #expect(error?.field == "record" && error?.value == path, "\(name)")
            #expect(error?.message.contains(path) == true, "\(name)")
            #expect(error?.message.contains(names) == true, "\(name): \(error?.message ?? "")")
        }
    }

    @Test("S13 the pool list writes as JSONEncoder wrote it and reads back equal", arguments: [0, 1, 3])
    func poolList(count: Int) throws {
        let records = (0..<count).map { PoolRecord(name: "p\($0)", directory: "/mnt/disk \($0)/\"pool\"") }
        #expect(PoolRecord.json(records) == (try encoded(records)))
        #expect(try PoolRecord.list(json: try encoded(records)) == records)
        #expect(try PoolRecord.list(json: PoolRecord.json(records)) == records)
    }

    @Test("S13 a damaged pool list is invalidJSON naming the item and field")
    func damagedPoolList() throws {
        let cases = [("[{\"name\" : \"p\"}]", "[0].directory"),
                     ("[{\"name\" : \"p\", \"directory\" : 1}]", "[0].directory"),
                     ("[{\"name\" : \"p\", \"directory\" : \"/d\"", "document"),
                     ("{}", "record")]
        for (text, field) in cases {
            let error = #expect(throws: SiloError.self, "\(text)") { _ = try PoolRecord.list(json: text) }
            #expect(error?.code == .invalidJSON && error?.field == field, "\(text): \(error?.field ?? "")")
        }
    }

    @Test("CLI drive list --json writes drives as JSONEncoder writes them: every field, none, empty and awkward lists", arguments: [0, 1, 2])
    func drives(count: Int) throws {
        let full = Drive(
            id: "wwn-0x5000 \"x\"", name: "sda", devicePath: "/dev/sda", deviceNumber: "8:0", size: UInt64.max,
            logicalSectorSize: 512, physicalSectorSize: 4096, busType: "scsi", isRotational: true, isRemovable: false,
            isReadOnly: true, model: Self.awkward, vendor: "ATA", serial: "S/N 1", wwn: "0x5000", partitionTableType: "gpt",
            filesystemType: "ext4", filesystemUUID: "1234-ABCD", filesystemLabel: "data\tdisk",
            mountPoints: ["/", "/mnt/with space"], holders: ["dm-0"],
            partitions: [DrivePartition(name: "sda1", devicePath: "/dev/sda1", deviceNumber: "8:1", number: 1, start: 1_048_576,
                                        size: 1 << 30, partitionType: "c12a7328-f81f-11d2-ba4b-00a0c93ec93b",
                                        partitionUUID: "11111111-2222-4333-8444-555555555555", partitionLabel: "EFI \"system\"",
                                        filesystemType: "vfat", filesystemUUID: "AB-CD", filesystemLabel: "EFI",
                                        mountPoints: ["/boot/efi"]),
                         DrivePartition(name: "sda2", devicePath: nil, deviceNumber: nil, number: 2, start: 0, size: 0,
                                        filesystemType: nil, filesystemUUID: nil, filesystemLabel: nil, mountPoints: [])],
            backingFile: "/srv/images/disk.img", pool: "/var/lib/silo/pool", pools: ["default", "fast"],
            extents: [DriveExtent(lun: "db1", backingFile: "/var/lib/silo/pool/a.img", allocatedBytes: 4096)]
        )
        let bare = Drive(
            id: "zram-zram0", name: "zram0", devicePath: "/dev/zram0", deviceNumber: "253:0", size: 0, logicalSectorSize: 4096,
            physicalSectorSize: 4096, busType: "zram", isRotational: false, isRemovable: false, isReadOnly: false, model: nil,
            vendor: nil, serial: nil, wwn: nil, partitionTableType: nil, filesystemType: nil, filesystemUUID: nil,
            filesystemLabel: nil, mountPoints: [], holders: [], partitions: [], backingFile: nil, pool: nil, extents: []
        )
        let drives = Array([full, bare].prefix(count))
        #expect(Drive.json(drives) == (try encoded(drives)))
        for drive in drives { #expect(drive.json == (try encoded(drive))) }
    }

    @Test("CLI lun create|show|list --json write LUNs as JSONEncoder writes them: every field, none, empty and awkward lists", arguments: [0, 1, 2])
    func luns(count: Int) throws {
        let full = LunProperties(
            id: "6f1c2a9e \"x\"", name: "db1", friendlyName: Self.awkward, type: "simple", size: UInt64.max,
            allocatedBytes: 1 << 40, logicalBlockSize: 4096, provisioning: .zeroed, status: .online, devicePath: "/dev/loop7",
            link: "/dev/silo/db1", backingFile: "/var/lib/silo/pool/a b.img", pool: "fast", serialNumber: "SILO-6F1C2A9E",
            unmaskingList: "web-1;db.2", readOnly: true, directIO: false, createdAt: Int64.min
        )
        let bare = LunProperties(
            id: "x", name: "x", friendlyName: nil, type: "simple", size: 0, allocatedBytes: 0, logicalBlockSize: 512,
            provisioning: .thin, status: .missing, devicePath: nil, link: nil, backingFile: "", pool: "default",
            serialNumber: "", unmaskingList: "", readOnly: false, directIO: true, createdAt: 0
        )
        let luns = Array([full, bare].prefix(count))
        #expect(LunProperties.json(luns) == (try encoded(luns)))
        for lun in luns { #expect(lun.json == (try encoded(lun))) }
    }
}
