import SiloCompute
import SiloOperations
import SiloStorage

// Storage and compute never import each other: what joins them, a LUN given to a compute
// system, is resolved here and passed on as plain values (DESIGN.md).
extension StorageProvider {
    /// The file systems Silo mounts into systems.
    /// (Not btrfs: a mount's device number is its subvolume's, so a detach could not tell its mount.)
    public static let mountableFilesystems: Set<String> = ["ext2", "ext3", "ext4", "xfs"]

    /// The block device of LUN `name` for compute system `system` (C12): only if the LUN is online
    /// and unmasked to that system (S11).
    /// - Parameter mountPath: where to mount its file system inside; the file system must exist.
    public func blockDevice(forLun name: String, system: String, mountPath: String? = nil, readOnly: Bool = false) throws(SiloError) -> BlockDevice {
        let lun = try lun(named: name)
        try Self.checkUnmasked(lun, to: system)
        guard let devicePath = lun.devicePath, let number = LoopDevice(path: devicePath)?.deviceNumber else {
            throw SiloError(.invalidOperation, "LUN '\(name)' is \(lun.status.rawValue), not online; 'silo lun online \(name)' first",
                            field: "lun", value: name)
        }
        var filesystem: String?
        let mountPath = mountPath.map(BlockDevice.canonicalMountPath)
        if let mountPath {
            if let problem = BlockDevice.mountPathProblem(mountPath) {
                throw SiloError.invalidArgument(field: "lun", value: "\(name):\(mountPath)", reason: problem)
            }
            let probe = try BlockProbe.probe(path: devicePath)
            filesystem = probe.filesystemType
            if probe.ambiguous {
                // Not "make one": what is there may be data that could not be read or told apart.
                throw SiloError(.invalidOperation, "LUN '\(name)' could not be read as one file system (libblkid found more than one "
                                + "signature, or could not read it); nothing is mounted", field: "lun", value: name)
            }
            guard let type = filesystem else {
                throw SiloError(.invalidOperation, "LUN '\(name)' has no file system to mount at \(mountPath); make one first (mkfs)",
                                field: "lun", value: name)
            }
            // The host's kernel mounts what a system may have written on its raw device: only the
            // well-trodden file systems, not any driver the kernel would load for a crafted image.
            guard Self.mountableFilesystems.contains(type) else {
                throw SiloError(.invalidOperation,
                                "LUN '\(name)' holds a \(type) file system; Silo mounts only \(Self.mountableFilesystems.sorted().joined(separator: ", ")) "
                                    + "into systems (attach it without a mount path to use it as a raw device)",
                                field: "lun", value: name)
            }
        }
        return BlockDevice(devicePath: devicePath, deviceNumber: number, mountPath: mountPath,
                           filesystemType: filesystem, readOnly: lun.readOnly || readOnly, lun: name)
    }

    /// Resolves LUN `name` for `system` (as ``blockDevice(forLun:system:mountPath:readOnly:)``) and
    /// leases it to the system: the device carries the lease's descriptor; keep the lease until the
    /// call that gets the device returned (the system's agent holds its own copy after that).
    ///
    /// A system given the raw device (no mount path) holds its lease until it stops, even past a
    /// detach: Linux revokes no open descriptor, and one a process inside opened meanwhile (or
    /// passed over a socket) still reads and writes. So a LUN is not mounted anywhere while a
    /// system holds it raw, and not given raw and writable to a system while it is mounted (by a
    /// system, or on the host): a write under a mounted file system changes what the host's kernel
    /// parses, and a crafted image is a way into the kernel.
    /// - Throws: `deviceInUse` for those two cases, naming the holder.
    ///
    /// The lease is taken first and the device resolved under it: a delete or an offline that
    /// checked for leases before would otherwise unbind the device between the two, and the
    /// system be given its number, by then another LUN's or nobody's.
    public func leasedBlockDevice(forLun name: String, system: String, mountPath: String? = nil,
                                  readOnly: Bool = false) throws(SiloError) -> (BlockDevice, LunLease) {
        let lun: LunProperties
        do throws(SiloError) {
            lun = try self.lun(named: name)
        } catch {
            var named = error
            if named.field == "name" { named.field = "lun" }  // the attachment's field: the caller names it
            throw named
        }
        // Checked before the lease too (and again under it, by blockDevice): a system the LUN is
        // not unmasked to takes no lease, which would block a delete meanwhile.
        try Self.checkUnmasked(lun, to: system)
        let raw = mountPath == nil
        let writable = !(lun.readOnly || readOnly)
        let holder = "compute system '\(system)'" + (raw ? Self.rawLeaseSuffix : "")
        let lease = try lease(name, holder: holder, id: lun.id) { (holders) throws(SiloError) in
            if !raw, let rawHolder = holders.first(where: { $0.hasSuffix(Self.rawLeaseSuffix) }) {
                throw SiloError(.deviceInUse,
                                "LUN '\(name)' cannot be mounted while \(rawHolder.dropLast(Self.rawLeaseSuffix.count)) has its raw device "
                                    + "(held until that system stops: a process inside may still have it open, and could write under the mount)",
                                field: "lun", value: name)
            }
            if raw, writable {
                // (A clone reading the LUN is no mount: writes during a copy are the caller's to avoid.)
                if let mounted = holders.first(where: { !$0.hasSuffix(Self.rawLeaseSuffix) && !Self.isCloneHolder($0) }) {
                    throw SiloError(.deviceInUse,
                                    "LUN '\(name)' is mounted in \(mounted): its raw device is not given for writing meanwhile "
                                        + "(attach it read-only, or detach it there first)",
                                    field: "lun", value: name)
                }
                if let use = try deviceUse(ofLun: name) {
                    throw SiloError(.deviceInUse, "LUN '\(name)' is \(use) on the host: its raw device is not given for writing meanwhile",
                                    field: "lun", value: name)
                }
            }
        }
        // Under the lease the LUN keeps its device (a delete or offline refuses it from here on).
        do throws(SiloError) {
            var device = try blockDevice(forLun: name, system: system, mountPath: mountPath, readOnly: readOnly)
            device.leaseDescriptor = lease.descriptor
            return (device, lease)
        } catch {
            lease.release()
            throw error
        }
    }

    static func checkUnmasked(_ lun: LunProperties, to system: String) throws(SiloError) {
        let list = try UnmaskingList.parse(lun.unmaskingList)
        guard list.contains(system: system) else {
            // `lun mask` replaces the list: the command given keeps the systems already on it.
            let kept = if case .systems(let ids) = list { ids + [system] } else { [system] }
            throw SiloError(.accessDenied,
                            "LUN '\(lun.name)' is not unmasked to compute system '\(system)' (its list: '\(lun.unmaskingList)'); "
                                + "add it with 'silo lun mask \(lun.name) \(kept.joinedPlainly(","))' or '*'",
                            field: "lun", value: lun.name)
        }
    }

    /// What a raw holder's lease name ends with: "compute system 'web' (raw)".
    static let rawLeaseSuffix = " (raw)"
}

extension ComputeSystem {
    /// Starts the system with the LUNs its document attaches (`Devices.Scsi`, each attachment's
    /// `Path` a LUN name, `MountPath` where to mount it): each must be online and unmasked to this
    /// system (C12, S11). While the system runs, storage refuses to delete them (S10).
    public func start(storage: StorageProvider, context: (any Sendable)? = nil,
                      callback: OperationCallback<Void>? = nil) throws(SiloError) -> SiloOperation<Void> {
        let document = try document()
        var leases: [LunLease] = []
        defer { leases.forEach { $0.release() } }
        let devices = try document.scsiAttachments.map { (attachment) throws(SiloError) -> BlockDevice in
            var (device, lease) = try storage.leasedBlockDevice(forLun: attachment.lun, system: id, mountPath: attachment.mountPath,
                                                                readOnly: attachment.readOnly)
            device.location = attachment.location
            leases.append(lease)
            return device
        }
        return try start(blockDevices: devices, context: context, callback: callback)
    }

    /// Attaches LUN `name` to the running system [HcsModifyComputeSystem, Add] (C12): it appears in
    /// /dev and, given `mountPath`, its file system is mounted there.
    public func attachLun(_ name: String, mountPath: String? = nil, readOnly: Bool = false, location: String? = nil, storage: StorageProvider,
                          context: (any Sendable)? = nil, callback: OperationCallback<Void>? = nil) throws(SiloError) -> SiloOperation<Void> {
        // Said before storage's checks, which would name this system's own hold on it.
        try checkAttachable(lun: name, mountPath: mountPath)
        var (device, lease) = try storage.leasedBlockDevice(forLun: name, system: id, mountPath: mountPath, readOnly: readOnly)
        device.location = location
        defer { lease.release() }
        return try attach(device, context: context, callback: callback)
    }

    /// Applies a ModifySettingRequest [HcsModifyComputeSystem], resolving an Add's LUN through
    /// `storage` (it must be unmasked to this system).
    public func modify(_ request: ModifyRequest, storage: StorageProvider, context: (any Sendable)? = nil,
                       callback: OperationCallback<Void>? = nil) throws(SiloError) -> SiloOperation<Void> {
        guard case .attach(let attachment) = request.change else { return try modify(request, context: context, callback: callback) }
        try request.validate()
        if try properties().attachments.contains(where: { $0.location == attachment.location }) {
            throw SiloError.invalidArgument(field: "ResourcePath", value: attachment.location,
                                            reason: "a LUN is attached there already")
        }
        return try attachLun(attachment.lun, mountPath: attachment.mountPath, readOnly: attachment.readOnly,
                             location: attachment.location, storage: storage,
                             context: context, callback: callback)
    }
}
