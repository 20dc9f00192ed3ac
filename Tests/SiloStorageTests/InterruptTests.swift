import Glibc
import SiloOperations
import Testing

@testable import SiloStorage

/// Ctrl-C at the `silo` command line: SIGINT sent to the command as the terminal sends it.
@Suite("CLI Ctrl-C", .tags(.root), .requiresLoopDevices, .requiresSiloBinary, .serialized)
struct InterruptTests {
    /// The last: a SIGHUP right behind a SIGTERM (a service manager's stop) neither replaces it nor
    /// cuts its rollback short.
    @Test("S7 Ctrl-C, SIGTERM or SIGHUP during a zeroed create cancels it: exit 128 + its number (130, 143, 129), rolled back (no record, file or device); with SIGTERM and SIGHUP at once, SIGTERM's",
          arguments: [[SIGINT], [SIGTERM], [SIGHUP], [SIGTERM, SIGHUP]])
    func signalCancelsCreate(signals: [Int32]) throws {
        let storage = TestStorage()
        defer { storage.finish() }
        let state = storage.path + "/state"
        let child = spawn(siloBinary, ["--state-dir", state, "lun", "create", "--name", "slow", "--size", "1G",
                                       "--provisioning", "zeroed"])
        // Sent once zeroing is under way: the record is there, and the file has grown.
        let zeroing = eventually { zeroingStarted(storage) }
        // Two are sent as systemd stops a unit with SendSIGHUP (SIGTERM, SIGHUP, SIGCONT), to a
        // stopped silo: it gets both at once, and the kernel hands it the SIGHUP first.
        var stopped = true
        if signals.count > 1 {
            child.kill(SIGSTOP)
            stopped = eventually { readSmallFile("/proc/\(child.pid)/stat")?.contains(") T ") ?? false }
        }
        for signal in signals { child.kill(signal) }
        if signals.count > 1 { child.kill(SIGCONT) }
        let outcome = child.finish()
        let signal = signals.contains(SIGTERM) ? SIGTERM : signals[0]
        #expect(zeroing, "the create never started zeroing")
        #expect(stopped, "SIGSTOP never stopped silo")
        #expect(outcome.killedBy == 0 && outcome.status == 128 + signal, "killed by \(outcome.killedBy), exit \(outcome.status): \(outcome.error)")
        #expect(outcome.error.contains(signalPrefix(signal) + "cancelling: rolling back"), "\(outcome.error)")
        #expect(!outcome.error.contains("quit before"), "\(outcome.error)")
        #expect(outcome.error.contains("[operationCancelled]"), "\(outcome.error)")
        try expectNothingLeft(storage)
    }

    @Test("A SIGHUP that nohup set to be ignored stays ignored: a zeroed create under nohup finishes")
    func ignoredHangUp() throws {
        let storage = TestStorage()
        defer { storage.finish() }
        let state = storage.path + "/state"
        let child = spawn("/usr/bin/nohup", [siloBinary, "--state-dir", state, "lun", "create", "--name", "kept", "--size", "1G",
                                             "--provisioning", "zeroed"])
        let zeroing = eventually { zeroingStarted(storage) }
        let running = !hasExited(child.pid)
        child.kill(SIGHUP)
        let outcome = child.finish()
        #expect(zeroing && running, "the create was not zeroing when the SIGHUP came")
        #expect(outcome.killedBy == 0 && outcome.status == 0, "killed by \(outcome.killedBy), exit \(outcome.status): \(outcome.error)")
        #expect(try storage.provider.lun(named: "kept").size == 1 << 30)
    }

    @Test("A reader that quits does not kill silo mid-operation: a zeroed create whose progress goes to a closed pipe finishes; JSON to a full disk exits 1")
    func closedOutput() throws {
        let storage = TestStorage()
        defer { storage.finish() }
        let state = storage.path + "/state"
        // Its progress lines on a pipe whose reader is gone at once (SIGPIPE killed silo there, with
        // the LUN half made); bash reports silo's own exit status.
        let piped = run("/bin/bash", ["-c", "\"$0\" --state-dir \"$1\" lun create --name piped --size 1G --provisioning zeroed 2>&1 >/dev/null | true; "
                                          + "echo ${PIPESTATUS[0]}", siloBinary, state])
        #expect(piped.output == "0\n", "silo's exit status: \(piped.output)")
        let lun = try storage.provider.lun(named: "piped")
        #expect(lun.status == .online && lun.allocatedBytes >= 1 << 30, "\(lun)")
        // What it prints cannot be written: an error, exit 1 (a truncated JSON exited 0).
        let full = run("/bin/bash", ["-c", "\"$0\" --state-dir \"$1\" lun list --json > /dev/full 2>&1; echo $?", siloBinary, state])
        #expect(full.output == "1\n", "\(full.output)")
        let said = run("/bin/bash", ["-c", "\"$0\" --state-dir \"$1\" lun list --json 2>&1 >/dev/full", siloBinary, state])
        #expect(said.output.contains("Error: cannot write standard output: No space left on device"), "\(said.output)")
        // A reader that quits early ends silo as it ends other tools (SIGPIPE), not with an error.
        for index in 0..<40 { _ = try storage.provider.createLun(LunSpec(name: "n\(index)", size: 1 << 20)).wait(timeout: .seconds(30)) }
        let head = run("/bin/bash", ["-c", "\"$0\" --state-dir \"$1\" lun list --json 2>&1 | head -c 1 >/dev/null; echo ${PIPESTATUS[0]}", siloBinary, state])
        #expect(head.output == "0\n" || head.output == "141\n", "\(head.output)")
    }

    @Test("A second Ctrl-C or SIGTERM quits at once (130, 143) an operation that cannot end (its attach waits for a lock), and a SIGHUP meanwhile does not; reenumerate tidies what it left",
          arguments: [SIGINT, SIGTERM])
    func secondSignalQuits(signal: Int32) throws {
        let storage = TestStorage()
        defer { storage.finish() }
        let state = storage.path + "/state"
        // Holding /dev/loop-control's lock, as another attaching process would, stops the create's
        // attach step in its worker thread, where a cancel cannot reach it.
        let control = try HeldLock("/dev/loop-control")
        defer { control.release() }
        let child = spawn(siloBinary, ["--state-dir", state, "lun", "create", "--name", "stuck", "--size", "8M",
                                       "--provisioning", "thick"])
        let reserved = eventually { (try? storage.provider.luns().isEmpty == false) ?? false }
        let attaching = eventually { waitsForFlock(child.pid) || hasExited(child.pid) }  // the attach step's wait
        child.kill(signal)
        // The second is sent once the first has been taken: two pending are one.
        let said = child.waitForError(containing: signalPrefix(signal) + "cancelling: rolling back")
        child.kill(SIGHUP)  // a hang-up once a cancel is under way does not cut it short
        usleep(300_000)
        #expect(!hasExited(child.pid), "one signal, or a SIGHUP after it, must not quit a cancel still under way")
        child.kill(signal)
        // The lock is still held: only the quit can end the command now.
        let quit = eventually { hasExited(child.pid) }
        control.release()
        let outcome = child.finish()
        #expect(attaching, "the create never waited for /dev/loop-control's lock")
        #expect(said && quit, "a second signal left the command waiting")
        #expect(reserved, "the create never reserved its LUN")
        #expect(outcome.killedBy == 0 && outcome.status == 128 + signal, "killed by \(outcome.killedBy): \(outcome.error)")
        let again = signal == SIGINT ? "Ctrl-C again to quit now" : "again, or Ctrl-C, to quit now"
        #expect(outcome.error.contains(signalPrefix(signal) + "cancelling: rolling back... (\(again))"), "\(outcome.error)")
        #expect(outcome.error.contains("quit before the operation ended"), "\(outcome.error)")
        // Quit like a killed run: its record is there, and reenumerate removes it with its file.
        #expect(try storage.provider.luns().map(\.name) == ["stuck"])
        _ = try storage.provider.reenumerate().wait(timeout: .seconds(60))
        try expectNothingLeft(storage)
    }
}

/// What silo's cancel message starts with for `signal`: nothing for Ctrl-C, else its name.
private func signalPrefix(_ signal: Int32) -> String {
    signal == SIGTERM ? "SIGTERM: " : signal == SIGHUP ? "SIGHUP: " : ""
}

extension InterruptTests {
    /// SIGTERM is kept, like Ctrl-C, only by a command that starts an operation: pool add, a quick
    /// change with no operation to wait for, dies of it as of its default action.
    @Test("E3 Ctrl-C while a command waits for the registry lock another silo holds gives up at once (130), and so does a SIGTERM while an operation's command waits (143); nothing changed",
          arguments: [SIGINT, SIGTERM])
    func signalWhileWaitingForLock(signal: Int32) throws {
        let storage = TestStorage()
        defer { storage.finish() }
        let state = storage.path + "/state"
        let first = try storage.create("first")
        let lockFile = storage.provider.configuration.lockFile
        let lock = open(lockFile, O_RDWR | O_CLOEXEC)
        try #require(lock >= 0)
        defer { close(lock) }
        let side = storage.path + "/side"
        mkdir(side, 0o755)
        let commands = [(["lun", "create", "--name", "waiting", "--size", "8M"], true), (["storage", "reenumerate"], true), (["pool", "add", "side", side], false)]
        for (command, operation) in commands {
            #expect(flock(lock, LOCK_EX) == 0)
            let child = spawn(siloBinary, ["--state-dir", state] + command)
            // Once silo blocks SIGINT and has the lock file open, it is in (or just before) its
            // wait, where the signal is taken: one that comes sooner is taken there too.
            #expect(eventually { (blocks(child.pid, SIGINT) && hasOpen(child.pid, lockFile)) || hasExited(child.pid) }, "silo never opened the lock with SIGINT blocked")
            #expect(!hasExited(child.pid), "\(command[0]) \(command[1]) waits for the lock")
            child.kill(signal)
            let ended = eventually { hasExited(child.pid) }
            flock(lock, LOCK_UN)
            let outcome = child.finish()
            #expect(ended, "signal \(signal) left \(command[0]) \(command[1]) waiting for the lock")
            if signal == SIGTERM && !operation {
                #expect(outcome.killedBy == SIGTERM, "exit \(outcome.status): \(outcome.error)")
            } else {
                #expect(outcome.killedBy == 0 && outcome.status == 128 + signal, "killed by \(outcome.killedBy), exit \(outcome.status): \(outcome.error)")
                #expect(outcome.error.contains("cancelled while waiting for \(lockFile)"), "\(outcome.error)")
                #expect(outcome.error.contains("[operationCancelled]"), "\(outcome.error)")
            }
        }
        #expect(try storage.provider.pools().map(\.name) == ["default"], "no pool added")
        #expect(try storage.provider.luns().map(\.name) == ["first"])
        #expect(directoryEntries(storage.provider.configuration.poolDirectory) == [first.backingFile.split(separator: "/").last.map(String.init) ?? ""])
        #expect(loopDevices(backedUnder: storage.path).count == 1)
    }
}

extension InterruptTests {
    @Test("S15 silo killed while mkfs makes its LUN's file system: mkfs goes with it, and one reenumerate leaves no LUN, file, device or link")
    func killedDuringMkfs() throws {
        let storage = TestStorage()
        defer { storage.finish() }
        let state = storage.path + "/state"
        let (child, mkfs) = startFileSystemCreate(state)
        // Held where it is, so that silo dies while it runs (a stopped process still dies of SIGKILL).
        if let mkfs { kill(mkfs, SIGSTOP) }
        child.kill(SIGKILL)
        _ = child.finish()
        let pid = try #require(mkfs, "mkfs never ran under silo (the create ended first)")
        let gone = eventually {
            let stat = readSmallFile("/proc/\(pid)/stat") ?? ""
            return stat.isEmpty || stat.contains(") Z ")
        }
        if !gone { kill(pid, SIGKILL) }
        #expect(gone, "mkfs outlived the silo that started it")
        let report = try storage.provider.reenumerate().wait(timeout: .seconds(60))
        #expect(report.rolledBack == ["fs"], "\(report)")
        #expect(report.drift.isEmpty, "\(report.drift)")
        try expectNothingLeft(storage)
    }
}

extension InterruptTests {
    @Test("A service manager's SIGTERM that reaches mkfs too (systemd signals the whole cgroup) ends the create as a cancel: exit 143, rolled back, mkfs's failure named")
    func stopReachesMkfs() throws {
        let storage = TestStorage()
        defer { storage.finish() }
        let state = storage.path + "/state"
        let (child, mkfs) = startFileSystemCreate(state)
        // mkfs first: its failure usually reaches the operation before the wait takes silo's own.
        if let mkfs { kill(mkfs, SIGTERM) }
        child.kill(SIGTERM)
        let outcome = child.finish()
        try #require(mkfs != nil, "mkfs never ran under silo (the create ended first)")
        #expect(outcome.killedBy == 0 && outcome.status == 143, "killed by \(outcome.killedBy), exit \(outcome.status): \(outcome.error)")
        #expect(outcome.error.contains("SIGTERM"), "\(outcome.error)")
        #expect(outcome.error.contains("[operationCancelled]"), "\(outcome.error)")
        try expectNothingLeft(storage)
    }
}

/// Starts `silo lun create fs` with an XFS file system large enough for mkfs to take a while, and
/// finds that mkfs once it runs (nil if the create ended first). mkfs is the child of the thread
/// that runs the create's operation, not of the main one.
private func startFileSystemCreate(_ state: String) -> (Child, pid_t?) {
    let child = spawn(siloBinary, ["--state-dir", state, "lun", "create", "--name", "fs", "--size", "64G", "--filesystem", "xfs"])
    var mkfs: pid_t?
    let deadline = ContinuousClock.now + .seconds(60)
    while mkfs == nil && !hasExited(child.pid) && ContinuousClock.now < deadline {
        let children = directoryEntries("/proc/\(child.pid)/task").map { readSmallFile("/proc/\(child.pid)/task/\($0)/children") ?? "" }
        mkfs = children.flatMap { $0.split(separator: " ") }.compactMap { pid_t($0) }.first {
            readSmallFile("/proc/\($0)/comm")?.hasPrefix("mkfs") == true
        }
        if mkfs == nil { usleep(200) }
    }
    return (child, mkfs)
}

/// What a rolled-back create, or a reenumerate after a killed one, must leave: no LUN, backing
/// file, loop device or stable name.
private func expectNothingLeft(_ storage: TestStorage, sourceLocation: SourceLocation = #_sourceLocation) throws {
    let configuration = storage.provider.configuration
    #expect(try storage.provider.luns().isEmpty, sourceLocation: sourceLocation)
    #expect(directoryEntries(configuration.poolDirectory).isEmpty, sourceLocation: sourceLocation)
    #expect(loopDevices(backedUnder: storage.path).isEmpty, sourceLocation: sourceLocation)
    #expect(directoryEntries(configuration.linkDirectory).isEmpty, sourceLocation: sourceLocation)
}

/// An exclusive flock held on `path` until released, as another process's would be.
private final class HeldLock {
    private let fd: Int32
    private var held = true

    init(_ path: String) throws {
        fd = open(path, O_RDWR | O_CLOEXEC)
        try #require(fd >= 0)
        #expect(flock(fd, LOCK_EX) == 0)
    }

    func release() {
        if held { flock(fd, LOCK_UN); close(fd) }
        held = false
    }
}

extension InterruptTests {
    @Test("A SIGTERM during an operation that cannot be cancelled (reenumerate re-attaching a LUN) lets it finish, then ends silo: the LUN is attached, and silo dies of the SIGTERM")
    func stopDuringUncancellable() throws {
        let storage = TestStorage()
        defer { storage.finish() }
        let state = storage.path + "/state"
        _ = try storage.create("back")
        // Its device gone behind Silo's back: reenumerate attaches it again, and waits for
        // /dev/loop-control's lock, held here, to do so.
        for device in loopDevices(backedUnder: storage.path) { _ = try device.detach() }
        #expect(loopDevices(backedUnder: storage.path).isEmpty)
        let control = try HeldLock("/dev/loop-control")
        defer { control.release() }
        let child = spawn(siloBinary, ["--state-dir", state, "storage", "reenumerate"])
        let attaching = eventually { waitsForFlock(child.pid) || hasExited(child.pid) }
        child.kill(SIGTERM)
        let said = child.waitForError(containing: "SIGTERM: finishing: too far along to cancel")
        #expect(!hasExited(child.pid), "reenumerate ended before it finished")
        control.release()
        let outcome = child.finish()
        #expect(attaching, "reenumerate never waited for /dev/loop-control's lock")
        #expect(said, "\(outcome.error)")
        #expect(outcome.killedBy == SIGTERM, "killed by \(outcome.killedBy), exit \(outcome.status): \(outcome.error)")
        #expect(try storage.provider.lun(named: "back").status == .online)
        #expect(loopDevices(backedUnder: storage.path).count == 1)
    }
}
