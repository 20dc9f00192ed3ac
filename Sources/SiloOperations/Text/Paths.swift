#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// How storage and compute read a state directory, so that both put its parts in the same place.
package enum Paths {
    /// Absolute (a relative path is taken from the working directory now: records name files by
    /// paths under it, which another working directory would read elsewhere), without empty or
    /// `.` components or a trailing slash.
    package static func normalized(_ path: String) -> String {
        var full = path
        if !full.hasPrefix("/") {
            var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
            if getcwd(&buffer, buffer.count) != nil {
                full = String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self) + "/" + full
            }
        }
        var parts: [String] = []
        for part in full.split(separator: "/") where part != "." { parts.append(String(part)) }
        let joined = parts.joinedPlainly("/")
        // Relative still only when the working directory could not be read (it was removed).
        return full.hasPrefix("/") ? "/" + joined : (joined.isEmpty ? "." : joined)
    }

    /// FNV-1a of `text`, as 8 hex digits: a short name, the same in every process, for what a
    /// path owns outside it (a runtime folder's cgroups, a state directory's names in /dev).
    package static func shortHash(_ text: String) -> String {
        var hash: UInt32 = 2_166_136_261
        for byte in text.utf8 { hash = (hash ^ UInt32(byte)) &* 16_777_619 }
        let digits = Array("0123456789abcdef".utf8)
        var result: [UInt8] = []
        for shift in stride(from: 28, through: 0, by: -4) { result.append(digits[Int((hash >> UInt32(shift)) & 0xf)]) }
        return String(decoding: result, as: UTF8.self)
    }

    /// The state directory used when none is given.
    package static let defaultStateDirectory = "/var/lib/silo"

    /// A mount point as the kernel writes it in mountinfo, which escapes space, tab, newline and
    /// backslash as `\040`, `\011`, `\012` and `\134`, read back.
    package static func unescapedMountPath(_ path: String) -> String {
        guard path.utf8.contains(UInt8(ascii: "\\")) else { return path }
        var result = ""
        var index = path.startIndex
        while index < path.endIndex {
            if path[index] == "\\", let end = path.index(index, offsetBy: 4, limitedBy: path.endIndex),
               let code = UInt8(path[path.index(after: index)..<end], radix: 8) {
                result.append(Character(UnicodeScalar(code)))
                index = end
            } else {
                result.append(path[index])
                index = path.index(after: index)
            }
        }
        return result
    }
}
