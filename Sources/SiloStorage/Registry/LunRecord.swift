/// One LUN as the registry keeps it, one JSON file per LUN.
struct LunRecord: Codable, Sendable, Equatable {
    enum State: String, Codable, Sendable {
        /// Provisioning has begun; `owner` is the process doing it.
        case creating
        case ready
    }

    /// The process changing this LUN right now. A record whose owner is gone is left over from a
    /// process that died mid-call; `reenumerate` repairs it.
    struct Owner: Codable, Sendable, Equatable {
        var pid: Int32
        /// Field 22 of /proc/<pid>/stat, so a recycled pid is not mistaken for the owner.
        var startTime: UInt64
        var operation: String
        /// The inode of the owner's pid namespace (`/proc/self/ns/pid`): a pid means something
        /// only in its own namespace. Nil in records written before Silo kept it.
        var pidNamespace: UInt64? = nil
        /// In a change mark only: the call's own token, so that ending a change takes away its
        /// own mark and never another call's, of this process or another (not kept in records).
        var change: UInt64? = nil
        /// The kernel's boot id (`/proc/sys/kernel/random/boot_id`) when the owner wrote it: after
        /// a reboot, a pid, its start time and a pid namespace's inode can all be had again by
        /// another process. Nil in records and marks written before Silo kept it.
        var boot: String? = nil
    }

    var id: String
    var name: String
    var friendlyName: String?
    var size: UInt64
    var blockSize: UInt32
    var provisioning: Provisioning
    var readOnly: Bool
    var directIO: Bool
    var unmasking: UnmaskingList
    var backingFile: String
    var pool: String
    var state: State
    /// Whether the LUN should be attached; `offline` detaches and keeps the data.
    var online: Bool
    /// The loop device last bound, if any.
    var device: Int?
    var owner: Owner?
    var createdAt: Int64

    /// The tag the LUN's loop device carries in the kernel.
    var tag: String { LunRecord.tag(id: id) }

    static func tag(id: String) -> String { "silo:" + id }
}
