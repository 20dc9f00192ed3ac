// Silo's compute side measured through the library (no CLI start-up). Run by scripts/bench/compute.
//   start          median time to run /bin/true in a fresh system (cgroup, namespaces, init) and remove it,
//                  runs after the first in one process (which prepare the next: a shared root, a network namespace)
//   first          the same for the one run of a fresh process, in microseconds
//   idle           memory of an idle system: init's RSS and the cgroup's charge
//   pause          median freeze + thaw of a running system
//   many N         N systems started at once: all running, total memory, time to terminate them all
//   exec N         median time to run /bin/true inside one running system (ComputeService: createProcess
//                  through its agent, stdio /dev/null, + wait for its exit), over N runs
import Glibc
import SiloCompute

func now() -> UInt64 {
    var spec = timespec()
    clock_gettime(CLOCK_MONOTONIC, &spec)
    return UInt64(spec.tv_sec) * 1_000_000_000 + UInt64(spec.tv_nsec)
}

func median(_ values: [UInt64]) -> Double { Double(values.sorted()[values.count / 2]) / 1e6 }
func ms(_ value: Double) -> String { String((value * 100).rounded() / 100) }

let arguments = Array(CommandLine.arguments.dropFirst())
let mode = arguments.first ?? "start"
let state = "/tmp/silo-compute-bench-\(getpid())"
let configuration = ComputeConfiguration(stateDirectory: state)
defer {
    rmdir(state + "/run/systems")
    rmdir(state + "/run")
    rmdir(state)
}

/// A running system with `sleep` as init's payload: root folder, cgroup, process.
struct Running {
    let root: String
    let cgroup: Cgroup
    let process: SandboxProcess

    static func start(_ id: String) throws -> Running {
        let root = state + "/root-" + id
        mkdir(state, 0o755)
        mkdir(root, 0o755)
        let cgroup = try Cgroup.create(name: id, limits: CgroupLimits(pids: 64))
        var spec = SandboxSpec(root: root, hostname: id, arguments: ["/.silo/init", "--", "/bin/sleep", "600"],
                               initBinary: configuration.initBinary)
        if let runtime = configuration.swiftRuntimeDirectory { spec.readOnlyBinds.append(runtime) }
        let process = try Sandbox.spawn(spec, cgroup: cgroup)
        return Running(root: root, cgroup: cgroup, process: process)
    }

    func stop() throws {
        try cgroup.killAll()
        var status: Int32 = 0
        waitpid(process.pid, &status, 0)
        close(process.pidfd)
        try cgroup.destroy()
        rmdir(root)
    }
}

/// MemAvailable from /proc/meminfo, in KiB.
func memAvailable() -> UInt64 {
    let text = readProcFile("/proc/meminfo")
    for line in text.split(separator: "\n") where line.hasPrefix("MemAvailable:") {
        return UInt64(line.split(separator: " ").dropFirst().first ?? "0") ?? 0
    }
    return 0
}

func rss(_ pid: pid_t) -> UInt64 {
    let status = readProcFile("/proc/\(pid)/status")
    for line in status.split(separator: "\n") where line.hasPrefix("VmRSS:") {
        return UInt64(line.split(separator: " ").dropFirst().first ?? "0") ?? 0
    }
    return 0
}

func readProcFile(_ path: String) -> String {
    let fd = open(path, O_RDONLY)
    guard fd >= 0 else { return "" }
    defer { close(fd) }
    var bytes = [UInt8](repeating: 0, count: 16384)
    let count = read(fd, &bytes, bytes.count)
    return String(decoding: bytes[0..<max(0, count)], as: UTF8.self)
}

switch mode {
case "start":
    let rounds = Int(arguments.dropFirst().first ?? "50") ?? 50
    var times: [UInt64] = []
    for round in 0..<(rounds + 5) {
        let start = now()
        let code = try SandboxRun.run(id: "bench-\(getpid())-\(round)", limits: CgroupLimits(pids: 64),
                                      arguments: ["/bin/true"], configuration: configuration)
        let end = now()
        precondition(code == 0, "/bin/true exited \(code)")
        if round >= 5 { times.append(end - start) }
    }
    print("library start+remove of /bin/true, median of \(rounds): \(ms(median(times))) ms (goal < 2 ms)")
case "first":
    // One run in a fresh process, timed inside it: nothing made ahead by an earlier run (the shared
    // root, a spare network namespace). Prints microseconds; the script takes the median of many.
    let start = now()
    let code = try SandboxRun.run(id: "bench-first-\(getpid())", limits: CgroupLimits(pids: 64),
                                  arguments: ["/bin/true"], configuration: configuration)
    precondition(code == 0, "/bin/true exited \(code)")
    print((now() - start) / 1000)
case "idle":
    let system = try Running.start("bench-idle-\(getpid())")
    usleep(300_000)
    let initRSS = rss(system.process.pid)
    let charge = system.cgroup.statistics.memoryUsage
    print("idle system: init RSS \(initRSS) KiB; cgroup memory charge \(charge / 1024) KiB (init, sleep and kernel objects)")
    try system.stop()
case "pause":
    let system = try Running.start("bench-pause-\(getpid())")
    var times: [UInt64] = []
    for _ in 0..<50 {
        let start = now()
        try system.cgroup.freeze()
        try system.cgroup.thaw()
        times.append(now() - start)
    }
    print("pause+resume (freeze, thaw) of a running system, median of 50: \(ms(median(times))) ms")
    try system.stop()
case "many":
    let count = Int(arguments.dropFirst().first ?? "200") ?? 200
    let before = memAvailable()
    let start = now()
    var systems: [Running] = []
    for index in 0..<count { systems.append(try Running.start("bench-many-\(getpid())-\(index)")) }
    let started = now()
    usleep(500_000)
    let alive = systems.filter { kill($0.process.pid, 0) == 0 }.count
    let after = memAvailable()
    let available = before > after ? (before - after) / 1024 : 0
    // Each system's cgroup charge (its processes' memory and kernel objects) plus init's RSS.
    let charged = systems.reduce(UInt64(0)) { $0 + $1.cgroup.statistics.memoryUsage / 1024 + rss($1.process.pid) } / 1024
    let stopStart = now()
    for system in systems { try system.stop() }
    let stopped = now()
    print("\(count) systems: started in \(ms(Double(started - start) / 1e6)) ms, \(alive) running, "
          + "\(charged) MiB charged in all (\(charged * 1024 / UInt64(max(count, 1))) KiB each; MemAvailable fell \(available) MiB), "
          + "terminated and removed in \(ms(Double(stopped - stopStart) / 1e6)) ms")
case "exec":
    let rounds = Int(arguments.dropFirst().first ?? "50") ?? 50
    let service = ComputeService(configuration: configuration)
    let document = #"""
        {"SchemaVersion": {"Major": 2, "Minor": 1}, "Owner": "bench", "Container": {"Memory": {"SizeInMB": 256},
         "Processor": {"Count": 1}}, "ShouldTerminateOnLastHandleClosed": false}
        """#
    let system = try service.createComputeSystem(id: "bench-exec-\(getpid())", document: document).wait()
    var times: [UInt64] = []
    var failure: String?
    do {
        try system.start().wait()
        for round in 0..<(rounds + 5) {
            let start = now()
            let process = try system.createProcess(ProcessParameters(arguments: ["/bin/true"]), standardStreams: [-1, -1, -1]).wait()
            let status = try process.wait(timeout: .seconds(10))
            let end = now()
            process.close()
            guard status.exitCode == 0 else {
                failure = "/bin/true exited \(status.exitCode.map(String.init) ?? "?") in round \(round)"
                break
            }
            if round >= 5 { times.append(end - start) }
        }
    } catch {
        failure = "\(error)"
    }
    // Terminated (from Created too) and closed: the last handle of a stopped system removes its state.
    do { try system.terminate().wait() } catch { failure = failure ?? "terminate: \(error)" }
    system.close()
    if let failure {
        let message = "exec failed: \(failure)\n"
        _ = message.withCString { write(2, $0, strlen($0)) }
        for path in [state + "/run/systems", state + "/run", state] { rmdir(path) }  // exit skips the defer
        exit(1)
    } else {
        print("library createProcess+wait of /bin/true in a running system, median of \(rounds): \(ms(median(times))) ms")
    }
default:
    print("modes: start [N] | idle | pause | many [N] | exec [N]")
}
