import SiloOperations

/// `state.json`, read and written by hand: byte for byte what JSONEncoder wrote with `.sortedKeys`
/// (compact, `/` escaped), without its cost in a short process. The synthesized Codable
/// conformance stays as the reference the tests compare with.
extension SystemRecord {
    /// Reads a record; keys it does not know are ignored.
    /// - Throws: `invalidJSON` naming the field that is missing, of the wrong type or unknown value.
    init(json text: String) throws(SiloError) {
        let object = try JSONObjectReader(json: text)
        id = try object.required("id")
        owner = try object.optional("owner")
        state = try object.required("state")
        document = try object.required("document")
        initPID = try object.optional("initPID")
        initStartTime = try object.optional("initStartTime")
        exitType = try object.optional("exitType")
        createdAt = try object.required("createdAt")
        shouldTerminateOnLastHandleClosed = try object.required("shouldTerminateOnLastHandleClosed")
        if let items = try object.objects("attachments") {
            var attachments: [Attachment] = []
            for item in items { attachments.append(try Attachment(item)) }
            self.attachments = attachments
        }
        memoryLimit = try object.optional("memoryLimit")
        processorCount = try object.optional("processorCount")
        processorLimit = try object.optional("processorLimit")
        rawLeases = try object.strings("rawLeases")
        cgroupParent = try object.optional("cgroupParent")
    }

    var json: String {
        var object = JSONObjectWriter()
        object.add("id", id)
        object.add("owner", owner)
        object.add("state", state.rawValue)
        object.add("document", document)
        object.add("initPID", initPID)
        object.add("initStartTime", initStartTime)
        object.add("exitType", exitType?.rawValue)
        object.add("createdAt", createdAt)
        object.add("shouldTerminateOnLastHandleClosed", shouldTerminateOnLastHandleClosed)
        object.add("attachments", attachments?.map { $0.writer })
        object.add("cgroupParent", cgroupParent)
        object.add("memoryLimit", memoryLimit)
        object.add("processorCount", processorCount)
        object.add("processorLimit", processorLimit)
        object.add("rawLeases", rawLeases)
        return object.text(.compact)
    }
}

extension Attachment {
    fileprivate init(_ object: JSONObjectReader) throws(SiloError) {
        self.init(lun: try object.required("lun"), devicePath: try object.required("devicePath"),
                  deviceNumber: try object.required("deviceNumber"), mountPath: try object.optional("mountPath"),
                  readOnly: try object.required("readOnly"), location: try object.optional("location"))
    }

    fileprivate var writer: JSONObjectWriter {
        var object = JSONObjectWriter()
        object.add("lun", lun)
        object.add("devicePath", devicePath)
        object.add("deviceNumber", deviceNumber)
        object.add("mountPath", mountPath)
        object.add("readOnly", readOnly)
        object.add("location", location)
        return object
    }
}
