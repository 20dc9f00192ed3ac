import SiloOperations

/// A compute system's configuration, from the HCS ComputeSystem document (schema 2.x) [C1].
///
/// A process sandbox applies what it can: the memory limit (`ComputeTopology.Memory.SizeInMB`), the
/// CPU limit (`Processor.Count`, `Limit`, `Weight`), SCSI attachments (LUNs), the owner and
/// `ShouldTerminateOnLastHandleClosed`. Known fields that mean nothing without a VM (`Chipset`,
/// `Memory.Backing`, ...) are accepted and listed in ``ignoredFields``; unknown fields are refused.
public struct ComputeSystemDocument: Sendable, Hashable {
    public enum Kind: String, Sendable, Hashable { case virtualMachine = "VirtualMachine", container = "Container" }

    public var schemaVersion: (major: Int, minor: Int)
    public var owner: String?
    public var kind: Kind
    /// Bytes; nil means no memory limit.
    public var memoryLimit: UInt64?
    /// CPUs the system may use; nil means all.
    public var processorCount: Int?
    /// 1...10000, as HCS `Processor.Weight` (100 = the default share); nil for the default,
    /// which a document's `Weight: 0` also means (HCS's unset value, as hcsshim leaves it out).
    public var processorWeight: Int?
    /// 1...100000, as HCS `Processor.Limit`: the share of `processorCount` CPUs, in hundredths of a percent.
    public var processorLimit: Int?
    public var scsiAttachments: [ScsiAttachment]
    public var shouldTerminateOnLastHandleClosed: Bool
    /// Paths of fields given but not applicable to a process sandbox (C2).
    public var ignoredFields: [String]

    public static func == (lhs: Self, rhs: Self) -> Bool {
        lhs.schemaVersion == rhs.schemaVersion && lhs.owner == rhs.owner && lhs.kind == rhs.kind
            && lhs.memoryLimit == rhs.memoryLimit && lhs.processorCount == rhs.processorCount
            && lhs.processorWeight == rhs.processorWeight && lhs.processorLimit == rhs.processorLimit
            && lhs.scsiAttachments == rhs.scsiAttachments
            && lhs.shouldTerminateOnLastHandleClosed == rhs.shouldTerminateOnLastHandleClosed
            && lhs.ignoredFields == rhs.ignoredFields
    }

    public func hash(into hasher: inout Hasher) {
        hasher.combine(owner)
        hasher.combine(kind)
        hasher.combine(memoryLimit)
    }

    /// A LUN attached on a SCSI controller [HCS Attachment]: `Path` is the LUN's id or name.
    public struct ScsiAttachment: Sendable, Hashable {
        public var controller: String
        public var index: Int
        public var lun: String
        public var readOnly: Bool
        /// Where to mount its file system inside the system (Silo's extension field `MountPath`).
        public var mountPath: String?

        /// Where it sits on the virtual SCSI bus, as a block device's `location`: `controller/index`.
        public var location: String { "\(controller)/\(index)" }

        public init(controller: String, index: Int, lun: String, readOnly: Bool, mountPath: String?) {
            self.controller = controller
            self.index = index
            self.lun = lun
            self.readOnly = readOnly
            self.mountPath = mountPath
        }

        /// Reads an attachment object (in a document's `Devices.Scsi`, or a modify request's `Settings`).
        init(_ attachment: DocumentObject, controller: String, index: Int) throws(SiloError) {
            _ = try attachment.check(applied: ["Type", "Path", "ReadOnly", "MountPath"],
                                     ignored: ["CachingMode", "SupportCompressedVolumes", "AlwaysAllowSparseFiles"])
            let type = try attachment.string("Type") ?? "VirtualDisk"
            guard ["VirtualDisk", "PassThru"].contains(type) else {
                throw SiloError(.invalidJSON, "\(attachment.child("Type")) is '\(type)'; Silo attaches LUNs as VirtualDisk or PassThru",
                                field: attachment.child("Type"), value: type)
            }
            guard let lun = try attachment.string("Path"), !lun.isEmpty else {
                throw SiloError(.invalidJSON, "\(attachment.child("Path")) must name the LUN to attach",
                                field: attachment.child("Path"), value: "")
            }
            let mountPath = try attachment.string("MountPath")
            if let mountPath, let problem = BlockDevice.mountPathProblem(mountPath) {
                throw SiloError(.invalidJSON, "\(attachment.child("MountPath")): \(problem)",
                                field: attachment.child("MountPath"), value: mountPath)
            }
            self.init(controller: controller, index: index, lun: lun, readOnly: try attachment.bool("ReadOnly") ?? false,
                      mountPath: mountPath.map(BlockDevice.canonicalMountPath))
        }
    }

    /// Parses and checks a document.
    /// - Throws: `invalidJSON` naming the line and column of malformed JSON, or the path of an
    ///   unknown or mistyped field; `invalidArgument` for a value out of range.
    public init(json text: String) throws(SiloError) {
        let root = try DocumentObject(try JSONReader.parse(text), path: "")
        var ignored = try root.check(
            applied: ["SchemaVersion", "Owner", "VirtualMachine", "Container", "ShouldTerminateOnLastHandleClosed"],
            ignored: ["HostingSystemId", "HostedSystem"]
        )
        guard let version = try root.object("SchemaVersion") else {
            throw SiloError(.invalidJSON, "SchemaVersion is missing; this is a schema 2.x document", field: "SchemaVersion", value: "")
        }
        _ = try version.check(applied: ["Major", "Minor"], ignored: [])
        let major = Int(try version.integer("Major", in: 0...1000) ?? 0)
        let minor = Int(try version.integer("Minor", in: 0...1000) ?? 0)
        guard major == 2 else {
            throw SiloError(.invalidJSON, "SchemaVersion.Major is \(major); Silo reads schema 2.x",
                            field: "SchemaVersion.Major", value: "\(major)")
        }
        schemaVersion = (major, minor)
        owner = try root.string("Owner")
        shouldTerminateOnLastHandleClosed = try root.bool("ShouldTerminateOnLastHandleClosed") ?? false

        let machine = try root.object("VirtualMachine")
        let container = try root.object("Container")
        switch (machine, container) {
        case (nil, nil), (.some, .some):
            throw SiloError(.invalidJSON, "exactly one of VirtualMachine and Container must be set",
                            field: "VirtualMachine", value: machine == nil ? "neither" : "both")
        case (let machine?, nil):
            kind = .virtualMachine
            ignored += try machine.check(
                applied: ["ComputeTopology", "Devices"],
                ignored: ["Chipset", "StopOnReset", "GuestState", "RestoreState", "RegistryChanges", "SecuritySettings",
                          "GuestConnection", "DebugOptions", "StorageQoS", "Version", "RunInSilo"]
            )
            var topology = Topology()
            if let compute = try machine.object("ComputeTopology") {
                ignored += try compute.check(applied: ["Memory", "Processor"], ignored: ["Numa"])
                topology = try Topology(compute, ignored: &ignored)
            }
            (memoryLimit, processorCount, processorWeight, processorLimit) =
                (topology.memory, topology.count, topology.weight, topology.limit)
            scsiAttachments = try Self.devices(machine, ignored: &ignored)
        case (nil, let container?):
            kind = .container
            ignored += try container.check(
                applied: ["Memory", "Processor"],
                ignored: ["GuestOs", "Storage", "MappedDirectories", "MappedPipes", "Networking", "HvSocket", "ContainerCredentialGuard",
                          "RegistryChanges", "AssignedDevices"]
            )
            let topology = try Topology(container, ignored: &ignored)
            (memoryLimit, processorCount, processorWeight, processorLimit) =
                (topology.memory, topology.count, topology.weight, topology.limit)
            scsiAttachments = []
        }
        ignoredFields = ignored
    }

    private struct Topology {
        var memory: UInt64?
        var count: Int?
        var weight: Int?
        var limit: Int?

        init() {}

        init(_ parent: DocumentObject, ignored: inout [String]) throws(SiloError) {
            if let memoryObject = try parent.object("Memory") {
                ignored += try memoryObject.check(
                    applied: ["SizeInMB"],
                    ignored: ["Backing", "AllowOvercommit", "EnableDeferredCommit", "EnableHotHint", "EnableColdHint",
                              "SharedMemoryMB", "SharedMemoryAccess", "EnableEpf", "HighMmioBaseInMB", "HighMmioGapInMB",
                              "LowMmioGapInMB", "SlitType", "HostingProcessNameSuffix"]
                )
                // At least 4 MiB: a sandbox's init and its page tables need that much.
                memory = try memoryObject.integer("SizeInMB", in: 4...(1 << 40)).map { UInt64($0) << 20 }
            }
            if let processor = try parent.object("Processor") {
                ignored += try processor.check(
                    applied: ["Count", "Weight", "Limit", "Maximum"],
                    ignored: ["ExposeVirtualizationExtensions", "EnableHostTopology", "EnablePerfmonPmu", "EnablePerfmonLbr",
                              "EnablePerfmonPebs", "EnablePerfmonIpt", "SyncDisabled"]
                )
                count = try processor.integer("Count", in: 1...4096).map(Int.init)
                // 0 is HCS's unset value: the default share, not the smallest one.
                weight = try processor.integer("Weight", in: 0...10_000).flatMap { $0 == 0 ? nil : Int($0) }
                // HCS's container form calls the cap Maximum; the VM form Limit. Same unit.
                let cap = try processor.integer("Limit", in: 1...100_000)
                let maximum = try processor.integer("Maximum", in: 1...100_000)
                limit = (cap ?? maximum).map(Int.init)
            }
        }
    }

    private static func devices(_ machine: DocumentObject, ignored: inout [String]) throws(SiloError) -> [ScsiAttachment] {
        guard let devices = try machine.object("Devices") else { return [] }
        ignored += try devices.check(
            applied: ["Scsi"],
            ignored: ["VirtualPMem", "NetworkAdapters", "VideoMonitor", "Keyboard", "Mouse", "HvSocket", "ComPorts",
                      "VirtualSmb", "Plan9", "Battery", "FlexibleIov", "SharedMemory", "VirtioSerial", "EnhancedModeVideo",
                      "GuestCrashReporting", "Licensing", "Ic"]
        )
        guard let scsi = try devices.object("Scsi") else { return [] }
        var attachments: [ScsiAttachment] = []
        for member in scsi.members {
            let controller = try DocumentObject(member.value, path: scsi.child(member.key))
            _ = try controller.check(applied: ["Attachments"], ignored: [])
            guard let slots = try controller.object("Attachments") else { continue }
            for slot in slots.members {
                let attachment = try DocumentObject(slot.value, path: slots.child(slot.key))
                guard let index = Int(slot.key), (0...63).contains(index) else {
                    throw SiloError(.invalidJSON, "\(attachment.path): an attachment's key is its index, 0...63",
                                    field: attachment.path, value: slot.key)
                }
                let made = try ScsiAttachment(attachment, controller: member.key, index: index)
                attachments.append(made)
                let places = attachments.map { (lun: $0.lun, mountPath: $0.mountPath) }
                if let (reason, onMountPath) = BlockDevice.conflict(at: places.count - 1, in: places) {
                    let field = attachment.path + (onMountPath ? ".MountPath" : ".Path")
                    throw SiloError(.invalidJSON, "\(field): \(reason)", field: field, value: onMountPath ? made.mountPath ?? "" : made.lun)
                }
            }
        }
        return attachments.sorted { ($0.controller, $0.index) < ($1.controller, $1.index) }
    }
}
