/// Whether `needle` occurs in `haystack`, compared byte for byte.
package func bytesContain(_ haystack: UnsafeBufferPointer<UInt8>, _ needle: UnsafeBufferPointer<UInt8>) -> Bool {
    guard !needle.isEmpty else { return true }
    guard haystack.count >= needle.count else { return false }
    for start in 0...(haystack.count - needle.count) where haystack[start] == needle[0] {
        var offset = 1
        while offset < needle.count, haystack[start + offset] == needle[offset] { offset += 1 }
        if offset == needle.count { return true }
    }
    return false
}

extension String {
    /// Whether `pattern` occurs in this string, compared as UTF-8 bytes (for paths and kernel
    /// files, where that is what equality means). `String.contains(String)` builds a searcher whose
    /// skip table is a `[Character: Int]`: its first use costs a fresh process 0.28M instructions
    /// of runtime type look-ups, more than the search.
    package func containsBytes(_ pattern: String) -> Bool {
        var text = self
        var pattern = pattern
        return text.withUTF8 { haystack in pattern.withUTF8 { needle in bytesContain(haystack, needle) } }
    }
}
