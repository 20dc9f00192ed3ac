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
    /// Attach a clone of a root shared with other sandboxes of this process (read-only: the binds,
    /// init and /dev's device nodes) instead of building one, once one is made (a sandbox without
    /// one has it made afterwards, on the other thread). Only where nothing changes the root or
    /// /dev later (LUN attachments do) and without LUN mounts; those build their own.
    public var sharedRoot = false

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
        // The kernel's slab caches (root reads it without a capability): a map for heap grooming.
        "/proc/slabinfo",
    ]
    /// Read-only: the kernel's settings, and init's (pid 1's) OOM score, which a root process inside
    /// could otherwise raise (its files are the namespace root's: init is not dumpable) and then
    /// go over the memory limit, for the OOM killer to end the system by its init.
    static let readOnlyPaths = ["/proc/sys", "/proc/irq", "/proc/bus", "/proc/fs",
                                "/proc/1/oom_score_adj", "/proc/1/oom_adj", "/proc/1/task/1/oom_score_adj", "/proc/1/task/1/oom_adj"]
}

/// A block device given to a compute system: a LUN's loop device, passed as plain values.
public struct BlockDevice: Sendable, Hashable {
    /// Why `path` cannot be where a LUN is mounted inside, if it cannot: it must be absolute,
    /// without `.` or `..`, and outside the folders Silo builds and guards (`/proc`, `/dev`,
    /// `/sys`, `/.silo`), where a mount (or the unmount of one) would lift a mask or a read-only bind.
    public static func mountPathProblem(_ path: String) -> String? {
        let parts = path.split(separator: "/")
        guard path.hasPrefix("/"), !parts.contains(".."), !parts.contains("."), !parts.isEmpty else {
            return "the mount path must be an absolute path without '.' or '..', other than '/'"
        }
        guard !path.unicodeScalars.contains(where: { $0.value < 0x20 || $0.value == 0x7f }) else {
            return "the mount path must not hold control characters"
        }
        if let first = parts.first, ["proc", "dev", "sys", ".silo"].contains(first) {
            return "a LUN cannot be mounted under /\(first), which Silo builds and guards"
        }
        // The host's programs and files, bound read-only (or their links, such as /lib64 ->
        // usr/lib64, recreated): a folder made there for the mount would take the link's place
        // and leave every program without its libraries.
        let canonical = canonicalMountPath(path)  // "//usr" and "/etc//passwd" are those paths too
        if let bind = SandboxSpec.defaultBinds.first(where: { canonical == $0 || canonical.hasPrefix($0 + "/") }) {
            return "a LUN cannot be mounted at or under \(bind), which is the host's, bound read-only"
        }
        return nil
    }

    /// Why the attachment at `index` of `attachments` (LUN names, canonical mount paths) cannot be
    /// made with those before it, if it cannot: one LUN in one place, since a second attachment of
    /// it would be a second mount or node that a detach by name could not tell apart, and one LUN
    /// per mount path. `onMountPath` says which field to name.
    public static func conflict(at index: Int, in attachments: [(lun: String, mountPath: String?)]) -> (reason: String, onMountPath: Bool)? {
        let (lun, mountPath) = attachments[index]
        let before = attachments[..<index]
        if before.contains(where: { $0.lun == lun }) { return ("LUN '\(lun)' is attached twice", false) }
        if let mountPath, before.contains(where: { $0.mountPath == mountPath }) { return ("another LUN is mounted at \(mountPath)", true) }
        return nil
    }

    /// `path` as Silo keeps it: one slash between components, none at the end (`/a//b/` is `/a/b`),
    /// so that two spellings of one folder are one mount path.
    public static func canonicalMountPath(_ path: String) -> String {
        var parts: [String] = []
        for part in path.split(separator: "/") { parts.append(String(part)) }
        return "/" + parts.joinedPlainly("/")
    }

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

    /// What the system's device cgroup allows on it: nothing when its file system is mounted
    /// (the system gets no node then), reading when read-only, else reading and writing.
    public var grant: DeviceGrant? { DeviceGrant(number: deviceNumber, readOnly: readOnly, mountPath: mountPath) }

    /// The tag the system's agent holds its lease under: "data" for a mounted LUN, "raw:data" for
    /// one given raw, whose lease a detach keeps until the system stops (see ``DeviceGrant``).
    public var leaseTag: String { (mountPath == nil ? "raw:" : "") + (lun ?? devicePath) }

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
        let helper = SandboxHelper(makeCgroup: nil)
        defer { helper?.finish() }
        return try spawn(spec, cgroup: cgroup, helper: helper)
    }

    /// As ``spawn(_:cgroup:)``, in the cgroup `makeCgroup` makes: on `helper`'s thread while the
    /// child builds its mounts when the layout allows (see ``SandboxHelper/init(layout:makeCgroup:)``),
    /// here before the child starts otherwise. `helper` may be started (and its cgroup let go) before.
    /// - Returns: the process, and the cgroup it runs in; on a throw, the cgroup is removed again.
    static func spawn(_ spec: SandboxSpec, helper: SandboxHelper?,
                      makingCgroup makeCgroup: @Sendable () throws(SiloError) -> Cgroup)
        throws(SiloError) -> (process: SandboxProcess, cgroup: Cgroup)
    {
        var cgroup: Cgroup?
        do throws(SiloError) {
            helper?.start()  // (proceed comes with the spawn, after the shared root's look-up)
            if helper?.makesCgroup != true { cgroup = try makeCgroup() }
            let process = try spawn(spec, cgroup: cgroup, helper: helper)
            guard let made = cgroup ?? helper?.cgroup else { preconditionFailure("a child past the gate has its cgroup") }
            return (process, made)
        } catch {
            // The thread may wait for a proceed or a spawn that will not come now (a cgroup that
            // could not be made here, before either): let it go, then join it.
            helper?.release()
            helper?.join()
            try? (cgroup ?? helper?.cgroup)?.destroy()
            throw error
        }
    }

    private static func spawn(_ spec: SandboxSpec, cgroup: Cgroup?, helper: SandboxHelper?) throws(SiloError) -> SandboxProcess {
        guard !spec.arguments.isEmpty else { throw SiloError.missingArgument(field: "arguments", reason: "give a program to run") }
        var errors: [Int32] = [-1, -1]
        guard silo_pipe2(&errors, O_CLOEXEC) == 0 else { throw SiloError.system("pipe2", errno: errno) }
        defer { close(errors[0]) }
        // Born in the cgroup2 directory where there is one: no migration, which costs an RCU
        // grace period (5 to 11 ms measured here). The child joins the v1 hierarchies itself
        // (sandbox.c says why that costs none).
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
        // A clone of the shared root, when there is one; else the other thread makes it for next time.
        var rootTree: Int32 = -1
        let sharesRoot = spec.sharedRoot && spec.blockDevices.isEmpty
        if sharesRoot {
            rootTree = withCStrings(spec.readOnlyBinds) { binds in
                withCStrings(spec.devices) { devices in
                    silo_sandbox_template_clone(UnsafePointer(OpaquePointer(binds)), UnsafePointer(OpaquePointer(devices)),
                                                spec.initBinary, 0)
                }
            }
            if rootTree == -ENOENT { helper?.makeSharedRoot(binds: spec.readOnlyBinds, devices: spec.devices, initBinary: spec.initBinary) }
        }
        if rootTree < 0 { rootTree = -1 }
        defer { if rootTree >= 0 { close(rootTree) } }
        let mounted = spec.blockDevices.filter { $0.mountPath != nil }
        let mountFDs: [Int32]
        do throws(SiloError) {
            mountFDs = try Self.openMounts(mounted)
        } catch {
            close(errors[1])
            // The other thread may be waiting for the go already (a run starts it early): let it
            // finish its part, as after a clone that failed, so the caller's join returns.
            helper?.proceed()
            helper?.waitForGate()
            helper?.spawned()
            throw error
        }
        defer { mountFDs.forEach { close($0) } }
        // The other thread starts now (if not before): the namespace and cgroup while the child mounts.
        helper?.start()
        helper?.proceed()
        var pidfd: Int32 = -1
        let pid: pid_t = withCStrings(spec.arguments) { argv in
            withCStrings(spec.environment) { envp in
                withCStrings(spec.readOnlyBinds) { binds in
                    withCStrings(spec.devices + spec.blockDevices.filter { $0.mountPath == nil }.map(\.devicePath)) { devices in
                      withCStrings(mounted.compactMap(\.mountPath)) { mountTargets in
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
                                        config.mount_targets = UnsafePointer(OpaquePointer(mountTargets))
                                        config.die_with_parent = spec.dieWithCaller ? 1 : 0
                                        config.keep_capabilities = spec.keptCapabilities.reduce(0) { $0 | (1 << UInt64($1)) }
                                        config.gate = helper?.gate
                                        config.root_tree_fd = rootTree
                                        return spec.inheritedDescriptors.withUnsafeBufferPointer { inherited in
                                          taskFiles.withUnsafeBufferPointer { tasks in
                                           mountFDs.withUnsafeBufferPointer { mounts in
                                            config.mount_fds = mounts.baseAddress
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
        let spawnError = errno
        close(errors[1])
        // The child is past its exec or gone: the other thread's work for it is over, or ends soon.
        helper?.waitForGate()
        helper?.spawned()
        guard pid > 0 else { throw SiloError.system("clone3", errno: spawnError) }
        var failure = silo_sandbox_failure()
        let got = withUnsafeMutableBytes(of: &failure) { read(errors[0], $0.baseAddress, $0.count) }
        if got == MemoryLayout<silo_sandbox_failure>.size {
            reap(pid)
            close(pidfd)
            // The child gave up at the gate because the other thread failed: that thread's error.
            if let error = helper?.error { throw error }
            let step = String(cString: silo_sandbox_step_name(failure.step))
            throw SiloError(
                failure.error == EPERM || failure.error == EACCES ? .accessDenied : .systemCallFailed,
                "the sandbox could not \(step): \(String(cString: strerror(failure.error))) (errno \(failure.error))",
                field: "sandbox", value: step, syscall: step, errno: failure.error
            )
        }
        return SandboxProcess(pid: pid, pidfd: pidfd)
    }

    /// The file systems of `devices` (each with a mount path) as detached mounts, made here: the
    /// device is opened under this process's device cgroup, while the system's lets its payload
    /// only read the node of a LUN mounted inside (``DeviceGrant``). The child moves each into place.
    static func openMounts(_ devices: [BlockDevice]) throws(SiloError) -> [Int32] {
        var fds: [Int32] = []
        for device in devices {
            let fd = silo_lun_mount_open(device.devicePath, device.filesystemType ?? "auto", device.readOnly ? 1 : 0)
            guard fd >= 0 else {
                let error = errno
                fds.forEach { close($0) }
                let name = device.lun.map { "LUN '\($0)'" } ?? device.devicePath
                throw SiloError(error == EPERM || error == EACCES ? .accessDenied : .systemCallFailed,
                                "the sandbox could not mount \(name) (\(device.filesystemType ?? "auto") on \(device.devicePath)): "
                                    + "\(String(cString: strerror(error))) (errno \(error))",
                                field: "lun", value: device.lun ?? device.devicePath, syscall: "fsmount", errno: error)
            }
            fds.append(fd)
        }
        return fds
    }

    /// The kernel's highest capability number: fixed while it runs, so read once.
    /// Unreadable (no /proc): 63, the most a capability set holds; numbers the kernel does not know
    /// are skipped (EINVAL), where a guess too low would leave the newest ones in the bounding set.
    private static let lastCapability = Int32(readText("/proc/sys/kernel/cap_last_cap").flatMap { Int32($0) } ?? 63)

    private static func reap(_ pid: pid_t) {
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0, errno == EINTR {}
    }
}

/// The caller's other thread while a child builds its mounts (struct silo_sandbox_gate in
/// silo_sandbox.h): it makes the network namespace, and the cgroup when asked to, opens the gate
/// the child waits at, and ends. It may start before the caller has reserved the system's id: it
/// makes the cgroup only once told to `proceed` (and nothing more after `finish` without that).
/// Without a thread (the system refuses one), it does its work where it is started.
final class SandboxHelper: @unchecked Sendable {
    let gate: UnsafeMutablePointer<silo_sandbox_gate>
    private let makeCgroup: (@Sendable () throws(SiloError) -> Cgroup)?
    /// Set by the thread, read after `join`.
    private(set) var cgroup: Cgroup?
    private(set) var error: SiloError?
    private var thread: pthread_t?
    private var started = false
    /// Posted once: make the cgroup (`proceed`) or not (`finish`, with `cancelled` set).
    private let go = UnsafeMutablePointer<sem_t>.allocate(capacity: 1)
    private var posted = false, cancelled = false
    /// No thread: the work waits for `proceed`, on the caller's thread.
    private var inline = false
    /// Posted when the gate is open.
    private let gateDone = UnsafeMutablePointer<sem_t>.allocate(capacity: 1)
    /// Posted once the child has exec'd or failed (or by `finish`): what the thread does for later
    /// sandboxes waits until then, not to slow this one's last steps on the other CPU.
    private let spawnDone = UnsafeMutablePointer<sem_t>.allocate(capacity: 1)
    private var spawnPosted = false
    /// The shared root to make after the gate, for the next sandbox (see SandboxSpec.sharedRoot).
    private var sharedRoot: (binds: [String], devices: [String], initBinary: String?)?
    /// After the gate, make a network namespace for the next sandbox of this process (for callers
    /// that join the thread only later, such as a run, once its system has ended).
    var makesSpareNetwork = false
    var makesCgroup: Bool { makeCgroup != nil }

    /// A helper that makes the cgroup too where the child joins every hierarchy itself (no
    /// cgroup2 to be born into with CLONE_INTO_CGROUP, which needs the directory before the clone).
    convenience init?(layout: CgroupLayout, makeCgroup: @escaping @Sendable () throws(SiloError) -> Cgroup) {
        self.init(makeCgroup: layout.unified == nil ? makeCgroup : nil)
    }

    init?(makeCgroup: (@Sendable () throws(SiloError) -> Cgroup)?) {
        var ends: [Int32] = [-1, -1]
        guard silo_pipe2(&ends, O_CLOEXEC) == 0 else {
            go.deallocate()
            gateDone.deallocate()
            spawnDone.deallocate()
            return nil
        }
        sem_init(go, 0, 0)
        sem_init(gateDone, 0, 0)
        sem_init(spawnDone, 0, 0)
        gate = .allocate(capacity: 1)
        gate.initialize(to: silo_sandbox_gate())
        gate.pointee.pipe = (ends[0], ends[1])
        gate.pointee.makes_net = 1
        gate.pointee.net_fd = -1
        self.makeCgroup = makeCgroup
    }

    /// Starts the thread (once); without one, the work waits for `proceed`.
    func start() {
        guard !started else { return }
        started = true
        var thread = pthread_t()
        let context = Unmanaged.passRetained(self).toOpaque()
        let made = pthread_create(&thread, nil, { raw in
            guard let raw else { return nil }
            let helper = Unmanaged<SandboxHelper>.fromOpaque(raw).takeRetainedValue()
            helper.work()
            // What the caller asked for before proceed (which work waits for when it makes the
            // cgroup) is visible after it.
            if !helper.makesCgroup { while sem_wait(helper.go) != 0 {} }
            if helper.sharedRoot != nil || helper.makesSpareNetwork {
                // Work for later sandboxes: as a batch thread, which the scheduler never lets
                // preempt the caller when it wakes (it did, on the caller's CPU, for 0.4 ms).
                var parameters = sched_param()
                pthread_setschedparam(pthread_self(), 3 /* SCHED_BATCH */, &parameters)
                while sem_wait(helper.spawnDone) != 0 {}
            }
            helper.makeSharedRootNow()
            if helper.makesSpareNetwork, !helper.cancelled { silo_sandbox_netns_refill() }
            return nil
        }, context)
        if made == 0 {
            self.thread = thread
        } else {
            Unmanaged<SandboxHelper>.fromOpaque(context).release()
            inline = true
        }
    }

    /// The id is the caller's: the cgroup can be made (once the network namespace is).
    func proceed() {
        guard !posted else { return }
        posted = true
        sem_post(go)
        if inline { work() }
    }

    /// Asks the thread to make the shared root once the gate is open. Before `proceed`.
    func makeSharedRoot(binds: [String], devices: [String], initBinary: String?) {
        if !posted { sharedRoot = (binds, devices, initBinary) }
    }

    /// The child has exec'd or failed: the thread may go on to what is for later sandboxes.
    func spawned() {
        guard !spawnPosted else { return }
        spawnPosted = true
        sem_post(spawnDone)
    }

    /// Returns once the gate is open (its fields final).
    func waitForGate() {
        guard started, !inline || posted else { return }
        while sem_wait(gateDone) != 0 {}
        sem_post(gateDone)  // for another call
    }

    /// Lets the thread go on from whatever it waits for: a proceed that has not come (it then
    /// makes no cgroup) and the spawn.
    func release() {
        if !posted {
            cancelled = true
            posted = true
            sem_post(go)
        }
        spawned()
    }

    /// Returns once the thread is done (after the shared root, if it makes one).
    func join() {
        if let thread { pthread_join(thread, nil) }
        thread = nil
    }

    /// Joins the thread (which makes no cgroup unless told to proceed), and closes what it opened
    /// and the gate.
    func finish() {
        release()
        join()
        let count = Int(gate.pointee.task_count)
        withUnsafeBytes(of: gate.pointee.task_fds) { raw in
            for fd in raw.bindMemory(to: Int32.self).prefix(count) { close(fd) }
        }
        gate.pointee.task_count = 0
        if gate.pointee.net_fd >= 0 { close(gate.pointee.net_fd) }
        gate.pointee.net_fd = -1
        if gate.pointee.pipe.0 >= 0 { close(gate.pointee.pipe.0) }
        if gate.pointee.pipe.1 >= 0 { close(gate.pointee.pipe.1) }
        gate.pointee.pipe = (-1, -1)
    }

    deinit {
        sem_destroy(go)
        go.deallocate()
        sem_destroy(gateDone)
        gateDone.deallocate()
        sem_destroy(spawnDone)
        spawnDone.deallocate()
        gate.deinitialize(count: 1)
        gate.deallocate()
    }

    private func makeSharedRootNow() {
        guard let request = sharedRoot, !cancelled else { return }
        withCStrings(request.binds) { binds in
            withCStrings(request.devices) { devices in
                // A clone when another thread built it meanwhile: not needed here, and not kept open.
                let clone = silo_sandbox_template_clone(UnsafePointer(OpaquePointer(binds)), UnsafePointer(OpaquePointer(devices)),
                                                        request.initBinary, 1)
                if clone >= 0 { close(clone) }
            }
        }
    }

    private func work() {
        defer { sem_post(gateDone) }
        var net = silo_sandbox_netns_take()
        if net < 0 { net = silo_sandbox_make_netns() }
        if net < 0 {
            let error = errno
            fail(SiloError.system("unshare", errno: error, message: "cannot make the network namespace: \(String(cString: strerror(error))) (errno \(error))"))
            return
        }
        gate.pointee.net_fd = net
        if let makeCgroup {
            while sem_wait(go) != 0 {}
            if cancelled {
                fail(SiloError(.operationCancelled, "the system was not started", field: "sandbox", value: "cgroup"))
                return
            }
            do throws(SiloError) {
                let cgroup = try makeCgroup()
                self.cgroup = cgroup
                let files = try cgroup.openTaskFiles(skippingUnified: false)
                withUnsafeMutableBytes(of: &gate.pointee.task_fds) { raw in
                    let slots = raw.bindMemory(to: Int32.self)
                    for (index, fd) in files.enumerated() {
                        if index < slots.count { slots[index] = fd } else { close(fd) }
                    }
                }
                gate.pointee.task_count = Int32(min(files.count, 16))
            } catch {
                fail(error)
                return
            }
        }
        silo_sandbox_gate_open(gate)
    }

    private func fail(_ error: SiloError) {
        self.error = error
        gate.pointee.error = error.errno ?? EIO
        silo_sandbox_gate_open(gate)
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
