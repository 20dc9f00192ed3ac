/// What an operation does, as `HcsGetOperationType` and VDS's `VDS_ASYNC_OUTPUT_TYPE` tell it.
///
/// The catalogue below is the one all of Silo uses; a producer may add its own with
/// `OperationType("name")`.
public struct OperationType: RawRepresentable, Hashable, Sendable, Codable, CustomStringConvertible,
    ExpressibleByStringLiteral
{
    public let rawValue: String

    public init(rawValue: String) { self.rawValue = rawValue }
    public init(_ rawValue: String) { self.rawValue = rawValue }
    public init(stringLiteral value: String) { self.rawValue = value }

    public var description: String { rawValue }

    // Storage [VDS_ASYNC_OUTPUT_TYPE].
    public static let createLun: Self = "createLun"
    public static let extendLun: Self = "extendLun"
    public static let shrinkLun: Self = "shrinkLun"
    public static let recoverLun: Self = "recoverLun"
    public static let deleteLun: Self = "deleteLun"
    public static let cloneLun: Self = "cloneLun"
    public static let reenumerate: Self = "reenumerate"

    // Compute [HCS_OPERATION_TYPE].
    public static let createComputeSystem: Self = "createComputeSystem"
    public static let start: Self = "start"
    public static let shutdown: Self = "shutdown"
    public static let pause: Self = "pause"
    public static let resume: Self = "resume"
    public static let terminate: Self = "terminate"
    public static let modify: Self = "modify"
    public static let getProperties: Self = "getProperties"
    public static let enumerate: Self = "enumerate"
    public static let createProcess: Self = "createProcess"
    public static let signalProcess: Self = "signalProcess"
    public static let getProcessInfo: Self = "getProcessInfo"
    public static let getProcessProperties: Self = "getProcessProperties"
    public static let modifyProcess: Self = "modifyProcess"
}

/// A process-unique operation id, increasing from 1 [HcsGetOperationId].
public struct OperationID: RawRepresentable, Hashable, Comparable, Sendable, Codable, CustomStringConvertible {
    public let rawValue: UInt64
    public init(rawValue: UInt64) { self.rawValue = rawValue }
    public var description: String { "#\(rawValue)" }
    public static func < (lhs: Self, rhs: Self) -> Bool { lhs.rawValue < rhs.rawValue }
}
