import SiloOperations

/// A change to a running system [HCS ModifySettingRequest] (C12): a LUN attached or removed at a
/// SCSI location, or a new memory or processor limit.
///
/// ```json
/// {"ResourcePath": "VirtualMachine/Devices/Scsi/0/Attachments/1", "RequestType": "Add",
///  "Settings": {"Type": "VirtualDisk", "Path": "data", "MountPath": "/data"}}
/// {"ResourcePath": "VirtualMachine/Devices/Scsi/0/Attachments/1", "RequestType": "Remove"}
/// {"ResourcePath": "VirtualMachine/ComputeTopology/Memory/SizeInMB", "RequestType": "Update", "Settings": 2048}
/// ```
/// `Container/...` paths work as the `VirtualMachine/...` ones; processor paths are
/// `.../Processor/Count` and `.../Processor/Weight`.
public struct ModifyRequest: Sendable, Hashable {
    public enum Change: Sendable, Hashable {
        case attach(ComputeSystemDocument.ScsiAttachment)
        case detach(controller: String, index: Int)
        case memory(megabytes: Int)
        case processorCount(Int)
        case processorWeight(Int)
        /// HCS `Processor.Limit`, 1...100000: the share of the `Count` CPUs, in hundredths of a percent.
        case processorLimit(Int)
    }

    public var change: Change

    public init(change: Change) { self.change = change }

    /// The same bounds a JSON request is held to, for a change made in Swift: a value out of them
    /// would trap or wrap where it is turned into bytes or CPUs.
    /// - Throws: `invalidArgument` naming `Settings` (or `ResourcePath` for an index).
    public func validate() throws(SiloError) {
        func check(_ value: Int, _ range: ClosedRange<Int>, _ what: String) throws(SiloError) {
            guard range.contains(value) else {
                throw SiloError.invalidArgument(field: "Settings", value: "\(value)", reason: "\(what) is \(range.lowerBound)...\(range.upperBound)")
            }
        }
        switch change {
        case .attach(let attachment):
            guard (0...63).contains(attachment.index) else {
                throw SiloError.invalidArgument(field: "ResourcePath", value: "\(attachment.index)", reason: "an attachment index is 0...63")
            }
        case .detach(_, let index):
            guard (0...63).contains(index) else {
                throw SiloError.invalidArgument(field: "ResourcePath", value: "\(index)", reason: "an attachment index is 0...63")
            }
        case .memory(let megabytes): try check(megabytes, 4...(1 << 30), "SizeInMB")
        case .processorCount(let count): try check(count, 1...1024, "Processor Count")
        case .processorWeight(let weight): try check(weight, 1...10_000, "Processor Weight")
        case .processorLimit(let limit): try check(limit, 1...100_000, "Processor Limit")
        }
    }

    public init(json text: String) throws(SiloError) {
        let root = try DocumentObject(try JSONReader.parse(text), path: "")
        _ = try root.check(applied: ["ResourcePath", "RequestType", "Settings"], ignored: ["GuestRequest"])
        guard let path = try root.string("ResourcePath"), !path.isEmpty else {
            throw SiloError(.invalidJSON, "ResourcePath names what to change, such as VirtualMachine/Devices/Scsi/0/Attachments/1",
                            field: "ResourcePath", value: "")
        }
        let type = try root.string("RequestType") ?? "Update"
        var parts = path.split(separator: "/").map(String.init)
        guard let first = parts.first, first == "VirtualMachine" || first == "Container" else {
            throw Self.unknownPath(path)
        }
        parts.removeFirst()
        switch (parts.count, parts.first, type) {
        case (5, "Devices", "Add") where parts[1] == "Scsi" && parts[3] == "Attachments",
             (5, "Devices", "Remove") where parts[1] == "Scsi" && parts[3] == "Attachments":
            guard let index = Int(parts[4]), (0...63).contains(index) else {
                throw SiloError(.invalidJSON, "ResourcePath's attachment index is 0...63", field: "ResourcePath", value: path)
            }
            if type == "Remove" {
                change = .detach(controller: parts[2], index: index)
                return
            }
            guard let settings = try root.object("Settings") else {
                throw SiloError(.invalidJSON, "an Add needs Settings: the attachment, with the LUN as Path", field: "Settings", value: "")
            }
            // The attachment is read as it would be in a ComputeSystem document, so the same rules hold.
            change = .attach(try ComputeSystemDocument.ScsiAttachment(settings, controller: parts[2], index: index))
        case (3, "ComputeTopology", "Update") where parts[1] == "Memory" && parts[2] == "SizeInMB",
             (2, "Memory", "Update") where parts[1] == "SizeInMB":
            guard let megabytes = try root.integer("Settings", in: 4...(1 << 30)) else {
                throw SiloError(.invalidJSON, "Settings is the new SizeInMB (at least 4)", field: "Settings", value: "")
            }
            change = .memory(megabytes: Int(megabytes))
        case (3, "ComputeTopology", "Update") where parts[1] == "Processor",
             (2, "Processor", "Update"):
            let key = parts.last ?? ""
            guard key == "Count" || key == "Weight" || key == "Limit" else { throw Self.unknownPath(path) }
            // Weight 0 is HCS's unset value, as in a document: the default share, 100.
            let range: ClosedRange<Int64> = key == "Count" ? 1...1024 : key == "Weight" ? 0...10_000 : 1...100_000
            guard let value = try root.integer("Settings", in: range) else {
                throw SiloError(.invalidJSON, "Settings is the new Processor \(key)", field: "Settings", value: "")
            }
            switch key {
            case "Count": change = .processorCount(Int(value))
            case "Weight": change = .processorWeight(value == 0 ? 100 : Int(value))
            default: change = .processorLimit(Int(value))
            }
        default:
            guard ["Add", "Remove", "Update"].contains(type) else {
                throw SiloError(.invalidJSON, "RequestType is Add, Remove or Update", field: "RequestType", value: type)
            }
            throw Self.unknownPath(path, type)
        }
    }

    private static func unknownPath(_ path: String, _ type: String? = nil) -> SiloError {
        SiloError(.invalidJSON,
                  "ResourcePath '\(path)'\(type.map { " with RequestType \($0)" } ?? "") is not something Silo changes; use "
                      + "VirtualMachine/Devices/Scsi/<controller>/Attachments/<index> (Add, Remove), "
                      + "VirtualMachine/ComputeTopology/Memory/SizeInMB or .../Processor/Count|Weight|Limit (Update)",
                  field: "ResourcePath", value: path)
    }
}
