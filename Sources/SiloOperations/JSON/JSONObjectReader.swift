/// One JSON object of a record Silo wrote, read with ``JSONReader``: unknown keys are ignored (a
/// newer Silo may have added them), `null` is an absent optional as JSONDecoder takes it, and a
/// missing required key or a value of the wrong type is `invalidJSON` naming the key's path.
///
/// The counterpart of ``JSONObjectWriter``; neither goes through Codable (see there why).
package struct JSONObjectReader {
    /// The key path of this object in the record, `""` at the top.
    private let path: String
    private let members: [JSONValue.Member]

    package init(json text: String) throws(SiloError) {
        try self.init(JSONReader.parse(text), path: "")
    }

    package init(_ located: JSONValue.Located, path: String) throws(SiloError) {
        guard case .object(let members) = located.value else {
            throw Self.typeError(path, "an object", located)
        }
        self.path = path
        self.members = members
    }

    /// The objects of a record that is a JSON array of objects.
    package static func objects(json text: String) throws(SiloError) -> [JSONObjectReader] {
        let located = try JSONReader.parse(text)
        guard case .array(let items) = located.value else { throw typeError("", "an array", located) }
        var objects: [JSONObjectReader] = []
        for (position, item) in items.enumerated() {
            objects.append(try JSONObjectReader(item, path: "[\(position)]"))
        }
        return objects
    }

    /// The error for a value this object holds that its reader refuses, such as a name an enum
    /// does not know.
    package func invalid(_ key: String, _ reason: String) -> SiloError {
        SiloError(.invalidJSON, "\(Self.subject(child(key))) \(reason)", field: child(key), value: nil)
    }

    package func required(_ key: String) throws(SiloError) -> String { try need(key, optional(key)) }
    package func required(_ key: String) throws(SiloError) -> Bool { try need(key, optional(key)) }
    package func required(_ key: String) throws(SiloError) -> Int { try need(key, optional(key)) }
    package func required(_ key: String) throws(SiloError) -> Int64 { try need(key, optional(key)) }
    package func required(_ key: String) throws(SiloError) -> UInt64 { try need(key, optional(key)) }
    package func required(_ key: String) throws(SiloError) -> Int32 { try need(key, optional(key)) }
    package func required(_ key: String) throws(SiloError) -> UInt32 { try need(key, optional(key)) }

    package func required<Value: RawRepresentable<String>>(_ key: String) throws(SiloError) -> Value {
        try need(key, optional(key))
    }

    package func optional(_ key: String) throws(SiloError) -> String? {
        guard let value = located(key) else { return nil }
        guard case .string(let text) = value.value else { throw Self.typeError(child(key), "a string", value) }
        return text
    }

    package func optional(_ key: String) throws(SiloError) -> Bool? {
        guard let value = located(key) else { return nil }
        guard case .bool(let flag) = value.value else { throw Self.typeError(child(key), "true or false", value) }
        return flag
    }

    package func optional(_ key: String) throws(SiloError) -> Int? {
        try signed(key, Int64(Int.min), Int64(Int.max)).map { Int($0) }
    }

    package func optional(_ key: String) throws(SiloError) -> Int64? {
        try signed(key, Int64.min, Int64.max)
    }

    package func optional(_ key: String) throws(SiloError) -> Int32? {
        try signed(key, Int64(Int32.min), Int64(Int32.max)).map { Int32($0) }
    }

    package func optional(_ key: String) throws(SiloError) -> UInt64? {
        try unsigned(key, UInt64.max)
    }

    package func optional(_ key: String) throws(SiloError) -> UInt32? {
        try unsigned(key, UInt64(UInt32.max)).map { UInt32($0) }
    }

    /// A string naming one case of `Value`, such as a state.
    package func optional<Value: RawRepresentable<String>>(_ key: String) throws(SiloError) -> Value? {
        guard let text: String = try optional(key) else { return nil }
        guard let value = Value(rawValue: text) else { throw invalid(key, "has an unknown value '\(text)'") }
        return value
    }

    package func object(_ key: String) throws(SiloError) -> JSONObjectReader? {
        guard let value = located(key) else { return nil }
        return try JSONObjectReader(value, path: child(key))
    }

    package func strings(_ key: String) throws(SiloError) -> [String]? {
        guard let value = located(key) else { return nil }
        guard case .array(let items) = value.value else { throw Self.typeError(child(key), "an array", value) }
        var strings: [String] = []
        for (position, item) in items.enumerated() {
            guard case .string(let text) = item.value else { throw Self.typeError(child(key) + "[\(position)]", "a string", item) }
            strings.append(text)
        }
        return strings
    }

    package func objects(_ key: String) throws(SiloError) -> [JSONObjectReader]? {
        guard let value = located(key) else { return nil }
        guard case .array(let items) = value.value else { throw Self.typeError(child(key), "an array", value) }
        var objects: [JSONObjectReader] = []
        for (position, item) in items.enumerated() {
            objects.append(try JSONObjectReader(item, path: child(key) + "[\(position)]"))
        }
        return objects
    }

    private func child(_ key: String) -> String { path.isEmpty ? key : path + "." + key }

    private func located(_ key: String) -> JSONValue.Located? {
        guard let member = members.first(where: { $0.key == key }) else { return nil }
        if case .null = member.value.value { return nil }
        return member.value
    }

    private func need<Value>(_ key: String, _ value: Value?) throws(SiloError) -> Value {
        guard let value else {
            throw SiloError(.invalidJSON, "\(Self.subject(child(key))) is missing", field: child(key), value: nil)
        }
        return value
    }

    private func signed(_ key: String, _ minimum: Int64, _ maximum: Int64) throws(SiloError) -> Int64? {
        guard let value = located(key) else { return nil }
        guard case .number(let text) = value.value, let number = Int64(text), minimum <= number, number <= maximum
        else {
            throw Self.typeError(child(key), "a whole number from \(minimum) to \(maximum)", value)
        }
        return number
    }

    private func unsigned(_ key: String, _ maximum: UInt64) throws(SiloError) -> UInt64? {
        guard let value = located(key) else { return nil }
        guard case .number(let text) = value.value, let number = UInt64(text), number <= maximum else {
            throw Self.typeError(child(key), "a whole number from 0 to \(maximum)", value)
        }
        return number
    }

    /// `path` as a message names it: `field 'owner.pid'`, `item [2]`, `the record`.
    private static func subject(_ path: String) -> String {
        path.isEmpty ? "the record" : path.hasPrefix("[") ? "item \(path)" : "field '\(path)'"
    }

    private static func typeError(_ path: String, _ expected: String, _ value: JSONValue.Located) -> SiloError {
        let found = value.value.brief
        return SiloError(
            .invalidJSON,
            "\(subject(path)) must be \(expected), not \(found) (line \(value.line), column \(value.column))",
            field: path.isEmpty ? "record" : path, value: found
        )
    }
}
