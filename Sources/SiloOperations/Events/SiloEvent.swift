/// An event delivered to the handler of an ``EventChannel`` [HCS_EVENT].
public struct SiloEvent: Sendable {
    public var type: SiloEventType
    /// The event's JSON document, as `HCS_EVENT.EventData`; nil for `operationCompleted`.
    public var data: String?
    /// The completed operation, for `operationCompleted` [HCS_EVENT.Operation].
    public var operation: (any AnySiloOperation)?

    public init(type: SiloEventType, data: String? = nil, operation: (any AnySiloOperation)? = nil) {
        self.type = type
        self.data = data
        self.operation = operation
    }
}

/// The kind of an event [HCS_EVENT_TYPE]. Producers may add their own.
public struct SiloEventType: RawRepresentable, Hashable, Sendable, Codable, CustomStringConvertible,
    ExpressibleByStringLiteral
{
    public let rawValue: String
    public init(rawValue: String) { self.rawValue = rawValue }
    public init(stringLiteral value: String) { self.rawValue = value }
    public var description: String { rawValue }

    /// An operation of the handle's object completed without a callback of its own
    /// [HcsEventOperationCallback]; `operation` carries it.
    public static let operationCompleted: Self = "operationCompleted"
    /// The compute system stopped [HcsEventSystemExited].
    public static let systemExited: Self = "systemExited"
    /// A process in the system exited [HcsEventProcessExited].
    public static let processExited: Self = "processExited"
    /// A process was killed for exceeding the memory limit.
    public static let outOfMemory: Self = "outOfMemory"
    /// The connection to the system's agent was lost [HcsEventServiceDisconnect].
    public static let serviceDisconnect: Self = "serviceDisconnect"
}

/// Options for ``EventChannel/setHandler(options:model:_:)`` [HCS_EVENT_OPTIONS].
public struct EventOptions: OptionSet, Sendable, Hashable {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }

    /// Route the completion of this object's operations that have no callback of their own to the
    /// handler, as `operationCompleted` events; calls that bring a callback are then refused with
    /// `operationSystemCallbackAlreadySet` [HcsEventOptionEnableOperationCallbacks].
    public static let operationCallbacks = EventOptions(rawValue: 1 << 0)
}
