import CSiloLinux
import Glibc
import SiloOperations

/// A block device for one scope of an integration test: a sparse file attached to an autoclear
/// loop device, the file unnamed from the start (`O_TMPFILE`). Nothing outlives the scope, and
/// nothing outlives the process either: if it is killed, the kernel closes its descriptor, the
/// device detaches itself, and the unnamed file's space is freed. No registry record is made.
public struct TemporaryLun: Sendable {
    /// The block device, such as `/dev/loop5`.
    public let devicePath: String
    public let size: UInt64
    public let logicalBlockSize: UInt32
    let device: LoopDevice
    /// The open descriptor that keeps the autoclear device bound.
    let holder: Int32

    /// The descriptor that keeps the device bound (close-on-exec): a child given it keeps the
    /// device as long as it, or anything it starts, holds it open.
    public var descriptor: Int32 { holder }
}

/// Runs `body` with a fresh LUN of `size` bytes, gone when `body` returns or throws.
///
/// ```swift
/// try withTemporaryLun(size: 64 << 20) { lun in
///     try run("mkfs.ext4", lun.devicePath)
/// }
/// ```
public func withTemporaryLun<Result>(
    size: UInt64,
    logicalBlockSize: UInt32 = 512,
    directory: String = "/var/tmp",
    _ body: (TemporaryLun) throws -> Result
) throws -> Result {
    let lun = try TemporaryLun.make(size: size, logicalBlockSize: logicalBlockSize, directory: directory)
    defer { lun.release() }
    return try body(lun)
}

/// The async form of ``withTemporaryLun(size:logicalBlockSize:directory:_:)``.
public func withTemporaryLun<Result>(
    size: UInt64,
    logicalBlockSize: UInt32 = 512,
    directory: String = "/var/tmp",
    _ body: (TemporaryLun) async throws -> Result
) async throws -> Result {
    let lun = try TemporaryLun.make(size: size, logicalBlockSize: logicalBlockSize, directory: directory)
    defer { lun.release() }
    return try await body(lun)
}

extension TemporaryLun {
    static func make(size: UInt64, logicalBlockSize: UInt32, directory: String) throws(SiloError) -> TemporaryLun {
        let spec = LunSpec(name: "temporary", size: size, logicalBlockSize: logicalBlockSize)
        try spec.validate()
        // O_TMPFILE: the file never has a name, so no moment exists in which a killed process
        // could leave it behind; its space goes with the device.
        var fd = open(directory, silo_O_TMPFILE | O_RDWR | O_CLOEXEC | silo_O_DIRECT, 0o600)
        if fd < 0, errno == EINVAL {
            fd = open(directory, silo_O_TMPFILE | O_RDWR | O_CLOEXEC, 0o600)  // no O_DIRECT here
        }
        if fd < 0 {
            let number = errno
            var error = SiloError.system("open(O_TMPFILE)", errno: number, path: directory, message: number == EOPNOTSUPP
                ? "the file system of \(directory) cannot make unnamed files (O_TMPFILE); choose a folder on ext4, XFS, btrfs or tmpfs"
                : nil)
            error.field = "directory"
            throw error
        }
        defer { close(fd) }
        try syscall("ftruncate", path: directory) { ftruncate(fd, off_t(spec.roundedSize)) }
        let options = LoopDevice.Options(logicalBlockSize: logicalBlockSize, autoclear: true, tag: "silo-temporary", syncFirst: true)
        let attachment = try LoopDevice.attach(backingDescriptor: fd, name: directory + "/(unnamed)", options: options)
        guard let holder = attachment.holder else {
            preconditionFailure("an autoclear attach returns its open descriptor")
        }
        return TemporaryLun(
            devicePath: attachment.device.path, size: spec.roundedSize, logicalBlockSize: logicalBlockSize,
            device: attachment.device, holder: holder
        )
    }

    /// Closing the last descriptor detaches the autoclear device.
    func release() {
        close(holder)
    }
}
