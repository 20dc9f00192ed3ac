/// The one error Silo throws.
///
/// Every failure carries a stable ``code`` whose raw value is the original HRESULT (VDS_E_*, HCS_E_*,
/// E_*), a message a person can act on that names the field and the value at fault, and, when the
/// kernel refused, the system call and its `errno`.
///
/// A failed operation's result document is the HCS ResultError form; see ``resultDocument``.
public struct SiloError: Error, Sendable, Hashable, CustomStringConvertible {
    public var code: Code
    public var message: String
    /// The argument, document path (`VirtualMachine.ComputeTopology.Memory.SizeInMB`) or CLI option at fault.
    public var field: String?
    /// The rejected value, as the caller wrote it.
    public var value: String?
    /// The system call that failed, such as `LOOP_CONFIGURE` or `clone3`.
    public var syscall: String?
    /// The `errno` the kernel returned with ``syscall``.
    public var errno: Int32?
    /// Further detail: causes, failed rollbacks. Appears as `ErrorEvents` in the result document.
    public var events: [ErrorEvent]

    public init(
        _ code: Code,
        _ message: String,
        field: String? = nil,
        value: String? = nil,
        syscall: String? = nil,
        errno: Int32? = nil,
        events: [ErrorEvent] = []
    ) {
        self.code = code
        self.message = message
        self.field = field
        self.value = value
        self.syscall = syscall
        self.errno = errno
        self.events = events
    }

    public var description: String { message }

    /// One entry of `ErrorEvents` [HCS schema ErrorEvent].
    public struct ErrorEvent: Sendable, Hashable, Codable {
        public var message: String
        public var source: String?

        public init(message: String, source: String? = nil) {
            self.message = message
            self.source = source
        }

        enum CodingKeys: String, CodingKey {
            case message = "Message"
            case source = "Source"
        }
    }
}

extension SiloError {
    /// Returns a copy with one more event attached.
    public func adding(_ event: ErrorEvent) -> SiloError {
        var copy = self
        copy.events.append(event)
        return copy
    }
}

extension SiloError {
    /// Any error as a `SiloError`: itself when it is one, otherwise `unexpected` with its description.
    /// Producers' closures throw untyped errors; this is where they become Silo's.
    public init(_ error: any Error) {
        if let error = error as? SiloError {
            self = error
        } else {
            self.init(.unexpected, "unexpected error: \(error)", events: [ErrorEvent(message: "\(error)", source: "\(type(of: error))")])
        }
    }
}
