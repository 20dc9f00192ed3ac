// Silo's loop attach against the bare LOOP_CONFIGURE ioctl, side by side in one run.
// Run through scripts/bench/storage. Prints medians and the ratio.
import CSiloLinux
import Glibc
import SiloOperations
import SiloStorage

func now() -> UInt64 {
    var spec = timespec()
    clock_gettime(CLOCK_MONOTONIC, &spec)
    return UInt64(spec.tv_sec) * 1_000_000_000 + UInt64(spec.tv_nsec)
}

/// Writes a child's figure. `print` of a bare number casts it to find how to write it, and a first cast
/// walks every protocol conformance in the binary (0.2 ms of CPU here): while the first children to
/// finish did that, 16 on 2 cores, the others' creates waited for the CPU.
func emit(_ microseconds: UInt64, cpu: UInt64? = nil) {
    let line = Array((String(microseconds) + (cpu.map { " " + String($0) } ?? "") + "\n").utf8)
    _ = write(1, line, line.count)
}

func median(_ values: [UInt64]) -> Double {
    let sorted = values.sorted()
    return Double(sorted[sorted.count / 2]) / 1e6
}

// `StorageBench parallel STATE`: 16 processes of this program create a LUN each at once, three
// rounds; each times its own createLun call (without its process start) from the moment all are
// released together. `StorageBench child STATE NAME` is one of them. Then the same for the floor
// that durability sets: 16 processes that only write a record the way the registry makes one
// durable (a new file written and fsync'd, renamed, its folder fsync'd), `child-floor DIR NAME`.
if CommandLine.arguments.count > 2, CommandLine.arguments[1] == "parallel" {
    parallelCreates(state: CommandLine.arguments[2])
    exit(0)
}
if CommandLine.arguments.count > 3, CommandLine.arguments[1] == "child" {
    childCreate(state: CommandLine.arguments[2], name: CommandLine.arguments[3])
    exit(0)
}
// `StorageBench remove-idle-loops FIRST`: removes the unbound loop nodes numbered FIRST and up, which
// the run made (Silo reuses idle nodes and never removes one; a thousand LUNs leave a thousand,
// and every lsblk and drive list walks them). A bound node refuses (EBUSY) and stays.
if CommandLine.arguments.count > 2, CommandLine.arguments[1] == "remove-idle-loops", let first = Int32(CommandLine.arguments[2]) {
    let control = open("/dev/loop-control", O_RDWR | O_CLOEXEC)
    var removed = 0
    for number in first..<(first + 4096) where access("/sys/block/loop\(number)", F_OK) == 0 {
        if silo_loop_ctl_remove(control, number) == 0 { removed += 1 }
    }
    print("removed \(removed) idle loop nodes the run made")
    exit(0)
}
if CommandLine.arguments.count > 3, CommandLine.arguments[1] == "child-floor" {
    childFloor(directory: CommandLine.arguments[2], name: CommandLine.arguments[3])
    exit(0)
}

let directory = CommandLine.arguments.count > 1 ? CommandLine.arguments[1] : "/var/tmp"
let file = directory + "/silo-bench-attach.img"
let fd = open(file, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
precondition(fd >= 0 && ftruncate(fd, 64 << 20) == 0, "cannot make \(file)")
close(fd)
defer { unlink(file) }

let rounds = 200
var silo: [UInt64] = []
var bare: [UInt64] = []
for round in 0..<(rounds + 20) {
    // Silo: lock loop-control, get a free device, lock it, LOOP_CONFIGURE, verify (status, size, block size).
    let start = now()
    let attachment = try LoopDevice.attach(backing: file, options: .init(directIO: true, tag: "silo:bench"))
    let attached = now()
    try attachment.device.detach()
    if round >= 20 { silo.append(attached - start) }

    // Bare: get a free device and LOOP_CONFIGURE it, nothing else.
    let bareStart = now()
    let backing = open(file, O_RDWR | O_CLOEXEC | silo_O_DIRECT)
    let control = open("/dev/loop-control", O_RDWR | O_CLOEXEC)
    let number = silo_loop_ctl_get_free(control)
    let device = open("/dev/loop\(number)", O_RDWR | O_CLOEXEC)
    var config = loop_config()
    config.fd = UInt32(backing)
    config.block_size = 512
    config.info.lo_flags = silo_LO_FLAGS_DIRECT_IO
    let result = silo_loop_configure(device, &config)
    let bareEnd = now()
    precondition(result == 0, "bare LOOP_CONFIGURE failed: \(errno)")
    _ = silo_loop_clr_fd(device)
    close(device)
    close(control)
    close(backing)
    if round >= 20 { bare.append(bareEnd - bareStart) }
}
let siloMedian = median(silo)
let bareMedian = median(bare)
print("attach (library) vs bare LOOP_CONFIGURE, median of \(rounds): silo \(String(format3(siloMedian))) ms, "
      + "bare \(String(format3(bareMedian))) ms, ratio \(String(format2(siloMedian / bareMedian)))x "
      + "(goal ≤ 2x: \(siloMedian / bareMedian <= 2 ? "met" : "NOT met"); goal < 0.1 ms: \(siloMedian < 0.1 ? "met" : "NOT met"))")

func format3(_ value: Double) -> String { String((value * 1000).rounded() / 1000) }
func format2(_ value: Double) -> String { String((value * 100).rounded() / 100) }

/// The CPU time this process has used, user and system, in microseconds (the scheduler's own
/// count of time run, not ticks sampled).
func cpuMicroseconds() -> UInt64 {
    var usage = rusage()
    getrusage(RUSAGE_SELF.rawValue, &usage)
    func micros(_ time: timeval) -> UInt64 { UInt64(time.tv_sec) * 1_000_000 + UInt64(time.tv_usec) }
    return micros(usage.ru_utime) + micros(usage.ru_stime)
}

/// One of the 16: waits on fd 3 until the parent closes the other end, then creates and reports
/// "<microseconds> <CPU microseconds>" or "FAIL <message>" on stdout.
func childCreate(state: String, name: String) {
    let onCaller = getenv("SILO_BENCH_ON_CALLER") != nil
    let provider = StorageProvider(configuration: StorageConfiguration(
        stateDirectory: state, scheduler: onCaller ? OperationScheduler(runsOnCaller: true) : .shared))
    var byte: UInt8 = 0
    _ = read(3, &byte, 1)
    let cpu = cpuMicroseconds()
    let start = now()
    do {
        _ = try provider.createLun(LunSpec(name: name, size: 16 << 20)).wait()
        emit((now() - start) / 1000, cpu: cpuMicroseconds() - cpu)
    } catch {
        print("FAIL \(error)")
    }
}

/// One of the 16 of the floor: a 400-byte record made durable the registry's way, timed the same.
func childFloor(directory: String, name: String) {
    var byte: UInt8 = 0
    _ = read(3, &byte, 1)
    let start = now()
    let temporary = directory + "/." + name + ".tmp"
    let fd = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
    let record = [UInt8](repeating: UInt8(ascii: "x"), count: 400)
    let folder = open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
    guard fd >= 0, folder >= 0, write(fd, record, record.count) == record.count, fsync(fd) == 0,
          rename(temporary, directory + "/" + name + ".json") == 0, fsync(folder) == 0
    else { return print("FAIL errno \(errno)") }
    close(fd)
    close(folder)
    emit((now() - start) / 1000)
}

/// 16 children started together (`mode` "child" or "child-floor"), three rounds: their own times
/// in microseconds, the CPU time each round's creates used in all (when the children report it),
/// and what failed.
func parallelRounds(mode: String, target: String, afterRound: (Int) -> Void)
    -> (times: [UInt64], roundCPU: [UInt64], failures: [String]) {
    let count = 16
    var times: [UInt64] = []
    var roundCPU: [UInt64] = []
    var failures: [String] = []
    for round in 0..<3 {
        var barrier: [Int32] = [0, 0]
        precondition(silo_pipe2(&barrier, O_CLOEXEC) == 0)
        var children: [(pid: pid_t, output: Int32)] = []
        for index in 0..<count {
            var output: [Int32] = [0, 0]
            precondition(silo_pipe2(&output, O_CLOEXEC) == 0)
            var actions = posix_spawn_file_actions_t()
            posix_spawn_file_actions_init(&actions)
            posix_spawn_file_actions_adddup2(&actions, barrier[0], 3)
            posix_spawn_file_actions_adddup2(&actions, output[1], 1)
            let arguments = [CommandLine.arguments[0], mode, target, "par\(round)-\(index)"]
            var argv = arguments.map { strdup($0) } + [nil]
            var pid: pid_t = 0
            precondition(posix_spawn(&pid, CommandLine.arguments[0], &actions, nil, &argv, environ) == 0)
            argv.forEach { free($0) }
            posix_spawn_file_actions_destroy(&actions)
            close(output[1])
            children.append((pid, output[0]))
        }
        close(barrier[0])
        usleep(200_000)  // every child started and waiting on the barrier
        close(barrier[1])
        var cpu: UInt64 = 0
        for child in children {
            var text: [UInt8] = []
            var buffer = [UInt8](repeating: 0, count: 512)
            while true {
                let got = read(child.output, &buffer, buffer.count)
                if got <= 0 { break }
                text += buffer[0..<got]
            }
            close(child.output)
            var status: Int32 = 0
            waitpid(child.pid, &status, 0)
            let line = String(decoding: text, as: UTF8.self).split(separator: "\n").first.map(String.init) ?? "FAIL no output"
            let fields = line.split(separator: " ")
            if let first = fields.first, let micros = UInt64(first), fields.count <= 2 {
                times.append(micros)
                if fields.count == 2, let used = UInt64(fields[1]) { cpu += used }
            } else {
                failures.append(line)
            }
        }
        roundCPU.append(cpu)
        afterRound(round)
    }
    return (times, roundCPU, failures)
}

func percentiles(_ times: [UInt64]) -> (p50: Double, p99: Double) {
    let sorted = times.sorted()
    guard !sorted.isEmpty else { return (0, 0) }
    let p99Index = min(sorted.count - 1, Int((Double(sorted.count) * 0.99).rounded(.up)) - 1)
    return (Double(sorted[(sorted.count - 1) / 2]) / 1000, Double(sorted[p99Index]) / 1000)
}

func parallelCreates(state: String) {
    let provider = StorageProvider(configuration: StorageConfiguration(stateDirectory: state))
    let (times, roundCPU, failures) = parallelRounds(mode: "child", target: state) { round in
        for index in 0..<16 { _ = try? provider.deleteLun("par\(round)-\(index)").wait() }
    }
    let (p50, p99) = percentiles(times)
    print("silo library, createLun timed inside each of 16 processes started together (3 rounds): "
          + "p50 \(format2(p50)) ms, p99 \(format2(p99)) ms, failures reaching the caller: \(failures.count) of 48 "
          + "(goal p99 < 10 ms: \(p99 < 10 && failures.isEmpty ? "met" : "NOT met"))")
    failures.prefix(3).forEach { print("  \($0)") }
    // What the 16 creates cost the processors: the last of them cannot end before the cores have
    // run all of that, whatever the locks and the disk do.
    let cores = max(1, sysconf(Int32(_SC_NPROCESSORS_ONLN)))
    let cpu = Double(roundCPU.sorted()[roundCPU.count / 2]) / 1000
    let each = Double(roundCPU.reduce(0, +)) / 1000 / Double(max(1, times.count))
    print("  CPU time the 16 creates of a round used in all (median round): \(format2(cpu)) ms, "
          + "\(format2(each)) ms each; on \(cores) cores the last cannot end before \(format2(cpu / Double(cores))) ms")
    // The same with each create on its caller's thread (OperationScheduler(runsOnCaller:), as the
    // CLI runs a create): no worker thread to start in each fresh process.
    setenv("SILO_BENCH_ON_CALLER", "1", 1)
    let (callerTimes, _, callerFailures) = parallelRounds(mode: "child", target: state) { round in
        for index in 0..<16 { _ = try? provider.deleteLun("par\(round)-\(index)").wait() }
    }
    unsetenv("SILO_BENCH_ON_CALLER")
    let (c50, c99) = percentiles(callerTimes)
    print("the same, each create on its caller's thread: p50 \(format2(c50)) ms, p99 \(format2(c99)) ms, "
          + "failures reaching the caller: \(callerFailures.count) of 48")
    // The floor, on the registry's own file system: what 16 durable records cost with nothing else.
    let floor = state + "/floor"
    mkdir(floor, 0o700)
    let (floorTimes, _, floorFailures) = parallelRounds(mode: "child-floor", target: floor) { round in
        for index in 0..<16 { unlink(floor + "/par\(round)-\(index).json") }
    }
    rmdir(floor)
    let (f50, f99) = percentiles(floorTimes)
    print("the durability floor, 16 processes each only writing a record durably (file fsync, rename, folder fsync): "
          + "p50 \(format2(f50)) ms, p99 \(format2(f99)) ms\(floorFailures.isEmpty ? "" : ", failures: \(floorFailures.count)")")
}
