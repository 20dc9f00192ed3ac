import Glibc
import SiloOperations

/// Where Silo keeps LUN state and how it provisions.
public struct StorageConfiguration: Sendable {
    public static let defaultStateDirectory = "/var/lib/silo"

    /// The registry (`luns/`), the default pool (`pool/`) and the lock file. Survives reboots.
    public var stateDirectory: String
    /// Where the stable names `<name> -> /dev/loopN` live: `/dev/silo` for the default state
    /// directory, `<state>/dev` for any other, so that two state directories never collide.
    public var linkDirectory: String
    /// Thin LUNs may promise this many times the pool's capacity.
    public var overcommitRatio: Double
    public var scheduler: OperationScheduler

    /// - Parameter stateDirectory: nil means `SILO_STATE_DIR`, or `/var/lib/silo`.
    public init(
        stateDirectory: String? = nil,
        linkDirectory: String? = nil,
        overcommitRatio: Double = 4,
        scheduler: OperationScheduler = .shared
    ) {
        let environment = getenv("SILO_STATE_DIR").map { String(cString: $0) }.flatMap { $0.isEmpty ? nil : $0 }
        let state = Self.normalize(stateDirectory ?? environment ?? Self.defaultStateDirectory)
        self.stateDirectory = state
        self.linkDirectory = linkDirectory ?? (state == Self.defaultStateDirectory ? "/dev/silo" : state + "/dev")
        self.overcommitRatio = overcommitRatio
        self.scheduler = scheduler
    }

    var registryDirectory: String { stateDirectory + "/luns" }
    var poolDirectory: String { stateDirectory + "/pool" }
    var lockFile: String { stateDirectory + "/lock" }

    /// Absolute (a relative path is taken from the working directory now: records name backing
    /// files by paths under it, which another working directory would read elsewhere), without
    /// empty or `.` components or a trailing slash.
    static func normalize(_ path: String) -> String {
        var full = path
        if !full.hasPrefix("/") {
            var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
            if getcwd(&buffer, buffer.count) != nil {
                full = String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self) + "/" + full
            }
        }
        let parts = full.split(separator: "/").filter { $0 != "." }
        let joined = parts.joined(separator: "/")
        // Relative still only when the working directory could not be read (it was removed).
        return full.hasPrefix("/") ? "/" + joined : (joined.isEmpty ? "." : joined)
    }
}
