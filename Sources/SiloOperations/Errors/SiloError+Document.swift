import FoundationEssentials

extension SiloError {
    /// The HCS ResultError document: `{"Error": <int32>, "ErrorMessage": "...", "ErrorEvents": [...]}`.
    ///
    /// Silo adds the fields it knows (`Field`, `Value`, `Syscall`, `Errno`, `Code`) beside them;
    /// readers that know only the HCS form ignore those.
    public var resultDocument: String {
        let document = ResultErrorDocument(self)
        return (try? JSONCoding.encodeString(document)) ?? #"{"Error":\#(code.hresult)}"#
    }

    /// Reads a ResultError document back; the inverse of ``resultDocument``.
    public init(resultDocument text: String) throws(SiloError) {
        let document: ResultErrorDocument
        do {
            document = try JSONDecoder().decode(ResultErrorDocument.self, from: Data(text.utf8))
        } catch {
            throw SiloError(.invalidJSON, "result document is not a ResultError: \(error)", field: "resultDocument", value: text)
        }
        guard let code = Code(hresult: document.error) else {
            throw SiloError.invalidArgument(field: "Error", value: "\(document.error)", reason: "not a code Silo knows")
        }
        self.init(
            code,
            document.errorMessage,
            field: document.field,
            value: document.value,
            syscall: document.syscall,
            errno: document.errno,
            events: document.errorEvents
        )
    }
}

struct ResultErrorDocument: Codable {
    var error: Int32
    var errorMessage: String
    var errorEvents: [SiloError.ErrorEvent]
    var code: String?
    var field: String?
    var value: String?
    var syscall: String?
    var errno: Int32?

    init(_ error: SiloError) {
        self.error = error.code.hresult
        self.errorMessage = error.message
        self.errorEvents = error.events
        self.code = error.code.name
        self.field = error.field
        self.value = error.value
        self.syscall = error.syscall
        self.errno = error.errno
    }

    enum CodingKeys: String, CodingKey {
        case error = "Error"
        case errorMessage = "ErrorMessage"
        case errorEvents = "ErrorEvents"
        case code = "Code"
        case field = "Field"
        case value = "Value"
        case syscall = "Syscall"
        case errno = "Errno"
    }
}

enum JSONCoding {
    static func encodeString(_ value: some Encodable) throws -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return String(decoding: try encoder.encode(value), as: UTF8.self)
    }
}
