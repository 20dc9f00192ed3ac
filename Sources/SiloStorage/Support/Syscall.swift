import Glibc
import SiloOperations

/// Runs a system call that returns -1 and sets `errno` on failure, retrying `EINTR`.
/// - Throws: `SiloError.system` naming the call and the path.
@discardableResult
func syscall<Result: BinaryInteger>(
    _ name: String, path: String? = nil, _ call: () -> Result
) throws(SiloError) -> Result {
    while true {
        let result = call()
        if result != -1 { return result }
        let error = errno  // saved before anything else can clobber it
        if error == EINTR { continue }
        throw SiloError.system(name, errno: error, path: path, message: describe(name, path: path, errno: error))
    }
}

/// "LOOP_CONFIGURE on /dev/loop3 failed: Device or resource busy (errno 16)"
func describe(_ name: String, path: String?, errno: Int32) -> String {
    let target = path.map { " on \($0)" } ?? ""
    return "\(name)\(target) failed: \(String(cString: strerror(errno))) (errno \(errno))"
}

/// Reads a small sysfs or procfs file, trimmed; nil when it does not exist.
func readSmallFile(_ path: String) -> String? {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { return nil }
    defer { close(fd) }
    var bytes: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 4096)
    while true {
        let count = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        if count < 0, errno == EINTR { continue }
        if count <= 0 { break }
        bytes.append(contentsOf: buffer[0..<count])
    }
    var text = String(decoding: bytes, as: UTF8.self)
    while let last = text.last, last.isWhitespace { text.removeLast() }
    return text
}

func readNumber(_ path: String) -> UInt64? {
    readSmallFile(path).flatMap { UInt64($0) }
}

/// The names in a directory, sorted; empty when it cannot be read. Hidden ones (Silo's lock,
/// temporary and mark files) only when asked for; never `.` and `..`.
func directoryEntries(_ path: String, hidden: Bool = false) -> [String] {
    (try? listedEntries(path, hidden: hidden)) ?? []
}

/// The names in a directory, as `directoryEntries` gives them; empty when it is not there, and a
/// throw when it cannot be read (EMFILE, ENOMEM, EIO): for a caller that removes what it does not
/// find listed, a failed read is no empty folder.
func listedEntries(_ path: String, hidden: Bool = false) throws(SiloError) -> [String] {
    guard let directory = opendir(path) else {
        if errno == ENOENT { return [] }
        throw SiloError.system("opendir", errno: errno, path: path)
    }
    defer { closedir(directory) }
    var names: [String] = []
    while true {
        errno = 0
        guard let entry = readdir(directory) else {
            if errno != 0 { throw SiloError.system("readdir", errno: errno, path: path) }
            break
        }
        let name = withUnsafePointer(to: entry.pointee.d_name) {
            $0.withMemoryRebound(to: CChar.self, capacity: 256) { String(cString: $0) }
        }
        if name != ".", name != "..", hidden || !name.hasPrefix(".") { names.append(name) }
    }
    return names.sorted()
}

func fileExists(_ path: String) -> Bool {
    var info = stat()
    return stat(path, &info) == 0
}

func resolveLink(_ path: String) -> String? {
    var buffer = [CChar](repeating: 0, count: 4096)
    let count = readlink(path, &buffer, buffer.count - 1)
    guard count > 0 else { return nil }
    return String(decoding: buffer[0..<count].map { UInt8(bitPattern: $0) }, as: UTF8.self)
}
