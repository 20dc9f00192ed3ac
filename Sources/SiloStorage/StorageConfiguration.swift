import Glibc
import SiloOperations

/// Where Silo keeps LUN state and how it provisions.
public struct StorageConfiguration: Sendable {
    public static let defaultStateDirectory = Paths.defaultStateDirectory

    /// The registry (`luns/`), the default pool (`pool/`) and the lock file. Survives reboots.
    public var stateDirectory: String
    /// Where the stable names `<name> -> /dev/loopN` live: `/dev/silo` for the default state
    /// directory, `<state>/dev` for any other, so that two state directories never collide.
    public var linkDirectory: String
    /// For another state directory's `<state>/dev`: the folder in /dev it links to, where the
    /// names are, `/dev/silo-<hash of the state directory>`. /dev is a devtmpfs: the names go
    /// with a reboot, as the devices they name do, instead of naming on the disk, after it,
    /// whatever device takes a number next. Nil for the default and a chosen folder. Worked out
    /// when a name is made, not at every start.
    var linkTarget: String? {
        linkDirectory == stateDirectory + "/dev" && stateDirectory != Self.defaultStateDirectory
            ? "/dev/silo-" + Paths.shortHash(stateDirectory) : nil
    }
    /// Thin LUNs may promise this many times the pool's capacity.
    public var overcommitRatio: Double
    public var scheduler: OperationScheduler
    /// Asked, between short sleeps, while a call waits for the registry lock that another process
    /// holds: true gives the call up, as `operationCancelled`, with nothing done. Nil waits for
    /// the lock however long it takes. The `silo` CLI answers with a pending Ctrl-C.
    public var lockWaitGivesUp: (@Sendable () -> Bool)?
    /// How long drive enumeration waits for the libblkid probes of the host's devices: a device
    /// whose reads never return (a suspended device-mapper table, a network disk whose server is
    /// gone, a loop device over a hung file system) is listed without what a probe finds, rather
    /// than holding up every `drive list`, `pool add` and `lun create --drive`.
    public var probeTimeout: Duration

    /// - Parameter stateDirectory: nil means `SILO_STATE_DIR`, or `/var/lib/silo`.
    public init(
        stateDirectory: String? = nil,
        linkDirectory: String? = nil,
        overcommitRatio: Double = 4,
        scheduler: OperationScheduler = .shared,
        lockWaitGivesUp: (@Sendable () -> Bool)? = nil,
        probeTimeout: Duration = .seconds(10)
    ) {
        let environment = getenv("SILO_STATE_DIR").map { String(cString: $0) }.flatMap { $0.isEmpty ? nil : $0 }
        let state = Self.normalize(stateDirectory ?? environment ?? Self.defaultStateDirectory)
        self.stateDirectory = state
        self.linkDirectory = linkDirectory ?? (state == Self.defaultStateDirectory ? "/dev/silo" : state + "/dev")
        self.overcommitRatio = overcommitRatio
        self.scheduler = scheduler
        self.lockWaitGivesUp = lockWaitGivesUp
        self.probeTimeout = probeTimeout
    }

    var registryDirectory: String { stateDirectory + "/luns" }
    var poolDirectory: String { stateDirectory + "/pool" }
    var lockFile: String { stateDirectory + "/lock" }

    /// See `Paths.normalized`: compute reads the same directory the same way.
    static func normalize(_ path: String) -> String { Paths.normalized(path) }
}
