/// A real block device of the host [VDS drive]. Read-only facts: enumeration never writes.
public struct Drive: Sendable, Hashable, Codable {
    /// Stable across runs: from the WWN or serial where the hardware has them, else from the
    /// device's place (bus and kernel name for virtual devices).
    public var id: String
    /// Kernel name, such as `vda`.
    public var name: String
    public var devicePath: String
    /// `major:minor`.
    public var deviceNumber: String
    public var size: UInt64
    public var logicalSectorSize: UInt32
    public var physicalSectorSize: UInt32
    /// `virtio`, `scsi`, `ata`, `nvme`, `usb`, `mmc`, `loop`, `zram`, `md`, `dm`, or `unknown`.
    public var busType: String
    public var isRotational: Bool
    public var isRemovable: Bool
    public var isReadOnly: Bool
    public var model: String?
    public var vendor: String?
    public var serial: String?
    public var wwn: String?
    public var partitionTableType: String?
    public var filesystemType: String?
    public var filesystemUUID: String?
    public var filesystemLabel: String?
    public var mountPoints: [String]
    public var holders: [String]
    public var partitions: [DrivePartition]
    /// For loop devices that are not Silo's: the file behind them.
    public var backingFile: String?
    /// The directory of the (first) Silo pool on this drive, if any.
    public var pool: String?
    /// The names of the Silo pools on this drive.
    public var pools: [String] = []
    /// Silo LUN backing files using space on this drive.
    public var extents: [DriveExtent]
}

/// A partition of a drive: the kernel's partition device, or, where the kernel made none (a loop
/// device bound without partition scanning, a kernel built without that table type's parser), the
/// entry libblkid reads in the drive's partition table.
public struct DrivePartition: Sendable, Hashable, Codable {
    /// The kernel's name (`vda1`, `loop0p2`); for a table entry without a device, the name the
    /// kernel gives such a partition.
    public var name: String
    /// Nil where the kernel made no device for it.
    public var devicePath: String?
    /// `major:minor`; nil where the kernel made no device for it.
    public var deviceNumber: String?
    public var number: Int
    /// Bytes from the start of the drive.
    public var start: UInt64
    public var size: UInt64
    /// The table's type for it: `0x83` in a DOS table, a type GUID in a GPT (libblkid's).
    public var partitionType: String?
    /// The GPT's partition GUID, or a DOS table's `<disk id>-<number>` (PARTUUID).
    public var partitionUUID: String?
    /// The GPT's name for it (PARTLABEL).
    public var partitionLabel: String?
    public var filesystemType: String?
    public var filesystemUUID: String?
    public var filesystemLabel: String?
    public var mountPoints: [String]
}

/// Space a LUN's backing file takes on a drive.
public struct DriveExtent: Sendable, Hashable, Codable {
    public var lun: String
    public var backingFile: String
    /// Bytes allocated on disk.
    public var allocatedBytes: UInt64
}
