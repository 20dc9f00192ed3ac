import CSiloLinux
import Dispatch
import Glibc
import Synchronization
import SiloOperations
import Testing

@testable import SiloStorage

extension Tag {
    @Tag static var root: Self
}

extension Trait where Self == ConditionTrait {
    /// Loop devices, mounts and the registry's lock need root and /dev/loop-control.
    static var requiresLoopDevices: Self {
        .enabled(
            if: geteuid() == 0 && access("/dev/loop-control", R_OK | W_OK) == 0,
            "needs root and /dev/loop-control: attaches loop devices"
        )
    }
}

/// A fresh state directory under /tmp, removed with everything in it by `cleanup()`.
struct Scratch {
    let path: String

    init(_ name: String = "silo-test") {
        var template = Array("/tmp/\(name)-XXXXXX".utf8CString)
        let made = template.withUnsafeMutableBufferPointer { buffer in buffer.baseAddress.flatMap { mkdtemp($0) } }
        precondition(made != nil, "mkdtemp failed")
        path = String(cString: template)
    }

    func cleanup() {
        _ = run("/bin/rm", ["-rf", path])
    }
}

/// posix_spawn, with the child starting as a shell would start it: no signal blocked, every signal's
/// default action. A test runs on a thread that blocks nearly every signal, and a child inherits
/// that mask (a shell whose SIGCHLD stays blocked never returns from `wait`; a CLI would not see a
/// SIGTERM a user's shell delivers).
func spawnCleanly(_ pid: inout pid_t, _ path: String, _ actions: UnsafePointer<posix_spawn_file_actions_t>?,
                  _ argv: [UnsafeMutablePointer<CChar>?], _ envp: UnsafePointer<UnsafeMutablePointer<CChar>?>?) -> Int32 {
    var attributes = posix_spawnattr_t()
    posix_spawnattr_init(&attributes)
    defer { posix_spawnattr_destroy(&attributes) }
    let reset = silo_spawnattr_reset_signals(&attributes, 1)
    guard reset == 0 else { return reset }
    return posix_spawn(&pid, path, actions, &attributes, argv, envp)
}

/// Runs a program and returns its exit status and standard output.
@discardableResult
func run(_ program: String, _ arguments: [String]) -> (status: Int32, output: String) {
    var pipeFDs: [Int32] = [0, 0]
    pipe(&pipeFDs)
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    posix_spawn_file_actions_adddup2(&actions, pipeFDs[1], 1)
    posix_spawn_file_actions_addclose(&actions, pipeFDs[0])
    let argv = ([program] + arguments).map { strdup($0) } + [nil]
    defer { argv.forEach { free($0) } }
    var pid: pid_t = 0
    let spawned = spawnCleanly(&pid, program, &actions, argv, environ)
    posix_spawn_file_actions_destroy(&actions)
    close(pipeFDs[1])
    var output = [UInt8]()
    var buffer = [UInt8](repeating: 0, count: 65536)
    while true {
        let count = read(pipeFDs[0], &buffer, buffer.count)
        if count <= 0 { break }
        output.append(contentsOf: buffer[0..<count])
    }
    close(pipeFDs[0])
    guard spawned == 0 else { return (-1, "") }
    var status: Int32 = 0
    waitpid(pid, &status, 0)
    return ((status & 0x7f) == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f), String(decoding: output, as: UTF8.self))
}

/// Polls `condition` every 5 ms until it holds or `seconds` pass; whether it held. The default is
/// generous because CI also runs these under software emulation: it only costs time when the
/// condition never holds.
func eventually(seconds: Double = 60, _ condition: () -> Bool) -> Bool {
    let deadline = ContinuousClock.now + .milliseconds(Int(seconds * 1000))
    while ContinuousClock.now < deadline {
        if condition() { return true }
        usleep(5000)
    }
    return condition()
}

/// Loop devices whose backing file lies under `directory`: what a test must leave none of.
func loopDevices(backedUnder directory: String) -> [LoopDevice] {
    LoopDevice.all().filter { $0.status?.backingFile.hasPrefix(directory) ?? false }
}

func makeSparseFile(_ path: String, size: Int64) throws {
    let fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
    guard fd >= 0 else { throw SiloError.system("open", errno: errno, path: path) }
    defer { close(fd) }
    guard ftruncate(fd, off_t(size)) == 0 else { throw SiloError.system("ftruncate", errno: errno, path: path) }
}

final class Recorder<Value: Sendable>: Sendable {
    private let storage = Mutex<[Value]>([])
    func append(_ value: Value) { storage.withLock { $0.append(value) } }
    var values: [Value] { storage.withLock { $0 } }
}

/// A provider on a scratch state directory; `finish()` deletes its LUNs, removes the directory,
/// and checks that nothing of it is left attached.
struct TestStorage {
    let scratch: Scratch
    let provider: StorageProvider

    init(overcommit: Double = 4) {
        scratch = Scratch()
        provider = StorageProvider(configuration: StorageConfiguration(
            stateDirectory: scratch.path + "/state", overcommitRatio: overcommit
        ))
    }

    var path: String { scratch.path }

    func finish(sourceLocation: SourceLocation = #_sourceLocation) {
        let unmount = "grep ' \(scratch.path)' /proc/self/mounts | cut -d' ' -f2 | sort -r | xargs -r -n1 umount 2>/dev/null"
        _ = run("/bin/sh", ["-c", unmount])
        for lun in (try? provider.luns()) ?? [] {
            _ = try? provider.deleteLun(lun.name, force: true).wait(timeout: .seconds(60))
        }
        let left = loopDevices(backedUnder: scratch.path)
        #expect(left.isEmpty, "loop devices left behind: \(left.map(\.path))", sourceLocation: sourceLocation)
        for device in left { _ = try? device.detach() }
        // A file system a LUN's file was on stayed mounted while the LUN was there.
        _ = run("/bin/sh", ["-c", unmount])
        if let names = provider.configuration.linkTarget {
            #expect(!fileExists(names), "stable names left in \(names): \(directoryEntries(names, hidden: true))", sourceLocation: sourceLocation)
            _ = run("/bin/rm", ["-rf", names])
        }
        scratch.cleanup()
    }

    /// Marks LUN `name` as changed by `operation` of a process that is dead (it exited and was
    /// reaped): as a change killed midway leaves it, for the next change or reenumerate to settle.
    func placeDeadMark(_ name: String, operation: String) throws {
        let dead = fork()
        if dead == 0 { _exit(0) }
        try #require(dead > 0)
        waitpid(dead, nil, 0)
        let registry = provider.registry
        try registry.locked { () throws(SiloError) in
            try registry.placeMark(.changing, name, owner: LunRecord.Owner(pid: dead, startTime: 1, operation: operation))
        }
    }

    func create(
        _ name: String, size: UInt64 = 32 << 20, provisioning: Provisioning = .thin, blockSize: UInt32 = 512
    ) throws -> LunProperties {
        try provider.createLun(LunSpec(name: name, size: size, provisioning: provisioning, logicalBlockSize: blockSize))
            .wait(timeout: .seconds(120))
    }
}

/// Reads `count` bytes at `offset` of a device or file.
func readBytes(_ path: String, offset: UInt64, count: Int) throws -> [UInt8] {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { throw SiloError.system("open", errno: errno, path: path) }
    defer { close(fd) }
    var buffer = [UInt8](repeating: 0xff, count: count)
    let got = buffer.withUnsafeMutableBytes { pread(fd, $0.baseAddress, count, off_t(offset)) }
    guard got == count else { throw SiloError.system("pread", errno: errno, path: path) }
    return buffer
}

func writeBytes(_ path: String, offset: UInt64, _ bytes: [UInt8]) throws {
    let fd = open(path, O_WRONLY | O_CLOEXEC)
    guard fd >= 0 else { throw SiloError.system("open", errno: errno, path: path) }
    defer { close(fd) }
    let put = bytes.withUnsafeBytes { pwrite(fd, $0.baseAddress, bytes.count, off_t(offset)) }
    guard put == bytes.count, fsync(fd) == 0 else { throw SiloError.system("pwrite", errno: errno, path: path) }
}

/// Replaces the file at `path` with `text`; false when it cannot.
@discardableResult
func writeFile(_ path: String, _ text: String) -> Bool {
    let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
    guard fd >= 0 else { return false }
    defer { close(fd) }
    let bytes = Array(text.utf8)
    return bytes.withUnsafeBytes { write(fd, $0.baseAddress, bytes.count) } == bytes.count
}

/// A provider whose scheduler runs one operation at a time, and a way to hold that one worker: an
/// operation started meanwhile waits with its call's checks done (to race something against the
/// gap between a call's check and its operation).
struct SerialStorage {
    let scratch = Scratch()
    let scheduler = OperationScheduler(limits: .init(maxRunning: 1))
    let provider: StorageProvider
    private let gate = DispatchSemaphore(value: 0)

    init() {
        provider = StorageProvider(configuration: StorageConfiguration(stateDirectory: scratch.path + "/state", scheduler: scheduler))
    }

    var path: String { scratch.path }

    /// Runs `body` while the worker is held, and lets it go after.
    func whileWorkerHeld<T>(_ body: () throws -> T) throws -> T {
        let blocker = try scheduler.run(.recoverLun) { [gate] _ in gate.wait() }
        defer {
            gate.signal()
            _ = try? blocker.wait(timeout: .seconds(30))
        }
        return try body()
    }

    func finish() {
        for lun in (try? provider.luns()) ?? [] { _ = try? provider.deleteLun(lun.name).wait(timeout: .seconds(60)) }
        for device in loopDevices(backedUnder: scratch.path) { _ = try? device.detach() }
        scratch.cleanup()
    }
}
