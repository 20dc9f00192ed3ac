import Glibc
import SiloOperations
import Testing

@testable import SiloCompute

/// The `silo` executable built beside the tests.
let siloExecutable: String = {
    var buffer = [CChar](repeating: 0, count: 4096)
    let count = readlink("/proc/self/exe", &buffer, buffer.count - 1)
    let exe = count > 0 ? String(cString: buffer) : ""
    return String(exe[..<(exe.lastIndex(of: "/") ?? exe.endIndex)]) + "/silo"
}()

extension Trait where Self == ConditionTrait {
    static var requiresSiloExecutable: Self {
        .enabled(if: access(siloExecutable, X_OK) == 0, "needs the silo executable built beside the tests (swift build --build-tests)")
    }
}

/// Starts `silo --state-dir STATE ARGUMENTS` with stdout into a pipe; returns its pid and the pipe.
func startSilo(_ state: String, _ arguments: [String]) -> (pid: pid_t, output: Int32) {
    startProgram(siloExecutable, ["--state-dir", state] + arguments)
}

/// Starts `program ARGUMENTS` with stdin from /dev/null and stdout into a pipe; returns its pid and the pipe.
func startProgram(_ program: String, _ arguments: [String]) -> (pid: pid_t, output: Int32) {
    var output: [Int32] = [0, 0]
    pipe(&output)
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)  // never the terminal `swift test` may have
    posix_spawn_file_actions_adddup2(&actions, output[1], 1)
    posix_spawn_file_actions_addclose(&actions, output[0])
    let argv = ([program] + arguments).map { strdup($0) } + [nil]
    defer { argv.forEach { free($0) } }
    var pid: pid_t = 0
    let result = spawnCleanly(&pid, program, &actions, argv, environ)
    close(output[1])
    precondition(result == 0, "cannot start \(program): \(result)")
    return (pid, output[0])
}

@Suite("Compute systems across processes", .tags(.root), .requiresCgroups, .requiresSiloExecutable, .serialized)
struct CrossProcessTests {
    @Test("C7 process create --detach --json prints the process as JSON; --json on an attached process is refused, naming it")
    func detachedJSON() throws {
        let box = try RunningSystem("xj")
        defer { box.finish() }
        let id = box.system.id
        let detached = startSilo(box.compute.state, ["process", "create", id, "--detach", "--json", "--", "/bin/sleep", "100"])
        let printed = readAll(detached.output)
        close(detached.output)
        #expect(reap(detached.pid) == 0)
        #expect(printed.hasPrefix(#"{"ProcessId":"#) && printed.hasSuffix("}\n"), "\(printed)")
        let pid = Int32(printed.dropFirst(#"{"ProcessId":"#.count).dropLast(2)) ?? 0
        #expect(pid > 1)
        let killed = startSilo(box.compute.state, ["process", "kill", id, "\(pid)"])
        close(killed.output)
        #expect(reap(killed.pid) == 0, "the pid printed is the process's")
        let refused = startSilo(box.compute.state, ["process", "create", id, "--json", "--", "/bin/true"])
        #expect(readAll(refused.output).isEmpty)
        close(refused.output)
        #expect(reap(refused.pid) == 64)
    }

    @Test("C6 C7 another process creates a process in a system by id and gets its exit code; process list, signal and wait")
    func secondProcess() throws {
        let box = try RunningSystem("xp")
        defer { box.finish() }
        let id = box.system.id
        let attached = startSilo(box.compute.state, ["process", "create", id, "--", "/bin/sh", "-c", "echo from-$(hostname); exit 7"])
        #expect(readAll(attached.output) == "from-\(id)\n")
        close(attached.output)
        #expect(reap(attached.pid) == 7, "the CLI exits with the process's code")
        for (command, code) in [("/nonexistent", Int32(127)), ("/usr", 126)] {
            let failed = startSilo(box.compute.state, ["process", "create", id, "--", command])
            close(failed.output)
            #expect(reap(failed.pid) == code, "\(command): as a shell says it")
        }

        let sleeper = try box.run("exec sleep 100", stdout: false)
        defer { sleeper.close() }
        let listed = startSilo(box.compute.state, ["process", "list", id, "--json"])
        let list = readAll(listed.output)
        close(listed.output)
        #expect(reap(listed.pid) == 0)
        #expect(list.contains(#""ProcessId" : \#(sleeper.pid)"#) && list.contains("sleep 100"), "\(list)")
        // A waiter stopped by a signal (Ctrl-C, a `timeout`'s TERM) stops waiting; the process runs on.
        let watcher = startSilo(box.compute.state, ["process", "wait", id, "\(sleeper.pid)"])
        let waiting = (0..<2000).contains { _ in
            let status = readText("/proc/\(watcher.pid)/status") ?? ""
            let blocked = status.split(separator: "\n").first { $0.hasPrefix("SigBlk:") }.flatMap { UInt64($0.dropFirst(7).trimmingPrefix { $0 == "\t" }, radix: 16) } ?? 0
            if blocked & (1 << (UInt64(SIGTERM) - 1)) != 0 { return true }
            usleep(5000)
            return false
        }
        #expect(waiting, "the waiter took SIGTERM for its own")
        kill(watcher.pid, SIGTERM)
        close(watcher.output)
        #expect(reap(watcher.pid) == 128 + SIGTERM)
        let runsOn = #expect(throws: SiloError.self, "the process runs on") { _ = try sleeper.wait(timeout: .milliseconds(300)) }
        #expect(runsOn?.code == .operationTimeout, "the process runs on: \(String(describing: runsOn))")
        let waiter = startSilo(box.compute.state, ["process", "wait", id, "\(sleeper.pid)"])
        let signal = startSilo(box.compute.state, ["process", "signal", id, "\(sleeper.pid)", "--signal", "USR1"])
        close(signal.output)
        #expect(reap(signal.pid) == 0)
        close(waiter.output)
        #expect(reap(waiter.pid) == 128 + SIGUSR1, "the waiting CLI exits with the signal's code")
        #expect(try sleeper.wait(timeout: .seconds(5)).signal == SIGUSR1)
    }

    @Test("C7 silo process create --tty: the process gets a terminal of this terminal's size; its exit code comes back",
          .enabled(if: access("/usr/bin/script", X_OK) == 0, "needs script(1) from util-linux for a terminal"))
    func terminal() throws {
        let box = try RunningSystem("tt")
        defer { box.finish() }
        // script(1) gives the CLI a terminal of its own, as a person's shell would.
        func onTerminal(_ script: String, before: String = "") -> (status: Int32, output: String) {
            let command = before + "\(siloExecutable) --state-dir \(box.compute.state) process create \(box.system.id) --tty -- "
                + "/bin/sh -c '\(script)'"
            let run = startProgram("/usr/bin/script", ["-qec", command, "/dev/null"])
            let output = readAll(run.output)
            close(run.output)
            return (reap(run.pid), output)
        }
        let sized = onTerminal("stty size; test -t 0 && test -t 1 && echo interactive; exit 4", before: "stty rows 33 cols 111; ")
        #expect(sized.status == 4, "\(sized.output)")
        #expect(sized.output.contains("33 111") && sized.output.contains("interactive"), "\(sized.output)")
        // A process that closes its terminal and runs on is waited for, however long it runs.
        let away = onTerminal("exec </dev/null >/dev/null 2>&1; sleep 11; exit 5")
        #expect(away.status == 5, "\(away.output)")
        let refused = startSilo(box.compute.state, ["process", "create", box.system.id, "--tty", "--", "/bin/true"])
        close(refused.output)
        #expect(reap(refused.pid) == 64, "no terminal here: a usage error")
    }

    @Test("C5 a silo run killed mid-run takes its system with it; reenumerate removes what is left")
    func killedRun() throws {
        let compute = TestCompute()
        defer { compute.finish() }
        let id = "kr-\(getpid())"
        let runner = startSilo(compute.state, ["run", "--id", id, "--", "/bin/sleep", "100"])
        defer { close(runner.output) }
        let cgroup = Cgroup.open(name: compute.service.configuration.cgroupName(for: id), layout: compute.service.configuration.layout)
        _ = eventually(seconds: 60) { cgroup.pids.count >= 2 }
        #expect(cgroup.pids.count == 2, "init and sleep run")
        #expect(compute.service.reenumerate().isEmpty, "a live run is left alone")
        kill(runner.pid, SIGKILL)
        _ = reap(runner.pid)
        #expect(eventually(seconds: 30) { cgroup.pids.isEmpty }, "init died with its runner, and the pid namespace with it")
        #expect(compute.service.reenumerate() == [id])
        #expect(cgroup.directories.values.allSatisfy { !fileExists($0) })
        #expect(!fileExists(compute.service.store.directory(id)))
        #expect(!fileExists(SandboxRun.runLock(systems: compute.service.store.systems, id: id)))
        #expect(compute.service.reenumerate().isEmpty, "a second pass finds nothing")
    }

    @Test("C5 C9 signals ignored by whoever starts silo run are not inherited: init still sees its payload exit, the payload starts with none ignored", .requiresPerl)
    func ignoredSignals() throws {
        let compute = TestCompute()
        defer { compute.finish() }
        let id = "ig-\(getpid())"
        // perl's IGNORE is SIG_IGN, which exec keeps: with SIGCHLD ignored the kernel reaped init's
        // children unseen, and the run never ended.
        let runner = startProgram("/usr/bin/perl", [
            "-e", #"$SIG{CHLD} = $SIG{PIPE} = $SIG{HUP} = "IGNORE"; exec @ARGV or die"#,
            siloExecutable, "--state-dir", compute.state, "run", "--id", id, "--",
            "/bin/sh", "-c", "grep SigIgn /proc/self/status; exit 3",
        ])
        let code = reap(runner.pid)
        let output = readAll(runner.output)
        close(runner.output)
        #expect(code == 3, "the payload's exit code comes back: \(output)")
        #expect(output.contains("SigIgn:\t0000000000000000"), "\(output)")
        #expect(compute.service.reenumerate().isEmpty, "nothing left behind")
    }

    @Test("C6 the death of the last handle's holder terminates the system, which is then gone (its id free); a live holder keeps it")
    func holderKilled() throws {
        let box = try RunningSystem("hk", terminateOnLastHandle: true)
        defer { box.compute.finish() }
        let id = box.system.id
        let holder = startSilo(box.compute.state, ["process", "create", id, "--", "/bin/sleep", "100"])
        defer { close(holder.output) }
        let started = eventually(seconds: 60) {
            (try? box.system.processes())?.contains { $0.commandLine.hasPrefix("/bin/sleep") } ?? false
        }
        #expect(started, "the CLI started its process")
        box.system.close()
        usleep(300_000)  // longer than the agent's look for a lock that is being released
        #expect(box.compute.service.enumerate(id: id).first?.state == .running, "the CLI still holds a handle")
        kill(holder.pid, SIGKILL)
        _ = reap(holder.pid)
        // Every 10 ms as before, for up to 60 s: under software emulation the end comes late.
        let cgroup = Cgroup.open(name: box.compute.service.configuration.cgroupName(for: id), layout: box.compute.service.configuration.layout)
        #expect(eventually(seconds: 60) { cgroup.hasNoProcesses }, "the holder's death ended the system")
        let reason = readText(box.compute.service.store.directory(id) + "/handles") ?? ""
        #expect(reason.hasPrefix("terminated: last handle closed"), "ended on purpose, not a crash: \(reason)")
        // Gone, as HCS releases a system that ended with its last handle: no handle is left to
        // remove it, so the first to see it stopped does (here a list), and its id is free again.
        #expect(box.compute.service.enumerate(id: id).isEmpty)
        #expect(!fileExists(box.compute.service.store.directory(id)), "its runtime folder is removed")
        #expect((#expect(throws: SiloError.self) { _ = try box.compute.service.open(id) })?.code == .systemNotFound)
        #expect(Cgroup.open(name: box.compute.service.configuration.cgroupName(for: id), layout: box.compute.service.configuration.layout).directories.values.allSatisfy { !fileExists($0) })
    }
}
