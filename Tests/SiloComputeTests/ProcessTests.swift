import Dispatch
import Glibc
import SiloOperations
import Synchronization
import Testing

@testable import SiloCompute

/// Everything readable from `fd` until end of file (or `limit` bytes).
func readAll(_ fd: Int32, limit: Int = 1 << 20) -> String {
    var bytes: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 4096)
    while bytes.count < limit {
        let count = read(fd, &buffer, buffer.count)
        if count < 0, errno == EINTR { continue }
        if count <= 0 { break }
        bytes.append(contentsOf: buffer[0..<count])
    }
    return String(decoding: bytes, as: UTF8.self)
}

/// Reads from a terminal until `predicate` holds for what came so far, or 60 seconds pass (generous
/// for CI under software emulation; it returns as soon as the predicate holds).
func readUntil(_ fd: Int32, _ predicate: (String) -> Bool) -> String {
    var text = ""
    var buffer = [UInt8](repeating: 0, count: 1024)
    let deadline = ContinuousClock.now + .seconds(60)
    while !predicate(text), ContinuousClock.now < deadline {
        var poller = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        guard poll(&poller, 1, 100) > 0 else { continue }
        let count = read(fd, &buffer, buffer.count)
        if count <= 0 { break }
        text += String(decoding: buffer[0..<count], as: UTF8.self)
    }
    return text
}

/// A started system for one test; `finish()` terminates and removes it.
struct RunningSystem {
    let compute = TestCompute()
    let system: ComputeSystem

    init(_ name: String, memoryMB: Int = 128, terminateOnLastHandle: Bool = false) throws {
        let compute = self.compute
        do {
            system = try compute.service.createComputeSystem(
                id: "\(name)-\(getpid())", document: compute.document(terminateOnLastHandle: terminateOnLastHandle, memoryMB: memoryMB)
            ).wait(timeout: .seconds(30))
        } catch {
            compute.finish()
            throw error
        }
        do {
            try system.start().wait(timeout: .seconds(30))
        } catch {
            // The caller's finish() is not registered yet: what the create made goes here.
            system.close()
            compute.finish()
            throw error
        }
    }

    func run(_ script: String, stdout: Bool = true, stderr: Bool = false, stdin: Bool = false) throws -> ComputeProcess {
        try system.createProcess(ProcessParameters(arguments: ["/bin/sh", "-c", script], createStdInPipe: stdin,
                                                   createStdOutPipe: stdout, createStdErrPipe: stderr)).wait(timeout: .seconds(30))
    }

    func finish() {
        system.close()
        compute.finish()
    }
}

@Suite("Processes in a compute system", .tags(.root), .requiresCgroups, .serialized)
struct ProcessTests {
    @Test("C7 a process gets a pid and exactly the pipes asked for; its output and exit code come back")
    func pipes() throws {
        let box = try RunningSystem("pp")
        defer { box.finish() }
        let process = try box.run("echo out; echo err >&2; exit 3", stdout: true, stderr: true)
        defer { process.close() }
        #expect(process.pid > 1, "pid 1 is the agent")
        #expect(process.standardInput == nil, "no stdin pipe was asked for")
        let output = try #require(process.standardOutput)
        let error = try #require(process.standardError)
        #expect(readAll(output) == "out\n")
        #expect(readAll(error) == "err\n")
        let status = try process.wait(timeout: .seconds(10))
        #expect(status.exited && status.exitCode == 3 && status.signal == nil)

        let quiet = try box.run("exit 0", stdout: false)
        defer { quiet.close() }
        #expect(quiet.standardInput == nil && quiet.standardOutput == nil && quiet.standardError == nil)
        #expect(try quiet.wait(timeout: .seconds(10)).exitCode == 0)
    }

    @Test("C8 stdin: what is written reaches the process; closing stdin ends it")
    func standardInput() throws {
        let box = try RunningSystem("si")
        defer { box.finish() }
        let process = try box.run("tr a-z A-Z", stdout: true, stdin: true)
        defer { process.close() }
        let input = try #require(process.standardInput)
        let text = Array("hello silo\n".utf8)
        #expect(write(input, text, text.count) == text.count)
        #expect((#expect(throws: SiloError.self) { try process.wait(timeout: .milliseconds(300)) })?.code == .operationTimeout,
                "still reading stdin")
        process.closeStandardInput()
        #expect(try process.wait(timeout: .seconds(10)).exitCode == 0, "end of input ends tr")
        #expect(readAll(try #require(process.standardOutput)) == "HELLO SILO\n")
    }

    /// The isolation suite runs through its own sandbox; this runs the checks that matter most in
    /// a process made the way a system's processes are (the agent's spawn, its capabilities kept to
    /// switch users, its descriptors), as root and as another user.
    @Test("C11 a system's processes, root or not: no new privileges, seccomp, the system's hostname, only lo, its own pids, read-only root and /proc/sys, a private /tmp",
          arguments: [nil, "65534:65534"] as [String?])
    func isolationOfProcesses(user: String?) throws {
        let box = try RunningSystem("iso")
        defer { box.finish() }
        let marker = "/tmp/silo-isolation-\(getpid())"
        let made = Glibc.open(marker, O_CREAT | O_WRONLY | O_CLOEXEC, 0o644)
        try #require(made >= 0)
        close(made)
        defer { unlink(marker) }
        let script = """
            grep -q '^NoNewPrivs:[[:space:]]*1$' /proc/self/status || exit 10
            grep -q '^Seccomp:[[:space:]]*2$' /proc/self/status || exit 11
            [ "$(cat /proc/sys/kernel/hostname)" = "$EXPECTED" ] || exit 12
            [ "$(tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ')" = "lo" ] || exit 13
            [ "$(ls /proc | grep -cE '^[0-9]+$')" -le 5 ] || exit 14
            if touch /usr/silo-x 2>/dev/null; then exit 15; fi
            if (echo x > /proc/sys/kernel/hostname) 2>/dev/null; then exit 16; fi
            [ ! -e "$MARKER" ] || exit 17
            echo inside > /tmp/silo-written || exit 18
            awk '$5 == "/usr" || $5 == "/proc/sys" { seen++; if ($6 !~ /^ro(,|$)/) bad = 1 } END { exit (bad || seen < 2) }' /proc/self/mountinfo || exit 19
            """
        let process = try box.system.createProcess(ProcessParameters(
            arguments: ["/bin/sh", "-c", script], environment: ["EXPECTED": box.system.id, "MARKER": marker], user: user,
            createStdErrPipe: true
        )).wait(timeout: .seconds(30))
        defer { process.close() }
        let errors = readAll(try #require(process.standardError))
        #expect(try process.wait(timeout: .seconds(10)).exitCode == 0, "check failed (10 no_new_privs, 11 seccomp, 12 hostname, 13 interfaces, 14 pids, 15 /usr writable, 16 /proc/sys writable, 17 host /tmp seen, 18 /tmp not writable, 19 /usr or /proc/sys not mounted read-only): \(errors)")
        #expect(!fileExists("/tmp/silo-written"), "the system's /tmp is not the host's")
    }

    @Test("E1 createProcess and modify refuse bad input made in Swift at once, by field; the system runs on")
    func badInputInSwift() throws {
        let box = try RunningSystem("bad")
        defer { box.finish() }
        // A console size out of range trapped on the scheduler's thread: the whole process died.
        let console = #expect(throws: SiloError.self) {
            _ = try box.system.createProcess(ProcessParameters(arguments: ["/bin/true"], emulateConsole: true, consoleSize: (70_000, 80)))
        }
        #expect(console?.field == "ConsoleSize", "\(String(describing: console))")
        let directory = #expect(throws: SiloError.self) {
            _ = try box.system.createProcess(ProcessParameters(arguments: ["/bin/true"], workingDirectory: "relative"))
        }
        #expect(directory?.field == "WorkingDirectory", "\(String(describing: directory))")
        let memory = #expect(throws: SiloError.self) { _ = try box.system.modify(ModifyRequest(change: .memory(megabytes: -1))) }
        #expect(memory?.field == "Settings", "\(String(describing: memory))")
        #expect(try box.system.properties().state == .running)
    }

    @Test("C7 CommandLine, WorkingDirectory, Environment and User from a ProcessParameters document")
    func parametersDocument() throws {
        let box = try RunningSystem("pd")
        defer { box.finish() }
        let parameters = try ProcessParameters(json: """
            {"CommandLine": "/bin/sh -c 'echo \\"$(id -u):$(id -g) $(pwd) $GREETING\\"; grep -E \\"^Cap(Eff|Prm|Bnd)\\" /proc/self/status'",
             "WorkingDirectory": "/tmp", "Environment": {"GREETING": "hi there"}, "User": "65534:65534",
             "CreateStdOutPipe": true}
            """)
        let process = try box.system.createProcess(parameters).wait(timeout: .seconds(30))
        defer { process.close() }
        let output = readAll(try #require(process.standardOutput))
        #expect(try process.wait(timeout: .seconds(10)).exitCode == 0, "\(output)")
        #expect(output.hasPrefix("65534:65534 /tmp hi there\n"), "\(output)")
        for set in ["CapEff", "CapPrm", "CapBnd"] {
            #expect(output.contains("\(set):\t0000000000000000"), "\(set) is empty: \(output)")
        }
        // Root inside has no capability either: what the agent keeps to switch users is dropped.
        let root = try box.run("grep -E '^Cap(Eff|Bnd)' /proc/self/status; id -u")
        defer { root.close() }
        let rootOutput = readAll(try #require(root.standardOutput))
        #expect(rootOutput == "CapEff:\t0000000000000000\nCapBnd:\t0000000000000000\n0\n", "\(rootOutput)")
        #expect((#expect(throws: SiloError.self) {
            _ = try box.system.createProcess(ProcessParameters(arguments: ["/bin/true"], user: "no-such-user-here"))
        })?.field == "User")
        // The agent's saved id, which would make the process its owner again, and no id at all.
        for user in ["4294967294", "4294967295:0"] {
            let refused = #expect(throws: SiloError.self) {
                _ = try box.system.createProcess(ProcessParameters(arguments: ["/bin/true"], user: user))
            }
            #expect(refused?.field == "User" && refused?.value == user && refused?.code == .invalidArgument, "\(String(describing: refused))")
        }
    }

    @Test("C7 EmulateConsole: a terminal of ConsoleSize that controls the process, resizing it; a piped process has no console to resize")
    func console() throws {
        let box = try RunningSystem("tty")
        defer { box.finish() }
        let parameters = ProcessParameters(arguments: ["/bin/sh", "-c", "test -t 0 && echo is-a-tty; stty size; read line; stty size"],
                                           emulateConsole: true, consoleSize: (30, 100))
        let process = try box.system.createProcess(parameters).wait(timeout: .seconds(30))
        defer { process.close() }
        #expect(process.isConsole && process.standardError == nil)
        let console = try #require(process.standardOutput)
        let first = readUntil(console) { $0.contains("30 100") }
        #expect(first.contains("is-a-tty") && first.contains("30 100"), "\(first)")
        try process.resizeConsole(height: 40, width: 120)
        let line = Array("go\n".utf8)
        #expect(write(console, line, line.count) == line.count)
        let second = readUntil(console) { $0.contains("40 120") }
        #expect(second.contains("40 120"), "\(second)")
        #expect(try process.wait(timeout: .seconds(10)).exitCode == 0)
        let piped = try box.run("true")
        defer { piped.close() }
        #expect((#expect(throws: SiloError.self) { try piped.resizeConsole(height: 10, width: 10) })?.code == .invalidOperation)
    }

    @Test("C7 C11 on a console that controls the process, TIOCSTI (faking input) is refused by the filter; other terminal ioctls work", .requiresPerl)
    func consoleRefusesTiocsti() throws {
        let box = try RunningSystem("sti")
        defer { box.finish() }
        let script = #"my $c = "x"; printf "tiocsti=%d\n", syscall("# + "\(ioctlNumber)" + #", 0, 0x5412, $c) < 0 ? $!+0 : 0; my $w = "\0" x 8; printf "tiocgwinsz=%d\n", syscall("# + "\(ioctlNumber)" + #", 0, 0x5413, $w) < 0 ? $!+0 : 0"#
        let injector = try box.system.createProcess(ProcessParameters(arguments: ["/usr/bin/perl", "-e", script], emulateConsole: true))
            .wait(timeout: .seconds(30))
        defer { injector.close() }
        let said = readUntil(try #require(injector.standardOutput)) { $0.contains("tiocgwinsz=") }
        #expect(said.contains("tiocsti=\(EPERM)") && said.contains("tiocgwinsz=0"), "TIOCSTI refused, other ioctls work: \(said)")
    }

    @Test("C8 ProcessExited events carry ProcessStatus; signal and terminate work; an exited process cannot be terminated")
    func exitsAndSignals() throws {
        let box = try RunningSystem("sig")
        defer { box.finish() }
        let process = try box.run("trap 'exit 42' USR1; echo ready; while :; do sleep 0.05; done")
        defer { process.close() }
        let events = Mutex<[String]>([])
        let exited = DispatchSemaphore(value: 0)
        try process.events.setHandler { event in
            events.withLock { $0.append("\(event.type.rawValue) \(event.data ?? "")") }
            if event.type == .processExited { exited.signal() }
        }
        #expect(readUntil(try #require(process.standardOutput)) { $0.contains("ready") }.contains("ready"))
        try process.signal(SIGUSR1).wait(timeout: .seconds(10))
        #expect(exited.wait(timeout: .now() + 60) == .success)
        #expect(events.withLock { $0 } == [#"processExited {"ProcessId":\#(process.pid),"Exited":true,"ExitCode":42}"#])
        #expect((#expect(throws: SiloError.self) { _ = try process.terminate() })?.code == .processAlreadyStopped)
        #expect((#expect(throws: SiloError.self) { _ = try process.signal(0) })?.field == "signal")

        let sleeper = try box.run("exec sleep 100", stdout: false)
        defer { sleeper.close() }
        try sleeper.terminate().wait(timeout: .seconds(10))
        let status = try sleeper.wait(timeout: .seconds(10))
        #expect(status.exitCode == 137 && status.signal == SIGKILL && status.outOfMemory == nil)
    }

    @Test("C7 a payload that stops every process it can (kill -STOP -1 in a loop) does not hang its agent: each process start comes back, and the agent answers on", .timeLimit(.minutes(5)))
    func stoppedChildrenDoNotHangTheAgent() throws {
        let box = try RunningSystem("stopper")
        defer { box.finish() }
        // A process being started is uid 0 until its exec, so the loop stops it there too (what
        // it stops after the exec is the payload's own business: nothing here waits for that).
        let stopper = try box.run("while :; do kill -STOP -1 2>/dev/null; done", stdout: false)
        defer { stopper.close() }
        var answers: [String] = []
        for _ in 0..<5 {
            // Started (continued by the agent when found stopped) or refused in time: either way
            // an answer. A vfork'ing agent waited in the kernel for the stopped child for good,
            // and the wait below ran out.
            do {
                let process = try box.system.createProcess(ProcessParameters(arguments: ["/bin/true"])).wait(timeout: .seconds(60))
                process.close()
                answers.append("started")
            } catch {
                #expect(error.code != .operationTimeout, "a process start got no answer: \(error)")
                answers.append("refused: \(error)")
                if error.code == .operationTimeout { break }
            }
        }
        #expect(answers.count == 5, "\(answers)")
        let listed = try box.system.processes()
        #expect(listed.contains { $0.processId == stopper.pid }, "the agent still answers: \(listed)")
        try box.system.terminate().wait(timeout: .seconds(30))
    }

    @Test("C5 a shutdown stays graceful with a stopped process inside: the process is continued, so that its SIGTERM ends it", .timeLimit(.minutes(2)))
    func shutdownContinuesStopped() throws {
        let box = try RunningSystem("stopsd")
        defer { box.finish() }
        let sleeper = try box.run("exec sleep 100", stdout: false)
        defer { sleeper.close() }
        // Its pid in the host's /proc, once the shell has exec'd sleep (so that the stop below
        // stops sleep, not a shell about to become it).
        var hostPid: pid_t?
        #expect(eventually(seconds: 30) {
            hostPid = box.system.cgroup.pids.first { readText("/proc/\($0)/comm") == "sleep" }
            return hostPid != nil
        })
        let stopped = try #require(hostPid)
        try sleeper.signal(SIGSTOP).wait(timeout: .seconds(10))
        #expect(eventually(seconds: 10) { (readText("/proc/\(stopped)/stat") ?? "").contains(") T ") }, "the process stopped")
        let started = ContinuousClock.now
        try box.system.shutdown().wait(timeout: .seconds(30))
        let properties = try box.system.properties()
        #expect(properties.state == .stopped && properties.exitType == .graceful,
                "\(properties.exitType.map { "\($0)" } ?? "none") after \(ContinuousClock.now - started): the stopped process held the shutdown to its grace period")
    }

    @Test("C7 a payload flooding init with queued signals does not keep the agent from serving", .requiresPerl, .timeLimit(.minutes(3)))
    func signalFloodDoesNotStallTheAgent() throws {
        let box = try RunningSystem("flood")
        defer { box.finish() }
        // Real-time signals queue (standard ones do not), and init has every signal blocked.
        var flooders: [ComputeProcess] = []
        defer { flooders.forEach { $0.close() } }
        for _ in 0..<4 {
            flooders.append(try box.system.createProcess(ProcessParameters(arguments: ["/usr/bin/perl", "-e", "kill 34, 1 while 1"])).wait(timeout: .seconds(30)))
        }
        usleep(500_000)
        for _ in 0..<3 {
            let process = try box.system.createProcess(ProcessParameters(arguments: ["/bin/true"])).wait(timeout: .seconds(30))
            #expect(try process.wait(timeout: .seconds(30)).exitCode == 0)
            process.close()
        }
        #expect(try box.system.processes().count >= 5, "the agent lists its processes")
        try box.system.terminate().wait(timeout: .seconds(30))
    }

    @Test("C7 two process starts that each wait out the agent's exec deadline (a payload stops every process it can) both get the agent's answer before their callers give up: the one served second is cut to what is left of its time, not carried out after its caller stopped waiting", .timeLimit(.minutes(3)))
    func queuedStartsAnsweredInTime() throws {
        let box = try RunningSystem("queued")
        defer { box.finish() }
        let stopper = try box.run("while :; do kill -STOP -1 2>/dev/null; done", stdout: false)
        defer { stopper.close() }
        let other = try box.compute.service.open(box.system.id)
        defer { other.close() }
        // From two handles at once: the agent serves one start at a time, each up to its exec
        // deadline (20 s), and a caller waits 30 s for its answer.
        let answers = Mutex<[String]>([])
        let done = DispatchSemaphore(value: 0)
        for system in [box.system, other] {
            try #require(PlatformThread.spawn {
                let answer: String
                do throws(SiloError) {
                    let process = try system.createProcess(ProcessParameters(arguments: ["/bin/true"])).wait(timeout: .seconds(60))
                    process.close()
                    answer = "started"
                } catch {
                    // The agent's own refusals carry its errno; a caller that gave up has none.
                    answer = error.errno == nil ? "no answer: \(error)" : "refused: \(error.message)"
                }
                answers.withLock { $0.append(answer) }
                done.signal()
            })
        }
        for _ in 0..<2 { #expect(done.wait(timeout: .now() + 90) == .success) }
        let heard = answers.withLock { $0 }
        #expect(heard.count == 2 && heard.allSatisfy { !$0.hasPrefix("no answer") }, "\(heard)")
        #expect(try box.system.processes().contains { $0.processId == stopper.pid }, "the agent still answers")
        try box.system.terminate().wait(timeout: .seconds(30))
    }

    @Test("C8 a process ended by its system's end is reported: ProcessExited (killed) to its handler, its status exited, a terminate of it refused as stopped", arguments: [false, true])
    func endedWithSystem(byOtherHandle: Bool) throws {
        let box = try RunningSystem(byOtherHandle ? "ewo" : "ews")
        defer { box.finish() }
        let heard = Mutex<[String]>([])
        let exited = DispatchSemaphore(value: 0)
        let sleeper = try box.run("exec sleep 100", stdout: false)
        defer { sleeper.close() }
        // Nobody waits on it: only the handler and the status may tell.
        try sleeper.events.setHandler { event in
            heard.withLock { $0.append("\(event.type.rawValue) \(event.data ?? "")") }
            if event.type == .processExited { exited.signal() }
        }
        if byOtherHandle {
            let other = try box.compute.service.open(box.system.id)
            defer { other.close() }
            try other.terminate().wait(timeout: .seconds(30))
        } else {
            try box.system.terminate().wait(timeout: .seconds(30))
        }
        #expect(exited.wait(timeout: .now() + 60) == .success, "heard: \(heard.withLock { $0 })")
        #expect(heard.withLock { $0 } == [#"processExited {"ProcessId":\#(sleeper.pid),"Exited":true,"ExitCode":137,"Signal":9}"#])
        let status = sleeper.status
        #expect(status.exited && status.signal == SIGKILL, "\(status)")
        #expect((#expect(throws: SiloError.self) { _ = try sleeper.terminate() })?.code == .processAlreadyStopped)
    }

    @Test("O16 O17 O18 on a process: its operations' completions reach its handler; own callbacks refused; nothing after close")
    func processEvents() throws {
        let box = try RunningSystem("pe")
        defer { box.finish() }
        // Signalled only once the trap is set: before, SIGUSR1 would end the shell.
        let process = try box.run("trap '' USR1; echo ready; exec sleep 100")
        #expect(readUntil(try #require(process.standardOutput)) { $0.contains("ready") }.contains("ready"))
        let completed = Mutex<[String]>([])
        let got = DispatchSemaphore(value: 0)
        try process.events.setHandler(options: .operationCallbacks) { event in
            completed.withLock { $0.append("\(event.type.rawValue) \(event.operation?.type.rawValue ?? "")") }
            got.signal()
        }
        _ = try process.signal(SIGUSR1)
        #expect(got.wait(timeout: .now() + 60) == .success)
        #expect(completed.withLock { $0 } == ["operationCompleted signalProcess"])
        #expect((#expect(throws: SiloError.self) { _ = try process.signal(SIGUSR1, callback: .short { _ in }) })?.code
                == .operationSystemCallbackAlreadySet)
        process.close()
        let again = try box.system.openProcess(process.pid)
        defer { again.close() }
        try again.terminate().wait(timeout: .seconds(10))
        usleep(100_000)
        #expect(completed.withLock { $0 } == ["operationCompleted signalProcess"], "no exit event after close")
    }

    @Test("C8 another handle opens a process by pid and gets its exit, even one that came before; unknown pids are refused")
    func secondHandle() throws {
        let box = try RunningSystem("sh2")
        defer { box.finish() }
        let other = try box.compute.service.open(box.system.id)
        defer { other.close() }
        let slow = try box.run("read x; exit 5", stdout: false, stdin: true)
        defer { slow.close() }
        let watched = try other.openProcess(slow.pid)
        defer { watched.close() }
        slow.closeStandardInput()
        #expect(try watched.wait(timeout: .seconds(10)).exitCode == 5)
        #expect(try slow.wait(timeout: .seconds(10)).exitCode == 5)
        let late = try other.openProcess(slow.pid)
        defer { late.close() }
        #expect(try late.wait(timeout: .seconds(30)).exitCode == 5, "an exit that came before the handle")
        #expect((#expect(throws: SiloError.self) { _ = try other.openProcess(4242) })?.code == .processInfoNotAvailable)
        let listed = try other.processes()
        #expect(listed.first { $0.processId == 1 }?.commandLine.hasPrefix("/.silo/init --agent") == true, "\(listed)")
    }

    @Test("C8 a running process is not reported dead when its exit cannot reach the handle: a closed system handle says so, a dropped connection is made again")
    func exitNotMadeUp() throws {
        let box = try RunningSystem("nmu")
        defer { box.finish() }
        let sleeper = try box.run("exec sleep 100", stdout: false)
        defer { sleeper.close() }
        // A second handle closed while one of its processes' handles is kept.
        let other = try box.compute.service.open(box.system.id)
        let watched = try other.openProcess(sleeper.pid)
        defer { watched.close() }
        other.close()
        let closed = #expect(throws: SiloError.self) { _ = try watched.wait(timeout: .seconds(2)) }
        #expect(closed?.code == .connectionClosed && closed?.message.contains("handle is closed") == true, "\(String(describing: closed))")
        #expect(!watched.status.exited, "no exit was made up: \(watched.status)")
        // The connection ends under a live agent: the wait makes a new one, and asks for the exit again.
        try #require(box.system.connection != nil)
        box.system.connection?.close()
        let timedOut = #expect(throws: SiloError.self) { _ = try sleeper.wait(timeout: .milliseconds(300)) }
        #expect(timedOut?.code == .operationTimeout, "still running: \(String(describing: timedOut))")
        #expect(!sleeper.status.exited)
        // And while a wait is under way: it goes on over a new connection.
        let outcome = Mutex<Result<ProcessStatus, SiloError>?>(nil)
        let finished = DispatchSemaphore(value: 0)
        DispatchQueue.global().async {
            let result: Result<ProcessStatus, SiloError>
            do throws(SiloError) { result = .success(try sleeper.wait(timeout: .seconds(30))) } catch { result = .failure(error) }
            outcome.withLock { $0 = result }
            finished.signal()
        }
        usleep(200_000)
        box.system.connection?.close()
        #expect(finished.wait(timeout: .now() + .milliseconds(300)) == .timedOut, "the wait ended with its connection: \(String(describing: outcome.withLock { $0 }))")
        _ = try box.run("kill -USR1 \(sleeper.pid)", stdout: false).wait(timeout: .seconds(10))
        #expect(finished.wait(timeout: .now() + .seconds(20)) == .success)
        let status = try outcome.withLock { $0 }?.get()
        #expect(status?.signal == SIGUSR1, "the real exit, through the new connection: \(String(describing: status))")
    }

    @Test("C10 a process over the memory limit is OOM-killed inside; its exit says so; the system runs on")
    func outOfMemory() throws {
        let box = try RunningSystem("oom", memoryMB: 32)
        defer { box.finish() }
        // Started before the OOM kill and terminated after it: its SIGKILL is Silo's, not the OOM killer's.
        let bystander = try box.run("exec sleep 100", stdout: false)
        defer { bystander.close() }
        let process = try box.run("exec dd if=/dev/zero of=/dev/null bs=256M count=1", stdout: false)
        defer { process.close() }
        let oom = DispatchSemaphore(value: 0)
        try process.events.setHandler { event in if event.type == .outOfMemory { oom.signal() } }
        let status = try process.wait(timeout: .seconds(30))
        #expect(status.exitCode == 137 && status.outOfMemory == true, "\(status)")
        #expect(oom.wait(timeout: .now() + 60) == .success, "the outOfMemory event came")
        try bystander.terminate().wait(timeout: .seconds(10))
        let terminated = try bystander.wait(timeout: .seconds(10))
        #expect(terminated.signal == SIGKILL && terminated.outOfMemory == nil, "a terminate is no OOM kill: \(terminated)")
        #expect(try box.system.properties().state == .running)
        let after = try box.run("echo alive")
        defer { after.close() }
        #expect(readAll(try #require(after.standardOutput)) == "alive\n")
    }

    @Test("C10 CPU use stays within Processor.Count: two busy processes in a one-CPU system get one CPU's time", .enabled(if: sysconf(Int32(_SC_NPROCESSORS_ONLN)) >= 2, "needs two CPUs to tell"))
    func cpuLimitHolds() throws {
        let box = try RunningSystem("cpu")  // Processor.Count 1
        defer { box.finish() }
        let spinners = try (0..<2).map { _ in try box.run("while :; do :; done", stdout: false) }
        defer { spinners.forEach { $0.close() } }
        usleep(200_000)
        let start = box.system.cgroup.statistics
        let began = ContinuousClock.now
        usleep(1_500_000)
        let end = box.system.cgroup.statistics
        let wall = (ContinuousClock.now - began) / .nanoseconds(100)  // in the statistics' 100 ns units
        let used = Double((end.cpuUser100ns + end.cpuKernel100ns) - (start.cpuUser100ns + start.cpuKernel100ns))
        // Unlimited, two spinners on two CPUs would use twice the wall time.
        #expect(used <= 1.3 * wall, "used \(used / wall) CPUs' time in a one-CPU system")
        #expect(used >= 0.5 * wall, "the spinners ran: \(used / wall)")
        for spinner in spinners { try spinner.terminate().wait(timeout: .seconds(10)) }
    }

    @Test("C10 a fork bomb inside stops at the pids limit; the agent lives and answers; the system terminates")
    func forkBomb() throws {
        let box = try RunningSystem("fb", memoryMB: 512)
        defer { box.finish() }
        let limit = 1024  // the default pids limit of a system
        let bomb = try box.run("while :; do sleep 600 & done 2>/dev/null", stdout: false)
        defer { bomb.close() }
        let current = try #require(box.system.cgroup.directory("pids")) + "/pids.current"
        var peak = 0
        // A slow machine needs long: the cgroup2 guest (software emulation) filled 472 of 1,024 in 15 s.
        let deadline = ContinuousClock.now + .seconds(180)
        while peak < limit - 2, ContinuousClock.now < deadline {
            usleep(10_000)
            peak = max(peak, Int(readText(current) ?? "") ?? 0)
        }
        for _ in 0..<50 {  // and it stays there
            usleep(2_000)
            peak = max(peak, Int(readText(current) ?? "") ?? 0)
        }
        #expect(peak >= limit - 2 && peak <= limit, "the bomb filled the pids limit and no more: \(peak)")
        // The agent forks nothing to answer a list, so it still answers at the limit.
        let listed = try box.system.processes()
        #expect(listed.contains { $0.processId == 1 } && listed.count >= limit - 3, "\(listed.count) listed")
        #expect(try box.system.properties().state == .running)
        try box.system.terminate().wait(timeout: .seconds(30))
        #expect(box.system.cgroup.pids.isEmpty)
    }

    @Test("C5 a shutdown kills what ignores SIGTERM once its grace period is over, and calls the exit Forced; the stopped system holds no process, cgroup or mount")
    func shutdownPastGrace() throws {
        let box = try RunningSystem("grace")
        defer { box.finish() }
        let stubborn = try box.run("trap '' TERM; echo ready; while :; do sleep 1; done", stdout: true)
        defer { stubborn.close() }
        #expect(readUntil(try #require(stubborn.standardOutput)) { $0.contains("ready") }.contains("ready"))
        let cgroup = box.system.cgroup
        let root = box.compute.service.store.root(box.system.id)
        // The system's mounts live in its own mount namespace: none is left if no process is in it.
        let initPID = try #require(box.system.properties().processList.first)
        let namespace = try #require(readLink("/proc/\(initPID)/ns/mnt"))
        #expect(namespace != readLink("/proc/self/ns/mnt"))
        try box.system.shutdown().wait(timeout: .seconds(60))
        #expect(try box.system.properties().exitType == .forced, "SIGTERM was ignored: the stop is forced")
        let status = try stubborn.wait(timeout: .seconds(10))
        #expect(status.signal == SIGKILL, "\(status)")
        #expect(cgroup.directories.values.allSatisfy { !fileExists($0) }, "no cgroup is left")
        let inside = directoryEntries("/proc").filter { Int($0) != nil && readLink("/proc/\($0)/ns/mnt") == namespace }
        #expect(inside.isEmpty, "processes left in the system's mount namespace: \(inside)")
        #expect(!(readText("/proc/self/mountinfo") ?? "").contains(" \(root) "), "no mount of the root is left on the host")
        #expect(!fileExists(root), "the root's folder is gone")
    }

    @Test("C8 the agent forgets the oldest exit first when its table of 1,024 processes is full, not the first slot's; the CLI cannot wait for a forgotten one",
          .requiresSiloExecutable)
    func agentEvictsOldestExit() throws {
        let box = try RunningSystem("evict")
        defer { box.finish() }
        // The first slot's process exits last; 1,023 others fill the table and exit before it.
        let late = try box.system.createProcess(ProcessParameters(arguments: ["/bin/cat"], createStdInPipe: true))
            .wait(timeout: .seconds(30))
        defer { late.close() }
        var oldest: Int32?
        for _ in 0..<1023 {
            let quick = try box.system.createProcess(ProcessParameters(arguments: ["/bin/true"])).wait(timeout: .seconds(30))
            _ = try quick.wait(timeout: .seconds(30))
            oldest = oldest ?? quick.pid
            quick.close()
        }
        late.closeStandardInput()
        #expect(try late.wait(timeout: .seconds(30)).exitCode == 0)
        // One more takes the slot of the oldest exit; the latest, the first slot's, stays known.
        let one = try box.system.createProcess(ProcessParameters(arguments: ["/bin/true"])).wait(timeout: .seconds(30))
        _ = try one.wait(timeout: .seconds(30))
        one.close()
        let reopened = try box.system.openProcess(late.pid)
        defer { reopened.close() }
        #expect(try reopened.wait(timeout: .seconds(10)).exitCode == 0, "a late watcher gets the newest exits")
        // The forgotten exit cannot be waited for: the CLI says so and exits 1.
        let forgotten = try #require(oldest)
        let waiter = startProgram("/bin/sh", ["-c", "exec \"$0\" --state-dir \"$1\" process wait \"$2\" \"$3\" 2>&1",
                                              siloExecutable, box.compute.state, box.system.id, "\(forgotten)"])
        let said = readAll(waiter.output)
        close(waiter.output)
        #expect(reap(waiter.pid) == 1, "\(said)")
        #expect(said.contains("has no process \(forgotten) that Silo started (PID) [processInfoNotAvailable]"), "\(said)")
    }

    @Test("C4 a pause waits for a process start or signal under way (their gate), and one that cannot wait changes nothing; a start waits for a pause the same way")
    func pauseWaitsForRequests() throws {
        let box = try RunningSystem("pg")
        defer { box.finish() }
        // As a start in another process, between its check that the system runs and its reply.
        let held = try box.system.openRequestGate(exclusive: false)
        let refused = #expect(throws: SiloError.self) { try box.system.pause().wait(timeout: .seconds(30)) }
        #expect(refused?.code == .operationTimeout && refused?.message.contains("it was not paused") == true, "\(String(describing: refused))")
        #expect(try box.system.properties().state == .running && !box.system.cgroup.freezeRequested, "nothing frozen")
        close(held)
        // As a pause in another process, between its freeze and its record: a start sends nothing.
        let pausing = try box.system.openRequestGate(exclusive: true)
        let waited = #expect(throws: SiloError.self) { _ = try box.run("true") }
        #expect(waited?.code == .operationTimeout && waited?.message.contains("nothing was sent") == true, "\(String(describing: waited))")
        close(pausing)

        // A pause waiting on a start under way holds nothing else up: a modify made meanwhile
        // (it takes the system's lock) ends first, and the pause once the start is through.
        let starting = try box.system.openRequestGate(exclusive: false)
        let pause = try box.system.pause()
        let deadline = ContinuousClock.now + .seconds(10)
        while pause.status == .queued, ContinuousClock.now < deadline { usleep(1000) }
        try box.system.modify(ModifyRequest(change: .memory(megabytes: 96))).wait(timeout: .seconds(3))
        #expect(pause.status.isPending, "the pause still waits for the start")
        close(starting)
        try pause.wait(timeout: .seconds(10))
        #expect(try box.system.properties().state == .paused)
        try box.system.resume().wait(timeout: .seconds(10))

        try box.system.pause().wait(timeout: .seconds(10))
        #expect((#expect(throws: SiloError.self) { _ = try box.run("true") })?.code == .invalidState)
        try box.system.resume().wait(timeout: .seconds(10))
        let after = try box.run("exit 4", stdout: false)
        defer { after.close() }
        #expect(try after.wait(timeout: .seconds(10)).exitCode == 4)
    }

    @Test("C4 C5 pause freezes processes and refuses new ones and requests its frozen agent cannot answer; shutdown sends SIGTERM to them first")
    func pauseAndShutdown() throws {
        let box = try RunningSystem("ps")
        defer { box.finish() }
        let counter = try box.run("trap 'echo bye; exit 0' TERM; i=0; while :; do i=$((i+1)); echo $i > /tmp/n; sleep 0.01; done", stdout: true)
        defer { counter.close() }
        // The counter's file, read from the host through init's root.
        let initPID = try #require(box.system.properties().processList.first)  // any of them: they share the root
        let counted = { () -> String? in
            let fd = open("/proc/\(initPID)/root/tmp/n", O_RDONLY | O_CLOEXEC)
            guard fd >= 0 else { return nil }
            defer { close(fd) }
            return readAll(fd)
        }
        let number = { (text: String?) -> Int? in text.flatMap { Int($0.filter { !$0.isWhitespace }) } }
        // Counting before the pause, however slowly the shell starts: a file still missing would
        // stand still for any reason.
        try #require(eventually { number(counted()) != nil }, "the counter never counted")
        try box.system.pause().wait(timeout: .seconds(10))
        #expect((#expect(throws: SiloError.self) { _ = try box.run("true") })?.code == .invalidState)
        // Frozen: the counter's file stands still.
        let first = counted()
        usleep(150_000)
        #expect(first != nil && counted() == first, "the counter ran while paused: \(first ?? "nothing") then \(counted() ?? "nothing")")
        // The agent is frozen too: refused at once, not after a request's 30 s timeout.
        #expect((#expect(throws: SiloError.self) { _ = try box.system.processes() })?.code == .invalidState)
        #expect((#expect(throws: SiloError.self) { _ = try counter.signal(SIGUSR1) })?.code == .invalidState)
        #expect((#expect(throws: SiloError.self) { _ = try box.system.openProcess(counter.pid) })?.code == .invalidState)
        let probe = { () throws -> String in
            let reader = try box.run("cat /tmp/n")
            defer { reader.close() }
            return readAll(try #require(reader.standardOutput))
        }
        try box.system.resume().wait(timeout: .seconds(10))
        let a = try probe()
        // Running again: the count goes past where it stood frozen and what a process inside read
        // after the resume (either may be empty, read between the shell's truncate and its write).
        let before = max(number(first) ?? 0, number(a) ?? 0)
        #expect(eventually { (number(counted()) ?? 0) > before }, "running again: \(a) then \(counted() ?? "nothing")")
        try box.system.shutdown().wait(timeout: .seconds(30))
        #expect(try box.system.properties().exitType == .graceful)
        #expect(readAll(try #require(counter.standardOutput)).hasSuffix("bye\n"), "the process got SIGTERM and ended by itself")
        #expect((#expect(throws: SiloError.self) { _ = try box.run("true") })?.code == .invalidState)
    }

    @Test("C8 with no reader thread: waits on one handle from three threads each get their own exit, whichever thread reads; polling status sees an exit")
    func waitsWithoutReaderThread() throws {
        let box = try RunningSystem("rd")
        defer { box.finish() }
        // Nobody waits (and no thread reads yet): the status a caller polls takes in what the agent sent.
        let polled = try box.run("exit 6", stdout: false)
        defer { polled.close() }
        let deadline = ContinuousClock.now + .seconds(10)
        while !polled.status.exited, ContinuousClock.now < deadline { usleep(10_000) }
        #expect(polled.status.exited && polled.status.exitCode == 6)

        // Three processes ending in turn, each waited for by a thread of its own: the first waiter
        // reads the connection, and when it stops, a reader thread must take over for the others.
        let processes = try [(0.2, 3), (0.6, 4), (1.0, 5)].map { delay, code in
            try box.run("sleep \(delay); exit \(code)", stdout: false)
        }
        defer { processes.forEach { $0.close() } }
        let codes = Mutex<[Int: Int32]>([:])
        let group = DispatchGroup()
        // The shortest first: its thread reads, and stops when its process ends while the others
        // still wait.
        for index in [0, 1, 2] {
            group.enter()
            _ = PlatformThread.spawn {
                if let code = try? processes[index].wait(timeout: .seconds(20)).exitCode { codes.withLock { $0[index] = code } }
                group.leave()
            }
            usleep(20_000)
        }
        #expect(group.wait(timeout: .now() + .seconds(30)) == .success)
        #expect(codes.withLock { $0 } == [0: 3, 1: 4, 2: 5])
    }

    @Test("C8 C5 a wait ends when the system stops, for a waiter asleep behind a reader thread and one asleep behind another waiter")
    func waitsEndWithTheSystem() throws {
        // One thread per process waits with no timeout; another handle terminates the system.
        // Each wait must return, with the process killed, instead of sleeping on.
        final class Signals: Sendable { let values = Mutex<[Int: Int32]>([:]) }
        func waitAll(_ processes: [ComputeProcess]) -> (DispatchGroup, Signals) {
            let group = DispatchGroup()
            let signals = Signals()
            for (index, process) in processes.enumerated() {
                group.enter()
                _ = PlatformThread.spawn {
                    if let status = try? process.wait(), let signal = status.signal { signals.values.withLock { $0[index] = signal } }
                    group.leave()
                }
                usleep(50_000)  // the first reads (where nothing else does), the later ones sleep
            }
            return (group, signals)
        }

        // A reader thread (an event handler is set): every waiter sleeps while it reads.
        let threaded = try RunningSystem("we1")
        defer { threaded.finish() }
        try threaded.system.events.setHandler { _ in }
        let first = try threaded.run("exec sleep 600", stdout: false)
        defer { first.close() }
        let (firstGroup, firstSignals) = waitAll([first])
        let other = try threaded.compute.service.open(threaded.system.id)
        try other.terminate().wait(timeout: .seconds(30))
        other.close()
        #expect(firstGroup.wait(timeout: .now() + .seconds(30)) == .success, "the waiter behind the reader thread woke")
        #expect(firstSignals.values.withLock { $0 } == [0: SIGKILL])

        // No reader thread: the first waiter reads, the second sleeps until it takes over or the end comes.
        let plain = try RunningSystem("we2")
        defer { plain.finish() }
        let pair = try [plain.run("exec sleep 600", stdout: false), plain.run("exec sleep 600", stdout: false)]
        defer { pair.forEach { $0.close() } }
        let (pairGroup, pairSignals) = waitAll(pair)
        let stopper = try plain.compute.service.open(plain.system.id)
        try stopper.terminate().wait(timeout: .seconds(30))
        stopper.close()
        #expect(pairGroup.wait(timeout: .now() + .seconds(30)) == .success, "both waiters woke")
        #expect(pairSignals.values.withLock { $0 } == [0: SIGKILL, 1: SIGKILL])
    }

    @Test("C8 the exit of a process whose handle was closed is dropped, not kept for a later process that gets its pid")
    func closedHandleExitDropped() throws {
        let box = try RunningSystem("cx")
        defer { box.finish() }
        let process = try box.run("sleep 0.2", stdout: false)
        process.close()
        // The exit comes while a later process's wait reads the connection.
        let later = try box.run("sleep 0.6; exit 2", stdout: false)
        defer { later.close() }
        #expect(try later.wait(timeout: .seconds(10)).exitCode == 2)
        #expect(box.system.unclaimedExitCount == 0)
    }

    @Test("C8 a wait given a timeout of centuries waits as long as the process runs (the deadline does not overflow)")
    func hugeTimeout() throws {
        let box = try RunningSystem("ht")
        defer { box.finish() }
        let process = try box.run("sleep 0.2; exit 4", stdout: false)
        defer { process.close() }
        #expect(try process.wait(timeout: .seconds(Int64.max / 4)).exitCode == 4)
    }

    @Test("C8 exits that pile up while nobody reads the connection all arrive; the agent keeps the connection")
    func exitsPileUp() throws {
        let box = try RunningSystem("pile", memoryMB: 512)
        defer { box.finish() }
        // More exits than the connection's socket buffer holds (about 230 small packets here),
        // all coming while this handle reads nothing: no waiter, no handler, no request.
        let processes = try (0..<500).map { _ in try box.run("exec sleep 2", stdout: false) }
        defer { processes.forEach { $0.close() } }
        usleep(3_000_000)
        let deadline = ContinuousClock.now + .seconds(20)
        while processes.contains(where: { !$0.status.exited }), ContinuousClock.now < deadline { usleep(10_000) }
        #expect(processes.filter { $0.status.exitCode == 0 }.count == 500)
        #expect(try box.run("exit 9", stdout: false).wait(timeout: .seconds(10)).exitCode == 9, "the connection still serves")
    }

    @Test("C5 a process inside cannot shut its system down by signalling init; the host can", .x8664Numbers)
    func insideCannotShutDown() throws {
        let box = try RunningSystem("sig")
        defer { box.finish() }
        // A kill, and a sigqueue that forges a sender's pid of 0 (rt_sigqueueinfo, SI_QUEUE).
        let forged = #"/usr/bin/perl -e 'my $i = pack("iiiiii", 15, 0, -1, 0, 0, 0) . "\0" x 104; syscall(129, 1, 15, $i) == 0 or exit 9'"#
        let killer = try box.run("kill -TERM 1; kill -INT 1; \(forged) || exit 8; sleep 0.3; exit 3", stdout: false)
        defer { killer.close() }
        #expect(try killer.wait(timeout: .seconds(10)).exitCode == 3)
        #expect(try box.run("exit 4", stdout: false).wait(timeout: .seconds(10)).exitCode == 4, "the system runs on")
        #expect(box.compute.service.enumerate(id: box.system.id).first?.state == .running)
        try box.system.shutdown().wait(timeout: .seconds(30))
        #expect(box.compute.service.enumerate(id: box.system.id).first?.state == .stopped)
    }

    @Test("C5 C8 at a shutdown, the agent sends the exits it still keeps before it ends")
    func keptExitsAtShutdown() throws {
        let box = try RunningSystem("kx", memoryMB: 512)
        defer { box.finish() }
        let processes = try (0..<400).map { _ in try box.run("exec sleep 1", stdout: false) }
        defer { processes.forEach { $0.close() } }
        // All exited (init alone left in the cgroup), more than the socket holds kept by the agent.
        try #require(eventually(seconds: 120) { box.system.cgroup.pids.count == 1 }, "the sleeps outlived their second")
        // Another handle shuts the system down (nothing runs: the agent ends at once), while
        // this one reads what it was sent.
        let other = try box.compute.service.open(box.system.id)
        let stop = try other.shutdown()
        // The agent has its SIGTERM by now, nothing to wait for, and (with exits kept) waits
        // half a second for this handle to take them.
        usleep(150_000)
        let codes = processes.map { try? $0.wait(timeout: .seconds(20)).exitCode }
        _ = try? stop.wait(timeout: .seconds(30))
        other.close()
        #expect(codes.filter { $0 == 0 }.count == 400, "\(codes.filter { $0 != 0 }.count) ended otherwise")
    }

    @Test("C7 a bare command is looked up in the PATH of the process's own environment; what cannot run is refused at the exec step")
    func commandLookup() throws {
        let box = try RunningSystem("pl")
        defer { box.finish() }
        let setup = try box.run("printf '#!/bin/sh\\nexit 9\\n' > /tmp/mine && chmod +x /tmp/mine && printf 'x' > /tmp/plain"
                                + " && printf 'exit 8\\n' > /tmp/bare && chmod +x /tmp/bare", stdout: false)
        defer { setup.close() }
        #expect(try setup.wait(timeout: .seconds(10)).exitCode == 0)

        // Found through the second entry of its own PATH (the agent's PATH has no /tmp).
        let found = try box.system.createProcess(ProcessParameters(arguments: ["mine"], environment: ["PATH": "/nowhere:/tmp"]))
            .wait(timeout: .seconds(30))
        defer { found.close() }
        #expect(try found.wait(timeout: .seconds(10)).exitCode == 9)
        // A script without #! runs under /bin/sh, as execvp and silo run have it.
        let bare = try box.system.createProcess(ProcessParameters(arguments: ["bare"], environment: ["PATH": "/tmp"]))
            .wait(timeout: .seconds(30))
        defer { bare.close() }
        #expect(try bare.wait(timeout: .seconds(10)).exitCode == 8)

        for (command, path, expected) in [("mine", "/nowhere", ENOENT), ("plain", "/tmp", EACCES), ("/tmp/plain", "/bin", EACCES)] {
            let refusal = #expect(throws: SiloError.self) {
                _ = try box.system.createProcess(ProcessParameters(arguments: [command], environment: ["PATH": path])).wait(timeout: .seconds(30))
            }
            #expect(refusal?.errno == expected && refusal?.syscall == "exec", "\(command) in \(path): \(String(describing: refusal))")
        }
        // The agent is unharmed by its children's failures: it still starts processes.
        let after = try box.run("exit 0", stdout: false)
        defer { after.close() }
        #expect(try after.wait(timeout: .seconds(10)).exitCode == 0)
        // And the children that failed were reaped (at their SIGCHLD, not waited for): no zombie
        // among the agent's children (a zombie is in no cgroup.procs: asked of the agent's
        // children list, which keeps it).
        let agent = try #require(try box.compute.service.store.load(box.system.id).initPID)
        func zombies() -> [String] {
            directoryEntries("/proc/\(agent)/task").flatMap { (readText("/proc/\(agent)/task/\($0)/children") ?? "").split(separator: " ") }
                .map { readText("/proc/\($0)/stat") ?? "" }.filter { $0.contains(") Z ") }
        }
        #expect(readText("/proc/\(agent)/task/\(agent)/children") != nil, "the agent's children can be listed here")
        #expect(eventually(seconds: 10) { zombies().isEmpty }, "a failed start's child is left a zombie: \(zombies())")
    }

    @Test("C7 a process's start (the agent) and a run (init's run mode) look a command up alike, as execvp: past what is not there or not runnable, stopped by any other failure")
    func oneLookup() throws {
        let box = try RunningSystem("ol")
        defer { box.finish() }
        let long = "/" + String(repeating: "a", count: 300)  // a name the kernel refuses: ENAMETOOLONG
        // (command, PATH, the exit a shell gives: 0 ran, 126 found and not runnable, 127 not found)
        let cases: [(String, String, Int32)] = [
            ("true", "/nowhere:/usr/bin", 0),       // ENOENT: on to the next folder
            ("true", "/etc/passwd:/usr/bin", 0),    // ENOTDIR: on
            ("bin", "/usr:/nowhere", 126),          // EACCES (a folder) remembered, then ENOENT
            ("true", "/nowhere", 127),
            ("true", long + ":/usr/bin", 126),      // any other failure ends the search, as execvp's
        ]
        for (command, path, expected) in cases {
            let run = try runSandboxed(underInit: true, "") {
                $0.arguments = ["/.silo/init", "--", command]
                $0.environment = ["PATH=" + path]
            }
            #expect(run.status == expected, "run mode: \(command) in \(path): \(run.output)")
            let started: Int32
            do {
                let process = try box.system.createProcess(ProcessParameters(arguments: [command], environment: ["PATH": path]))
                    .wait(timeout: .seconds(30))
                defer { process.close() }
                started = try process.wait(timeout: .seconds(10)).exitCode ?? -1
            } catch {
                #expect(error.syscall == "exec", "\(command) in \(path): \(error)")
                started = error.errno == ENOENT ? 127 : 126
            }
            #expect(started == expected, "the agent: \(command) in \(path)")
        }
    }

    @Test("C8 a pid watched by its spawning connection, twice on one connection and by two connections: every handle gets the exit, no connection keeps a second one")
    func watchedTwice() throws {
        let box = try RunningSystem("wt")
        defer { box.finish() }
        let first = try box.compute.service.open(box.system.id)
        defer { first.close() }
        let second = try box.compute.service.open(box.system.id)
        defer { second.close() }
        let slow = try box.run("read x; exit 5", stdout: false, stdin: true)
        defer { slow.close() }
        let own = try box.system.openProcess(slow.pid)  // a WATCH from the spawning connection
        defer { own.close() }
        let twiceA = try first.openProcess(slow.pid)    // one connection, WATCH twice
        defer { twiceA.close() }
        let twiceB = try first.openProcess(slow.pid)
        defer { twiceB.close() }
        let other = try second.openProcess(slow.pid)    // a second connection
        defer { other.close() }
        slow.closeStandardInput()
        for process in [slow, own, twiceA, twiceB, other] {
            #expect(try process.wait(timeout: .seconds(10)).exitCode == 5)
        }
        // A round trip on each connection reads whatever the agent sent before its reply: a second
        // EXITED would find no handle left and be kept as unclaimed.
        for (name, handle) in [("spawning", box.system), ("watching twice", first), ("watching", second)] {
            _ = try handle.processes()
            #expect(handle.unclaimedExitCount == 0, "a second EXITED for \(slow.pid) on the \(name) connection")
        }
    }

    @Test("C8 a process opened again while its exit waits unread on this handle's connection gets that exit once; none is kept for a later process of its pid")
    func watchAfterUnreadExit() throws {
        let box = try RunningSystem("wu")
        defer { box.finish() }
        let lister = try box.compute.service.open(box.system.id)
        defer { lister.close() }
        let quick = try box.run("exit 3", stdout: false)
        defer { quick.close() }
        // Reaped: its EXITED was sent to box.system's connection, which nobody reads.
        #expect(eventually { !((try? lister.processes()) ?? []).contains { $0.processId == quick.pid } })
        try #require(!quick.hasExited, "nothing has read this handle's connection yet")
        let again = try box.system.openProcess(quick.pid)
        defer { again.close() }
        #expect(try again.wait(timeout: .seconds(5)).exitCode == 3)
        #expect(try quick.wait(timeout: .seconds(5)).exitCode == 3)
        _ = try box.system.processes()  // reads whatever followed the WATCH's reply
        #expect(box.system.unclaimedExitCount == 0, "the exit came twice: the second is kept for a later process of pid \(quick.pid)")
        // Opened again with its exit read long ago: it comes in the reply.
        let third = try box.system.openProcess(quick.pid)
        defer { third.close() }
        #expect(third.hasExited && third.status.exitCode == 3)
        _ = try box.system.processes()
        #expect(box.system.unclaimedExitCount == 0)
    }

    @Test("C8 500 exits while nobody reads the connection (more than its buffer holds, so the agent keeps some), then a reopen of the last: every exit comes once")
    func watchOfKeptExit() throws {
        let box = try RunningSystem("wk", memoryMB: 512)
        defer { box.finish() }
        let lister = try box.compute.service.open(box.system.id)  // another connection: it reads nothing of box.system's
        defer { lister.close() }
        // More exits than the connection's buffer holds (about 280), while nobody reads it.
        let processes = try (0..<500).map { _ in try box.run("exec sleep 1", stdout: false) }
        defer { processes.forEach { $0.close() } }
        let pids = Set(processes.map(\.pid))
        #expect(eventually(seconds: 30) { !((try? lister.processes()) ?? []).contains { pids.contains($0.processId) } },
                "all reaped: their exits sent or kept")
        let last = try #require(processes.last)  // among the last to exit: its exit is kept, not sent
        let again = try box.system.openProcess(last.pid)  // the reply flushes the other kept exits first
        defer { again.close() }
        #expect(try again.wait(timeout: .seconds(10)).exitCode == 0)
        _ = try box.system.processes()
        #expect(box.system.unclaimedExitCount == 0, "an exit came twice")
        #expect(processes.allSatisfy { (try? $0.wait(timeout: .seconds(10)).exitCode) == 0 })
    }

    @Test("C7 C8 a process started as another user can be signalled, and a shutdown's SIGTERM reaches it (the agent keeps CAP_KILL)")
    func signalAnotherUser() throws {
        let box = try RunningSystem("su")
        defer { box.finish() }
        let other = try box.system.createProcess(ProcessParameters(arguments: ["/usr/bin/sleep", "600"], user: "65534:65534"))
            .wait(timeout: .seconds(30))
        defer { other.close() }
        try other.signal(SIGTERM).wait(timeout: .seconds(10))
        let status = try other.wait(timeout: .seconds(10))
        #expect(status.signal == SIGTERM, "\(status)")
        // A shutdown's SIGTERM: a nobody process that says it got it, and exits 0.
        let trapping = try box.system.createProcess(ProcessParameters(
            arguments: ["/bin/sh", "-c", "trap 'exit 0' TERM; echo ready; while :; do sleep 0.05; done"], user: "65534:65534",
            createStdOutPipe: true)).wait(timeout: .seconds(30))
        defer { trapping.close() }
        #expect(readUntil(try #require(trapping.standardOutput)) { $0.contains("ready") }.contains("ready"))
        try box.system.shutdown().wait(timeout: .seconds(30))
        #expect(try trapping.wait(timeout: .seconds(10)).exitCode == 0, "the shutdown's SIGTERM reached it, not the SIGKILL after")
        #expect(box.compute.service.enumerate(id: box.system.id).first?.exitType == .graceful)
    }
}
