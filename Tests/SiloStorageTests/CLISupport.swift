import Glibc
import SiloOperations
import Testing

@testable import SiloStorage

/// The `silo` executable built beside the test bundle (`swift build --build-tests` builds it).
let siloBinary: String = {
    let exe = resolveLink("/proc/self/exe") ?? ""
    let directory = exe.split(separator: "/").dropLast().joined(separator: "/")
    return "/" + directory + "/silo"
}()

extension Trait where Self == ConditionTrait {
    static var requiresSiloBinary: Self {
        .enabled(if: access(siloBinary, X_OK) == 0, "needs the silo executable built beside the tests (swift build --build-tests)")
    }
}

struct Outcome {
    /// The exit code, or 128 + the signal that killed it, as a shell reports it.
    let status: Int32
    let output: String
    let error: String
    /// The signal that killed it (0 when it exited): what tells a silo that exited 143 from one
    /// SIGTERM's default action ended.
    var killedBy: Int32 = 0
}

/// Runs a program with stdout and stderr captured separately, optionally in the background.
func execute(_ program: String, _ arguments: [String], environment: [String: String] = [:]) -> Outcome {
    let child = spawn(program, arguments, environment: environment)
    return child.finish()
}

final class Child {
    let pid: pid_t
    private let outFD: Int32
    private let errFD: Int32

    init(pid: pid_t, outFD: Int32, errFD: Int32) {
        self.pid = pid
        self.outFD = outFD
        self.errFD = errFD
    }

    func kill(_ signal: Int32) { _ = Glibc.kill(pid, signal) }

    /// What the child has written to standard error so far (finish() returns it with the rest).
    private var errorSoFar: [UInt8] = []

    /// Reads the child's standard error until it holds `text` (true), the child closes it, or 60 s
    /// pass: to act once the child has said it reached a point, not after a guessed time.
    func waitForError(containing text: String) -> Bool {
        let deadline = ContinuousClock.now + .seconds(60)
        var buffer = [UInt8](repeating: 0, count: 4096)
        while ContinuousClock.now < deadline {
            if String(decoding: errorSoFar, as: UTF8.self).contains(text) { return true }
            var ready = pollfd(fd: errFD, events: Int16(POLLIN), revents: 0)
            guard poll(&ready, 1, 100) >= 0 || errno == EINTR else { return false }
            guard ready.revents != 0 else { continue }
            let count = read(errFD, &buffer, buffer.count)
            if count < 0, errno == EINTR { continue }
            if count <= 0 { return false }
            errorSoFar.append(contentsOf: buffer[0..<count])
        }
        return false
    }

    func finish() -> Outcome {
        // Drain both pipes (small outputs; read stderr after stdout closes).
        let output = drain(outFD)
        let error = String(decoding: errorSoFar, as: UTF8.self) + drain(errFD)
        var status: Int32 = 0
        waitpid(pid, &status, 0)
        let code = (status & 0x7f) == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
        return Outcome(status: code, output: output, error: error, killedBy: (status & 0x7f) == 0 ? 0 : status & 0x7f)
    }

    private func drain(_ fd: Int32) -> String {
        var bytes = [UInt8]()
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let count = read(fd, &buffer, buffer.count)
            if count < 0, errno == EINTR { continue }
            if count <= 0 { break }
            bytes.append(contentsOf: buffer[0..<count])
        }
        close(fd)
        return String(decoding: bytes, as: UTF8.self)
    }
}

func spawn(_ program: String, _ arguments: [String], environment: [String: String] = [:]) -> Child {
    var out: [Int32] = [0, 0]
    var err: [Int32] = [0, 0]
    pipe(&out)
    pipe(&err)
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    posix_spawn_file_actions_adddup2(&actions, out[1], 1)
    posix_spawn_file_actions_adddup2(&actions, err[1], 2)
    posix_spawn_file_actions_addclose(&actions, out[0])
    posix_spawn_file_actions_addclose(&actions, err[0])
    let argv = ([program] + arguments).map { strdup($0) } + [nil]
    var inherited: [String] = []
    var index = 0
    while let entry = environ[index] {
        let text = String(cString: entry)
        if !environment.keys.contains(where: { text.hasPrefix($0 + "=") }) { inherited.append(text) }
        index += 1
    }
    let envp = (inherited + environment.map { "\($0.key)=\($0.value)" }).map { strdup($0) } + [nil]
    defer {
        argv.forEach { free($0) }
        envp.forEach { free($0) }
    }
    var pid: pid_t = 0
    let result = spawnCleanly(&pid, program, &actions, argv, envp)
    posix_spawn_file_actions_destroy(&actions)
    close(out[1])
    close(err[1])
    precondition(result == 0, "cannot start \(program): \(result)")
    return Child(pid: pid, outFD: out[0], errFD: err[0])
}

func silo(_ state: String, _ arguments: [String]) -> Outcome {
    execute(siloBinary, ["--state-dir", state] + arguments)
}

/// Whether the child has exited, without reaping it (its `finish()` does).
func hasExited(_ pid: pid_t) -> Bool {
    var info = siginfo_t()
    return waitid(P_PID, id_t(pid), &info, WEXITED | WNOHANG | WNOWAIT) == 0 && info._sifields._sigchld.si_pid == pid
}

/// Whether `pid` blocks `signal` (the SigBlk mask its /proc status shows for its main thread).
/// silo blocks SIGINT first thing in `main`, so a Ctrl-C sent after this waits for the command to
/// take it; one sent before ends a silo still starting up (on a slow guest that takes longer than
/// any fixed sleep) as SIGINT's default does, saying nothing.
func blocks(_ pid: pid_t, _ signal: Int32) -> Bool {
    guard let status = readFile("/proc/\(pid)/status"),
          let line = String(decoding: status, as: UTF8.self).split(separator: "\n").first(where: { $0.hasPrefix("SigBlk:") }),
          let mask = UInt64(line.dropFirst("SigBlk:".count).filter { !$0.isWhitespace }, radix: 16)
    else { return false }
    return mask & (1 << UInt64(signal - 1)) != 0
}

/// Whether `pid` is blocked waiting for a flock another holds (a "->" line of /proc/locks).
func waitsForFlock(_ pid: pid_t) -> Bool {
    guard let locks = readFile("/proc/locks") else { return false }
    return String(decoding: locks, as: UTF8.self).split(separator: "\n").contains { line in
        let fields = line.split(separator: " ")
        return fields.count > 5 && fields[1] == "->" && fields[2] == "FLOCK" && fields[5] == "\(pid)"
    }
}

/// Whether `pid` has `path` open: a silo waiting for the registry lock has the lock file open
/// from just before its wait until it has the lock.
func hasOpen(_ pid: pid_t, _ path: String) -> Bool {
    directoryEntries("/proc/\(pid)/fd").contains { resolveLink("/proc/\(pid)/fd/\($0)") == path }
}

/// Whether the first LUN of `storage` has 16 MiB allocated: a zeroed create is under way (and has
/// let the registry lock go).
func zeroingStarted(_ storage: TestStorage) -> Bool {
    (try? storage.provider.luns().first?.allocatedBytes ?? 0) ?? 0 >= 16 << 20
}

/// The first child of `pid` (unshare's, for one started with --fork), once it has one (20 s at most).
func firstChild(of pid: pid_t) -> pid_t? {
    var child: pid_t?
    _ = eventually {
        child = readSmallFile("/proc/\(pid)/task/\(pid)/children").flatMap { $0.split(separator: " ").first }.flatMap { pid_t($0) }
        return child != nil
    }
    return child
}
