import CSiloLinux
import CSiloAgent
import Glibc
import SiloOperations
import Testing

@testable import SiloCompute

/// `length` bytes that end exactly at a page the process may not read: a decoder reading one byte
/// past the packet crashes the test instead of passing by luck.
final class GuardedBuffer {
    let base: UnsafeMutableRawPointer
    let mapped: Int
    let bytes: UnsafeMutableRawPointer

    init(_ content: [UInt8]) {
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        let pages = (content.count + page - 1) / page + 1
        mapped = pages * page
        base = mmap(nil, mapped, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
        mprotect(base + (pages - 1) * page, page, PROT_NONE)
        bytes = base + (pages - 1) * page - content.count
        content.withUnsafeBytes { bytes.copyMemory(from: $0.baseAddress ?? UnsafeRawPointer(bitPattern: 1)!, byteCount: content.count) }
    }

    deinit { munmap(base, mapped) }
}

func encodeSpawn(flags: UInt32, cwd: String, arguments: [String], environment: [String]) -> [UInt8] {
    var fixed = silo_agent_spawn(flags: flags, argc: UInt32(arguments.count), envc: UInt32(environment.count), uid: 0, gid: 0)
    var buffer = [UInt8](repeating: 0, count: Int(SILO_AGENT_MAX_PAYLOAD))
    let length = withCStrings(arguments) { argv in
        withCStrings(environment) { envp in
            buffer.withUnsafeMutableBytes {
                silo_agent_encode_spawn($0.baseAddress, $0.count, &fixed, cwd, UnsafePointer(OpaquePointer(argv)), UnsafePointer(OpaquePointer(envp)))
            }
        }
    }
    return Array(buffer[0..<length])
}

func packet(type: UInt16, id: UInt32 = 1, payload: [UInt8]) -> [UInt8] {
    var header = silo_agent_header(magic: SILO_AGENT_MAGIC, version: UInt16(SILO_AGENT_VERSION), type: type, id: id, length: UInt32(payload.count))
    return withUnsafeBytes(of: &header) { Array($0) } + payload
}

/// Decodes a SPAWN payload placed against a guard page; returns the strings it found.
func decodeGuarded(_ payload: [UInt8]) -> (error: Int32, cwd: String, arguments: [String], environment: [String]) {
    let buffer = GuardedBuffer(payload)
    var request = silo_agent_spawn_request()
    let capacity = Int(SILO_AGENT_MAX_STRINGS) + 1
    var argv = [UnsafePointer<CChar>?](repeating: nil, count: capacity)
    var envp = [UnsafePointer<CChar>?](repeating: nil, count: capacity)
    let error = silo_agent_decode_spawn(buffer.bytes, payload.count, &request, &argv, &envp, capacity)
    guard error == 0 else { return (error, "", [], []) }
    let arguments = (0..<Int(request.fixed.argc)).map { String(cString: argv[$0]!) }
    let environment = (0..<Int(request.fixed.envc)).map { String(cString: envp[$0]!) }
    return (0, String(cString: request.cwd), arguments, environment)
}

@Suite("The agent protocol")
struct AgentProtocolTests {
    @Test("A SPAWN request decodes to what was encoded")
    func roundTrip() {
        var generator = SystemRandomNumberGenerator()
        for _ in 0..<500 {
            let arguments = (0..<Int.random(in: 1...20, using: &generator)).map { _ in
                String((0..<Int.random(in: 1...30, using: &generator)).map { _ in Character(Unicode.Scalar(UInt8.random(in: 33...126, using: &generator))) })
            }
            let environment = (0..<Int.random(in: 0...10, using: &generator)).map { index in "V\(index)=\(arguments[0])" }
            let payload = encodeSpawn(flags: 3, cwd: "/tmp", arguments: arguments, environment: environment)
            let decoded = decodeGuarded(payload)
            #expect(decoded.error == 0 && decoded.cwd == "/tmp" && decoded.arguments == arguments && decoded.environment == environment)
        }
    }

    @Test("Malformed SPAWN payloads are refused: no command, a missing NUL, trailing bytes, counts past the data, bad flags")
    func malformed() {
        let good = encodeSpawn(flags: 0, cwd: "/", arguments: ["/bin/true"], environment: ["A=1"])
        #expect(decodeGuarded(good).error == 0)
        #expect(decodeGuarded(Array(good.dropLast())).error == EBADMSG, "the last string loses its NUL")
        #expect(decodeGuarded(good + [0]).error == EBADMSG, "a trailing byte")
        var tooMany = good
        tooMany[4] = 2  // argc 2 with one argument
        #expect(decodeGuarded(tooMany).error == EBADMSG)
        var huge = good
        huge[7] = 0x7f  // argc in the billions
        #expect(decodeGuarded(huge).error == E2BIG)
        var flags = good
        flags[3] = 0x80
        #expect(decodeGuarded(flags).error == EINVAL)
        #expect(decodeGuarded(encodeSpawn(flags: 0, cwd: "relative", arguments: ["/bin/true"], environment: [])).error == EBADMSG)
        #expect(decodeGuarded(encodeSpawn(flags: 0, cwd: "/", arguments: [""], environment: [])).error == EINVAL)
        #expect(decodeGuarded(encodeSpawn(flags: 0, cwd: "/", arguments: ["x"], environment: ["=x"])).error == EINVAL)
        #expect(decodeGuarded(encodeSpawn(flags: 0, cwd: "/", arguments: ["x"], environment: ["NOEQUALS"])).error == EINVAL)
        #expect(decodeGuarded(encodeSpawn(flags: UInt32(SILO_SPAWN_CONSOLE.rawValue), cwd: "/", arguments: ["x"], environment: [])).error == EINVAL,
                "a console needs the terminal as stdin")
        #expect(decodeGuarded([]).error == EBADMSG)
    }

    @Test("Headers: wrong magic, version, type or length are refused")
    func headers() {
        func check(_ bytes: [UInt8]) -> Int32 {
            let buffer = GuardedBuffer(bytes)
            var header = silo_agent_header()
            return silo_agent_check_header(buffer.bytes, bytes.count, &header)
        }
        let good = packet(type: UInt16(SILO_AGENT_HELLO.rawValue), payload: [])
        #expect(check(good) == 0)
        var magic = good; magic[0] ^= 1
        #expect(check(magic) == EPROTO)
        var version = good; version[4] = 9
        #expect(check(version) == EPROTONOSUPPORT)
        var type = good; type[6] = 77
        #expect(check(type) == EPROTO)
        #expect(check(good + [1]) == EBADMSG, "a length that is not the rest of the packet")
        var big = good; big[15] = 0x10
        #expect(check(big) == EMSGSIZE)
        #expect(check(Array(good.prefix(10))) == EBADMSG)
    }

    @Test("200,000 mutated and random packets: each is refused or decoded within its bytes, never a crash")
    func fuzz() {
        var generator = SystemRandomNumberGenerator()
        let seeds = [
            encodeSpawn(flags: 7, cwd: "/", arguments: ["/bin/sh", "-c", "echo hi"], environment: ["PATH=/bin", "X=y"]),
            encodeSpawn(flags: 15, cwd: "/tmp", arguments: ["a"], environment: []),
        ]
        var decodedCount = 0
        for round in 0..<200_000 {
            var bytes: [UInt8]
            if round % 4 == 0 {
                bytes = (0..<Int.random(in: 0...64, using: &generator)).map { _ in UInt8.random(in: 0...255, using: &generator) }
            } else {
                bytes = seeds[round % seeds.count]
                for _ in 0..<Int.random(in: 1...4, using: &generator) {
                    let position = Int.random(in: 0..<bytes.count, using: &generator)
                    switch Int.random(in: 0...3, using: &generator) {
                    case 0: bytes[position] = UInt8.random(in: 0...255, using: &generator)
                    case 1: bytes.remove(at: position)
                    case 2: bytes.insert(UInt8.random(in: 0...255, using: &generator), at: position)
                    default: bytes = Array(bytes.prefix(position))
                    }
                    if bytes.isEmpty { break }
                }
            }
            let decoded = decodeGuarded(bytes)
            if decoded.error == 0 {
                decodedCount += 1
                #expect(!decoded.arguments.isEmpty && decoded.cwd.utf8.first == UInt8(ascii: "/"))
            }
            let buffer = GuardedBuffer(bytes)
            var header = silo_agent_header()
            _ = silo_agent_check_header(buffer.bytes, bytes.count, &header)
        }
        #expect(decodedCount > 0, "some mutations still decode: the fuzzer reaches the decoder's end")
    }
}

@Suite("The agent under bad input", .tags(.root), .requiresCgroups, .serialized)
struct AgentFuzzTests {
    @Test("C11 the agent under 2,000 damaged packets and abrupt hang-ups: the agent answers or hangs up, keeps running and leaks no descriptor")
    func liveAgent() throws {
        let box = try RunningSystem("fz")
        defer { box.finish() }
        let (initPID, descriptorsBefore) = try settledAgent(box)
        var generator = SystemRandomNumberGenerator()
        let seed = packet(type: UInt16(SILO_AGENT_SPAWN.rawValue),
                          payload: encodeSpawn(flags: 0, cwd: "/", arguments: ["/bin/true"], environment: []))
        for round in 0..<2_000 {
            let fd = connectToAgent(box.compute, box.system.id)
            #expect(fd >= 0)
            var bytes = seed
            for _ in 0..<Int.random(in: 1...3, using: &generator) where !bytes.isEmpty {
                bytes[Int.random(in: 0..<bytes.count, using: &generator)] = UInt8.random(in: 0...255, using: &generator)
            }
            if round % 5 == 0 { bytes = (0..<Int.random(in: 1...40, using: &generator)).map { _ in UInt8.random(in: 0...255, using: &generator) } }
            _ = send(fd, bytes, bytes.count, Int32(MSG_NOSIGNAL))
            if round % 2 == 0 {
                var reply = [UInt8](repeating: 0, count: 256)
                var poller = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
                if poll(&poller, 1, 1000) > 0 { _ = recv(fd, &reply, reply.count, 0) }
            }
            close(fd)
        }
        let processes = try box.system.processes()
        #expect(processes.contains { $0.processId == 1 }, "the agent lives: \(processes)")
        let check = try box.run("echo still-serving")
        defer { check.close() }
        #expect(readAll(try #require(check.standardOutput)) == "still-serving\n")
        // Once whatever it started meanwhile (a damaged packet can still be a valid /bin/true) is
        // done, however slowly: then every descriptor is back.
        #expect(eventually { (try? FileManagerless.count("/proc/\(initPID)/fd")) == descriptorsBefore },
                "no descriptor leaked: \(String(describing: try? listLinks("/proc/\(initPID)/fd")))")
    }
}

extension AgentFuzzTests {
    @Test("C11 the agent under empty packets that carry descriptors: the agent hangs up and keeps none of them")
    func emptyPacketsWithDescriptors() throws {
        let box = try RunningSystem("ep")
        defer { box.finish() }
        let (initPID, descriptorsBefore) = try settledAgent(box)
        var ends: [Int32] = [0, 0]
        #expect(pipe(&ends) == 0)
        defer { close(ends[0]); close(ends[1]) }
        for _ in 0..<100 {
            let fd = connectToAgent(box.compute, box.system.id)
            try #require(fd >= 0)
            defer { close(fd) }
            #expect(sendPacket(fd, [], descriptors: ends) == 0)
            // The agent hangs up: end of file, with nothing said.
            var byte: UInt8 = 0
            var poller = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            #expect(poll(&poller, 1, 60_000) == 1)
            #expect(recv(fd, &byte, 1, 0) == 0)
        }
        // The agent closes what it was sent as it hangs up; give it time under emulation.
        _ = eventually { (try? FileManagerless.count("/proc/\(initPID)/fd")) == descriptorsBefore }
        #expect(try FileManagerless.count("/proc/\(initPID)/fd") == descriptorsBefore,
                "no descriptor kept: \(String(describing: try? listLinks("/proc/\(initPID)/fd")))")
        let check = try box.run("echo still-serving")
        defer { check.close() }
        #expect(readAll(try #require(check.standardOutput)) == "still-serving\n")
    }
}

/// Counting directory entries without Foundation.
enum FileManagerless {
    static func count(_ path: String) throws -> Int {
        guard let directory = opendir(path) else { throw SiloError.system("opendir", errno: errno, path: path) }
        defer { closedir(directory) }
        var count = 0
        while let entry = readdir(directory) {
            let name = withUnsafePointer(to: entry.pointee.d_name) { $0.withMemoryRebound(to: CChar.self, capacity: 256) { String(cString: $0) } }
            if name != "." && name != ".." { count += 1 }
        }
        return count
    }
}

/// Where the symbolic link at `path` points; nil if it is not one (or is gone).
func readLink(_ path: String) -> String? {
    var target = [CChar](repeating: 0, count: 512)
    let count = readlink(path, &target, 511)
    return count > 0 ? String(cString: target) : nil
}

func listLinks(_ path: String) throws -> [String] {
    guard let directory = opendir(path) else { throw SiloError.system("opendir", errno: errno, path: path) }
    defer { closedir(directory) }
    var links: [String] = []
    while let entry = readdir(directory) {
        let name = withUnsafePointer(to: entry.pointee.d_name) { $0.withMemoryRebound(to: CChar.self, capacity: 256) { String(cString: $0) } }
        guard name != ".", name != ".." else { continue }
        var target = [CChar](repeating: 0, count: 512)
        let count = readlink(path + "/" + name, &target, 511)
        links.append(name + "->" + (count > 0 ? String(cString: target) : "?"))
    }
    return links.sorted()
}

/// The agent (init) of `box`'s system, and how many descriptors it holds once it has accepted the
/// box's own connection (a round trip first): what a test that must leak none compares with.
func settledAgent(_ box: RunningSystem) throws -> (pid: Int32, descriptors: Int) {
    let pid = try #require(box.system.properties().processList.first)
    _ = try box.system.processes()
    return (pid, try FileManagerless.count("/proc/\(pid)/fd"))
}

/// A connection to system `id`'s agent, as a handle makes one; -1 when connect fails.
func connectToAgent(_ compute: TestCompute, _ id: String) -> Int32 {
    let fd = socket(AF_UNIX, Int32(SOCK_SEQPACKET.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    guard fd >= 0 else { return -1 }
    let connected = withSocketAddress(compute.service.store.directory(id) + "/agent.sock") { connect(fd, $0, $1) }
    if connected != 0 {
        close(fd)
        return -1
    }
    return fd
}

/// Sends `bytes` on `fd` as one packet with `descriptors` attached (SCM_RIGHTS); what sendmsg returned.
func sendPacket(_ fd: Int32, _ bytes: [UInt8], descriptors: [Int32]) -> Int {
    var data = bytes
    var control = [UInt8](repeating: 0, count: silo_cmsg_space(descriptors.count * MemoryLayout<Int32>.size))
    return data.withUnsafeMutableBytes { dataBytes in
        control.withUnsafeMutableBytes { controlBytes in
            var part = iovec(iov_base: dataBytes.baseAddress, iov_len: dataBytes.count)
            return withUnsafeMutablePointer(to: &part) { partPointer in
                var message = msghdr()
                message.msg_iov = partPointer
                message.msg_iovlen = 1
                message.msg_control = controlBytes.baseAddress
                message.msg_controllen = controlBytes.count
                silo_cmsg_put_fds(&message, descriptors, Int32(descriptors.count))
                return sendmsg(fd, &message, Int32(MSG_NOSIGNAL))
            }
        }
    }
}

/// The next packet on `fd` within `milliseconds` (30 s by default, for CI under software
/// emulation): its type, id and payload; nil for none, an end of file or a header that does not check.
func receivePacket(_ fd: Int32, waitingAtMost milliseconds: Int32 = 30_000) -> (type: UInt16, id: UInt32, payload: [UInt8])? {
    var poller = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
    guard poll(&poller, 1, milliseconds) > 0 else { return nil }
    var bytes = [UInt8](repeating: 0, count: 1024)
    let size = recv(fd, &bytes, bytes.count, 0)
    guard size > 0 else { return nil }
    var header = silo_agent_header()
    guard bytes.withUnsafeBytes({ silo_agent_check_header($0.baseAddress, size, &header) }) == 0 else { return nil }
    return (header.type, header.id, Array(bytes[MemoryLayout<silo_agent_header>.size..<size]))
}

extension AgentFuzzTests {
    @Test("C8 WATCH's two forms: {pid} answers OK and sends the exit after it; {pid, EXIT_IN_REPLY} puts an exit that came in the reply and sends nothing after it; unknown flags are refused")
    func watchForms() throws {
        let box = try RunningSystem("wf")
        defer { box.finish() }
        let quick = try box.run("exit 3", stdout: false)
        defer { quick.close() }
        #expect(try quick.wait(timeout: .seconds(10)).exitCode == 3)
        let fd = connectToAgent(box.compute, box.system.id)
        try #require(fd >= 0)
        defer { close(fd) }
        func send(_ type: silo_agent_type, id: UInt32, _ payload: [UInt8]) {
            let bytes = packet(type: UInt16(type.rawValue), id: id, payload: payload)
            #expect(Glibc.send(fd, bytes, bytes.count, Int32(MSG_NOSIGNAL)) == bytes.count)
        }
        func exited(_ payload: [UInt8]) -> silo_agent_exited? {
            var body = silo_agent_exited()
            let decoded = payload.withUnsafeBytes { silo_agent_decode_fixed($0.baseAddress, $0.count, &body, MemoryLayout<silo_agent_exited>.size) }
            return decoded == 0 ? body : nil
        }
        var pid = quick.pid
        // The first form: OK, then the exit as an event.
        send(SILO_AGENT_WATCH, id: 1, withUnsafeBytes(of: &pid) { Array($0) })
        let reply = try #require(receivePacket(fd))
        #expect(reply.type == UInt16(SILO_AGENT_OK.rawValue) && reply.id == 1 && reply.payload.isEmpty)
        let event = try #require(receivePacket(fd))
        #expect(event.type == UInt16(SILO_AGENT_EXITED.rawValue) && event.id == 0)
        #expect(exited(event.payload).map { $0.pid == pid && $0.status == 3 << 8 } == true)
        // The other form: the exit in the reply, and the next packet is the next request's reply.
        var watch = silo_agent_watch(pid: pid, flags: UInt32(SILO_WATCH_EXIT_IN_REPLY.rawValue))
        send(SILO_AGENT_WATCH, id: 2, withUnsafeBytes(of: &watch) { Array($0) })
        let inReply = try #require(receivePacket(fd))
        #expect(inReply.type == UInt16(SILO_AGENT_OK.rawValue) && inReply.id == 2)
        #expect(exited(inReply.payload).map { $0.pid == pid && $0.status == 3 << 8 } == true)
        send(SILO_AGENT_HELLO, id: 3, [])
        let next = try #require(receivePacket(fd))
        #expect(next.type == UInt16(SILO_AGENT_OK.rawValue) && next.id == 3, "no EXITED after the reply: \(next)")
        // A running process: OK with nothing in it; its exit comes as an event at its end.
        let slow = try box.run("read x; exit 4", stdout: false, stdin: true)
        defer { slow.close() }
        watch.pid = slow.pid
        send(SILO_AGENT_WATCH, id: 4, withUnsafeBytes(of: &watch) { Array($0) })
        let running = try #require(receivePacket(fd))
        #expect(running.type == UInt16(SILO_AGENT_OK.rawValue) && running.id == 4 && running.payload.isEmpty)
        slow.closeStandardInput()
        let later = try #require(receivePacket(fd))
        #expect(later.type == UInt16(SILO_AGENT_EXITED.rawValue) && exited(later.payload).map { $0.pid == slow.pid && $0.status == 4 << 8 } == true)
        // Flags it does not know: refused, the connection kept.
        watch.flags = 1 << 7
        send(SILO_AGENT_WATCH, id: 5, withUnsafeBytes(of: &watch) { Array($0) })
        let refused = try #require(receivePacket(fd))
        var error = silo_agent_error()
        let decoded = refused.payload.withUnsafeBytes { silo_agent_decode_fixed($0.baseAddress, $0.count, &error, MemoryLayout<silo_agent_error>.size) }
        #expect(refused.type == UInt16(SILO_AGENT_ERROR.rawValue) && decoded == 0 && error.error == EINVAL)
        send(SILO_AGENT_HELLO, id: 6, [])
        #expect(receivePacket(fd)?.id == 6, "the connection is kept")
    }
}

enum HelloOutcome: Equatable { case served(connections: UInt32), hungUp, silent, garbled }

/// Sends HELLO on `fd`; what came back within `milliseconds`.
func hello(_ fd: Int32, waitingAtMost milliseconds: Int32) -> HelloOutcome {
    let request = packet(type: UInt16(SILO_AGENT_HELLO.rawValue), id: 7, payload: [])
    if send(fd, request, request.count, Int32(MSG_NOSIGNAL)) < 0 { return .hungUp }  // EPIPE
    var poller = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
    guard poll(&poller, 1, milliseconds) > 0 else { return .silent }
    var reply = [UInt8](repeating: 0, count: 256)
    let size = recv(fd, &reply, reply.count, Int32(MSG_DONTWAIT))
    guard size > 0 else { return .hungUp }  // 0: end of file; -1: ECONNRESET
    var header = silo_agent_header()
    var body = silo_agent_hello_reply()
    let headerSize = MemoryLayout<silo_agent_header>.size
    guard reply.withUnsafeBytes({ silo_agent_check_header($0.baseAddress, size, &header) }) == 0,
          header.type == UInt16(SILO_AGENT_OK.rawValue),
          Array(reply[headerSize..<size]).withUnsafeBytes({
              silo_agent_decode_fixed($0.baseAddress, $0.count, &body, MemoryLayout<silo_agent_hello_reply>.size) }) == 0
    else { return .garbled }
    return .served(connections: body.connections)
}

/// Soft and hard RLIMIT_NOFILE of `pid` ("Max open files  1024  524288  files" in /proc/<pid>/limits).
func openFileLimit(_ pid: Int32) -> (soft: String, hard: String)? {
    guard let line = (readText("/proc/\(pid)/limits") ?? "").split(separator: "\n").first(where: { $0.hasPrefix("Max open files") })
    else { return nil }
    let fields = line.split(separator: " ")
    return fields.count >= 5 ? (String(fields[3]), String(fields[4])) : nil
}

extension AgentFuzzTests {
    @Test("C11 an agent started with a low descriptor limit (32, below the 66 entries it once polled) serves; out of descriptors it takes a connection with the one it keeps for this and hangs it up, each time; it serves again once one is free",
          .requiresSiloExecutable, .enabled(if: access("/usr/bin/prlimit", X_OK) == 0 && access("/usr/bin/perl", X_OK) == 0,
                                            "needs prlimit(1) and perl to start silo with a low descriptor limit and none of the test's descriptors"))
    func outOfDescriptors() throws {
        let compute = TestCompute()
        defer { compute.finish() }
        let id = "mf-\(getpid())"
        try compute.service.createComputeSystem(id: id, document: compute.document()).wait(timeout: .seconds(30)).close()
        // Started by a silo whose limit init inherits: prlimit(1) runs it with 32.
        // Without the test process's descriptors, which would be passed on and fill 32.
        let start = startProgram("/usr/bin/perl", ["-e", "use POSIX; POSIX::dup2(1, 2); POSIX::close($_) for 3..4095; exec @ARGV or exit 127",
                                                   "/usr/bin/prlimit", "--nofile=32:4096", siloExecutable, "--state-dir", compute.state, "system", "start", id])
        let startOutput = readAll(start.output)
        close(start.output)
        try #require(reap(start.pid) == 0, "silo system start under a limit of 32: \(startOutput)")
        let system = try compute.service.open(id)
        defer { system.close() }
        let initPID = try #require(try compute.service.store.load(id).initPID)
        #expect(openFileLimit(initPID)?.soft == "32")
        _ = try system.processes()  // served: this handle's connection is accepted and counted
        let baseline = try FileManagerless.count("/proc/\(initPID)/fd")
        var clients: [Int32] = []
        defer { clients.forEach { close($0) } }
        var refusal: HelloOutcome?
        var served: UInt32 = 0
        for _ in 0..<70 where refusal == nil {
            let fd = connectToAgent(compute, id)
            try #require(fd >= 0, "connect: errno \(errno)")
            switch hello(fd, waitingAtMost: 3000) {
            case .served(let connections):
                clients.append(fd)
                served = connections
            case let outcome:
                refusal = outcome
                close(fd)
            }
        }
        // Without the descriptor kept for this the connection stays queued (accept4 fails on, the
        // listener stays readable, pid 1 spins) and the client hears nothing: .silent.
        #expect(refusal == .hungUp, "the client past pid 1's last descriptor: \(String(describing: refusal))")
        #expect(served > 10 && served < 64, "refused by the descriptor limit, not the most connections the agent serves: \(served)")
        // Again: the kept descriptor was taken back.
        let again = connectToAgent(compute, id)
        defer { close(again) }
        #expect(hello(again, waitingAtMost: 3000) == .hungUp, "the second client past the limit")
        let firstClient = try #require(clients.first)
        if case .served = hello(firstClient, waitingAtMost: 3000) {} else { Issue.record("a served client is no longer answered") }
        // A served handle's request that brings a descriptor the agent has no room for: refused
        // (EMFILE), the connection kept; it was hung up on as a client that sent too many.
        let short = #expect(throws: SiloError.self) {
            _ = try system.createProcess(ProcessParameters(arguments: ["/bin/true"], createStdOutPipe: true)).wait(timeout: .seconds(30))
        }
        #expect(short?.errno == EMFILE, "\(String(describing: short))")
        #expect(!system.connectionEnded, "the handle's connection is kept")
        // Once a descriptor is free (a client gone, seen by the agent), a newcomer is served.
        close(clients.removeLast())
        #expect(eventually(seconds: 10) {
            let fd = connectToAgent(compute, id)
            guard fd >= 0 else { return false }
            if case .served = hello(fd, waitingAtMost: 1000) {
                clients.append(fd)
                return true
            }
            close(fd)
            return false
        }, "a descriptor came free: the next client is served")
        clients.forEach { close($0) }
        clients = []
        let check = try system.createProcess(ProcessParameters(arguments: ["/bin/echo", "still-serving"], createStdOutPipe: true))
            .wait(timeout: .seconds(30))
        defer { check.close() }
        #expect(readAll(try #require(check.standardOutput)) == "still-serving\n")
        #expect(eventually { (try? FileManagerless.count("/proc/\(initPID)/fd")) == baseline },
                "nothing leaked: \(String(describing: try? listLinks("/proc/\(initPID)/fd")))")
    }

    @Test("C11 a process inside cannot set its agent's resource limits (prlimit on pid 1: a descriptor limit below its poll, or a CPU limit, ended the system)",
          .enabled(if: access("/usr/bin/prlimit", X_OK) == 0, "needs prlimit(1), which the system's root binds from the host"))
    func limitsOfInit() throws {
        let box = try RunningSystem("rl")
        defer { box.finish() }
        let initPID = try #require(try box.compute.service.store.load(box.system.id).initPID)
        let before = try #require(openFileLimit(initPID))
        let process = try box.run("prlimit --pid 1 --nofile=10:10 2>&1; echo rc=$?; prlimit --pid 1 --cpu=1:1 2>&1; echo rc=$?", stdout: true)
        defer { process.close() }
        let output = readAll(try #require(process.standardOutput))
        #expect(try process.wait(timeout: .seconds(10)).exitCode == 0)
        #expect(output.contains("Operation not permitted") && !output.contains("rc=0"), "\(output)")
        #expect(openFileLimit(initPID)?.soft == before.soft && openFileLimit(initPID)?.hard == before.hard)
        let after = try box.run("exit 6", stdout: false)
        defer { after.close() }
        #expect(try after.wait(timeout: .seconds(10)).exitCode == 6, "the agent serves on")
        #expect(try box.system.properties().state == .running)
    }
}

extension AgentFuzzTests {
    @Test("C11 a request with more descriptors than any request carries (4) is refused and hung up on, and none of them is kept; 3 on a request that takes none are refused, the connection kept")
    func tooManyDescriptors() throws {
        let box = try RunningSystem("td")
        defer { box.finish() }
        let (initPID, descriptorsBefore) = try settledAgent(box)
        var ends: [Int32] = [0, 0]
        #expect(pipe(&ends) == 0)
        defer { close(ends[0]); close(ends[1]) }
        func sendHello(_ fd: Int32, with descriptors: [Int32]) -> Int {
            sendPacket(fd, packet(type: UInt16(SILO_AGENT_HELLO.rawValue), id: 9, payload: []), descriptors: descriptors)
        }
        // Three on a HELLO: refused (EBADF), served on.
        var kept = connectToAgent(box.compute, box.system.id)
        try #require(kept >= 0)
        defer { if kept >= 0 { close(kept) } }
        #expect(sendHello(kept, with: [ends[0], ends[1], ends[0]]) > 0)
        let refused = try #require(receivePacket(kept))
        #expect(refused.type == UInt16(SILO_AGENT_ERROR.rawValue) && refused.id == 9)
        if case .served = hello(kept, waitingAtMost: 3000) {} else { Issue.record("the connection was not kept") }
        // Four: hung up on (an error said first, then the end).
        let hungUp = connectToAgent(box.compute, box.system.id)
        try #require(hungUp >= 0)
        defer { close(hungUp) }
        #expect(sendHello(hungUp, with: [ends[0], ends[1], ends[0], ends[1]]) > 0)
        let error = try #require(receivePacket(hungUp))
        #expect(error.type == UInt16(SILO_AGENT_ERROR.rawValue))
        var byte: UInt8 = 0
        var poller = pollfd(fd: hungUp, events: Int16(POLLIN), revents: 0)
        #expect(poll(&poller, 1, 5000) == 1 && recv(hungUp, &byte, 1, 0) == 0, "hung up on")
        close(kept)
        kept = -1
        #expect(eventually { (try? FileManagerless.count("/proc/\(initPID)/fd")) == descriptorsBefore },
                "no descriptor kept: \(String(describing: try? listLinks("/proc/\(initPID)/fd")))")
    }
}
