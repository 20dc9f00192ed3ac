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
        let service = ComputeService(configuration: ComputeConfiguration(stateDirectory: compute.state, cgroupParent: parent))
        let id = "parented-\(getpid())"
        let name = service.configuration.cgroupName(for: id)
        let system = try service.createComputeSystem(id: id, document: compute.document()).wait(timeout: .seconds(30))
        defer {
            system.close()
            compute.finish()
        }
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
        let other = ComputeService(configuration: ComputeConfiguration(stateDirectory: compute.state))
        let reopened = try other.open(id)
        defer { reopened.close() }
        #expect(reopened.cgroup.pids == [initPID])
        #expect(try reopened.properties().statistics != nil)
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
        let runner = try PlatformThreadBox.start {
            _ = try? SandboxRun.run(id: id, limits: CgroupLimits(pids: 16), arguments: ["/bin/sleep", "1"], configuration: configuration)
        }
        for _ in 0..<500 where seen.isEmpty {
            seen = roots.compactMap { root in
                let path = root + "/" + parent + "/" + configuration.cgroupName(for: id)
                return fileExists(path) ? path : nil
            }
            if seen.isEmpty { usleep(2000) }
        }
        runner.join()
        #expect(!seen.isEmpty, "the run's cgroup was never under \(parent)")
        for path in seen { #expect(!fileExists(path), "\(path) outlived the run") }
        #expect(roots.contains { fileExists($0 + "/" + parent) }, "the chosen parent stays")
    }

    @Test("E3 a parent that would leave the hierarchy, or is no relative path, is refused naming it; nothing is made", arguments: [
        "../escape", "/absolute", "a//b", "a/./b", "trailing/", "",
    ])
    func badParent(_ parent: String) throws {
        let compute = TestCompute()
        defer { compute.finish() }
        let service = ComputeService(configuration: ComputeConfiguration(stateDirectory: compute.state, cgroupParent: parent))
        let error = #expect(throws: SiloError.self) {
            _ = try service.createComputeSystem(id: "bad-parent", document: compute.document()).wait(timeout: .seconds(30))
        }
        #expect(error?.code == .invalidArgument)
        #expect(error?.field == "cgroup parent" && error?.value == parent, "\(String(describing: error))")
        #expect(service.store.ids().isEmpty, "no system is left")
        for root in roots { #expect(!fileExists(root + "/escape") && !fileExists(root + "/absolute")) }
        let run = #expect(throws: SiloError.self) {
            _ = try SandboxRun.run(id: "bad-parent-run", limits: CgroupLimits(pids: 16), arguments: ["/bin/true"],
                                   configuration: service.configuration)
        }
        #expect(run?.field == "cgroup parent")
    }
}

/// A thread that runs `body`, joined by `join()`.
final class PlatformThreadBox: @unchecked Sendable {
    private var thread = pthread_t()
    private let body: () -> Void

    private init(_ body: @escaping () -> Void) { self.body = body }

    static func start(_ body: @escaping () -> Void) throws -> PlatformThreadBox {
        let box = PlatformThreadBox(body)
        let context = Unmanaged.passRetained(box).toOpaque()
        let result = pthread_create(&box.thread, nil, { raw in
            guard let raw else { return nil }
            let box = Unmanaged<PlatformThreadBox>.fromOpaque(raw).takeRetainedValue()
            box.body()
            return nil
        }, context)
        try #require(result == 0)
        return box
    }

    func join() { pthread_join(thread, nil) }
}
