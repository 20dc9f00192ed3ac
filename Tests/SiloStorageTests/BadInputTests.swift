import FoundationEssentials
import Dispatch
import Glibc
import SiloOperations
import Testing

@testable import SiloStorage

struct BadInputCase: Decodable, CustomTestStringConvertible, Sendable {
    let args: [String]
    let option: String
    let value: String
    let exit: Int32
    /// A part of the message the error must contain, where the case gives one.
    let says: String?
    var testDescription: String { args.joined(separator: " ") }
}

let badInputCases: [BadInputCase] = {
    let path = #filePath.split(separator: "/").dropLast(3).joined(separator: "/") + "/fixtures/storage/bad-input.json"
    struct Corpus: Decodable { let cases: [BadInputCase] }
    guard let bytes = readFile("/" + path), let corpus = try? JSONDecoder().decode(Corpus.self, from: Data(bytes)) else {
        return []
    }
    return corpus.cases
}()

@Suite("Bad input", .tags(.root), .requiresLoopDevices, .requiresSiloBinary)
struct BadInputTests {
    @Test("The corpus is there")
    func corpusLoaded() {
        #expect(badInputCases.count > 30)
    }

    @Test("E1 E3 bad CLI input gets a clear error naming the option and value, and changes nothing", arguments: badInputCases)
    func cliRejects(_ input: BadInputCase) throws {
        let scratch = Scratch()
        defer { scratch.cleanup() }
        let state = scratch.path + "/state"
        let result = silo(state, input.args)
        #expect(result.status == input.exit, "exit \(result.status): \(result.error)")
        #expect(result.error.hasPrefix("Error: "), "\(result.error)")
        #expect(result.error.contains(input.option), "names the option: \(result.error)")
        // The value as the error quotes it ('0', not a 0 in some other number), the start of a long
        // one; an option or a path as it stands; no value at all as missing.
        let named = if input.value.isEmpty {
            "missing"
        } else if input.value.hasPrefix("--") || input.value.hasPrefix("/") {
            input.value
        } else {
            "'" + input.value.prefix(60)
        }
        #expect(result.error.contains(named), "names the value (\(named)): \(result.error)")
        if let says = input.says { #expect(result.error.contains(says), "says '\(says)': \(result.error)") }
        #expect(result.output.isEmpty)
        #expect(!fileExists(state), "made the state directory: \(directoryEntries(state))")
        #expect(directoryEntries(state + "/luns").isEmpty)
        #expect(directoryEntries(state + "/pool").isEmpty)
        #expect(loopDevices(backedUnder: scratch.path).isEmpty)
    }

    @Test("E3 bad library input throws at once and changes nothing")
    func libraryRejects() throws {
        let storage = TestStorage()
        defer { storage.finish() }
        _ = try storage.create("existing", size: 1 << 20)
        let before = try storage.provider.luns()
        let specs: [(LunSpec, SiloError.Code, String)] = [
            (LunSpec(name: "a/b", size: 1 << 20), .invalidArgument, "name"), (LunSpec(name: "..", size: 1 << 20), .invalidArgument, "name"),
            (LunSpec(name: "", size: 1 << 20), .invalidArgument, "name"),
            (LunSpec(name: String(repeating: "n", count: 300), size: 1 << 20), .invalidArgument, "name"),
            (LunSpec(name: "z", size: 0), .invalidArgument, "size"), (LunSpec(name: "existing", size: 1 << 20), .invalidArgument, "name"),
            (LunSpec(name: "z", size: 1 << 20, type: .parity), .notSupported, "type"),
            (LunSpec(name: "z", size: 1 << 20, drives: ["nowhere"]), .objectNotFound, "drive"),
            (LunSpec(name: "z", size: 1 << 20, logicalBlockSize: 2048), .invalidArgument, "block size"),
        ]
        let callbackRan = Counter()
        for (spec, code, field) in specs {
            let error = #expect(throws: SiloError.self, "\(spec.name)") {
                _ = try storage.provider.createLun(spec, callback: .short { _ in callbackRan.increment() })
            }
            #expect(error?.code == code && error?.field == field, "\(spec.name): \(String(describing: error))")
        }
        usleep(50_000)  // a callback wrongly queued would have run by now
        #expect(callbackRan.value == 0)
        #expect((#expect(throws: SiloError.self) { _ = try storage.provider.extendLun("existing") })?.code == .invalidArgument)
        #expect((#expect(throws: SiloError.self) { _ = try storage.provider.extendLun("existing", by: 1, to: 1 << 30) })?.code == .invalidArgument)
        #expect((#expect(throws: SiloError.self) { _ = try storage.provider.shrinkLun("existing", by: 1 << 20) })?.code == .invalidShrinkSize)
        #expect((#expect(throws: SiloError.self) { try storage.provider.setMask("existing", "a;*") })?.field == "unmasking list")
        #expect(try storage.provider.luns() == before)
        #expect(directoryEntries(storage.provider.configuration.poolDirectory).count == 1)
    }

    @Test("E1 a state directory that is a file, read-only, or on a full file system gets a clear error")
    func badStateDirectories() throws {
        let scratch = Scratch()
        defer { scratch.cleanup() }
        let file = scratch.path + "/file"
        try makeSparseFile(file, size: 0)
        let onFile = silo(file, ["lun", "create", "--name", "x", "--size", "1M"])
        #expect(onFile.status == 64)
        #expect(onFile.error.contains("--state-dir") && onFile.error.contains(file) && onFile.error.contains("not a directory"))

        let readOnly = scratch.path + "/ro"
        mkdir(readOnly, 0o755)
        try #require(run("/bin/mount", ["-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", readOnly]).status == 0)
        defer { _ = run("/bin/umount", [readOnly]) }
        let onReadOnly = silo(readOnly + "/state", ["lun", "create", "--name", "x", "--size", "1M"])
        #expect(onReadOnly.status == 1)
        #expect(onReadOnly.error.contains("--state-dir") && onReadOnly.error.contains(readOnly + "/state"))

        let full = scratch.path + "/full"
        mkdir(full, 0o755)
        try #require(run("/bin/mount", ["-t", "tmpfs", "-o", "size=1m", "tmpfs", full]).status == 0)
        defer { _ = run("/bin/umount", [full]) }
        _ = run("/bin/dd", ["if=/dev/zero", "of=\(full)/filler", "bs=64k", "count=64"])
        let onFull = silo(full + "/state", ["lun", "create", "--name", "x", "--size", "4M", "--provisioning", "thick"])
        #expect(onFull.status == 1, "\(onFull.error)")
        #expect(onFull.error.contains("space") || onFull.error.contains("No space"), "\(onFull.error)")
        #expect(directoryEntries(full + "/state/luns").isEmpty)
        #expect(directoryEntries(full + "/state/pool").isEmpty)
        #expect(loopDevices(backedUnder: scratch.path).isEmpty)
    }

    @Test("E1 a clone that finds no room names its SOURCE, not a --size clone does not have")
    func cloneWithoutRoom() throws {
        let scratch = Scratch()
        defer { scratch.cleanup() }
        let small = try scratch.smallFileSystem(size: "12m")
        defer { _ = run("/bin/umount", [small]) }
        let state = scratch.path + "/state"
        #expect(silo(state, ["pool", "add", "small", small]).status == 0)
        #expect(silo(state, ["lun", "create", "--name", "big", "--size", "8M", "--provisioning", "thick", "--pool", "small"]).status == 0)
        defer { _ = silo(state, ["lun", "delete", "big"]) }
        let clone = silo(state, ["lun", "clone", "big", "--name", "copy"])
        #expect(clone.status == 1, "\(clone.output)")
        #expect(clone.error.contains("(SOURCE)") && !clone.error.contains("--size"), "\(clone.error)")
        #expect(silo(state, ["lun", "show", "copy"]).status != 0, "no clone left")
    }

    @Test("S7 a create whose final record cannot be written (its state directory's file system full) rolls back: no record, file, device or link")
    func registerFails() throws {
        let scratch = Scratch()
        defer { scratch.cleanup() }
        let small = try scratch.smallFileSystem(size: "1m")
        defer { _ = run("/bin/umount", [small]) }
        let links = scratch.path + "/links"
        let provider = StorageProvider(configuration: StorageConfiguration(stateDirectory: small + "/state", linkDirectory: links))
        let pool = scratch.path + "/pool"
        mkdir(pool, 0o755)
        _ = try provider.addPool("side", directory: pool)
        // A zeroed create in a pool elsewhere: its zeroing leaves time to fill the state directory.
        let operation = try provider.createLun(LunSpec(name: "late", size: 256 << 20, provisioning: .zeroed, pool: "side"))
        #expect(eventually { directoryEntries(small + "/state/luns").contains("late.json") }, "the create reserved its name")
        _ = run("/bin/dd", ["if=/dev/zero", "of=\(small)/filler", "bs=4k"])  // to the last block
        let failed = #expect(throws: SiloError.self) { _ = try operation.wait(timeout: .seconds(120)) }
        unlink(small + "/filler")
        #expect(failed?.errno == ENOSPC && failed?.message.contains("/state/luns/") == true, "the record's write failed: \(String(describing: failed))")
        #expect(try provider.luns().isEmpty, "no record")
        #expect(directoryEntries(pool).filter { $0.hasSuffix(".img") }.isEmpty, "no backing file")
        #expect(loopDevices(backedUnder: pool).isEmpty, "no device")
        #expect(directoryEntries(links).isEmpty, "no stable name")
    }

    @Test("S7 an online whose record cannot be written (the state directory's file system full) unbinds the device it bound: the LUN stays offline, with no device or name")
    func onlineUnsaved() throws {
        let state = try FillableStateDirectory()
        defer { state.finish() }
        let provider = state.provider
        let lun = try provider.createLun(LunSpec(name: "flip", size: 16 << 20, pool: "side")).wait(timeout: .seconds(60))
        defer { _ = try? provider.deleteLun("flip").wait(timeout: .seconds(60)) }
        _ = try provider.setOnline("flip", false).wait(timeout: .seconds(60))
        let failed = state.failingWhenFull { try provider.setOnline("flip", true) }
        #expect(failed?.errno == ENOSPC, "\(String(describing: failed))")
        #expect(LoopDevice.bound(toFile: lun.backingFile).isEmpty, "no device over the file the record does not name")
        #expect(directoryEntries(state.links).isEmpty, "no stable name")
        let after = try provider.lun(named: "flip")
        #expect(after.status == .offline && after.devicePath == nil, "\(after)")
        #expect(try provider.setOnline("flip", true).wait(timeout: .seconds(60)).status == .online, "with room, it comes online")
    }

    @Test("S15 an extend whose record cannot be written (the state directory's file system full) leaves no busy mark: the next change settles the LUN by its file")
    func extendUnsaved() throws {
        let state = try FillableStateDirectory()
        defer { state.finish() }
        let provider = state.provider
        let lun = try provider.createLun(LunSpec(name: "grow", size: 16 << 20, pool: "side")).wait(timeout: .seconds(60))
        defer { _ = try? provider.deleteLun("grow").wait(timeout: .seconds(60)) }
        // Its record write fails past its point of no return, and so does its cleanup's.
        let failed = state.failingWhenFull { try provider.extendLun("grow", by: 16 << 20) }
        #expect(failed?.errno == ENOSPC, "\(String(describing: failed))")
        #expect(BackingFile.size(lun.backingFile) == 32 << 20, "the file and device grew before the record write")
        // With room again, the next change is not refused as busy: it settles the record by the file.
        #expect(try provider.setMask("grow", "web").unmaskingList == "web")
        #expect(try provider.lun(named: "grow").size == 32 << 20, "settled by the file's size")
        #expect(try provider.extendLun("grow", by: 16 << 20).wait(timeout: .seconds(60)).size == 48 << 20)
    }

    @Test("E3 a change to a LUN on a state directory that is not there (a mistyped --state-dir) says no such LUN and makes nothing")
    func missingStateDirectory() throws {
        let scratch = Scratch()
        defer { scratch.cleanup() }
        let state = scratch.path + "/typo"
        let provider = StorageProvider(configuration: StorageConfiguration(stateDirectory: state))
        let calls: [(String, () throws(SiloError) -> Void)] = [
            ("delete", { () throws(SiloError) in _ = try provider.deleteLun("x") }),
            ("extend", { () throws(SiloError) in _ = try provider.extendLun("x", by: 1 << 20) }),
            ("shrink", { () throws(SiloError) in _ = try provider.shrinkLun("x", by: 1 << 20) }),
            ("mask", { () throws(SiloError) in _ = try provider.setMask("x", "a") }),
            ("offline", { () throws(SiloError) in _ = try provider.setOnline("x", false) }),
        ]
        for (what, call) in calls {
            let error = #expect(throws: SiloError.self, "\(what)") { try call() }
            #expect(error?.code == .objectNotFound && error?.value == "x", "\(what): \(String(describing: error))")
            #expect(access(state, F_OK) != 0, "\(what) made the state directory")
        }
        // A bad name is refused before the lock too.
        let badName = #expect(throws: SiloError.self) { _ = try provider.deleteLun("../x") }
        #expect(badName?.field == "name" && access(state, F_OK) != 0)
        let cli = silo(state, ["lun", "delete", "x"])
        #expect(cli.status == 1 && cli.error.contains("'x'") && access(state, F_OK) != 0, "\(cli.error)")
        #expect(cli.error.hasSuffix("(NAME) [objectNotFound]\n"), "the stable code ends the line: \(cli.error)")
    }

    @Test("E1 E3 an empty --state-dir and the root folder as state directory are refused; nothing is made")
    func unusableStateDirectories() throws {
        let empty = execute(siloBinary, ["--state-dir", "", "lun", "create", "--name", "x", "--size", "1M"])
        #expect(empty.status == 64 && empty.error.contains("state-dir"), "\(empty.status): \(empty.error)")
        #expect(empty.error.split(separator: "\n").first?.hasSuffix("[invalidArgument]") == true, "the stable code ends the line: \(empty.error)")
        // Compute refuses it too: its runtime folder would be the host's /run itself.
        let runBefore = directoryEntries("/run", hidden: true).sorted()
        let systemsBefore = directoryEntries("/run/systems", hidden: true).sorted()
        let run = execute(siloBinary, ["--state-dir", "/", "run", "--lun", "nowhere", "--", "/bin/true"])
        #expect(run.status == 64 && run.error.contains("(--state-dir) [invalidArgument]"), "\(run.status): \(run.error)")
        #expect(directoryEntries("/run", hidden: true).sorted() == runBefore, "nothing made in /run")
        #expect(directoryEntries("/run/systems", hidden: true).sorted() == systemsBefore, "nothing made in /run/systems")
        let root = StorageProvider(configuration: StorageConfiguration(stateDirectory: "/"))
        let error = #expect(throws: SiloError.self) { _ = try root.createLun(LunSpec(name: "null", size: 1 << 20)) }
        #expect(error?.code == .invalidArgument && error?.field == "state directory", "\(String(describing: error))")
        #expect(access("/luns", F_OK) != 0 && access("/lock", F_OK) != 0)
        var info = stat()
        #expect(lstat("/dev/null", &info) == 0 && info.st_mode & S_IFMT == S_IFCHR, "/dev/null is the host's")
    }
}

final class Counter: Sendable {
    private let value_ = Recorder<Int>()
    func increment() { value_.append(1) }
    var value: Int { value_.values.count }
}

extension Scratch {
    /// A tmpfs of `size` mounted at `small` in the scratch folder, to fill; the caller unmounts it.
    func smallFileSystem(size: String) throws -> String {
        let small = path + "/small"
        mkdir(small, 0o755)
        try #require(run("/bin/mount", ["-t", "tmpfs", "-o", "size=\(size)", "tmpfs", small]).status == 0)
        return small
    }
}

/// A state directory on a 1 MiB file system of its own, a pool "side" elsewhere, and one worker:
/// for the calls whose record write a test makes fail by filling that file system.
struct FillableStateDirectory {
    let scratch = Scratch()
    let small: String
    let links: String
    let scheduler = OperationScheduler(limits: .init(maxRunning: 1))
    let provider: StorageProvider

    init() throws {
        small = try scratch.smallFileSystem(size: "1m")
        links = scratch.path + "/links"
        provider = StorageProvider(configuration: StorageConfiguration(stateDirectory: small + "/state", linkDirectory: links,
                                                                       scheduler: scheduler))
        let pool = scratch.path + "/pool"
        mkdir(pool, 0o755)
        do {
            _ = try provider.addPool("side", directory: pool)
        } catch {
            finish()
            throw error
        }
    }

    /// What the operation `call` starts fails with, when its work (queued while the only worker
    /// is held; the call marks its LUN at once) runs with the state directory's file system full.
    func failingWhenFull<T>(_ call: () throws -> SiloOperation<T>, sourceLocation: SourceLocation = #_sourceLocation) -> SiloError? {
        let gate = DispatchSemaphore(value: 0)
        guard let blocker = try? scheduler.run(.recoverLun, { _ in gate.wait() }) else { return nil }
        defer {
            gate.signal()
            _ = try? blocker.wait(timeout: .seconds(30))
            unlink(small + "/filler")
        }
        do {
            let operation = try call()
            _ = run("/bin/dd", ["if=/dev/zero", "of=\(small)/filler", "bs=4k"])  // to the last block
            gate.signal()
            _ = try operation.wait(timeout: .seconds(60))
            Issue.record("the operation succeeded with its state directory full", sourceLocation: sourceLocation)
            return nil
        } catch {
            return SiloError(error)
        }
    }

    func finish() {
        _ = run("/bin/umount", [small])
        scratch.cleanup()
    }
}
