import SiloOperations

/// One JSON object of a document, read strictly: every field must be known (applied or ignored);
/// type errors and unknown fields name the field's path and where it stands (C2).
struct DocumentObject {
    let path: String
    let members: [JSONValue.Member]
    let line: Int
    let column: Int

    init(_ located: JSONValue.Located, path: String) throws(SiloError) {
        guard case .object(let members) = located.value else {
            throw DocumentObject.typeError(path.isEmpty ? "the document" : path, "an object", located)
        }
        self.path = path
        self.members = members
        self.line = located.line
        self.column = located.column
    }

    func child(_ key: String) -> String { path.isEmpty ? key : path + "." + key }

    func located(_ key: String) -> JSONValue.Located? {
        members.first { $0.key == key }.flatMap { member in
            if case .null = member.value.value { return nil }
            return member.value
        }
    }

    /// Refuses fields that are neither applied nor known to be ignored; returns the paths of the
    /// ignored ones present.
    func check(applied: Set<String>, ignored: Set<String>) throws(SiloError) -> [String] {
        var present: [String] = []
        for member in members {
            if applied.contains(member.key) { continue }
            if ignored.contains(member.key) {
                present.append(child(member.key))
                continue
            }
            throw SiloError(
                .invalidJSON,
                "unknown field \(child(member.key)) at line \(member.value.line), column \(member.value.column); "
                    + "known fields here: \((applied.union(ignored)).sorted().joined(separator: ", "))",
                field: child(member.key), value: "line \(member.value.line), column \(member.value.column)"
            )
        }
        return present
    }

    func object(_ key: String) throws(SiloError) -> DocumentObject? {
        guard let value = located(key) else { return nil }
        return try DocumentObject(value, path: child(key))
    }

    func string(_ key: String) throws(SiloError) -> String? {
        guard let value = located(key) else { return nil }
        guard case .string(let text) = value.value else { throw Self.typeError(child(key), "a string", value) }
        return text
    }

    func bool(_ key: String) throws(SiloError) -> Bool? {
        guard let value = located(key) else { return nil }
        guard case .bool(let flag) = value.value else { throw Self.typeError(child(key), "true or false", value) }
        return flag
    }

    func integer(_ key: String, in range: ClosedRange<Int64>) throws(SiloError) -> Int64? {
        guard let value = located(key) else { return nil }
        guard case .number(let text) = value.value, let number = Int64(text) else {
            throw Self.typeError(child(key), "a whole number", value)
        }
        guard range.contains(number) else {
            throw SiloError(
                .invalidJSON,
                "\(child(key)) is \(number) at line \(value.line), column \(value.column); it must be in \(range.lowerBound)...\(range.upperBound)",
                field: child(key), value: text
            )
        }
        return number
    }

    func array(_ key: String) throws(SiloError) -> [JSONValue.Located]? {
        guard let value = located(key) else { return nil }
        guard case .array(let items) = value.value else { throw Self.typeError(child(key), "an array", value) }
        return items
    }

    static func typeError(_ path: String, _ expected: String, _ value: JSONValue.Located) -> SiloError {
        let found = value.value.brief
        return SiloError(
            .invalidJSON,
            "\(path) must be \(expected), not \(found) (line \(value.line), column \(value.column))",
            field: path, value: found
        )
    }
}
