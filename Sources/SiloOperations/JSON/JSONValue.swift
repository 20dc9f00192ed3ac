/// A JSON value with where it stood in the text, for error messages that point at the line and
/// column and name the field's path (C2), for compute documents and the records Silo keeps on disk.
package indirect enum JSONValue: Sendable {
    case null
    case bool(Bool)
    case number(String)
    case string(String)
    case array([Located])
    /// Members in document order; duplicates are refused by the reader.
    case object([Member])

    package struct Located: Sendable {
        package let value: JSONValue
        package let line: Int
        package let column: Int
    }

    /// A struct, not a `(key:value:)` tuple: the first array of a tuple type in a process costs
    /// the runtime twice the metadata work of an array of a struct (25,000 instructions against
    /// 11,000 here).
    package struct Member: Sendable {
        package let key: String
        package let value: Located
    }
}

extension JSONValue {
    /// A value as an error message shows one it did not expect: null, true, 12, "text" (its first
    /// 40 characters), an array, an object.
    package var brief: String {
        switch self {
        case .null: "null"
        case .bool(let flag): "\(flag)"
        case .number(let text): text
        case .string(let text): "\"\(text.prefix(40))\""
        case .array: "an array"
        case .object: "an object"
        }
    }
}

/// Reads RFC 8259 JSON, keeping line and column of every value.
package struct JSONReader {
    private let bytes: [UInt8]
    private var index = 0
    private var line = 1
    private var lineStart = 0
    /// Nesting deeper than this is refused: a document is small, a stack is not infinite.
    private let maximumDepth = 64

    private init(_ text: String) {
        bytes = Array(text.utf8)
    }

    package static func parse(_ text: String) throws(SiloError) -> JSONValue.Located {
        var reader = JSONReader(text)
        reader.skipSpace()
        let value = try reader.value(depth: 0)
        reader.skipSpace()
        guard reader.index == reader.bytes.count else { throw reader.failure("unexpected text after the document") }
        return value
    }

    private var column: Int { index - lineStart + 1 }

    private func failure(_ message: String) -> SiloError {
        SiloError(.invalidJSON, "invalid JSON at line \(line), column \(column): \(message)",
                  field: "document", value: "line \(line), column \(column)")
    }

    private mutating func skipSpace() {
        while index < bytes.count {
            switch bytes[index] {
            case 0x20, 0x09, 0x0D: index += 1
            case 0x0A:
                index += 1
                line += 1
                lineStart = index
            default: return
            }
        }
    }

    private mutating func value(depth: Int) throws(SiloError) -> JSONValue.Located {
        guard depth < maximumDepth else { throw failure("nested deeper than \(maximumDepth) levels") }
        guard index < bytes.count else { throw failure("the document ends where a value should be") }
        let (startLine, startColumn) = (line, column)
        let value: JSONValue
        switch bytes[index] {
        case UInt8(ascii: "{"): value = try object(depth: depth)
        case UInt8(ascii: "["): value = try array(depth: depth)
        case UInt8(ascii: "\""): value = .string(try string())
        case UInt8(ascii: "t"): try literal("true"); value = .bool(true)
        case UInt8(ascii: "f"): try literal("false"); value = .bool(false)
        case UInt8(ascii: "n"): try literal("null"); value = .null
        case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"): value = .number(try number())
        default: throw failure("unexpected character '\(Character(UnicodeScalar(bytes[index])))'")
        }
        return JSONValue.Located(value: value, line: startLine, column: startColumn)
    }

    private mutating func literal(_ word: String) throws(SiloError) {
        let expected = Array(word.utf8)
        guard bytes.count - index >= expected.count, Array(bytes[index..<index + expected.count]) == expected else {
            throw failure("expected '\(word)'")
        }
        index += expected.count
    }

    private mutating func number() throws(SiloError) -> String {
        let start = index
        if bytes[index] == UInt8(ascii: "-") { index += 1 }
        func digits() -> Int {
            let from = index
            while index < bytes.count, (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(bytes[index]) { index += 1 }
            return index - from
        }
        let integerStart = index
        guard digits() > 0 else { throw failure("a number needs digits") }
        if bytes[integerStart] == UInt8(ascii: "0"), index - integerStart > 1 { throw failure("numbers do not start with 0") }
        if index < bytes.count, bytes[index] == UInt8(ascii: ".") {
            index += 1
            guard digits() > 0 else { throw failure("digits must follow the decimal point") }
        }
        if index < bytes.count, bytes[index] == UInt8(ascii: "e") || bytes[index] == UInt8(ascii: "E") {
            index += 1
            if index < bytes.count, bytes[index] == UInt8(ascii: "+") || bytes[index] == UInt8(ascii: "-") { index += 1 }
            guard digits() > 0 else { throw failure("digits must follow the exponent") }
        }
        return String(decoding: bytes[start..<index], as: UTF8.self)
    }

    private mutating func string() throws(SiloError) -> String {
        index += 1  // opening quote
        // Most strings have no escapes: one String from the bytes between the quotes.
        var end = index
        while end < bytes.count, bytes[end] >= 0x20,
              bytes[end] != UInt8(ascii: "\""), bytes[end] != UInt8(ascii: "\\") {
            end += 1
        }
        if end < bytes.count, bytes[end] == UInt8(ascii: "\"") {
            let text = String(decoding: bytes[index..<end], as: UTF8.self)
            index = end + 1
            return text
        }
        // With escapes: the string's UTF-8 bytes gathered in one buffer and decoded once at the end
        // (appending to a String piece by piece cost a system's record, whose document is a string
        // full of escaped quotes, 0.13M instructions over the five reads of a process start).
        var text: [UInt8] = []
        text.reserveCapacity(end - index + 64)
        while true {
            guard index < bytes.count else { throw failure("the string is not closed") }
            let byte = bytes[index]
            if byte == UInt8(ascii: "\"") {
                index += 1
                return String(decoding: text, as: UTF8.self)
            }
            if byte < 0x20 { throw failure("control character in a string; escape it") }
            guard byte == UInt8(ascii: "\\") else {
                text.append(byte)
                index += 1
                continue
            }
            index += 1
            guard index < bytes.count else { throw failure("the string is not closed") }
            switch bytes[index] {
            case UInt8(ascii: "\""): text.append(UInt8(ascii: "\""))
            case UInt8(ascii: "\\"): text.append(UInt8(ascii: "\\"))
            case UInt8(ascii: "/"): text.append(UInt8(ascii: "/"))
            case UInt8(ascii: "b"): text.append(0x08)
            case UInt8(ascii: "f"): text.append(0x0C)
            case UInt8(ascii: "n"): text.append(0x0A)
            case UInt8(ascii: "r"): text.append(0x0D)
            case UInt8(ascii: "t"): text.append(0x09)
            case UInt8(ascii: "u"):
                var code = try hex4()
                if (0xD800...0xDBFF).contains(code) {
                    guard index + 2 < bytes.count, bytes[index + 1] == UInt8(ascii: "\\"), bytes[index + 2] == UInt8(ascii: "u") else {
                        throw failure("a lone UTF-16 surrogate")
                    }
                    index += 2
                    let low = try hex4()
                    guard (0xDC00...0xDFFF).contains(low) else { throw failure("a lone UTF-16 surrogate") }
                    code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00)
                }
                guard let scalar = UnicodeScalar(code) else { throw failure("not a Unicode scalar: \\u\(String(code, radix: 16))") }
                guard let encoded = UTF8.encode(scalar) else { throw failure("not a Unicode scalar: \\u\(String(code, radix: 16))") }
                text.append(contentsOf: encoded)
            default: throw failure("unknown escape '\\\(Character(UnicodeScalar(bytes[index])))'")
            }
            index += 1
        }
    }

    private mutating func hex4() throws(SiloError) -> UInt32 {
        guard index + 4 < bytes.count else { throw failure("\\u needs four hex digits") }
        var value: UInt32 = 0
        for offset in 1...4 {
            guard let digit = hexDigit(bytes[index + offset]) else { throw failure("\\u needs four hex digits") }
            value = value * 16 + digit
        }
        index += 4
        return value
    }

    private func hexDigit(_ byte: UInt8) -> UInt32? {
        switch byte {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): UInt32(byte - UInt8(ascii: "0"))
        case UInt8(ascii: "a")...UInt8(ascii: "f"): UInt32(byte - UInt8(ascii: "a") + 10)
        case UInt8(ascii: "A")...UInt8(ascii: "F"): UInt32(byte - UInt8(ascii: "A") + 10)
        default: nil
        }
    }

    private mutating func array(depth: Int) throws(SiloError) -> JSONValue {
        index += 1
        var items: [JSONValue.Located] = []
        skipSpace()
        if index < bytes.count, bytes[index] == UInt8(ascii: "]") {
            index += 1
            return .array(items)
        }
        while true {
            skipSpace()
            items.append(try value(depth: depth + 1))
            skipSpace()
            guard index < bytes.count else { throw failure("the array is not closed") }
            if bytes[index] == UInt8(ascii: ",") { index += 1; continue }
            if bytes[index] == UInt8(ascii: "]") { index += 1; return .array(items) }
            throw failure("expected ',' or ']' in an array")
        }
    }

    private mutating func object(depth: Int) throws(SiloError) -> JSONValue {
        index += 1
        var members: [JSONValue.Member] = []
        var keys = Set<String>()  // a list's `contains` made an object of n fields cost n² comparisons
        skipSpace()
        if index < bytes.count, bytes[index] == UInt8(ascii: "}") {
            index += 1
            return .object(members)
        }
        while true {
            skipSpace()
            guard index < bytes.count, bytes[index] == UInt8(ascii: "\"") else { throw failure("expected a field name in quotes") }
            let key = try string()
            guard keys.insert(key).inserted else { throw failure("field '\(key)' appears twice") }
            skipSpace()
            guard index < bytes.count, bytes[index] == UInt8(ascii: ":") else { throw failure("expected ':' after '\(key)'") }
            index += 1
            skipSpace()
            members.append(JSONValue.Member(key: key, value: try value(depth: depth + 1)))
            skipSpace()
            guard index < bytes.count else { throw failure("the object is not closed") }
            if bytes[index] == UInt8(ascii: ",") { index += 1; continue }
            if bytes[index] == UInt8(ascii: "}") { index += 1; return .object(members) }
            throw failure("expected ',' or '}' in an object")
        }
    }
}
