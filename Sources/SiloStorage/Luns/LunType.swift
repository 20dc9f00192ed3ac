import SiloOperations

/// The LUN types of VDS (`VDS_LUN_TYPE`). A loop device over one file can be only `simple`.
public enum LunType: String, Sendable, Codable, CaseIterable {
    case `default`, simple, span, stripe, mirror, parity
    case raid2, raid3, raid4, raid5, raid6, raid01, raid03, raid05, raid10, raid15, raid30, raid50, raid51, raid53, raid60, raid61

    /// Parses a type name. Unknown names throw `invalidArgument`; types this provider cannot make
    /// throw `notSupported` with the reason (S3).
    public static func parse(_ text: String) throws(SiloError) -> LunType {
        guard let type = LunType(rawValue: text.lowercased()) else {
            throw SiloError.invalidArgument(
                field: "type", value: text,
                reason: "known types are \(LunType.allCases.map(\.rawValue).joined(separator: ", "))"
            )
        }
        do throws(SiloError) {
            try type.checkSupported()
        } catch {
            // Named as it was written ('SPAN', not 'span').
            throw SiloError.notSupported(field: "type", value: text, reason: Self.unsupportedReason)
        }
        return type
    }

    static let unsupportedReason = "a LUN here is one sparse file on one loop device; only 'simple' (or 'default') can be made"

    func checkSupported() throws(SiloError) {
        switch self {
        case .default, .simple: return
        default:
            throw SiloError.notSupported(field: "type", value: rawValue, reason: Self.unsupportedReason)
        }
    }
}

/// How the backing file is allocated.
public enum Provisioning: String, Sendable, Codable, CaseIterable {
    /// Sparse: space is taken as data is written. Capacity is checked against the overcommit ratio.
    case thin
    /// Preallocated with `fallocate`: space is reserved at once, reads return zeros.
    case thick
    /// Preallocated and written with zeros, with progress: the long operation users watch.
    case zeroed

    public static func parse(_ text: String) throws(SiloError) -> Provisioning {
        guard let value = Provisioning(rawValue: text.lowercased()) else {
            throw SiloError.invalidArgument(field: "provisioning", value: text, reason: "use thin, thick or zeroed")
        }
        return value
    }
}

/// Which compute systems may see a LUN [VDS unmasking list]: `*` every system, `""` none,
/// otherwise system ids separated by `;` (or `,`) (S11).
public enum UnmaskingList: Sendable, Hashable, Codable, CustomStringConvertible {
    case everyone
    case nobody
    case systems([String])

    /// Parses the VDS form. `*` or `""` combined with anything is refused; duplicates are dropped.
    public static func parse(_ text: String) throws(SiloError) -> UnmaskingList {
        if text == "*" { return .everyone }
        if text.isEmpty { return .nobody }
        var seen: [String] = []
        // ';' as VDS writes it, ',' as a command line does: either separates.
        for part in text.split(omittingEmptySubsequences: false, whereSeparator: { $0 == ";" || $0 == "," }).map(String.init) {
            if part == "*" || part.isEmpty {
                throw SiloError.invalidArgument(
                    field: "unmasking list", value: text,
                    reason: "'*' (every system) and '' (none) stand alone, not in a list"
                )
            }
            try Names.validate(part, field: "unmasking list", what: "a compute system id")
            if !seen.contains(part) { seen.append(part) }
        }
        return .systems(seen)
    }

    public var description: String {
        switch self {
        case .everyone: "*"
        case .nobody: ""
        // Every record write of a masked LUN spells it: no generic join (see joinedPlainly).
        case .systems(let ids): ids.joinedPlainly(";")
        }
    }

    public func contains(system id: String) -> Bool {
        switch self {
        case .everyone: true
        case .nobody: false
        case .systems(let ids): ids.contains(id)
        }
    }

    public init(from decoder: any Decoder) throws {
        let text = try decoder.singleValueContainer().decode(String.self)
        do { self = try UnmaskingList.parse(text) } catch { throw error }
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(description)
    }
}

enum Names {
    /// LUN names and system ids: 1 to 64 of `A-Z a-z 0-9 . _ -`, starting with a letter or digit.
    static func validate(_ name: String, field: String, what: String = "a name") throws(SiloError) {
        if name.isEmpty { throw SiloError.missingArgument(field: field, reason: "\(what) cannot be empty") }
        // The characters first: the limit counts bytes, which are characters once they are all ASCII.
        let allowed = name.unicodeScalars.allSatisfy { scalar in
            scalar.isASCII && (scalar.properties.isAlphabetic || ("0"..."9").contains(scalar) || "._-".unicodeScalars.contains(scalar))
        }
        let shown = name.count > 80 ? String(name.prefix(77)) + "..." : name
        guard allowed, let first = name.unicodeScalars.first, first != ".", first != "-", first != "_" else {
            throw SiloError.invalidArgument(
                field: field, value: shown,
                reason: "\(what) uses letters, digits, '.', '_' and '-', and starts with a letter or digit"
            )
        }
        guard name.utf8.count <= 64 else {
            throw SiloError.invalidArgument(
                field: field, value: shown, reason: "\(what) has at most 64 characters (this one has \(name.utf8.count))"
            )
        }
    }
}
