import SiloOperations

/// `drive list --json` and `drive show --json` written by hand: byte for byte what JSONEncoder
/// writes with `[.sortedKeys, .prettyPrinted, .withoutEscapingSlashes]` (the synthesized Codable
/// conformance stays, and the tests compare the two). JSONEncoder's first use cost the listing
/// 0.3-0.4 ms of generic metadata and conformance lookups here.
extension Drive {
    /// One drive as JSON.
    public var json: String { writer.text(.pretty) }

    /// An array of drives as JSON.
    public static func json(_ drives: [Drive]) -> String {
        JSONObjectWriter.text(drives.map(\.writer), .pretty)
    }

    private var writer: JSONObjectWriter {
        var object = JSONObjectWriter()
        object.add("id", id)
        object.add("name", name)
        object.add("devicePath", devicePath)
        object.add("deviceNumber", deviceNumber)
        object.add("size", size)
        object.add("logicalSectorSize", logicalSectorSize)
        object.add("physicalSectorSize", physicalSectorSize)
        object.add("busType", busType)
        object.add("isRotational", isRotational)
        object.add("isRemovable", isRemovable)
        object.add("isReadOnly", isReadOnly)
        object.add("model", model)
        object.add("vendor", vendor)
        object.add("serial", serial)
        object.add("wwn", wwn)
        object.add("partitionTableType", partitionTableType)
        object.add("filesystemType", filesystemType)
        object.add("filesystemUUID", filesystemUUID)
        object.add("filesystemLabel", filesystemLabel)
        object.add("mountPoints", mountPoints)
        object.add("holders", holders)
        object.add("partitions", partitions.map { partition in
            var object = JSONObjectWriter()
            object.add("name", partition.name)
            object.add("devicePath", partition.devicePath)
            object.add("deviceNumber", partition.deviceNumber)
            object.add("number", partition.number)
            object.add("start", partition.start)
            object.add("size", partition.size)
            object.add("partitionType", partition.partitionType)
            object.add("partitionUUID", partition.partitionUUID)
            object.add("partitionLabel", partition.partitionLabel)
            object.add("filesystemType", partition.filesystemType)
            object.add("filesystemUUID", partition.filesystemUUID)
            object.add("filesystemLabel", partition.filesystemLabel)
            object.add("mountPoints", partition.mountPoints)
            return object
        })
        object.add("backingFile", backingFile)
        object.add("pool", pool)
        object.add("pools", pools)
        object.add("extents", extents.map { extent in
            var object = JSONObjectWriter()
            object.add("lun", extent.lun)
            object.add("backingFile", extent.backingFile)
            object.add("allocatedBytes", extent.allocatedBytes)
            return object
        })
        return object
    }
}
