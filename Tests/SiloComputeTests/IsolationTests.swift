import CSiloLinux
import Glibc
import SiloOperations
import Testing

@testable import SiloCompute

/// A perl function for raw system calls with the numbers as given: `try(NAME, NUMBER, ARGS...)`
/// prints `NAME=errno`, 0 on success.
let perlTry = #"sub try { my ($name, $number, @rest) = @_; my $r = syscall($number, @rest); printf "%s=%d\n", $name, $r < 0 ? $!+0 : 0 }"#

#if arch(x86_64)
let hostHasX8664Numbers = true
/// ioctl's number, for the tests that make it raw through perl.
let ioctlNumber = 16
#else
let hostHasX8664Numbers = false
let ioctlNumber = 29  // the generic table's (aarch64, riscv64)
#endif

extension Trait where Self == ConditionTrait {
    /// The tests that make raw system calls through perl give them by their x86-64 numbers.
    static var requiresPerl: Self {
        .enabled(if: access("/usr/bin/perl", X_OK) == 0 && hostHasX8664Numbers,
                 "needs /usr/bin/perl and x86-64: raw system calls by their x86-64 numbers inside the sandbox")
    }

    static var x8664Numbers: Self {
        .enabled(if: hostHasX8664Numbers, "written with x86-64's system call numbers and architecture")
    }
}

/// Runs `script` with /bin/sh as pid 1 of a sandbox in its own cgroup (or, `underInit`, as the
/// payload of Silo's init, pid 2); returns its exit code and output.
func runSandboxed(underInit: Bool = false, _ script: String, id: String = "iso-\(getpid())-\(UInt32.random(in: 0...UInt32.max))",
                  limits: CgroupLimits = CgroupLimits(pids: 64),
                  configure: (inout SandboxSpec) -> Void = { _ in }) throws -> (status: Int32, output: String) {
    let configuration = ComputeConfiguration()
    if underInit { try #require(access(configuration.initBinary, X_OK) == 0, "Silo's init at \(configuration.initBinary)") }
    var template = Array("/tmp/silo-root-XXXXXX".utf8CString)
    guard let root = template.withUnsafeMutableBufferPointer({ $0.baseAddress.flatMap { mkdtemp($0) } }).map({ String(cString: $0) }) else {
        throw SiloError.system("mkdtemp", errno: errno)
    }
    defer { rmdir(root) }
    let cgroup = try Cgroup.create(name: id, limits: limits)
    defer { try? cgroup.destroy() }
    var output: [Int32] = [0, 0]
    pipe(&output)
    let process: SandboxProcess
    do {
        var spec = SandboxSpec(root: root, hostname: id, arguments: ["/bin/sh", "-c", script],
                               standardOutput: output[1], standardError: output[1])
        if underInit {
            spec.arguments = ["/.silo/init", "--"] + spec.arguments
            spec.initBinary = configuration.initBinary
            if let runtime = configuration.swiftRuntimeDirectory { spec.readOnlyBinds.append(runtime) }
        }
        configure(&spec)
        process = try Sandbox.spawn(spec, cgroup: cgroup)
    } catch {
        close(output[0]); close(output[1])
        throw error
    }
    close(output[1])
    defer { close(process.pidfd) }
    let text = readAll(output[0])
    close(output[0])
    let status = reap(process.pid)
    return (status, text)
}

@Suite("Isolation inside a sandbox", .tags(.root), .requiresCgroups, .serialized)
struct IsolationTests {
    @Test("C11 pid 1, the hostname is the id, only loopback, host processes invisible")
    func namespaces() throws {
        let result = try runSandboxed("""
            echo pid=$$
            echo host=$(cat /proc/sys/kernel/hostname)
            echo nets=$(tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' | tr '\\n' ',')
            echo maxpid=$(ls /proc | grep '^[0-9]' | sort -n | tail -1)
            """, id: "iso-ns")
        #expect(result.status == 0, "\(result.output)")
        #expect(result.output.contains("pid=1\n"))
        #expect(result.output.contains("host=iso-ns\n"))
        #expect(result.output.contains("nets=lo,\n"))
        // A fresh pid namespace: the highest pid is one of the few the script itself started.
        let highest = result.output.split(separator: "\n").first { $0.hasPrefix("maxpid=") }.flatMap { Int($0.dropFirst(7)) } ?? 999
        #expect(highest < 20, "host processes are invisible: \(result.output)")
    }

    @Test("C11 the payload has no supplementary group of its caller's")
    func noSupplementaryGroups() throws {
        // The test process's groups for the while (tests run one at a time: --no-parallel).
        var previous = [gid_t](repeating: 0, count: 256)
        let count = getgroups(Int32(previous.count), &previous)
        try #require(count >= 0)
        var groups: [gid_t] = [4242]
        try #require(setgroups(1, &groups) == 0)
        defer { setgroups(Int(count), &previous) }
        let result = try runSandboxed(underInit: true, "") { $0.arguments = ["/.silo/init", "--", "/bin/grep", "^Groups", "/proc/self/status"] }
        #expect(result.status == 0)
        #expect(result.output.hasPrefix("Groups:") && !result.output.contains("4242"), "\(result.output)")
    }

    @Test("C11 the payload starts with no signal blocked, whatever its caller blocks (silo blocks SIGINT)")
    func signalMask() throws {
        var blocked = sigset_t(), previous = sigset_t()
        sigemptyset(&blocked)
        sigaddset(&blocked, SIGINT)
        sigaddset(&blocked, SIGUSR1)
        pthread_sigmask(SIG_BLOCK, &blocked, &previous)
        defer { pthread_sigmask(SIG_SETMASK, &previous, nil) }
        // grep itself under init, not a shell: sh clears its mask at start.
        let result = try runSandboxed(underInit: true, "") { $0.arguments = ["/.silo/init", "--", "/bin/grep", "^SigBlk", "/proc/self/status"] }
        #expect(result.status == 0)
        #expect(result.output == "SigBlk:\t0000000000000000\n", "\(result.output)")
    }

    @Test("C11 the root and host binds are read-only; /tmp is private and writable")
    func readOnly() throws {
        let result = try runSandboxed("""
            touch /usr/silo-x 2>/dev/null && echo usr-writable
            touch /silo-x 2>/dev/null && echo root-writable
            touch /etc/passwd 2>/dev/null && echo etc-writable
            echo data > /tmp/x && cat /tmp/x
            ls /tmp | wc -l
            """)
        #expect(result.status == 0)
        #expect(!result.output.contains("writable"), "\(result.output)")
        #expect(result.output.contains("data\n1\n"))
    }

    @Test("C11 no capabilities, no_new_privs, no core dumps, and mount, unshare, device mknod, /proc/sys and init's OOM score writes refused; masked /proc paths read empty")
    func privileges() throws {
        let result = try runSandboxed("""
            grep -E '^(CapEff|CapBnd|NoNewPrivs|Seccomp):' /proc/self/status
            mount -t tmpfs none /tmp 2>&1 | sed 's/^/refused mount: /'
            unshare -U true 2>&1 | sed 's/^/refused unshare-user: /'
            unshare -m true 2>&1 | sed 's/^/refused unshare-mount: /'
            mknod /tmp/sda b 8 0 2>&1 | sed 's/^/refused mknod: /'
            mkfifo /tmp/fifo && [ -p /tmp/fifo ] && echo fifo-made
            (echo other > /proc/sys/kernel/hostname) 2>&1 | sed 's/^/refused sysctl: /'
            for f in /proc/1/oom_score_adj /proc/1/oom_adj /proc/1/task/1/oom_score_adj /proc/1/task/1/oom_adj; do
                (echo 15 > $f) 2>&1 | sed "s|^|refused oom $f: |"
            done
            echo "core $(ulimit -c) $(ulimit -Hc)"
            for p in /proc/keys /proc/timer_list /proc/sched_debug /proc/kallsyms /proc/kcore /proc/kpageflags /proc/kpagecount /proc/slabinfo; do
                [ -e "$p" ] && echo "masked $p $(wc -c < $p)"
            done
            for d in /proc/acpi /proc/scsi /proc/asound; do
                [ -d "$d" ] && echo "masked-folder $d $(ls -A "$d" | wc -l) $(awk -v d="$d" '$5 == d && / - tmpfs /' /proc/self/mountinfo | wc -l)"
            done
            true
            """)
        #expect(result.status == 0)
        #expect(result.output.contains("CapEff:\t0000000000000000"), "\(result.output)")
        #expect(result.output.contains("CapBnd:\t0000000000000000"))
        #expect(result.output.contains("NoNewPrivs:\t1"))
        #expect(result.output.contains("Seccomp:\t2"))
        #expect(result.output.contains("core 0 0\n"), "no core dumps, and no way to turn them on: \(result.output)")
        #expect(result.output.contains("fifo-made\n"), "a FIFO needs no privilege: \(result.output)")
        // Each refused by the kernel, as its own error says (not missing, nor failing otherwise).
        for (call, error) in [("mount", "/tmp: permission denied"), ("unshare-user", "unshare failed: Operation not permitted"),
                              ("unshare-mount", "unshare failed: Operation not permitted"),
                              ("mknod", "/tmp/sda: Operation not permitted"), ("sysctl", "Read-only file system"),
                              ("oom /proc/1/oom_score_adj", "Read-only file system"), ("oom /proc/1/oom_adj", "Read-only file system"),
                              ("oom /proc/1/task/1/oom_score_adj", "Read-only file system"),
                              ("oom /proc/1/task/1/oom_adj", "Read-only file system")] {
            let line = result.output.split(separator: "\n").first { $0.hasPrefix("refused \(call): ") }
            #expect(line?.contains(error) == true, "\(call): \(result.output)")
        }
        let masked = result.output.split(separator: "\n").filter { $0.hasPrefix("masked ") }
        #expect(!masked.isEmpty, "some masked path exists on every kernel: \(result.output)")
        for line in masked { #expect(line.hasSuffix(" 0"), "reads as empty: \(line)") }
        // A folder is covered by an empty tmpfs (the host's may be empty too: the mount is the proof).
        let hostFolders = ["/proc/acpi", "/proc/scsi", "/proc/asound"].filter { (path: String) in access(path, F_OK) == 0 }
        let folders = result.output.split(separator: "\n").filter { $0.hasPrefix("masked-folder ") }
        #expect(folders.count == hostFolders.count, "\(hostFolders): \(result.output)")
        for line in folders { #expect(line.hasSuffix(" 0 1"), "empty, a tmpfs: \(line)") }
    }

    @Test("C11 the seccomp filter refuses TIOCSTI in both forms, TIOCSETD, the loop driver's and block tracing's ioctls, ptrace, keyctl, bpf, modify_ldt, module loading and clock changes with EPERM, io_uring with ENOSYS, socket families but unix, inet, inet6 and netlink, and their rare protocols", .requiresPerl)
    func seccompDenials() throws {
        // perl's syscall() passes the numbers as they are: EPERM is the filter's answer; without
        // it these would fail differently (ENOTTY on a non-terminal, ESRCH, EINVAL...).
        let result = try runSandboxed("""
            /usr/bin/perl -e '
              \(perlTry)
              try("tiocsti", 16, 0, 0x5412, 0);
              try("tiocsti_high", 16, 0, 0x100005412, 0);
              try("loop_clr_fd", 16, 0, 0x4C01, 0);
              try("loop_ctl_get_free", 16, 0, 0x4C82, 0);
              try("blktrace_start", 16, 0, 0x1274, 0);
              try("tiocsetd", 16, 0, 0x5423, 0);
              try("tioclinux", 16, 0, 0x541C, 0);
              try("sock_packet", 41, 2, 10, 768);
              try("sock_packet_cloexec", 41, 2, 0x8000A, 768);
              try("udp_nonblock_allowed", 41, 2, 0x802, 0);
              try("ptrace", 101, 16, 1, 0, 0);
              try("keyctl", 250, 0, 0, 0, 0);
              try("bpf", 321, 0, 0, 0);
              try("io_uring_setup", 425, 8, 0);
              try("vsock", 41, 40, 1, 0);
              try("rds", 41, 21, 5, 0);
              try("sctp", 41, 2, 1, 132);
              try("uevents", 41, 16, 2, 15);
              try("modify_ldt", 154, 0, 0, 0);
              try("sysctl", 156, 0);
              my $image = "\\0" x 64; my $now = pack("qq", time(), 0);
              try("init_module", 175, $image, 64, "");
              try("finit_module", 313, 0, "", 0);
              try("delete_module", 176, "loop", 0);
              try("settimeofday", 164, $now, 0);
              try("clock_settime", 227, 0, $now);
              try("unix_allowed", 41, 1, 1, 0);
              try("tcp_allowed", 41, 2, 1, 6);
              try("getpid_allowed", 39);
            ' < /dev/null
            """)
        #expect(result.status == 0, "\(result.output)")
        // The loop requests on /dev/null would be ENOTTY without the filter.
        for name in ["tiocsti", "tiocsti_high", "tiocsetd", "tioclinux", "loop_clr_fd", "loop_ctl_get_free", "blktrace_start", "ptrace", "keyctl", "bpf"] {
            #expect(result.output.contains("\(name)=\(EPERM)\n"), "\(name): \(result.output)")
        }
        #expect(result.output.contains("io_uring_setup=\(ENOSYS)\n"), "\(result.output)")
        #expect(result.output.contains("vsock=\(EAFNOSUPPORT)\n"), "\(result.output)")
        #expect(result.output.contains("rds=\(EAFNOSUPPORT)\n"), "\(result.output)")
        #expect(result.output.contains("sctp=\(EPROTONOSUPPORT)\n") && result.output.contains("uevents=\(EPROTONOSUPPORT)\n"), "\(result.output)")
        #expect(result.output.contains("modify_ldt=\(EPERM)\n"), "\(result.output)")
        // The binary sysctl call: ENOSYS in kernels since 5.5 without the filter, EPERM with it.
        #expect(result.output.contains("sysctl=\(EPERM)\n"), "\(result.output)")
        // Module loading and clock changes, tried for real inside (not only in the BPF interpreter).
        for name in ["init_module", "finit_module", "delete_module", "settimeofday", "clock_settime"] {
            #expect(result.output.contains("\(name)=\(EPERM)\n"), "\(name): \(result.output)")
        }
        #expect(result.output.contains("unix_allowed=0\n") && result.output.contains("tcp_allowed=0\n"), "\(result.output)")
        #expect(result.output.contains("udp_nonblock_allowed=0\n"), "\(result.output)")
        // AF_INET with SOCK_PACKET (which the kernel makes an AF_PACKET socket) is refused by type.
        #expect(result.output.contains("sock_packet=\(ESOCKTNOSUPPORT)\n") && result.output.contains("sock_packet_cloexec=\(ESOCKTNOSUPPORT)\n"), "\(result.output)")
        #expect(result.output.contains("getpid_allowed=0\n"))
    }

    @Test("C11 a fresh session keyring: not the caller's", .requiresPerl)
    func keyring() throws {
        // keyctl is denied by the filter, so ask in a sandbox without it: KEYCTL_GET_KEYRING_ID (0)
        // of KEY_SPEC_SESSION_KEYRING (-3); a process of the caller's asks the same on the host.
        let result = try runSandboxed("exec /usr/bin/perl -e 'print syscall(250, 0, -3, 0)'") { $0.seccomp = false }
        #expect(result.status == 0)
        let inside = result.output
        let host = startProgram("/usr/bin/perl", ["-e", "print syscall(250, 0, -3, 0)"])
        let ours = readAll(host.output)
        close(host.output)
        #expect(reap(host.pid) == 0)
        #expect(Int32(inside).map { $0 > 0 } == true && Int32(ours).map { $0 > 0 } == true && inside != ours,
                "inside \(inside), the caller's \(ours)")
    }

    @Test("C11 a root cloned from the shared one is the root a sandbox builds: same mounts, flags and files; read-only")
    func sharedRoot() throws {
        // /proc is left out of the listing (-I, not a grep afterwards: its link count, which counts
        // every process of the host, also sets the width of that column in the lines kept).
        let script = """
            cut -d' ' -f5,6,9- /proc/self/mountinfo
            ls -la -I proc --time-style=+ / /dev /.silo /etc
            for path in / /etc /dev /.silo/init /usr; do touch $path/x 2>/dev/null && echo "wrote $path"; done
            echo data > /tmp/x && cat /tmp/x
            """
        let built = try runSandboxed(underInit: true, script)
        #expect(built.status == 0, "\(built.output)")
        #expect(!built.output.contains("wrote "), "\(built.output)")
        // The first asks for the shared root to be made (after its start); the next are clones of it.
        for round in 0..<3 {
            let shared = try runSandboxed(underInit: true, script) { $0.sharedRoot = true }
            #expect(shared.status == 0)
            #expect(shared.output == built.output, "round \(round): \(shared.output)")
        }
        // No mount of either is a peer or a slave of the host's: what the host mounts later
        // never shows up inside (mountinfo's optional fields, before its " - ").
        let propagation = "sed 's/ - .*//' /proc/self/mountinfo | grep -E 'shared:|master:' || true"
        #expect(try runSandboxed(underInit: true, propagation).output.isEmpty)
        #expect(try runSandboxed(underInit: true, propagation) { $0.sharedRoot = true }.output.isEmpty)
    }

    @Test("C11 a host mount below a read-only bind is read-only too")
    func submountsReadOnly() throws {
        // A host folder with a tmpfs mounted inside it, bound into the sandbox as /usr is (not
        // under /tmp, which the sandbox has a private one of).
        let host = try #require(mkdtemp(strdup("/var/tmp/silo-sub-XXXXXX")).map { String(cString: $0) })
        defer { rmdir(host + "/inner"); rmdir(host) }
        mkdir(host + "/inner", 0o755)
        try #require(mount("tmpfs", host + "/inner", "tmpfs", 0, "size=1m") == 0, "mount a tmpfs: \(errno)")
        defer { umount2(host + "/inner", 0) }
        let result = try runSandboxed("""
            touch \(host)/x 2>/dev/null && echo top-writable
            touch \(host)/inner/x 2>/dev/null && echo inner-writable
            test -d \(host)/inner && echo seen
            touch /tmp/x && echo tmp-writable
            """) { $0.readOnlyBinds.append(host) }
        #expect(result.status == 0)
        #expect(result.output == "seen\ntmp-writable\n", "\(result.output)")
    }

    @Test("C11 only the minimal devices exist")
    func devices() throws {
        let result = try runSandboxed("ls /dev | tr '\\n' ' '")
        #expect(result.status == 0)
        let names = Set(result.output.split(separator: " ").map(String.init))
        #expect(names == ["null", "zero", "full", "random", "urandom", "tty", "pts", "ptmx", "shm", "fd", "stdin", "stdout", "stderr"],
                "\(names.sorted())")
        // Its own pty instance, which can take no more than 256 of the host's pool.
        let pts = try runSandboxed("grep ' /dev/pts ' /proc/mounts")
        #expect(pts.output.contains("max=256"), "\(pts.output)")
    }

    @Test("C11 the device binds are read-only: the payload (uid 0, their owner) cannot chmod or touch the host's nodes, and writes through them work", arguments: [false, true])
    func deviceInodesUnchanged(underInit: Bool) throws {
        var before = stat()
        try #require(stat("/dev/full", &before) == 0)
        let result = try runSandboxed(underInit: underInit, """
            for node in /dev/null /dev/full /dev/zero /dev/tty; do
                # What the node has already (its mode, its own time): were they taken, the host would be none the worse.
                chmod $(stat -c %a $node) $node 2>&1 | sed "s|^|refused chmod $node: |"
                touch -c -m -r $node $node 2>&1 | sed "s|^|refused touch $node: |"
            done
            echo through > /dev/null && echo null-written
            """)
        #expect(result.status == 0)
        for node in ["/dev/null", "/dev/full", "/dev/zero", "/dev/tty"] {
            for call in ["chmod", "touch"] {
                let line = result.output.split(separator: "\n").first { $0.hasPrefix("refused \(call) \(node): ") }
                #expect(line?.contains("Read-only file system") == true, "\(call) \(node): \(result.output)")
            }
        }
        #expect(result.output.contains("null-written\n"), "\(result.output)")
        var after = stat()
        #expect(stat("/dev/full", &after) == 0 && after.st_mode == before.st_mode && after.st_mtim.tv_sec == before.st_mtim.tv_sec)
    }

    @Test("A failing setup step is reported with its name and errno, and nothing is left")
    func setupFailure() throws {
        func children() -> Set<String> {
            Set(directoryEntries("/proc/self/task").flatMap { (readText("/proc/self/task/\($0)/children") ?? "").split(separator: " ").map(String.init) })
        }
        let mountsBefore = readText("/proc/self/mountinfo") ?? ""
        let childrenBefore = children()
        let error = #expect(throws: SiloError.self) {
            _ = try Sandbox.spawn(SandboxSpec(root: "/nonexistent/silo-root", hostname: "x", arguments: ["/bin/true"]), cgroup: nil)
        }
        #expect(error?.message.contains("mount the root tmpfs") == true, "\(error?.message ?? "")")
        #expect(error?.errno == ENOENT)
        let exec = #expect(throws: SiloError.self) {
            var template = Array("/tmp/silo-root-XXXXXX".utf8CString)
            let root = template.withUnsafeMutableBufferPointer { $0.baseAddress.flatMap { mkdtemp($0) } }.map { String(cString: $0) } ?? "/tmp"
            defer { #expect(rmdir(root) == 0, "the root folder is left empty: \(directoryEntries(root))") }
            _ = try Sandbox.spawn(SandboxSpec(root: root, hostname: "x", arguments: ["/no/such/program"]), cgroup: nil)
        }
        #expect(exec?.value == "exec")
        // Nothing is left: no mount on the host, no child of this process (each reaped).
        #expect(readText("/proc/self/mountinfo") == mountsBefore, "a mount was left on the host")
        #expect(eventually(seconds: 10) { children().subtracting(childrenBefore).isEmpty }, "children left: \(children().subtracting(childrenBefore))")
    }

    @Test("C12 an attach that would enter the host's own mount namespace (a pid that names another process) is refused; the host's /dev is untouched")
    func attachRefusesHostNamespace() throws {
        let before = readText("/proc/self/mountinfo") ?? ""
        let pid = getpid()  // this process: in the host's mount namespace, as a reused pid could be
        let pidfd = silo_pidfd_open(pid)
        defer { if pidfd >= 0 { close(pidfd) } }
        var failure = silo_sandbox_failure()
        // A detach from a mount path under a file: were the check missing, the attach would fail
        // at that path (ENOTDIR) before it touched /dev, so this test cannot harm the host's.
        let result = "/dev/null".withCString { device in
            "auto".withCString { type in
                "/proc/version/silo-test".withCString { target in
                    var config = silo_attach_config(device_path: device, major: 1, minor: 3, mount_target: target, filesystem_type: type, read_only: 0)
                    return silo_sandbox_attach(pid, pidfd, &config, 0, &failure)
                }
            }
        }
        #expect(result == -1)
        #expect(String(cString: silo_sandbox_step_name(failure.step)).contains("mount namespace"))
        #expect(failure.error == EINVAL)
        #expect(readText("/proc/self/mountinfo") == before, "no mount changed on the host")
    }
}

@Suite("silo run: one command in a fresh system", .tags(.root), .requiresCgroups, .serialized)
struct SandboxRunTests {
    /// A configuration on a fresh state folder; `cleanup` removes the folders it may have made.
    func configuration() -> (ComputeConfiguration, cleanup: () -> Void) {
        var template = Array("/tmp/silo-run-XXXXXX".utf8CString)
        let state = template.withUnsafeMutableBufferPointer { $0.baseAddress.flatMap { mkdtemp($0) } }.map { String(cString: $0) } ?? "/tmp/silo-run"
        let configuration = ComputeConfiguration(stateDirectory: state)
        return (configuration, {
            rmdir(configuration.runtimeDirectory + "/systems")
            rmdir(configuration.runtimeDirectory)
            rmdir(state)
            #expect(access(state, F_OK) != 0, "nothing of the runs is left in \(state): \(String(describing: try? listLinks(state + "/run/systems")))")
        })
    }

    @Test("The command's exit code comes back; init is pid 1 and the command its child; nothing remains")
    func exitCodes() throws {
        let (configuration, cleanup) = configuration()
        defer { cleanup() }
        #expect(try SandboxRun.run(id: "run-a", limits: CgroupLimits(), arguments: ["/bin/sh", "-c", "exit 42"], configuration: configuration) == 42)
        // The payload is not pid 1: init is, and init is non-dumpable (its environ is closed
        // even to root inside). Each failed check has its own exit code.
        #expect(try SandboxRun.run(id: "run-b", limits: CgroupLimits(), arguments: ["/bin/sh", "-c", """
            test "$$" != 1 || exit 10
            head -c 11 /proc/1/cmdline | grep -q '^/.silo/init$' || exit 11
            cat /proc/1/environ >/dev/null 2>&1 && exit 12
            exit 0
            """], configuration: configuration) == 0)
        #expect(try SandboxRun.run(id: "run-c", limits: CgroupLimits(), arguments: ["/bin/sh", "-c", "kill -9 $$"], configuration: configuration) == 137)
        #expect(try SandboxRun.run(id: "run-d", limits: CgroupLimits(), arguments: ["/no/such/program"], configuration: configuration) == 127)
        #expect(try SandboxRun.run(id: "run-e", limits: CgroupLimits(), arguments: ["/usr"], configuration: configuration) == 126,
                "found but not runnable: as a shell says it")
        #expect(try SandboxRun.run(id: "run-f", limits: CgroupLimits(), arguments: ["no-such-command-\(getpid())"], configuration: configuration) == 127,
                "a PATH search that finds nothing: not found, whatever the last folder said")
        #expect(directoryEntries(configuration.runtimeDirectory + "/systems").isEmpty)
        for id in ["run-a", "run-b", "run-c", "run-d", "run-e", "run-f"] {
            #expect(Cgroup.open(name: configuration.cgroupName(for: id)).directories.values.allSatisfy { !fileExists($0) })
        }
    }

    @Test("C10 over the memory limit the command is OOM-killed inside: exit 137; the host is untouched")
    func memoryLimit() throws {
        let (configuration, cleanup) = configuration()
        defer { cleanup() }
        // The kernel's count of OOM kills: a SIGKILL from anywhere else would give 137 too.
        func oomKills() -> Int? {
            (readText("/proc/vmstat") ?? "").split(separator: "\n").first { $0.hasPrefix("oom_kill ") }.flatMap { Int($0.dropFirst(9)) }
        }
        let before = try #require(oomKills(), "/proc/vmstat has no oom_kill count")
        let code = try SandboxRun.run(id: "run-oom", limits: CgroupLimits(memory: 32 << 20),
                                      arguments: ["/bin/dd", "if=/dev/zero", "of=/dev/null", "bs=256M", "count=1"],
                                      configuration: configuration)
        #expect(code == 137)
        #expect((oomKills() ?? 0) > before, "the kill was the OOM killer's")
    }

    @Test("C3 C13 a run whose runner was killed (a `timeout`'s SIGTERM) leaves its id free for the next run of it: its reservation and cgroup go first")
    func idOfKilledRun() throws {
        let (configuration, cleanup) = configuration()
        defer { cleanup() }
        let id = "killed-\(getpid())"
        let systems = configuration.runtimeDirectory + "/systems"
        mkdir(configuration.runtimeDirectory, 0o755)
        mkdir(systems, 0o755)
        // What the killed runner left: its lock (free now), its reservation, its cgroup.
        for path in [SandboxRun.runLock(systems: systems, id: id), systems + "/" + id] {
            let file = open(path, O_CREAT | O_WRONLY | O_CLOEXEC, 0o600)
            #expect(file >= 0)
            close(file)
        }
        let left = try Cgroup.create(name: configuration.cgroupName(for: id), limits: CgroupLimits(pids: 16), layout: configuration.layout,
                                     enforcingOnly: true)
        defer { try? left.destroy() }
        #expect(try SandboxRun.run(id: id, limits: CgroupLimits(pids: 16), arguments: ["/bin/true"], configuration: configuration) == 0)
        #expect(directoryEntries(systems).isEmpty, "\(directoryEntries(systems))")
        #expect(left.directories.values.allSatisfy { !fileExists($0) }, "its cgroup is gone with the run")
    }

    @Test("C3 two systems cannot share an id; bad ids are refused")
    func ids() throws {
        let (configuration, cleanup) = configuration()
        defer { cleanup() }
        for bad in ["", "a/b", "..", "-x", String(repeating: "i", count: 65)] {
            #expect((#expect(throws: SiloError.self) {
                _ = try SandboxRun.run(id: bad, limits: CgroupLimits(), arguments: ["/bin/true"], configuration: configuration)
            })?.code == .invalidArgument)
        }
        mkdir(configuration.runtimeDirectory, 0o755)
        mkdir(configuration.runtimeDirectory + "/systems", 0o755)
        mkdir(configuration.runtimeDirectory + "/systems/taken", 0o700)
        defer { rmdir(configuration.runtimeDirectory + "/systems/taken") }  // runs before cleanup()
        #expect((#expect(throws: SiloError.self) {
            _ = try SandboxRun.run(id: "taken", limits: CgroupLimits(), arguments: ["/bin/true"], configuration: configuration)
        })?.code == .systemAlreadyExists)
        // cgroup.procs is a file of every cgroup parent, v1's and v2's: a cgroup of that name is a
        // bad id, said so (it was "already exists", for good).
        let named = #expect(throws: SiloError.self) { _ = try Cgroup.create(name: "cgroup.procs", limits: CgroupLimits(pids: 8)) }
        #expect(named?.code == .invalidArgument && named?.field == "id" && named?.value == "cgroup.procs", "\(String(describing: named))")
    }
}

func directoryEntries(_ path: String) -> [String] {
    guard let directory = opendir(path) else { return [] }
    defer { closedir(directory) }
    var names: [String] = []
    while let entry = readdir(directory) {
        let name = withUnsafePointer(to: entry.pointee.d_name) { $0.withMemoryRebound(to: CChar.self, capacity: 256) { String(cString: $0) } }
        if name != "." && name != ".." { names.append(name) }
    }
    return names
}

@Suite("Sandbox and cgroup", .tags(.root), .requiresCgroups)
struct SandboxCgroupTests {
    @Test("C13 the system's init starts inside its cgroup: born there on cgroup2, written into each v1 hierarchy")
    func startsInCgroup() throws {
        var template = Array("/tmp/silo-root-XXXXXX".utf8CString)
        let root = try #require(template.withUnsafeMutableBufferPointer { $0.baseAddress.flatMap { mkdtemp($0) } }.map { String(cString: $0) })
        defer { rmdir(root) }
        let cgroup = try Cgroup.create(name: "born-\(getpid())", limits: CgroupLimits(pids: 16))
        defer { try? cgroup.destroy() }
        let process = try Sandbox.spawn(SandboxSpec(root: root, hostname: "born", arguments: ["/bin/sleep", "5"]), cgroup: cgroup)
        defer { close(process.pidfd) }
        var reaped = false
        defer { if !reaped { try? cgroup.killAll(); _ = reap(process.pid) } }  // a failed check leaves no process
        #expect(!cgroup.directories.isEmpty, "the cgroup has a directory to check")
        for (key, directory) in cgroup.directories {
            let members = (readText(directory + "/cgroup.procs") ?? "").split(separator: "\n").compactMap { pid_t($0) }
            #expect(members.contains(process.pid), "\(key): \(directory)")
        }
        try cgroup.killAll()
        #expect(reap(process.pid) == 128 + SIGKILL)
        reaped = true
    }
}

/// Silo's init signals every process it can see when it ends (kill(-1, ...)), which on the host, as
/// root, would be every process there: started anywhere but as pid 1, it refuses, in both modes.
/// Checked inside a pid namespace of its own whose pid 1 is a shell, so that an init that did not
/// refuse could only reach the shell and its sleeper, never the host.
@Suite("Silo's init outside a system", .tags(.root), .enabled(if: getuid() == 0, "needs root: unshare --pid"))
struct InitOutsideTests {
    @Test("silo-init refuses to run unless it is pid 1, and no other process is touched", arguments: ["--agent", "-- /bin/true"])
    func refusesOutsideItsNamespace(_ mode: String) throws {
        let initBinary = ComputeConfiguration().initBinary
        try #require(access(initBinary, X_OK) == 0, "Silo's init at \(initBinary)")
        try #require(access("/usr/bin/unshare", X_OK) == 0, "needs unshare (util-linux)")
        let script = "sleep 30 & s=$!; timeout -s KILL 10 \(initBinary) \(mode) 2>/dev/null </dev/null; code=$?; kill -0 $s && echo alive; kill $s; echo code=$code"
        let output = try captureOutput(["/usr/bin/unshare", "--pid", "--fork", "/bin/sh", "-c", script])
        #expect(output.contains("code=64"), "\(output)")
        #expect(output.contains("alive"), "a process beside init was signalled: \(output)")
    }
}

private func captureOutput(_ arguments: [String]) throws -> String {
    var output: [Int32] = [0, 0]
    guard pipe(&output) == 0 else { throw SiloError.system("pipe", errno: errno) }
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
    posix_spawn_file_actions_adddup2(&actions, output[1], 1)
    posix_spawn_file_actions_addclose(&actions, output[0])
    let argv = arguments.map { strdup($0) } + [nil]
    defer { argv.forEach { free($0) } }
    var pid: pid_t = 0
    let result = spawnCleanly(&pid, arguments[0], &actions, argv, environ)
    close(output[1])
    defer { close(output[0]) }
    guard result == 0 else { throw SiloError.system("posix_spawn", errno: result, path: arguments[0]) }
    let text = readAll(output[0])
    _ = reap(pid)
    return text
}
