import CSiloLinux
import Dispatch
import Glibc
import Synchronization
import SiloOperations
import Testing

@testable import SiloStorage

@Suite("LUNs on loop devices", .tags(.root), .requiresLoopDevices, .serialized)
struct LunTests {
    @Test("S3 default and simple are made; span, stripe, mirror, parity, RAID are not supported; unknown is invalid")
    func types() throws {
        let storage = TestStorage()
        defer { storage.finish() }
        #expect(try LunType.parse("default") == .default)
        #expect(try LunType.parse("simple") == .simple)
        for name in ["span", "stripe", "mirror", "parity", "raid5", "raid10"] {
            let error = #expect(throws: SiloError.self) { try LunType.parse(name) }
            #expect(error?.code == .notSupported, "\(name)")
            #expect(error?.message.contains(name) == true)
        }
        #expect((#expect(throws: SiloError.self) { try LunType.parse("quantum") })?.code == .invalidArgument)
        let mirror = #expect(throws: SiloError.self) {
            _ = try storage.provider.createLun(LunSpec(name: "m", size: 1 << 20, type: .mirror))
        }
        #expect(mirror?.code == .notSupported)
        #expect(try storage.provider.luns().isEmpty)
        let lun = try storage.create("plain")
        #expect(lun.type == "simple", "queries report the concrete type")
    }

    @Test("S4 size rounds up to the block size; 0 and oversized are refused")
    func sizes() throws {
        let storage = TestStorage()
        defer { storage.finish() }
        let small = try storage.create("small", size: 1_048_577)
        #expect(small.size == 1_049_088)
        let big = try storage.create("big", size: (1 << 20) + 1, blockSize: 4096)
        #expect(big.size == (1 << 20) + 4096)
        #expect(big.logicalBlockSize == 4096)
        #expect(readNumber("/sys/block/\(big.devicePath?.dropFirst(5) ?? "")/queue/logical_block_size") == 4096)
        for size: UInt64 in [0, UInt64.max, ByteCount.maximum] {
            let error = #expect(throws: SiloError.self) {
                _ = try storage.provider.createLun(LunSpec(name: "bad", size: size))
            }
            #expect(error?.code == .invalidArgument)
            #expect(error?.field == "size")
        }
        let oddBlock = #expect(throws: SiloError.self) {
            _ = try storage.provider.createLun(LunSpec(name: "bad", size: 1 << 20, logicalBlockSize: 1024))
        }
        #expect(oddBlock?.field == "block size")
    }

    @Test("S5 unknown drives are not found; more than the pool holds is refused and leaves nothing")
    func placement() throws {
        let storage = TestStorage(overcommit: 1)
        defer { storage.finish() }
        let unknown = #expect(throws: SiloError.self) {
            _ = try storage.provider.createLun(LunSpec(name: "d", size: 1 << 20, drives: ["no-such-drive"]))
        }
        #expect(unknown?.code == .objectNotFound)
        #expect(unknown?.value == "no-such-drive")
        let free = try storage.provider.maximumLunSize(provisioning: .thick)
        let tooBig = #expect(throws: SiloError.self) {
            _ = try storage.provider.createLun(LunSpec(name: "huge", size: free + (1 << 30), provisioning: .thick))
        }
        #expect(tooBig?.code == .notEnoughSpace)
        let thin = try storage.provider.maximumLunSize(provisioning: .thin)
        let overcommitted = #expect(throws: SiloError.self) {
            _ = try storage.provider.createLun(LunSpec(name: "huge", size: thin + (1 << 30)))
        }
        #expect(overcommitted?.code == .notEnoughSpace)
        #expect(try storage.provider.luns().isEmpty)
        #expect(directoryEntries(storage.provider.configuration.poolDirectory).isEmpty)
        // The pool's own drive is accepted.
        let poolDrive = try #require(storage.provider.drives().first { $0.pool != nil })
        let placed = try storage.provider.createLun(LunSpec(name: "placed", size: 1 << 20, drives: [poolDrive.id])).wait()
        #expect(placed.pool == "default")
        // A thin LUN's size counts against what the pool may still promise.
        #expect(try storage.provider.maximumLunSize(provisioning: .thin) == thin - (1 << 20))
    }

    @Test("S6 a created LUN is a loop device of its size, zero at both ends, backed by a file in the pool")
    func createdLun() throws {
        let storage = TestStorage()
        defer { storage.finish() }
        for provisioning in Provisioning.allCases {
            let lun = try storage.create("lun-\(provisioning.rawValue)", size: 24 << 20, provisioning: provisioning)
            let device = try #require(lun.devicePath)
            #expect(lun.status == .online)
            #expect(readNumber("/sys/block/\(device.dropFirst(5))/size").map { $0 * 512 } == 24 << 20)
            #expect(try readBytes(device, offset: 0, count: 1 << 20).allSatisfy { $0 == 0 })
            #expect(try readBytes(device, offset: (24 << 20) - (1 << 20), count: 1 << 20).allSatisfy { $0 == 0 })
            #expect(lun.backingFile.hasPrefix(storage.provider.configuration.poolDirectory + "/"))
            #expect(readSmallFile("/sys/block/\(device.dropFirst(5))/loop/backing_file") == lun.backingFile)
            #expect(lun.link.map(resolveLink) == device)
            if provisioning != .thin { #expect(lun.allocatedBytes >= 24 << 20) }
        }
    }

    @Test("S6 a LUN given the loop device a deleted LUN had reads zeros at both ends, not the old LUN's data (buffered and direct I/O)",
          arguments: [true, false])
    func reusedDeviceReadsZeros(directIO: Bool) throws {
        let storage = TestStorage()
        defer { storage.finish() }
        let size: UInt64 = 8 << 20
        let pattern = [UInt8](repeating: 0xA5, count: 1 << 20)
        let old = try storage.provider.createLun(LunSpec(name: "old", size: size, directIO: directIO)).wait(timeout: .seconds(60))
        let device = try #require(old.devicePath)
        // Written through the device's page cache (a buffered open of the node), then read back,
        // so the old data sits in the device's cache as well as in its file.
        try writeBytes(device, offset: 0, pattern)
        try writeBytes(device, offset: size - (1 << 20), pattern)
        #expect(try readBytes(device, offset: 0, count: 1 << 20) == pattern)
        try storage.provider.deleteLun("old").wait(timeout: .seconds(60))
        // The lowest free node is the one just given back (nothing else attaches here meanwhile).
        let new = try storage.provider.createLun(LunSpec(name: "new", size: size, directIO: directIO)).wait(timeout: .seconds(60))
        try #require(new.devicePath == device, "the new LUN got \(new.devicePath ?? "no device"), not \(device): nothing to check")
        #expect(try readBytes(device, offset: 0, count: 1 << 20).allSatisfy { $0 == 0 }, "the first MiB is the old LUN's")
        #expect(try readBytes(device, offset: size - (1 << 20), count: 1 << 20).allSatisfy { $0 == 0 }, "the last MiB is the old LUN's")
    }

    @Test("O2 every storage call's operation has its own id, the type of the call and the caller's context")
    func operationTypes() throws {
        let storage = TestStorage()
        defer { storage.finish() }
        let provider = storage.provider
        var seen: [(type: OperationType, id: OperationID, context: String?)] = []
        func record<Output>(_ operation: SiloOperation<Output>) throws -> Output {
            seen.append((operation.type, operation.id, operation.context as? String))
            return try operation.wait(timeout: .seconds(60))
        }
        _ = try record(provider.createLun(LunSpec(name: "typed", size: 8 << 20), context: "createLun"))
        _ = try record(provider.extendLun("typed", by: 1 << 20, context: "extendLun"))
        _ = try record(provider.shrinkLun("typed", by: 1 << 20, context: "shrinkLun"))
        _ = try record(provider.setOnline("typed", false, context: "recoverLun"))
        _ = try record(provider.setOnline("typed", true, context: "recoverLun"))
        _ = try record(provider.cloneLun("typed", as: "typed-copy", context: "cloneLun"))
        _ = try record(provider.reenumerate(context: "reenumerate"))
        _ = try record(provider.deleteLun("typed-copy", context: "deleteLun"))
        _ = try record(provider.deleteLun("typed", context: "deleteLun"))
        let expected: [OperationType] = [.createLun, .extendLun, .shrinkLun, .recoverLun, .recoverLun, .cloneLun,
                                         .reenumerate, .deleteLun, .deleteLun]
        #expect(seen.map(\.type) == expected)
        #expect(seen.map(\.context) == expected.map(\.rawValue), "each operation keeps the context it was given")
        #expect(Set(seen.map(\.id)).count == seen.count, "ids are unique: \(seen.map(\.id))")
    }

    @Test("S7 cancelling provisioning part-way leaves no file, device or record")
    func cancelProvisioning() throws {
        let storage = TestStorage()
        defer { storage.finish() }
        let operation = try storage.provider.createLun(LunSpec(name: "slow", size: 2 << 30, provisioning: .zeroed))
        var sawProgress = false
        for _ in 0..<20_000 {
            if case .running(let progress) = operation.status, progress.percent >= 3, progress.completedUnits != nil {
                sawProgress = true
                break
            }
            usleep(1000)
        }
        #expect(sawProgress, "zeroing reports bytes as it goes")
        try operation.cancel()
        let error = #expect(throws: SiloError.self) { _ = try operation.wait(timeout: .seconds(60)) }
        #expect(error?.code == .operationCancelled)
        #expect(try storage.provider.luns().isEmpty)
        #expect(directoryEntries(storage.provider.configuration.poolDirectory).isEmpty)
        #expect(loopDevices(backedUnder: storage.path).isEmpty)
    }

    @Test("S7 the optional file system step: mkfs on the new device, label kept, a thick LUN's space kept (no discard)")
    func fileSystemStep() throws {
        let storage = TestStorage()
        defer { storage.finish() }
        try #require(LunFileSystem(.ext4).program != nil, "mkfs.ext4 (e2fsprogs) is not installed")
        let spec = LunSpec(name: "formatted", size: 48 << 20, provisioning: .thick, fileSystem: LunFileSystem(.ext4, label: "silo-data"))
        let operation = try storage.provider.createLun(spec)
        let lun = try operation.wait(timeout: .seconds(120))
        let device = try #require(lun.devicePath)
        // blkid -p reads the device itself: an independent reference.
        let probe = run("/sbin/blkid", ["-p", "-o", "export", device]).output
        #expect(probe.contains("TYPE=ext4"), "\(probe)")
        #expect(probe.contains("LABEL=silo-data"), "\(probe)")
        #expect(lun.allocatedBytes >= 48 << 20, "mkfs discarded the thick LUN's space: \(lun.allocatedBytes)")
        let mount = storage.path + "/mnt"
        #expect(mkdir(mount, 0o755) == 0)
        #expect(run("/bin/mount", [device, mount]).status == 0, "the file system mounts")
        #expect(run("/bin/umount", [mount]).status == 0)
        // xfs on 4096-byte sectors: mkfs learns the sector size from the device, not a file.
        try #require(LunFileSystem(.xfs).program != nil, "mkfs.xfs (xfsprogs) is not installed")
        let xfs = try storage.provider.createLun(LunSpec(name: "xfs", size: 320 << 20, logicalBlockSize: 4096,
                                                           fileSystem: LunFileSystem(.xfs))).wait(timeout: .seconds(120))
        let xfsProbe = run("/sbin/blkid", ["-p", "-o", "export", try #require(xfs.devicePath)]).output
        #expect(xfsProbe.contains("TYPE=xfs") && xfsProbe.contains("BLOCK_SIZE=4096"), "\(xfsProbe)")
    }

    @Test("S7 a file system mkfs refuses rolls the create back; bad file system input changes nothing")
    func fileSystemFailure() throws {
        let storage = TestStorage()
        defer { storage.finish() }
        try #require(LunFileSystem(.xfs).program != nil, "mkfs.xfs (xfsprogs) is not installed")
        // mkfs.xfs refuses a file system under 300 MB, after the device is attached.
        let error = #expect(throws: SiloError.self) {
            _ = try storage.provider.createLun(LunSpec(name: "small", size: 16 << 20, fileSystem: LunFileSystem(.xfs)))
                .wait(timeout: .seconds(120))
        }
        #expect(error?.field == "file system")
        #expect(error?.message.contains("300") == true, "mkfs's own reason is in the error: \(error?.message ?? "")")
        #expect(error?.message.contains("Usage") == false)
        #expect(error?.message.contains("/proc/self/fd") == false, "the error names the device")
        #expect(try storage.provider.luns().isEmpty)
        #expect(directoryEntries(storage.provider.configuration.poolDirectory).isEmpty)
        #expect(loopDevices(backedUnder: storage.path).isEmpty)
        #expect(directoryEntries(storage.path + "/state/dev").isEmpty)
        // Refused before anything is made.
        let refusals: [(LunSpec, String, SiloError.Code)] = [
            (LunSpec(name: "ro", size: 1 << 20, readOnly: true, fileSystem: LunFileSystem(.ext4)), "file system", .invalidArgument),
            (LunSpec(name: "label", size: 1 << 20, fileSystem: LunFileSystem(.ext4, label: String(repeating: "x", count: 17))), "label", .invalidArgument),
            (LunSpec(name: "label", size: 1 << 20, fileSystem: LunFileSystem(.xfs, label: "thirteen-long")), "label", .invalidArgument),
            (LunSpec(name: "label", size: 1 << 20, fileSystem: LunFileSystem(.ext4, label: "a\nb")), "label", .invalidArgument),
            (LunSpec(name: "label", size: 1 << 20, fileSystem: LunFileSystem(.ext4, label: "")), "label", .invalidArgument),
        ]
        for (spec, field, code) in refusals {
            let refused = #expect(throws: SiloError.self) { _ = try storage.provider.createLun(spec) }
            #expect(refused?.field == field && refused?.code == code, "\(spec.name): \(String(describing: refused))")
        }
        #expect((#expect(throws: SiloError.self) { try LunFileSystem.Kind.parse("zfs") })?.field == "file system")
        #expect(try LunFileSystem.Kind.parse("EXT4") == .ext4)
        #expect(try storage.provider.luns().isEmpty)
        #expect(directoryEntries(storage.provider.configuration.poolDirectory).isEmpty)
    }

    @Test("S7 mkfs writes only to the LUN's own device; a cancel kills it")
    func fileSystemOnlyOnOwnDevice() throws {
        let scratch = Scratch()
        defer { scratch.cleanup() }
        try #require(LunFileSystem(.ext4).program != nil, "mkfs.ext4 (e2fsprogs) is not installed")
        let file = scratch.path + "/foreign.img"
        try makeSparseFile(file, size: 16 << 20)
        let path = run("/sbin/losetup", ["-f", "--show", file]).output.trimmingSpaces
        try #require(path.hasPrefix("/dev/loop"))
        defer { _ = run("/sbin/losetup", ["-d", path]) }
        let device = try #require(LoopDevice(path: path))
        let error = #expect(throws: SiloError.self) {
            try LunFileSystem(.ext4).make(on: device, tag: "silo:not-this-one", cancelled: { false })
        }
        #expect(error?.code == .deviceInUse)
        #expect(try readBytes(file, offset: 0, count: 16 << 20).allSatisfy { $0 == 0 }, "nothing was written to a foreign device")
        // With its own tag (as if it were the LUN's), a cancel that is already asked for kills mkfs.
        let tag = try #require(device.tag)
        let cancelled = #expect(throws: SiloError.self) {
            try LunFileSystem(.ext4).make(on: device, tag: tag, cancelled: { true })
        }
        #expect(cancelled?.code == .operationCancelled)
        // No mkfs child of this process is left, running or unreaped.
        let children = run("/bin/sh", ["-c", "grep -l '^PPid:[[:space:]]*\(getpid())$' /proc/[0-9]*/status 2>/dev/null | xargs -r grep -l '^Name:.*mkfs' || true"])
        #expect(children.output.trimmingSpaces.isEmpty, "mkfs outlived its cancel: \(children.output)")
    }

    @Test("S7 a create cancelled while its mkfs runs (after the attach) rolls back completely: no device, file, record or stable name")
    func cancelDuringFileSystem() throws {
        let storage = TestStorage()
        defer { storage.finish() }
        try #require(LunFileSystem(.xfs).program != nil, "mkfs.xfs (xfsprogs) is not installed")
        // A large thin LUN: mkfs.xfs writes its log and allocation groups for a while.
        let operation = try storage.provider.createLun(LunSpec(name: "formatting", size: 64 << 30, fileSystem: LunFileSystem(.xfs)))
        // mkfs is a child of one of this process's threads; it runs for some milliseconds only,
        // so it is looked for without starting a process, and stopped once found: the cancel
        // then surely comes while it runs.
        var mkfs: pid_t?
        for _ in 0..<200_000 where mkfs == nil && operation.status.isPending {
            for task in directoryEntries("/proc/self/task") {
                for child in (readSmallFile("/proc/self/task/\(task)/children") ?? "").split(separator: " ") {
                    if let pid = pid_t(child), readSmallFile("/proc/\(pid)/comm")?.hasPrefix("mkfs") == true {
                        kill(pid, SIGSTOP)
                        mkfs = pid
                    }
                }
            }
        }
        guard mkfs != nil, operation.status.isPending else {
            Issue.record("mkfs was not seen running: \(operation.status)")
            return
        }
        let device = loopDevices(backedUnder: storage.path).first
        #expect(device != nil, "attached before mkfs")
        try operation.cancel()
        let failed = #expect(throws: SiloError.self) { _ = try operation.wait(timeout: .seconds(60)) }
        #expect(failed?.code == .operationCancelled, "\(String(describing: failed))")
        #expect(try storage.provider.luns().isEmpty)
        #expect(directoryEntries(storage.provider.configuration.poolDirectory).filter { $0.hasSuffix(".img") }.isEmpty)
        #expect(loopDevices(backedUnder: storage.path).isEmpty, "the attach was rolled back")
        #expect(!fileExists(storage.provider.configuration.linkDirectory + "/formatting"))
        #expect(eventually { mkfs.map { kill($0, 0) != 0 } ?? true }, "mkfs is gone")
    }

    @Test("S7 mkfs is started tied to its caller: it dies with the process (the thread) that waits for it")
    func mkfsDiesWithCaller() throws {
        var report: [Int32] = [-1, -1]
        #expect(silo_pipe2(&report, O_CLOEXEC) == 0)
        let words: [String] = ["/bin/sleep", "100"]
        let argv: [UnsafeMutablePointer<CChar>?] = words.map { strdup($0) } + [nil]
        let envp: [UnsafeMutablePointer<CChar>?] = [nil]
        defer { argv.forEach { free($0) } }
        // A process that starts it the way LunFileSystem does, says its pid, and dies.
        let starter = fork()
        if starter == 0 {
            var pid = silo_spawn_tied("/bin/sleep", argv, envp, [-1, -1, -1], 3)
            _ = write(report[1], &pid, 4)
            _exit(0)
        }
        try #require(starter > 0)
        close(report[1])
        var pid: Int32 = 0
        #expect(read(report[0], &pid, 4) == 4 && pid > 0)
        close(report[0])
        waitpid(starter, nil, 0)
        let gone = eventually {
            let state = readSmallFile("/proc/\(pid)/stat") ?? ""
            return state.isEmpty || state.contains(") Z ")
        }
        if !gone { kill(pid, SIGKILL) }
        #expect(gone, "the started process outlived its starter")
    }

    @Test("O8 S12 a delete or an offline cancelled while queued takes its mark back: the LUN is as it was and can be changed at once")
    func cancelQueuedChanges() throws {
        let storage = SerialStorage()
        defer { storage.finish() }
        let provider = storage.provider
        let device = try #require(try provider.createLun(LunSpec(name: "q", size: 8 << 20)).wait(timeout: .seconds(60)).devicePath)
        let (delete, offline) = try storage.whileWorkerHeld { () throws -> (SiloOperation<Void>, SiloOperation<LunProperties>) in
            let delete = try provider.deleteLun("q")
            try delete.cancel()  // still queued: withdrawn, its mark taken back
            let offline = try provider.setOnline("q", false)
            try offline.cancel()
            return (delete, offline)
        }
        #expect((#expect(throws: SiloError.self) { try delete.wait(timeout: .seconds(10)) })?.code == .operationCancelled)
        #expect((#expect(throws: SiloError.self) { _ = try offline.wait(timeout: .seconds(10)) })?.code == .operationCancelled)
        let lun = try provider.lun(named: "q")
        #expect(lun.status == .online && lun.devicePath == device)
        // A mark left behind would refuse these (anotherCallInProgress) for as long as this process lives.
        #expect(try provider.extendLun("q", by: 1 << 20).wait(timeout: .seconds(60)).size == 9 << 20)
        _ = try provider.lease("q", holder: "compute system 'after'").release()
        try provider.deleteLun("q").wait(timeout: .seconds(60))
        #expect(try provider.luns().isEmpty)
    }

    @Test("S10 a lease taken after an offline's first check stops it before the unbind; a LUN being deleted is not leased")
    func leaseAfterFirstCheck() throws {
        let storage = SerialStorage()
        defer { storage.finish() }
        let provider = storage.provider
        let device = try #require(try provider.createLun(LunSpec(name: "shared", size: 8 << 20)).wait(timeout: .seconds(60)).devicePath)
        // The offline's operation waits, its check done (no lease yet), while a system takes one.
        let (offline, lease) = try storage.whileWorkerHeld {
            (try provider.setOnline("shared", false), try provider.lease("shared", holder: "compute system 'late'"))
        }
        let refused = #expect(throws: SiloError.self) { _ = try offline.wait(timeout: .seconds(30)) }
        #expect(refused?.code == .deviceInUse && refused?.message.contains("compute system 'late'") == true, "\(String(describing: refused))")
        #expect(try provider.lun(named: "shared").devicePath == device, "the leased LUN kept its device")
        #expect(loopDevices(backedUnder: storage.path).map(\.path) == [device])
        // A forced shrink answers for a mount or data the caller knows of, not for a system's lease.
        let forced = #expect(throws: SiloError.self) { _ = try provider.shrinkLun("shared", by: 4 << 20, force: true).wait(timeout: .seconds(30)) }
        #expect(forced?.code == .deviceInUse && forced?.message.contains("compute system 'late'") == true, "\(String(describing: forced))")
        #expect(try provider.lun(named: "shared").size == 8 << 20 && BackingFile.size(try provider.lun(named: "shared").backingFile) == 8 << 20)
        lease.release()

        let delete = try storage.whileWorkerHeld { () throws -> SiloOperation<Void> in
            let delete = try provider.deleteLun("shared")
            let busy = #expect(throws: SiloError.self) { _ = try provider.lease("shared", holder: "compute system 'later'") }
            #expect(busy?.code == .anotherCallInProgress, "\(String(describing: busy))")
            return delete
        }
        try delete.wait(timeout: .seconds(30))
        #expect(loopDevices(backedUnder: storage.path).isEmpty)
        #expect(directoryEntries(storage.path + "/state/leases").isEmpty)
    }

    @Test("S7 a failing step rolls back the steps before it")
    func failedProvisioning() throws {
        let scratch = Scratch()
        defer {
            for device in loopDevices(backedUnder: scratch.path) { _ = try? device.detach() }  // a failed rollback's
            scratch.cleanup()
        }
        // The stable-name folder is a file, so the "link" step fails after attach.
        let links = scratch.path + "/links"
        try makeSparseFile(links, size: 0)
        let provider = StorageProvider(configuration: StorageConfiguration(
            stateDirectory: scratch.path + "/state", linkDirectory: links
        ))
        let error = #expect(throws: SiloError.self) {
            _ = try provider.createLun(LunSpec(name: "doomed", size: 4 << 20)).wait(timeout: .seconds(60))
        }
        #expect(error?.syscall == "mkdir" || error?.syscall == "symlink")
        #expect(try provider.luns().isEmpty)
        #expect(directoryEntries(provider.configuration.poolDirectory).isEmpty)
        #expect(loopDevices(backedUnder: scratch.path).isEmpty)
    }

    @Test("S7 a register that failed after its record's rename (the folder's fsync) is undone by the cleanup: no ready record with no device, no file")
    func registerFailedAfterRename() throws {
        let storage = TestStorage()
        defer { storage.finish() }
        let provider = storage.provider
        _ = try storage.create("torn")
        var record = try #require(try provider.registry.load("torn"))
        record.owner = try ProcessIdentity.current(operation: "createLun")  // the chain's record names its provisioning
        // What the chain's rollbacks leave when "register" throws after the rename: the device
        // unbound, the name unlinked, the record ready.
        let device = try #require(LoopDevice.bound(naming: record.id).first)
        try device.detach(expecting: record.tag)
        provider.unlinkName("torn")
        // Another LUN's record under the name is never touched.
        var other = record
        other.id = "00000000-0000-0000-0000-000000000000"
        #expect(provider.reopenRegistration(other) == nil)
        #expect(try provider.registry.load("torn")?.state == .ready, "another provisioning's record stays")
        #expect(provider.reopenRegistration(record) == nil)
        let reopened = try provider.registry.load("torn")
        #expect(reopened?.state == .creating && reopened?.device == nil)
        #expect(reopened?.owner != nil && reopened?.owner == record.owner, "the provisioning owns it again: a reenumerate leaves it to the rollback")
        try provider.undoReservation(record, file: record.backingFile)
        #expect(try provider.registry.load("torn") == nil, "no record")
        #expect(!fileExists(record.backingFile), "no backing file")
    }

    @Test("S13 another state directory's stable names live in /dev, gone with a reboot as their devices are: <state>/dev links there; the folder goes with the last name; an older folder of names is moved")
    func namesInDev() throws {
        let storage = TestStorage()
        defer { storage.finish() }
        let configuration = storage.provider.configuration
        let target = try #require(configuration.linkTarget)
        let links = storage.path + "/state/dev"
        // As an older Silo left it: a folder on the disk, with a name in it.
        #expect(mkdir(storage.path + "/state", 0o700) == 0 || errno == EEXIST)
        #expect(mkdir(links, 0o755) == 0 && symlink("/dev/loop999", links + "/old") == 0)
        let lun = try storage.create("named", size: 8 << 20)
        #expect(resolveLink(links) == target, "\(links) links to \(target)")
        #expect(resolveLink(links + "/named") == lun.devicePath && resolveLink(target + "/named") == lun.devicePath)
        #expect(resolveLink(links + "/old") == "/dev/loop999", "the older folder's name was moved")
        #expect(silo_fs_type(target) == 0x0102_1994, "a devtmpfs (tmpfs) folder: gone at a reboot")
        try storage.provider.deleteLun("named").wait(timeout: .seconds(30))
        #expect(fileExists(target), "a name is left (old): the folder stays")
        unlink(target + "/old")
        _ = try storage.create("again", size: 8 << 20)
        try storage.provider.deleteLun("again").wait(timeout: .seconds(30))
        #expect(!fileExists(target), "the last name took its folder in /dev with it")
    }

    @Test("S13 a shared link folder: a file with a LUN's name is never replaced, other files never swept, a link elsewhere never removed")
    func sharedLinkFolder() throws {
        let scratch = Scratch()
        defer { scratch.cleanup() }
        let links = scratch.path + "/links"
        #expect(mkdir(links, 0o755) == 0)
        #expect(writeFile(links + "/taken", "the user's"))
        #expect(writeFile(links + "/notes", "the user's"))
        #expect(symlink("/dev/null", links + "/elsewhere") == 0)
        let provider = StorageProvider(configuration: StorageConfiguration(stateDirectory: scratch.path + "/state", linkDirectory: links))
        defer {
            for lun in (try? provider.luns()) ?? [] { _ = try? provider.deleteLun(lun.name).wait(timeout: .seconds(60)) }
        }
        let refused = #expect(throws: SiloError.self) { _ = try provider.createLun(LunSpec(name: "taken", size: 4 << 20)).wait(timeout: .seconds(60)) }
        #expect(refused?.field == "name" && refused?.message.contains("leaves it alone") == true, "\(String(describing: refused))")
        #expect(readFile(links + "/taken").map { String(decoding: $0, as: UTF8.self) } == "the user's")
        #expect(try provider.luns().isEmpty && loopDevices(backedUnder: scratch.path).isEmpty, "rolled back")
        let lun = try provider.createLun(LunSpec(name: "mine", size: 4 << 20)).wait(timeout: .seconds(60))
        #expect(resolveLink(links + "/mine") == lun.devicePath)
        let report = try provider.reenumerate().wait(timeout: .seconds(60))
        #expect(report.linksFixed.isEmpty, "\(report.linksFixed)")
        #expect(fileExists(links + "/notes") && resolveLink(links + "/elsewhere") == "/dev/null")
        try provider.deleteLun("mine").wait(timeout: .seconds(60))
        #expect(resolveLink(links + "/mine") == nil && fileExists(links + "/taken"))
    }

    @Test("S8 extend grows the device online while it stays attached and mounted")
    func extendOnline() throws {
        let storage = TestStorage()
        defer { storage.finish() }
        let lun = try storage.create("grow", size: 64 << 20)
        let device = try #require(lun.devicePath)
        #expect(run("/sbin/mkfs.ext4", ["-q", "-F", device]).status == 0)
        let mountPoint = storage.path + "/mnt"
        mkdir(mountPoint, 0o755)
        #expect(run("/bin/mount", [device, mountPoint]).status == 0)
        defer { _ = run("/bin/umount", [mountPoint]) }
        let operation = try storage.provider.extendLun("grow", by: 32 << 20)
        #expect(operation.type == .extendLun)
        let grown = try operation.wait(timeout: .seconds(60))
        #expect(grown.size == 96 << 20)
        #expect(grown.devicePath == device)
        #expect(readNumber("/sys/block/\(device.dropFirst(5))/size").map { $0 * 512 } == 96 << 20)
        #expect(InUse.mountPoints(of: LoopDevice(number: Int(device.dropFirst(9))!).deviceNumber ?? "").contains(mountPoint))
        let toSize = try storage.provider.extendLun("grow", to: 100 << 20).wait()
        #expect(toSize.size == 100 << 20)
        #expect((#expect(throws: SiloError.self) { _ = try storage.provider.extendLun("grow", to: 1 << 20) })?.field == "to")
    }

    @Test("S9 S10 a shrink whose LUN a system took after the call's check is refused at its cut, and nothing is cut")
    func shrinkAfterLease() throws {
        let storage = SerialStorage()
        defer { storage.finish() }
        let provider = storage.provider
        let lun = try provider.createLun(LunSpec(name: "taken", size: 16 << 20)).wait(timeout: .seconds(60))
        let (shrink, lease) = try storage.whileWorkerHeld {
            (try provider.shrinkLun("taken", by: 1 << 20), try provider.lease("taken", holder: "compute system 'late'"))
        }
        defer { lease.release() }
        let refused = #expect(throws: SiloError.self) { _ = try shrink.wait(timeout: .seconds(30)) }
        #expect(refused?.code == .deviceInUse && refused?.message.contains("compute system 'late'") == true, "\(String(describing: refused))")
        var info = stat()
        #expect(stat(lun.backingFile, &info) == 0 && info.st_size == 16 << 20, "the file was cut under a leased LUN")
        #expect(try provider.lun(named: "taken").size == 16 << 20)
    }

    @Test("S5 S8 two thin extends at once cannot promise more than the pool may; a cancelled extend gives its growth back")
    func concurrentThinExtends() throws {
        let storage = SerialStorage()
        defer { storage.finish() }
        let provider = storage.provider
        _ = try provider.createLun(LunSpec(name: "a", size: 8 << 20)).wait(timeout: .seconds(60))
        _ = try provider.createLun(LunSpec(name: "b", size: 8 << 20)).wait(timeout: .seconds(60))
        let room = try provider.maximumLunSize(provisioning: .thin)
        let half = room / 2 + (1 << 20)
        // The first extend's operation waits, its check done, while the second is checked.
        let first = try storage.whileWorkerHeld { () throws -> SiloOperation<LunProperties> in
            let first = try provider.extendLun("a", by: half)
            let second = #expect(throws: SiloError.self) { _ = try provider.extendLun("b", by: half) }
            #expect(second?.code == .notEnoughSpace, "the first extend's growth counts before its operation runs: \(String(describing: second))")
            return first
        }
        #expect(try first.wait(timeout: .seconds(30)).size == (8 << 20) + half)

        // Cancelled before it runs: the file, the record and what the pool may promise are as before.
        let before = try provider.maximumLunSize(provisioning: .thin)
        let cancelled = try storage.whileWorkerHeld { () throws -> SiloOperation<LunProperties> in
            let cancelled = try provider.extendLun("b", by: 4 << 20)
            try cancelled.cancel()
            return cancelled
        }
        #expect((#expect(throws: SiloError.self) { _ = try cancelled.wait(timeout: .seconds(30)) })?.code == .operationCancelled)
        let b = try provider.lun(named: "b")
        #expect(b.size == 8 << 20)
        var info = stat()
        #expect(stat(b.backingFile, &info) == 0 && info.st_size == 8 << 20, "the reserved growth was given back")
        #expect(try provider.maximumLunSize(provisioning: .thin) == before)
    }

    @Test("S9 shrink keeps the data before the new end and refuses to cut data or a mounted file system")
    func shrink() throws {
        let storage = TestStorage()
        defer { storage.finish() }
        let lun = try storage.create("cut", size: 64 << 20)
        let device = try #require(lun.devicePath)
        let pattern = (0..<4096).map { UInt8(truncatingIfNeeded: $0 * 7) }
        try writeBytes(device, offset: 1 << 20, pattern)
        let shrunk = try storage.provider.shrinkLun("cut", by: 16 << 20).wait(timeout: .seconds(60))
        #expect(shrunk.size == 48 << 20)
        #expect(readNumber("/sys/block/\(device.dropFirst(5))/size").map { $0 * 512 } == 48 << 20)
        #expect(try readBytes(device, offset: 1 << 20, count: 4096) == pattern)
        for bytes: UInt64 in [0, 48 << 20, 1 << 40] {
            #expect((#expect(throws: SiloError.self) { _ = try storage.provider.shrinkLun("cut", by: bytes) })?.code == .invalidShrinkSize)
        }
        // A file system over the whole device: shrinking would cut it.
        #expect(run("/sbin/mkfs.ext4", ["-q", "-F", device]).status == 0)
        let overData = #expect(throws: SiloError.self) { _ = try storage.provider.shrinkLun("cut", by: 8 << 20) }
        #expect(overData?.code == .shrinkOverData)
        #expect(overData?.message.contains("ext4") == true)
        let mountPoint = storage.path + "/mnt"
        mkdir(mountPoint, 0o755)
        #expect(run("/bin/mount", [device, mountPoint]).status == 0)
        let mounted = #expect(throws: SiloError.self) { _ = try storage.provider.shrinkLun("cut", by: 8 << 20) }
        #expect(mounted?.code == .shrinkOverData)
        #expect(run("/bin/umount", [mountPoint]).status == 0)
        let forced = try storage.provider.shrinkLun("cut", by: 8 << 20, force: true).wait()
        #expect(forced.size == 40 << 20)
        // A small file system with room after it: the shrink that spares it is allowed.
        let second = try storage.create("fits", size: 64 << 20)
        #expect(run("/sbin/mkfs.ext4", ["-q", "-F", try #require(second.devicePath), "16M"]).status == 0)
        #expect(try storage.provider.shrinkLun("fits", by: 32 << 20).wait().size == 32 << 20)
    }

    @Test("S9 a write past the new end while a shrink runs cannot grow the file back: the device is cut before its file")
    func shrinkUnderWrites() throws {
        let storage = TestStorage()
        defer { storage.finish() }
        let device = try #require(try storage.create("written", size: 64 << 20).devicePath)
        // A writer that keeps writing the last block before the size the main thread names: in
        // the LUN until its shrink, past its new end after.
        let target = Atomic<Int64>(-1)
        let written = Atomic<Int>(0)
        let stop = Atomic<Bool>(false)
        let done = DispatchSemaphore(value: 0)
        let fd = open(device, O_RDWR | silo_O_DIRECT | O_CLOEXEC)
        try #require(fd >= 0)
        defer { close(fd) }
        DispatchQueue.global().async {
            let block = UnsafeMutableRawPointer.allocate(byteCount: 4096, alignment: 4096)
            block.initializeMemory(as: UInt8.self, repeating: 0x5a, count: 4096)
            while !stop.load(ordering: .relaxed) {
                let offset = target.load(ordering: .relaxed)
                if offset >= 0, pwrite(fd, block, 4096, off_t(offset)) == 4096 { written.add(1, ordering: .relaxed) }
            }
            block.deallocate()
            done.signal()
        }
        var size: UInt64 = 64 << 20
        var failures: [String] = []
        var idleRounds = 0
        for _ in 0..<24 {
            target.store(Int64(size) - 4096, ordering: .relaxed)
            // The writer writes inside the LUN before each shrink (else the race is never run).
            let before = written.load(ordering: .relaxed)
            // Up to 30 s: under software emulation a write can take far longer than here.
            let deadline = ContinuousClock.now + .seconds(30)
            while written.load(ordering: .relaxed) == before, ContinuousClock.now < deadline { usleep(100) }
            if written.load(ordering: .relaxed) == before { idleRounds += 1 }
            do {
                size = try storage.provider.shrinkLun("written", by: 1 << 20).wait(timeout: .seconds(30)).size
            } catch {
                failures.append("\(error)")
                break
            }
        }
        stop.store(true, ordering: .relaxed)
        done.wait()
        #expect(failures.isEmpty, "a shrink failed under writes: \(failures)")
        #expect(idleRounds == 0, "\(idleRounds) shrinks ran with no write landing before them")
        let lun = try storage.provider.lun(named: "written")
        #expect(lun.size == 40 << 20 && size == 40 << 20, "record \(lun.size), last shrink \(size)")
        #expect(BackingFile.size(lun.backingFile) == 40 << 20, "the file grew back")
        #expect(readNumber("/sys/block/\(device.dropFirst(5))/size").map { $0 * 512 } == 40 << 20)
        // The cap is gone with the shrink: an extend still grows the device.
        #expect(try storage.provider.extendLun("written", by: 1 << 20).wait(timeout: .seconds(30)).size == 41 << 20)
        #expect(readNumber("/sys/block/\(device.dropFirst(5))/size").map { $0 * 512 } == 41 << 20)
    }

    @Test("S9 the shrink guard reads an offline LUN at its own sector size, keeps a GPT's backup header, and refuses a LUN in use or an amount past the size")
    func shrinkGuard() throws {
        let storage = TestStorage()
        defer { storage.finish() }
        try #require(access("/sbin/sfdisk", X_OK) == 0, "sfdisk (fdisk) is not installed")
        func partition(_ device: String, _ script: String) {
            let made = run("/bin/sh", ["-c", "printf '\(script)' | /sbin/sfdisk -q --no-reread \(device)"])
            #expect(made.status == 0, "sfdisk: \(made.output)")
        }
        // An MBR on 4096-byte sectors, its one partition from 1 to 60 MiB of 64; read from the
        // file at 512-byte sectors it would seem to end before 8 MiB.
        let dos = try #require(try storage.create("dos4k", size: 64 << 20, blockSize: 4096).devicePath)
        partition(dos, "label: dos\\nstart=256, size=15104\\n")
        _ = try storage.provider.setOnline("dos4k", false).wait(timeout: .seconds(30))
        let cut = #expect(throws: SiloError.self) { _ = try storage.provider.shrinkLun("dos4k", by: 8 << 20) }
        #expect(cut?.code == .shrinkOverData, "\(String(describing: cut))")
        #expect(try storage.provider.shrinkLun("dos4k", by: 4 << 20).wait(timeout: .seconds(30)).size == 60 << 20, "the cut that spares it")
        // An empty GPT: its backup header is the device's last sectors.
        let gpt = try #require(try storage.create("gpt", size: 64 << 20).devicePath)
        partition(gpt, "label: gpt\\n")
        #expect((#expect(throws: SiloError.self) { _ = try storage.provider.shrinkLun("gpt", by: 1 << 20) })?.code == .shrinkOverData)
        // No signature at all, but held open exclusively (a mapping over it, a file system that
        // another mount namespace holds): nothing says where its data ends.
        let held = try #require(try storage.create("held", size: 64 << 20).devicePath)
        let holder = open(held, O_RDONLY | O_EXCL | O_CLOEXEC)
        try #require(holder >= 0)
        let busy = #expect(throws: SiloError.self) { _ = try storage.provider.shrinkLun("held", by: 1 << 20) }
        close(holder)
        #expect(busy?.code == .shrinkOverData && busy?.message.contains("in use") == true, "\(String(describing: busy))")
        // Amounts near UInt64.max were rounded up to the block size before the check, and trapped.
        for bytes in [UInt64.max, UInt64.max - 100] {
            #expect((#expect(throws: SiloError.self) { _ = try storage.provider.shrinkLun("held", by: bytes) })?.code == .invalidShrinkSize)
        }
        #expect(try storage.provider.shrinkLun("held", by: 1 << 20).wait(timeout: .seconds(30)).size == 63 << 20)
    }

    @Test("S5 the overcommit ratio sets what thin LUNs may promise; one that is not a positive number is a clear error, not a crash; a huge one is capped")
    func overcommitRatios() throws {
        let scratch = Scratch()
        defer { scratch.cleanup() }
        for ratio in [Double.nan, -1, 0, Double.infinity] {
            let provider = StorageProvider(configuration: StorageConfiguration(stateDirectory: scratch.path + "/state", overcommitRatio: ratio))
            let error = #expect(throws: SiloError.self) { _ = try provider.maximumLunSize(provisioning: .thin) }
            #expect(error?.field == "overcommit ratio", "\(ratio): \(String(describing: error))")
            #expect((#expect(throws: SiloError.self) { _ = try provider.createLun(LunSpec(name: "x", size: 1 << 20)) })?.field == "overcommit ratio")
        }
        let huge = StorageProvider(configuration: StorageConfiguration(stateDirectory: scratch.path + "/state", overcommitRatio: 1e300))
        #expect(try huge.maximumLunSize(provisioning: .thin) <= ByteCount.maximum)
        // The ratio is what thin LUNs may promise: four times the pool at 4, once at 1.
        let one = try StorageProvider(configuration: StorageConfiguration(stateDirectory: scratch.path + "/state", overcommitRatio: 1))
            .maximumLunSize(provisioning: .thin)
        let four = try StorageProvider(configuration: StorageConfiguration(stateDirectory: scratch.path + "/state", overcommitRatio: 4))
            .maximumLunSize(provisioning: .thin)
        #expect(one > 0 && four / 4 >= one - (1 << 20) && four / 4 <= one + (1 << 20), "ratio 1: \(one), ratio 4: \(four)")
        #expect(directoryEntries(scratch.path + "/state/pool").isEmpty)
    }

    @Test("S10 a handle's delete, extend and shrink check its LUN's id under the registry lock: a LUN made again under the name is not touched")
    func handleChecksIDUnderLock() throws {
        let storage = TestStorage()
        defer { storage.finish() }
        let first = try storage.provider.open(try storage.create("reused", size: 8 << 20).name)
        try storage.provider.deleteLun("reused").wait(timeout: .seconds(30))
        let second = try storage.create("reused", size: 8 << 20)
        // The calls a handle makes after its own check, as if the name changed hands in between.
        let calls: [() throws -> Void] = [
            { _ = try storage.provider.deleteLun("reused", force: false, id: first.id, context: nil, callback: nil) },
            { _ = try storage.provider.extendLun("reused", by: 1 << 20, to: nil, id: first.id, context: nil, callback: nil) },
            { _ = try storage.provider.shrinkLun("reused", by: 1 << 20, force: true, id: first.id, context: nil, callback: nil) },
        ]
        for call in calls {
            #expect((#expect(throws: SiloError.self) { try call() })?.code == .objectDeleted)
        }
        let now = try storage.provider.lun(named: "reused")
        #expect(now.id == second.id && now.size == second.size && now.devicePath == second.devicePath, "the new LUN is untouched")
        #expect((#expect(throws: SiloError.self) { _ = try first.delete() })?.code == .objectDeleted)
    }

    @Test("S10 delete refuses a mounted or exclusively held LUN; afterwards the handle throws objectDeleted and no listing (LUNs, drives' extents) has it")
    func deleteRules() throws {
        let storage = TestStorage()
        defer { storage.finish() }
        let lun = try storage.create("gone", size: 32 << 20)
        let device = try #require(lun.devicePath)
        let handle = try storage.provider.open("gone")
        func extents() throws -> [DriveExtent] { try storage.provider.drives().flatMap(\.extents).filter { $0.lun == "gone" } }
        #expect(try extents().map(\.backingFile) == [lun.backingFile], "its pool's drive lists the LUN's file")
        let holder = open(device, O_RDONLY | O_EXCL | O_CLOEXEC)
        try #require(holder >= 0)
        let held = #expect(throws: SiloError.self) { _ = try storage.provider.deleteLun("gone") }
        #expect(held?.code == .deviceInUse)
        close(holder)
        let mkfs = execute("/sbin/mkfs.ext4", ["-q", "-F", device])
        #expect(mkfs.status == 0, "\(mkfs.error)")
        let mountPoint = storage.path + "/mnt"
        mkdir(mountPoint, 0o755)
        #expect(run("/bin/mount", [device, mountPoint]).status == 0)
        let mounted = #expect(throws: SiloError.self) { _ = try storage.provider.deleteLun("gone") }
        #expect(mounted?.code == .deviceInUse)
        #expect(mounted?.message.contains(mountPoint) == true)
        #expect(run("/bin/umount", [mountPoint]).status == 0)
        try storage.provider.deleteLun("gone").wait(timeout: .seconds(30))
        #expect((#expect(throws: SiloError.self) { _ = try handle.properties() })?.code == .objectDeleted)
        #expect((#expect(throws: SiloError.self) { _ = try storage.provider.lun(named: "gone") })?.code == .objectNotFound)
        #expect(try storage.provider.luns().isEmpty)
        #expect(try extents().isEmpty, "no drive lists the deleted LUN's file")
        #expect(!fileExists(lun.backingFile))
        #expect(LoopDevice(number: Int(device.dropFirst(9))!).status?.backingFile != lun.backingFile)
        // A new LUN of the same name is another object: the old handle stays deleted.
        _ = try storage.create("gone")
        #expect((#expect(throws: SiloError.self) { _ = try handle.properties() })?.code == .objectDeleted)
    }

    @Test("S11 unmasking lists: * and empty stand alone, duplicates drop, setMask replaces")
    func masks() throws {
        #expect(try UnmaskingList.parse("*") == .everyone)
        #expect(try UnmaskingList.parse("") == .nobody)
        #expect(try UnmaskingList.parse("a;b;a") == .systems(["a", "b"]))
        #expect(try UnmaskingList.parse("a,b;c") == .systems(["a", "b", "c"]), "a command line's commas separate too")
        #expect((#expect(throws: SiloError.self) { try UnmaskingList.parse("a,*") })?.value == "a,*", "the error shows the list as given")
        for bad in ["*;a", "a;*", "a;;b", ";a", "a;", "a b", "a/b"] {
            #expect((#expect(throws: SiloError.self) { try UnmaskingList.parse(bad) })?.code == .invalidArgument, "\(bad)")
        }
        #expect(UnmaskingList.systems(["web"]).contains(system: "web"))
        #expect(!UnmaskingList.systems(["web"]).contains(system: "db"))
        #expect(UnmaskingList.everyone.contains(system: "any"))
        #expect(!UnmaskingList.nobody.contains(system: "any"))
        let storage = TestStorage()
        defer { storage.finish() }
        _ = try storage.create("masked")
        #expect(try storage.provider.setMask("masked", "web;db").unmaskingList == "web;db")
        #expect(try storage.provider.setMask("masked", "api").unmaskingList == "api")
        #expect(try storage.provider.lun(named: "masked").unmaskingList == "api")
        let badMask = #expect(throws: SiloError.self) { try storage.provider.setMask("masked", "*;x") }
        #expect(badMask?.code == .invalidArgument && badMask?.field == "unmasking list" && badMask?.value == "*;x", "\(String(describing: badMask))")
        #expect(try storage.provider.lun(named: "masked").unmaskingList == "api", "a refused mask changes nothing")
    }

    @Test("S12 a second state-changing call while one runs throws anotherCallInProgress")
    func oneCallAtATime() throws {
        let storage = TestStorage()
        defer { storage.finish() }
        _ = try storage.create("busy", size: 8 << 20, provisioning: .zeroed)
        let slow = try storage.provider.extendLun("busy", by: 2 << 30)
        let error = #expect(throws: SiloError.self) { _ = try storage.provider.shrinkLun("busy", by: 1 << 20) }
        #expect(error?.code == .anotherCallInProgress)
        #expect((#expect(throws: SiloError.self) { _ = try storage.provider.deleteLun("busy") })?.code == .anotherCallInProgress)
        #expect((#expect(throws: SiloError.self) { try storage.provider.setMask("busy", "*") })?.code == .anotherCallInProgress)
        try? slow.cancel()
        _ = try? slow.wait(timeout: .seconds(120))
        #expect(try storage.provider.lun(named: "busy").size == 8 << 20, "the cancelled extend rolled back")
        #expect(BackingFile.size(try storage.provider.lun(named: "busy").backingFile) == 8 << 20,
                "and its file, cut back by the step the cancel interrupted")
        _ = try storage.provider.shrinkLun("busy", by: 1 << 20).wait()
    }

    @Test("S12 a running delete keeps other changes off with its mark; a failed delete takes its mark away; a dead deleter's mark is settled")
    func deleteMark() throws {
        let storage = TestStorage()
        defer { storage.finish() }
        let lun = try storage.create("gone", size: 8 << 20)
        let registry = storage.provider.registry
        let mark = storage.path + "/state/luns/.gone.deleting"
        // A delete running in another process (a live one, not this one): its mark is there.
        let child = fork()
        if child == 0 { while true { pause() } }  // the deleter: alive until killed below
        try #require(child > 0)
        var childReaped = false
        defer { if !childReaped { kill(child, SIGKILL); waitpid(child, nil, 0) } }  // also when a check throws
        let owner = LunRecord.Owner(pid: child, startTime: try #require(ProcessIdentity.startTime(of: child)), operation: "deleteLun")
        try registry.locked { () throws(SiloError) in try registry.placeMark(.deleting, "gone", owner: owner) }
        #expect(fileExists(mark))
        #expect((#expect(throws: SiloError.self) { _ = try storage.provider.extendLun("gone", by: 1 << 20) })?.code == .anotherCallInProgress)
        #expect((#expect(throws: SiloError.self) { _ = try storage.provider.deleteLun("gone") })?.code == .anotherCallInProgress)
        #expect((#expect(throws: SiloError.self) { try storage.provider.setMask("gone", "*") })?.code == .anotherCallInProgress)
        #expect(try storage.provider.lun(named: "gone").status == .online, "reading it is no change")
        let settled = try storage.provider.reenumerate().wait(timeout: .seconds(60))
        #expect(fileExists(mark) && settled.repaired.isEmpty, "a live deleter's mark stays")
        // The deleter dies: its mark no longer holds anything, and reenumerate removes it.
        kill(child, SIGKILL)
        waitpid(child, nil, 0)
        childReaped = true
        #expect(try storage.provider.setMask("gone", "*").unmaskingList == "*")
        let report = try storage.provider.reenumerate().wait(timeout: .seconds(60))
        #expect(report.repaired == ["gone: deleteLun of a dead process settled"] && !fileExists(mark), "\(report.repaired)")

        // A delete the unbind refuses (the device held open meanwhile) takes its mark away again.
        let device = try #require(lun.devicePath)
        let held = open(device, O_RDONLY | O_CLOEXEC)
        try #require(held >= 0)
        let name = storage.provider.configuration.linkDirectory + "/gone"
        let refused = #expect(throws: SiloError.self) { try storage.provider.deleteLun("gone").wait(timeout: .seconds(30)) }
        #expect(refused?.code == .deviceInUse && !fileExists(mark), "\(String(describing: refused))")
        // The stable name went before the unbind (a freed number is the next attach's, anyone's)
        // and came back with the device that stayed; so with an offline the same open refuses.
        #expect(resolveLink(name) == device, "the stable name leads to the device again")
        let offline = #expect(throws: SiloError.self) { _ = try storage.provider.setOnline("gone", false).wait(timeout: .seconds(30)) }
        close(held)
        #expect(offline?.code == .deviceInUse && resolveLink(name) == device, "\(String(describing: offline))")
        #expect(try storage.provider.setMask("gone", "web").unmaskingList == "web", "the LUN is no longer marked")
        try storage.provider.deleteLun("gone").wait(timeout: .seconds(30))
        #expect(!fileExists(mark) && (try? storage.provider.lun(named: "gone")) == nil)
    }

    @Test("S15 a thick LUN's extend killed before it allocated is settled with its growth allocated, as its record promises")
    func deadThickExtendSettled() throws {
        let storage = TestStorage()
        defer { storage.finish() }
        let lun = try storage.create("thick", size: 8 << 20, provisioning: .thick)
        // As an extend killed after it grew the file and before it allocated the growth.
        #expect(truncate(lun.backingFile, 16 << 20) == 0)
        try storage.placeDeadMark("thick", operation: "extendLun")
        let report = try storage.provider.reenumerate().wait(timeout: .seconds(60))
        #expect(report.repaired.contains { $0.hasPrefix("thick:") }, "\(report.repaired)")
        let settled = try storage.provider.lun(named: "thick")
        #expect(settled.size == 16 << 20)
        #expect(settled.allocatedBytes >= 16 << 20, "the growth was left sparse: \(settled.allocatedBytes)")
        #expect(readNumber("/sys/block/\(settled.devicePath?.dropFirst(5) ?? "")/size").map { $0 * 512 } == 16 << 20)
    }

    @Test("S15 a thick extend killed past its point of no return (file allocated, device grown) keeps its growth and what was written there, even when the pool has no room for the growth again")
    func deadThickExtendPastPointOfNoReturn() throws {
        let storage = TestStorage()
        defer { storage.finish() }
        let small = try storage.scratch.smallFileSystem(size: "24m")
        defer {
            // Its LUN first, even when a check failed: a device on the file system keeps it mounted.
            _ = try? storage.provider.deleteLun("grown", force: true).wait(timeout: .seconds(60))
            _ = run("/bin/umount", [small])
        }
        _ = try storage.provider.addPool("small", directory: small)
        let lun = try storage.provider.createLun(LunSpec(name: "grown", size: 8 << 20, provisioning: .thick, pool: "small"))
            .wait(timeout: .seconds(60))
        let device = try #require(lun.devicePath)
        // As an extend killed after it allocated the growth and resized the device: data written
        // past the old end since.
        try BackingFile.allocate(lun.backingFile, from: 8 << 20, to: 16 << 20)
        try LoopDevice(number: try #require(Int(device.dropFirst("/dev/loop".count)))).refreshCapacity()
        let pattern = (0..<4096).map { UInt8(truncatingIfNeeded: $0 * 13) }
        try writeBytes(device, offset: 12 << 20, pattern)
        try storage.placeDeadMark("grown", operation: "extendLun")
        // The pool now has less free than the growth: allocating it again would not fit.
        let filler = small + "/filler"
        _ = run("/bin/dd", ["if=/dev/zero", "of=\(filler)", "bs=1M", "count=6"])
        defer { unlink(filler) }
        let report = try storage.provider.reenumerate().wait(timeout: .seconds(60))
        #expect(report.repaired.contains { $0.hasPrefix("grown:") }, "\(report.repaired)")
        let settled = try storage.provider.lun(named: "grown")
        #expect(settled.size == 16 << 20 && BackingFile.size(lun.backingFile) == 16 << 20, "\(settled.size)")
        #expect(try readBytes(device, offset: 12 << 20, count: 4096) == pattern, "what was written past the old end is kept")
        unlink(filler)
        try storage.provider.deleteLun("grown").wait(timeout: .seconds(60))
        try storage.provider.removePool("small")
    }

    @Test("S13 S15 an offline LUN with a device bound: an `online` killed after its attach is finished; any other such device is detached")
    func offlineWithDevice() throws {
        let storage = TestStorage()
        defer { storage.finish() }
        _ = try storage.create("back", size: 8 << 20)
        _ = try storage.provider.setOnline("back", false).wait(timeout: .seconds(30))
        let record = try #require(try storage.provider.registry.load("back"))
        #expect(!record.online && record.device == nil)
        // As an online killed after its attach, before its record said so.
        let attached = try LoopDevice.attach(backing: record.backingFile, options: record.loopOptions).device
        try storage.placeDeadMark("back", operation: "online")
        let report = try storage.provider.reenumerate().wait(timeout: .seconds(60))
        #expect(report.repaired.count == 1 && report.repaired.first?.hasPrefix("back: online of dead pid") == true, "\(report.repaired)")
        let online = try storage.provider.lun(named: "back")
        #expect(online.status == .online && online.devicePath == attached.path, "\(online)")
        #expect(try #require(try storage.provider.registry.load("back")).online)
        // Offline again; a device bound to it with no call behind it (an attach whose stable name
        // failed) goes.
        _ = try storage.provider.setOnline("back", false).wait(timeout: .seconds(30))
        let stray = try LoopDevice.attach(backing: record.backingFile, options: record.loopOptions).device
        let swept = try storage.provider.reenumerate().wait(timeout: .seconds(60))
        #expect(swept.repaired == ["back: offline, its device \(stray.path) detached"], "\(swept.repaired)")
        #expect(stray.status == nil, "detached")
        let offline = try storage.provider.lun(named: "back")
        #expect(offline.status == .offline && offline.devicePath == nil, "\(offline)")
    }

    @Test("S13 S15 an `offline` killed after its detach, before its record said so, is finished by reenumerate: the LUN stays offline, not attached again; `online` puts a missing stable name back")
    func deadOfflineFinished() throws {
        let storage = TestStorage()
        defer { storage.finish() }
        let lun = try storage.create("away", size: 8 << 20)
        let record = try #require(try storage.provider.registry.load("away"))
        let device = try #require(storage.provider.attachedDevice(record, everywhere: true))
        // As an offline killed between its detach and its record write.
        try storage.placeDeadMark("away", operation: "offline")
        #expect(try device.detach(expecting: record.tag))
        let report = try storage.provider.reenumerate().wait(timeout: .seconds(60))
        #expect(report.attached.isEmpty, "attached again: \(report)")
        #expect(report.repaired.contains { $0.hasPrefix("away: offline of dead pid") }, "\(report.repaired)")
        let after = try storage.provider.lun(named: "away")
        #expect(after.status == .offline && after.devicePath == nil, "\(after)")
        #expect(try #require(try storage.provider.registry.load("away")).online == false)
        #expect(loopDevices(backedUnder: storage.path).isEmpty, "no device over its file")
        #expect(!fileExists(try #require(lun.link)), "no stable name")
        // And online again on request.
        let back = try storage.provider.setOnline("away", true).wait(timeout: .seconds(30))
        #expect(back.status == .online && back.devicePath != nil)
        // An online of an online LUN whose stable name is gone (an offline killed between its
        // unlink and its detach, or a hand) puts the name back.
        let link = try #require(back.link)
        #expect(unlink(link) == 0)
        let again = try storage.provider.setOnline("away", true).wait(timeout: .seconds(30))
        #expect(again.devicePath == back.devicePath && resolveLink(link) == back.devicePath, "the stable name is back")
    }

    @Test("S13 a copy of a state directory (a backup restored beside it) names the original's LUN files: its reenumerate touches none of them nor their devices, and says so")
    func copiedStateDirectoryLeavesOriginalAlone() throws {
        let storage = TestStorage()
        defer { storage.finish() }
        _ = try storage.create("twin", size: 8 << 20)
        // Copied while offline; online again in the original since.
        _ = try storage.provider.setOnline("twin", false).wait(timeout: .seconds(30))
        let copyState = storage.path + "/copy"
        #expect(run("/bin/cp", ["-a", storage.provider.configuration.stateDirectory, copyState]).status == 0)
        let original = try storage.provider.setOnline("twin", true).wait(timeout: .seconds(30))
        let device = try #require(original.devicePath)
        let copy = StorageProvider(configuration: StorageConfiguration(stateDirectory: copyState))
        defer { if let names = copy.configuration.linkTarget { _ = run("/bin/rm", ["-rf", names]) } }
        // Its records name the original's files, in the original's pool: not the copy's to touch.
        let report = try copy.reenumerate().wait(timeout: .seconds(60))
        #expect(report.drift.contains { $0.hasPrefix("twin: its file \(original.backingFile) is in a pool of the state directory \(storage.provider.configuration.stateDirectory)") }, "\(report)")
        #expect(report.attached.isEmpty && report.linksFixed.isEmpty && report.rolledBack.isEmpty, "\(report)")
        // The original is as it was: its device bound to its file, its stable name on it.
        let after = try storage.provider.lun(named: "twin")
        #expect(after.status == .online && after.devicePath == device)
        #expect(readSmallFile("/sys/block/\(device.dropFirst(5))/loop/backing_file") == original.backingFile)
        #expect(original.link.map(resolveLink) == device)
    }

    @Test("E3 an extend or shrink by nothing, or an extend given both by and to, changes nothing: not even a dead change is settled first")
    func badAmountsSettleNothing() throws {
        let storage = TestStorage()
        defer { storage.finish() }
        let lun = try storage.create("pending", size: 8 << 20)
        // As an extend killed after it grew the file: the next change would settle it.
        #expect(truncate(lun.backingFile, 16 << 20) == 0)
        try storage.placeDeadMark("pending", operation: "extendLun")
        let registry = storage.provider.registry
        let calls: [(String, SiloError.Code, () throws -> Void)] = [
            ("extend by 0", .invalidArgument, { _ = try storage.provider.extendLun("pending", by: 0) }),
            ("extend by and to", .invalidArgument, { _ = try storage.provider.extendLun("pending", by: 1 << 20, to: 32 << 20) }),
            ("extend by neither", .invalidArgument, { _ = try storage.provider.extendLun("pending") }),
            ("shrink by 0", .invalidShrinkSize, { _ = try storage.provider.shrinkLun("pending", by: 0) }),
        ]
        for (what, code, call) in calls {
            let error = #expect(throws: SiloError.self, "\(what)") { try call() }
            #expect(error?.code == code, "\(what): \(String(describing: error))")
            #expect(registry.mark(.changing, "pending") != nil, "\(what) settled the dead change")
            #expect(try registry.load("pending")?.size == 8 << 20, "\(what) changed the record")
        }
    }

    @Test("S9 S15 a size cap a shrink left on its device (killed between cap and uncap) goes at the settling, and at the next extend")
    func leftoverCapRemoved() throws {
        let storage = TestStorage()
        defer { storage.finish() }
        let lun = try storage.create("capped", size: 16 << 20)
        let path = try #require(lun.devicePath)
        let device = try #require(LoopDevice(path: path))
        let record = try #require(try storage.provider.registry.load("capped"))
        func deviceSize() -> UInt64? { readNumber("/sys/block/\(path.dropFirst(5))/size").map { $0 * 512 } }
        // As a shrink by 8 MiB killed after it capped the device, before it cut the file.
        try device.limitSize(to: 8 << 20, expecting: record.tag)
        try #require(deviceSize() == 8 << 20)
        try storage.placeDeadMark("capped", operation: "shrinkLun")
        let report = try storage.provider.reenumerate().wait(timeout: .seconds(60))
        #expect(report.repaired.contains { $0.hasPrefix("capped:") }, "\(report.repaired)")
        #expect(try storage.provider.lun(named: "capped").size == 16 << 20)
        #expect(deviceSize() == 16 << 20, "the cap outlived the settling")
        // A cap with no mark left (the settling came before this fix): the next extend takes it away.
        try device.limitSize(to: 16 << 20, expecting: record.tag)
        #expect(try storage.provider.extendLun("capped", by: 4 << 20).wait(timeout: .seconds(30)).size == 20 << 20)
        #expect(deviceSize() == 20 << 20, "the cap held the device back")
    }

    @Test("S12 ending a change takes away its own change mark only, never one another call placed since: of another process, or of this one (a provisioning's end)")
    func endChangeKeepsOthersMark() throws {
        let storage = TestStorage()
        defer { storage.finish() }
        _ = try storage.create("shared", size: 8 << 20)
        let registry = storage.provider.registry
        let other = fork()
        if other == 0 { while true { pause() } }
        try #require(other > 0)
        defer { kill(other, SIGKILL); waitpid(other, nil, 0) }
        let owner = LunRecord.Owner(pid: other, startTime: try #require(ProcessIdentity.startTime(of: other)), operation: "extendLun")
        try registry.locked { () throws(SiloError) in try registry.placeMark(.changing, "shared", owner: owner) }
        // A late second end of a change of this process's (a failure path's).
        try storage.provider.endChange("shared", mark: 1)
        #expect(registry.mark(.changing, "shared")?.pid == other, "another process's mark was taken away")
        #expect((#expect(throws: SiloError.self) { try storage.provider.setMask("shared", "*") })?.code == .anotherCallInProgress)
        registry.removeMark(.changing, "shared")
        // Another thread's change of this process: a provisioning's end (which placed no mark) and
        // a late end of an earlier change leave it; its own end takes it away.
        let change = try storage.provider.beginChange("shared", operation: "extendLun")
        try storage.provider.endChange("shared", mark: nil)
        try storage.provider.endChange("shared", mark: change.mark &+ 1)
        #expect(registry.mark(.changing, "shared")?.change == change.mark, "this process's other call's mark was taken away")
        #expect((#expect(throws: SiloError.self) { try storage.provider.setMask("shared", "*") })?.code == .anotherCallInProgress)
        try storage.provider.endChange("shared", mark: change.mark)
        #expect(registry.mark(.changing, "shared") == nil)
        #expect(try storage.provider.setMask("shared", "*").unmaskingList == "*")
    }

    @Test("S12 a live delete's mark holds even while a dead change's mark is still in the record")
    func deleteMarkBesideDeadOwner() throws {
        let storage = TestStorage()
        defer { storage.finish() }
        _ = try storage.create("marked", size: 8 << 20)
        let registry = storage.provider.registry
        // A change whose process died: its mark stays in the record until reenumerate settles it.
        let dead = fork()
        if dead == 0 { _exit(0) }
        waitpid(dead, nil, 0)
        var record = try #require(try registry.load("marked"))
        record.owner = LunRecord.Owner(pid: dead, startTime: 1, operation: "extendLun")
        try registry.locked { () throws(SiloError) in try registry.save(record, durable: false) }
        // A delete running in a live process: its mark is beside the record.
        let deleter = fork()
        if deleter == 0 { while true { pause() } }
        try #require(deleter > 0)
        defer {
            kill(deleter, SIGKILL)
            waitpid(deleter, nil, 0)
        }
        let owner = LunRecord.Owner(pid: deleter, startTime: try #require(ProcessIdentity.startTime(of: deleter)), operation: "deleteLun")
        try registry.locked { () throws(SiloError) in try registry.placeMark(.deleting, "marked", owner: owner) }
        #expect((#expect(throws: SiloError.self) { _ = try storage.provider.extendLun("marked", by: 1 << 20) })?.code == .anotherCallInProgress)
        #expect((#expect(throws: SiloError.self) { _ = try storage.provider.deleteLun("marked") })?.code == .anotherCallInProgress)
        #expect(try storage.provider.lun(named: "marked").size == 8 << 20)
        kill(deleter, SIGKILL)
        waitpid(deleter, nil, 0)
        let report = try storage.provider.reenumerate().wait(timeout: .seconds(60))
        #expect(report.repaired.count == 2, "both dead marks settled: \(report.repaired)")
        #expect(try storage.provider.setMask("marked", "*").unmaskingList == "*")
    }

    @Test("S12 S15 a change marks its LUN beside the record, never rewriting it; a dead change's mark is settled from the file's size")
    func changeMarks() throws {
        let storage = TestStorage()
        defer { storage.finish() }
        let lun = try storage.create("grown", size: 8 << 20)
        let record = storage.path + "/state/luns/grown.json"
        let mark = storage.path + "/state/luns/.grown.changing"
        var before = stat()
        try #require(stat(record, &before) == 0)
        let change = try storage.provider.beginChange("grown", operation: "extendLun")
        var during = stat()
        try #require(stat(record, &during) == 0)
        #expect(during.st_ino == before.st_ino, "the record itself is not rewritten by the mark")
        #expect(fileExists(mark))
        #expect((#expect(throws: SiloError.self) { try storage.provider.setMask("grown", "*") })?.code == .anotherCallInProgress)
        try storage.provider.endChange("grown", mark: change.mark)
        var after = stat()
        try #require(stat(record, &after) == 0)
        #expect(!fileExists(mark) && after.st_ino == before.st_ino, "a change that changed nothing writes nothing")

        // An extend whose process died after it grew the file: its mark stays, the record says
        // 8 MiB. Reenumerate settles it from the file's size.
        let dead = fork()
        if dead == 0 { _exit(0) }
        waitpid(dead, nil, 0)
        let deadExtend = LunRecord.Owner(pid: dead, startTime: 1, operation: "extendLun")
        try storage.provider.registry.locked { () throws(SiloError) in
            try storage.provider.registry.placeMark(.changing, "grown", owner: deadExtend)
        }
        #expect(truncate(lun.backingFile, 12 << 20) == 0)
        let report = try storage.provider.reenumerate().wait(timeout: .seconds(60))
        #expect(report.repaired == ["grown: extendLun of dead pid \(dead) settled"], "\(report.repaired)")
        #expect(!fileExists(mark))
        #expect(try storage.provider.lun(named: "grown").size == 12 << 20)

        // Again, with no reenumerate: the next change settles it before it works out its own size.
        try storage.provider.registry.locked { () throws(SiloError) in
            try storage.provider.registry.placeMark(.changing, "grown", owner: deadExtend)
        }
        #expect(truncate(lun.backingFile, 16 << 20) == 0)
        let extended = try storage.provider.extendLun("grown", by: 1 << 20).wait(timeout: .seconds(60))
        #expect(extended.size == 17 << 20, "from the 16 MiB the dead extend left, not the record's 12")
        #expect(BackingFile.size(lun.backingFile) == 17 << 20 && !fileExists(mark))
    }

    @Test("S12 S15 a change's mark is in place before its first effect (a thin extend's growth of the file); a refused change leaves none")
    func markBeforeEffect() throws {
        let storage = TestStorage()
        defer { storage.finish() }
        let lun = try storage.create("early", size: 8 << 20)
        let mark = storage.path + "/state/luns/.early.changing"
        // What a thin extend does in its check: grows the file. Were the process killed there, a
        // mark must already say so, or nothing would settle the growth.
        var markedWhenChecked = false
        let change = try storage.provider.beginChange("early", operation: "extendLun") { _ in markedWhenChecked = fileExists(mark) }
        #expect(markedWhenChecked, "the mark was placed after the check")
        try storage.provider.endChange("early", mark: change.mark)
        #expect(!fileExists(mark))

        // A check that refuses: no mark stays, the LUN is free for the next change.
        let refused = #expect(throws: SiloError.self) {
            _ = try storage.provider.beginChange("early", operation: "extendLun") { _ throws(SiloError) in
                throw SiloError.invalidArgument(field: "by", value: "0", reason: "test refusal")
            }
        }
        #expect(refused?.code == .invalidArgument)
        #expect(!fileExists(mark), "a refused change left its mark")
        #expect(try storage.provider.setMask("early", "*").unmaskingList == "*")

        // The extend, whose check grows the file under that mark, still works as before.
        let extended = try storage.provider.extendLun("early", by: 4 << 20).wait(timeout: .seconds(60))
        #expect(extended.size == 12 << 20 && BackingFile.size(lun.backingFile) == 12 << 20)
    }

    @Test("S13 S15 reenumerate that cannot read the registry changes nothing: no LUN's device or file is swept as an orphan")
    func reenumerateUnreadRegistry() throws {
        let storage = TestStorage()
        defer { storage.finish() }
        let lun = try storage.create("kept", size: 16 << 20)
        let device = try #require(lun.devicePath)
        let configuration = storage.provider.configuration
        // Without CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH, root lists a folder it may write to
        // and search but not read no more than anyone: the listing fails (EACCES), as one would
        // under EMFILE, ENOMEM or EIO. An unread listing taken for an empty one made every LUN's
        // device and file an orphan: detached and deleted.
        try #require(chmod(configuration.registryDirectory, 0o300) == 0)
        let blind = execute("/usr/bin/setpriv", ["--bounding-set=-dac_override,-dac_read_search", siloBinary,
                                                 "--state-dir", configuration.stateDirectory, "storage", "reenumerate"])
        chmod(configuration.registryDirectory, 0o700)
        #expect(blind.status == 1 && blind.error.contains(configuration.registryDirectory), "\(blind)")
        #expect(fileExists(lun.backingFile), "the LUN's file is no orphan")
        #expect(LoopDevice(number: Int(device.dropFirst(9))!).status?.backingFile == lun.backingFile, "its device stays bound")
        #expect(try storage.provider.lun(named: "kept").status == .online)
        // With the registry readable again, reenumerate finds nothing to do.
        let report = try storage.provider.reenumerate().wait(timeout: .seconds(60))
        #expect(report == ReenumerateReport(), "\(report)")
    }

    @Test("S13 S15 reenumerate leaves alone a LUN that a live call is changing: its device stays attached")
    func reenumerateSparesLiveChange() throws {
        let storage = TestStorage()
        defer { storage.finish() }
        let lun = try storage.create("changing", size: 8 << 20)
        let device = try #require(lun.devicePath)
        // This process is in the middle of a change to it (an extend between its steps, say).
        let change = try storage.provider.beginChange("changing", operation: "extendLun")
        let report = try storage.provider.reenumerate().wait(timeout: .seconds(60))
        #expect(report.orphanDevicesDetached.isEmpty, "\(report.orphanDevicesDetached)")
        #expect(readSmallFile("/sys/block/\(device.dropFirst(5))/loop/backing_file") == lun.backingFile, "still attached")
        try storage.provider.endChange("changing", mark: change.mark)
        #expect(try storage.provider.lun(named: "changing").status == .online)
    }

    @Test("S13 S15 reenumerate reports a damaged record and sweeps no orphan while it is there; it removes what killed writers left")
    func damagedRecordAndLeftovers() throws {
        let storage = TestStorage()
        defer { storage.finish() }
        let broken = try storage.create("broken", size: 4 << 20)
        _ = try storage.create("fine", size: 4 << 20)
        let registryFolder = storage.path + "/state/luns"
        let recordPath = registryFolder + "/broken.json"
        let original = try #require(readSmallFile(recordPath))
        #expect(writeFile(recordPath, "{\"name\": \"broken\", "))  // a torn write
        let orphan = storage.path + "/state/pool/0a0b0c0d-0e0f-4000-8000-000000000001.img"
        try makeSparseFile(orphan, size: 1 << 20)
        let report = try storage.provider.reenumerate().wait(timeout: .seconds(60))
        #expect(report.drift.contains { $0.contains(recordPath) && $0.contains("damaged") }, "\(report.drift)")
        #expect(fileExists(broken.backingFile) && fileExists(orphan), "nothing swept while a record is damaged")
        #expect(readSmallFile("/sys/block/\(try #require(broken.devicePath).dropFirst(5))/loop/backing_file") == broken.backingFile)
        #expect(resolveLink(storage.provider.configuration.linkDirectory + "/broken") == broken.devicePath)
        #expect(writeFile(recordPath, original))
        let repaired = try storage.provider.reenumerate().wait(timeout: .seconds(60))
        #expect(repaired.orphanFilesRemoved == [orphan] && !fileExists(orphan))

        // A record's temporary copy and a stable name's, left by a process that died; this
        // process's own stay.
        let dead = fork()
        if dead == 0 { _exit(0) }
        waitpid(dead, nil, 0)
        let deadTemporary = registryFolder + "/.fine.json.\(dead).tmp"
        let liveTemporary = registryFolder + "/.fine.json.\(getpid()).tmp"
        let deadLink = storage.provider.configuration.linkDirectory + "/.fine.\(dead)"
        // A user's hidden file of that shape in the link folder is none of Silo's.
        let usersFile = storage.provider.configuration.linkDirectory + "/.history.\(dead)"
        #expect(writeFile(deadTemporary, "{") && writeFile(liveTemporary, "{") && writeFile(usersFile, "mine"))
        #expect(symlink("/dev/loop0", deadLink) == 0)
        // A fresh one stays: its pid may be another pid namespace's, its writer still at work.
        let fresh = try storage.provider.reenumerate().wait(timeout: .seconds(60))
        #expect(fileExists(deadTemporary) && resolveLink(deadLink) != nil && fresh.repaired.isEmpty, "\(fresh.repaired)")
        // A minute old, it is a dead writer's.
        var old = [timespec(tv_sec: time(nil) - 120, tv_nsec: 0), timespec(tv_sec: time(nil) - 120, tv_nsec: 0)]
        for path in [deadTemporary, liveTemporary, deadLink, usersFile] { #expect(utimensat(AT_FDCWD, path, &old, AT_SYMLINK_NOFOLLOW) == 0) }
        let cleaned = try storage.provider.reenumerate().wait(timeout: .seconds(60))
        #expect(!fileExists(deadTemporary) && resolveLink(deadLink) == nil && fileExists(liveTemporary))
        #expect(readSmallFile(usersFile) == "mine", "a user's file stays")
        #expect(cleaned.repaired.count == 2, "\(cleaned.repaired)")
        unlink(liveTemporary)
        unlink(usersFile)
    }

    @Test("S13 a state directory reached through a link: its LUNs show their devices, and reenumerate attaches no second one")
    func stateDirectoryThroughLink() throws {
        let scratch = Scratch()
        defer {
            for device in loopDevices(backedUnder: scratch.path) { _ = try? device.detach() }
            scratch.cleanup()
        }
        try #require(mkdir(scratch.path + "/real", 0o700) == 0 && symlink(scratch.path + "/real", scratch.path + "/link") == 0)
        let provider = StorageProvider(configuration: StorageConfiguration(stateDirectory: scratch.path + "/link"))
        let lun = try provider.createLun(LunSpec(name: "linked", size: 4 << 20)).wait(timeout: .seconds(60))
        defer { _ = try? provider.deleteLun("linked").wait(timeout: .seconds(30)) }
        #expect(lun.backingFile.hasPrefix(scratch.path + "/link/"), "the record keeps the path it was given")
        #expect(lun.status == .online && lun.devicePath != nil, "\(lun.status)")
        #expect(try provider.lun(named: "linked").status == .online)
        let report = try provider.reenumerate().wait(timeout: .seconds(60))
        #expect(report.attached.isEmpty && report.orphanDevicesDetached.isEmpty && report.orphanFilesRemoved.isEmpty, "\(report)")
        #expect(loopDevices(backedUnder: scratch.path + "/real").count == 1)
        try provider.deleteLun("linked").wait(timeout: .seconds(30))
        #expect(loopDevices(backedUnder: scratch.path + "/real").isEmpty)
    }

    @Test("S13 LUNs persist: another provider sees them; reenumerate re-attaches and reports drift")
    func persistence() throws {
        let storage = TestStorage()
        defer { storage.finish() }
        let lun = try storage.create("kept", size: 16 << 20)
        let other = StorageProvider(configuration: storage.provider.configuration)
        #expect(try other.lun(named: "kept").id == lun.id)
        // A "reboot": the device goes away behind Silo's back.
        try LoopDevice(number: Int(try #require(lun.devicePath).dropFirst(9))!).detach()
        #expect(try other.lun(named: "kept").status == .detached)
        // A foreign loop device over a file in the same scratch folder: never touched.
        let foreignFile = storage.path + "/foreign.img"
        try makeSparseFile(foreignFile, size: 4 << 20)
        let foreign = run("/sbin/losetup", ["-f", "--show", foreignFile]).output.trimmingSpaces
        defer { _ = run("/sbin/losetup", ["-d", foreign]) }
        let report = try other.reenumerate().wait(timeout: .seconds(60))
        #expect(report.attached == ["kept"])
        #expect(try storage.provider.lun(named: "kept").status == .online)
        #expect(readSmallFile("/sys/block/\(foreign.dropFirst(5))/loop/backing_file") == foreignFile)
        // Drift is reported, not hidden.
        _ = try storage.create("lost", size: 4 << 20)
        let lost = try storage.provider.lun(named: "lost")
        _ = try storage.provider.setOnline("lost", false).wait()
        unlink(lost.backingFile)
        let drift = try other.reenumerate().wait()
        #expect(drift.drift.contains { $0.contains("lost") && $0.contains("missing") })
        #expect(try storage.provider.lun(named: "lost").status == .missing)
        // A LUN left with no device (detached behind Silo's back, its file gone): its stable name
        // goes too, or it would name whatever device takes that number next.
        let stray = try storage.create("stray", size: 4 << 20)
        let link = storage.provider.configuration.linkDirectory + "/stray"
        #expect(resolveLink(link) == stray.devicePath)
        try LoopDevice(number: Int(try #require(stray.devicePath).dropFirst(9))!).detach()
        unlink(stray.backingFile)
        let strayReport = try other.reenumerate().wait()
        #expect(strayReport.drift.contains { $0.contains("stray") && $0.contains("missing") })
        #expect(resolveLink(link) == nil && strayReport.linksFixed.contains("stray"))
        #expect(strayReport.repaired.isEmpty, "the drift says it all, no correction was made: \(strayReport.repaired)")
    }

    @Test("S13 after a reboot (devices and /dev/silo gone, the old number taken by another tool) reenumerate re-attaches each LUN as it was: its data, block size, record and stable name")
    func rebootReattach() throws {
        let storage = TestStorage()
        defer { storage.finish() }
        let lun = try storage.create("boot", size: 16 << 20, blockSize: 4096)
        let old = try #require(lun.devicePath)
        try writeBytes(old, offset: 4096 * 3, [9, 8, 7, 6])
        // The reboot: the device goes, and the stable names' folder with it (it lives in /dev).
        try LoopDevice(number: Int(old.dropFirst(9))!).detach()
        let links = storage.provider.configuration.linkDirectory
        _ = run("/bin/rm", ["-rf", links])
        // Another tool's device takes the old number.
        let foreignFile = storage.path + "/other.img"
        try makeSparseFile(foreignFile, size: 4 << 20)
        let foreign = run("/sbin/losetup", ["--show", old, foreignFile]).output.trimmingSpaces
        try #require(foreign == old, "losetup took \(foreign), not \(old)")
        defer { _ = run("/sbin/losetup", ["-d", foreign]) }
        let report = try storage.provider.reenumerate().wait(timeout: .seconds(60))
        #expect(report.attached == ["boot"], "\(report)")
        let after = try storage.provider.lun(named: "boot")
        let device = try #require(after.devicePath)
        #expect(device != old, "the other tool's device is not the LUN's")
        #expect(resolveLink(links + "/boot") == device, "the stable name names the new device")
        #expect(readSmallFile("/sys/block/\(device.dropFirst(5))/queue/logical_block_size") == "4096")
        #expect(try readBytes(device, offset: 4096 * 3, count: 4) == [9, 8, 7, 6])
        #expect(readSmallFile("/sys/block/\(old.dropFirst(5))/loop/backing_file") == foreignFile, "left alone")
        // Another provider (another process) sees the same.
        #expect(try StorageProvider(configuration: storage.provider.configuration).lun(named: "boot").devicePath == device)
    }

    @Test("S13 a LUN's file bound by another tool is drift: reenumerate and online bind no second device over it, and leave that one alone")
    func foreignDeviceOnLunFile() throws {
        let storage = TestStorage()
        defer { storage.finish() }
        let lun = try storage.create("shared", size: 16 << 20)
        let file = lun.backingFile
        try writeBytes(try #require(lun.devicePath), offset: 8192, [7, 7, 7, 7])
        // A "reboot", and someone binds the LUN's file by hand before reenumerate runs.
        try LoopDevice(number: Int(try #require(lun.devicePath).dropFirst(9))!).detach()
        let foreign = run("/sbin/losetup", ["-f", "--show", file]).output.trimmingSpaces
        try #require(foreign.hasPrefix("/dev/loop"), "losetup: \(foreign)")
        var foreignBound = true
        defer { if foreignBound { _ = run("/sbin/losetup", ["-d", foreign]) } }
        let report = try storage.provider.reenumerate().wait(timeout: .seconds(60))
        #expect(report.attached.isEmpty, "\(report)")
        #expect(report.drift.contains { $0.contains("shared") && $0.contains(foreign) && $0.contains("not Silo's") }, "\(report.drift)")
        #expect(LoopDevice.bound(toFile: file).map(\.device.path) == [foreign], "one device over the file: the other tool's")
        #expect(readSmallFile("/sys/block/\(foreign.dropFirst(5))/loop/backing_file") == file, "the other tool's device is left alone")
        #expect(resolveLink(storage.provider.configuration.linkDirectory + "/shared") == nil, "the stable name names no device")
        // Online refuses as well, and binds nothing.
        _ = try storage.provider.setOnline("shared", false).wait()
        do {
            _ = try storage.provider.setOnline("shared", true).wait()
            Issue.record("online bound a second device over a file bound by another tool")
        } catch {
            #expect(error.code == .deviceInUse && error.message.contains(foreign), "\(error)")
        }
        #expect(LoopDevice.bound(toFile: file).count == 1)
        // Nor is its file removed or cut under that device: delete and shrink (forced too) refuse.
        for (what, call) in [
            ("delete", { () throws(SiloError) in try storage.provider.deleteLun("shared").wait() }),
            ("shrink", { () throws(SiloError) in _ = try storage.provider.shrinkLun("shared", by: 1 << 20).wait() }),
            ("forced shrink", { () throws(SiloError) in _ = try storage.provider.shrinkLun("shared", by: 1 << 20, force: true).wait() }),
        ] as [(String, () throws(SiloError) -> Void)] {
            do throws(SiloError) {
                try call()
                Issue.record("\(what) went ahead over a file another tool's device is bound to")
            } catch {
                #expect([.deviceInUse, .shrinkOverData].contains(error.code) && error.message.contains(foreign), "\(what): \(error)")
            }
        }
        #expect(fileExists(file) && BackingFile.size(file) == 16 << 20, "the file is whole")
        // A file with no record, bound by another tool: reenumerate keeps it and says so.
        let record = storage.provider.configuration.registryDirectory + "/shared.json"
        let saved = readSmallFile(record) ?? ""
        unlink(record)
        let orphaned = try storage.provider.reenumerate().wait(timeout: .seconds(60))
        #expect(!orphaned.orphanFilesRemoved.contains(file) && fileExists(file), "\(orphaned)")
        #expect(orphaned.drift.contains { $0.contains(file) && $0.contains(foreign) }, "\(orphaned.drift)")
        try #require(writeFile(record, saved))
        // With the other device gone, the LUN comes back, its data intact.
        _ = run("/sbin/losetup", ["-d", foreign])
        foreignBound = !eventually { readSmallFile("/sys/block/\(foreign.dropFirst(5))/loop/backing_file") == nil }
        let online = try storage.provider.setOnline("shared", true).wait()
        #expect(online.status == .online)
        #expect(try readBytes(try #require(online.devicePath), offset: 8192, count: 4) == [7, 7, 7, 7])
    }

    @Test("Offline detaches and keeps the data; online attaches again")
    func offlineOnline() throws {
        let storage = TestStorage()
        defer { storage.finish() }
        let lun = try storage.create("flip", size: 8 << 20)
        try writeBytes(try #require(lun.devicePath), offset: 4096, [1, 2, 3, 4])
        let offline = try storage.provider.setOnline("flip", false).wait()
        #expect(offline.status == .offline && offline.devicePath == nil)
        let online = try storage.provider.setOnline("flip", true).wait()
        #expect(online.status == .online)
        #expect(try readBytes(try #require(online.devicePath), offset: 4096, count: 4) == [1, 2, 3, 4])
    }

    @Test("A temporary LUN is a block device inside its scope and gone after it")
    func temporaryLun() throws {
        let scratch = Scratch()
        defer { scratch.cleanup() }
        let path = try withTemporaryLun(size: 8 << 20, directory: scratch.path) { lun in
            #expect(readNumber("/sys/block/\(lun.devicePath.dropFirst(5))/size").map { $0 * 512 } == 8 << 20)
            try writeBytes(lun.devicePath, offset: 0, [9, 9, 9])
            #expect(directoryEntries(scratch.path).isEmpty, "the backing file is unlinked once attached")
            return lun.devicePath
        }
        #expect(eventually { readSmallFile("/sys/block/\(path.dropFirst(5))/loop/backing_file")?.hasPrefix(scratch.path) != true })
    }
    @Test("S13 a LUN bound where its record does not say (a run killed before its record write) is found there: shown online, never bound twice, unbound by delete")
    func staleDeviceNumber() throws {
        let storage = TestStorage()
        defer { storage.finish() }
        let lun = try storage.create("moved")
        let device = try #require(lun.devicePath)
        let registry = storage.provider.registry
        // The record names a device that is not the LUN's (the last one the kernel has, unbound or another's).
        let other = try #require(LoopDevice.all().last { $0.path != device }).number
        var record = try #require(try registry.load("moved"))
        record.device = other
        try registry.locked { () throws(SiloError) in try registry.save(record) }
        #expect(try storage.provider.lun(named: "moved").devicePath == device, "found on its real device")
        #expect(try storage.provider.lun(named: "moved").status == .online)
        let online = try storage.provider.setOnline("moved", true).wait(timeout: .seconds(30))
        #expect(online.devicePath == device)
        #expect(loopDevices(backedUnder: storage.path).map(\.path) == [device], "bound once")
        #expect(try registry.load("moved")?.device == Int(device.dropFirst(9)), "online writes the real number back")
        // An online killed between its attach and its record write: the record still says
        // offline, with no device. A change looks for the device all the same.
        record.online = false
        record.device = nil
        try registry.locked { () throws(SiloError) in try registry.save(record) }
        let again = try storage.provider.setOnline("moved", true).wait(timeout: .seconds(30))
        #expect(again.devicePath == device, "online adopts the device it finds")
        #expect(loopDevices(backedUnder: storage.path).map(\.path) == [device], "bound once")
        try registry.locked { () throws(SiloError) in try registry.save(record) }
        _ = try storage.provider.deleteLun("moved").wait(timeout: .seconds(30))
        #expect(loopDevices(backedUnder: storage.path).isEmpty, "the delete unbound the device it found")
    }
    @Test("S13 reenumerate says what it corrects: a record naming a device that is not its LUN's, a second device bound to the LUN's file")
    func reenumerateReportsCorrections() throws {
        let storage = TestStorage()
        defer { storage.finish() }
        let lun = try storage.create("named")
        let device = try #require(lun.devicePath)
        let registry = storage.provider.registry
        var record = try #require(try registry.load("named"))
        let other = try #require(LoopDevice.all().last { $0.path != device }).number
        record.device = other
        try registry.locked { () throws(SiloError) in try registry.save(record) }
        let moved = try storage.provider.reenumerate().wait(timeout: .seconds(60))
        #expect(moved.repaired == ["named: its record named /dev/loop\(other), its device is \(device)"], "\(moved)")
        #expect(try registry.load("named")?.device == Int(device.dropFirst(9)))
        // The same file bound twice with the LUN's tag (an online killed before its record write,
        // and the LUN's device made again): the one the record names stays.
        let second = try LoopDevice.attach(backing: lun.backingFile, options: try #require(try registry.load("named")).loopOptions).device
        let twice = try storage.provider.reenumerate().wait(timeout: .seconds(60))
        #expect(twice.repaired == ["named: a second device bound to its file, \(second.path), detached"], "\(twice)")
        #expect(loopDevices(backedUnder: storage.path).map(\.path) == [device])
        let quiet = try storage.provider.reenumerate().wait(timeout: .seconds(60))
        #expect(quiet == ReenumerateReport(), "nothing left to say: \(quiet)")
    }

    @Test("S13 a device of Silo's whose record is gone (a registry restored from an old backup) is reported as drift while held, and detached once free")
    func orphanDevice() throws {
        let storage = TestStorage()
        defer { storage.finish() }
        let lun = try storage.create("lost")
        let device = try #require(lun.devicePath)
        #expect(unlink(storage.path + "/state/luns/lost.json") == 0)
        // Something has the device open exclusively (a mount would too): it cannot be unbound.
        var holder = open(device, O_RDONLY | O_EXCL | O_CLOEXEC)
        defer { if holder >= 0 { close(holder) } }
        try #require(holder >= 0)
        let held = try storage.provider.reenumerate().wait(timeout: .seconds(60))
        #expect(held.orphanDevicesDetached.isEmpty, "\(held)")
        #expect(held.drift.contains { $0.hasPrefix(device) && $0.contains("has no LUN but is in use") }, "\(held.drift)")
        #expect(readSmallFile("/sys/block/\(device.dropFirst(5))/loop/backing_file") != nil, "still bound")
        #expect(fileExists(lun.backingFile), "the held device's file is kept")
        close(holder)
        holder = -1
        let freed = try storage.provider.reenumerate().wait(timeout: .seconds(60))
        #expect(freed.orphanDevicesDetached.contains { $0.hasPrefix(device) }, "\(freed)")
        #expect(freed.drift.isEmpty, "\(freed.drift)")
        #expect(!fileExists(lun.backingFile), "its file goes with it")
        #expect(loopDevices(backedUnder: storage.path).isEmpty)
    }

    @Test("S7 S15 a create whose rollback finds its new device held keeps its record and file, and reenumerate finishes the rollback once the device is free", .requiresSiloBinary)
    func rollbackWithHeldDevice() throws {
        let storage = TestStorage()
        defer { storage.finish() }
        try #require(LunFileSystem(.ext4).program != nil, "mkfs.ext4 (e2fsprogs) is not installed")
        let state = storage.path + "/state"
        // A plain file where the stable name goes: the link step, after mkfs, fails, and the
        // attach is rolled back while this test holds the device open.
        #expect(mkdir(state, 0o755) == 0 && mkdir(state + "/dev", 0o755) == 0)
        #expect(writeFile(state + "/dev/held", "not a link\n"))
        var holder: Int32 = -1
        defer { if holder >= 0 { close(holder) } }  // before finish(): a held device cannot be unbound
        // The hold must come between the attach and the rollback (the time mkfs takes): one that
        // came after the rollback unbound the device (seen still bound, opened once unbound: a
        // loaded machine) proves nothing, and the create, rolled back whole, is made again.
        var outcome = Outcome(status: -1, output: "", error: "")
        for _ in 0..<10 {
            let child = spawn(siloBinary, ["--state-dir", state, "lun", "create", "--name", "held", "--size", "256M",
                                           "--filesystem", "ext4"])
            for _ in 0..<20_000 where holder < 0 {
                if let device = loopDevices(backedUnder: storage.path).first {
                    holder = open(device.path, O_RDONLY | O_CLOEXEC)
                    // Bound still, now that it is held: it stays bound until this close.
                    if holder >= 0, !fileExists("/sys/block/\(device.path.dropFirst(5))/loop/backing_file") {
                        close(holder)
                        holder = -1
                        break
                    }
                }
                if holder < 0 { usleep(500) }
            }
            outcome = child.finish()
            if holder >= 0 { break }
        }
        try #require(holder >= 0, "the create's device was never held before its rollback: \(outcome.error)")
        #expect(outcome.status == 64, "\(outcome.error)")
        #expect(outcome.error.contains("is there and is no link to a loop device"), "\(outcome.error)")
        #expect(outcome.error.contains("rollback: rollback of step 'attach' failed"), "\(outcome.error)")
        #expect(outcome.error.contains("rollback: cleanup failed: \(try #require(loopDevices(backedUnder: storage.path).first).path) of LUN 'held' could not be unbound"),
                "\(outcome.error)")
        // Kept: the bound device is found again by its record (by the tag), not lost with it.
        #expect(try storage.provider.luns().map(\.name) == ["held"])
        #expect(try storage.provider.registry.load("held")?.owner == nil, "given up: no live owner keeps reenumerate off it")
        #expect(directoryEntries(storage.provider.configuration.poolDirectory).count == 1)
        #expect(loopDevices(backedUnder: storage.path).count == 1)
        close(holder)
        holder = -1
        unlink(state + "/dev/held")
        let report = try storage.provider.reenumerate().wait(timeout: .seconds(60))
        #expect(report.drift.isEmpty, "\(report.drift)")
        #expect(try storage.provider.luns().isEmpty)
        #expect(directoryEntries(storage.provider.configuration.poolDirectory).isEmpty)
        #expect(loopDevices(backedUnder: storage.path).isEmpty)
    }
    @Test("S15 a LUN a process of another pid namespace is creating is left alone while that namespace lives, and settled once it is gone")
    func foreignOwner() throws {
        let storage = TestStorage()
        defer { storage.finish() }
        let provider = storage.provider
        let registry = provider.registry
        try #require(ProcessIdentity.pidNamespace == ProcessIdentity.initialPidNamespace, "needs the initial pid namespace")
        _ = try storage.create("mine")  // the registry and the pool are there
        // A live pid namespace of another process: unshare's child, pid 1 there.
        let sleeper = spawn("/usr/bin/unshare", ["--pid", "--fork", "/bin/sleep", "60"])
        var finished = false
        defer { if !finished { kill(sleeper.pid, SIGKILL); _ = sleeper.finish() } }
        let sleeping = try #require(firstChild(of: sleeper.pid), "unshare started no child")
        defer { kill(sleeping, SIGKILL) }
        var info = stat()
        try #require(stat("/proc/\(sleeping)/ns/pid", &info) == 0)
        let theirNamespace = UInt64(info.st_ino)
        // Two provisionings under way: one of that namespace (its pid means nothing here), and
        // the control, a dead process of this one.
        func reserve(_ name: String, namespace: UInt64?) throws -> String {
            let file = provider.configuration.poolDirectory + "/" + newIdentifier() + ".img"
            let id = String(file.split(separator: "/").last!.dropLast(4))
            let record = LunRecord(
                id: id, name: name, friendlyName: nil, size: 8 << 20, blockSize: 512, provisioning: .thin, readOnly: false,
                directIO: true, unmasking: .nobody, backingFile: file, pool: "default", state: .creating, online: true, device: nil,
                owner: LunRecord.Owner(pid: 4_000_000, startTime: 1, operation: "createLun", pidNamespace: namespace), createdAt: nowSeconds()
            )
            try registry.locked { () throws(SiloError) in try registry.save(record) }
            try BackingFile.create(file, size: 8 << 20)
            return file
        }
        let theirs = try reserve("theirs", namespace: theirNamespace)
        let gone = try reserve("gone", namespace: ProcessIdentity.pidNamespace)
        let report = try provider.reenumerate().wait(timeout: .seconds(60))
        #expect(report.rolledBack == ["gone"], "\(report)")
        #expect(!fileExists(gone))
        #expect(try provider.luns().map(\.name).sorted() == ["mine", "theirs"], "left alone while its namespace lives")
        #expect(fileExists(theirs))
        #expect(report.drift.contains { $0.hasPrefix("theirs: createLun by pid 4000000 of another pid namespace") }, "\(report.drift)")
        let refused = #expect(throws: SiloError.self) { _ = try provider.deleteLun("theirs").wait(timeout: .seconds(30)) }
        #expect(refused?.code == .anotherCallInProgress && refused?.message.contains("of another pid namespace") == true,
                "\(String(describing: refused))")
        // The namespace ends with its last process (a container gone, a reboot): its call is dead.
        kill(sleeping, SIGKILL)
        _ = sleeper.finish()
        finished = true
        let settled = try provider.reenumerate().wait(timeout: .seconds(60))
        #expect(settled.rolledBack == ["theirs"], "\(settled)")
        #expect(try provider.luns().map(\.name) == ["mine"])
        #expect(!fileExists(theirs))
    }

    @Test("S13 S15 a dead create whose file another tool's loop device holds is rolled back but for that file, which is kept and reported")
    func deadCreateUnderForeignDevice() throws {
        let storage = TestStorage()
        defer { storage.finish() }
        let provider = storage.provider
        _ = try storage.create("mine")  // the registry and the pool are there
        let file = provider.configuration.poolDirectory + "/" + newIdentifier() + ".img"
        let id = String(file.split(separator: "/").last!.dropLast(4))
        let record = LunRecord(
            id: id, name: "half", friendlyName: nil, size: 8 << 20, blockSize: 512, provisioning: .thin, readOnly: false,
            directIO: true, unmasking: .nobody, backingFile: file, pool: "default", state: .creating, online: true, device: nil,
            owner: LunRecord.Owner(pid: 4_000_000, startTime: 1, operation: "createLun", pidNamespace: ProcessIdentity.pidNamespace),
            createdAt: nowSeconds()
        )
        try provider.registry.locked { () throws(SiloError) in try provider.registry.save(record) }
        try BackingFile.create(file, size: 8 << 20)
        // Someone's losetup of the half-made file.
        let attached = run("/sbin/losetup", ["--find", "--show", file])
        let device = attached.output.trimmingSpaces
        try #require(attached.status == 0 && device.hasPrefix("/dev/loop"), "losetup: \(attached.output)")
        defer { _ = run("/sbin/losetup", ["-d", device]) }
        let report = try provider.reenumerate().wait(timeout: .seconds(60))
        #expect(report.rolledBack == ["half"], "\(report)")
        #expect(fileExists(file), "the file was removed under \(device)")
        #expect(report.drift.contains { $0.hasPrefix("half: half-created, rolled back but for its file") && $0.contains(device) }, "\(report.drift)")
        #expect(try provider.luns().map(\.name) == ["mine"])
        #expect(readSmallFile("/sys/block/\(device.dropFirst(5))/loop/backing_file") == file, "the device is left alone")
    }

    @Test("S15 an owner that has exited but is not reaped yet (a zombie) is dead; alive before it exits")
    func zombieOwner() throws {
        var gate: [Int32] = [0, 0]
        #expect(pipe(&gate) == 0)
        let pid = fork()
        if pid == 0 {  // only async-signal-safe calls here: close, read, _exit
            close(gate[1])  // or its own write end would keep the read from ending
            var byte: UInt8 = 0
            _ = read(gate[0], &byte, 1)
            _exit(0)
        }
        close(gate[0])
        let start = try #require(ProcessIdentity.startTime(of: pid))
        let owner = LunRecord.Owner(pid: pid, startTime: start, operation: "createLun", pidNamespace: ProcessIdentity.pidNamespace)
        #expect(ProcessIdentity.isAlive(owner))
        close(gate[1])  // it exits, and stays a zombie until waited for
        var zombie = false
        for _ in 0..<400 where !zombie {
            zombie = readSmallFile("/proc/\(pid)/stat")?.contains(") Z ") == true
            if !zombie { usleep(5000) }
        }
        #expect(zombie)
        #expect(!ProcessIdentity.isAlive(owner))
        if !zombie { kill(pid, SIGKILL) }  // never a wait that cannot end
        waitpid(pid, nil, 0)
    }

    @Test("S15 silo run in a pid namespace of its own but the host's /proc (unshare --pid, no --mount-proc), killed mid-create, is rolled back by the host", .requiresSiloBinary)
    func ownPidNamespaceHostProc() throws {
        let storage = TestStorage()
        defer { storage.finish() }
        let state = storage.path + "/state"
        // getpid() is 1 there, but /proc is the host's: silo names itself as /proc shows it.
        let child = spawn("/usr/bin/unshare", ["--pid", "--fork", siloBinary, "--state-dir", state,
                                               "lun", "create", "--name", "near", "--size", "1G", "--provisioning", "zeroed"])
        let zeroing = eventually { zeroingStarted(storage) }
        let silo = firstChild(of: child.pid)
        let owner = try? storage.provider.registry.load("near")?.owner
        // Killed: unshare, its parent, reaps it and exits (killed too, it would leave silo to an
        // init that may be slow to reap it).
        if let silo { kill(silo, SIGKILL) } else { kill(child.pid, SIGKILL) }
        _ = child.finish()
        #expect(zeroing, "the create never started zeroing")
        #expect(silo != nil, "unshare started no child")
        #expect(owner != nil && owner?.pid == silo && owner?.pidNamespace == nil, "\(String(describing: owner)), silo \(String(describing: silo))")
        let report = try storage.provider.reenumerate().wait(timeout: .seconds(60))
        #expect(report.rolledBack == ["near"], "\(report)")
        #expect(try storage.provider.luns().isEmpty)
        #expect(directoryEntries(storage.provider.configuration.poolDirectory).isEmpty)
    }

    @Test("S15 end to end: a create run by silo in its own pid namespace, stopped mid-zeroing, is left alone by this namespace's reenumerate", .requiresSiloBinary)
    func foreignCreateEndToEnd() throws {
        let storage = TestStorage()
        defer { storage.finish() }
        let state = storage.path + "/state"
        // unshare's child is pid 1 of a new pid namespace, with a /proc of its own: silo in it
        // records that namespace with its owner.
        let child = spawn("/usr/bin/unshare", ["--pid", "--fork", "--mount-proc", siloBinary, "--state-dir", state,
                                               "lun", "create", "--name", "far", "--size", "1G", "--provisioning", "zeroed"])
        // Stopped once zeroing is under way (the registry lock is let go by then).
        let zeroing = eventually { zeroingStarted(storage) }
        let silo = try #require(firstChild(of: child.pid), "unshare started no child")
        kill(silo, SIGSTOP)
        var finished = false
        defer {
            // Should a #require throw: silo (pid 1 of its namespace) and unshare go.
            if !finished {
                kill(silo, SIGKILL)
                kill(child.pid, SIGKILL)
                _ = child.finish()
            }
        }
        let owner = try? storage.provider.registry.load("far")?.owner
        let recorded = try #require(owner, "the create never recorded its owner")
        #expect(recorded.pidNamespace != nil && recorded.pidNamespace != ProcessIdentity.pidNamespace)
        let report = try storage.provider.reenumerate().wait(timeout: .seconds(60))
        #expect(report.rolledBack.isEmpty, "a live create of another namespace was rolled back: \(report)")
        #expect(report.drift.contains { $0.hasPrefix("far: createLun by pid") && $0.contains("another pid namespace") }, "\(report.drift)")
        #expect(zeroing, "the create never started zeroing")
        kill(silo, SIGCONT)
        let outcome = child.finish()
        finished = true
        #expect(outcome.status == 0, "\(outcome.error)")
        #expect(try storage.provider.lun(named: "far").status == .online)
    }
}
