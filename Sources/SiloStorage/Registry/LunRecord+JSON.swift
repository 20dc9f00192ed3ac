import SiloOperations

/// The registry's file format, read and written by hand: byte for byte what JSONEncoder wrote with
/// `[.sortedKeys, .prettyPrinted, .withoutEscapingSlashes]` (the synthesized Codable conformance
/// stays as the reference the tests compare with), without its cost in a short process.
extension LunRecord {
    /// Reads a record; keys it does not know are ignored.
    /// - Throws: `invalidJSON` naming the field that is missing, of the wrong type or unknown value.
    init(json text: String) throws(SiloError) {
        try self.init(JSONObjectReader(json: text))
    }

    var json: String { writer.text(.pretty) }

    private init(_ object: JSONObjectReader) throws(SiloError) {
        id = try object.required("id")
        name = try object.required("name")
        friendlyName = try object.optional("friendlyName")
        size = try object.required("size")
        blockSize = try object.required("blockSize")
        provisioning = try object.required("provisioning")
        readOnly = try object.required("readOnly")
        directIO = try object.required("directIO")
        let unmaskingText: String = try object.required("unmasking")
        do {
            unmasking = try UnmaskingList.parse(unmaskingText)
        } catch {
            throw object.invalid("unmasking", "is not an unmasking list: \(error.message)")
        }
        backingFile = try object.required("backingFile")
        pool = try object.required("pool")
        state = try object.required("state")
        online = try object.required("online")
        device = try object.optional("device")
        owner = try object.object("owner").map { (owner) throws(SiloError) in
            Owner(pid: try owner.required("pid"), startTime: try owner.required("startTime"),
                  operation: try owner.required("operation"), pidNamespace: try owner.optional("pidNamespace"),
                  boot: try owner.optional("boot"))
        }
        createdAt = try object.required("createdAt")
    }

    private var writer: JSONObjectWriter {
        var object = JSONObjectWriter()
        object.add("id", id)
        object.add("name", name)
        object.add("friendlyName", friendlyName)
        object.add("size", size)
        object.add("blockSize", blockSize)
        object.add("provisioning", provisioning.rawValue)
        object.add("readOnly", readOnly)
        object.add("directIO", directIO)
        object.add("unmasking", unmasking.description)
        object.add("backingFile", backingFile)
        object.add("pool", pool)
        object.add("state", state.rawValue)
        object.add("online", online)
        object.add("device", device)
        object.add("owner", owner.map { owner in
            var writer = JSONObjectWriter()
            writer.add("pid", owner.pid)
            writer.add("startTime", owner.startTime)
            writer.add("operation", owner.operation)
            writer.add("pidNamespace", owner.pidNamespace)
            writer.add("boot", owner.boot)
            return writer
        })
        object.add("createdAt", createdAt)
        return object
    }
}
