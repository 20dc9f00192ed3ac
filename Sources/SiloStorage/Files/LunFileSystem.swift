import CSiloLinux
import Glibc
import SiloOperations

/// A file system made on a new LUN, the optional step of provisioning (S7): the file system's own
/// `mkfs` run on the LUN's loop device, between the attach and the register. A failed or cancelled
/// `mkfs` rolls the whole create back.
public struct LunFileSystem: Sendable, Hashable {
    public enum Kind: String, Sendable, Hashable, CaseIterable {
        case ext2, ext3, ext4, xfs, btrfs, vfat

        /// The package that installs its `mkfs` on Debian.
        var package: String {
            switch self {
            case .ext2, .ext3, .ext4: "e2fsprogs"
            case .xfs: "xfsprogs"
            case .btrfs: "btrfs-progs"
            case .vfat: "dosfstools"
            }
        }

        /// The longest label the file system keeps, in bytes.
        var labelLimit: Int {
            switch self {
            case .ext2, .ext3, .ext4: 16
            case .xfs: 12
            case .btrfs: 255
            case .vfat: 11
            }
        }

        public static func parse(_ text: String) throws(SiloError) -> Kind {
            guard let kind = Kind(rawValue: text.lowercased()) else {
                throw SiloError.invalidArgument(field: "file system", value: text,
                                                reason: "use " + allCases.map(\.rawValue).joined(separator: ", "))
            }
            return kind
        }
    }

    public var kind: Kind
    /// The file system's label (`blkid`'s LABEL); nil for none.
    public var label: String?

    public init(_ kind: Kind, label: String? = nil) {
        self.kind = kind
        self.label = label
    }

    /// Where `mkfs.<kind>` is installed, if it is.
    var program: String? {
        ["/usr/sbin/", "/sbin/", "/usr/bin/", "/bin/"].lazy.map { $0 + "mkfs." + self.kind.rawValue }
            .first { access($0, X_OK) == 0 }
    }

    /// Checks the label and that the file system's `mkfs` is installed: before anything is made.
    func validate(readOnly: Bool) throws(SiloError) {
        if let label {
            guard !label.isEmpty, label.utf8.count <= kind.labelLimit,
                  label.unicodeScalars.allSatisfy({ $0.value >= 0x20 && $0.value != 0x7f }) else {
                throw SiloError.invalidArgument(field: "label", value: label,
                                                reason: "a label on \(kind.rawValue) has 1 to \(kind.labelLimit) bytes and no control characters")
            }
            // C1 controls, which the check above lets through as Unicode.
            guard !label.unicodeScalars.contains(where: { (0x80...0x9f).contains($0.value) }) else {
                throw SiloError.invalidArgument(field: "label", value: label, reason: "a label has no control characters")
            }
            // mkfs.fat refuses these (a DOS name's), and a character outside ASCII in the C locale
            // it runs in: found here, not after the LUN is made and zeroed.
            if kind == .vfat, let bad = label.unicodeScalars.first(where: { !$0.isASCII || "*?.,;:/\\|+=<>[]\"".unicodeScalars.contains($0) }) {
                throw SiloError.invalidArgument(field: "label", value: label,
                                                reason: "a vfat label takes ASCII letters, digits, spaces and DOS name characters, not '\(Character(bad))'")
            }
        }
        guard !readOnly else {
            throw SiloError.invalidArgument(field: "file system", value: kind.rawValue,
                                            reason: "a read-only LUN's device refuses mkfs's writes; make the LUN writable")
        }
        guard program != nil else {
            throw SiloError(.notSupported, "a \(kind.rawValue) file system needs mkfs.\(kind.rawValue), which is not installed (apt-get install \(kind.package))",
                            field: "file system", value: kind.rawValue)
        }
    }

    /// `mkfs`'s arguments for the device at `path`. No discard: a thin LUN's file is sparse
    /// already, and a thick or zeroed one would lose the space it was given.
    func arguments(program: String, device path: String) -> [String] {
        var arguments = [program]
        switch kind {
        case .ext2, .ext3, .ext4:
            arguments += ["-q", "-F", "-E", "nodiscard"] + (label.map { ["-L", $0] } ?? [])
        case .xfs, .btrfs:
            arguments += ["-q", "-f", "-K"] + (label.map { ["-L", $0] } ?? [])
        case .vfat:
            arguments += ["-I"] + (label.map { ["-n", $0] } ?? [])
        }
        return arguments + [path]
    }

    /// Makes the file system on `device`, whose binding must still carry `tag` (the LUN's own: a
    /// device Silo did not make is never written). `mkfs` writes through a descriptor this call
    /// opened and checked, named `/proc/self/fd/3` in the child, so a node swapped meanwhile
    /// changes nothing; while it is open the device cannot be unbound under it. It runs in a
    /// process group of its own (a terminal's Ctrl-C is the caller's to turn into a cancel), dies
    /// with the thread that waits for it, and a cancel kills it.
    func make(on device: LoopDevice, tag: String, cancelled: () -> Bool) throws(SiloError) {
        guard let program else {
            throw SiloError(.notSupported, "mkfs.\(kind.rawValue) is not installed", field: "file system", value: kind.rawValue)
        }
        // Read-only until the tag says the device is the LUN's: a device that is not was never
        // opened for writing (its close would make udev probe it again). Opened, it stays bound;
        // the writable descriptor is the same device, opened again through this one.
        let checked = try syscall("open", path: device.path) { open(device.path, O_RDONLY | O_CLOEXEC) }
        defer { close(checked) }
        var info = loop_info64()
        guard silo_loop_get_status64(checked, &info) == 0, cName(info.lo_file_name) == tag else {
            throw SiloError(.deviceInUse, "\(device.path) is no longer this LUN's device; no file system was made on it",
                            field: "device", value: device.path)
        }
        let fd = try syscall("open", path: device.path) { open("/proc/self/fd/\(checked)", O_RDWR | O_CLOEXEC) }
        defer { close(fd) }
        var output: [Int32] = [-1, -1]
        guard silo_pipe2(&output, O_CLOEXEC) == 0 else { throw SiloError.system("pipe2", errno: errno) }
        var readEnd = output[0]
        _ = fcntl(readEnd, F_SETFL, O_NONBLOCK)  // this end only: mkfs writes as it always does
        defer { if readEnd >= 0 { close(readEnd) } }
        // Its own process group (a terminal's Ctrl-C is the caller's to turn into a cancel), and
        // killed if the thread waiting for it goes: a silo killed by SIGTERM or SIGKILL leaves no
        // mkfs writing on.
        let arguments = self.arguments(program: program, device: "/proc/self/fd/3")
        let environment = ["PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL=C"]
        let argv = arguments.map { strdup($0) } + [nil]
        let envp = environment.map { strdup($0) } + [nil]
        defer {
            argv.forEach { free($0) }
            envp.forEach { free($0) }
        }
        let pid = silo_spawn_tied(program, argv, envp, [-1, -1, output[1], fd], 4)
        let spawnError = errno
        close(output[1])
        guard pid > 0 else { throw SiloError.system("fork", errno: spawnError, path: program) }
        // Its messages, kept for the error (the first 4 KiB), the pipe drained while it runs.
        var message: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        func drain() {
            while readEnd >= 0 {
                let count = buffer.withUnsafeMutableBytes { read(readEnd, $0.baseAddress, $0.count) }
                if count > 0 {
                    message += buffer[0..<min(count, max(0, 4096 - message.count))]
                } else if count < 0, errno == EINTR {
                    continue
                } else {
                    if count == 0 { close(readEnd); readEnd = -1 }  // its end closed: it exited
                    return
                }
            }
        }
        var status: Int32 = 0
        while true {
            drain()
            let done = waitpid(pid, &status, WNOHANG)
            if done == pid { break }
            if done < 0, errno != EINTR { throw SiloError.system("waitpid", errno: errno) }
            if cancelled() {
                kill(pid, SIGKILL)
                while waitpid(pid, &status, 0) < 0, errno == EINTR {}
                throw SiloError(.operationCancelled, "making the \(kind.rawValue) file system on \(device.path) was cancelled")
            }
            var wait = pollfd(fd: readEnd, events: Int16(POLLIN), revents: 0)
            _ = poll(&wait, readEnd >= 0 ? 1 : 0, 10)
        }
        drain()
        guard status != 0 else { return }
        // Its first lines, on one line, naming the device rather than the child's descriptor; a
        // usage text after them (mkfs.xfs prints one with every refusal) is left out.
        var said = ""
        for line in String(decoding: message, as: UTF8.self).split(whereSeparator: \.isNewline).prefix(4) {
            if line.hasPrefix("Usage:") { break }
            var text = Substring(line)
            while text.first == " " || text.first == "\t" { text = text.dropFirst() }
            while text.last == " " || text.last == "\t" { text = text.dropLast() }
            guard !text.isEmpty else { continue }
            var named = ""
            var rest = text
            while let range = rest.firstRange(of: "/proc/self/fd/3") {
                named += rest[..<range.lowerBound] + device.path
                rest = rest[range.upperBound...]
            }
            said += (said.isEmpty ? "" : "; ") + named + rest
        }
        let how = (status & 0x7f) == 0 ? "exited \((status >> 8) & 0xff)" : "was killed by signal \(status & 0x7f)"
        throw SiloError(.systemCallFailed, "mkfs.\(kind.rawValue) on \(device.path) \(how)" + (said.isEmpty ? "" : ": " + said),
                        field: "file system", value: kind.rawValue)
    }
}
