extension SiloError {
    /// Stable error codes. The raw value is the original API's HRESULT, so result documents compare
    /// with those of VDS and HCS; ``hresult`` gives it as the signed 32-bit number they print.
    public enum Code: UInt32, Sendable, Hashable, CaseIterable, CustomStringConvertible {
        // Generic COM codes.
        /// `E_INVALIDARG`: an argument is malformed or out of range.
        case invalidArgument = 0x8007_0057
        /// `E_ACCESSDENIED`: the kernel refused for lack of privilege (`EPERM`, `EACCES`).
        case accessDenied = 0x8007_0005
        /// `E_OUTOFMEMORY`.
        case outOfMemory = 0x8007_000E
        /// `E_FAIL`: a system call failed for a reason no other code names; see `syscall` and `errno`.
        case systemCallFailed = 0x8000_4005
        /// `E_UNEXPECTED`: Silo broke one of its own invariants.
        case unexpected = 0x8000_FFFF

        // Windows Web Services async model.
        /// `WS_E_QUOTA_EXCEEDED`: the scheduler's queue of pending operations is full.
        case tooManyOperations = 0x803D_0008
        /// `WS_E_OPERATION_ABANDONED`: the producer dropped an operation without completing it.
        case operationAbandoned = 0x803D_0007

        // Virtual Disk Service.
        /// `VDS_E_NOT_SUPPORTED`.
        case notSupported = 0x8004_2400
        /// `VDS_E_ANOTHER_CALL_IN_PROGRESS`.
        case anotherCallInProgress = 0x8004_2404
        /// `VDS_E_OBJECT_NOT_FOUND`.
        case objectNotFound = 0x8004_2405
        /// `VDS_E_OPERATION_DENIED`.
        case operationDenied = 0x8004_240A
        /// `VDS_E_OBJECT_DELETED`.
        case objectDeleted = 0x8004_240B
        /// `VDS_E_CANCEL_TOO_LATE`: the operation passed its point of no return.
        case cancelTooLate = 0x8004_240C
        /// `VDS_E_OPERATION_CANCELED`.
        case operationCancelled = 0x8004_240D
        /// `VDS_E_CANNOT_EXTEND`.
        case cannotExtend = 0x8004_240E
        /// `VDS_E_NOT_ENOUGH_SPACE`.
        case notEnoughSpace = 0x8004_240F
        /// `VDS_E_NOT_ENOUGH_DRIVE`.
        case notEnoughDrive = 0x8004_2410
        /// `VDS_E_DEVICE_IN_USE`.
        case deviceInUse = 0x8004_2413
        /// `VDS_E_INVALID_OPERATION`.
        case invalidOperation = 0x8004_2415
        /// `VDS_E_SHRINK_OVER_DATA`.
        case shrinkOverData = 0x8004_2816
        /// `VDS_E_INVALID_SHRINK_SIZE`.
        case invalidShrinkSize = 0x8004_2817

        // Host Compute Service.
        /// `HCS_E_TERMINATED_DURING_START`.
        case terminatedDuringStart = 0x8037_0100
        /// `HCS_E_INVALID_STATE`.
        case invalidState = 0x8037_0105
        /// `HCS_E_UNEXPECTED_EXIT`.
        case unexpectedExit = 0x8037_0106
        /// `HCS_E_TERMINATED`.
        case terminated = 0x8037_0107
        /// `HCS_E_CONNECT_FAILED`.
        case connectFailed = 0x8037_0108
        /// `HCS_E_CONNECTION_CLOSED`.
        case connectionClosed = 0x8037_010A
        /// `HCS_E_UNKNOWN_MESSAGE`.
        case unknownMessage = 0x8037_010B
        /// `HCS_E_UNSUPPORTED_PROTOCOL_VERSION`.
        case unsupportedProtocolVersion = 0x8037_010C
        /// `HCS_E_INVALID_JSON`.
        case invalidJSON = 0x8037_010D
        /// `HCS_E_SYSTEM_NOT_FOUND`.
        case systemNotFound = 0x8037_010E
        /// `HCS_E_SYSTEM_ALREADY_EXISTS`.
        case systemAlreadyExists = 0x8037_010F
        /// `HCS_E_SYSTEM_ALREADY_STOPPED`.
        case systemAlreadyStopped = 0x8037_0110
        /// `HCS_E_PROTOCOL_ERROR`.
        case protocolError = 0x8037_0111
        /// `HCS_E_OPERATION_NOT_STARTED`.
        case operationNotStarted = 0x8037_0115
        /// `HCS_E_OPERATION_PENDING`: the result was asked for before the operation completed.
        case operationPending = 0x8037_0117
        /// `HCS_E_OPERATION_TIMEOUT`: a wait ran out; the operation itself goes on.
        case operationTimeout = 0x8037_0118
        /// `HCS_E_OPERATION_SYSTEM_CALLBACK_ALREADY_SET`.
        case operationSystemCallbackAlreadySet = 0x8037_0119
        /// `HCS_E_PROCESS_INFO_NOT_AVAILABLE`.
        case processInfoNotAvailable = 0x8037_011D
        /// `HCS_E_PROCESS_ALREADY_STOPPED`.
        case processAlreadyStopped = 0x8037_011F
        /// `HCS_E_SYSTEM_NOT_CONFIGURED_FOR_OPERATION`.
        case systemNotConfiguredForOperation = 0x8037_0120
        /// `HCS_E_OPERATION_ALREADY_CANCELLED`.
        case operationAlreadyCancelled = 0x8037_0121

        /// The code as the signed 32-bit HRESULT that HCS result documents carry in `Error`.
        public var hresult: Int32 { Int32(bitPattern: rawValue) }

        /// Finds the code for an HRESULT, as read back from a result document.
        public init?(hresult: Int32) {
            self.init(rawValue: UInt32(bitPattern: hresult))
        }

        public var description: String {
            "\(name) (0x\(String(rawValue, radix: 16, uppercase: true)))"
        }

        /// The case name, such as `operationCancelled`; stable, used in JSON and CLI output.
        public var name: String {
            switch self {
            case .invalidArgument: "invalidArgument"
            case .accessDenied: "accessDenied"
            case .outOfMemory: "outOfMemory"
            case .systemCallFailed: "systemCallFailed"
            case .unexpected: "unexpected"
            case .tooManyOperations: "tooManyOperations"
            case .operationAbandoned: "operationAbandoned"
            case .notSupported: "notSupported"
            case .anotherCallInProgress: "anotherCallInProgress"
            case .objectNotFound: "objectNotFound"
            case .operationDenied: "operationDenied"
            case .objectDeleted: "objectDeleted"
            case .cancelTooLate: "cancelTooLate"
            case .operationCancelled: "operationCancelled"
            case .cannotExtend: "cannotExtend"
            case .notEnoughSpace: "notEnoughSpace"
            case .notEnoughDrive: "notEnoughDrive"
            case .deviceInUse: "deviceInUse"
            case .invalidOperation: "invalidOperation"
            case .shrinkOverData: "shrinkOverData"
            case .invalidShrinkSize: "invalidShrinkSize"
            case .terminatedDuringStart: "terminatedDuringStart"
            case .invalidState: "invalidState"
            case .unexpectedExit: "unexpectedExit"
            case .terminated: "terminated"
            case .connectFailed: "connectFailed"
            case .connectionClosed: "connectionClosed"
            case .unknownMessage: "unknownMessage"
            case .unsupportedProtocolVersion: "unsupportedProtocolVersion"
            case .invalidJSON: "invalidJSON"
            case .systemNotFound: "systemNotFound"
            case .systemAlreadyExists: "systemAlreadyExists"
            case .systemAlreadyStopped: "systemAlreadyStopped"
            case .protocolError: "protocolError"
            case .operationNotStarted: "operationNotStarted"
            case .operationPending: "operationPending"
            case .operationTimeout: "operationTimeout"
            case .operationSystemCallbackAlreadySet: "operationSystemCallbackAlreadySet"
            case .processInfoNotAvailable: "processInfoNotAvailable"
            case .processAlreadyStopped: "processAlreadyStopped"
            case .systemNotConfiguredForOperation: "systemNotConfiguredForOperation"
            case .operationAlreadyCancelled: "operationAlreadyCancelled"
            }
        }
    }
}
