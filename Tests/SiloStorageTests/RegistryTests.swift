import Glibc
import SiloOperations
import Testing

@testable import SiloStorage

/// How a change's final record replaces the one marked at its start (S12, S13): written and
/// synced before the registry lock, renamed under it; and the slow way when the stored record
/// moved all the same.
@Suite("The registry's replace")
struct RegistryTests {
    func record(_ name: String, owner: LunRecord.Owner?) -> LunRecord {
        LunRecord(id: name, name: name, friendlyName: nil, size: 1 << 20, blockSize: 512, provisioning: .thin,
                  readOnly: false, directIO: true, unmasking: .nobody, backingFile: "/nonexistent/\(name).img",
                  pool: "default", state: .ready, online: true, device: nil, owner: owner, createdAt: 0)
    }

    func withRegistry(_ body: (LunRegistry) throws -> Void) throws {
        let scratch = Scratch()
        defer { scratch.cleanup() }
        let registry = LunRegistry(configuration: StorageConfiguration(stateDirectory: scratch.path + "/state"))
        try registry.prepare()
        try body(registry)
        // No temporary file is left beside the records, whichever way the replace went.
        #expect(directoryEntries(registry.directory).allSatisfy { $0.hasSuffix(".json") && !$0.hasPrefix(".") })
    }

    let mark = ProcessIdentity.current(operation: "test")

    @Test("S12 the change applies to the record as marked, and clears the mark")
    func replaces() throws {
        try withRegistry { registry in
            try registry.save(record("a", owner: mark), durable: false)
            let marked = try #require(try registry.load("a"))
            try registry.replace(marked) { $0.size = 2 << 20; $0.owner = nil }
            let stored = try #require(try registry.load("a"))
            #expect(stored.size == 2 << 20)
            #expect(stored.owner == nil)
        }
    }

    @Test("S12 a record that moved since it was marked gets the change applied to what is stored")
    func storedMoved() throws {
        try withRegistry { registry in
            try registry.save(record("b", owner: mark), durable: false)
            let marked = try #require(try registry.load("b"))
            var moved = marked
            moved.friendlyName = "written meanwhile"
            try registry.save(moved)
            try registry.replace(marked) { $0.size = 3 << 20; $0.owner = nil }
            let stored = try #require(try registry.load("b"))
            #expect(stored.friendlyName == "written meanwhile")
            #expect(stored.size == 3 << 20)
            #expect(stored.owner == nil)
        }
    }

    @Test("S13 a record removed since it was marked stays removed")
    func removedStaysRemoved() throws {
        try withRegistry { registry in
            try registry.save(record("c", owner: mark), durable: false)
            let marked = try #require(try registry.load("c"))
            try registry.remove("c")
            try registry.replace(marked) { $0.owner = nil }
            #expect(try registry.load("c") == nil)
        }
    }
}
