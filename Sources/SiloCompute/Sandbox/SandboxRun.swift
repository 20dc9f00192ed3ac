import CSiloLinux
import Glibc
import SiloOperations

/// Where compute systems keep their runtime state: `/run/silo` by default, or `<state>/run` for
/// another state directory, so two test runs never see each other's systems.
public struct ComputeConfiguration: Sendable {
    public var runtimeDirectory: String
    public var layout: CgroupLayout
    /// Silo's init on the host: the one given, else looked for when asked (`SILO_INIT`, beside
    /// this executable, the install locations), by the calls that start an init only: a process
    /// create or a query has no use for it.
    public var initBinary: String {
        get { chosenInit ?? Self.foundInit }
        set { chosenInit = newValue }
    }
    private var chosenInit: String?
    /// Refuses a configuration whose runtime folder is the host's `/run` itself, as the root folder
    /// as state directory gives (storage refuses that state directory too): its systems would be
    /// made, and swept by reenumerate, in `/run/systems`. Called before a call makes anything.
    public func checkStateDirectory() throws(SiloError) {
        // Plain comparisons: this runs in every `silo run` (a normalization walked generic code).
        guard runtimeDirectory == "//run" || runtimeDirectory == "/run" || runtimeDirectory == "/run/" else { return }
        throw SiloError.invalidArgument(field: "state directory", value: "/",
                                        reason: "the root folder cannot be a state directory (its systems' runtime folder would be the host's /run); "
                                            + "give a folder of its own, such as /var/lib/silo")
    }
    /// Where this process found init, when first asked.
    private static let foundInit = findInit()
    /// The Swift runtime's folder when this process links it dynamically; bound read-only into
    /// systems for an init linked the same way. (Package.swift links silo-init static and without
    /// the runtime; this is for one built otherwise.) Nil for static builds. Read from
    /// /proc/self/maps once, by the first call that starts an init.
    public var swiftRuntimeDirectory: String? { Self.swiftRuntime }

    /// What the mapped runtime is does not change while this process runs; reading and splitting
    /// the maps took 0.15 ms of every start.
    private static let swiftRuntime = dynamicSwiftRuntime()

    /// - Parameter cgroupParent: where new systems' cgroups go in each hierarchy (see
    ///   ``CgroupLayout/parent``); else `SILO_CGROUP_PARENT`, else the layout's (`silo`). A system
    ///   keeps the parent it was created under, in its record, whatever later calls are given.
    public init(stateDirectory: String? = nil, runtimeDirectory: String? = nil, initBinary: String? = nil,
                layout: CgroupLayout = .detect(), cgroupParent: String? = nil) {
        let environment = getenv("SILO_STATE_DIR").map { String(cString: $0) }.flatMap { $0.isEmpty ? nil : $0 }
        // Read as storage reads it: absolute, and the default state directory's systems in /run/silo.
        let state = (stateDirectory ?? environment).map(Paths.normalized)
        self.runtimeDirectory = runtimeDirectory ?? state.flatMap { $0 == Paths.defaultStateDirectory ? nil : $0 + "/run" } ?? "/run/silo"
        self.chosenInit = initBinary
        self.layout = layout
        let parentFromEnvironment = getenv("SILO_CGROUP_PARENT").map { String(cString: $0) }.flatMap { $0.isEmpty ? nil : $0 }
        if let parent = cgroupParent ?? parentFromEnvironment { self.layout.parent = parent }
    }

    /// The cgroup of system `id`, under `parent` (a system's record keeps the one it was created
    /// under; nil: the default), not under whatever this configuration would give a new system.
    func cgroup(of id: String, parent: String?) -> Cgroup {
        var layout = self.layout
        layout.parent = parent ?? CgroupLayout.defaultParent
        return Cgroup.open(name: cgroupName(for: id), layout: layout)
    }

    /// What a new system's record keeps as its cgroup parent: nil for the default.
    var recordedCgroupParent: String? { layout.parent == CgroupLayout.defaultParent ? nil : layout.parent }

    /// The folder of the libswiftCore.so this process has mapped, if any: the object that holds
    /// the runtime's swift_retain, asked of the dynamic loader (reading /proc/self/maps took
    /// 0.13 ms of each `silo run`). A static build does not export it, and has nothing to bind.
    static func dynamicSwiftRuntime() -> String? {
        guard let symbol = dlsym(nil, "swift_retain"), let name = silo_object_path(symbol) else { return nil }
        let path = String(cString: name)
        guard path.hasSuffix("/libswiftCore.so"), let slash = path.lastIndex(of: "/") else { return nil }
        return String(path[..<slash])
    }

    /// The cgroup of system `id` (`silo/<name>` in each hierarchy): the id itself for the default
    /// runtime folder, else the id and a hash of the folder (`web.3f2a9c01`). Cgroups are the
    /// host's, not a state directory's: two services (two test runs) with their own state
    /// directories may each have a system `web`, and neither may take or remove the other's.
    public func cgroupName(for id: String) -> String {
        guard runtimeDirectory != "/run/silo" else { return id }
        return id + "." + Paths.shortHash(runtimeDirectory)
    }

    /// Refuses, before anything is made, when init is not an executable file at `initBinary`: the
    /// sandbox's bind of it would fail later with only "No such file or directory".
    func checkInit() throws(SiloError) {
        var info = stat()
        let problem = stat(initBinary, &info) != 0 ? "is not at"
            : info.st_mode & S_IFMT != S_IFREG ? "is not a file at"
            : access(initBinary, X_OK) != 0 ? "is not executable at" : nil
        if let problem {
            throw SiloError(.objectNotFound, "Silo's init \(problem) \(initBinary); set SILO_INIT", field: "init", value: initBinary)
        }
    }

    /// `SILO_INIT`, else beside the running executable, else the install locations.
    static func findInit() -> String {
        if let path = getenv("SILO_INIT").map({ String(cString: $0) }), !path.isEmpty { return path }
        var buffer = [CChar](repeating: 0, count: 4096)
        let count = readlink("/proc/self/exe", &buffer, buffer.count - 1)
        if count > 0 {
            let exe = String(decoding: buffer[0..<count].map { UInt8(bitPattern: $0) }, as: UTF8.self)
            let beside = String(exe[..<(exe.lastIndex(of: "/") ?? exe.endIndex)]) + "/silo-init"
            if access(beside, X_OK) == 0 { return beside }
        }
        for path in ["/usr/local/libexec/silo/silo-init", "/usr/libexec/silo/silo-init"] where access(path, X_OK) == 0 {
            return path
        }
        return "/usr/local/libexec/silo/silo-init"
    }
}

/// Runs one command in a fresh compute system and removes the system when it ends: what
/// `silo run` does. The command is the payload of Silo's init (pid 1).
public enum SandboxRun {
    /// - Returns: the command's exit code (128 + signal when a signal ended it; 137 after an OOM kill).
    /// - Throws: bad ids, an id in use (`systemAlreadyExists`), a setup step the kernel refused.
    public static func run(
        id: String,
        limits: CgroupLimits,
        arguments: [String],
        blockDevices: [BlockDevice] = [],
        configuration: ComputeConfiguration = ComputeConfiguration()
    ) throws(SiloError) -> Int32 {
        try validateID(id)
        try configuration.checkStateDirectory()
        try configuration.checkInit()
        let systems = configuration.runtimeDirectory + "/systems"
        let reservation = systems + "/" + id
        var limits = limits
        limits.blockDevices += blockDevices.compactMap(\.grant)
        let layout = configuration.layout
        let cgroupName = configuration.cgroupName(for: id)
        // Nothing pauses a run or asks for its statistics: only the cgroup hierarchies that enforce.
        let makeCgroup: @Sendable () throws(SiloError) -> Cgroup = { [limits] () throws(SiloError) -> Cgroup in
            try Cgroup.create(name: cgroupName, limits: limits, layout: layout, enforcingOnly: true)
        }
        // The other thread starts on the network namespace (and then, where the layout allows,
        // the cgroup) now, while this one reserves the id; the cgroup waits for the reservation.
        let helper = SandboxHelper(layout: layout, makeCgroup: makeCgroup)
        // It takes the network namespace made ahead of time by the previous run of this process,
        // if any; from the second run of a process on (one that runs more than one, such as a
        // service), it makes one for the next after the child has started (joined only once this
        // run ends). A process that runs one (silo run) makes nothing ahead.
        let later = silo_sandbox_count_start() > 0
        helper?.makesSpareNetwork = later
        helper?.start()
        defer { helper?.finish() }
        // The run's lock, taken before its reservation exists and held until it ends:
        // `ComputeService.reenumerate` removes what a run whose runner died left (its reservation and
        // cgroup) only when it can take this lock. mkdir -p only when the state folder is new.
        let lockPath = Self.runLock(systems: systems, id: id)
        // Made here (O_EXCL), or left by a run whose runner died (reenumerate's to clean up).
        func openLock() -> (fd: Int32, made: Bool) {
            let fd = open(lockPath, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
            if fd >= 0 || errno != EEXIST { return (fd, fd >= 0) }
            return (open(lockPath, O_RDWR | O_CLOEXEC), false)
        }
        var (lock, madeLock) = openLock()
        if lock < 0, errno == ENOENT {
            var path = ""
            for component in systems.split(separator: "/") {
                path += "/" + String(component)
                if mkdir(path, 0o755) != 0, errno != EEXIST { throw SiloError.system("mkdir", errno: errno, path: path) }
            }
            (lock, madeLock) = openLock()
        }
        guard lock >= 0 else { throw SiloError.system("open", errno: errno, path: lockPath) }
        defer { close(lock) }
        guard flock(lock, LOCK_EX | LOCK_NB) == 0 else {
            throw SiloError(.systemAlreadyExists, "a compute system with id '\(id)' already exists", field: "id", value: id)
        }
        // A lock that was there, and is free: its runner died (a `timeout` or a SIGTERM killed
        // silo run). What it left goes first, as reenumerate would take it: its cgroup, under the
        // parent its lock names, and its reservation (a file: a system's folder is no run's), or
        // this run's id would stay taken until a reenumerate.
        if !madeLock {
            // Not when the id is a compute system's now (its folder): the cgroup of that name is
            // the system's, and its destroy would kill it. The dead run's lock stays for
            // reenumerate, which leaves such an id alone too.
            var info = stat()
            if lstat(reservation, &info) == 0, info.st_mode & S_IFMT == S_IFDIR {
                throw SiloError(.systemAlreadyExists, "a compute system with id '\(id)' already exists", field: "id", value: id)
            }
            try? configuration.cgroup(of: id, parent: Self.cgroupParent(writtenIn: lock)).destroy()
            if lstat(reservation, &info) == 0, info.st_mode & S_IFMT == S_IFREG { unlink(reservation) }
        }
        // The lock file names the run's cgroup parent when it is not the default, for a
        // reenumerate after a killed runner (which may be given another parent). One left by a
        // dead runner is emptied first; a new one with the default parent costs nothing more.
        if !madeLock { _ = ftruncate(lock, 0) }
        if layout.parent != CgroupLayout.defaultParent {
            let text = Array(layout.parent.utf8)
            guard pwrite(lock, text, text.count, 0) == text.count else {
                let error = SiloError.system("write", errno: errno, path: lockPath)
                if madeLock { unlink(lockPath) }
                throw error
            }
        }
        // An empty file by the system's name reserves its id: a system's folder (ComputeService's
        // mkdir) and this file exclude each other, and `ids()` lists both. A file, not a folder:
        // removing a folder frees its block, and on a disk file system mounted with discard rmdir
        // waits for that discard (0.25 to 2 ms here); an empty file has no block to free.
        guard mknod(reservation, S_IFREG | 0o600, 0) == 0 else {
            let error = errno
            if madeLock { unlink(lockPath) }  // the id is someone else's: leave no trace of this attempt
            if error == EEXIST {
                throw SiloError(.systemAlreadyExists, "a compute system with id '\(id)' already exists", field: "id", value: id)
            }
            throw SiloError.system("mknod", errno: error, path: reservation)
        }
        defer {
            unlink(reservation)
            unlink(lockPath)  // before the lock is let go (the defer above runs after this one)
        }
        // The child mounts the system's root on the systems folder, in its own mount namespace
        // only: every run can use the one folder, and none has a folder to make and remove.
        var spec = SandboxSpec(root: systems, hostname: id, arguments: ["/.silo/init", "--"] + arguments,
                               initBinary: configuration.initBinary)
        if let runtime = configuration.swiftRuntimeDirectory { spec.readOnlyBinds.append(runtime) }
        spec.blockDevices = blockDevices
        spec.dieWithCaller = true  // this thread waits for it below; if the runner is killed, so is the system
        // Nothing attaches to a run later: its root can be a clone of the one it shares with the
        // other runs of this process (read-only), made by the second.
        spec.sharedRoot = later
        // The cgroup is made on the other thread while the child builds its mounts, where the layout allows.
        let (process, cgroup) = try Sandbox.spawn(spec, helper: helper, makingCgroup: makeCgroup)
        var status: Int32 = 0
        while waitpid(process.pid, &status, 0) < 0, errno == EINTR {}
        close(process.pidfd)
        // Init is reaped, and its pid namespace, its only processes, ended with it.
        try? cgroup.remove()
        return (status & 0x7f) == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
    }

    /// `<systems>/.<id>.run`: held by a running `run` (hidden from `ids()` by its dot).
    static func runLock(systems: String, id: String) -> String { systems + "/." + id + ".run" }

    /// The cgroup parent a run's lock or a create's names (nil: none, the default).
    static func cgroupParent(writtenIn lock: Int32) -> String? {
        var named = [UInt8](repeating: 0, count: 1100)
        let count = lock >= 0 ? pread(lock, &named, named.count, 0) : 0
        return count > 0 ? String(decoding: named[0..<count], as: UTF8.self) : nil
    }

    /// System ids: 1 to 64 of letters, digits, '.', '_', '-', starting with a letter or digit.
    public static func validateID(_ id: String) throws(SiloError) {
        guard !id.isEmpty, id.utf8.count <= 64, let first = id.unicodeScalars.first,
              first.properties.isAlphabetic || ("0"..."9").contains(first),
              id.unicodeScalars.allSatisfy({ $0.isASCII && ($0.properties.isAlphabetic || ("0"..."9").contains($0) || "._-".unicodeScalars.contains($0)) })
        else {
            throw SiloError.invalidArgument(field: "id", value: id,
                                            reason: "a system id has 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit")
        }
    }
}
