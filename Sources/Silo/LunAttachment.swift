import SiloCompute
import SiloOperations
import SiloStorage

// Storage and compute never import each other: what joins them, a LUN given to a compute
// system, is resolved here and passed on as plain values (DESIGN.md).
extension StorageProvider {
    /// The block device of LUN `name` for compute system `system` (C12): only if the LUN is online
    /// and unmasked to that system (S11).
    /// - Parameter mountPath: where to mount its file system inside; the file system must exist.
    public func blockDevice(forLun name: String, system: String, mountPath: String? = nil) throws(SiloError) -> BlockDevice {
        let lun = try lun(named: name)
        guard try UnmaskingList.parse(lun.unmaskingList).contains(system: system) else {
            throw SiloError(.accessDenied,
                            "LUN '\(name)' is not unmasked to compute system '\(system)' (its list: '\(lun.unmaskingList)'); "
                                + "add it with 'silo lun mask \(name) \(system)' or '*'",
                            field: "lun", value: name)
        }
        guard let devicePath = lun.devicePath, let number = LoopDevice(number: Int(devicePath.dropFirst(9)) ?? -1).deviceNumber else {
            throw SiloError(.invalidOperation, "LUN '\(name)' is \(lun.status.rawValue), not online; 'silo lun online \(name)' first",
                            field: "lun", value: name)
        }
        var filesystem: String?
        if let mountPath {
            guard mountPath.hasPrefix("/"), !mountPath.split(separator: "/").contains("..") else {
                throw SiloError.invalidArgument(field: "lun", value: "\(name):\(mountPath)", reason: "the mount path must be absolute, without '..'")
            }
            filesystem = try BlockProbe.probe(path: devicePath).filesystemType
            guard filesystem != nil else {
                throw SiloError(.invalidOperation, "LUN '\(name)' has no file system to mount at \(mountPath); make one first (mkfs)",
                                field: "lun", value: name)
            }
        }
        return BlockDevice(devicePath: devicePath, deviceNumber: number, mountPath: mountPath,
                           filesystemType: filesystem, readOnly: lun.readOnly)
    }
}
