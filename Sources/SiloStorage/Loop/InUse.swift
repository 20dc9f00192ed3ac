import Glibc

/// Whether a block device is in use, by every means Linux offers: an exclusive open (fails while
/// mounted, held by device-mapper or md, or opened `O_EXCL` by anyone), holders, mount points,
/// and active swap. Reads only; never opens for writing.
enum InUse {
    /// A reason the device is busy, or nil.
    static func check(_ device: LoopDevice) -> String? {
        check(path: device.path, name: device.name, deviceNumber: device.deviceNumber)
    }

    static func check(path: String, name: String, deviceNumber: String?) -> String? {
        if let number = deviceNumber, let mount = mountPoints(of: number).first {
            return "mounted on \(mount)"
        }
        let holders = directoryEntries("/sys/block/\(name)/holders")
        if !holders.isEmpty { return "held by \(holders.joined(separator: ", "))" }
        if isSwap(path) { return "active swap" }
        // O_EXCL on a block device fails with EBUSY while anyone holds it exclusively.
        let fd = open(path, O_RDONLY | O_EXCL | O_CLOEXEC | O_NONBLOCK)
        if fd < 0 {
            if errno == EBUSY { return "held open exclusively" }
            return nil
        }
        close(fd)
        return nil
    }

    /// Mount points of the device `major:minor`, from /proc/self/mountinfo.
    /// Read as bytes, with strings made only for the device's own lines: splitting every line as a
    /// String took 0.2 ms of each delete here.
    static func mountPoints(of deviceNumber: String) -> [String] {
        guard let bytes = readFile("/proc/self/mountinfo") else { return [] }
        let number = Array(deviceNumber.utf8)
        var points: [String] = []
        for line in bytes.split(separator: UInt8(ascii: "\n")) {
            let fields = line.split(separator: UInt8(ascii: " "), maxSplits: 5, omittingEmptySubsequences: false)
            guard fields.count > 4, fields[2].elementsEqual(number) else { continue }
            points.append(unescapeMountPath(String(decoding: fields[4], as: UTF8.self)))
        }
        return points
    }

    static func isSwap(_ path: String) -> Bool {
        guard let text = readSmallFile("/proc/swaps") else { return false }
        return text.split(separator: "\n").dropFirst().contains { $0.split(separator: " ").first.map(String.init) == path }
    }

    /// mountinfo escapes space, tab, newline and backslash as \040 and friends.
    static func unescapeMountPath(_ path: String) -> String {
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
