import CSiloAgent
import CSiloLinux
import Glibc
import SiloOperations

/// The pipes or the console of a process being created: the child's ends go to the agent, the
/// parent's stay with the caller's ``ComputeProcess``.
struct ProcessStdio {
    var flags: UInt32 = 0
    /// In the order the protocol wants: stdin, stdout, stderr (those asked for).
    var childEnds: [Int32] = []
    var input: Int32?
    var output: Int32?
    var error: Int32?

    init(_ parameters: ProcessParameters) throws(SiloError) {
        if parameters.emulateConsole {
            try openConsole(parameters.consoleSize)
            return
        }
        do {
            if parameters.createStdInPipe {
                let (read, write) = try Self.pipe()
                childEnds.append(read)
                input = write
                flags |= UInt32(SILO_SPAWN_STDIN.rawValue)
            }
            if parameters.createStdOutPipe {
                let (read, write) = try Self.pipe()
                childEnds.append(write)
                output = read
                flags |= UInt32(SILO_SPAWN_STDOUT.rawValue)
            }
            if parameters.createStdErrPipe {
                let (read, write) = try Self.pipe()
                childEnds.append(write)
                error = read
                flags |= UInt32(SILO_SPAWN_STDERR.rawValue)
            }
        } catch {
            closeChildEnds()
            closeParentEnds()
            throw error
        }
    }

    /// The caller's own descriptors, passed as they are; nothing for the caller to keep or close.
    init(passing streams: [Int32]) {
        for (index, fd) in streams.enumerated() where fd >= 0 {
            flags |= 1 << UInt32(index)
            passed.append(fd)
        }
    }

    /// Descriptors to send: the child's ends, or the caller's own passed as they are.
    var descriptors: [Int32] { childEnds + passed }
    private var passed: [Int32] = []

    /// A pseudo-terminal: the child gets the terminal side as stdin, stdout and stderr, and it
    /// becomes its controlling terminal; the caller keeps the controlling side.
    private mutating func openConsole(_ size: (height: Int, width: Int)?) throws(SiloError) {
        let master = Glibc.open("/dev/ptmx", O_RDWR | O_NOCTTY | O_CLOEXEC)
        guard master >= 0 else { throw SiloError.system("open", errno: errno, path: "/dev/ptmx") }
        guard silo_pty_unlock(master) == 0 else {
            let error = errno
            Glibc.close(master)
            throw SiloError.system("TIOCSPTLCK", errno: error)
        }
        let terminal = silo_pty_peer(master, O_RDWR | O_NOCTTY | O_CLOEXEC)
        guard terminal >= 0 else {
            let error = errno
            Glibc.close(master)
            throw SiloError.system("TIOCGPTPEER", errno: error)
        }
        let (height, width) = size ?? (24, 80)
        _ = silo_set_window_size(master, UInt16(height), UInt16(width))
        childEnds = [terminal, terminal, terminal]
        input = master
        output = master
        flags = UInt32(SILO_SPAWN_STDIN.rawValue | SILO_SPAWN_STDOUT.rawValue | SILO_SPAWN_STDERR.rawValue | SILO_SPAWN_CONSOLE.rawValue)
    }

    func closeChildEnds() { Set(childEnds).forEach { _ = Glibc.close($0) } }

    func closeParentEnds() { Set([input, output, error].compactMap { $0 }).forEach { _ = Glibc.close($0) } }

    private static func pipe() throws(SiloError) -> (read: Int32, write: Int32) {
        var ends: [Int32] = [-1, -1]
        guard silo_pipe2(&ends, O_CLOEXEC) == 0 else { throw SiloError.system("pipe2", errno: errno) }
        return (ends[0], ends[1])
    }
}

/// `ProcessParameters.User` resolved on the host (the system's /etc/passwd is the host's, bound
/// read-only): nil, `root` and `0` keep root; a name, `uid` or `uid:gid` switch.
struct ProcessUser: Sendable {
    var uid: UInt32 = 0
    var gid: UInt32 = 0
    var switches = false

    init(_ user: String?) throws(SiloError) {
        guard let user, !user.isEmpty, user != "root", user != "0" else { return }
        let parts = user.split(separator: ":", maxSplits: 1, omittingEmptySubsequences: false).map(String.init)
        if let uid = UInt32(parts[0]) {
            self.uid = uid
            if parts.count > 1 {
                guard let gid = UInt32(parts[1]) else {
                    throw SiloError.invalidArgument(field: "User", value: user, reason: "use a name, a uid, or uid:gid")
                }
                self.gid = gid
            } else {
                self.gid = getpwuid(uid).map { $0.pointee.pw_gid } ?? uid
            }
        } else {
            guard parts.count == 1, let entry = getpwnam(user) else {
                throw SiloError.invalidArgument(field: "User", value: user, reason: "no such user in /etc/passwd; use a name, a uid, or uid:gid")
            }
            uid = entry.pointee.pw_uid
            gid = entry.pointee.pw_gid
        }
        guard uid < SILO_AGENT_SAVED_UID else {
            throw SiloError.invalidArgument(field: "User", value: user,
                                            reason: "uid \(uid) is kept for Silo's init (4294967294) or is no uid (4294967295)")
        }
        switches = uid != 0 || gid != 0
    }
}

/// One process of a system as its agent lists it.
public struct ProcessSummary: Sendable, Codable, Hashable {
    /// The pid inside the system; 1 is Silo's agent.
    public var processId: Int32
    public var commandLine: String

    enum CodingKeys: String, CodingKey { case processId = "ProcessId", commandLine = "CommandLine" }

    /// The LIST reply: a count, then each process's pid and NUL-terminated command line.
    static func decode(_ bytes: [UInt8]) -> [ProcessSummary] {
        guard bytes.count >= 4 else { return [] }
        let count = bytes[0..<4].withUnsafeBytes { $0.loadUnaligned(as: UInt32.self) }
        var offset = 4
        var result: [ProcessSummary] = []
        while result.count < count, offset + 4 < bytes.count {
            let pid = bytes[offset..<offset + 4].withUnsafeBytes { $0.loadUnaligned(as: Int32.self) }
            offset += 4
            guard let end = bytes[offset...].firstIndex(of: 0) else { break }
            result.append(ProcessSummary(processId: pid, commandLine: String(decoding: bytes[offset..<end], as: UTF8.self)))
            offset = end + 1
        }
        return result
    }
}
