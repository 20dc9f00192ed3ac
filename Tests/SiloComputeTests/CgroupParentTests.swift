import Dispatch
import Glibc
import SiloOperations
import Testing

@testable import SiloCompute

/// Systems' cgroups under a parent the caller chose (a delegated subtree), instead of `silo`.
@Suite("cgroup parent", .tags(.root), .requiresCgroups, .serialized)
struct CgroupParentTests {
    /// Every hierarchy's root in this host's layout.
    let roots: [String] = {
        let layout = CgroupLayout.detect()
        return Array(Set(layout.legacy.values)) + (layout.unified.map { [$0] } ?? [])
    }()

    /// Removes `top/...` (the parent's folders, deepest first) from every hierarchy.
    func removeParent(_ levels: [String]) {
        for root in roots {
            for level in levels.reversed() { rmdir(root + "/" + level) }
        }
    }

    @Test("C5 C13 a system's cgroups go under the chosen parent (made where missing); its record keeps the parent for later handles; the parent stays after it goes")
    func systemUnderParent() throws {
        let compute = TestCompute()
        let top = "silo-test-\(getpid())"
        let parent = top + "/payloads"
        defer { removeParent([top, parent]) }
        defer { compute.finish() }  // even if the create throws
        let service = ComputeService(configuration: ComputeConfiguration(stateDirectory: compute.state, cgroupParent: parent))
        let id = "parented-\(getpid())"
        let name = service.configuration.cgroupName(for: id)
        let system = try service.createComputeSystem(id: id, document: compute.document()).wait(timeout: .seconds(30))
        defer { system.close() }
        try system.start().wait(timeout: .seconds(30))
        let directories = system.cgroup.directories.values
        #expect(!directories.isEmpty)
        for directory in directories {
            #expect(directory.hasSuffix("/" + parent + "/" + name) && fileExists(directory), "\(directory)")
        }
        // The kernel's own view: init's membership, as the host sees it.
        let initPID = try #require(system.cgroup.pids.first)
        let membership = readText("/proc/\(initPID)/cgroup") ?? ""
        #expect(membership.split(separator: "\n").contains { $0.hasSuffix(":/" + parent + "/" + name) }, "\(membership)")

        // A handle opened with another parent configured (the default) finds the system's cgroup
        // through its record: statistics, and a terminate that empties and removes it.
        let other = ComputeService(configuration: ComputeConfiguration(stateDirectory: compute.state, cgroupParent: "silo"))
        let reopened = try other.open(id)
        defer { reopened.close() }
        #expect(reopened.cgroup.pids == [initPID])
        let properties = try reopened.properties()
        #expect(properties.statistics != nil && properties.processList == [initPID])
        #expect(properties.cgroupParent == parent, "properties say where its cgroups are")
        try reopened.terminate().wait(timeout: .seconds(30))
        for directory in directories { #expect(!fileExists(directory), "\(directory) outlived the system") }
        for directory in directories {
            let chosen = String(directory.dropLast(name.count + 1))
            #expect(fileExists(chosen), "the chosen parent is the caller's, and stays: \(chosen)")
        }
    }

    @Test("C13 a run's cgroup goes under the chosen parent and is gone after it; the parent stays")
    func runUnderParent() throws {
        let compute = TestCompute()
        defer { compute.finish() }
        let parent = "silo-test-run-\(getpid())"
        defer { removeParent([parent]) }
        let configuration = ComputeConfiguration(stateDirectory: compute.state, cgroupParent: parent)
        let id = "run-\(getpid())"
        // The run's own membership, read inside: its cgroup namespace shows its cgroup as `/`, so
        // the parent is read from outside instead, while the run sleeps.
        var seen: [String] = []
        defer { for path in seen { rmdir(path) } }  // should a failed run leave its cgroup
        let ran = DispatchSemaphore(value: 0)
        try #require(PlatformThread.spawn {
            _ = try? SandboxRun.run(id: id, limits: CgroupLimits(pids: 16), arguments: ["/bin/sleep", "1"], configuration: configuration)
            ran.signal()
        })
        // Polled for up to 60 s: under software emulation the run takes seconds to get this far,
        // and its cgroup then stays for the second its sleep lasts.
        let deadline = ContinuousClock.now + .seconds(60)
        while seen.isEmpty, ContinuousClock.now < deadline {
            seen = roots.compactMap { root in
                let path = root + "/" + parent + "/" + configuration.cgroupName(for: id)
                return fileExists(path) ? path : nil
            }
            if seen.isEmpty { usleep(2000) }
        }
        ran.wait()
        #expect(!seen.isEmpty, "the run's cgroup was never under \(parent)")
        for path in seen { #expect(!fileExists(path), "\(path) outlived the run") }
        #expect(roots.contains { fileExists($0 + "/" + parent) }, "the chosen parent stays")
    }

    @Test("E3 a parent that would leave the hierarchy, or is no relative path, is refused naming it; nothing is made", arguments: [
        "../escape", "/absolute", "a//b", "a/./b", "trailing/", "", "silo/web", "nul\u{0}byte", "cgroup.procs",
    ])
    func badParent(_ parent: String) throws {
        let compute = TestCompute()
        defer { compute.finish() }
        let service = ComputeService(configuration: ComputeConfiguration(stateDirectory: compute.state, cgroupParent: parent))
        // What every hierarchy holds, at its root and in Silo's folder: nothing is added.
        func entries() -> [String] { roots.flatMap { root in (directoryEntries(root) + directoryEntries(root + "/silo").map { "silo/" + $0 }).map { root + "/" + $0 } }.sorted() }
        let before = entries()
        let error = #expect(throws: SiloError.self) {
            _ = try service.createComputeSystem(id: "bad-parent", document: compute.document()).wait(timeout: .seconds(30))
        }
        #expect(error?.code == .invalidArgument)
        #expect(error?.field == "cgroup parent" && error?.value == parent, "\(String(describing: error))")
        #expect(service.store.ids().isEmpty, "no system is left")
        for root in roots { #expect(!fileExists(root + "/escape") && !fileExists(root + "/absolute")) }
        #expect(entries() == before, "nothing made in a hierarchy")
        let run = #expect(throws: SiloError.self) {
            _ = try SandboxRun.run(id: "bad-parent-run", limits: CgroupLimits(pids: 16), arguments: ["/bin/true"],
                                   configuration: service.configuration)
        }
        #expect(run?.field == "cgroup parent")
        #expect(entries() == before, "nothing made in a hierarchy by the run")
    }
}

extension CgroupParentTests {
    @Test("C13 reenumerate removes what a killed run left under the parent it ran under, whatever parent reenumerate is given")
    func killedRunUnderParent() throws {
        let compute = TestCompute()
        defer { compute.finish() }
        let parent = "silo-test-killed-\(getpid())"
        defer { removeParent([parent]) }
        let configuration = ComputeConfiguration(stateDirectory: compute.state, cgroupParent: parent)
        let id = "killed-\(getpid())"
        // What a run killed with its runner leaves: its cgroup, its reservation (an empty file by
        // its id) and its lock, which names the parent.
        let cgroup = try Cgroup.create(name: configuration.cgroupName(for: id), limits: CgroupLimits(pids: 16),
                                       layout: configuration.layout, enforcingOnly: true)
        defer { try? cgroup.destroy() }
        let systems = configuration.runtimeDirectory + "/systems"
        #expect(mkdir(configuration.runtimeDirectory, 0o755) == 0 && mkdir(systems, 0o755) == 0)
        let reservation = Glibc.open(systems + "/" + id, O_CREAT | O_WRONLY | O_CLOEXEC, 0o600)
        #expect(reservation >= 0)
        close(reservation)
        let lock = Glibc.open(SandboxRun.runLock(systems: systems, id: id), O_CREAT | O_WRONLY | O_CLOEXEC, 0o600)
        #expect(write(lock, parent, parent.utf8.count) == parent.utf8.count)
        close(lock)
        let directories = cgroup.directories.values
        #expect(!directories.isEmpty && directories.allSatisfy(fileExists))

        let service = ComputeService(configuration: ComputeConfiguration(stateDirectory: compute.state, cgroupParent: "silo"))
        #expect(service.reenumerate() == [id])
        for directory in directories { #expect(!fileExists(directory), "\(directory) outlived reenumerate") }
        #expect(!fileExists(systems + "/" + id))
    }

    @Test("C3 C13 a create killed before its record under a cgroup parent of its own: reenumerate removes its folder and the cgroup under that parent, whatever its own")
    func killedCreateUnderParent() throws {
        let compute = TestCompute()
        defer { compute.finish() }
        let parent = "silo-test-create-\(getpid())"
        defer { removeParent([parent]) }
        let configuration = ComputeConfiguration(stateDirectory: compute.state, cgroupParent: parent)
        let store = SystemStore(configuration: configuration)
        let id = "died-\(getpid())"
        // What a create killed after its cgroup step leaves: its folder, with its lock naming the parent.
        close(try store.reserve(id, parent: configuration.recordedCgroupParent))
        let cgroup = try Cgroup.create(name: configuration.cgroupName(for: id), limits: CgroupLimits(pids: 16), layout: configuration.layout)
        defer { try? cgroup.destroy() }
        let directories = cgroup.directories.values
        #expect(!directories.isEmpty && directories.allSatisfy(fileExists))
        var times = [timespec(tv_sec: time(nil) - 120, tv_nsec: 0), timespec(tv_sec: time(nil) - 120, tv_nsec: 0)]
        utimensat(AT_FDCWD, store.directory(id), &times, 0)
        let service = ComputeService(configuration: ComputeConfiguration(stateDirectory: compute.state, cgroupParent: "silo"))
        #expect(service.reenumerate() == [id])
        for directory in directories { #expect(!fileExists(directory), "\(directory) outlived reenumerate") }
        #expect(!fileExists(store.directory(id)))
    }

    @Test("C13 on cgroup2 each level of the parent gets the controllers it lacks, and a level that has them is not written")
    func enablingLevelByLevel() throws {
        // cgroupfs files are plain files here: what is written shows in them.
        var template = Array("/tmp/silo-levels-XXXXXX".utf8CString)
        let root = try #require(template.withUnsafeMutableBufferPointer { $0.baseAddress.flatMap { mkdtemp($0) } }.map { String(cString: $0) })
        defer {
            for file in ["ci/payloads/cgroup.subtree_control", "ci/cgroup.subtree_control", "ci/tasks", "cgroup.subtree_control"] {
                unlink(root + "/" + file)
            }
            for folder in ["ci/payloads", "ci", ""] { rmdir(root + "/" + folder) }
        }
        #expect(mkdir(root + "/ci", 0o755) == 0 && mkdir(root + "/ci/payloads", 0o755) == 0)
        put(root + "/cgroup.subtree_control", "cpu memory pids")
        put(root + "/ci/cgroup.subtree_control", "memory")
        put(root + "/ci/payloads/cgroup.subtree_control", "")
        try Cgroup.makeParent("ci/payloads", under: root, enabling: ["memory", "cpu", "pids"])
        #expect(readText(root + "/cgroup.subtree_control") == "cpu memory pids", "a level with them all is not written")
        // One write per controller (a plain file shows them one after another).
        #expect(readText(root + "/ci/cgroup.subtree_control") == "+cpu+pids")
        #expect(readText(root + "/ci/payloads/cgroup.subtree_control") == "+memory+cpu+pids")
        // A level that is a file: refused naming the parent.
        put(root + "/ci/tasks", "")
        let error = #expect(throws: SiloError.self) { try Cgroup.makeParent("ci/tasks", under: root, enabling: []) }
        #expect(error?.field == "cgroup parent" && error?.value == "ci/tasks")
    }
}

/// Makes `path` hold `text`.
private func put(_ path: String, _ text: String, sourceLocation: SourceLocation = #_sourceLocation) {
    let fd = Glibc.open(path, O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC, 0o644)
    #expect(fd >= 0 && write(fd, text, text.utf8.count) == text.utf8.count, sourceLocation: sourceLocation)
    close(fd)
}
