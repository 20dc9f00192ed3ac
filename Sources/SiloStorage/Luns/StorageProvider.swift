import Glibc
import SiloOperations
import Synchronization

/// Silo's storage provider: a local subsystem whose LUNs are sparse files on loop devices
/// [IVdsSubSystem, IVdsLun]. Every call is safe from any thread and any number of processes
/// sharing a state directory.
public final class StorageProvider: Sendable {
    public let configuration: StorageConfiguration
    let registry: LunRegistry

    public init(configuration: StorageConfiguration = StorageConfiguration()) {
        self.configuration = configuration
        self.registry = LunRegistry(configuration: configuration)
    }

    var pool: Pool { Pool(directory: configuration.poolDirectory) }

    // MARK: Queries

    /// Every LUN in the registry, sorted by name.
    public func luns() throws(SiloError) -> [LunProperties] {
        try registry.loadAll().map(properties(of:))
    }

    public func lun(named name: String) throws(SiloError) -> LunProperties {
        try properties(of: record(named: name))
    }

    func record(named name: String) throws(SiloError) -> LunRecord {
        try Names.validate(name, field: "name", what: "a LUN name")
        guard let record = try registry.load(name) else { throw SiloError.notFound("LUN", field: "name", value: name) }
        return record
    }

    /// The loop device bound to this LUN's backing file and carrying its tag, if any. The file is
    /// compared by device and inode: the record's path and the kernel's may spell it two ways
    /// (a state directory reached through a link).
    /// A backing file removed by hand under its device leaves the device bound to the unlinked
    /// file: the tag, which carries the LUN's id, finds it then (a delete must still see it in use,
    /// and unbind it).
    ///
    /// The record's number is where to look first, not the only place: a run killed between its
    /// attach and the record write that names the device (a create's, or an online's of an
    /// offline LUN) leaves the LUN bound where the record does not say. A LUN not found there is
    /// looked for on the bound loop devices whose backing file carries its id, so that nothing
    /// binds it a second time (two devices, two caches, on one file) or deletes its file under a
    /// device it missed: by queries for a LUN that should be attached (`online`), and by changes
    /// (`everywhere`) whatever the record says. sysfs is read, no device opened, until one matches.
    func attachedDevice(_ record: LunRecord, everywhere: Bool = false) -> LoopDevice? {
        if let number = record.device, let device = holding(record, LoopDevice(number: number)) { return device }
        guard record.state == .ready, record.online || everywhere else { return nil }
        return LoopDevice.bound(naming: record.id).first { device in
            record.device != device.number && holding(record, device) != nil
        }
    }

    private func holding(_ record: LunRecord, _ device: LoopDevice) -> LoopDevice? {
        guard let binding = device.binding, binding.tag == record.tag else { return nil }
        guard let file = FileIdentity(path: record.backingFile) else { return errno == ENOENT ? device : nil }
        guard file.device == binding.fileDevice, file.inode == binding.inode else { return nil }
        return device
    }

    func properties(of record: LunRecord) -> LunProperties {
        let device = attachedDevice(record)
        let status: LunProperties.Status
        if record.state == .creating {
            status = .creating
        } else if !fileExists(record.backingFile) {
            status = .missing
        } else if device != nil {
            status = .online
        } else {
            status = record.online ? .detached : .offline
        }
        let link = configuration.linkDirectory + "/" + record.name
        return LunProperties(
            id: record.id,
            name: record.name,
            friendlyName: record.friendlyName,
            type: LunType.simple.rawValue,
            size: record.size,
            allocatedBytes: BackingFile.allocatedBytes(record.backingFile),
            logicalBlockSize: record.blockSize,
            provisioning: record.provisioning,
            status: status,
            devicePath: device?.path,
            link: device != nil && resolveLink(link) == device?.path ? link : nil,
            backingFile: record.backingFile,
            pool: record.pool,
            serialNumber: Self.serial(id: record.id),
            unmaskingList: record.unmasking.description,
            readOnly: record.readOnly,
            directIO: device?.directIO ?? record.directIO,
            createdAt: record.createdAt
        )
    }

    /// A stable 20-character serial from the id, for identification data [VDS_LUN_INFORMATION].
    static func serial(id: String) -> String {
        "SILO" + String(id.replacingDashes.uppercased().prefix(16))
    }

    // MARK: Capacity

    /// The largest LUN `createLun` would accept now in pool `poolName` (the default pool if nil)
    /// [IVdsSubSystem::QueryMaxLunCreateSize].
    public func maximumLunSize(provisioning: Provisioning = .thin, pool poolName: String? = nil) throws(SiloError) -> UInt64 {
        // A query makes nothing: a new state directory's default pool is measured where it will be.
        let pool = try poolName.map { (name) throws(SiloError) -> Pool in try self.pool(named: name) } ?? self.pool
        let capacity = try pool.capacity()
        switch provisioning {
        case .thin:
            let ratio = configuration.overcommitRatio
            guard ratio.isFinite, ratio > 0 else {
                throw SiloError.invalidArgument(field: "overcommit ratio", value: "\(ratio)", reason: "a number greater than 0, such as 1 or 4")
            }
            let promised = promisedBytes(in: pool)
            // At most what a file can hold: a very large ratio would overflow the conversion.
            let product = Double(capacity.total) * ratio
            let limit = product >= Double(ByteCount.maximum) ? ByteCount.maximum : UInt64(product)
            return limit > promised ? limit - promised : 0
        case .thick, .zeroed:
            // Less the headroom an allocation keeps for the records, and what the create's own
            // record and folder entries take first: a create of the reported maximum must not
            // fail later, in its allocate step.
            let kept = allocationHeadroom + (64 << 10)
            return capacity.free > kept ? capacity.free - kept : 0
        }
    }

    /// What the pool's thin LUNs promise: the sizes of the backing files in its folder. Each
    /// create makes its sparse file at full size while it holds the registry lock, so a
    /// reservation counts before its chain runs; orphan files count until reenumerate removes
    /// them. A stat per file: decoding every LUN's record made each create O(LUNs) (13 ms per
    /// create with 1,000 LUNs here).
    func promisedBytes(in pool: Pool) -> UInt64 {
        var total: UInt64 = 0
        for entry in directoryEntries(pool.directory) where Self.isBackingFileName(entry) {
            var info = stat()
            if stat(pool.directory + "/" + entry, &info) == 0 { total += UInt64(info.st_size) }
        }
        return total
    }

    /// - Parameter value: what the caller gave for `field`, when that is not `bytes` (an extend's
    ///   target, a clone's source); the error names that.
    func checkCapacity(for bytes: UInt64, provisioning: Provisioning, field: String, value: String? = nil, pool: Pool) throws(SiloError) {
        let maximum = try maximumLunSize(provisioning: provisioning, pool: pool.name)
        guard bytes <= maximum else {
            let rule = provisioning == .thin
                ? "thin LUNs may promise \(configuration.overcommitRatio)x the pool"
                : "\(provisioning.rawValue) LUNs need the space free now"
            throw SiloError(
                .notEnoughSpace,
                "not enough space in pool '\(pool.name)' (\(pool.directory)) for '\(ByteCount.format(bytes))': at most "
                    + "\(ByteCount.format(maximum)) is available (\(rule))",
                field: field, value: value ?? "\(bytes)"
            )
        }
    }

    // MARK: Changes: one at a time per LUN, across threads and processes (S12)

    /// Marks the LUN as being changed by this process (its change mark, beside the record: see
    /// `LunRegistry.Mark`), under the registry lock. `check` sees the record as it is under that
    /// lock, after the mark: a change works out what it does from that record (a size), not from
    /// one read earlier, which another change may have changed since, and what `check` does to
    /// the LUN (a thin extend's growth of its file) is covered by the mark, so a process killed
    /// right after leaves a mark that reenumerate settles by, never an unmarked change. When
    /// `check` throws, the mark is taken away again and nothing is marked.
    /// Returns the record and the mark's token, which ends the change (``endChange(_:mark:_:)``).
    /// - Throws: `anotherCallInProgress` while another call (in any process) changes it.
    func beginChange(_ name: String, operation: String,
                     checking check: (LunRecord) throws(SiloError) -> Void = { _ in }) throws(SiloError) -> (record: LunRecord, mark: UInt64) {
        try Names.validate(name, field: "name", what: "a LUN name")
        return try registry.locked(missing: .notFound("LUN", field: "name", value: name), givingUp: true) {
            () throws(SiloError) -> (record: LunRecord, mark: UInt64) in
            guard let found = try registry.load(name) else { throw SiloError.notFound("LUN", field: "name", value: name) }
            try checkChangeable(found)
            let record = try settlingDeadChange(found)
            var owner = try ProcessIdentity.current(operation: operation)
            let mark = UInt64.random(in: 1...UInt64.max)
            owner.change = mark
            try registry.placeMark(.changing, name, owner: owner)
            do throws(SiloError) {
                try check(record)
            } catch {
                registry.removeMark(.changing, name)
                throw error
            }
            return (record, mark)
        }
    }

    /// A change whose process died left its mark (or, from an older Silo, its owner in the
    /// record): settled, as reenumerate would, before anything works from the LUN's size, or it
    /// would work from a size the file no longer has (an extend's growth cut off by the next
    /// extend, a clone's copy cut short). The caller holds the registry lock and has checked
    /// that no live call changes the LUN. Returns the record as it is now.
    func settlingDeadChange(_ record: LunRecord) throws(SiloError) -> LunRecord {
        guard record.owner != nil || registry.mark(.changing, record.name) != nil else { return record }
        var settled = record
        if let size = settledSize(record), size != record.size { settled.size = size }
        // The device takes the file's size, whichever way the settling went.
        try? attachedDevice(record)?.refreshCapacity(expecting: record.tag)
        settled.owner = nil
        if settled != record { try registry.save(settled) }
        registry.removeMark(.changing, record.name)
        return settled
    }

    /// - Throws: `anotherCallInProgress` while a live call (in any process) changes the LUN;
    ///   `invalidOperation` for one a dead process left half-created.
    func checkChangeable(_ record: LunRecord) throws(SiloError) {
        // Each: a dead call's mark may stay (until reenumerate settles it) beside a live one's.
        // A record's own owner is a provisioning's (or a change's, written by an older Silo).
        let owners = [record.owner, registry.mark(.deleting, record.name), registry.mark(.changing, record.name)]
        for owner in owners.compactMap({ $0 }) where ProcessIdentity.isAlive(owner) {
            throw SiloError(
                .anotherCallInProgress,
                "LUN '\(record.name)' is busy: \(owner.operation) is running (pid \(owner.pid)"
                    + (ProcessIdentity.isForeign(owner) ? " of another pid namespace" : "") + "); try again when it completes",
                field: "name", value: record.name
            )
        }
        guard record.state == .ready else {
            throw SiloError(
                .invalidOperation,
                "LUN '\(record.name)' was left half-created (by a process that died, or a rollback that could not finish); run 'silo storage reenumerate' to repair",
                field: "name", value: record.name
            )
        }
    }

    /// Ends a resize that failed or was cancelled: the record takes the size of the backing file,
    /// which is the old size when the resize was rolled back and the new one when it failed past
    /// its point of no return (a shrink's cut, an extend's device resize).
    ///
    /// It is the last word of an extend or a shrink: when even this record write fails (a full file
    /// system), the change's mark is left to read as a dead process's (`abandonMark`), so the next
    /// change settles the LUN by its file, instead of every change being refused as busy for the
    /// life of this process.
    func endChange(_ name: String, mark: UInt64?, sizedByFile record: LunRecord) throws(SiloError) {
        let size = BackingFile.size(record.backingFile)
        do throws(SiloError) {
            try endChange(name, mark: mark) { stored in
                if let size { stored.size = size }
            }
        } catch {
            if let mark { registry.abandonMark(.changing, name, change: mark) }
            throw error
        }
    }

    /// The size a dead change leaves its LUN at: its backing file's. A thick or zeroed LUN's
    /// growth is allocated then (an extend killed before or while allocating left it sparse, where
    /// its record promises space); with no room for it, the growth is cut off again, unless the
    /// device has it already (the extend was past its point of no return: data may be there).
    func settledSize(_ record: LunRecord) -> UInt64? {
        guard let size = BackingFile.size(record.backingFile) else { return nil }
        guard record.provisioning != .thin, size > record.size else { return size }
        // What the file holds past the old size needs no new room (an extend killed after it
        // allocated): only the rest must be free.
        let held = BackingFile.allocatedBytes(record.backingFile)
        if (try? BackingFile.allocate(record.backingFile, from: record.size, to: size, allocated: held - min(held, record.size))) != nil {
            return size
        }
        if let device = attachedDevice(record), let deviceSize = device.size, deviceSize >= size { return size }
        return (try? BackingFile.resize(record.backingFile, to: record.size)) != nil ? record.size : size
    }

    /// Ends a change (or a provisioning): applies `update`, clears the record's owner, writes the
    /// record durably if that changed it, then takes the change's mark away.
    /// - Parameter mark: the token ``beginChange(_:operation:checking:)`` gave; nil for a
    ///   provisioning, which placed no mark.
    func endChange(_ name: String, mark: UInt64?, _ update: (inout LunRecord) -> Void = { _ in }) throws(SiloError) {
        // The mark keeps other writers off the record, so it is read without the lock.
        if let marked = try registry.load(name) {
            var changed = marked
            update(&changed)
            changed.owner = nil
            if changed != marked {
                try registry.replace(marked) { record in
                    update(&record)
                    record.owner = nil
                }
            }
        }
        // This call's mark only: a second end of the same change (a failure path's), or a
        // provisioning's end, may come after another call, of this process or another, marked the
        // LUN for a change of its own.
        if let mark, registry.mark(.changing, name)?.change == mark {
            registry.removeMark(.changing, name)
        }
    }

    // MARK: Stable names

    func link(_ name: String, to device: LoopDevice) throws(SiloError) {
        let directory = configuration.linkDirectory
        let final = directory + "/" + name
        var attempts = 0
        while true {
            try makeLinkDirectory()
            var info = stat()
            let exists = lstat(final, &info) == 0
            if exists, !Self.isStableName(final) {
                throw SiloError(.invalidArgument, "\(final) is there and is no link to a loop device; Silo leaves it alone",
                                field: "name", value: name)
            }
            // A new name is made in one step: a process killed here leaves the name (which its
            // rollback removes) or nothing. Through a temporary link and a rename, as a stale name
            // is replaced, it left the temporary link, which a sweep takes only when a minute old,
            // and the /dev folder with it.
            let temporary = directory + "/.\(name).\(ProcessIdentity.procPID)"
            let made = exists ? temporary : final
            if exists { unlink(temporary) }
            if symlink(device.path, made) != 0 {
                let error = errno
                // The /dev folder went with another process's last name meanwhile: made again.
                let folderWent = error == ENOENT && configuration.linkTarget != nil
                // A new name another call made meanwhile: replaced, as a stale one is.
                let madeMeanwhile = error == EEXIST && !exists
                if folderWent || madeMeanwhile, attempts < 20 {
                    attempts += 1
                    continue
                }
                throw SiloError.system("symlink", errno: error, path: made)
            }
            if !exists { return }
            do throws(SiloError) {
                try syscall("rename", path: final) { rename(temporary, final) }
            } catch {
                unlink(temporary)
                throw error
            }
            return
        }
    }

    /// The folder of the stable names, made where missing. Another state directory's `<state>/dev`
    /// is a link to its folder in /dev (``StorageConfiguration/linkTarget``); one made as a
    /// folder by an older Silo has its names moved there, and becomes the link.
    private func makeLinkDirectory() throws(SiloError) {
        guard let target = configuration.linkTarget else {
            let directory = configuration.linkDirectory
            if mkdir(directory, 0o755) != 0, errno != EEXIST { throw SiloError.system("mkdir", errno: errno, path: directory) }
            return
        }
        if mkdir(target, 0o755) != 0, errno != EEXIST { throw SiloError.system("mkdir", errno: errno, path: target) }
        let directory = configuration.linkDirectory
        var info = stat()
        if lstat(directory, &info) == 0, (info.st_mode & S_IFMT) == S_IFDIR {
            let entries = directoryEntries(directory, hidden: true)
            guard entries.allSatisfy({ Self.isStableName(directory + "/" + $0) }) else {
                rmdir(target)  // something else is in it: it stays the folder, as a user made it
                return
            }
            for entry in entries {
                if let device = resolveLink(directory + "/" + entry) { _ = symlink(device, target + "/" + entry) }
                unlink(directory + "/" + entry)
            }
            guard rmdir(directory) == 0 else { return }
        } else if lstat(directory, &info) == 0 {
            return  // the link (or whatever a user put there: not replaced)
        }
        if symlink(target, directory) != 0, errno != EEXIST { throw SiloError.system("symlink", errno: errno, path: directory) }
    }

    /// Runs `release` (an unbind or a detach of `device`) with the LUN's stable name taken away
    /// first: the kernel gives a freed device's number to the next attach of any process (a Silo
    /// create, losetup, systemd), so a name still there at that moment, or left by a process killed
    /// then, would lead to another's device. A name that was there comes back when the device stays.
    func releasing<T>(_ name: String, _ device: LoopDevice,
                      _ release: () throws(SiloError) -> T) throws(SiloError) -> T {
        let linked = Self.isStableName(configuration.linkDirectory + "/" + name)
        unlinkName(name)
        do throws(SiloError) {
            return try release()
        } catch {
            if linked { try? link(name, to: device) }
            throw error
        }
    }

    /// Removes a stable name; whatever else has that name (a file, a link elsewhere) stays. The
    /// last name of another state directory takes its folder in /dev with it.
    func unlinkName(_ name: String) {
        let path = configuration.linkDirectory + "/" + name
        if Self.isStableName(path) { unlink(path) }
        if let target = configuration.linkTarget { rmdir(target) }  // only when empty
    }

    /// Whether `path` is what `link` makes: a symbolic link to `/dev/loop<N>`. The link folder may
    /// be one a library user chose and shares; nothing else in it is Silo's to replace or remove.
    static func isStableName(_ path: String) -> Bool {
        var buffer = [UInt8](repeating: 0, count: 64)
        let count = buffer.withUnsafeMutableBufferPointer { pointer in
            pointer.baseAddress!.withMemoryRebound(to: CChar.self, capacity: pointer.count) { readlink(path, $0, pointer.count) }
        }
        guard count > 0, count < buffer.count else { return false }
        let target = buffer[..<count]
        let prefix = Array("/dev/loop".utf8)
        guard target.count > prefix.count, target.starts(with: prefix) else { return false }
        return target.dropFirst(prefix.count).allSatisfy { $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") }
    }
}

/// A value one step of a chain produces and later steps or rollbacks read.
final class StepValue<Value: Sendable>: Sendable {
    private let storage = Mutex<Value?>(nil)
    var value: Value? { storage.withLock { $0 } }
    func set(_ value: Value) { storage.withLock { $0 = value } }
}

extension String {
    var replacingDashes: String { String(filter { $0 != "-" }) }
}

extension StorageProvider {
    /// Whether a pool folder's `entry` is named as Silo names backing files: `<uuid>.img`, the
    /// LUN's id (`newIdentifier`) in lower-case hex. Only those are Silo's: a pool may be added on
    /// a folder that holds other files (`/srv/images` with a `disk.img`), which no count of
    /// promised bytes and no sweep of orphans may take for a LUN's.
    static func isBackingFileName(_ entry: String) -> Bool {
        let bytes = Array(entry.utf8)
        guard bytes.count == 40, bytes[36...].elementsEqual(".img".utf8) else { return false }
        for (index, byte) in bytes[..<36].enumerated() {
            if index == 8 || index == 13 || index == 18 || index == 23 {
                guard byte == UInt8(ascii: "-") else { return false }
            } else {
                guard (byte >= UInt8(ascii: "0") && byte <= UInt8(ascii: "9")) || (byte >= UInt8(ascii: "a") && byte <= UInt8(ascii: "f")) else { return false }
            }
        }
        return true
    }
}

/// A random (version 4) UUID in its usual text form. Two 8-byte draws and the text made by hand:
/// sixteen draws of a byte were sixteen getrandom calls, and joining strings 0.2M instructions.
func newIdentifier() -> String {
    var generator = SystemRandomNumberGenerator()
    var bytes: [UInt8] = []
    for _ in 0..<2 {
        let word = generator.next()
        for shift in stride(from: 0, to: 64, by: 8) { bytes.append(UInt8(truncatingIfNeeded: word >> UInt64(shift))) }
    }
    bytes[6] = (bytes[6] & 0x0f) | 0x40  // version 4
    bytes[8] = (bytes[8] & 0x3f) | 0x80  // variant
    let digits = Array("0123456789abcdef".utf8)
    var text: [UInt8] = []
    for (index, byte) in bytes.enumerated() {
        if index == 4 || index == 6 || index == 8 || index == 10 { text.append(UInt8(ascii: "-")) }
        text.append(digits[Int(byte >> 4)])
        text.append(digits[Int(byte & 0x0f)])
    }
    return String(decoding: text, as: UTF8.self)
}

func nowSeconds() -> Int64 {
    var spec = timespec()
    clock_gettime(CLOCK_REALTIME, &spec)
    return Int64(spec.tv_sec)
}
