// Silo's loop attach against the bare LOOP_CONFIGURE ioctl, side by side in one run.
// Run through scripts/bench/storage. Prints medians and the ratio.
import CSiloLinux
import Glibc
import SiloStorage

func now() -> UInt64 {
    var spec = timespec()
    clock_gettime(CLOCK_MONOTONIC, &spec)
    return UInt64(spec.tv_sec) * 1_000_000_000 + UInt64(spec.tv_nsec)
}

func median(_ values: [UInt64]) -> Double {
    let sorted = values.sorted()
    return Double(sorted[sorted.count / 2]) / 1e6
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
