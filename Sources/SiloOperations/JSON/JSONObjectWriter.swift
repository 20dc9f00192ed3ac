/// Builds the JSON text of one object as Foundation's JSONEncoder writes it with `.sortedKeys`:
/// keys in order, absent optionals left out, strings escaped as it escapes them.
///
/// Hand-written for the records every CLI call reads and writes: JSONEncoder's first use in a
/// process costs about 0.5M instructions of generic metadata and conformance lookups, most of a
/// short `silo` call's own work.
package struct JSONObjectWriter: Sendable {
    package enum Style: Sendable {
        /// JSONEncoder's `[.sortedKeys, .prettyPrinted, .withoutEscapingSlashes]`: two-space
        /// indent, `"key" : value`, `/` as is.
        case pretty
        /// JSONEncoder's `[.sortedKeys]`: no white space, `/` written `\/`.
        case compact
    }

    private indirect enum Value: Sendable {
        /// A number, `true` or `false`, written as is.
        case literal(String)
        case string(String)
        case object(JSONObjectWriter)
        case objects([JSONObjectWriter])
        case strings([String])
    }

    private struct Member: Sendable {
        let key: String
        let value: Value
    }

    private var members: [Member] = []

    package init() {}

    package mutating func add(_ key: String, _ value: String?) {
        if let value { members.append(Member(key: key, value: .string(value))) }
    }

    package mutating func add(_ key: String, _ value: Bool?) {
        if let value { members.append(Member(key: key, value: .literal(value ? "true" : "false"))) }
    }

    package mutating func add(_ key: String, _ value: Int?) {
        if let value { members.append(Member(key: key, value: .literal(String(value)))) }
    }

    package mutating func add(_ key: String, _ value: Int64?) {
        if let value { members.append(Member(key: key, value: .literal(String(value)))) }
    }

    package mutating func add(_ key: String, _ value: UInt64?) {
        if let value { members.append(Member(key: key, value: .literal(String(value)))) }
    }

    package mutating func add(_ key: String, _ value: Int32?) {
        if let value { members.append(Member(key: key, value: .literal(String(value)))) }
    }

    package mutating func add(_ key: String, _ value: UInt32?) {
        if let value { members.append(Member(key: key, value: .literal(String(value)))) }
    }

    package mutating func add(_ key: String, _ value: JSONObjectWriter?) {
        if let value { members.append(Member(key: key, value: .object(value))) }
    }

    package mutating func add(_ key: String, _ value: [JSONObjectWriter]?) {
        if let value { members.append(Member(key: key, value: .objects(value))) }
    }

    package mutating func add(_ key: String, _ value: [String]?) {
        if let value { members.append(Member(key: key, value: .strings(value))) }
    }

    package func text(_ style: Style) -> String {
        var output: [UInt8] = []
        output.reserveCapacity(512)
        write(to: &output, style: style, depth: 0)
        return String(decoding: output, as: UTF8.self)
    }

    /// A JSON array of objects, as JSONEncoder writes an array of Encodable structs.
    package static func text(_ objects: [JSONObjectWriter], _ style: Style) -> String {
        var output: [UInt8] = []
        writeArray(objects, to: &output, style: style, depth: 0)
        return String(decoding: output, as: UTF8.self)
    }

    private func write(to output: inout [UInt8], style: Style, depth: Int) {
        let pretty = style == .pretty
        output.append(UInt8(ascii: "{"))
        if pretty { output.append(UInt8(ascii: "\n")) }
        // Swift orders strings by their NFC scalars, which is UTF-8 byte order, JSONEncoder's, for
        // keys in NFC (Silo's are ASCII).
        let sorted = members.sorted { $0.key < $1.key }
        for (position, member) in sorted.enumerated() {
            if position > 0 { output.append(UInt8(ascii: ",")) }
            if pretty {
                if position > 0 { output.append(UInt8(ascii: "\n")) }
                Self.indent(&output, depth + 1)
            }
            Self.writeString(member.key, to: &output, style: style)
            output.append(contentsOf: pretty ? [0x20, UInt8(ascii: ":"), 0x20] : [UInt8(ascii: ":")])
            switch member.value {
            case .literal(let text): output.append(contentsOf: text.utf8)
            case .string(let text): Self.writeString(text, to: &output, style: style)
            case .object(let object): object.write(to: &output, style: style, depth: depth + 1)
            case .objects(let objects): Self.writeArray(objects, to: &output, style: style, depth: depth + 1)
            case .strings(let strings): Self.writeStrings(strings, to: &output, style: style, depth: depth + 1)
            }
        }
        Self.close(&output, UInt8(ascii: "}"), pretty: pretty, depth: depth)
    }

    private static func writeArray(_ objects: [JSONObjectWriter], to output: inout [UInt8], style: Style, depth: Int) {
        writeList(objects, to: &output, style: style, depth: depth) { object, output in
            object.write(to: &output, style: style, depth: depth + 1)
        }
    }

    private static func writeStrings(_ strings: [String], to output: inout [UInt8], style: Style, depth: Int) {
        writeList(strings, to: &output, style: style, depth: depth) { string, output in
            writeString(string, to: &output, style: style)
        }
    }

    /// A JSON array, each element written by `element` where it goes.
    private static func writeList<Element>(_ elements: [Element], to output: inout [UInt8], style: Style, depth: Int,
                                           _ element: (Element, inout [UInt8]) -> Void) {
        let pretty = style == .pretty
        output.append(UInt8(ascii: "["))
        if pretty { output.append(UInt8(ascii: "\n")) }
        for (position, item) in elements.enumerated() {
            if position > 0 { output.append(UInt8(ascii: ",")) }
            if pretty {
                if position > 0 { output.append(UInt8(ascii: "\n")) }
                indent(&output, depth + 1)
            }
            element(item, &output)
        }
        close(&output, UInt8(ascii: "]"), pretty: pretty, depth: depth)
    }

    /// JSONEncoder ends a pretty container on a line of its own, and leaves an empty line in an
    /// empty one (`{\n\n}`).
    private static func close(_ output: inout [UInt8], _ bracket: UInt8, pretty: Bool, depth: Int) {
        if pretty {
            output.append(UInt8(ascii: "\n"))
            indent(&output, depth)
        }
        output.append(bracket)
    }

    private static func indent(_ output: inout [UInt8], _ depth: Int) {
        output.append(contentsOf: repeatElement(0x20, count: 2 * depth))
    }

    /// Escapes `"` and `\`, control characters as `\n`-style short escapes where JSON has one and
    /// as `\u00XX` otherwise; `/` only in the compact style (JSONEncoder's default). Everything
    /// else, non-ASCII included, is written as its UTF-8.
    private static func writeString(_ text: String, to output: inout [UInt8], style: Style) {
        output.append(UInt8(ascii: "\""))
        defer { output.append(UInt8(ascii: "\"")) }
        let plain = !text.utf8.contains { byte in
            byte < 0x20 || byte == UInt8(ascii: "\"") || byte == UInt8(ascii: "\\")
                || (byte == UInt8(ascii: "/") && style == .compact)
        }
        if plain { return output.append(contentsOf: text.utf8) }
        for byte in text.utf8 {
            switch byte {
            case UInt8(ascii: "\""), UInt8(ascii: "\\"):
                output.append(contentsOf: [UInt8(ascii: "\\"), byte])
            case UInt8(ascii: "/") where style == .compact:
                output.append(contentsOf: [UInt8(ascii: "\\"), byte])
            case 0x08: output.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "b")])
            case 0x09: output.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "t")])
            case 0x0A: output.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "n")])
            case 0x0C: output.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "f")])
            case 0x0D: output.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "r")])
            case 0x00..<0x20:
                let hex = Array("0123456789abcdef".utf8)
                output.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "u"), UInt8(ascii: "0"), UInt8(ascii: "0"),
                                           hex[Int(byte >> 4)], hex[Int(byte & 0xF)]])
            default:
                output.append(byte)
            }
        }
    }
}
