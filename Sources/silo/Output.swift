import FoundationEssentials
import Silo

/// JSON with sorted keys, as every `--json` prints.
func printJSON(_ value: some Encodable) throws {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.sortedKeys, .prettyPrinted, .withoutEscapingSlashes]
    let data = try encoder.encode(value)
    print(String(decoding: data, as: UTF8.self))
}

/// An lsblk-style table: a header, left-aligned columns, `-` for nothing.
func printTable(_ header: [String], _ rows: [[String?]]) {
    let cells = rows.map { $0.map { $0.flatMap { $0.isEmpty ? nil : $0 } ?? "-" } }
    var widths = header.map(\.count)
    for row in cells {
        for (index, cell) in row.enumerated() { widths[index] = max(widths[index], cell.count) }
    }
    // A loop, not `joined(separator:)`: that one is generic over its elements, and its first use
    // costs the start associated-type and conformance lookups (0.2M instructions of a `lun list`).
    func line(_ row: [String]) -> String {
        var text = ""
        for (index, cell) in row.enumerated() {
            text += cell
            if index < row.count - 1 { text += String(repeating: " ", count: widths[index] - cell.count + 2) }
        }
        return text
    }
    print(line(header))
    for row in cells { print(line(row)) }
}

func human(_ bytes: UInt64) -> String { ByteCount.format(bytes) }
