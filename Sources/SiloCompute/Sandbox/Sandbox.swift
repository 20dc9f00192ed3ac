import CSiloLinux
import Glibc
import SiloOperations

/// What to start in fresh namespaces (C11). Everything between clone3 and exec happens in C
/// (CSiloLinux's sandbox.c), async-signal-safe; this side prepares it and reports failures.
public struct SandboxSpec: Sendable {
    /// An empty directory on the host where the child mounts its root (a tmpfs).
    public var root: String
    public var hostname: String
    /// Program and arguments; the program's path is inside the sandbox.
    public var arguments: [String]
    public var environment: [String]
    public var seccomp: Bool
    /// Host paths bound read-only at the same place.
    public var readOnlyBinds: [String]
    public var devices: [String]
    /// Standard descriptors for the program; nil keeps the caller's.
    public var standardInput: Int32?
    public var standardOutput: Int32?
    public var standardError: Int32?
    /// Silo's init on the host; bound at `/.silo/init` inside. Nil runs `arguments` as pid 1 itself.
    public var initBinary: String?
    /// Block devices given to the system (C12): each node appears in /dev, and its file system is
    /// mounted where asked.
    public var blockDevices: [BlockDevice] = []
    /// Descriptors the program inherits as 3, 4, ... in this order (at most 16); all others close.
    public var inheritedDescriptors: [Int32] = []
    /// Capability numbers the program keeps (`CAP_SETUID` is 7); none by default.
    public var keptCapabilities: [Int32] = []
    /// SIGKILL the sandbox's first process when the calling thread dies (it must wait for it).
    public var dieWithCaller = false

    public init(root: String, hostname: String, arguments: [String], environment: [String] = SandboxSpec.defaultEnvironment,
                seccomp: Bool = true, readOnlyBinds: [String] = SandboxSpec.defaultBinds, devices: [String] = SandboxSpec.defaultDevices,
                standardInput: Int32? = nil, standardOutput: Int32? = nil, standardError: Int32? = nil,
                initBinary: String? = nil) {
        self.root = root
        self.hostname = hostname
        self.arguments = arguments
        self.environment = environment
        self.seccomp = seccomp
        self.readOnlyBinds = readOnlyBinds
        self.devices = devices
        self.standardInput = standardInput
        self.standardOutput = standardOutput
        self.standardError = standardError
        self.initBinary = initBinary
    }

    /// The host's programs and libraries, and the few /etc files they read.
    public static let defaultBinds = [
        "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32",
        "/etc/alternatives", "/etc/ld.so.cache", "/etc/passwd", "/etc/group", "/etc/nsswitch.conf",
        "/etc/localtime", "/etc/resolv.conf",
    ]
    public static let defaultDevices = ["/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom", "/dev/tty"]
    public static let defaultEnvironment = ["PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin", "HOME=/", "TERM=xterm"]
    /// /proc paths hidden from the payload, as runc and crun hide them.
    static let maskedPaths = [
        "/proc/kcore", "/proc/keys", "/proc/timer_list", "/proc/sched_debug", "/proc/sysrq-trigger",
        "/proc/latency_stats", "/proc/kallsyms", "/proc/acpi", "/proc/scsi", "/proc/asound", "/proc/firmware",
        // The host's physical pages, their flags and cgroups: nothing a payload needs to read.
        "/proc/kpageflags", "/proc/kpagecount", "/proc/kpagecgroup",
    ]
    static let readOnlyPaths = ["/proc/sys", "/proc/irq", "/proc/bus", "/proc/fs"]
}

/// A block device given to a compute system: a LUN's loop device, passed as plain values.
public struct BlockDevice: Sendable, Hashable {
    /// The node on the host, such as /dev/loop3; it appears at the same path inside.
    public var devicePath: String
    /// `major:minor`, for the device cgroup.
    public var deviceNumber: String
    /// Where to mount its file system inside, if anywhere.
    public var mountPath: String?
    public var filesystemType: String?
    public var readOnly: Bool
    /// The LUN's name, for properties and messages.
    public var lun: String?
    /// A descriptor holding storage's lease on the LUN (``LunLease``): the system's init keeps a
    /// copy for as long as it runs, so the LUN cannot be deleted under it (S10).
    public var leaseDescriptor: Int32?
    /// Its SCSI location in the document, `controller/index`, for a Remove by ResourcePath.
    public var location: String?

    public init(devicePath: String, deviceNumber: String, mountPath: String? = nil, filesystemType: String? = nil, readOnly: Bool = false,
                lun: String? = nil, leaseDescriptor: Int32? = nil, location: String? = nil) {
        self.location = location
        self.devicePath = devicePath
        self.deviceNumber = deviceNumber
        self.mountPath = mountPath
        self.filesystemType = filesystemType
        self.readOnly = readOnly
        self.lun = lun
        self.leaseDescriptor = leaseDescriptor
    }
}

/// A started sandbox's first process.
public struct SandboxProcess: Sendable {
    public let pid: pid_t
    /// A pidfd for the process: survives pid reuse; poll it for exit.
    public let pidfd: Int32
}

public enum Sandbox {
    /// Starts `spec.arguments` as pid 1 of new pid, mount, UTS, IPC, network and cgroup namespaces,
    /// in `cgroup` from before its setup.
    /// - Throws: the step of the child's setup that failed, with its errno; the child is reaped.
    public static func spawn(_ spec: SandboxSpec, cgroup: Cgroup?) throws(SiloError) -> SandboxProcess {
        guard !spec.arguments.isEmpty else { throw SiloError.missingArgument(field: "arguments", reason: "give a program to run") }
        var errors: [Int32] = [-1, -1]
        guard silo_pipe2(&errors, O_CLOEXEC) == 0 else { throw SiloError.system("pipe2", errno: errno) }
        defer { close(errors[0]) }
        // Born in the cgroup2 directory where there is one: no migration, which costs an RCU
        // grace period (5 to 11 ms measured here). The child joins the v1 hierarchies itself,
        // first thing (sandbox.c says why that costs none).
        let cgroupFD = cgroup?.openUnifiedDirectory()
        defer { if let cgroupFD { close(cgroupFD) } }
        let taskFiles: [Int32]
        do throws(SiloError) {
            taskFiles = try cgroup?.openTaskFiles(skippingUnified: cgroupFD != nil) ?? []
        } catch {
            close(errors[1])
            throw error
        }
        defer { taskFiles.forEach { close($0) } }
        var pidfd: Int32 = -1
        let pid: pid_t = withCStrings(spec.arguments) { argv in
            withCStrings(spec.environment) { envp in
                withCStrings(spec.readOnlyBinds) { binds in
                    withCStrings(spec.devices + spec.blockDevices.map(\.devicePath)) { devices in
                      withCStrings(spec.blockDevices.filter { $0.mountPath != nil }.map(\.devicePath)) { mountSources in
                      withCStrings(spec.blockDevices.compactMap(\.mountPath)) { mountTargets in
                      withCStrings(spec.blockDevices.filter { $0.mountPath != nil }.map { $0.filesystemType ?? "auto" }) { mountTypes in
                      withCStrings(spec.blockDevices.filter { $0.mountPath != nil }.map { $0.readOnly ? "ro" : "rw" }) { mountModes in
                        withCStrings(SandboxSpec.maskedPaths) { masked in
                            withCStrings(SandboxSpec.readOnlyPaths) { readOnly in
                                spec.root.withCString { root in
                                    spec.hostname.withCString { hostname in
                                      (spec.initBinary ?? "").withCString { initBinary in
                                        var config = silo_sandbox_config()
                                        config.root = root
                                        config.hostname = hostname
                                        config.argv = argv
                                        config.envp = envp
                                        config.read_only_binds = UnsafePointer(OpaquePointer(binds))
                                        config.devices = UnsafePointer(OpaquePointer(devices))
                                        config.masked_paths = UnsafePointer(OpaquePointer(masked))
                                        config.read_only_paths = UnsafePointer(OpaquePointer(readOnly))
                                        config.error_fd = errors[1]
                                        config.stdin_fd = spec.standardInput ?? -1
                                        config.stdout_fd = spec.standardOutput ?? -1
                                        config.stderr_fd = spec.standardError ?? -1
                                        config.last_capability = Self.lastCapability
                                        config.seccomp = spec.seccomp ? 1 : 0
                                        config.init_binary = spec.initBinary == nil ? nil : initBinary
                                        config.cgroup_fd = cgroupFD ?? -1
                                        config.mount_sources = UnsafePointer(OpaquePointer(mountSources))
                                        config.mount_targets = UnsafePointer(OpaquePointer(mountTargets))
                                        config.mount_types = UnsafePointer(OpaquePointer(mountTypes))
                                        config.mount_modes = UnsafePointer(OpaquePointer(mountModes))
                                        config.die_with_parent = spec.dieWithCaller ? 1 : 0
                                        config.keep_capabilities = spec.keptCapabilities.reduce(0) { $0 | (1 << UInt64($1)) }
                                        return spec.inheritedDescriptors.withUnsafeBufferPointer { inherited in
                                          taskFiles.withUnsafeBufferPointer { tasks in
                                            config.inherit_fds = inherited.baseAddress
                                            config.inherit_count = Int32(min(inherited.count, 16))
                                            config.cgroup_task_fds = tasks.baseAddress
                                            config.cgroup_task_count = Int32(tasks.count)
                                            return silo_sandbox_spawn(&config, &pidfd)
                                          }
                                        }
                                      }
                                    }
                      }
                      }
                      }
                      }
                                }
                            }
                        }
                    }
                }
            }
        }
        let spawnError = errno
        close(errors[1])
        guard pid > 0 else { throw SiloError.system("clone3", errno: spawnError) }
        var failure = silo_sandbox_failure()
        let got = withUnsafeMutableBytes(of: &failure) { read(errors[0], $0.baseAddress, $0.count) }
        if got == MemoryLayout<silo_sandbox_failure>.size {
            reap(pid)
            close(pidfd)
            let step = String(cString: silo_sandbox_step_name(failure.step))
            throw SiloError(
                failure.error == EPERM || failure.error == EACCES ? .accessDenied : .systemCallFailed,
                "the sandbox could not \(step): \(String(cString: strerror(failure.error))) (errno \(failure.error))",
                field: "sandbox", value: step, syscall: step, errno: failure.error
            )
        }
        return SandboxProcess(pid: pid, pidfd: pidfd)
    }

    /// The kernel's highest capability number: fixed while it runs, so read once.
    private static let lastCapability = Int32(readText("/proc/sys/kernel/cap_last_cap").flatMap { Int32($0) } ?? 40)

    private static func reap(_ pid: pid_t) {
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0, errno == EINTR {}
    }
}

/// Calls `body` with a NULL-terminated array of C strings that lives for the call.
func withCStrings<Result>(_ strings: [String], _ body: (UnsafePointer<UnsafeMutablePointer<CChar>?>) -> Result) -> Result {
    let pointers = strings.map { strdup($0) } + [nil]
    defer { pointers.forEach { free($0) } }
    return pointers.withUnsafeBufferPointer { buffer in
        guard let base = buffer.baseAddress else { preconditionFailure("an array of at least one element has storage") }
        return body(base)
    }
}
