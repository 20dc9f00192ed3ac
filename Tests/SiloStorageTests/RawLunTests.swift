import CSiloLinux
import Glibc
import Testing

@testable import SiloStorage

/// A LUN given to a system as a raw device: Linux revokes no descriptor, so the system keeps its
/// lease until it stops, and a LUN is never mounted while a system may still write it raw (C12,
/// S10). A write under a mounted file system changes what the host's kernel parses.
@Suite("LUNs given raw to running systems", .tags(.root), .requiresLoopDevices, .requiresSiloBinary, .serialized)
struct RawLunTests {
    @Test("C12 S10 a LUN given raw stays leased to its system until it stops, even detached; meanwhile it is mounted nowhere, and a mounted LUN is not given raw for writing")
    func rawLeases() throws {
        let storage = TestStorage()
        defer { storage.finish() }
        let state = storage.provider.configuration.stateDirectory
        let (a, b, c, d) = ("rawa-\(getpid())", "rawb-\(getpid())", "rawc-\(getpid())", "rawd-\(getpid())")
        let device = try #require(try storage.create("raw", size: 32 << 20).devicePath)
        #expect(run("/sbin/mkfs.ext4", ["-q", "-F", device]).status == 0)
        try storage.provider.setMask("raw", "*")
        let document = try containerDocument(in: storage)
        for id in [a, b, c, d] {
            #expect(silo(state, ["system", "create", "--id", id, "--config", document]).status == 0)
            #expect(silo(state, ["system", "start", id]).status == 0)
        }
        defer { for id in [a, b, c, d] { _ = silo(state, ["system", "terminate", id]) } }

        // Raw and writable in a, where a process keeps a descriptor open past the detach.
        #expect(silo(state, ["system", "modify", a, "--attach", "raw"]).status == 0)
        let keeper = silo(state, ["process", "create", a, "--detach", "--", "/bin/sh", "-c", "exec 3<>\(device); exec sleep 100"])
        #expect(keeper.status == 0, "\(keeper.error)")
        let mountedElsewhere = silo(state, ["system", "modify", b, "--attach", "raw:/m"])
        #expect(mountedElsewhere.status == 1 && mountedElsewhere.error.contains("compute system '\(a)' has its raw device"),
                "\(mountedElsewhere.error)")
        #expect(silo(state, ["system", "modify", a, "--detach", "raw"]).status == 0)
        let deleted = silo(state, ["lun", "delete", "raw"])
        #expect(deleted.status == 1 && deleted.error.contains("compute system '\(a)' (raw)"), "still leased after the detach: \(deleted.error)")
        let stillRefused = silo(state, ["system", "modify", b, "--attach", "raw:/m"])
        #expect(stillRefused.status == 1 && stillRefused.error.contains("has its raw device"), "\(stillRefused.error)")
        let own = silo(state, ["system", "modify", a, "--attach", "raw:/m"])
        #expect(own.status == 1 && own.error.contains("has its raw device"), "nor in a itself: \(own.error)")
        // Raw and read-only in c meanwhile: it reads, and does not write.
        #expect(silo(state, ["system", "modify", c, "--attach", "raw", "--read-only"]).status == 0)
        let readOnly = silo(state, ["process", "create", c, "--", "/bin/sh", "-c",
                                    "dd if=\(device) of=/dev/null bs=4096 count=1 2>/dev/null"
                                        + " && ! dd if=/dev/zero of=\(device) bs=512 count=1 seek=4000 conv=notrunc 2>/dev/null"])
        #expect(readOnly.status == 0, "\(readOnly.error)")
        #expect(silo(state, ["system", "terminate", a]).status == 0)
        #expect(silo(state, ["system", "terminate", c]).status == 0)

        // a and c stopped, their leases with them: b mounts it.
        let mounted = silo(state, ["system", "modify", b, "--attach", "raw:/m"])
        #expect(mounted.status == 0, "\(mounted.error)")
        // Mounted in b: not given raw for writing to d, whose writes would land under b's mount.
        let whileMounted = silo(state, ["system", "modify", d, "--attach", "raw"])
        #expect(whileMounted.status == 1 && whileMounted.error.contains("is mounted in compute system '\(b)'"), "\(whileMounted.error)")
        #expect(silo(state, ["system", "modify", b, "--detach", "raw"]).status == 0)
        // Nor while the host mounts it.
        let hostMount = storage.path + "/host"
        mkdir(hostMount, 0o755)
        #expect(run("/bin/mount", [device, hostMount]).status == 0)
        let whileHostMounted = silo(state, ["system", "modify", d, "--attach", "raw"])
        #expect(whileHostMounted.status == 1 && whileHostMounted.error.contains("mounted on \(hostMount)"), "\(whileHostMounted.error)")
        #expect(run("/bin/umount", [hostMount]).status == 0)
        #expect(silo(state, ["system", "modify", d, "--attach", "raw"]).status == 0, "unmounted: given raw")
        for id in [b, d] { #expect(silo(state, ["system", "terminate", id]).status == 0) }
        #expect(silo(state, ["lun", "delete", "raw"]).status == 0)
    }

    @Test("C12 a raw LUN of the document detaches while a process inside holds it open, and attaches again, its node bound read-only, nosuid and noexec: written through, the host's node unchanged")
    func startTimeRawDetach() throws {
        let storage = TestStorage()
        defer { storage.finish() }
        let state = storage.provider.configuration.stateDirectory
        let id = "rawdoc-\(getpid())"
        let device = try #require(try storage.create("disk", size: 16 << 20).devicePath)
        try startWithRawDisk(storage, id)
        defer { _ = silo(state, ["system", "terminate", id]) }
        // The payload is uid 0, the owner of the host's node: only a read-only bind keeps it from
        // changing the host's node (its mode, times), while writes through it still reach the LUN.
        // The tries set what is there already (the mode it has, its own time): were they taken,
        // as they were before the fix, the host would be none the worse.
        var before = stat()
        try #require(stat(device, &before) == 0)
        let script = "{ grep ' \(device) ' /proc/self/mountinfo; chmod $(stat -c %a \(device)) \(device); touch -c -m -r \(device) \(device); "
            + "printf data | dd of=\(device) conv=notrunc status=none && echo written; } 2>&1"
        func checkNode(_ when: String) {
            let tried = silo(state, ["process", "create", id, "--", "/bin/sh", "-c", script])
            let mountLine = tried.output.split(separator: "\n").first { $0.contains(" \(device) ") } ?? ""
            #expect(mountLine.contains(" ro,") && mountLine.contains("nosuid") && mountLine.contains("noexec"), "\(when): \(tried.output)")
            #expect(tried.output.components(separatedBy: "Read-only file system").count == 3, "\(when): chmod and touch refused: \(tried.output)")
            #expect(tried.output.hasSuffix("written\n"), "\(when): \(tried.output)")
            var after = stat()
            #expect(stat(device, &after) == 0 && after.st_mode == before.st_mode && after.st_mtim.tv_sec == before.st_mtim.tv_sec,
                    "\(when): the host's node is as it was")
        }
        checkNode("bound at start")
        let holder = silo(state, ["process", "create", id, "--detach", "--", "/bin/sh", "-c", "exec 3<>\(device); exec sleep 100"])
        #expect(holder.status == 0, "\(holder.error)")
        usleep(100_000)
        let detached = silo(state, ["system", "modify", id, "--detach", "disk"])
        #expect(detached.status == 0, "the node is unbound under the open descriptor: \(detached.error)")
        #expect(silo(state, ["process", "create", id, "--", "/bin/sh", "-c", "! test -e \(device)"]).status == 0)
        let again = silo(state, ["system", "modify", id, "--attach", "disk"])
        #expect(again.status == 0, "\(again.error)")
        checkNode("bound by an attach")
        #expect(silo(state, ["system", "terminate", id]).status == 0)
    }

    @Test("C12 S11 a mask that leaves out a system the LUN is attached to is refused, naming it, and changes nothing; one that keeps it, or one after the detach, lands")
    func maskKeepsAttachedSystems() throws {
        let storage = TestStorage()
        defer { storage.finish() }
        let state = storage.provider.configuration.stateDirectory
        let id = "maskheld-\(getpid())"
        _ = try storage.create("disk", size: 16 << 20)
        try startWithRawDisk(storage, id)
        defer { _ = silo(state, ["system", "terminate", id]) }
        for list in ["other", "", "other,more"] {
            let refused = silo(state, ["lun", "mask", "disk", list])
            #expect(refused.status == 1 && refused.error.contains("attached to compute system '\(id)'")
                        && refused.error.contains("[deviceInUse]") && refused.error.contains("(SYSTEMS)"), "'\(list)': \(refused.error)")
            #expect(try storage.provider.lun(named: "disk").unmaskingList == id, "unchanged")
        }
        #expect(silo(state, ["lun", "mask", "disk", "\(id),other"]).status == 0, "keeps the system")
        #expect(silo(state, ["lun", "mask", "disk", "*"]).status == 0)
        #expect(silo(state, ["system", "modify", id, "--detach", "disk"]).status == 0)
        // A raw LUN's lease stays with its system until it stops (a process may hold the node).
        #expect(silo(state, ["system", "terminate", id]).status == 0)
        #expect(silo(state, ["lun", "mask", "disk", ""]).status == 0, "nothing holds it now")
        #expect(try storage.provider.lun(named: "disk").unmaskingList == "")
    }

    @Test("C12 silo run with a LUN whose file system does not mount fails at once, naming the LUN, and leaves nothing")
    func unmountableLun() throws {
        let storage = TestStorage()
        defer { storage.finish() }
        let state = storage.provider.configuration.stateDirectory
        let device = try #require(try storage.create("bad", size: 16 << 20).devicePath)
        #expect(run("/sbin/mkfs.ext4", ["-q", "-F", device]).status == 0)
        try storage.provider.setMask("bad", "*")
        // Still ext4 to libblkid, refused by the kernel's mount: a block size of 2^30.
        try writeBytes(device, offset: 1024 + 0x18, [20])
        let result = run("/usr/bin/timeout", ["-s", "KILL", "30", siloBinary, "--state-dir", state, "run", "--lun", "bad:/data", "--", "/bin/true"])
        #expect(result.status == 1, "an error, not a hang (137): \(result.status)")
        // A run killed while it hung leaves its cgroup and folder to reenumerate, as documented.
        if result.status != 1 { _ = silo(state, ["system", "reenumerate"]) }
        #expect(silo(state, ["system", "list", "--json"]).output.filter { !$0.isWhitespace } == "[]")
        #expect(silo(state, ["lun", "delete", "bad"]).status == 0, "no lease left")
    }

    @Test("C12 a system holds at most 64 LUN leases; past that an attach is refused, saying why, and changes nothing")
    func leaseLimit() throws {
        // 65 LUNs at once need loop nodes beyond those the host had: removed again at the end,
        // once the LUNs are gone (Silo itself keeps idle nodes for reuse).
        let firstNew = nextLoopNumber()
        defer { removeIdleLoopNodes(from: firstNew) }
        let storage = TestStorage()
        defer { storage.finish() }
        let state = storage.provider.configuration.stateDirectory
        let id = "many-\(getpid())"
        let document = try containerDocument(in: storage)
        #expect(silo(state, ["system", "create", "--id", id, "--config", document]).status == 0)
        #expect(silo(state, ["system", "start", id]).status == 0)
        defer { _ = silo(state, ["system", "terminate", id]) }
        // Each given raw and detached again: its lease stays until the system stops.
        for index in 0..<64 {
            _ = try storage.create("m\(index)", size: 1 << 20)
            try storage.provider.setMask("m\(index)", id)
            #expect(silo(state, ["system", "modify", id, "--attach", "m\(index)"]).status == 0, "attach \(index)")
            #expect(silo(state, ["system", "modify", id, "--detach", "m\(index)"]).status == 0, "detach \(index)")
        }
        _ = try storage.create("extra", size: 1 << 20)
        try storage.provider.setMask("extra", id)
        let refused = silo(state, ["system", "modify", id, "--attach", "extra"])
        #expect(refused.status == 1 && refused.error.contains("holds 64 LUN leases, its most"), "\(refused.error)")
        #expect(silo(state, ["process", "create", id, "--", "/bin/sh", "-c", "! ls /dev/loop* 2>/dev/null"]).status == 0, "no node left inside")
        #expect(silo(state, ["lun", "delete", "extra"]).status == 0, "its lease was not kept")
        let first = silo(state, ["lun", "delete", "m0"])
        #expect(first.status == 1 && first.error.contains("(raw)"), "the earlier leases are all still held: \(first.error)")
        #expect(!silo(state, ["system", "properties", id, "--json"]).output.contains("/dev/loop"), "nothing attached")
        #expect(silo(state, ["system", "terminate", id]).status == 0)
    }

    @Test("C12 a start whose LUN leases the agent cannot all take is undone: init killed, the system still Created, its leases and grants given back")
    func startUndone() throws {
        let firstNew = nextLoopNumber()
        defer { removeIdleLoopNodes(from: firstNew) }
        let storage = TestStorage()
        defer { storage.finish() }
        let state = storage.provider.configuration.stateDirectory
        let id = "over-\(getpid())"
        // 65 raw attachments, on two controllers: one more than the agent holds.
        var first: [String] = []
        for index in 0..<65 {
            _ = try storage.create("s\(index)", size: 1 << 20)
            try storage.provider.setMask("s\(index)", id)
            if index < 64 { first.append(#""\#(index)":{"Type":"VirtualDisk","Path":"s\#(index)"}"#) }
        }
        let document = storage.path + "/doc.json"
        #expect(writeFile(document, #"{"SchemaVersion":{"Major":2,"Minor":1},"VirtualMachine":{"ComputeTopology":{"Memory":{"SizeInMB":64}},"Devices":{"Scsi":{"#
            + #""0":{"Attachments":{"# + first.joined(separator: ",") + #"}},"1":{"Attachments":{"0":{"Type":"VirtualDisk","Path":"s64"}}}}}},"#
            + #""ShouldTerminateOnLastHandleClosed":false}"#))
        // Its own cgroup's processes (other suites run systems of their own meanwhile).
        // v1 hierarchies and a cgroup2 at /sys/fs/cgroup/unified, or a cgroup2 at /sys/fs/cgroup itself.
        // Outside /run/silo a system's cgroup is `<id>.<hash of its runtime folder>`.
        let inside = "cat /sys/fs/cgroup/*/silo/\(id).*/cgroup.procs /sys/fs/cgroup/silo/\(id).*/cgroup.procs 2>/dev/null || true"
        let found = "ls /sys/fs/cgroup/*/silo/\(id).*/cgroup.procs /sys/fs/cgroup/silo/\(id).*/cgroup.procs 2>/dev/null | wc -l"
        #expect(silo(state, ["system", "create", "--id", id, "--config", document]).status == 0)
        defer { _ = silo(state, ["system", "terminate", id]) }
        let started = silo(state, ["system", "start", id])
        #expect(started.status == 1 && started.error.contains("holds 64 LUN leases, its most"), "\(started.error)")
        let listed = silo(state, ["system", "list", "--json"]).output
        #expect(listed.contains("Created") && !listed.contains("Running"), "\(listed)")
        #expect(Int(run("/bin/sh", ["-c", found]).output.trimmingSpaces) ?? 0 > 0, "the system's cgroup is where this test looks")
        #expect(run("/bin/sh", ["-c", inside]).output.trimmingSpaces.isEmpty, "its init was killed")
        // Its device grants were taken back (v1's list, where this host has one).
        if access("/sys/fs/cgroup/devices", F_OK) == 0 {
            let grants = run("/bin/sh", ["-c", "cat /sys/fs/cgroup/devices/silo/\(id).*/devices.list"])
            #expect(grants.status == 0 && !grants.output.contains("b 7:"), "\(grants.output)")
        }
        for index in [0, 63, 64] { #expect(silo(state, ["lun", "delete", "s\(index)"]).status == 0, "lease of s\(index) given back") }
    }
}

/// The cgroup folders of system `id` (`<id>.<hash>` outside /run/silo) in every hierarchy: each v1
/// one's `silo/`, and on a pure cgroup v2 host /sys/fs/cgroup's own.
func systemCgroups(_ id: String) -> [String] {
    (["/sys/fs/cgroup"] + directoryEntries("/sys/fs/cgroup").map { "/sys/fs/cgroup/" + $0 }).flatMap { root in
        directoryEntries(root + "/silo").filter { $0.hasPrefix(id + ".") }.map { root + "/silo/" + $0 }
    }
}

/// The number after the highest loop node the host has now.
func nextLoopNumber() -> Int {
    (directoryEntries("/sys/block").compactMap { $0.hasPrefix("loop") ? Int($0.dropFirst(4)) : nil }.max() ?? -1) + 1
}

/// A container document with 64 MB of memory that outlives its handles, written in the test's folder.
func containerDocument(in storage: TestStorage) throws -> String {
    let document = storage.path + "/doc.json"
    try #require(writeFile(document, #"{"SchemaVersion":{"Major":2,"Minor":1},"Container":{"Memory":{"SizeInMB":64}},"ShouldTerminateOnLastHandleClosed":false}"#))
    return document
}

/// Removes the unbound loop nodes numbered `first` and up (a bound one refuses and stays), holding
/// /dev/loop-control's lock as Silo's attaches do, so none is taken away between their look-up
/// and their bind.
func removeIdleLoopNodes(from first: Int) {
    let control = open("/dev/loop-control", O_RDWR | O_CLOEXEC)
    guard control >= 0 else { return }
    defer { close(control) }
    flock(control, LOCK_EX)
    for number in first..<(first + 4096) where access("/sys/block/loop\(number)", F_OK) == 0 {
        _ = silo_loop_ctl_remove(control, Int32(number))
    }
}

/// Unmasks LUN "disk" to system `id`, then creates and starts `id` (through the CLI) from a
/// document that attaches "disk" raw.
private func startWithRawDisk(_ storage: TestStorage, _ id: String) throws {
    let state = storage.provider.configuration.stateDirectory
    try storage.provider.setMask("disk", id)
    let document = storage.path + "/doc.json"
    #expect(writeFile(document, #"{"SchemaVersion":{"Major":2,"Minor":1},"VirtualMachine":{"ComputeTopology":{"Memory":{"SizeInMB":64}},"#
        + #""Devices":{"Scsi":{"0":{"Attachments":{"0":{"Type":"VirtualDisk","Path":"disk"}}}}}},"ShouldTerminateOnLastHandleClosed":false}"#))
    #expect(silo(state, ["system", "create", "--id", id, "--config", document]).status == 0)
    let started = silo(state, ["system", "start", id])
    #expect(started.status == 0, "\(started.error)")
}
