/// A LUN as queries report it [VDS_LUN_PROP, plus the Linux facts].
public struct LunProperties: Sendable, Hashable, Codable {
    public enum Status: String, Sendable, Codable {
        /// Attached: the block device is there.
        case online
        /// Detached on request; data kept.
        case offline
        /// Should be attached but is not (after a reboot, say): `reenumerate` or `recover` re-attaches.
        case detached
        /// The backing file is gone.
        case missing
        /// Being provisioned by a live process.
        case creating
    }

    public var id: String
    public var name: String
    public var friendlyName: String?
    /// Always `simple`: queries report the concrete type (S3).
    public var type: String
    public var size: UInt64
    /// Bytes the backing file occupies on disk.
    public var allocatedBytes: UInt64
    public var logicalBlockSize: UInt32
    public var provisioning: Provisioning
    public var status: Status
    /// The block device, such as `/dev/loop3`, while online.
    public var devicePath: String?
    /// The stable name, such as `/dev/silo/db1`, linked to `devicePath`.
    public var link: String?
    public var backingFile: String
    public var pool: String
    /// A stable serial for identification data: derived from the id.
    public var serialNumber: String
    public var unmaskingList: String
    public var readOnly: Bool
    /// Whether direct I/O is in effect (while online) or requested (while not).
    public var directIO: Bool
    /// Seconds since 1970.
    public var createdAt: Int64
}
