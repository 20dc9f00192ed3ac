import Dispatch
import Glibc
import SiloOperations
import Testing

@testable import SiloStorage

#if arch(x86_64)
/// ioctl's system call number, for a raw call through perl.
let ioctlNumber = 16
#else
let ioctlNumber = 29  // the generic table's (aarch64, riscv64)
#endif

@Suite("Many processes", .tags(.root), .requiresLoopDevices, .requiresSiloBinary, .serialized)
struct ProcessTests {
    @Test("S14 eight processes creating, then creating and deleting, LUNs at once never share a device or lose a record")
    func concurrentProcesses() throws {
        let storage = TestStorage()
        defer { storage.finish() }
        let state = storage.provider.configuration.stateDirectory
        let perProcess = 3
        let creators = (0..<8).map { process in
            spawn("/bin/sh", ["-c", (0..<perProcess).map { index in
                "\(siloBinary) --state-dir \(state) lun create --name p\(process)-\(index) --size 4M --json >/dev/null || exit 1"
            }.joined(separator: "; ")])
        }
        let results = creators.map { $0.finish() }
        #expect(results.allSatisfy { $0.status == 0 }, "\(results.map(\.error))")
        let luns = try storage.provider.luns()
        #expect(luns.count == 8 * perProcess, "no record lost")
        let devices = luns.compactMap(\.devicePath)
        #expect(devices.count == luns.count && Set(devices).count == devices.count, "one device per LUN")
        for lun in luns {
            #expect(readSmallFile("/sys/block/\(lun.devicePath?.dropFirst(5) ?? "")/loop/backing_file") == lun.backingFile)
        }
        // Creates and deletes at once: a device a delete frees is one a create may take next.
        let mixed = (0..<8).map { process in
            spawn("/bin/sh", ["-c", (0..<perProcess).map { index in
                "\(siloBinary) --state-dir \(state) lun delete p\(process)-\(index) || exit 1; "
                    + "\(siloBinary) --state-dir \(state) lun create --name q\(process)-\(index) --size 4M --json >/dev/null || exit 1"
            }.joined(separator: "; ")])
        }
        let mixedResults = mixed.map { $0.finish() }
        #expect(mixedResults.allSatisfy { $0.status == 0 }, "\(mixedResults.map(\.error))")
        let after = try storage.provider.luns()
        #expect(Set(after.map(\.name)) == Set((0..<8).flatMap { process in (0..<perProcess).map { "q\(process)-\($0)" } }), "no record lost or left")
        let afterDevices = after.compactMap(\.devicePath)
        #expect(afterDevices.count == after.count && Set(afterDevices).count == afterDevices.count, "one device per LUN")
        for lun in after {
            #expect(readSmallFile("/sys/block/\(lun.devicePath?.dropFirst(5) ?? "")/loop/backing_file") == lun.backingFile)
        }
        #expect(Set(loopDevices(backedUnder: storage.path).map(\.path)) == Set(afterDevices), "no device without its LUN")
        let deleters = (0..<8).map { process in
            spawn("/bin/sh", ["-c", (0..<perProcess).map { index in
                "\(siloBinary) --state-dir \(state) lun delete q\(process)-\(index) || exit 1"
            }.joined(separator: "; ")])
        }
        #expect(deleters.map { $0.finish() }.allSatisfy { $0.status == 0 })
        #expect(try storage.provider.luns().isEmpty)
        #expect(directoryEntries(storage.provider.configuration.poolDirectory).isEmpty)
        #expect(loopDevices(backedUnder: storage.path).isEmpty)
    }

    @Test("S15 processes killed at random points of 50 provisionings leave nothing reenumerate cannot repair")
    func crashRecovery() throws {
        let storage = TestStorage()
        defer { storage.finish() }
        let state = storage.provider.configuration.stateDirectory
        var generator = SystemRandomNumberGenerator()
        // The kills land anywhere in the time a create takes here, 40 ms at least: a slow machine
        // (the cgroup2 guest's emulation) took longer than that to start silo, and every kill
        // landed before the work.
        let began = ContinuousClock.now
        let probe = spawn(siloBinary, ["--state-dir", state, "lun", "create", "--name", "probe", "--size", "24M", "--provisioning", "zeroed"])
        try #require(probe.finish().status == 0)
        let took = (ContinuousClock.now - began).components
        try #require(spawn(siloBinary, ["--state-dir", state, "lun", "delete", "probe"]).finish().status == 0)
        let window = max(40_000, min(Int64(took.seconds) * 1_000_000 + took.attoseconds / 1_000_000_000_000, 2_000_000))
        for round in 0..<50 {
            let child = spawn(siloBinary, [
                "--state-dir", state, "lun", "create", "--name", "crash\(round)", "--size", "24M",
                "--provisioning", round.isMultiple(of: 2) ? "zeroed" : "thin",
            ])
            usleep(UInt32(Int64.random(in: 0...window, using: &generator)))
            child.kill(SIGKILL)
            _ = child.finish()
        }
        let report = try storage.provider.reenumerate().wait(timeout: .seconds(120))
        let luns = try storage.provider.luns()
        // Every LUN that survived is whole: ready, online, its file in the pool and its device bound to it.
        for lun in luns {
            #expect(lun.status == .online, "\(lun.name) is \(lun.status)")
            #expect(lun.devicePath.map { readSmallFile("/sys/block/\($0.dropFirst(5))/loop/backing_file") } == lun.backingFile)
        }
        // Nothing else: no orphan file, device or record.
        let files = Set(directoryEntries(storage.provider.configuration.poolDirectory).map {
            storage.provider.configuration.poolDirectory + "/" + $0
        })
        #expect(files == Set(luns.map(\.backingFile)))
        #expect(Set(loopDevices(backedUnder: storage.path).map(\.path)) == Set(luns.compactMap(\.devicePath)))
        #expect(report.drift.isEmpty, "\(report.drift)")
        // Kills that all landed before or after the work would prove nothing.
        #expect(luns.count < 50 && report.rolledBack.count + report.orphanFilesRemoved.count + report.orphanDevicesDetached.count > 0,
                "no kill landed during a provisioning: \(luns.count) finished, nothing to repair")
        // A second pass finds nothing to do.
        let again = try storage.provider.reenumerate().wait()
        #expect(again.rolledBack.isEmpty && again.orphanFilesRemoved.isEmpty && again.orphanDevicesDetached.isEmpty)
        print("S15: \(luns.count) of 50 finished before the kill; rolled back \(report.rolledBack.count), "
              + "orphan files \(report.orphanFilesRemoved.count), orphan devices \(report.orphanDevicesDetached.count)")
    }

    @Test("S7 a full pool: the create that runs out of space fails cleanly and rolls back")
    func fullPool() throws {
        let scratch = Scratch()
        defer { scratch.cleanup() }
        let mount = scratch.path + "/small"
        mkdir(mount, 0o755)
        try #require(run("/bin/mount", ["-t", "tmpfs", "-o", "size=40m", "tmpfs", mount]).status == 0)
        defer { _ = run("/bin/umount", [mount]) }
        let provider = StorageProvider(configuration: StorageConfiguration(stateDirectory: mount + "/state"))
        // Runs before the unmount above, also when an expectation below throws: a LUN left
        // attached would keep the tmpfs busy and the unmount would fail.
        defer { for lun in (try? provider.luns()) ?? [] { _ = try? provider.deleteLun(lun.name).wait(timeout: .seconds(30)) } }
        // Either the second is refused at once (the first already took the space) or both pass
        // the check and the second to allocate runs out: both must end with one LUN and no trace
        // of the other.
        let first = try provider.createLun(LunSpec(name: "first", size: 24 << 20, provisioning: .zeroed))
        let second = Result { try provider.createLun(LunSpec(name: "second", size: 24 << 20, provisioning: .zeroed)) }
        let results = [Result { try first.wait(timeout: .seconds(60)) },
                       second.flatMap { operation in Result { try operation.wait(timeout: .seconds(60)) } }]
        let failures = results.compactMap { result -> SiloError? in
            if case .failure(let error) = result { return error as? SiloError }
            return nil
        }
        #expect(failures.count == 1, "\(failures.map { "\($0.code): \($0.message) \($0.events)" })")
        #expect(failures.first?.code == .notEnoughSpace, "\(failures)")
        let luns = try provider.luns()
        #expect(luns.count == 1)
        #expect(directoryEntries(provider.configuration.poolDirectory).count == 1, "the failed LUN's file is gone")
        #expect(loopDevices(backedUnder: mount).count == 1)
        for lun in luns { try provider.deleteLun(lun.name).wait() }
        #expect(loopDevices(backedUnder: mount).isEmpty)
        // A thick clone that fits: what its copy wrote holds its space already, so the allocation
        // after it needs free only what the copy left as holes.
        let source = try provider.createLun(LunSpec(name: "source", size: 16 << 20, provisioning: .thick)).wait(timeout: .seconds(60))
        let sourceDevice = try #require(source.devicePath)
        // Data all over it: the copy writes all 16 MiB.
        #expect(run("/bin/dd", ["if=/dev/zero", "of=\(sourceDevice)", "bs=1M", "count=16", "oflag=direct", "status=none"]).status == 0)
        try writeBytes(sourceDevice, offset: 0, [1, 2, 3])
        let clone = try provider.cloneLun("source", as: "clone").wait(timeout: .seconds(60))
        let cloneDevice = try #require(clone.devicePath)
        #expect(clone.allocatedBytes >= 16 << 20)
        #expect(try readBytes(cloneDevice, offset: 0, count: 3) == [1, 2, 3])
        try provider.deleteLun("clone").wait(timeout: .seconds(30))
        try provider.deleteLun("source").wait(timeout: .seconds(30))
        // The reported maximum is one a create can have (the headroom an allocation keeps is not in it).
        let maximum = try provider.maximumLunSize(provisioning: .thick) / 512 * 512
        let largest = try provider.createLun(LunSpec(name: "largest", size: maximum, provisioning: .thick)).wait(timeout: .seconds(60))
        #expect(largest.size == maximum)
        try provider.deleteLun("largest").wait(timeout: .seconds(30))
    }
}

@Suite("Temporary LUNs across processes", .tags(.root), .requiresLoopDevices, .requiresSiloBinary)
struct TemporaryLunProcessTests {
    @Test("silo lun temporary runs the command with the device and exits with its code")
    func runsCommand() throws {
        let result = execute(siloBinary, ["lun", "temporary", "--size", "16M", "--", "/bin/sh", "-c",
                                          "test -b \"$SILO_LUN_DEVICE\" && cat /sys/block/$(basename $SILO_LUN_DEVICE)/size; exit 7"])
        #expect(result.status == 7)
        #expect(result.output.trimmingSpaces == "32768")
    }

    @Test("silo lun temporary gives its command one SILO_LUN_DEVICE, its own, whatever silo inherited")
    func oneDeviceVariable() throws {
        // env prints the environment it was given, duplicates included (a shell would rebuild it).
        let result = execute("/bin/sh", ["-c", "SILO_LUN_DEVICE=/dev/sda exec \(siloBinary) lun temporary --size 16M -- /usr/bin/env"])
        #expect(result.status == 0)
        let entries = result.output.split(separator: "\n").filter { $0.hasPrefix("SILO_LUN_DEVICE=") }
        #expect(entries.count == 1 && entries.first?.hasPrefix("SILO_LUN_DEVICE=/dev/loop") == true, "\(entries)")
    }

    @Test("A temporary LUN is gone even when its process is killed with SIGKILL; its command goes with silo")
    func goneAfterKill() throws {
        let scratch = Scratch()
        defer { scratch.cleanup() }
        let child = spawn(siloBinary, ["lun", "temporary", "--size", "16M", "--directory", scratch.path, "--",
                                       "/bin/sh", "-c", "echo $SILO_LUN_DEVICE; exec sleep 314.159"])
        // Both go, also when the device never appears (the #require below throws).
        var killed = false
        defer {
            if !killed {
                child.kill(SIGKILL)
                _ = run("/usr/bin/pkill", ["-f", "sleep 314.159"])
                _ = child.finish()
            }
        }
        // Wait for the device to appear, then kill silo (the sleeping command lives on).
        var device: LoopDevice?
        _ = eventually {
            device = loopDevices(backedUnder: scratch.path).first
            return device != nil
        }
        let found = try #require(device, "the temporary LUN never appeared")
        child.kill(SIGKILL)
        _ = child.finish()
        killed = true
        // The command is tied to silo: it goes too (an orphan would write on, to a device number
        // the next attach may be given, were it not holding the device itself).
        #expect(eventually { run("/usr/bin/pgrep", ["-f", "sleep 314.159"]).status == 1 }, "the command outlived silo")
        _ = run("/usr/bin/pkill", ["-f", "sleep 314.159"])
        let gone = eventually { found.status?.backingFile.hasPrefix(scratch.path) != true }
        #expect(gone, "\(found.path) outlived the killed process")
        #expect(directoryEntries(scratch.path).isEmpty, "the backing file was unlinked at attach")
    }

    @Test("silo lun temporary: its command holds the device; what it mounts stays in its own mount namespace, and goes with it when silo is killed")
    func mountedTemporaryGoes() throws {
        let scratch = Scratch()
        defer { scratch.cleanup() }
        let target = scratch.path + "/mnt"
        mkdir(target, 0o755)
        let script = "ls -l /proc/$$/fd | grep -q -- \"-> $SILO_LUN_DEVICE\\$\" && echo held >&2; "
            + "mkfs.ext4 -q \"$SILO_LUN_DEVICE\" && mount \"$SILO_LUN_DEVICE\" \(target) && touch \(target)/made && "
            + "grep -q ' \(target) ' /proc/self/mountinfo && echo mounted >&2; exec sleep 31.4159"
        let child = spawn(siloBinary, ["lun", "temporary", "--size", "32M", "--directory", scratch.path, "--", "/bin/sh", "-c", script],
                          environment: ["PATH": "/usr/sbin:/usr/bin:/sbin:/bin"])
        var killed = false
        defer {
            if !killed { child.kill(SIGKILL); _ = child.finish() }
            _ = run("/usr/bin/pkill", ["-f", "sleep 31.4159"])
            umount2(target, Int32(MNT_DETACH))
        }
        #expect(child.waitForError(containing: "mounted"), "the command mounted the device")
        #expect(child.waitForError(containing: "held"), "the command holds the device open")
        let found = try #require(loopDevices(backedUnder: scratch.path).first, "the temporary LUN")
        #expect(run("/bin/grep", ["-q", " \(target) ", "/proc/self/mountinfo"]).status == 1, "the mount does not show on the host")
        #expect(!fileExists(target + "/made"))
        child.kill(SIGKILL)  // silo: its command goes with it, and the namespace with the command
        _ = child.finish()
        killed = true
        #expect(eventually { run("/usr/bin/pgrep", ["-f", "sleep 31.4159"]).status == 1 }, "the command outlived silo")
        let gone = eventually(seconds: 30) { found.status?.backingFile.hasPrefix(scratch.path) != true }
        #expect(gone, "\(found.path) outlived the killed command and its mount")
    }
}

@Suite("LUNs in compute systems", .tags(.root), .requiresLoopDevices, .requiresSiloBinary,
       .enabled(if: access("/usr/bin/perl", X_OK) == 0, "needs /usr/bin/perl to make a raw ioctl inside the system"))
struct LunInSystemTests {
    @Test("C12 a LUN unmasked to a system appears inside as a block device, mounted where asked; masked, it is refused")
    func lunInsideRun() throws {
        let storage = TestStorage()
        defer { storage.finish() }
        let lun = try storage.create("shared", size: 64 << 20)
        let device = try #require(lun.devicePath)
        #expect(run("/sbin/mkfs.ext4", ["-q", "-F", device]).status == 0)
        try storage.provider.setMask("shared", "box-\(getpid())")
        let state = storage.provider.configuration.stateDirectory
        // Mounted: no node (a write through it under the mounted file system would change what
        // the host's kernel parses, and a descriptor on it would outlive a detach).
        let inside = silo(state, ["run", "--id", "box-\(getpid())", "--lun", "shared:/data", "--", "/bin/sh", "-c",
                                  "! test -e \(device) && echo from-inside > /data/note && cat /data/note"])
        #expect(inside.status == 0, "\(inside.error)")
        #expect(inside.output == "from-inside\n")
        let mountPoint = storage.path + "/check"
        mkdir(mountPoint, 0o755)
        #expect(run("/bin/mount", ["-o", "ro", device, mountPoint]).status == 0)
        #expect(readSmallFile(mountPoint + "/note") == "from-inside")
        #expect(run("/bin/umount", [mountPoint]).status == 0)
        // Under /tmp, the system's private tmpfs: the folder is made on that, not on the root
        // below it (where the mount found no folder, and the start failed).
        let underTmp = silo(state, ["run", "--id", "box-\(getpid())", "--lun", "shared:/tmp/data/in", "--", "/bin/cat", "/tmp/data/in/note"])
        #expect(underTmp.status == 0 && underTmp.output == "from-inside\n", "\(underTmp.status): \(underTmp.error)")

        let refused = silo(state, ["run", "--id", "other-\(getpid())", "--lun", "shared:/data", "--", "/bin/true"])
        #expect(refused.status == 1)
        #expect(refused.error.contains("--lun") && refused.error.contains("not unmasked"), "\(refused.error)")
        // The command it suggests keeps the system already unmasked (`lun mask` replaces the list).
        #expect(refused.error.contains("add it with 'silo lun mask shared box-\(getpid()),other-\(getpid())' or '*'"), "\(refused.error)")
        // Without a mount path, the node alone; other block devices stay out of reach, and the
        // loop driver's requests are refused (LOOP_CLR_FD asks for no privilege: it detached the
        // host's device, even through a read-only open).
        try storage.provider.setMask("shared", "*")
        let hostDisk = try #require(directoryEntries("/sys/block").sorted().first { name in
            !name.hasPrefix("loop") && fileExists("/dev/" + name)
        }.map { "/dev/" + $0 }, "a host block device other than a loop device, to look for inside")
        let node = silo(state, ["run", "--lun", "shared", "--", "/bin/sh", "-c",
                                "test -b \(device) && ! test -e \(hostDisk) && ! mknod /tmp/sda b 8 0 2>/dev/null"
                                    + " && dd if=/dev/zero of=\(device) bs=512 count=1 seek=4000 conv=notrunc 2>/dev/null"
                                    + " && perl -e 'open(F, \"<\", \"\(device)\") or die; syscall(\(ioctlNumber), fileno(F), 0x4C01, 0); print $!+0'"])
        #expect(node.status == 0, "written raw: \(node.error)")
        #expect(node.output == "\(EPERM)", "LOOP_CLR_FD refused: \(node.output)")
        #expect(try storage.provider.lun(named: "shared").devicePath == device, "still attached")
        // One LUN once, one LUN per mount path (`/m/` is `/m`): refused before any is looked up.
        let twice = silo(state, ["run", "--lun", "shared", "--lun", "shared:/d", "--", "/bin/true"])
        #expect(twice.status == 64 && twice.error.contains("--lun") && twice.error.contains("attached twice"), "\(twice.error)")
        let onePath = silo(state, ["run", "--lun", "a:/m", "--lun", "b:/m/", "--", "/bin/true"])
        #expect(onePath.status == 64 && onePath.error.contains("another LUN is mounted at /m"), "\(onePath.error)")
        // A --config document's own attachments (Devices.Scsi) are attached too, read-only as it says.
        let document = storage.path + "/run.json"
        #expect(writeFile(document, #"{"SchemaVersion":{"Major":2,"Minor":1},"VirtualMachine":{"Devices":{"Scsi":{"0":{"Attachments":"#
            + #"{"0":{"Type":"VirtualDisk","Path":"shared","MountPath":"/doc","ReadOnly":true}}}}}}}"#))
        let fromDocument = silo(state, ["run", "--config", document, "--", "/bin/sh", "-c", "cat /doc/note && ! touch /doc/other 2>/dev/null"])
        #expect(fromDocument.status == 0 && fromDocument.output == "from-inside\n", "\(fromDocument.status): \(fromDocument.error)")
        let clash = silo(state, ["run", "--config", document, "--lun", "shared", "--", "/bin/true"])
        #expect(clash.status == 64 && clash.error.contains("attached twice"), "\(clash.error)")
        let missing = storage.path + "/missing.json"
        #expect(writeFile(missing, #"{"SchemaVersion":{"Major":2,"Minor":1},"VirtualMachine":{"Devices":{"Scsi":{"0":{"Attachments":"#
            + #"{"0":{"Type":"VirtualDisk","Path":"nowhere"}}}}}}}"#))
        let unknown = silo(state, ["run", "--config", missing, "--lun", "shared", "--", "/bin/true"])
        #expect(unknown.status == 1 && unknown.error.contains("(Devices.Scsi) [objectNotFound]"), "the document's LUN is named as the document's: \(unknown.error)")
        #expect(storage.provider.leaseHolders("shared").isEmpty, "no lease outlives the runs")
    }
}

@Suite("LUNs attached to running systems", .tags(.root), .requiresLoopDevices, .requiresSiloBinary, .serialized)
struct LunAttachTests {
    @Test("C12 S10 a document's LUN is mounted at start; modify attaches and detaches while running; attached LUNs cannot be deleted")
    func attachAndDetach() throws {
        let storage = TestStorage()
        defer { storage.finish() }
        let state = storage.provider.configuration.stateDirectory
        let id = "att-\(getpid())"
        let data = try #require(try storage.create("data", size: 64 << 20).devicePath)
        let extra = try #require(try storage.create("extra", size: 32 << 20).devicePath)
        #expect(run("/sbin/mkfs.ext4", ["-q", "-F", data]).status == 0)
        #expect(run("/sbin/mkfs.ext4", ["-q", "-F", extra]).status == 0)
        try storage.provider.setMask("data", id)
        try storage.provider.setMask("extra", "*")
        let document = storage.path + "/doc.json"
        let text = #"{"SchemaVersion":{"Major":2,"Minor":1},"VirtualMachine":{"ComputeTopology":{"Memory":{"SizeInMB":64}},"#
            + #""Devices":{"Scsi":{"0":{"Attachments":{"0":{"Type":"VirtualDisk","Path":"data","MountPath":"/data"}}}}}},"#
            + #""ShouldTerminateOnLastHandleClosed":false}"#
        let fd = open(document, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        _ = text.withCString { write(fd, $0, strlen($0)) }
        close(fd)
        // A system the document's LUN is not unmasked to: its start is refused by code and field,
        // and it stays Created, with nothing attached.
        let other = "other-\(getpid())"
        defer { _ = silo(state, ["system", "terminate", other]) }
        #expect(silo(state, ["system", "create", "--id", other, "--config", document]).status == 0)
        let masked = silo(state, ["system", "start", other])
        #expect(masked.status == 1 && masked.error.contains("[accessDenied]") && masked.error.contains("Devices.Scsi"), "C12 S11: \(masked.error)")
        let otherState = silo(state, ["system", "properties", other, "--json"]).output
        #expect(otherState.contains("\"Created\"") && !otherState.contains("/data"), "\(otherState)")
        #expect(storage.provider.leaseHolders("data").isEmpty, "a refused start holds no lease")
        _ = silo(state, ["system", "terminate", other])

        defer { _ = silo(state, ["system", "terminate", id]) }
        #expect(silo(state, ["system", "create", "--id", id, "--config", document]).status == 0)
        let started = silo(state, ["system", "start", id])
        #expect(started.status == 0, "\(started.error)")
        let written = silo(state, ["process", "create", id, "--", "/bin/sh", "-c", "echo kept > /data/note && ! test -e \(data) && ! test -e \(extra)"])
        #expect(written.status == 0, "the document's LUN is mounted (without a node), the other is not there: \(written.error)")

        let refused = silo(state, ["lun", "delete", "data"])
        #expect(refused.status == 1 && refused.error.contains("attached to compute system '\(id)'") && refused.error.contains("[deviceInUse]"),
                "S10: \(refused.error)")
        let offline = silo(state, ["lun", "offline", "data"])
        #expect(offline.status == 1 && offline.error.contains("attached to compute system '\(id)'") && offline.error.contains("[deviceInUse]"),
                "\(offline.error)")

        // A LUN unmasked to nobody cannot be attached to the running system either.
        _ = try storage.create("hidden", size: 16 << 20)
        let hidden = silo(state, ["system", "modify", id, "--attach", "hidden:/hidden"])
        #expect(hidden.status == 1 && hidden.error.contains("[accessDenied]"), "C12 S11: \(hidden.error)")
        #expect(!silo(state, ["system", "properties", id, "--json"]).output.contains("hidden"))
        #expect(storage.provider.leaseHolders("hidden").isEmpty)

        let samePath = silo(state, ["system", "modify", id, "--attach", "extra:/data/"])
        #expect(samePath.status == 64 && samePath.error.contains("another LUN is mounted at /data"), "\(samePath.error)")
        let attached = silo(state, ["system", "modify", id, "--attach", "extra:/extra"])
        #expect(attached.status == 0, "\(attached.error)")
        #expect(silo(state, ["process", "create", id, "--", "/bin/sh", "-c", "echo more > /extra/more && grep -q ' /extra ' /proc/mounts"
                                 + " && ! test -e \(extra)"]).status == 0)
        #expect(silo(state, ["system", "properties", id, "--json"]).output.contains("/extra"))
        let attachedDelete = silo(state, ["lun", "delete", "extra"])
        #expect(attachedDelete.status == 1 && attachedDelete.error.contains("attached to compute system '\(id)'")
                    && attachedDelete.error.contains("[deviceInUse]"), "attached while running: \(attachedDelete.error)")
        let twice = silo(state, ["system", "modify", id, "--attach", "extra"])
        #expect(twice.status == 64 && twice.error.contains("--attach"), "\(twice.error)")

        // Busy inside: a process sits in the mount; the detach is refused and changes nothing.
        let sitter = silo(state, ["process", "create", id, "--detach", "--cwd", "/extra", "--", "/bin/sleep", "100"])
        let busy = silo(state, ["system", "modify", id, "--detach", "extra"])
        #expect(busy.status == 1 && busy.error.contains("busy"), "\(busy.error)")
        #expect(silo(state, ["process", "kill", id, String(sitter.output.filter(\.isNumber))]).status == 0)
        usleep(100_000)
        let detached = silo(state, ["system", "modify", id, "--detach", "extra"])
        #expect(detached.status == 0, "\(detached.error)")
        #expect(silo(state, ["process", "create", id, "--", "/bin/sh", "-c", "! test -e \(extra) && ! grep -q ' /extra ' /proc/mounts"]).status == 0)

        // The same through HCS's ModifySettingRequest: Add at a SCSI location, Remove by it.
        let request = storage.path + "/add.json"
        let requestText = #"{"ResourcePath":"VirtualMachine/Devices/Scsi/0/Attachments/1","RequestType":"Add","Settings":{"Path":"extra","MountPath":"/more"}}"#
        let requestFD = open(request, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        _ = requestText.withCString { write(requestFD, $0, strlen($0)) }
        close(requestFD)
        let added = silo(state, ["system", "modify", id, "--config", request])
        #expect(added.status == 0, "\(added.error)")
        #expect(silo(state, ["process", "create", id, "--", "/bin/sh", "-c", "cat /more/more"]).output == "more\n")
        let removal = storage.path + "/remove.json"
        let removalText = #"{"ResourcePath":"VirtualMachine/Devices/Scsi/0/Attachments/1","RequestType":"Remove"}"#
        let removalFD = open(removal, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        _ = removalText.withCString { write(removalFD, $0, strlen($0)) }
        close(removalFD)
        #expect(silo(state, ["system", "modify", id, "--config", removal]).status == 0)
        let again = silo(state, ["system", "modify", id, "--config", removal])
        #expect(again.status == 1 && again.error.contains("--config"), "nothing at that location now: \(again.error)")
        #expect(silo(state, ["lun", "delete", "extra"]).status == 0, "detached: its lease is gone")

        #expect(silo(state, ["system", "terminate", id]).status == 0)
        #expect(silo(state, ["lun", "delete", "data"]).status == 0, "the system is gone, and its lease with it")
        #expect(directoryEntries(state + "/leases").isEmpty)
    }

    @Test("C12 S10 a detach the agent cannot be told of (its connections full) fails with the LUN still attached and leased; a retry finishes")
    func detachWithoutAgent() throws {
        let storage = TestStorage()
        defer { storage.finish() }
        let state = storage.provider.configuration.stateDirectory
        let id = "ful-\(getpid())"
        let (_, document) = try storage.lunWithDocument("data", for: id)
        defer { _ = silo(state, ["system", "terminate", id]) }
        #expect(silo(state, ["system", "create", "--id", id, "--config", document]).status == 0)
        try #require(silo(state, ["system", "start", id]).status == 0)
        #expect(!storage.provider.leaseHolders("data").isEmpty)
        // The agent serves 64 connections at most: these take them all.
        let socketPath = state + "/run/systems/\(id)/agent.sock"
        var held: [Int32] = []
        defer { held.forEach { close($0) } }
        for _ in 0..<64 {
            let fd = socket(AF_UNIX, Int32(SOCK_SEQPACKET.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            var address = sockaddr_un()
            address.sun_family = sa_family_t(AF_UNIX)
            withUnsafeMutableBytes(of: &address.sun_path) { buffer in
                for (index, byte) in socketPath.utf8.enumerated() where index < buffer.count - 1 { buffer[index] = byte }
            }
            let connected = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
            }
            try #require(fd >= 0 && connected == 0, "connection \(held.count + 1): errno \(errno)")
            held.append(fd)
        }
        usleep(100_000)  // all accepted
        let refused = silo(state, ["system", "modify", id, "--detach", "data"])
        #expect(refused.status != 0, "the detach said it was done while the agent kept the lease: \(refused.output)")
        #expect(silo(state, ["system", "properties", id, "--json"]).output.contains("/data"), "still listed")
        // Refused before anything changed: the LUN is still mounted inside (checked below, once
        // the 64 connections are let go and a process can be started).
        #expect(!storage.provider.leaseHolders("data").isEmpty, "still leased")
        #expect(silo(state, ["lun", "delete", "data"]).status != 0)
        held.forEach { close($0) }
        held = []
        usleep(100_000)
        #expect(silo(state, ["process", "create", id, "--", "/bin/sh", "-c", "grep -q ' /data ' /proc/mounts"]).status == 0,
                "the refused detach unmounted nothing")
        let retried = silo(state, ["system", "modify", id, "--detach", "data"])
        #expect(retried.status == 0, "\(retried.error)")
        #expect(storage.provider.leaseHolders("data").isEmpty, "the lease is given back")
        #expect(!silo(state, ["system", "properties", id, "--json"]).output.contains("/data"))
        #expect(silo(state, ["lun", "delete", "data"]).status == 0)
    }

    @Test("C12 an attach whose record cannot be written (the runtime folder full) is undone: not mounted inside, not leased, the LUN free")
    func attachUnsaved() throws {
        let storage = TestStorage()
        defer { storage.finish() }
        let state = storage.provider.configuration.stateDirectory
        let id = "un-\(getpid())"
        let extra = try #require(try storage.create("extra", size: 32 << 20).devicePath)
        #expect(run("/sbin/mkfs.ext4", ["-q", "-F", extra]).status == 0)
        try storage.provider.setMask("extra", "*")
        let document = storage.path + "/doc.json"
        try #require(writeFile(document, #"{"SchemaVersion":{"Major":2,"Minor":1},"Container":{"Memory":{"SizeInMB":64}},"ShouldTerminateOnLastHandleClosed":false}"#))
        // The runtime folder (systems' records) on a small file system of its own; the registry elsewhere.
        let runtime = state + "/run"
        mkdir(runtime, 0o755)
        try #require(run("/bin/mount", ["-t", "tmpfs", "-o", "size=1m", "tmpfs", runtime]).status == 0)
        defer {
            _ = silo(state, ["system", "terminate", id])
            _ = run("/bin/umount", [runtime])
        }
        #expect(silo(state, ["system", "create", "--id", id, "--config", document]).status == 0)
        try #require(silo(state, ["system", "start", id]).status == 0)
        _ = run("/bin/dd", ["if=/dev/zero", "of=\(runtime)/filler", "bs=4k"])
        let refused = silo(state, ["system", "modify", id, "--attach", "extra:/extra"])
        unlink(runtime + "/filler")
        // Refused by the record's write, after the attach (not by anything before it).
        #expect(refused.status == 1 && refused.error.contains("errno 28") && refused.error.contains(runtime + "/systems/\(id)/"),
                "\(refused.error)")
        #expect(silo(state, ["process", "create", id, "--", "/bin/sh", "-c", "! grep -q ' /extra ' /proc/mounts"]).status == 0,
                "nothing of the LUN is left inside")
        #expect(storage.provider.leaseHolders("extra").isEmpty, "no lease is left")
        #expect(!silo(state, ["system", "properties", id, "--json"]).output.contains("/extra"))
        let attached = silo(state, ["system", "modify", id, "--attach", "extra:/extra"])
        #expect(attached.status == 0, "with room, it attaches: \(attached.error)")
        #expect(silo(state, ["system", "modify", id, "--detach", "extra"]).status == 0)
        // Given raw, the system may have opened its node before the record failed: its lease stays
        // with the system until it stops, as after a raw LUN's detach.
        _ = run("/bin/dd", ["if=/dev/zero", "of=\(runtime)/filler", "bs=4k"])
        let raw = silo(state, ["system", "modify", id, "--attach", "extra"])
        unlink(runtime + "/filler")
        #expect(raw.status == 1 && raw.error.contains("errno 28") && raw.error.contains(runtime + "/systems/\(id)/"), "\(raw.error)")
        #expect(!storage.provider.leaseHolders("extra").isEmpty, "a raw LUN's lease stays until the system stops")
        #expect(silo(state, ["system", "terminate", id]).status == 0)
        #expect(storage.provider.leaseHolders("extra").isEmpty)
    }

    @Test("C5 a system whose init dies with a LUN mounted holds nothing once Stopped: no process, cgroup, lease or mount; the LUN can be deleted")
    func unexpectedExitWithLun() throws {
        let storage = TestStorage()
        defer { storage.finish() }
        let state = storage.provider.configuration.stateDirectory
        let id = "die-\(getpid())"
        let (data, document) = try storage.lunWithDocument("data", for: id)
        defer { _ = silo(state, ["system", "terminate", id]) }
        #expect(silo(state, ["system", "create", "--id", id, "--config", document]).status == 0)
        let started = silo(state, ["system", "start", id])
        try #require(started.status == 0, "\(started.error)")
        #expect(silo(state, ["process", "create", id, "--", "/bin/sh", "-c", "echo kept > /data/note"]).status == 0)
        #expect(!storage.provider.leaseHolders("data").isEmpty)
        // Init dies behind Silo's back.
        let record = readSmallFile(state + "/run/systems/\(id)/state.json") ?? ""
        let pid = try #require(record.firstRange(of: #""initPID":"#).flatMap { Int32(record[$0.upperBound...].prefix { $0.isNumber }) })
        let cgroups = systemCgroups(id)
        #expect(!cgroups.isEmpty, "the system's cgroups are found where they are made")
        kill(pid, SIGKILL)
        let stopped = eventually { silo(state, ["system", "properties", id, "--json"]).output.contains(#""Stopped""#) }
        #expect(stopped, "Stopped after its init died")
        #expect(cgroups.allSatisfy { !fileExists($0) }, "no cgroup is left: \(cgroups.filter { fileExists($0) })")
        #expect(storage.provider.leaseHolders("data").isEmpty, "no lease is left")
        #expect(!(readSmallFile("/proc/self/mountinfo") ?? "").contains(data), "the LUN is mounted nowhere on the host")
        let deleted = silo(state, ["lun", "delete", "data"])
        #expect(deleted.status == 0, "the LUN is free: \(deleted.error)")
        #expect(directoryEntries(state + "/leases").isEmpty)
    }
}

@Suite("LUNs attached to running systems: paths the payload controls", .tags(.root), .requiresLoopDevices, .requiresSiloBinary, .serialized)
struct LunAttachPathTests {
    @Test("C12 C13 an attach does not follow a link the payload made on the mount path; /proc, /dev and /sys are refused as mount paths, and file systems Silo does not mount")
    func attachRefusesLinks() throws {
        let storage = TestStorage()
        defer { storage.finish() }
        let state = storage.provider.configuration.stateDirectory
        let id = "lnk-\(getpid())"
        let device = try #require(try storage.create("lnk", size: 32 << 20).devicePath)
        #expect(run("/sbin/mkfs.ext4", ["-q", "-F", device]).status == 0)
        try storage.provider.setMask("lnk", "*")
        let document = try containerDocument(in: storage)
        defer { _ = silo(state, ["system", "terminate", id]) }
        #expect(silo(state, ["system", "create", "--id", id, "--config", document]).status == 0)
        #expect(silo(state, ["system", "start", id]).status == 0)
        // The payload points the mount path at a folder of its choice.
        #expect(silo(state, ["process", "create", id, "--", "/bin/sh", "-c", "mkdir /tmp/real && ln -s /tmp/real /tmp/data"]).status == 0)
        let followed = silo(state, ["system", "modify", id, "--attach", "lnk:/tmp/data"])
        #expect(followed.status == 1, "a link on the mount path is refused: \(followed.error)")
        #expect(silo(state, ["process", "create", id, "--", "/bin/sh", "-c", "! grep -q ' /tmp/real ' /proc/mounts"]).status == 0,
                "nothing was mounted where the link points")
        for guarded in ["/proc/sys", "/dev/x", "/sys", "/.silo/x"] {
            let refused = silo(state, ["system", "modify", id, "--attach", "lnk:" + guarded])
            #expect(refused.status == 64 && refused.error.contains("cannot be mounted under"), "\(guarded): \(refused.error)")
        }
        // The host's binds and their links (/lib64 is a link to usr/lib64 on a merged /usr).
        for hosts in ["/lib64/data", "/usr/data", "/bin", "/etc/passwd", "//usr", "/etc//passwd"] {
            let refused = silo(state, ["system", "modify", id, "--attach", "lnk:" + hosts])
            #expect(refused.status == 64 && refused.error.contains("the host's, bound read-only"), "\(hosts): \(refused.error)")
        }
        #expect(silo(state, ["process", "create", id, "--", "/bin/true"]).status == 0, "the root is as it was")
        // What libblkid finds but Silo does not mount is refused (the host's kernel would parse
        // what the system wrote): a swap signature here.
        let odd = try #require(try storage.create("odd", size: 8 << 20).devicePath)
        try storage.provider.setMask("odd", "*")
        #expect(run("/sbin/mkswap", [odd]).status == 0)
        let swap = silo(state, ["system", "modify", id, "--attach", "odd:/tmp/odd"])
        #expect(swap.status == 1 && swap.error.contains("holds a swap file system"), "\(swap.error)")
        // Read-only: the file system itself (a read-only mount of a writable superblock would
        // still replay its journal onto the LUN).
        #expect(silo(state, ["system", "modify", id, "--attach", "lnk:/tmp/ro", "--read-only"]).status == 0)
        let readOnly = silo(state, ["process", "create", id, "--", "/bin/sh", "-c",
                                    "grep ' /tmp/ro ' /proc/self/mountinfo | sed 's/.* - //' | grep -q ' ro' && ! touch /tmp/ro/x 2>/dev/null"])
        #expect(readOnly.status == 0, "\(readOnly.error)")
        #expect(silo(state, ["system", "modify", id, "--detach", "lnk"]).status == 0)
        // A plain folder works, and its detach unmounts the LUN and nothing else.
        // Written with a doubled and a trailing slash: kept as /tmp/plain.
        #expect(silo(state, ["system", "modify", id, "--attach", "lnk://tmp//plain/"]).status == 0)
        #expect(silo(state, ["process", "create", id, "--", "/bin/sh", "-c", "grep -q ' /tmp/plain ' /proc/mounts"]).status == 0)
        #expect(silo(state, ["system", "modify", id, "--detach", "lnk"]).status == 0)
        // Moved where the detach does not look (its parent renamed inside): the detach is
        // refused and the LUN keeps its lease, rather than staying mounted with its lease given back.
        #expect(silo(state, ["system", "modify", id, "--attach", "lnk:/tmp/a/data"]).status == 0)
        #expect(silo(state, ["process", "create", id, "--", "/bin/mv", "/tmp/a", "/tmp/b"]).status == 0)
        let moved = silo(state, ["system", "modify", id, "--detach", "lnk"])
        #expect(moved.status == 1 && moved.error.contains("still mounted at /tmp/b/data"), "\(moved.error)")
        #expect(silo(state, ["lun", "delete", "lnk"]).status == 1, "still leased")
        #expect(silo(state, ["process", "create", id, "--", "/bin/mv", "/tmp/b", "/tmp/a"]).status == 0)
        let after = silo(state, ["process", "create", id, "--", "/bin/sh", "-c",
                                 "! grep -q ' /tmp/plain ' /proc/mounts && grep ' /proc/sys ' /proc/mounts | grep -q ' ro,'"])
        #expect(after.status == 0, "the LUN is gone and /proc/sys is still read-only: \(after.error)")
        #expect(silo(state, ["system", "terminate", id]).status == 0)
    }
}

@Suite("silo system CLI", .tags(.root), .requiresLoopDevices, .requiresSiloBinary)
struct SystemCLITests {
    @Test("C4 silo system create, start, pause, resume, properties, shutdown; errors name the id")
    func lifecycle() throws {
        let scratch = Scratch()
        defer { scratch.cleanup() }
        let state = scratch.path + "/state"
        let document = scratch.path + "/doc.json"
        let text = #"{"SchemaVersion":{"Major":2,"Minor":1},"Owner":"cli-test","VirtualMachine":{"ComputeTopology":{"Memory":{"SizeInMB":64}}},"ShouldTerminateOnLastHandleClosed":false}"#
        let fd = open(document, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        _ = text.withCString { write(fd, $0, strlen($0)) }
        close(fd)
        let id = "cli-\(getpid())"
        defer { _ = silo(state, ["system", "terminate", id]) }
        #expect(silo(state, ["system", "create", "--id", id, "--config", document]).status == 0)
        #expect(silo(state, ["system", "start", id]).status == 0)
        #expect(silo(state, ["system", "list", "--state", "running"]).output.contains(id))
        #expect(silo(state, ["system", "pause", id]).status == 0)
        let paused = silo(state, ["system", "properties", id, "--json"])
        #expect(paused.output.contains(#""state" : "Paused""#), "\(paused.output)")
        // The same document but for the uptime, which may tick between the two calls.
        let steady = { (text: String) in text.split(separator: "\n").filter { !$0.contains("\"uptimeSeconds\"") } }
        #expect(steady(silo(state, ["system", "show", id, "--json"]).output) == steady(paused.output), "the alias, with --state-dir before it")
        let wrong = silo(state, ["system", "pause", id])
        #expect(wrong.status == 1 && wrong.error.contains("Paused"))
        #expect(silo(state, ["system", "resume", id]).status == 0)
        #expect(silo(state, ["system", "shutdown", id]).status == 0)
        #expect(!silo(state, ["system", "list"]).output.contains(id), "the last handle of a stopped system removes it")
        let missing = silo(state, ["system", "start", "ghost"])
        #expect(missing.status == 1 && missing.error.contains("'ghost'"))
        let bad = silo(state, ["system", "create", "--id", "x", "--config", "/nonexistent.json"])
        #expect(bad.status == 64 && bad.error.contains("--config"))
        // A system that ends with its last handle would end with this command: refused, nothing made.
        let closing = scratch.path + "/closing.json"
        let closingText = String(text.dropLast("false}".count)) + "true}"
        let closingFD = open(closing, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        _ = closingText.withCString { write(closingFD, $0, strlen($0)) }
        close(closingFD)
        let ends = silo(state, ["system", "create", "--id", "ends", "--config", closing])
        #expect(ends.status == 64 && ends.error.contains("ShouldTerminateOnLastHandleClosed") && ends.error.contains("--config"), "\(ends.error)")
        #expect(!silo(state, ["system", "list"]).output.contains("ends"))
    }
}

extension TestStorage {
    /// LUN `lun` with an ext4 file system, unmasked to `id`, and a document that mounts it at
    /// `/data` (`Devices.Scsi` 0/0); returns the LUN's device and the document's path.
    func lunWithDocument(_ lun: String, for id: String) throws -> (device: String, document: String) {
        let device = try #require(try create(lun, size: 64 << 20).devicePath)
        #expect(run("/sbin/mkfs.ext4", ["-q", "-F", device]).status == 0)
        try provider.setMask(lun, id)
        let document = path + "/doc.json"
        try #require(writeFile(document, #"{"SchemaVersion":{"Major":2,"Minor":1},"VirtualMachine":{"ComputeTopology":{"Memory":{"SizeInMB":64}},"#
            + #""Devices":{"Scsi":{"0":{"Attachments":{"0":{"Type":"VirtualDisk","Path":""# + lun + #"","MountPath":"/data"}}}}}},"#
            + #""ShouldTerminateOnLastHandleClosed":false}"#))
        return (device, document)
    }
}
