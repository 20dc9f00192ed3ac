extension Array where Element == String {
    /// `joined(separator:)` for what every CLI start runs through (paths, masks, table cells): the
    /// standard one is generic over its elements, and its first use in a process makes the Swift
    /// runtime walk every protocol conformance in the binary (about 70 µs of a `silo` call here).
    /// `scripts/bench/startup` checks that the hot commands walk none.
    package func joinedPlainly(_ separator: String) -> String {
        var text = ""
        var first = true
        for item in self {
            if !first { text += separator }
            text += item
            first = false
        }
        return text
    }
}
