import Dispatch
import Glibc
import SiloOperations
import Synchronization
import Testing

@testable import SiloCompute

/// A compute service on a fresh runtime folder; `finish()` terminates and removes what is left.
struct TestCompute {
    let state: String
    let service: ComputeService

    init(scheduler: OperationScheduler = .shared) {
        var template = Array("/tmp/silo-sys-XXXXXX".utf8CString)
        state = template.withUnsafeMutableBufferPointer { $0.baseAddress.flatMap { mkdtemp($0) } }.map { String(cString: $0) } ?? "/tmp/silo-sys"
        service = ComputeService(configuration: ComputeConfiguration(stateDirectory: state), scheduler: scheduler)
    }

    func finish(sourceLocation: SourceLocation = #_sourceLocation) {
        for id in service.store.ids() {
            if let system = try? service.open(id) {
                _ = try? system.terminate().wait(timeout: .seconds(30))
                system.close()
            }
            service.store.remove(id)
        }
        rmdir(service.configuration.runtimeDirectory + "/systems")
        rmdir(service.configuration.runtimeDirectory)
        rmdir(state)
    }

    /// A new system `id`, opened through a service of this runtime folder that looks for Silo's
    /// init at `initBinary`.
    func created(_ id: String, initBinary: String) throws -> ComputeSystem {
        _ = try service.createComputeSystem(id: id, document: document()).wait(timeout: .seconds(30)).close()
        return try ComputeService(configuration: ComputeConfiguration(stateDirectory: state, initBinary: initBinary)).open(id)
    }

    /// A start of `system` that failed left it as it was: Created, nothing in its cgroup, no agent
    /// socket, no root folder.
    func expectNotStarted(_ system: ComputeSystem, sourceLocation: SourceLocation = #_sourceLocation) throws {
        #expect(try system.properties().state == .created, sourceLocation: sourceLocation)
        #expect(system.cgroup.pids.isEmpty, "nothing in its cgroup", sourceLocation: sourceLocation)
        #expect(access(service.store.directory(system.id) + "/agent.sock", F_OK) != 0, sourceLocation: sourceLocation)
        #expect(access(service.store.root(system.id), F_OK) != 0, "no root folder", sourceLocation: sourceLocation)
    }

    func document(owner: String = "tests", terminateOnLastHandle: Bool = false, memoryMB: Int = 128) -> String {
        """
        {"SchemaVersion": {"Major": 2, "Minor": 1}, "Owner": "\(owner)",
         "VirtualMachine": {"Chipset": {"Uefi": {}}, "ComputeTopology": {"Memory": {"SizeInMB": \(memoryMB)}, "Processor": {"Count": 1}}},
         "ShouldTerminateOnLastHandleClosed": \(terminateOnLastHandle)}
        """
    }
}

/// Polls `condition` until it holds or `seconds` pass; whether it held. The default is generous
/// for CI under software emulation: it only costs time when the condition never holds.
func eventually(seconds: Double = 60, _ condition: () throws -> Bool) rethrows -> Bool {
    let deadline = ContinuousClock.now + .milliseconds(Int(seconds * 1000))
    while ContinuousClock.now < deadline {
        if try condition() { return true }
        usleep(2000)
    }
    return try condition()
}

/// How many times `pid` gave up the CPU of its own accord (each followed by a wake-up).
func voluntarySwitches(_ pid: Int32) -> Int {
    let line = (readText("/proc/\(pid)/status") ?? "").split(separator: "\n").first { $0.hasPrefix("voluntary_ctxt_switches:") }
    return line.flatMap { $0.split(whereSeparator: { $0 == " " || $0 == "\t" }).last }.flatMap { Int($0) } ?? 0
}

/// Shared flocks held on `path`, as /proc/locks lists them ("1: FLOCK  ADVISORY  READ 1234
/// fd:00:5678 0 EOF"; a waiter's line has "->" in second place and is not counted).
func sharedFlocks(on path: String) -> Int {
    var info = stat()
    guard stat(path, &info) == 0, let locks = readText("/proc/locks") else { return 0 }
    return locks.split(separator: "\n").filter { line in
        let fields = line.split(separator: " ")
        return fields.count >= 6 && fields[1] == "FLOCK" && fields[3] == "READ" && fields[5].split(separator: ":").last == "\(info.st_ino)"
    }.count
}

@Suite("Compute systems", .tags(.root), .requiresCgroups, .serialized)
struct SystemTests {
    @Test("C5 a terminate that fails (its cgroup kept) leaves the exit to be reported: the handle hears SystemExited once, when it reads its agent's end")
    func failedStopStillReports() throws {
        let box = try RunningSystem("fs")
        defer { box.finish() }
        let blocker = try #require(Set(box.system.cgroup.directories.values).sorted().first) + "/blocker"
        defer { rmdir(blocker) }
        try #require(mkdir(blocker, 0o755) == 0, "a child cgroup keeps the system's from being removed: errno \(errno)")
        let failed = #expect(throws: SiloError.self) { try box.system.terminate().wait(timeout: .seconds(30)) }
        #expect(failed?.code == .deviceInUse, "\(String(describing: failed))")
        #expect(rmdir(blocker) == 0)
        // No handler, no waiter: nothing has read this handle's connection; its end is unseen.
        try #require(!box.system.connectionEnded)
        let heard = Mutex<[String]>([])
        try box.system.events.setHandler { event in  // starts the reader: it sees the end now
            if event.type == .systemExited { heard.withLock { $0.append(event.data ?? "") } }
        }
        #expect(eventually { !heard.withLock { $0.isEmpty } }, "the handle whose terminate failed never heard the exit")
        #expect(box.compute.service.enumerate(id: box.system.id).first?.state == .stopped)
        #expect(heard.withLock { $0.count } == 1)
    }

    @Test("C5 a terminate that fails while a reader watches the connection: the handle still hears SystemExited once the system has ended")
    func failedStopWithReaderStillReports() throws {
        let box = try RunningSystem("fr")
        defer { box.finish() }
        let heard = Mutex<[String]>([])
        try box.system.events.setHandler { event in
            if event.type == .systemExited { heard.withLock { $0.append(event.data ?? "") } }
        }
        let blocker = try #require(Set(box.system.cgroup.directories.values).sorted().first) + "/blocker"
        defer { rmdir(blocker) }
        try #require(mkdir(blocker, 0o755) == 0)
        #expect(throws: SiloError.self) { try box.system.terminate().wait(timeout: .seconds(30)) }
        #expect(rmdir(blocker) == 0)
        #expect(eventually { box.system.connectionEnded }, "the reader saw init go")
        // The reader saw init's end while the stop still held the system's lock: it must ask
        // whether this handle reported after that lock, when the failed stop has taken its claim back.
        #expect(eventually { !heard.withLock { $0.isEmpty } }, "the handle never heard SystemExited")
    }

    @Test("C4 two starts at once start one init, and the other is refused; two terminates at once stop it once")
    func concurrentTransitions() throws {
        // One worker, held while both starts are called: both pass the check at the call (neither
        // has run), and the state is checked again under the system's lock when each runs.
        let scheduler = OperationScheduler(limits: .init(maxRunning: 1))
        let compute = TestCompute(scheduler: scheduler)
        defer { compute.finish() }
        let system = try compute.service.createComputeSystem(id: "twice-\(getpid())", document: compute.document()).wait(timeout: .seconds(30))
        defer { system.close() }
        let gate = DispatchSemaphore(value: 0)
        let blocker = try scheduler.run(.start) { _ in gate.wait() }
        let first: SiloOperation<Void>, second: SiloOperation<Void>
        do {
            defer { gate.signal() }
            first = try system.start()
            second = try system.start()  // not refused at the call: the first has not run yet
        }
        _ = try? blocker.wait(timeout: .seconds(30))
        var outcomes: [SiloError.Code?] = []
        for operation in [first, second] {
            do { try operation.wait(timeout: .seconds(30)); outcomes.append(nil) } catch { outcomes.append(error.code) }
        }
        #expect(outcomes.filter { $0 == nil }.count == 1, "exactly one start started it: \(outcomes)")
        #expect(outcomes.contains(.invalidState), "the other was refused by its operation: \(outcomes)")
        #expect(system.cgroup.pids.count == 1, "one init: \(system.cgroup.pids)")
        let check = try system.createProcess(ProcessParameters(arguments: ["/bin/true"])).wait(timeout: .seconds(30))
        #expect(try check.wait(timeout: .seconds(10)).exitCode == 0, "the agent the record names answers")
        check.close()

        let stopped = Mutex<[String]>([])
        try system.events.setHandler { event in if event.type == .systemExited { stopped.withLock { $0.append(event.data ?? "") } } }
        // The second is refused at the call, or by its operation once the first has stopped it.
        var codes: [SiloError.Code?] = []
        var terminates: [SiloOperation<Void>] = []
        for _ in 0..<2 {
            do { terminates.append(try system.terminate()) } catch { codes.append(error.code) }
        }
        for operation in terminates {
            do { try operation.wait(timeout: .seconds(30)); codes.append(nil) } catch { codes.append(error.code) }
        }
        #expect(codes.filter { $0 == nil }.count == 1 && codes.contains(.systemAlreadyStopped), "\(codes)")
        // The event comes from the reader, maybe after the terminate returns: wait for the first,
        // then give a wrongly doubled one a moment to arrive before counting.
        #expect(eventually { !stopped.withLock { $0.isEmpty } }, "no SystemExited")
        usleep(500_000)
        #expect(stopped.withLock { $0.count } == 1, "one SystemExited: \(stopped.withLock { $0 })")
    }

    @Test("C12 one device at one SCSI location: a second attach there is refused, naming ResourcePath, and changes nothing")
    func oneDevicePerLocation() throws {
        let box = try RunningSystem("loc")
        defer { box.finish() }
        var devices: [String] = []
        func output(_ program: String, _ arguments: [String]) -> String {
            let started = startProgram(program, arguments)
            let text = readAll(started.output)
            close(started.output)
            _ = reap(started.pid)
            return text.filter { !$0.isWhitespace }
        }
        defer {
            devices.forEach { _ = output("/sbin/losetup", ["-d", $0]) }
            for index in 0..<2 { unlink(box.compute.state + "/disk\(index)") }
        }
        for index in 0..<2 {
            let file = box.compute.state + "/disk\(index)"
            let fd = open(file, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
            ftruncate(fd, 4 << 20)
            close(fd)
            let device = output("/sbin/losetup", ["-f", "--show", file])
            try #require(device.hasPrefix("/dev/loop"), "losetup: \(device)")
            devices.append(device)
        }
        func blockDevice(_ path: String, _ lun: String) -> BlockDevice {
            BlockDevice(devicePath: path, deviceNumber: readText("/sys/block/\(path.dropFirst(5))/dev") ?? "", lun: lun, location: "0/1")
        }
        try box.system.attach(blockDevice(devices[0], "first")).wait(timeout: .seconds(30))
        let refused = #expect(throws: SiloError.self) { try box.system.attach(blockDevice(devices[1], "second")).wait(timeout: .seconds(30)) }
        #expect(refused?.code == .invalidArgument && refused?.field == "ResourcePath", "\(String(describing: refused))")
        #expect(try box.system.properties().attachments.map(\.lun) == ["first"])
        try box.system.detach(lun: "first").wait(timeout: .seconds(30))
    }

    @Test("C12 O8 an attach cancelled while queued gives back the copy of the LUN's lease it made")
    func queuedAttachKeepsNoLease() throws {
        let scheduler = OperationScheduler(limits: .init(maxRunning: 1))
        let compute = TestCompute()
        defer { compute.finish() }
        let service = ComputeService(configuration: compute.service.configuration, scheduler: scheduler)
        let system = try service.createComputeSystem(id: "qa-\(getpid())", document: compute.document()).wait(timeout: .seconds(30))
        defer { system.close() }
        try system.start().wait(timeout: .seconds(30))
        let file = compute.state + "/lease"
        let lease = open(file, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        #expect(flock(lease, LOCK_SH) == 0)
        let gate = DispatchSemaphore(value: 0)
        let blocker = try scheduler.run(.modify) { _ in gate.wait() }
        let device = BlockDevice(devicePath: "/dev/loop-nothing", deviceNumber: "7:250", lun: "nothing", leaseDescriptor: lease)
        let attach = try system.attach(device)
        try attach.cancel()  // still queued: withdrawn
        gate.signal()
        _ = try? blocker.wait(timeout: .seconds(30))
        #expect((#expect(throws: SiloError.self) { try attach.wait(timeout: .seconds(10)) })?.code == .operationCancelled)
        close(lease)
        let probe = open(file, O_RDWR | O_CLOEXEC)
        defer { close(probe) }
        #expect(flock(probe, LOCK_EX | LOCK_NB) == 0, "a copy of the lease is still open in this process")
        unlink(file)
    }

    @Test("C12 an attach refused at the call gives back the copy of the LUN's lease it made")
    func refusedAttachKeepsNoLease() throws {
        let box = try RunningSystem("lease-copy")
        defer { box.finish() }
        let file = box.compute.state + "/lease"
        let lease = open(file, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        #expect(flock(lease, LOCK_SH) == 0)
        try box.system.pause().wait(timeout: .seconds(30))
        let device = BlockDevice(devicePath: "/dev/loop-nothing", deviceNumber: "7:250", lun: "nothing", leaseDescriptor: lease)
        let refused = #expect(throws: SiloError.self) { _ = try box.system.attach(device) }
        #expect(refused?.code == .invalidState)
        close(lease)
        let probe = open(file, O_RDWR | O_CLOEXEC)
        defer { close(probe) }
        #expect(flock(probe, LOCK_EX | LOCK_NB) == 0, "a copy of the lease is still open in this process")
        unlink(file)
        try box.system.resume().wait(timeout: .seconds(30))
    }

    @Test("C1 C3 the seeds' empty-VM document creates a system; ids are unique; unknown ids are not found")
    func createAndOpen() throws {
        let compute = TestCompute()
        defer { compute.finish() }
        let system = try compute.service.createComputeSystem(id: "vm-\(getpid())", document: fixture("empty-vm.json")).wait(timeout: .seconds(30))
        defer { system.close() }
        let properties = try system.properties()
        #expect(properties.state == .created)
        #expect(properties.owner == "Sample")
        #expect(properties.memoryLimitBytes == 1024 << 20)
        #expect(properties.ignoredFields.contains("VirtualMachine.Chipset"))
        let duplicate = #expect(throws: SiloError.self) {
            _ = try compute.service.createComputeSystem(id: "vm-\(getpid())", document: compute.document())
        }
        #expect(duplicate?.code == .systemAlreadyExists)
        #expect((#expect(throws: SiloError.self) { _ = try compute.service.open("nothing-here") })?.code == .systemNotFound)
        #expect((#expect(throws: SiloError.self) {
            _ = try compute.service.createComputeSystem(id: "bad-doc", document: "{")
        })?.code == .invalidJSON)
        #expect(compute.service.store.ids() == ["vm-\(getpid())"], "a refused create leaves nothing")
    }

    @Test("C4 a start without Silo's init is refused at once, naming the path: the system stays Created, with no process, socket or root made")
    func startWithoutInit() throws {
        let compute = TestCompute()
        defer { compute.finish() }
        let missing = compute.state + "/no-such-folder/silo-init"
        let system = try compute.created("noinit-\(getpid())", initBinary: missing)
        defer { system.close() }
        let error = #expect(throws: SiloError.self) { _ = try system.start().wait(timeout: .seconds(30)) }
        #expect(error?.code == .objectNotFound)
        #expect(error?.field == "init" && error?.value == missing)
        try compute.expectNotStarted(system)
        // A system that runs is refused for its state, as ever, whatever this caller's init.
        let running = try compute.service.open(system.id)
        defer { running.close() }
        _ = try running.start().wait(timeout: .seconds(30))
        #expect((#expect(throws: SiloError.self) { _ = try system.start().wait(timeout: .seconds(30)) })?.code == .invalidState)
    }

    @Test("C4 a start whose init cannot run rolls back: still Created, no process, no socket, no root folder; a folder is no init")
    func startWhoseInitFails() throws {
        let compute = TestCompute()
        defer { compute.finish() }
        let empty = compute.state + "/empty-init"  // executable, but no program: its exec fails (ENOEXEC)
        let fd = open(empty, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o755)
        try #require(fd >= 0)
        close(fd)
        defer { unlink(empty) }
        let system = try compute.created("badinit-\(getpid())", initBinary: empty)
        defer { system.close() }
        let failed = #expect(throws: SiloError.self) { _ = try system.start().wait(timeout: .seconds(30)) }
        #expect(failed?.errno == ENOEXEC, "the start got as far as init's exec: \(String(describing: failed))")
        try compute.expectNotStarted(system)
        let folder = ComputeService(configuration: ComputeConfiguration(stateDirectory: compute.state, initBinary: compute.state))
        let again = try folder.open(system.id)
        defer { again.close() }
        let error = #expect(throws: SiloError.self) { _ = try again.start().wait(timeout: .seconds(30)) }
        #expect(error?.code == .objectNotFound && error?.field == "init", "a folder is not an init")
        #expect(error?.message.contains("is not a file at \(compute.state)") == true, "\(String(describing: error?.message))")
    }

    @Test("C3 C5 two state directories may each have a system of the same id: each runs in a cgroup of its own, and one's stop leaves the other's")
    func sameIdInTwoStateDirectories() throws {
        let first = try RunningSystem("twin")
        defer { first.finish() }
        let second = TestCompute()
        defer { second.finish() }
        let id = first.system.id
        #expect(first.compute.service.configuration.cgroupName(for: id) != second.service.configuration.cgroupName(for: id))
        #expect(ComputeConfiguration(runtimeDirectory: "/run/silo").cgroupName(for: id) == id, "the default folder's are the ids")
        let twin = try second.service.createComputeSystem(id: id, document: second.document()).wait(timeout: .seconds(30))
        defer { twin.close() }
        try twin.start().wait(timeout: .seconds(30))
        #expect(first.system.cgroup.pids.count == 1 && twin.cgroup.pids.count == 1, "one init in each")
        #expect(Set(first.system.cgroup.directories.values).isDisjoint(with: twin.cgroup.directories.values))
        try twin.terminate().wait(timeout: .seconds(30))
        #expect(twin.cgroup.directories.values.allSatisfy { !fileExists($0) })
        #expect(try first.system.properties().state == .running && first.system.cgroup.pids.count == 1, "the first's still runs")
        let check = try first.system.createProcess(ProcessParameters(arguments: ["/bin/true"])).wait(timeout: .seconds(30))
        #expect(try check.wait(timeout: .seconds(10)).exitCode == 0)
        check.close()
    }

    @Test("C4 states: Created, start, Running, pause, Paused, resume, Running, terminate, Stopped; other moves refused")
    func stateMachine() throws {
        let compute = TestCompute()
        defer { compute.finish() }
        let system = try compute.service.createComputeSystem(id: "sm-\(getpid())", document: compute.document()).wait(timeout: .seconds(30))
        defer { system.close() }
        #expect((#expect(throws: SiloError.self) { _ = try system.pause() })?.code == .invalidState)
        #expect((#expect(throws: SiloError.self) { _ = try system.resume() })?.code == .invalidState)
        try system.start().wait(timeout: .seconds(30))
        #expect(try system.properties().state == .running)
        #expect((#expect(throws: SiloError.self) { _ = try system.start() })?.code == .invalidState)
        #expect((#expect(throws: SiloError.self) { _ = try system.resume() })?.code == .invalidState)
        try system.pause().wait(timeout: .seconds(30))
        #expect(try system.properties().state == .paused)
        #expect(system.cgroup.isFrozen)
        try system.resume().wait(timeout: .seconds(30))
        #expect(try system.properties().state == .running)
        try system.pause().wait(timeout: .seconds(30))
        #expect((#expect(throws: SiloError.self) { _ = try system.pause() })?.code == .invalidState)
        #expect((#expect(throws: SiloError.self) { _ = try system.start() })?.code == .invalidState)
        try system.terminate().wait(timeout: .seconds(30))  // terminate works while paused
        let stopped = try system.properties()
        #expect(stopped.state == .stopped)
        #expect(stopped.exitType == .forced)
        #expect((#expect(throws: SiloError.self) { _ = try system.terminate() })?.code == .systemAlreadyStopped)
        #expect((#expect(throws: SiloError.self) { _ = try system.shutdown() })?.code == .systemAlreadyStopped)
        #expect((#expect(throws: SiloError.self) { _ = try system.start() })?.code == .invalidState)
        #expect((#expect(throws: SiloError.self) { _ = try system.pause() })?.code == .invalidState)
        #expect((#expect(throws: SiloError.self) { _ = try system.resume() })?.code == .invalidState)
    }

    @Test("C4 C13 a system left frozen while its record says Running (a pause killed between its freeze and its record) is thawed by reenumerate, and answers again")
    func reenumerateThawsFrozenRunning() throws {
        let box = try RunningSystem("fr")
        defer { box.finish() }
        try box.system.cgroup.freeze()  // what the killed pause did before it could save Paused
        #expect(try box.system.properties().state == .running)
        #expect(box.compute.service.reenumerate() == [box.system.id])
        #expect(!box.system.cgroup.freezeRequested && !box.system.cgroup.isFrozen)
        let check = try box.system.createProcess(ProcessParameters(arguments: ["/bin/true"])).wait(timeout: .seconds(30))
        #expect(try check.wait(timeout: .seconds(10)).exitCode == 0)
        check.close()
        #expect(box.compute.service.reenumerate().isEmpty, "a second pass finds nothing")
    }

    @Test("C3 a run of a running system's id, beside the lock a killed run of that id left, is refused and the system runs on")
    func runBesideDeadRunLock() throws {
        let box = try RunningSystem("rl")
        defer { box.finish() }
        let service = box.compute.service
        // A `silo run --id rl-...` killed between its lock and its reservation left this behind.
        let lockPath = SandboxRun.runLock(systems: service.store.systems, id: box.system.id)
        let fd = open(lockPath, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        try #require(fd >= 0)
        close(fd)
        defer { unlink(lockPath) }
        let refused = #expect(throws: SiloError.self) {
            _ = try SandboxRun.run(id: box.system.id, limits: CgroupLimits(), arguments: ["/bin/true"], configuration: service.configuration)
        }
        #expect(refused?.code == .systemAlreadyExists, "\(String(describing: refused))")
        #expect(try box.system.properties().state == .running)
        let check = try box.system.createProcess(ProcessParameters(arguments: ["/bin/true"])).wait(timeout: .seconds(30))
        #expect(try check.wait(timeout: .seconds(10)).exitCode == 0, "the system's cgroup and init are untouched")
        check.close()
    }

    @Test("C4 a paused system can be opened and closed any number of times (its frozen agent takes no connection) and is then resumed and terminated", .timeLimit(.minutes(2)))
    func pausedOpenedOften() throws {
        let compute = TestCompute()
        defer { compute.finish() }
        let system = try compute.service.createComputeSystem(id: "po-\(getpid())", document: compute.document()).wait(timeout: .seconds(30))
        defer { system.close() }
        try system.start().wait(timeout: .seconds(30))
        try system.pause().wait(timeout: .seconds(30))
        // Each open queues a connection the frozen agent does not take (its queue holds 64): on a
        // thread, so that an open that blocks fails the test instead of hanging it.
        let opened = DispatchSemaphore(value: 0)
        let service = compute.service
        let id = system.id
        let opens = Atomic<Int>(0)
        try #require(PlatformThread.spawn {
            for _ in 0..<80 {
                guard let handle = try? service.open(id) else { break }
                handle.close()
                opens.add(1, ordering: .relaxed)
            }
            opened.signal()
        })
        #expect(opened.wait(timeout: .now() + 60) == .success, "an open of the paused system blocked after \(opens.load(ordering: .relaxed))")
        #expect(opens.load(ordering: .relaxed) == 80)
        try system.resume().wait(timeout: .seconds(30))
        let check = try system.createProcess(ProcessParameters(arguments: ["/bin/true"])).wait(timeout: .seconds(30))
        #expect(try check.wait(timeout: .seconds(10)).exitCode == 0)
        check.close()
        try system.terminate().wait(timeout: .seconds(30))
        #expect(try system.properties().state == .stopped)
        #expect(system.cgroup.pids.isEmpty, "nothing left in its cgroup: \(system.cgroup.pids)")
    }

    @Test("C4 a pause or resume whose record cannot be written (the runtime folder full) fails with the system as it was: not left frozen, nor thawed")
    func pauseUnsaved() throws {
        let compute = TestCompute()
        defer { compute.finish() }
        let runtime = compute.service.configuration.runtimeDirectory
        mkdir(runtime, 0o755)
        try #require(mount("tmpfs", runtime, "tmpfs", 0, "size=1m") == 0, "tmpfs: errno \(errno)")
        defer { umount2(runtime, Int32(MNT_DETACH)) }  // registered first, so it runs last, even if the create throws
        let system = try compute.service.createComputeSystem(id: "pu-\(getpid())", document: compute.document()).wait(timeout: .seconds(30))
        defer {
            _ = try? system.terminate().wait(timeout: .seconds(30))
            system.close()
            compute.service.store.remove(system.id)
        }
        try system.start().wait(timeout: .seconds(30))
        let filler = runtime + "/filler"
        let fd = open(filler, O_WRONLY | O_CREAT | O_CLOEXEC, 0o600)
        var block = [UInt8](repeating: 1, count: 4096)
        while write(fd, &block, block.count) == block.count {}
        close(fd)
        let unpaused = #expect(throws: SiloError.self) { try system.pause().wait(timeout: .seconds(30)) }
        #expect(unpaused?.errno == ENOSPC && unpaused?.message.contains(runtime) == true, "refused by the record's write: \(String(describing: unpaused))")
        #expect(!system.cgroup.isFrozen, "a pause the record does not show is undone")
        #expect(try system.properties().state == .running)
        unlink(filler)
        try system.pause().wait(timeout: .seconds(30))
        // And the other way: paused, with no room to say Running.
        let again = open(filler, O_WRONLY | O_CREAT | O_CLOEXEC, 0o600)
        while write(again, &block, block.count) == block.count {}
        close(again)
        let unresumed = #expect(throws: SiloError.self) { try system.resume().wait(timeout: .seconds(30)) }
        #expect(unresumed?.errno == ENOSPC && unresumed?.message.contains(runtime) == true, "refused by the record's write: \(String(describing: unresumed))")
        #expect(system.cgroup.isFrozen, "a resume the record does not show is undone")
        #expect(try system.properties().state == .paused)
        unlink(filler)
    }

    @Test("C4 what a start killed before its record said Running left (its init in the cgroup, a LUN's grant, the agent's socket, the root folder) is cleared by reenumerate, or by the next start, which runs one init")
    func deadStart() throws {
        let compute = TestCompute()
        defer { compute.finish() }
        for clearedBy in ["reenumerate", "start"] {
            let id = "ds-\(clearedBy)-\(getpid())"
            let system = try compute.service.createComputeSystem(id: id, document: compute.document()).wait(timeout: .seconds(30))
            defer { system.close() }
            // What the dead start left, as it left it.
            let leftover = try startInside(system.cgroup, "exec /bin/sleep 600")
            var reaped = false
            defer { if !reaped { kill(leftover, SIGKILL); _ = reap(leftover) } }
            try system.cgroup.setBlockDevices([DeviceGrant(number: "7:0", writable: true)])
            let devices = system.cgroup.directories["devices"]
            if let devices { #expect((readText(devices + "/devices.list") ?? "").contains("b 7:0 rw")) }
            // Asked of the kernel in both layouts (v1's list, cgroup2's device program): a process
            // in the cgroup opens /dev/loop0 (exit 12) or is refused (13).
            let probe = "if (exec 4</dev/loop0) 2>/dev/null; then exit 12; else exit 13; fi"
            try #require(access("/dev/loop0", F_OK) == 0, "no /dev/loop0 to probe the device policy with")
            #expect(reap(try startInside(system.cgroup, probe)) == 12, "the grant lets /dev/loop0 open")
            let socket = compute.service.store.directory(id) + "/agent.sock"
            let root = compute.service.store.root(id)
            #expect(mkdir(root, 0o755) == 0)
            let file = open(socket, O_CREAT | O_WRONLY | O_CLOEXEC, 0o600)
            #expect(file >= 0)
            close(file)
            if clearedBy == "reenumerate" {
                #expect(compute.service.reenumerate() == [id])
            } else {
                try system.start().wait(timeout: .seconds(30))
                let after = try system.properties()
                #expect(after.state == .running, "\(after)")
                #expect(system.cgroup.pids.count == 1 && !system.cgroup.pids.contains(leftover), "one init, the new one: \(system.cgroup.pids)")
            }
            #expect(reap(leftover) == 128 + SIGKILL, "the dead start's init is killed")
            reaped = true
            if let devices { #expect(!(readText(devices + "/devices.list") ?? "").contains("b 7:0"), "its grant is taken back") }
            if clearedBy == "start" {
                #expect(reap(try startInside(system.cgroup, probe)) == 13, "the new start's device policy has no grant of the dead one's")
            }
            if clearedBy == "reenumerate" {
                #expect(try system.properties().state == .created)
                #expect(system.cgroup.pids.isEmpty && access(socket, F_OK) != 0 && access(root, F_OK) != 0)
                #expect(compute.service.reenumerate().isEmpty, "nothing more to repair")
                // Its cgroup takes a new init (killed without cgroup.kill: after one, this kernel
                // kills whatever is cloned into the cgroup at birth).
                try system.start().wait(timeout: .seconds(30))
                #expect(try system.properties().state == .running)
            }
            try system.terminate().wait(timeout: .seconds(30))
        }
    }

    @Test("C3 C13 what killed writers leave keeps no id taken: a record's temporary copy goes with its system, and reenumerate removes a run's lock a minute old with no run behind it")
    func killedWritersLeftovers() throws {
        let compute = TestCompute()
        defer { compute.finish() }
        let id = "kw-\(getpid())"
        let system = try compute.service.createComputeSystem(id: id, document: compute.document()).wait(timeout: .seconds(30))
        let temporary = compute.service.store.directory(id) + "/state.json.999999.tmp"
        let file = open(temporary, O_CREAT | O_WRONLY | O_CLOEXEC, 0o600)
        #expect(file >= 0)
        close(file)
        try system.terminate().wait(timeout: .seconds(30))
        system.close()
        #expect(access(compute.service.store.directory(id), F_OK) != 0, "the folder went, its temporary copy with it")
        try compute.service.createComputeSystem(id: id, document: compute.document()).wait(timeout: .seconds(30)).close()
        // A run's lock whose runner died before its reservation: swept once a minute old; a fresh
        // one (a runner between the two) stays.
        let systems = compute.service.store.systems
        let stale = SandboxRun.runLock(systems: systems, id: "stale-run")
        let fresh = SandboxRun.runLock(systems: systems, id: "fresh-run")
        for path in [stale, fresh] {
            let lock = open(path, O_CREAT | O_WRONLY | O_CLOEXEC, 0o600)
            #expect(lock >= 0)
            close(lock)
        }
        var old = [timespec(tv_sec: time(nil) - 120, tv_nsec: 0), timespec(tv_sec: time(nil) - 120, tv_nsec: 0)]
        #expect(utimensat(AT_FDCWD, stale, &old, 0) == 0)
        #expect(compute.service.reenumerate() == ["stale-run"])
        #expect(access(stale, F_OK) != 0 && access(fresh, F_OK) == 0)
        unlink(fresh)
    }

    @Test("C6 a ShouldTerminateOnLastHandleClosed system whose last holder died while Created or Paused (no agent to see it) is ended by reenumerate; one still held is not")
    func abandonedSystems() throws {
        let compute = TestCompute()
        defer { compute.finish() }
        let created = try compute.service.createComputeSystem(id: "ab1-\(getpid())", document: compute.document(terminateOnLastHandle: true))
            .wait(timeout: .seconds(30))
        let paused = try compute.service.createComputeSystem(id: "ab2-\(getpid())", document: compute.document(terminateOnLastHandle: true))
            .wait(timeout: .seconds(30))
        try paused.start().wait(timeout: .seconds(30))
        try paused.pause().wait(timeout: .seconds(30))
        let cgroup = paused.cgroup
        #expect(compute.service.reenumerate().isEmpty, "both are held")
        let peek = try compute.service.open(created.id)
        #expect(try peek.properties().state == .created)
        peek.close()  // not the last: the creator's handle holds it still
        // Their holder dies: the kernel lets its locks go, and no close of Silo's runs.
        for system in [created, paused] { Glibc.close(system.handleLock.exchange(-1, ordering: .relaxed)) }
        let repaired = compute.service.reenumerate()
        #expect(Set(repaired) == [created.id, paused.id], "\(repaired)")
        #expect(compute.service.enumerate(id: created.id).isEmpty && compute.service.enumerate(id: paused.id).isEmpty, "ended and removed")
        #expect(cgroup.pids.isEmpty && cgroup.directories.values.allSatisfy { !fileExists($0) }, "nothing of the paused one is left")
        created.close()
        paused.close()
    }

    @Test("C3 a system's folder left without a record (a create killed before its record, a removal raced) is removed by reenumerate once a minute old, with its cgroup, and its id is free again; one being made is left alone")
    func orphanFolder() throws {
        let compute = TestCompute()
        defer { compute.finish() }
        let store = compute.service.store
        /// The folder's age, as a create's of two minutes ago would have it.
        func age(_ id: String) {
            var times = [timespec(tv_sec: time(nil) - 120, tv_nsec: 0), timespec(tv_sec: time(nil) - 120, tv_nsec: 0)]
            utimensat(AT_FDCWD, store.directory(id), &times, 0)
        }
        // Being made: the create holds its reservation's lock until its handle is open.
        let making = "mk-\(getpid())"
        let hold = try store.reserve(making)
        _ = try Cgroup.create(name: compute.service.configuration.cgroupName(for: making), limits: CgroupLimits(pids: 8),
                              layout: compute.service.configuration.layout)  // its "cgroup" step done
        age(making)
        #expect(!compute.service.reenumerate().contains(making))
        #expect(fileExists(store.directory(making)), "a create in progress keeps its folder")
        // Its process died: the lock is free, the record never came. Young, it is left a while.
        close(hold)
        utimensat(AT_FDCWD, store.directory(making), nil, 0)  // made just now
        #expect(!compute.service.reenumerate().contains(making), "a minute's grace")
        age(making)
        #expect(compute.service.reenumerate().contains(making))
        #expect(!fileExists(store.directory(making)))
        let made = try compute.service.createComputeSystem(id: making, document: compute.document()).wait(timeout: .seconds(30))
        made.close()
        #expect(try compute.service.open(making).properties().state == .created, "the id and its cgroup name are free again")
        // What a removal raced by an open leaves: the folder and a lock file, no record.
        let raced = "rc-\(getpid())"
        mkdir(store.directory(raced), 0o700)
        close(Glibc.open(store.directory(raced) + "/lock", O_CREAT | O_RDWR | O_CLOEXEC, 0o600))
        #expect((#expect(throws: SiloError.self) { _ = try compute.service.createComputeSystem(id: raced, document: compute.document()) })?.code == .systemAlreadyExists)
        age(raced)
        #expect(compute.service.reenumerate().contains(raced))
        let again = try compute.service.createComputeSystem(id: raced, document: compute.document()).wait(timeout: .seconds(30))
        again.close()
    }

    @Test("O8 O14 a create cancelled early ends cancelled with nothing left (no record, cgroup or reserved id), or as made when it came too late")
    func cancelCreate() throws {
        let compute = TestCompute()
        defer { compute.finish() }
        var cancelled = 0
        var cancelledWithCgroup = 0
        // How long a create takes here (0.6 ms on this project's VM, ten times that emulated): the
        // cancels are spread over it.
        let clock = ContinuousClock()
        let took = try clock.measure {
            _ = try compute.service.createComputeSystem(id: "cc-\(getpid())-timed", document: compute.document()).wait(timeout: .seconds(30)).close()
        }
        let span = max(600, min(20_000, Int(took.components.attoseconds / 1_000_000_000_000) + Int(took.components.seconds) * 1_000_000))
        for round in 0..<40 {
            let id = "cc-\(getpid())-\(round)"
            let operation = try compute.service.createComputeSystem(id: id, document: compute.document())
            // From at once to well into the cgroup step: some cancels find a cgroup to take back.
            usleep(UInt32(round % 10 * span / 10))
            let cgroupMade = Cgroup.open(name: compute.service.configuration.cgroupName(for: id), layout: compute.service.configuration.layout)
                .directories.values.contains(where: fileExists)
            var tooLate = false
            do throws(SiloError) { try operation.cancel() } catch {
                #expect(error.code == .cancelTooLate, "\(error)")
                tooLate = true
            }
            do throws(SiloError) {
                let system = try operation.wait(timeout: .seconds(30))
                system.close()
                #expect(try compute.service.open(id).properties().state == .created)
            } catch {
                #expect(!tooLate && error.code == .operationCancelled, "\(error)")
                cancelled += 1
                if cgroupMade { cancelledWithCgroup += 1 }
                #expect(compute.service.enumerate(id: id).isEmpty, "no record")
                let layout = CgroupLayout.detect()
                let left = ([layout.unified].compactMap { $0 } + layout.legacy.values).flatMap { root in
                    directoryEntries(root + "/silo").filter { $0.hasPrefix(id + ".") }
                }
                #expect(left.isEmpty, "no cgroup: \(left)")
                // The id is free again.
                let again = try compute.service.createComputeSystem(id: id, document: compute.document()).wait(timeout: .seconds(30))
                again.close()
            }
        }
        // The operation runs on a worker: a cancel soon after the call comes before its end in
        // most rounds (which the rounds above check); none at all would say it never did.
        #expect(cancelled > 0, "no create was cancelled in 40 rounds")
        #expect(cancelledWithCgroup > 0, "no cancel came after the cgroup was made: its rollback was never run")
    }

    @Test("C9 statistics: CPU time in 100 ns units, counted from the system's processes; uptime from the start, not the create")
    func statisticsUnits() throws {
        let compute = TestCompute()
        defer { compute.finish() }
        let system = try compute.service.createComputeSystem(id: "st-\(getpid())", document: compute.document())
            .wait(timeout: .seconds(30))
        defer { _ = try? system.terminate().wait(timeout: .seconds(30)); system.close() }
        sleep(3)  // created three seconds before it starts
        // The clock starts before the call: a slow start (under emulation, seconds) is inside the
        // span, while the three seconds since the create stay outside it.
        let started = ContinuousClock.now
        try system.start().wait(timeout: .seconds(30))
        // Half a second of CPU at least, inside: a busy loop.
        let busy = try system.createProcess(ProcessParameters(
            arguments: ["/bin/sh", "-c", "end=$(($(date +%s%N) + 500000000)); while [ $(date +%s%N) -lt $end ]; do :; done"]
        )).wait(timeout: .seconds(30))
        defer { busy.close() }
        #expect(try busy.wait(timeout: .seconds(30)).exitCode == 0)
        let statistics = try #require(try system.properties().statistics)
        let elapsed = started.duration(to: .now)
        let cpu = statistics.processorTimeUser + statistics.processorTimeKernel
        // 0.5 s of wall time, mostly busy: at least 0.2 s of CPU (2,000,000 units); at most what two
        // CPUs could have used since the start. Units a factor of ten off fall outside either way.
        let limit = UInt64(elapsed.components.seconds) * 20_000_000 + UInt64(elapsed.components.attoseconds / 50_000_000_000) + 1
        #expect(cpu >= 2_000_000 && cpu <= limit, "\(statistics), \(elapsed) since start() was called")
        #expect(statistics.uptimeSeconds >= 0 && statistics.uptimeSeconds <= elapsed.components.seconds + 1,
                "uptime counts from the start (called \(elapsed) ago), not from the create three seconds before it: \(statistics)")
    }

    @Test("C5 shutdown is graceful and the SystemExited event says so; a stopped system holds no process, cgroup or folder")
    func gracefulShutdown() throws {
        let compute = TestCompute()
        defer { compute.finish() }
        let id = "sd-\(getpid())"
        let system = try compute.service.createComputeSystem(id: id, document: compute.document()).wait(timeout: .seconds(30))
        let exits = Mutex<[String]>([])
        let exited = DispatchSemaphore(value: 0)
        try system.events.setHandler { event in
            if event.type == .systemExited {
                exits.withLock { $0.append(event.data ?? "") }
                exited.signal()
            }
        }
        try system.start().wait(timeout: .seconds(30))
        let running = try system.properties()
        #expect(running.processList.count == 1, "init alone: \(running.processList)")
        // C9: memory in bytes, CPU time in 100 ns units, uptime in seconds.
        let statistics = try #require(running.statistics)
        #expect(statistics.memoryUsageBytes > 0 && statistics.memoryUsageBytes < 1 << 30, "\(statistics)")
        // Init just started, alone: well under ten seconds of CPU even under software emulation;
        // a second is 10,000,000 units, so a count in nanoseconds soon passes the bound.
        #expect(statistics.processorTimeUser + statistics.processorTimeKernel < 100_000_000, "a second is 10,000,000 units: \(statistics)")
        #expect(statistics.uptimeSeconds >= 0 && statistics.uptimeSeconds < 60, "\(statistics)")
        try system.shutdown().wait(timeout: .seconds(30))
        #expect(exited.wait(timeout: .now() + 60) == .success)
        #expect(exits.withLock { $0 } == [#"{"ExitType":"Graceful"}"#])
        let stopped = try system.properties()
        #expect(stopped.state == .stopped && stopped.exitType == .graceful)
        #expect(stopped.processList.isEmpty)
        #expect(system.cgroup.directories.values.allSatisfy { !fileExists($0) })
        #expect(!fileExists(compute.service.store.root(id)))
        system.close()
        #expect(compute.service.store.ids().isEmpty, "closing the last handle of a stopped system removes it")
    }

    @Test("C9 enumerate by id, owner and state")
    func enumeration() throws {
        let compute = TestCompute()
        defer { compute.finish() }
        let a = try compute.service.createComputeSystem(id: "en-a-\(getpid())", document: compute.document(owner: "alice")).wait()
        let b = try compute.service.createComputeSystem(id: "en-b-\(getpid())", document: compute.document(owner: "bob")).wait()
        defer { a.close(); b.close() }
        try b.start().wait(timeout: .seconds(30))
        #expect(compute.service.enumerate().count == 2)
        #expect(compute.service.enumerate(owner: "alice").map(\.id) == ["en-a-\(getpid())"])
        #expect(compute.service.enumerate(state: .running).map(\.id) == ["en-b-\(getpid())"])
        #expect(compute.service.enumerate(id: "en-a-\(getpid())").map(\.id) == ["en-a-\(getpid())"])
        #expect(compute.service.enumerate(id: "en-a-\(getpid())").first?.state == .created)
        #expect(compute.service.enumerate(id: "en-b-\(getpid())").map(\.id) == ["en-b-\(getpid())"])
        #expect(compute.service.enumerate(id: "en-none-\(getpid())").isEmpty)
    }

    @Test("O16 O17 O18 on a real system: completions routed to the handler; own callbacks refused; nothing after close")
    func eventsOnSystem() throws {
        let compute = TestCompute()
        defer { compute.finish() }
        let system = try compute.service.createComputeSystem(id: "ev-\(getpid())", document: compute.document()).wait()
        let completed = Mutex<[OperationType]>([])
        let heard = Mutex<[SiloEventType]>([])
        let got = DispatchSemaphore(value: 0)
        try system.events.setHandler(options: .operationCallbacks) { event in
            heard.withLock { $0.append(event.type) }
            if event.type == .operationCompleted, let operation = event.operation {
                completed.withLock { $0.append(operation.type) }
                got.signal()
            }
        }
        _ = try system.start()
        #expect(got.wait(timeout: .now() + 60) == .success)
        #expect(completed.withLock { $0 } == [.start])
        #expect((#expect(throws: SiloError.self) { _ = try system.pause(callback: .short { _ in }) })?.code == .operationSystemCallbackAlreadySet)
        // C8: a process's exit goes to the process's handlers, not the system's.
        let process = try system.createProcess(ProcessParameters(arguments: ["/bin/true"])).wait(timeout: .seconds(30))
        _ = try process.wait(timeout: .seconds(10))
        process.close()
        usleep(50_000)
        #expect(!heard.withLock { $0 }.contains(.processExited), "the system's handler heard a process exit: \(heard.withLock { $0 })")
        let before = heard.withLock { $0 }
        system.close()
        // Closing was the last handle and the document does not terminate on it: still running.
        let other = try compute.service.open("ev-\(getpid())")
        defer { other.close() }
        #expect(try other.properties().state == .running)
        try other.terminate().wait(timeout: .seconds(30))
        usleep(100_000)
        #expect(completed.withLock { $0 } == [.start, .createProcess], "nothing reaches a closed handle")
        // SystemExited goes to every open handle: not to this closed one.
        #expect(heard.withLock { $0 } == before, "a closed handle heard: \(heard.withLock { $0 }.dropFirst(before.count))")
    }

    @Test("C6 with ShouldTerminateOnLastHandleClosed, closing the last handle terminates the system")
    func lastHandleTerminates() throws {
        let compute = TestCompute()
        defer { compute.finish() }
        let id = "lh-\(getpid())"
        let system = try compute.service.createComputeSystem(id: id, document: compute.document(terminateOnLastHandle: true)).wait()
        try system.start().wait(timeout: .seconds(30))
        let second = try compute.service.open(id)
        system.close()
        #expect(try second.properties().state == .running, "one handle is still open")
        let cgroup = second.cgroup
        // Another process holding a handle (a shared lock on the handles file, as a handle is)
        // keeps the system alive when this process closes its last one. One process, the lock's
        // only holder (flock(1) would pass the locked descriptor on to its command), until killed.
        let handles = compute.service.store.directory(id) + "/handles"
        let locksBefore = sharedFlocks(on: handles)
        var otherPID: pid_t = 0
        let words = ["/bin/sh", "-c", "exec 9<\(handles) && /usr/bin/flock -s 9 && exec /bin/sleep 100"]
        let argv: [UnsafeMutablePointer<CChar>?] = words.map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        try #require(posix_spawn(&otherPID, "/bin/sh", nil, nil, argv, environ) == 0 && otherPID > 0)
        var reaped = false
        defer { if !reaped { kill(otherPID, SIGKILL); _ = reap(otherPID) } }
        try #require(eventually { sharedFlocks(on: handles) > locksBefore }, "the other process holds its shared lock")
        second.close()
        #expect(try compute.service.open(id).properties().state == .running, "the other process still holds a handle")
        kill(otherPID, SIGKILL)
        _ = reap(otherPID)
        reaped = true
        let third = try compute.service.open(id)
        third.close()
        #expect(cgroup.directories.values.allSatisfy { !fileExists($0) })
        #expect(compute.service.store.ids().isEmpty)
    }

    @Test("C6 the agent's checks after the last connection closed run on deadlines: a payload waking pid 1 every few milliseconds does not hold the end off")
    func lastHandleUnderWakeUps() throws {
        let compute = TestCompute()
        defer { compute.finish() }
        let id = "lhw-\(getpid())"
        let system = try compute.service.createComputeSystem(id: id, document: compute.document(terminateOnLastHandle: true))
            .wait(timeout: .seconds(30))
        var systemClosed = false
        defer { if !systemClosed { system.close() } }
        try system.start().wait(timeout: .seconds(30))
        let initPID = try #require(try compute.service.store.load(id).initPID)
        let handles = compute.service.store.directory(id) + "/handles"
        // Wakes pid 1 every few milliseconds: a signal (pid 1 blocks them all, so even one sent
        // from inside is queued on its signalfd) and an orphan's exit (its SIGCHLD goes to pid 1).
        let waker = try system.createProcess(ProcessParameters(arguments: ["/bin/sh", "-c",
            "while :; do kill -USR1 1; (/bin/sleep 0.004 &); /bin/sleep 0.004; done"])).wait(timeout: .seconds(30))
        defer { waker.close() }
        let switches = voluntarySwitches(initPID)
        try #require(eventually(seconds: 60) { voluntarySwitches(initPID) - switches >= 20 }, "pid 1 is woken often")
        // A holder of the handles lock with no connection: this test's own shared lock. With it,
        // close() cannot take the lock exclusively and end the system itself: the agent must.
        let lock = open(handles, O_RDONLY | O_CLOEXEC)
        try #require(lock >= 0 && flock(lock, LOCK_SH) == 0)
        var lockHeld = true
        defer { if lockHeld { close(lock) } }
        let descriptors = try FileManagerless.count("/proc/\(initPID)/fd")
        system.close()  // the last connection: the agent's first try fails (our lock); its checks go on
        systemClosed = true
        try #require(eventually(seconds: 60) { ((try? FileManagerless.count("/proc/\(initPID)/fd")) ?? 0) < descriptors },
                     "the agent closed the connection")
        #expect(compute.service.enumerate(id: id).first?.state == .running, "a handle (this test's lock) is left")
        close(lock)
        lockHeld = false
        // A check restarted by every wake-up would never come: the system would live on.
        // The waker never stops, so a generous bound still fails such an agent.
        #expect(eventually(seconds: 60) { (readText(handles) ?? "").hasPrefix("terminated: last handle closed") },
                "the agent never ended the system: the wake-ups held its checks off")
        #expect(eventually(seconds: 60) { processStartTime(initPID) == nil }, "init is gone")
    }

    @Test("C6 a handle that never reached the agent (its process opened the system before it started) still counts: when that process dies, the last-handle rule ends the system")
    func lastHandleWithoutConnection() throws {
        let compute = TestCompute()
        defer { compute.finish() }
        let id = "lhc-\(getpid())"
        let system = try compute.service.createComputeSystem(id: id, document: compute.document(terminateOnLastHandle: true)).wait()
        // Another process's handle, opened while the system is Created: a shared lock on the
        // handles file, and no connection.
        // One process, the lock's only holder (flock(1) would pass the locked descriptor on to
        // its command).
        let handles = compute.service.store.directory(id) + "/handles"
        let locksBefore = sharedFlocks(on: handles)
        var otherPID: pid_t = 0
        let words = ["/bin/sh", "-c", "exec 9<\(handles) && /usr/bin/flock -s 9 && exec /bin/sleep 100"]
        let argv: [UnsafeMutablePointer<CChar>?] = words.map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        try #require(posix_spawn(&otherPID, "/bin/sh", nil, nil, argv, environ) == 0 && otherPID > 0)
        var reaped = false
        defer { if !reaped { kill(otherPID, SIGKILL); _ = reap(otherPID) } }
        try #require(eventually { sharedFlocks(on: handles) > locksBefore }, "the other process holds its shared lock")
        try system.start().wait(timeout: .seconds(30))
        let cgroup = system.cgroup
        system.close()
        usleep(400_000)
        #expect(!cgroup.pids.isEmpty, "the other process still holds a handle")
        kill(otherPID, SIGKILL)
        _ = reap(otherPID)
        reaped = true
        #expect(eventually(seconds: 60) { cgroup.pids.isEmpty }, "the system outlived the death of its last handle's process")
    }

    @Test("C8 a handle opened before its system started hears its exit, once, when another handle starts and terminates it: later, at once (between two of its looks), or with no start at all",
          arguments: ["later", "at once", "unstarted"])
    func handleOpenedBeforeStart(_ when: String) throws {
        let compute = TestCompute()
        defer { compute.finish() }
        let id = "early-\(getpid())"
        let system = try compute.service.createComputeSystem(id: id, document: compute.document()).wait()
        defer { system.close() }
        let early = try compute.service.open(id)
        defer { early.close() }
        let exited = DispatchSemaphore(value: 0)
        let heard = Atomic<Int>(0)
        try early.events.setHandler { event in
            if event.type == .systemExited {
                heard.add(1, ordering: .relaxed)
                exited.signal()
            }
        }
        if when != "unstarted" {
            try system.start().wait(timeout: .seconds(30))
            if when == "later" { usleep(200_000) }
        }
        try system.terminate().wait(timeout: .seconds(30))
        #expect(exited.wait(timeout: .now() + 60) == .success, "the early handle heard nothing")
        usleep(200_000)
        #expect(heard.load(ordering: .relaxed) == 1, "once")
    }

    @Test("C5 an init this process started and something else ended is reaped at the next call: it stays no zombie, and is never taken for a live init")
    func deadInitReaped() throws {
        let compute = TestCompute()
        defer { compute.finish() }
        let id = "zombie-\(getpid())"
        let system = try compute.service.createComputeSystem(id: id, document: compute.document()).wait()
        defer { system.close() }
        try system.start().wait(timeout: .seconds(30))
        let pid = try #require(try compute.service.store.load(id).initPID)
        kill(pid, SIGKILL)  // as a stop from another process, or a crash, would end it
        let zombie = eventually(seconds: 60) { (readText("/proc/\(pid)/stat") ?? "").contains(") Z ") }
        #expect(zombie, "the init should be this process's unreaped child now")
        #expect(processStartTime(pid) == nil, "a zombie is not a live init")
        #expect(compute.service.enumerate(id: id).first?.state == .stopped)
        #expect(!fileExists("/proc/\(pid)"), "reaped by the next call into the service")
    }

    @Test("C12 modify while running: new memory and processor limits land in the live cgroup and the properties")
    func modifyLimits() throws {
        let compute = TestCompute()
        defer { compute.finish() }
        let system = try compute.service.createComputeSystem(id: "ml-\(getpid())", document: compute.document(memoryMB: 128)).wait()
        defer { system.close() }
        #expect((#expect(throws: SiloError.self) { _ = try system.modify(ModifyRequest(change: .memory(megabytes: 64))) })?.code == .invalidState)
        try system.start().wait(timeout: .seconds(30))
        try system.modify(ModifyRequest(json: #"{"ResourcePath": "VirtualMachine/ComputeTopology/Memory/SizeInMB", "RequestType": "Update", "Settings": 64}"#))
            .wait(timeout: .seconds(10))
        try system.modify(ModifyRequest(change: .processorCount(2))).wait(timeout: .seconds(10))
        let properties = try system.properties()
        #expect(properties.memoryLimitBytes == 64 << 20 && properties.processorCount == 2)
        switch system.cgroup.layout.place("memory") {
        case .v1?: #expect(readText(try system.cgroup.path("memory") + "/memory.limit_in_bytes") == "\(64 << 20)")
        case .v2?: #expect(readText(try system.cgroup.path("unified") + "/memory.max") == "\(64 << 20)")
        case nil: Issue.record("no memory controller")
        }
        switch system.cgroup.layout.place("cpu") {
        case .v1?: #expect(readText(try system.cgroup.path("cpu") + "/cpu.cfs_quota_us") == "200000")
        case .v2?: #expect(readText(try system.cgroup.path("unified") + "/cpu.max") == "200000 100000")
        case nil: Issue.record("no cpu controller")
        }
        // A document's Processor.Limit (half of its CPUs here) scales a new count as it did the first.
        let halfDocument = #"{"SchemaVersion": {"Major": 2, "Minor": 1}, "Container": {"Processor": {"Count": 1, "Limit": 50000}}}"#
        let half = try compute.service.createComputeSystem(id: "mlh-\(getpid())", document: halfDocument).wait()
        defer { half.close() }
        try half.start().wait(timeout: .seconds(30))
        try half.modify(ModifyRequest(change: .processorCount(2))).wait(timeout: .seconds(10))
        switch half.cgroup.layout.place("cpu") {
        case .v1?: #expect(readText(try half.cgroup.path("cpu") + "/cpu.cfs_quota_us") == "100000", "2 CPUs at half: one CPU's time")
        case .v2?: #expect(readText(try half.cgroup.path("unified") + "/cpu.max") == "100000 100000")
        case nil: break
        }
        // Processor.Limit changed in turn scales the count set by the last modify (2), and a count
        // set after it keeps the new limit: 2 at a quarter, then 4 at a quarter.
        try half.modify(ModifyRequest(json: #"{"ResourcePath": "Container/Processor/Limit", "RequestType": "Update", "Settings": 25000}"#))
            .wait(timeout: .seconds(10))
        let quota = { () throws -> String? in
            switch half.cgroup.layout.place("cpu") {
            case .v1?: return readText(try half.cgroup.path("cpu") + "/cpu.cfs_quota_us")
            case .v2?: return readText(try half.cgroup.path("unified") + "/cpu.max").map { String($0.prefix { $0 != " " }) }
            case nil: return nil
            }
        }
        #expect(try quota() == "50000", "2 CPUs at a quarter: half a CPU's time")
        try half.modify(ModifyRequest(change: .processorCount(4))).wait(timeout: .seconds(10))
        #expect(try quota() == "100000", "4 CPUs at a quarter")
        // And back up past where it started: on v1 the swap limit moves first (it may never be
        // below the memory limit; the other order was refused).
        try system.modify(ModifyRequest(change: .memory(megabytes: 256))).wait(timeout: .seconds(10))
        #expect(try system.properties().memoryLimitBytes == 256 << 20)
        switch system.cgroup.layout.place("memory") {
        case .v1?:
            let memory = try system.cgroup.path("memory")
            #expect(readText(memory + "/memory.limit_in_bytes") == "\(256 << 20)")
            if let memsw = readText(memory + "/memory.memsw.limit_in_bytes") { #expect(memsw == "\(256 << 20)") }
        case .v2?: #expect(readText(try system.cgroup.path("unified") + "/memory.max") == "\(256 << 20)")
        case nil: break
        }
        let nothing = #expect(throws: SiloError.self) { _ = try system.modify(ModifyRequest(change: .detach(controller: "0", index: 5))) }
        #expect(nothing?.code == .objectNotFound && nothing?.field == "ResourcePath")
    }

    @Test("C10 a memory limit under what the system uses and cannot give back is refused, naming Settings: nothing killed, the limit kept")
    func memoryLimitUnderUsage() throws {
        let compute = TestCompute()
        defer { compute.finish() }
        let system = try compute.service.createComputeSystem(id: "mu-\(getpid())", document: compute.document(memoryMB: 128)).wait()
        defer { system.close() }
        try system.start().wait(timeout: .seconds(30))
        // 48 MiB in the system's /tmp: a tmpfs, charged to its cgroup, which nothing can reclaim without swap.
        let filler = try system.createProcess(ProcessParameters(
            arguments: ["/bin/sh", "-c", "head -c 50331648 /dev/zero > /tmp/fill && echo ready && exec sleep 600"],
            createStdOutPipe: true)).wait(timeout: .seconds(30))
        defer { filler.close() }
        #expect(readUntil(try #require(filler.standardOutput)) { $0.contains("ready") }.contains("ready"))
        let kills = system.cgroup.oomKills
        let refused = #expect(throws: SiloError.self) {
            try system.modify(ModifyRequest(change: .memory(megabytes: 16))).wait(timeout: .seconds(60))
        }
        #expect(refused?.code == .invalidArgument && refused?.field == "Settings" && refused?.value == "16", "\(String(describing: refused))")
        #expect(refused?.message.contains("16 MiB") == true, "\(String(describing: refused?.message))")
        #expect(system.cgroup.oomKills == kills, "a refused limit kills nothing (cgroup2 would have OOM-killed until it fit)")
        #expect((#expect(throws: SiloError.self) { try filler.wait(timeout: .milliseconds(200)) })?.code == .operationTimeout,
                "the process holding the memory still runs")
        #expect(try system.properties().memoryLimitBytes == 128 << 20)
        switch system.cgroup.layout.place("memory") {
        case .v1?:
            let memory = try system.cgroup.path("memory")
            #expect(readText(memory + "/memory.limit_in_bytes") == "\(128 << 20)")
            if let memsw = readText(memory + "/memory.memsw.limit_in_bytes") { #expect(memsw == "\(128 << 20)", "put back") }
        case .v2?:
            let unified = try system.cgroup.path("unified")
            #expect(readText(unified + "/memory.max") == "\(128 << 20)")
            #expect(readText(unified + "/memory.high") == "max", "the reclaim's memory.high put back")
        case nil: Issue.record("no memory controller")
        }
        // A limit the usage fits under still lands.
        try system.modify(ModifyRequest(change: .memory(megabytes: 96))).wait(timeout: .seconds(60))
        #expect(try system.properties().memoryLimitBytes == 96 << 20)
    }

    @Test("C10 a memory limit under what the system uses is reached by reclaiming its page cache: it lands, nothing killed, memory.high as it was")
    func memoryLimitReclaimed() throws {
        let compute = TestCompute()
        defer { compute.finish() }
        let system = try compute.service.createComputeSystem(id: "mr-\(getpid())", document: compute.document(memoryMB: 256)).wait()
        defer { system.close() }
        try system.start().wait(timeout: .seconds(30))
        // Page cache charged to the system: a file a process in its cgroup writes and syncs (a
        // page is charged to the cgroup that brings it in; synced, it is clean and can be dropped).
        let file = compute.state + "/cache.img"
        defer { unlink(file) }
        let writer = try startInside(system.cgroup, "dd if=/dev/zero of=\(file) bs=1M count=96 conv=fsync 2>/dev/null")
        #expect(reap(writer) == 0)
        // And a process of its own that must live through the change.
        let sleeper = try system.createProcess(ProcessParameters(arguments: ["/bin/sleep", "600"])).wait(timeout: .seconds(30))
        defer { sleeper.close() }
        let usage = try #require(try system.properties().statistics).memoryUsageBytes
        try #require(usage > 96 << 20, "the write left only \(usage >> 20) MiB charged to the system")
        let kills = system.cgroup.oomKills
        try system.modify(ModifyRequest(change: .memory(megabytes: 64))).wait(timeout: .seconds(60))
        #expect(try system.properties().memoryLimitBytes == 64 << 20)
        #expect(system.cgroup.oomKills == kills, "reclaimed, not killed")
        #expect((#expect(throws: SiloError.self) { try sleeper.wait(timeout: .milliseconds(200)) })?.code == .operationTimeout,
                "the system's process still runs")
        switch system.cgroup.layout.place("memory") {
        case .v1?: #expect(readText(try system.cgroup.path("memory") + "/memory.limit_in_bytes") == "\(64 << 20)")
        case .v2?:
            let unified = try system.cgroup.path("unified")
            #expect(readText(unified + "/memory.max") == "\(64 << 20)")
            #expect(readText(unified + "/memory.high") == "max", "the reclaim's memory.high put back")
        case nil: Issue.record("no memory controller")
        }
    }

    @Test("C5 every handle hears SystemExited once, with how the system ended, whoever stopped it")
    func exitReachesEveryHandle() throws {
        let compute = TestCompute()
        defer { compute.finish() }
        let id = "eh-\(getpid())"
        let system = try compute.service.createComputeSystem(id: id, document: compute.document()).wait()
        defer { system.close() }
        try system.start().wait(timeout: .seconds(30))
        let other = try compute.service.open(id)
        defer { other.close() }
        let heard = Mutex<[String]>([])
        let done = DispatchSemaphore(value: 0)
        for (name, handle) in [("mine", system), ("other", other)] {
            try handle.events.setHandler { event in
                guard event.type == .systemExited else { return }
                heard.withLock { $0.append("\(name) \(event.data ?? "")") }
                done.signal()
            }
        }
        try other.terminate().wait(timeout: .seconds(30))
        #expect(done.wait(timeout: .now() + 60) == .success && done.wait(timeout: .now() + 60) == .success)
        usleep(100_000)
        #expect(heard.withLock { $0.sorted() } == [#"mine {"ExitType":"Forced"}"#, #"other {"ExitType":"Forced"}"#])
    }

    @Test("C4 C5 a system whose init dies is Stopped with an unexpected exit, and its handle hears so")
    func unexpectedExit() throws {
        let compute = TestCompute()
        defer { compute.finish() }
        let system = try compute.service.createComputeSystem(id: "ux-\(getpid())", document: compute.document()).wait()
        defer { system.close() }
        let heard = Mutex<[String]>([])
        try system.events.setHandler { event in
            if event.type == .systemExited { heard.withLock { $0.append(event.data ?? "") } }
        }
        try system.start().wait(timeout: .seconds(30))
        let pid = try #require(system.properties().processList.first)
        kill(pid, SIGKILL)
        #expect(try eventually(seconds: 60) {
            waitpid(pid, nil, WNOHANG)
            return try system.properties().state == .stopped
        })
        #expect(try system.properties().exitType == .unexpected)
        _ = eventually(seconds: 60) { !heard.withLock { $0.isEmpty } }
        #expect(heard.withLock { $0 } == [#"{"ExitType":"UnexpectedExit"}"#])
    }
}
