import SiloOperations

/// Sizes as people write them: `4096`, `512K`, `512M`, `10G`, `1GiB`, `1.5G`, `2T`.
/// K, M, G, T, P, E are powers of 1024 (as lsblk and losetup read them); `KB`... are powers of 1000.
public enum ByteCount {
    public static func parse(_ text: String, field: String = "size") throws(SiloError) -> UInt64 {
        let trimmed = text.trimmingSpaces
        guard !trimmed.isEmpty else { throw SiloError.missingArgument(field: field, reason: "give a size such as 512M or 10G") }
        // ASCII digits only: `Character.isNumber` also takes other scripts' digits, `½` and `²`.
        let number = trimmed.prefix { ("0"..."9").contains($0) || $0 == "." }
        let unit = trimmed.dropFirst(number.count).lowercased()
        guard !number.isEmpty, number.filter({ $0 == "." }).count <= 1, number.first != ".", number.last != "." else {
            throw SiloError.invalidArgument(field: field, value: text, reason: "not a size; write it like 4096, 512M, 10G or 1GiB")
        }
        let multipliers: [String: Double] = [
            "": 1, "b": 1,
            "k": 0x1p10, "kib": 0x1p10, "m": 0x1p20, "mib": 0x1p20, "g": 0x1p30, "gib": 0x1p30,
            "t": 0x1p40, "tib": 0x1p40, "p": 0x1p50, "pib": 0x1p50, "e": 0x1p60, "eib": 0x1p60,
            "kb": 1e3, "mb": 1e6, "gb": 1e9, "tb": 1e12, "pb": 1e15, "eb": 1e18,
        ]
        guard let multiplier = multipliers[unit] else {
            throw SiloError.invalidArgument(field: field, value: text, reason: "unknown unit '\(unit)'; use K, M, G, T, P, E, KiB... or KB...")
        }
        if !number.contains("."), let whole = UInt64(number) {
            let (bytes, overflow) = whole.multipliedReportingOverflow(by: UInt64(multiplier))
            guard !overflow, bytes <= maximum else { throw tooLarge(text, field) }
            return bytes
        }
        // Digits alone that UInt64 cannot hold: too large, not a fraction.
        if !number.contains(".") { throw tooLarge(text, field) }
        // A fraction of a byte count is a unit forgotten (`--size 0.5`, meant as 0.5G), not 1 byte.
        guard multiplier > 1 else {
            throw SiloError.invalidArgument(field: field, value: text, reason: "a number of bytes is whole; give a unit for a fraction, such as 0.5G")
        }
        guard let value = Double(number) else {
            throw SiloError.invalidArgument(field: field, value: text, reason: "not a size; write it like 4096, 512M, 10G or 1GiB")
        }
        let bytes = (value * multiplier).rounded(.up)
        guard bytes < Double(maximum) else { throw tooLarge(text, field) }
        return UInt64(bytes)
    }

    /// The largest size Silo accepts anywhere: 8 EiB - 1, the largest file offset Linux has.
    public static let maximum = UInt64(Int64.max)

    private static func tooLarge(_ text: String, _ field: String) -> SiloError {
        SiloError.invalidArgument(field: field, value: text, reason: "larger than the 8 EiB a file can hold")
    }

    /// 1073741824 → "1G", 1536 → "1.5K": lsblk's style.
    public static func format(_ bytes: UInt64) -> String {
        let units = ["B", "K", "M", "G", "T", "P", "E"]
        var value = Double(bytes)
        var index = 0
        while value >= 1024, index < units.count - 1 {
            value /= 1024
            index += 1
        }
        if index == 0 { return "\(bytes)B" }
        let rounded = (value * 10).rounded() / 10
        let text = rounded == rounded.rounded() ? String(Int(rounded)) : String(rounded)
        return text + units[index]
    }
}

extension StringProtocol {
    var trimmingSpaces: String {
        var text = String(self)
        while text.first?.isWhitespace == true { text.removeFirst() }
        while text.last?.isWhitespace == true { text.removeLast() }
        return text
    }
}
