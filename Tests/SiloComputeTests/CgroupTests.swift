import CSiloLinux
import Glibc
import SiloOperations
import Testing

@testable import SiloCompute

extension Tag {
    @Tag static var root: Self
}

extension Trait where Self == ConditionTrait {
    static var requiresCgroups: Self {
        .enabled(
            if: geteuid() == 0 && (CgroupLayout.detect().place("memory") != nil),
            "needs root and a memory cgroup controller (v1 or v2)"
        )
    }
}

/// posix_spawn, with the child starting as a shell would start it: no signal blocked, every signal's
/// default action. A test runs on a thread that blocks nearly every signal, and a child inherits
/// that mask (a shell whose SIGCHLD stays blocked never returns from `wait`; a CLI would not see a
/// SIGTERM a user's shell delivers).
func spawnCleanly(_ pid: inout pid_t, _ path: String, _ actions: UnsafePointer<posix_spawn_file_actions_t>?,
                  _ argv: [UnsafeMutablePointer<CChar>?], _ envp: UnsafePointer<UnsafeMutablePointer<CChar>?>?) -> Int32 {
    var attributes = posix_spawnattr_t()
    posix_spawnattr_init(&attributes)
    defer { posix_spawnattr_destroy(&attributes) }
    let reset = silo_spawnattr_reset_signals(&attributes, 1)
    guard reset == 0 else { return reset }
    return posix_spawn(&pid, path, actions, &attributes, argv, envp)
}

/// Starts `/bin/sh -c script` already inside `cgroup` (the child waits on a pipe until added).
func startInside(_ cgroup: Cgroup, _ script: String) throws -> pid_t {
    var gate: [Int32] = [0, 0]
    pipe(&gate)
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    posix_spawn_file_actions_adddup2(&actions, gate[0], 0)
    posix_spawn_file_actions_addclose(&actions, gate[1])
    let full = "read _; exec /bin/sh -c '\(script)'"
    let words: [String] = ["/bin/sh", "-c", full]
    let argv: [UnsafeMutablePointer<CChar>?] = words.map { strdup($0) } + [nil]
    defer { argv.forEach { free($0) } }
    var pid: pid_t = 0
    let result = spawnCleanly(&pid, "/bin/sh", &actions, argv, environ)
    posix_spawn_file_actions_destroy(&actions)
    close(gate[0])
    guard result == 0 else {
        close(gate[1])
        throw SiloError.system("posix_spawn", errno: result)
    }
    do {
        try cgroup.add(pid: pid)
    } catch {
        // Not inside: it must not run, nor wait forever for a go that never comes.
        kill(pid, SIGKILL)
        close(gate[1])
        waitpid(pid, nil, 0)
        throw error
    }
    _ = write(gate[1], "go\n", 3)
    close(gate[1])
    return pid
}

/// Waits for `pid` for at most `seconds`; a process that outlives that is killed and reported.
/// The default is generous because CI also runs these under software emulation; a process that
/// exits returns at once, so the bound only costs time when something is already wrong.
func reap(_ pid: pid_t, seconds: Double = 120, sourceLocation: SourceLocation = #_sourceLocation) -> Int32 {
    var status: Int32 = 0
    let deadline = ContinuousClock.now + .milliseconds(Int(seconds * 1000))
    while true {
        if waitpid(pid, &status, WNOHANG) == pid {
            return (status & 0x7f) == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
        }
        if ContinuousClock.now >= deadline { break }
        usleep(5000)
    }
    Issue.record("process \(pid) did not exit within \(seconds) s", sourceLocation: sourceLocation)
    kill(pid, SIGKILL)
    return -1
}

func processState(_ pid: pid_t) -> String {
    (readText("/proc/\(pid)/status") ?? "").split(separator: "\n").first { $0.hasPrefix("State:") }.map(String.init) ?? "gone"
}

@Suite("cgroups", .tags(.root), .requiresCgroups, .serialized)
struct CgroupTests {
    let layout = CgroupLayout.detect()

    func makeName() -> String { "test-\(getpid())-\(UInt32.random(in: 0...UInt32.max))" }

    @Test("C13 the layout is detected: which hierarchy serves each controller")
    func detects() {
        #expect(layout.place("memory") != nil)
        #expect(layout.place("pids") != nil)
        #expect(["v1", "v2", "hybrid"].contains(layout.description))
    }

    @Test("C13 statfs tells the standard layout of this host, the same one mountinfo describes")
    func standardLayoutMatchesMountinfo() throws {
        let quick = try #require(CgroupLayout.standard(), "systemd's layout under /sys/fs/cgroup")
        #expect(quick == CgroupLayout.fromMountinfo())
        #expect(layout == quick)
    }

    @Test("C13 mountinfo's escaped mount points (a space as \\040) are read back as the paths they are")
    func mountinfoEscapes() {
        let table = """
            22 1 0:21 / /proc rw,nosuid - proc proc rw
            30 25 0:26 / /srv/cg\\0402 rw,nosuid,nodev,noexec - cgroup2 cgroup2 rw
            31 25 0:27 / /srv/cg\\040v1/mem\\134ory rw,nosuid - cgroup cgroup rw,memory
            32 25 0:28 / /srv/pids rw,nosuid - cgroup cgroup rw,pids
            """
        let layout = CgroupLayout.fromMountinfo(Array(table.utf8))
        #expect(layout.unified == "/srv/cg 2")
        #expect(layout.legacy == ["memory": "/srv/cg v1/mem\\ory", "pids": "/srv/pids"])
    }

    @Test("C13 a v1 hierarchy reached through a link (cpu -> cpu,cpuacct) is placed at the mount point, as mountinfo names it")
    func standardLayoutFollowsLinks() throws {
        if CgroupLayout.detect().legacy["cpu"] == nil { try Test.cancel("no v1 cpu hierarchy on this host to mount again") }
        let base = "/tmp/silo-layout-\(getpid())"
        mkdir(base, 0o755)
        defer { rmdir(base) }
        try #require(mount("none", base, "tmpfs", 0, "size=64k") == 0, "mount a tmpfs: \(String(cString: strerror(errno)))")
        defer { umount2(base, Int32(MNT_DETACH)) }
        // This host's own cpu hierarchy, mounted once more under another name, and linked.
        let options = try #require(["cpu,cpuacct", "cpu"].first { options in
            mkdir(base + "/hierarchy", 0o755)
            return mount("none", base + "/hierarchy", "cgroup", 0, options) == 0
        }, "mount the cpu hierarchy again")
        defer { umount2(base + "/hierarchy", Int32(MNT_DETACH)) }
        #expect(symlink("hierarchy", base + "/cpu") == 0)
        let found = try #require(CgroupLayout.standard(base: base))
        #expect(found.legacy["cpu"] == base + "/hierarchy", "mounted with \(options)")
        #expect(found.unified == nil)
    }

    @Test("C13 the layout is the one findmnt reads from the same mounts")
    func layoutMatchesFindmnt() throws {
        let command = "findmnt -rn -t cgroup,cgroup2 -o TARGET,FSTYPE,FS-OPTIONS 2>/dev/null"
        let pipe = try #require(popen(command, "r"), "cannot run findmnt")
        var output: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            let count = fread(&buffer, 1, buffer.count, pipe)
            if count == 0 { break }
            output += buffer[0..<count]
        }
        try #require(pclose(pipe) == 0, "findmnt failed")
        var unified: String?
        var legacy: [String: String] = [:]
        for line in String(decoding: output, as: UTF8.self).split(separator: "\n") {
            let fields = line.split(separator: " ").map(String.init)
            guard fields.count == 3 else { continue }
            if fields[1] == "cgroup2" {
                if unified == nil || fields[0] == "/sys/fs/cgroup" { unified = fields[0] }
            } else {
                for option in fields[2].split(separator: ",").map(String.init) where CgroupLayout.knownControllers.contains(option) {
                    legacy[option] = fields[0]
                }
            }
        }
        #expect(layout.unified == unified)
        #expect(layout.legacy == legacy)
        #expect(!legacy.isEmpty || unified != nil)
    }

    @Test("C1 C10 limits from a document land in the controllers' files")
    func limits() throws {
        let document = try ComputeSystemDocument(json: """
            {"SchemaVersion": {"Major": 2, "Minor": 1}, "VirtualMachine": {"ComputeTopology":
              {"Memory": {"SizeInMB": 96}, "Processor": {"Count": 2, "Weight": 200}}}}
            """)
        let cgroup = try Cgroup.create(name: makeName(), limits: CgroupLimits(document, pids: 64), layout: layout)
        defer { try? cgroup.destroy() }
        switch layout.place("memory") {
        case .v1?: #expect(readText(try cgroup.path("memory") + "/memory.limit_in_bytes") == "\(96 << 20)")
        case .v2?: #expect(readText(try cgroup.path("unified") + "/memory.max") == "\(96 << 20)")
        case nil: Issue.record("no memory controller")
        }
        switch layout.place("cpu") {
        case .v1?:
            #expect(readText(try cgroup.path("cpu") + "/cpu.cfs_quota_us") == "200000")
            #expect(readText(try cgroup.path("cpu") + "/cpu.shares") == "2048")
        case .v2?:
            #expect(readText(try cgroup.path("unified") + "/cpu.max") == "200000 100000")
            #expect(readText(try cgroup.path("unified") + "/cpu.weight") == "200")
        case nil: break
        }
        #expect(readText((cgroup.directory("pids") ?? "") + "/pids.max") == "64")
    }

    @Test("C10 a limit in two files (v1 memory and memsw) whose second write is refused puts the first back")
    func pairedWriteRollsBack() throws {
        let cgroup = try Cgroup.create(name: makeName(), limits: CgroupLimits(memory: 64 << 20), layout: layout)
        defer { try? cgroup.destroy() }
        let directory = try #require(layout.place("memory") == .v1 ? cgroup.directory("memory") : cgroup.directory("unified"))
        let limit = directory + (layout.place("memory") == .v1 ? "/memory.limit_in_bytes" : "/memory.max")
        #expect(throws: SiloError.self) { try Cgroup.writeBoth("\(32 << 20)", to: limit, then: directory + "/no-such-file") }
        #expect(readText(limit) == "\(64 << 20)")
        try Cgroup.writeBoth("\(48 << 20)", to: limit, then: limit)
        #expect(readText(limit) == "\(48 << 20)")
    }

    @Test("C10 on v1, a CPU limit over what an ancestor cgroup allows is refused naming the ancestor and its limit, and nothing is left",
          .enabled(if: CgroupLayout.detect().place("cpu") == .v1, "the cpu controller is not on a v1 hierarchy here (v2 takes such a limit, and the ancestor's holds)"))
    func cpuQuotaOverAncestor() throws {
        let root = try #require(layout.legacy["cpu"])
        // A parent allowed half a processor.
        let parentName = makeName()
        let parent = root + "/" + parentName
        try #require(mkdir(parent, 0o755) == 0)
        // The parent is made in every hierarchy by the create, and never removed by Silo.
        let hierarchies = Array(Set(layout.legacy.values)) + (layout.unified.map { [$0] } ?? [])
        defer { for hierarchy in hierarchies { rmdir(hierarchy + "/" + parentName) } }
        try writeText(parent + "/cpu.cfs_quota_us", "50000")
        try #require(readText(parent + "/cpu.cfs_quota_us") == "50000")
        var under = layout
        under.parent = parentName
        let name = makeName()
        let refused = #expect(throws: SiloError.self) {
            _ = try Cgroup.create(name: name, limits: CgroupLimits(cpus: 2), layout: under)
        }
        #expect(refused?.code == .invalidArgument && refused?.field == "cpus" && refused?.value == "2.0", "\(String(describing: refused))")
        #expect(refused?.message.contains(parent) == true && refused?.message.contains("0.5 processors") == true, "\(String(describing: refused))")
        for hierarchy in hierarchies {
            #expect(access(hierarchy + "/" + parentName + "/" + name, F_OK) != 0, "the refused cgroup is left in \(hierarchy)")
        }
        // Within it, taken.
        let fits = try Cgroup.create(name: name, limits: CgroupLimits(cpus: 0.25), layout: under)
        #expect(readText(parent + "/" + name + "/cpu.cfs_quota_us") == "25000")
        try fits.destroy()
    }

    @Test("C1 C10 a document's Processor.Weight 0 (HCS's unset value) gives the default CPU share, not the smallest")
    func weightZeroIsTheDefault() throws {
        let document = try ComputeSystemDocument(json: """
            {"SchemaVersion": {"Major": 2, "Minor": 1}, "VirtualMachine": {"ComputeTopology":
              {"Processor": {"Count": 1, "Weight": 0}}}}
            """)
        #expect(document.processorWeight == nil)
        let cgroup = try Cgroup.create(name: makeName(), limits: CgroupLimits(document), layout: layout)
        defer { try? cgroup.destroy() }
        switch layout.place("cpu") {
        case .v1?: #expect(readText(try cgroup.path("cpu") + "/cpu.shares") == "1024")
        case .v2?: #expect(readText(try cgroup.path("unified") + "/cpu.weight") == "100")
        case nil: Issue.record("no cpu controller")
        }
    }

    @Test("C3 a create refused because the cgroup exists removes nothing of the one that is there")
    func existingCgroupLeftAlone() throws {
        let name = makeName()
        let there = try Cgroup.create(name: name, limits: CgroupLimits(pids: 16), layout: layout)
        defer { try? there.destroy() }
        let refused = #expect(throws: SiloError.self) { _ = try Cgroup.create(name: name, limits: CgroupLimits(pids: 16), layout: layout) }
        #expect(refused?.code == .systemAlreadyExists)
        #expect(!there.directories.isEmpty && there.directories.values.allSatisfy { fileExists($0) }, "\(there.directories)")
    }

    @Test("C10 a process allocating over the memory limit is OOM-killed inside; the count says so")
    func oomKill() throws {
        let cgroup = try Cgroup.create(name: makeName(), limits: CgroupLimits(memory: 32 << 20, pids: 64), layout: layout)
        defer { try? cgroup.destroy() }
        // dd allocates its block size as one buffer and touches it.
        let pid = try startInside(cgroup, "exec /bin/dd if=/dev/zero of=/dev/null bs=256M count=1 2>/dev/null")
        let status = reap(pid)
        #expect(status == 128 + SIGKILL, "dd exited \(status)")
        #expect(cgroup.oomKills >= 1)
    }

    @Test("Cgroups: a cgroup is empty only when its cgroup.procs reads empty or the cgroup is gone; a read that fails tells nothing")
    func emptinessNeedsARead() throws {
        var template = Array("/tmp/silo-procs-XXXXXX".utf8CString)
        let folder = try #require(template.withUnsafeMutableBufferPointer { $0.baseAddress.flatMap { mkdtemp($0) } }.map { String(cString: $0) })
        defer { _ = Glibc.system("rm -rf '\(folder)'") }
        let cgroup = Cgroup(name: "probe", layout: layout, directories: ["devices": folder])
        #expect(cgroup.hasNoProcesses, "no cgroup.procs: the cgroup is gone")
        try #require(mkdir(folder + "/cgroup.procs", 0o755) == 0)
        #expect(!cgroup.hasNoProcesses, "a read that fails (EISDIR here, EMFILE in a daemon out of descriptors) says nothing")
        rmdir(folder + "/cgroup.procs")
        close(open(folder + "/cgroup.procs", O_CREAT | O_WRONLY | O_CLOEXEC, 0o644))
        #expect(cgroup.hasNoProcesses)
        try writeText(folder + "/cgroup.procs", "4242\n")
        #expect(!cgroup.hasNoProcesses)
        #expect(!Cgroup(name: "nowhere", layout: layout, directories: [:]).hasNoProcesses, "no folder at all: nothing to tell")
    }

    @Test("C13 a cgroup2 controller the kernel will not enable is named, with why: not delegated to the level, or the level holds processes",
          .enabled(if: CgroupLayout.detect().unified.map { !(readText($0 + "/cgroup.controllers") ?? "").isEmpty } ?? false,
                   "no controller on this host's cgroup2 mount"))
    func controllerRefusals() throws {
        let unified = try #require(layout.unified)
        let available = (readText(unified + "/cgroup.controllers") ?? "").split(separator: " ").map(String.init)
        let given = (readText(unified + "/cgroup.subtree_control") ?? "").split(separator: " ").map(String.init)
        let missing = try #require(available.first)
        let level = unified + "/" + makeName()
        try #require(mkdir(level, 0o755) == 0)
        defer { rmdir(level) }
        // Not delegated: a controller of the host's that the child's parent (the new level, which
        // enables nothing) does not pass down.
        let child = level + "/child"
        try #require(mkdir(child, 0o755) == 0)
        let undelegated = #expect(throws: SiloError.self) { try Cgroup.enable([missing], in: child) }
        rmdir(child)
        #expect(undelegated?.code == .systemNotConfiguredForOperation && undelegated?.value == child
                && undelegated?.message.contains("the \(missing) controller is not delegated to \(child)") == true,
                "\(String(describing: undelegated))")
        // A level that holds a process of its own gives its children no domain controller. The
        // threaded ones (cpu, cpuset, pids, perf_event) are exempt from that rule where the level
        // could be a thread root, so the kernel enables them there (a cgroup2-only host's root
        // passes cpu down first).
        let threaded: Set<String> = ["cpu", "cpuset", "pids", "perf_event"]
        guard let controller = given.first(where: { !threaded.contains($0) }) ?? available.first(where: { !threaded.contains($0) }) else {
            try Test.cancel("no domain controller (memory, io, hugetlb, ...) on this host's cgroup2 mount")
        }
        let added = !given.contains(controller)
        if added, (try? writeText(unified + "/cgroup.subtree_control", "+" + controller)) == nil {
            try Test.cancel("the cgroup2 root here gives no controller to its children (a container's, holding processes)")
        }
        defer { if added { try? writeText(unified + "/cgroup.subtree_control", "-" + controller) } }
        var pid: pid_t = 0
        let words = ["/bin/sleep", "30"]
        let argv: [UnsafeMutablePointer<CChar>?] = words.map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        try #require(posix_spawn(&pid, "/bin/sleep", nil, nil, argv, environ) == 0)
        defer {
            kill(pid, SIGKILL)
            waitpid(pid, nil, 0)
        }
        try writeText(level + "/cgroup.procs", "\(pid)")
        let error = #expect(throws: SiloError.self) { try Cgroup.enable([controller], in: level) }
        #expect(error?.code == .systemNotConfiguredForOperation && error?.field == "cgroup parent"
                && error?.message.contains("cannot enable the \(controller) cgroup controller: \(level) holds processes of its own") == true,
                "\(String(describing: error))")
        #expect(readText(level + "/cgroup.subtree_control") == "", "nothing was enabled")
    }

    @Test("C13 cgroup2's device program allows the minimal /dev and the system's LUNs and denies the rest",
          .enabled(if: CgroupLayout.detect().unified != nil, "no cgroup2 mount on this host: nothing to attach a device program to"))
    func deviceProgram() throws {
        let unified = try #require(layout.unified)
        // cgroup2 alone decides here: the v1 devices hierarchy is left out of this cgroup.
        var cgroup2Only = layout
        cgroup2Only.legacy["devices"] = nil
        let cgroup = try Cgroup.create(name: makeName(), limits: CgroupLimits(pids: 16), layout: cgroup2Only)
        defer { try? cgroup.destroy() }
        // Exit 10: /dev/null opens and /dev/loop-control does not; 11: both open; 1: /dev/null refused.
        let probe = "exec 3</dev/null || exit 1; if (exec 4</dev/loop-control) 2>/dev/null; then exit 11; else exit 10; fi"
        #expect(reap(try startInside(cgroup, probe)) == 10, "the program denies a device it does not list")
        // The same probe in a cgroup2 directory without the program opens both: the probe can tell.
        let control = Cgroup(name: makeName(), layout: cgroup2Only, directories: ["unified": unified + "/" + makeName()])
        try makeDirectory(control.directories["unified"] ?? "")
        defer { try? control.destroy() }
        #expect(reap(try startInside(control, probe)) == 11)
        // A LUN's block device, allowed later (as an attach while running does); denied again after.
        let block = "if (exec 4</dev/loop0) 2>/dev/null; then exit 12; else exit 13; fi"
        #expect(reap(try startInside(cgroup, block)) == 13)
        try cgroup.setBlockDevices([DeviceGrant(number: "7:0", writable: true)])
        #expect(reap(try startInside(cgroup, block)) == 12)
        #expect(reap(try startInside(cgroup, probe)) == 10, "and only that device")
        #expect(reap(try startInside(cgroup, Self.writeProbe)) == 14)
        // Attached read-only: read, not written.
        try cgroup.setBlockDevices([try #require(DeviceGrant(number: "7:0", readOnly: true, mountPath: nil))])
        #expect(reap(try startInside(cgroup, block)) == 12)
        #expect(reap(try startInside(cgroup, Self.writeProbe)) == 15, "no write through the node of a read-only LUN")
        #expect(DeviceGrant(number: "7:0", readOnly: false, mountPath: "/data") == nil, "a mounted LUN gets no grant")
        try cgroup.setBlockDevices([], removing: ["7:0"])
        #expect(reap(try startInside(cgroup, block)) == 13)
    }

    @Test("C12 C13 on a hybrid host v1's devices controller alone decides: no device program is loaded, and one a system kept from an older Silo goes at the next grant",
          .enabled(if: CgroupLayout.detect().unified != nil && CgroupLayout.detect().legacy["devices"] != nil,
                   "needs a hybrid host: a cgroup2 mount and a v1 devices hierarchy"))
    func hybridDeviceGrants() throws {
        let cgroup = try Cgroup.create(name: makeName(), limits: CgroupLimits(pids: 16), layout: layout)
        defer { try? cgroup.destroy() }
        let unified = try #require(cgroup.directories["unified"])
        // Exit 12: /dev/loop0 opens for reading; 13: it does not.
        let block = "if (exec 4</dev/loop0) 2>/dev/null; then exit 12; else exit 13; fi"
        #expect(reap(try startInside(cgroup, block)) == 13, "v1 denies what it does not grant")
        try cgroup.setBlockDevices([DeviceGrant(number: "7:0", writable: true)])
        #expect(reap(try startInside(cgroup, block)) == 12, "granted by v1, and no program denies it")
        // A program an older Silo attached (it loaded one here too), denying everything but the
        // minimal /dev: the next grant takes it away.
        let older = Cgroup(name: cgroup.name, layout: layout, directories: ["unified": unified])
        try older.setBlockDevices([])
        #expect(reap(try startInside(cgroup, block)) == 13, "the older program denies it")
        try cgroup.setBlockDevices([DeviceGrant(number: "7:0", writable: true)])
        #expect(reap(try startInside(cgroup, block)) == 12, "the older program is gone")
    }

    /// Exit 14: /dev/loop0 opens for writing; 15: it does not.
    static let writeProbe = "if (exec 4<>/dev/loop0) 2>/dev/null; then exit 14; else exit 15; fi"

    @Test("C12 C13 v1's devices controller: a block device granted for writing, then cut back to reading",
          .enabled(if: CgroupLayout.detect().legacy["devices"] != nil, "no v1 devices hierarchy on this host (cgroup2 only)"))
    func legacyDeviceGrants() throws {
        // v1 alone decides here: no cgroup2 directory, so no device program.
        var legacyOnly = layout
        legacyOnly.unified = nil
        let cgroup = try Cgroup.create(name: makeName(), limits: CgroupLimits(pids: 16), layout: legacyOnly)
        defer { try? cgroup.destroy() }
        #expect(reap(try startInside(cgroup, Self.writeProbe)) == 15, "not granted: not opened")
        try cgroup.setBlockDevices([DeviceGrant(number: "7:0", writable: true)])
        #expect(reap(try startInside(cgroup, Self.writeProbe)) == 14)
        try cgroup.setBlockDevices([DeviceGrant(number: "7:0", writable: false)])
        #expect(reap(try startInside(cgroup, Self.writeProbe)) == 15, "cut back to reading")
        #expect(reap(try startInside(cgroup, "if (exec 4</dev/loop0) 2>/dev/null; then exit 12; else exit 13; fi")) == 12)
    }

    @Test("C10 a fork bomb stops at the pids limit")
    func forkBomb() throws {
        let cgroup = try Cgroup.create(name: makeName(), limits: CgroupLimits(pids: 16), layout: layout)
        defer { try? cgroup.destroy() }
        let pid = try startInside(cgroup, "for i in $(seq 1 100); do sleep 30 & done 2>/dev/null; wait")
        var reaped = false
        defer { if !reaped { try? cgroup.killAll(); _ = reap(pid) } }  // a failed check leaves no process
        // Sampled for a second at least, and on until the bomb fills the limit (slow under software
        // emulation), for 30 s at most.
        var peak = 0
        let sampling = ContinuousClock.now
        repeat {
            peak = max(peak, cgroup.pids.count)
            usleep(5000)
        } while sampling.duration(to: .now) < .seconds(1) || (peak < 16 && sampling.duration(to: .now) < .seconds(30))
        #expect(peak <= 16)
        #expect(peak >= 8, "the bomb got going: \(peak)")
        try cgroup.killAll()
        _ = reap(pid)
        reaped = true
        #expect(cgroup.pids.isEmpty)
    }

    @Test("Freeze stops every process, late forks included; thaw resumes; kill works while frozen", arguments: [false, true])
    func freezeThawKill(legacyFreezer: Bool) throws {
        var layout = self.layout
        layout.preferLegacyFreezer = legacyFreezer
        if legacyFreezer, layout.legacy["freezer"] == nil { try Test.cancel("no v1 freezer on this host: the v1 path cannot run") }
        let cgroup = try Cgroup.create(name: makeName(), limits: CgroupLimits(pids: 64), layout: layout)
        defer { try? cgroup.destroy() }
        let pid = try startInside(cgroup, "while true; do sleep 0.01 & wait; done")
        var reaped = false
        defer { if !reaped { try? cgroup.thaw(); try? cgroup.killAll(); _ = reap(pid) } }  // a failed check leaves no process
        try cgroup.freeze()
        #expect(cgroup.isFrozen)
        let frozen = cgroup.pids
        #expect(frozen.contains(pid), "\(frozen)")
        usleep(50_000)
        #expect(cgroup.pids == frozen, "nothing forks while frozen")
        try cgroup.thaw()
        #expect(!cgroup.isFrozen)
        #expect(eventually { cgroup.pids != frozen }, "thawed, the loop forks again")
        try cgroup.freeze()
        try cgroup.killAll()
        #expect(reap(pid) == 128 + SIGKILL)
        reaped = true
        #expect(cgroup.pids.isEmpty)
    }

    @Test("C5 on a cgroup2-only host without cgroup.kill (Linux 5.8 to 5.13), killing freezes first, and leaves the cgroup thawed",
          .enabled(if: CgroupLayout.detect().unified != nil, "no cgroup2 mount on this host"))
    func killWithoutCgroupKill() throws {
        // This host's layout as a cgroup2-only one (no v1 freezer) whose kernel has no cgroup.kill.
        var older = layout
        older.usesCgroupKill = false
        older.legacy["freezer"] = nil
        // Room for the loop: at the pids limit a fork fails, and the shell exits (status 2) on its own
        // instead of being killed (it did, now and then, with 64).
        let cgroup = try Cgroup.create(name: makeName(), limits: CgroupLimits(pids: 4096), layout: older)
        defer { try? cgroup.killAll(); try? cgroup.destroy() }
        #expect(cgroup.killMethod == .freezeFirst, "\(cgroup.killMethod)")
        // The same host as it is: cgroup.kill.
        let current = try Cgroup.create(name: makeName(), limits: CgroupLimits(pids: 64), layout: layout)
        defer { try? current.destroy() }
        #expect(current.killMethod == (fileExists(try #require(current.directories["unified"]) + "/cgroup.kill") ? .cgroupKill : .freezeFirst))
        // A fork loop, killed that way: every process gone, and the cgroup not left frozen.
        // Children that live a second: under software emulation a fork takes long enough that
        // shorter ones could be gone before eight are alive at once.
        let pid = try startInside(cgroup, "while true; do sleep 1 & done")
        #expect(eventually(seconds: 30) { cgroup.pids.count >= 8 }, "the loop got going")
        try cgroup.killAll()
        #expect(reap(pid) == 128 + SIGKILL)
        #expect(cgroup.pids.isEmpty)
        #expect(!cgroup.isFrozen)
        #expect(readText(try #require(cgroup.directories["unified"]) + "/cgroup.freeze") == "0")
    }

    @Test("C10 processor time is counted from cgroup2's cpu.stat where no hierarchy has the cpu controller",
          .enabled(if: CgroupLayout.detect().unified != nil, "no cgroup2 mount on this host"))
    func processorTimeWithoutCpuController() throws {
        // This host's layout without its v1 cpu and cpuacct hierarchies, and with no controller in
        // cgroup2: a subtree delegated without the cpu controller looks the same.
        var withoutCpu = layout
        withoutCpu.legacy["cpu"] = nil
        withoutCpu.legacy["cpuacct"] = nil
        withoutCpu.unifiedControllers.remove("cpu")
        let cgroup = try Cgroup.create(name: makeName(), limits: CgroupLimits(pids: 64), layout: withoutCpu)
        defer { try? cgroup.killAll(); try? cgroup.destroy() }
        let pid = try startInside(cgroup, "i=0; while [ $i -lt 100000 ]; do i=$((i+1)); done")
        _ = reap(pid)
        let stats = cgroup.statistics
        #expect(stats.cpuUser100ns + stats.cpuKernel100ns > 0, "\(stats)")
    }

    @Test("C5 destroy leaves no cgroup directory behind; statistics count CPU and memory")
    func destroyAndStatistics() throws {
        let cgroup = try Cgroup.create(name: makeName(), limits: CgroupLimits(memory: 64 << 20, pids: 64), layout: layout)
        var destroyed = false
        defer { if !destroyed { try? cgroup.killAll(); try? cgroup.destroy() } }  // also when a step throws
        // It keeps 8 MiB of its own in memory while it counts.
        let pid = try startInside(cgroup, "x=$(head -c 8388608 /dev/zero | tr \\\\0 a); i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done; echo ${#x} >/dev/null")
        var peak: UInt64 = 0
        // Until it has exited: under software emulation the count takes far longer than here.
        let deadline = ContinuousClock.now + .seconds(120)
        while ContinuousClock.now < deadline, !processState(pid).contains("Z") && processState(pid) != "gone" {
            peak = max(peak, cgroup.statistics.memoryUsage)
            usleep(5_000)
        }
        _ = reap(pid)
        let stats = cgroup.statistics
        #expect(stats.cpuUser100ns + stats.cpuKernel100ns > 0)
        // Most of the 8 MiB (a shell alone uses well under 1 MiB; Linux 6.1's cgroup2 counted 7.7 MiB
        // of the string at its sampled peak).
        #expect(peak >= 6 << 20, "memory usage counts what its processes use: \(peak)")
        #expect(stats.processes == 0)
        try cgroup.destroy()
        destroyed = true
        for path in cgroup.directories.values { #expect(!fileExists(path), "\(path)") }
        #expect((#expect(throws: SiloError.self) {
            _ = try Cgroup.create(name: "a", limits: CgroupLimits(memory: 1 << 20), layout: CgroupLayout(unified: nil, unifiedControllers: [], legacy: [:]))
        })?.code == .systemNotConfiguredForOperation)
    }
}
