import FoundationEssentials
import Glibc
import SiloOperations
import Testing

@testable import SiloCompute

/// A system's `state.json`, read and written by hand, against what JSONEncoder wrote before (the
/// reference, `.sortedKeys` only): both directions, byte for byte.
@Suite("Compute system records as JSON")
struct SystemRecordJSONTests {
    let full = SystemRecord(
        id: "web-1", owner: "Sample \"owner\" \\ é 😀", state: .running,
        document: "{\"SchemaVersion\":{\"Major\":2,\"Minor\":1},\n\t\"Owner\":\"a/b\",\"Note\":\"\\u0001\"}\n",
        initPID: 4_194_304, initStartTime: 98_765_432_109, exitType: .unexpected, createdAt: 1_796_285_879,
        shouldTerminateOnLastHandleClosed: true,
        attachments: [
            Attachment(lun: "db1", devicePath: "/dev/loop7", deviceNumber: "7:7", mountPath: "/data/db 1",
                       readOnly: true, location: "0/1"),
            Attachment(lun: "/dev/loop8", devicePath: "/dev/loop8", deviceNumber: "7:8", mountPath: nil,
                       readOnly: false),
        ],
        rawLeases: ["/dev/loop8", "db2"],
        memoryLimit: UInt64.max, processorCount: Int.max, processorLimit: 50_000, cgroupParent: "system.slice/ci.service/pay loads"
    )

    let bare = SystemRecord(id: "s", owner: nil, state: .created, document: "{}", initPID: nil, initStartTime: nil,
                            exitType: nil, createdAt: 0, shouldTerminateOnLastHandleClosed: false)

    func encoded(_ record: SystemRecord) throws -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        return String(decoding: try encoder.encode(record), as: UTF8.self)
    }

    func records() -> [SystemRecord] {
        var noAttachments = full
        noAttachments.attachments = []
        return [full, bare, noAttachments]
    }

    @Test("Records: a record writes as JSONEncoder wrote it and reads back equal")
    func roundTrip() throws {
        for record in records() {
            #expect(record.json == (try encoded(record)))
            #expect(try SystemRecord(json: record.json) == record)
        }
    }

    @Test("Records: a record JSONEncoder wrote reads equal, and JSONDecoder reads what is written")
    func bothWays() throws {
        for record in records() {
            #expect(try SystemRecord(json: try encoded(record)) == record)
            #expect(try JSONDecoder().decode(SystemRecord.self, from: Data(record.json.utf8)) == record)
        }
    }

    @Test("Records: a record saved and loaded through the store is the same; a damaged one is invalidJSON naming the system")
    func store() throws {
        var template = Array("/tmp/silo-record-XXXXXX".utf8CString)
        let scratch = try #require(template.withUnsafeMutableBufferPointer { $0.baseAddress.flatMap { mkdtemp($0) } }
            .map { String(cString: $0) })
        let store = SystemStore(configuration: ComputeConfiguration(runtimeDirectory: scratch, initBinary: "/bin/true"))
        defer {
            store.remove(full.id)
            rmdir(store.systems)
            rmdir(scratch)
        }
        close(try store.reserve(full.id))
        try store.save(full)
        #expect(try store.load(full.id) == full)
        let path = store.directory(full.id) + "/state.json"
        let text = full.json
        let damages: [(text: String, names: String)] = [
            (String(text.prefix(text.count - 1)), "line"),
            (text.replacing("\"createdAt\":1796285879", with: "\"createdAt\":\"1796285879\""), "createdAt"),
            (text.replacing(",\"state\":\"Running\"", with: ""), "state"),
            (text.replacing("\"Running\"", with: "\"Sleeping\""), "state"),
            (text.replacing("\"readOnly\":false", with: "\"readOnly\":0"), "attachments[1].readOnly"),
            (text.replacing("\"processorCount\":9223372036854775807", with: "\"processorCount\":9223372036854775808"),
             "processorCount"),
        ]
        for (damaged, names) in damages {
            #expect(damaged != text, "\(names): the damage changed nothing")
            let fd = open(path, O_WRONLY | O_TRUNC | O_CLOEXEC)
            try #require(fd >= 0)
            let bytes = Array(damaged.utf8)
            #expect(bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) } == bytes.count)
            close(fd)
            let error = #expect(throws: SiloError.self, "\(names)") { _ = try store.load(full.id) }
            #expect(error?.code == .invalidJSON && error?.field == "id" && error?.value == full.id, "\(names)")
            #expect(error?.message.contains(names) == true, "\(names): \(error?.message ?? "")")
        }
    }
}
