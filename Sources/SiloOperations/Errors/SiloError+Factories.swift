// Named factories keep call sites readable and every message in one voice:
// what is wrong, with the field and the value, then what to do when there is something to do.
extension SiloError {
    /// An argument the caller gave is malformed or out of range.
    public static func invalidArgument(field: String, value: String, reason: String) -> SiloError {
        SiloError(.invalidArgument, "invalid \(field) '\(value)': \(reason)", field: field, value: value)
    }

    /// A required argument is missing or empty.
    public static func missingArgument(field: String, reason: String) -> SiloError {
        SiloError(.invalidArgument, "missing \(field): \(reason)", field: field, value: "")
    }

    /// A request the provider cannot carry out, with the reason.
    public static func notSupported(field: String, value: String, reason: String) -> SiloError {
        SiloError(.notSupported, "\(field) '\(value)' is not supported: \(reason)", field: field, value: value)
    }

    /// No object of that kind has that id or name.
    public static func notFound(_ kind: String, field: String = "id", value: String) -> SiloError {
        SiloError(.objectNotFound, "no \(kind) with \(field) '\(value)'", field: field, value: value)
    }

    /// The kernel refused a system call.
    public static func system(_ syscall: String, errno: Int32, path: String? = nil, message: String? = nil) -> SiloError {
        // The errno values are Linux's; SiloOperations stays free of Glibc.
        let code: Code = switch errno {
        case 1, 13: .accessDenied  // EPERM, EACCES
        case 12: .outOfMemory  // ENOMEM
        case 28, 122: .notEnoughSpace  // ENOSPC, EDQUOT
        default: .systemCallFailed
        }
        let target = path.map { " on \($0)" } ?? ""
        let reason = errnoDescriptions[errno].map { ": \($0)" } ?? ""
        let text = message ?? "\(syscall)\(target) failed\(reason) (errno \(errno))"
        return SiloError(code, text, field: path == nil ? nil : "path", value: path, syscall: syscall, errno: errno)
    }

    static func cancelled(_ operation: OperationID, _ type: OperationType) -> SiloError {
        SiloError(.operationCancelled, "operation \(operation) (\(type)) was cancelled", field: "operation", value: "\(operation)")
    }

    static func tooLate(_ operation: OperationID, _ type: OperationType, reason: String) -> SiloError {
        SiloError(.cancelTooLate, "operation \(operation) (\(type)) cannot be cancelled: \(reason)", field: "operation", value: "\(operation)")
    }

    static func timedOut(_ operation: OperationID, _ type: OperationType, after timeout: Duration) -> SiloError {
        SiloError(
            .operationTimeout,
            "operation \(operation) (\(type)) did not complete within \(timeout); it is still running",
            field: "timeout",
            value: "\(timeout)"
        )
    }
}

/// What the common errno values mean, in strerror's words (Linux's numbers; SiloOperations stays
/// free of Glibc): "failed: No such file or directory (errno 2)" says what "errno 2" does not.
let errnoDescriptions: [Int32: String] = [
    1: "Operation not permitted", 2: "No such file or directory", 3: "No such process", 4: "Interrupted system call",
    5: "Input/output error", 6: "No such device or address", 9: "Bad file descriptor", 11: "Resource temporarily unavailable",
    12: "Cannot allocate memory", 13: "Permission denied", 16: "Device or resource busy", 17: "File exists",
    18: "Invalid cross-device link", 19: "No such device", 20: "Not a directory", 21: "Is a directory",
    22: "Invalid argument", 23: "Too many open files in system", 24: "Too many open files", 25: "Inappropriate ioctl for device",
    26: "Text file busy", 27: "File too large", 28: "No space left on device", 30: "Read-only file system",
    36: "File name too long", 38: "Function not implemented", 39: "Directory not empty", 40: "Too many levels of symbolic links",
    95: "Operation not supported", 110: "Connection timed out", 111: "Connection refused", 122: "Disk quota exceeded",
]
