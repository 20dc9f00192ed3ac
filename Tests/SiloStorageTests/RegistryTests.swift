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

    let mark = try! ProcessIdentity.current(operation: "test")

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

/// The two facts every record carries about who made it: a LUN id, and the owner's start time.
@Suite("Identities")
struct IdentityTests {
    @Test("S13 LUN ids are random version 4 UUIDs in the usual form")
    func identifiers() {
        let ids = (0..<200).map { _ in newIdentifier() }
        #expect(Set(ids).count == ids.count)
        let hex = Set("0123456789abcdef")
        for id in ids {
            let groups = id.split(separator: "-", omittingEmptySubsequences: false)
            #expect(groups.map(\.count) == [8, 4, 4, 4, 12], "\(id)")
            #expect(groups.allSatisfy { $0.allSatisfy(hex.contains) }, "\(id)")
            #expect(groups[2].first == "4", "version nibble of \(id)")
            #expect("89ab".contains(groups[3].first ?? "x"), "variant of \(id)")
        }
        // Every nibble takes many values over 200 ids: nothing is stuck at zero.
        for position in id(ids[0]).indices where ![12, 16].contains(position) {
            #expect(Set(ids.map { id($0)[position] }).count > 4, "nibble \(position) barely varies")
        }
        func id(_ text: String) -> [Character] { Array(text.filter { $0 != "-" }) }
    }

    @Test("S15 an owner's start time is field 22 of /proc/<pid>/stat, even when its name holds spaces and parentheses")
    func startTimes() throws {
        // The reference reads the line the obvious way: the fields after the last ')'.
        func reference(_ pid: Int32) -> UInt64? {
            guard let stat = readSmallFile("/proc/\(pid)/stat"), let close = stat.lastIndex(of: ")") else { return nil }
            let fields = stat[stat.index(after: close)...].split(separator: " ")
            return fields.count > 19 ? UInt64(fields[19]) : nil
        }
        #expect(ProcessIdentity.startTime(of: getpid()) == reference(getpid()))
        #expect(ProcessIdentity.startTime(of: getpid()) != nil)
        // A process whose name is "a) b (c": sleep, exec'd by a shell through a link of that name
        // (the shell, single-threaded, takes the name of what it execs).
        let scratch = Scratch()
        defer { scratch.cleanup() }
        let link = scratch.path + "/a) b (c"
        #expect(symlink("/bin/sleep", link) == 0)
        var pid: pid_t = 0
        var argv: [UnsafeMutablePointer<CChar>?] = [strdup("/bin/sh"), strdup("-c"), strdup("exec \"$0\" 100"), strdup(link), nil]
        defer { argv.forEach { free($0) } }
        let spawned = posix_spawn(&pid, "/bin/sh", nil, nil, &argv, environ)
        try #require(spawned == 0 && pid > 0)
        defer {
            kill(pid, SIGKILL)
            waitpid(pid, nil, 0)
        }
        // The sleep outlives this wait (killed by the defer above): slow under software emulation.
        var name = ""
        _ = eventually {
            name = readSmallFile("/proc/\(pid)/comm") ?? ""
            return name.contains(")")
        }
        #expect(name == "a) b (c", "comm is \(name)")
        #expect(ProcessIdentity.startTime(of: pid) == reference(pid))
        #expect(ProcessIdentity.startTime(of: pid) != nil)
        #expect(ProcessIdentity.startTime(of: 0) == nil)
    }

    @Test("S15 an owner written in another boot is dead even when a live process has its pid and start time now; its boot id goes into records and marks")
    func ownerOfAnotherBoot() throws {
        let own = try ProcessIdentity.current(operation: "createLun")
        let boot = try #require(ProcessIdentity.bootID, "no /proc/sys/kernel/random/boot_id here")
        #expect(own.boot == boot && boot.count == 36, "\(own)")
        #expect(ProcessIdentity.isAlive(own))
        var before = own
        before.boot = "00000000-0000-4000-8000-000000000000"
        #expect(!ProcessIdentity.isAlive(before), "an owner of another boot taken for this process")
        var unknown = own
        unknown.boot = nil  // written by a Silo that did not keep it: the pid and start time decide
        #expect(ProcessIdentity.isAlive(unknown))
        // Kept through a record's JSON and a mark's text.
        let scratch = Scratch()
        defer { scratch.cleanup() }
        let registry = LunRegistry(configuration: StorageConfiguration(stateDirectory: scratch.path + "/state"))
        try registry.prepare()
        try registry.locked { () throws(SiloError) in try registry.placeMark(.changing, "m", owner: before) }
        #expect(registry.mark(.changing, "m")?.boot == before.boot)
        #expect(registry.mark(.changing, "m").map(ProcessIdentity.isAlive) == false)
    }

    @Test("S15 an owner whose /proc entry cannot be read (no descriptor left) counts as alive, and a call that cannot read its own start time is refused, not written as an owner that looks dead")
    func unreadableProcCountsAlive() throws {
        var pid: pid_t = 0
        var argv: [UnsafeMutablePointer<CChar>?] = [strdup("/bin/sleep"), strdup("100"), nil]
        defer { argv.forEach { free($0) } }
        try #require(posix_spawn(&pid, "/bin/sleep", nil, nil, &argv, environ) == 0 && pid > 0)
        defer {
            kill(pid, SIGKILL)
            waitpid(pid, nil, 0)
        }
        let owner = LunRecord.Owner(pid: pid, startTime: try #require(ProcessIdentity.startTime(of: pid)), operation: "createLun")
        #expect(ProcessIdentity.isAlive(owner))
        // No descriptor left for a moment: every open fails with EMFILE.
        var limit = rlimit()
        try #require(getrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &limit) == 0)
        var none = limit
        none.rlim_cur = 3
        try #require(setrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &none) == 0)
        let alive = ProcessIdentity.isAlive(owner)
        let lookup = ProcessIdentity.lookUp(pid)
        let own = Result { () throws(SiloError) in try ProcessIdentity.current(operation: "createLun") }
        setrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &limit)
        #expect(lookup == .unknown)
        #expect(alive, "a live owner taken for dead because /proc could not be opened")
        if case .success(let written) = own { Issue.record("an owner written without its start time: \(written)") }
        // Gone is told apart: a pid that is not there.
        #expect(ProcessIdentity.lookUp(0) == .gone)
        #expect(!ProcessIdentity.isAlive(LunRecord.Owner(pid: pid, startTime: owner.startTime + 1, operation: "createLun")))
    }
}

@Suite("The state directory's path")
struct StateDirectoryPathTests {
    @Test("A state directory is made absolute, without empty or '.' components or a trailing slash")
    func normalized() throws {
        var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        let cwd = String(cString: try #require(getcwd(&buffer, buffer.count)))
        #expect(StorageConfiguration(stateDirectory: "rel/./state//").stateDirectory == (cwd == "/" ? "" : cwd) + "/rel/state")
        #expect(StorageConfiguration(stateDirectory: "/var//lib/./silo/").stateDirectory == "/var/lib/silo")
        #expect(StorageConfiguration(stateDirectory: "/var/lib/silo/").linkDirectory == "/dev/silo")
        #expect(StorageConfiguration(stateDirectory: "/").stateDirectory == "/")
    }
}
