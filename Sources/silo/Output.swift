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
    func line(_ row: [String]) -> String {
        row.enumerated().map { index, cell in
            index == row.count - 1 ? cell : cell + String(repeating: " ", count: widths[index] - cell.count)
        }.joined(separator: "  ")
    }
    print(line(header))
    for row in cells { print(line(row)) }
}

func human(_ bytes: UInt64) -> String { ByteCount.format(bytes) }
