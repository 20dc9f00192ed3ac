import Glibc
import SiloOperations

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
    static func mountPoints(of deviceNumber: String) -> [String] {
        let number = Array(deviceNumber.utf8)
        var points: [String] = []
        forEachMount { device, mountPoint in
            if device.elementsEqual(number) { points.append(Paths.unescapedMountPath(String(decoding: mountPoint, as: UTF8.self))) }
        }
        return points
    }

    /// Calls `body` with each line's major:minor and mount point (still escaped), as bytes.
    /// Each line is walked field by field to its fifth: no strings, and no arrays of slices, for
    /// the lines nobody asked about (splitting every line cost each delete 0.1M instructions).
    static func forEachMount(_ body: (ArraySlice<UInt8>, ArraySlice<UInt8>) -> Void) {
        guard let bytes = readFile("/proc/self/mountinfo") else { return }
        let space = UInt8(ascii: " "), newline = UInt8(ascii: "\n")
        var lineStart = 0
        while lineStart < bytes.count {
            var lineEnd = lineStart
            while lineEnd < bytes.count, bytes[lineEnd] != newline { lineEnd += 1 }
            // Fields 0 to 4: id, parent, major:minor, root, mount point.
            var fields: [Range<Int>] = []
            var index = lineStart
            while fields.count < 5, index < lineEnd {
                var end = index
                while end < lineEnd, bytes[end] != space { end += 1 }
                fields.append(index..<end)
                index = end + 1
            }
            if fields.count == 5 { body(bytes[fields[2]], bytes[fields[4]]) }
            lineStart = lineEnd + 1
        }
    }

    static func isSwap(_ path: String) -> Bool {
        guard let text = readSmallFile("/proc/swaps") else { return false }
        return text.split(separator: "\n").dropFirst().contains { $0.split(separator: " ").first.map(String.init) == path }
    }
}
