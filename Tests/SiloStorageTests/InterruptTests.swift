import Glibc
import SiloOperations
import Testing

@testable import SiloStorage

/// Ctrl-C at the `silo` command line: SIGINT sent to the command as the terminal sends it.
@Suite("CLI Ctrl-C", .tags(.root), .requiresLoopDevices, .requiresSiloBinary, .serialized)
struct InterruptTests {
    @Test("S7 Ctrl-C during a zeroed create cancels it: exit 130, rolled back (no record, file or device)")
    func ctrlCCancelsCreate() throws {
        let storage = TestStorage()
        defer { storage.finish() }
        let state = storage.path + "/state"
        let child = spawn(siloBinary, ["--state-dir", state, "lun", "create", "--name", "slow", "--size", "1G",
                                       "--provisioning", "zeroed"])
        // Sent once zeroing is under way: the record is there, and the file has grown.
        let zeroing = waitUntil { zeroingStarted(storage) }
        child.kill(SIGINT)
        let outcome = child.finish()
        #expect(zeroing, "the create never started zeroing")
        #expect(outcome.status == 130, "\(outcome.error)")
        #expect(outcome.error.contains("cancelling: rolling back"), "\(outcome.error)")
        #expect(outcome.error.contains("[operationCancelled]"), "\(outcome.error)")
        #expect(try storage.provider.luns().isEmpty)
        #expect(directoryEntries(storage.provider.configuration.poolDirectory).isEmpty)
        #expect(loopDevices(backedUnder: storage.path).isEmpty)
    }

    @Test("A second Ctrl-C quits at once (130) an operation that cannot end (its attach waits for a lock); reenumerate tidies what it left")
    func secondCtrlCQuits() throws {
        let storage = TestStorage()
        defer { storage.finish() }
        let state = storage.path + "/state"
        // Holding /dev/loop-control's lock, as another attaching process would, stops the create's
        // attach step in its worker thread, where a cancel cannot reach it.
        let control = open("/dev/loop-control", O_RDWR | O_CLOEXEC)
        try #require(control >= 0)
        var held = true
        defer { if held { flock(control, LOCK_UN) }; close(control) }
        #expect(flock(control, LOCK_EX) == 0)
        let child = spawn(siloBinary, ["--state-dir", state, "lun", "create", "--name", "stuck", "--size", "8M",
                                       "--provisioning", "thick"])
        let reserved = waitUntil { (try? storage.provider.luns().isEmpty == false) ?? false }
        usleep(300_000)  // into the attach step's wait
        child.kill(SIGINT)
        usleep(300_000)
        #expect(!hasExited(child.pid), "one Ctrl-C must not quit a cancel still under way")
        child.kill(SIGINT)
        // The lock is still held: only the quit can end the command now.
        let quit = waitUntil { hasExited(child.pid) }
        flock(control, LOCK_UN)
        held = false
        let outcome = child.finish()
        #expect(quit, "a second Ctrl-C left the command waiting")
        #expect(reserved, "the create never reserved its LUN")
        #expect(outcome.status == 130, "\(outcome.error)")
        #expect(outcome.error.contains("cancelling: rolling back... (Ctrl-C again to quit now)"), "\(outcome.error)")
        #expect(outcome.error.contains("quit before the operation ended"), "\(outcome.error)")
        // Quit like a killed run: its record is there, and reenumerate removes it with its file.
        #expect(try storage.provider.luns().map(\.name) == ["stuck"])
        _ = try storage.provider.reenumerate().wait(timeout: .seconds(60))
        #expect(try storage.provider.luns().isEmpty)
        #expect(directoryEntries(storage.provider.configuration.poolDirectory).isEmpty)
        #expect(loopDevices(backedUnder: storage.path).isEmpty)
    }
}

extension InterruptTests {
    @Test("E3 Ctrl-C while a command waits for the registry lock another silo holds gives up at once: exit 130, nothing changed")
    func ctrlCWhileWaitingForLock() throws {
        let storage = TestStorage()
        defer { storage.finish() }
        let state = storage.path + "/state"
        let first = try storage.create("first")
        let lockFile = storage.provider.configuration.lockFile
        let lock = open(lockFile, O_RDWR | O_CLOEXEC)
        try #require(lock >= 0)
        defer { close(lock) }
        #expect(flock(lock, LOCK_EX) == 0)
        let child = spawn(siloBinary, ["--state-dir", state, "lun", "create", "--name", "waiting", "--size", "8M"])
        usleep(300_000)
        #expect(!hasExited(child.pid), "the create waits for the lock")
        child.kill(SIGINT)
        let gaveUp = waitUntil { hasExited(child.pid) }
        flock(lock, LOCK_UN)
        let outcome = child.finish()
        #expect(gaveUp, "Ctrl-C left the command waiting for the lock")
        #expect(outcome.status == 130, "\(outcome.error)")
        #expect(outcome.error.contains("cancelled while waiting for \(lockFile)"), "\(outcome.error)")
        #expect(outcome.error.contains("[operationCancelled]"), "\(outcome.error)")
        #expect(try storage.provider.luns().map(\.name) == ["first"])
        #expect(directoryEntries(storage.provider.configuration.poolDirectory) == [first.backingFile.split(separator: "/").last.map(String.init) ?? ""])
        #expect(loopDevices(backedUnder: storage.path).count == 1)
    }
}
