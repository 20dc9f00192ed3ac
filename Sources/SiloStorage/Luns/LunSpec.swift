import SiloOperations

/// What to create [IVdsSubSystem::CreateLun's arguments and VDS_HINTS].
public struct LunSpec: Sendable, Hashable {
    public var name: String
    /// Bytes; rounded up to a multiple of the logical block size (S4).
    public var size: UInt64
    public var type: LunType
    public var provisioning: Provisioning
    /// Drive ids whose pool holds the backing file (the first that has one); empty means the
    /// default pool, or `pool`.
    public var drives: [String]
    /// A pool by name (`silo pool list`); nil: by `drives`, else the default pool.
    public var pool: String?
    public var unmasking: UnmaskingList
    /// 512 or 4096.
    public var logicalBlockSize: UInt32
    /// Open the backing file with O_DIRECT (on by default: twice the random-read IOPS and no
    /// double caching); buffered where the file system refuses it.
    public var directIO: Bool
    public var readOnly: Bool
    public var friendlyName: String?
    /// A file system to make on it before it counts as created (S7's optional step); nil for none.
    public var fileSystem: LunFileSystem?

    public init(
        name: String,
        size: UInt64,
        type: LunType = .default,
        provisioning: Provisioning = .thin,
        drives: [String] = [],
        unmasking: UnmaskingList = .nobody,
        logicalBlockSize: UInt32 = 512,
        directIO: Bool = true,
        readOnly: Bool = false,
        friendlyName: String? = nil,
        pool: String? = nil,
        fileSystem: LunFileSystem? = nil
    ) {
        self.pool = pool
        self.fileSystem = fileSystem
        self.name = name
        self.size = size
        self.type = type
        self.provisioning = provisioning
        self.drives = drives
        self.unmasking = unmasking
        self.logicalBlockSize = logicalBlockSize
        self.directIO = directIO
        self.readOnly = readOnly
        self.friendlyName = friendlyName
    }

    /// The size the LUN will have: rounded up to the block size.
    public var roundedSize: UInt64 {
        let block = UInt64(logicalBlockSize)
        return size.isMultiple(of: block) ? size : (size / block + 1) * block
    }

    func validate() throws(SiloError) {
        try Names.validate(name, field: "name", what: "a LUN name")
        try type.checkSupported()
        guard logicalBlockSize == 512 || logicalBlockSize == 4096 else {
            throw SiloError.invalidArgument(field: "block size", value: "\(logicalBlockSize)", reason: "use 512 or 4096")
        }
        guard size > 0 else {
            throw SiloError.invalidArgument(field: "size", value: "\(size)", reason: "must be greater than zero")
        }
        guard size <= ByteCount.maximum - UInt64(logicalBlockSize) else {
            throw SiloError.invalidArgument(field: "size", value: "\(size)", reason: "larger than the 8 EiB a file can hold")
        }
        if let friendlyName, friendlyName.utf8.count > 256 {
            throw SiloError.invalidArgument(field: "friendly name", value: String(friendlyName.prefix(40)) + "...", reason: "at most 256 bytes")
        }
        if drives.contains(where: { $0.isEmpty }) {
            throw SiloError.missingArgument(field: "drive", reason: "give a drive's id, name or path ('silo drive list' shows them)")
        }
        try fileSystem?.validate(readOnly: readOnly)
    }
}
