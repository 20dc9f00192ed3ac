import SiloOperations

/// `lun create|show|list|extend|... --json` written by hand: byte for byte what JSONEncoder writes
/// with `[.sortedKeys, .prettyPrinted, .withoutEscapingSlashes]` (the synthesized Codable
/// conformance stays, and the tests compare the two). JSONEncoder's first use in a process scans
/// every protocol conformance in the binary, which integration tests reading `lun create --json`
/// paid on each call.
extension LunProperties {
    /// One LUN as JSON.
    public var json: String { writer.text(.pretty) }

    /// An array of LUNs as JSON.
    public static func json(_ luns: [LunProperties]) -> String {
        JSONObjectWriter.text(luns.map(\.writer), .pretty)
    }

    private var writer: JSONObjectWriter {
        var object = JSONObjectWriter()
        object.add("id", id)
        object.add("name", name)
        object.add("friendlyName", friendlyName)
        object.add("type", type)
        object.add("size", size)
        object.add("allocatedBytes", allocatedBytes)
        object.add("logicalBlockSize", logicalBlockSize)
        object.add("provisioning", provisioning.rawValue)
        object.add("status", status.rawValue)
        object.add("devicePath", devicePath)
        object.add("link", link)
        object.add("backingFile", backingFile)
        object.add("pool", pool)
        object.add("serialNumber", serialNumber)
        object.add("unmaskingList", unmaskingList)
        object.add("readOnly", readOnly)
        object.add("directIO", directIO)
        object.add("createdAt", createdAt)
        return object
    }
}
