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
    let spawned = posix_spawn(&pid, program, &actions, nil, argv, environ)
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
