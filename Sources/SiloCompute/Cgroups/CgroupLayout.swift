import CSiloLinux
import Glibc
import SiloOperations

/// Where each cgroup feature lives on this host, detected at run time from /proc/self/mountinfo
/// (C13): pure v2, pure v1, or hybrid (a cgroup2 mount holding some controllers or none, the rest
/// in v1 hierarchies).
public struct CgroupLayout: Sendable, Hashable {
    /// The cgroup2 mount point, if any. Its core files (`cgroup.procs`, `cgroup.freeze`,
    /// `cgroup.kill`) work even when it holds no controller.
    public var unified: String?
    /// Controllers enabled in the cgroup2 mount.
    public var unifiedControllers: Set<String>
    /// v1 hierarchies by controller: `memory` → `/sys/fs/cgroup/memory`.
    public var legacy: [String: String]
    /// Freeze with v1's freezer.state even when cgroup2 can (for tests of the v1 path).
    public var preferLegacyFreezer: Bool
    /// Kill with cgroup2's `cgroup.kill` where the kernel has it (5.14 on); false does as on the
    /// kernels before it (for tests of that path).
    public var usesCgroupKill = true
    /// Where systems' cgroups go in each hierarchy, relative to its root: `silo` by default, or a
    /// subtree the host delegated (`system.slice/ci.service/payloads`), made where missing. The
    /// default one is removed with its last system; a chosen one is never removed.
    public var parent: String

    public static let defaultParent = "silo"

    public init(unified: String?, unifiedControllers: Set<String>, legacy: [String: String], preferLegacyFreezer: Bool = false,
                parent: String = CgroupLayout.defaultParent) {
        self.unified = unified
        self.unifiedControllers = unifiedControllers
        self.legacy = legacy
        self.preferLegacyFreezer = preferLegacyFreezer
        self.parent = parent
    }

    /// A parent is a relative path of plain names: no leading or trailing `/`, no empty, `.` or
    /// `..` component (it must stay inside each hierarchy), no newline or NUL; and not inside the
    /// default parent, whose folders are systems' cgroups (`silo/web` would nest new systems in
    /// system `web`'s, which its terminate kills and removes whole).
    public static func checkParent(_ parent: String) throws(SiloError) {
        if parent == defaultParent { return }  // every system's, on every open: no split
        let components = parent.split(separator: "/", omittingEmptySubsequences: false)
        let bad = parent.isEmpty || parent.utf8.count > 1024 || parent.utf8.contains(UInt8(ascii: "\n"))
            || parent.utf8.contains(0) || components.contains { $0.isEmpty || $0 == "." || $0 == ".." }
        if bad {
            throw SiloError.invalidArgument(field: "cgroup parent", value: parent,
                                            reason: "give a path relative to each cgroup hierarchy's root, such as silo or system.slice/ci.service/payloads")
        }
        if components.count > 1, components[0] == Substring(defaultParent) {
            throw SiloError.invalidArgument(field: "cgroup parent", value: parent,
                                            reason: "the folders in \(defaultParent)/ are systems' cgroups; choose a parent outside it")
        }
    }

    /// The host's layout: the layouts systemd mounts told apart with `statfs` (``standard()``),
    /// anything else read from mountinfo (``fromMountinfo()``).
    public static func detect() -> CgroupLayout {
        standard() ?? fromMountinfo()
    }

    /// The layouts systemd mounts, told apart with a few `statfs` calls instead of reading and
    /// splitting mountinfo (0.08 ms of every compute command and `run` here): cgroup2 on
    /// /sys/fs/cgroup (pure v2), or a tmpfs there with one v1 hierarchy per controller, named after
    /// it or linked to it (`cpu` -> `cpu,cpuacct`), and for hybrid hosts cgroup2 on
    /// /sys/fs/cgroup/unified. Nil for anything else.
    static func standard(base: String = "/sys/fs/cgroup") -> CgroupLayout? {
        let type = silo_fs_type(base)
        if type == cgroup2Magic {
            return CgroupLayout(unified: base, unifiedControllers: unifiedControllers(base), legacy: [:])
        }
        guard type == tmpfsMagic else { return nil }
        var legacy: [String: String] = [:]
        for controller in knownControllers {
            let path = base + "/" + controller
            guard silo_fs_type(path) == cgroupMagic else { continue }
            // The mount point, as mountinfo names it: co-mounted controllers share one directory.
            var target = [CChar](repeating: 0, count: 256)
            let count = readlink(path, &target, target.count - 1)
            if count > 0 {
                let name = String(decoding: target[0..<count].map { UInt8(bitPattern: $0) }, as: UTF8.self)
                legacy[controller] = name.hasPrefix("/") ? name : base + "/" + name
            } else {
                legacy[controller] = path
            }
        }
        guard !legacy.isEmpty else { return nil }
        let hybrid = base + "/unified"
        let unified = silo_fs_type(hybrid) == cgroup2Magic ? hybrid : nil
        return CgroupLayout(unified: unified, unifiedControllers: unified.map(unifiedControllers) ?? [], legacy: legacy)
    }

    private static let cgroup2Magic = 0x6367_7270
    private static let cgroupMagic = 0x27e0eb
    private static let tmpfsMagic = 0x0102_1994

    private static func unifiedControllers(_ mountPoint: String) -> Set<String> {
        Set(readText(mountPoint + "/cgroup.controllers")?.split(separator: " ").map(String.init) ?? [])
    }

    /// The layout mountinfo describes. mountinfo is read as bytes, and only its cgroup lines
    /// become strings: splitting every line as a String took 0.4 ms of each CLI call here.
    /// - Parameter mountinfo: the table's text (this process's /proc/self/mountinfo when nil).
    static func fromMountinfo(_ mountinfo: [UInt8]? = nil) -> CgroupLayout {
        var unified: String?
        var legacy: [String: String] = [:]
        let space = UInt8(ascii: " ")
        let cgroupType = Array(" - cgroup".utf8)
        for line in (mountinfo ?? readFileBytes("/proc/self/mountinfo") ?? []).split(separator: UInt8(ascii: "\n")) {
            // id parent major:minor root mount-point options [optional...] - fstype source super-options
            // Only cgroup lines are split into fields (most lines are not, and splitting each was
            // most of this function's time).
            guard line.withUnsafeBufferPointer({ text in cgroupType.withUnsafeBufferPointer { bytesContain(text, $0) } })
            else { continue }
            let fields = line.split(separator: space)
            guard let dash = fields.firstIndex(where: { $0.elementsEqual([UInt8(ascii: "-")]) }),
                  dash > 4, fields.count > dash + 3
            else { continue }
            let type = fields[dash + 1]
            if type.elementsEqual("cgroup2".utf8) {
                let mountPoint = Paths.unescapedMountPath(String(decoding: fields[4], as: UTF8.self))
                if unified == nil || mountPoint == "/sys/fs/cgroup" { unified = mountPoint }
            } else if type.elementsEqual("cgroup".utf8) {
                let mountPoint = Paths.unescapedMountPath(String(decoding: fields[4], as: UTF8.self))
                for option in fields[dash + 3].split(separator: UInt8(ascii: ",")) {
                    let name = String(decoding: option, as: UTF8.self)
                    if knownControllers.contains(name) { legacy[name] = mountPoint }
                }
            }
        }
        return CgroupLayout(unified: unified, unifiedControllers: unified.map(unifiedControllers) ?? [], legacy: legacy)
    }

    static let knownControllers: Set<String> = ["memory", "cpu", "cpuacct", "pids", "freezer", "devices", "cpuset", "blkio"]

    /// v2 when the controller is enabled there, else the v1 hierarchy, else nil (not available).
    func place(_ controller: String) -> Version? {
        if unifiedControllers.contains(controller) { return .v2 }
        if legacy[controller] != nil { return .v1 }
        return nil
    }

    enum Version: Sendable, Hashable { case v1, v2 }

    /// "v2", "v1", or "hybrid", for properties and messages.
    public var description: String {
        if legacy.isEmpty, unified != nil { return "v2" }
        if unified == nil { return "v1" }
        return "hybrid"
    }
}

func readText(_ path: String) -> String? {
    guard let bytes = readFileBytes(path) else { return nil }
    var text = String(decoding: bytes, as: UTF8.self)
    while text.last?.isWhitespace == true { text.removeLast() }
    return text
}

/// Writes a value to a cgroup file.
/// - Throws: the kernel's refusal, naming the file and the value.
func writeText(_ path: String, _ value: String) throws(SiloError) {
    try writeText(path, [value])
}

/// Each value in a write of its own, through one descriptor: what takes one rule per write (the
/// devices controller's `devices.allow`) without an open and close for each.
func writeText(_ path: String, _ values: [String]) throws(SiloError) {
    let fd = open(path, O_WRONLY | O_CLOEXEC)
    guard fd >= 0 else { throw SiloError.system("open", errno: errno, path: path) }
    defer { close(fd) }
    for value in values {
        var bytes = Array(value.utf8)
        let written = bytes.withUnsafeMutableBytes { write(fd, $0.baseAddress, $0.count) }
        guard written == bytes.count else {
            let error = errno
            throw SiloError.system("write", errno: error, path: path,
                                   message: "writing '\(value)' to \(path) failed: \(String(cString: strerror(error))) (errno \(error))")
        }
    }
}

/// A whole file's bytes; nil when it cannot be read.
func readFileBytes(_ path: String) -> [UInt8]? {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { return nil }
    defer { close(fd) }
    var bytes: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 8192)
    while true {
        let count = read(fd, &buffer, buffer.count)
        if count < 0, errno == EINTR { continue }
        if count <= 0 { break }
        bytes.append(contentsOf: buffer[0..<count])
    }
    return bytes
}
