import Glibc
import SiloOperations

/// A place for backing files, on one drive's file system [VDS: a LUN's plexes live on drives].
/// `default` is `<state>/pool`; others are added with ``StorageProvider/addPool(_:directory:)``
/// and chosen by drive (`LunSpec.drives`) or by name (`LunSpec.pool`).
public struct PoolProperties: Sendable, Codable, Hashable {
    public var name: String
    public var directory: String
    /// The drive holding the pool's file system, if it is one the enumeration lists.
    public var drive: String?
    public var totalBytes: UInt64
    public var freeBytes: UInt64
    /// Bytes the pool's LUNs promise: the sizes of its backing files, each a LUN's full size, as
    /// the capacity check counts them (thin LUNs included).
    public var promisedBytes: UInt64
    public var luns: Int
}

/// The pools added besides the default one: `<state>/pools.json`, written atomically.
struct PoolRecord: Codable, Sendable, Hashable {
    var name: String
    var directory: String
}

/// The pool list's file format, read and written by hand as the LUN records are (see
/// `LunRecord+JSON.swift`): what JSONEncoder wrote for `[PoolRecord]`, byte for byte.
extension PoolRecord {
    /// - Throws: `invalidJSON` naming the item and field at fault.
    static func list(json text: String) throws(SiloError) -> [PoolRecord] {
        var records: [PoolRecord] = []
        for object in try JSONObjectReader.objects(json: text) {
            records.append(PoolRecord(name: try object.required("name"), directory: try object.required("directory")))
        }
        return records
    }

    static func json(_ records: [PoolRecord]) -> String {
        JSONObjectWriter.text(records.map { record in
            var object = JSONObjectWriter()
            object.add("name", record.name)
            object.add("directory", record.directory)
            return object
        }, .pretty)
    }
}

extension StorageProvider {
    static let defaultPoolName = "default"

    var poolsFile: String { configuration.stateDirectory + "/pools.json" }

    /// Every pool: the default one first, then the added ones by name. A damaged list counts as
    /// empty here; the changes to the list refuse it instead (`addedPools`).
    func allPools() -> [Pool] {
        [pool] + ((try? addedPools()) ?? [])
    }

    /// Each pool's folder holds `.silo-pool`, naming the state directory whose pool it is: a
    /// second state directory cannot add it (its reenumerate would take the first's backing files
    /// for orphans and remove them), and reenumerate sweeps only pools of its own.
    static let poolMarker = ".silo-pool"

    /// The state directory a pool folder's marker names; nil when it has none.
    static func poolOwner(of directory: String) -> String? {
        readSmallFile(directory + "/" + poolMarker)
    }

    /// Marks `directory` as a pool of this state directory.
    func claimPool(_ directory: String) throws(SiloError) {
        try Self.markPool(directory, stateDirectory: configuration.stateDirectory)
    }

    /// Writes `directory`'s marker, naming `stateDirectory`, durably.
    static func markPool(_ directory: String, stateDirectory: String) throws(SiloError) {
        let marker = directory + "/" + poolMarker
        try writeJSONAtomically(stateDirectory + "\n", to: marker, temporary: marker + ".\(getpid()).tmp", durable: true)
    }

    /// Whether `other` names this state directory (the same folder, however written).
    func isThisStateDirectory(_ other: String) -> Bool {
        if other == configuration.stateDirectory { return true }
        var mine = stat()
        var theirs = stat()
        return stat(configuration.stateDirectory, &mine) == 0 && stat(other, &theirs) == 0
            && mine.st_dev == theirs.st_dev && mine.st_ino == theirs.st_ino
    }

    /// The state directory whose pool `directory` (or a folder above it) is already, this one
    /// included: a folder reached by another path than its pool's (a link, `//`) is that pool.
    private func existingPool(containing directory: String) -> (owner: String, pool: String)? {
        var path = directory
        while !path.isEmpty {
            if let owner = Self.poolOwner(of: path) { return (owner, path) }
            path = String(path[..<(path.lastIndex(of: "/") ?? path.startIndex)])
        }
        return nil
    }

    private func noSuchPool(_ name: String) -> SiloError {
        SiloError(.objectNotFound, "no pool named '\(name)'; 'silo pool list' shows them", field: "pool", value: name)
    }

    /// The added pools by name, as stored. A damaged list throws, so that no change writes a list
    /// of one pool over it.
    func addedPools() throws(SiloError) -> [Pool] {
        // Not there: no pool added. One that cannot be read is no empty list (a pool add would
        // write a list without the others; reenumerate would take their LUNs for no pool's).
        guard let bytes = try readExistingFile(poolsFile) else { return [] }
        let records: [PoolRecord]
        do {
            records = try PoolRecord.list(json: String(decoding: bytes, as: UTF8.self))
        } catch {
            throw SiloError(.invalidJSON, "the pool list \(poolsFile) is damaged (\(error.message)); repair or remove it",
                            field: "pool list", value: poolsFile)
        }
        return records.sorted { $0.name < $1.name }.map { Pool(name: $0.name, directory: $0.directory) }
    }

    func pool(named name: String) throws(SiloError) -> Pool {
        guard let found = allPools().first(where: { $0.name == name }) else {
            throw noSuchPool(name)
        }
        return found
    }

    /// The pools with their drive, capacity and use.
    public func pools() throws(SiloError) -> [PoolProperties] {
        try registry.prepare()
        let records = try registry.loadAll()
        let drives = (try? DriveEnumerator(probeTimeout: configuration.probeTimeout).drives()) ?? []
        return allPools().map { pool in
            let capacity = (try? pool.capacity()) ?? (total: 0, free: 0)
            let mine = records.filter { $0.pool == pool.name }
            return PoolProperties(name: pool.name, directory: pool.directory, drive: driveID(of: pool, in: drives),
                                  totalBytes: capacity.total, freeBytes: capacity.free,
                                  promisedBytes: promisedBytes(in: pool), luns: mine.count)
        }
    }

    /// Adds a pool at `directory` (made if missing), on whatever drive holds it.
    /// - Throws: `invalidArgument` for a bad name, a relative path, a directory inside the state
    ///   directory's or another pool's, a name or directory already used.
    public func addPool(_ name: String, directory: String) throws(SiloError) -> PoolProperties {
        try Names.validate(name, field: "pool", what: "a pool name")
        var path = directory
        while path.count > 1, path.hasSuffix("/") { path.removeLast() }
        guard path.hasPrefix("/"), !path.split(separator: "/").contains(".."), !path.split(separator: "/").contains(".") else {
            throw SiloError.invalidArgument(field: "directory", value: directory, reason: "an absolute path without '.' or '..'")
        }
        try registry.prepare()
        try registry.locked(givingUp: true) { () throws(SiloError) in
            let existing = [pool] + (try addedPools())
            if existing.contains(where: { $0.name == name }) {
                throw SiloError.invalidArgument(field: "pool", value: name, reason: "a pool with that name exists")
            }
            for other in existing + [Pool(name: "state", directory: configuration.stateDirectory)]
            where path == other.directory || path.hasPrefix(other.directory + "/") || other.directory.hasPrefix(path + "/") {
                throw SiloError.invalidArgument(field: "directory", value: directory,
                                                reason: "it overlaps \(other.name == "state" ? "the state directory" : "pool '\(other.name)'") at \(other.directory)")
            }
            if let other = existingPool(containing: path) {
                let reason = isThisStateDirectory(other.owner)
                    ? "\(other.pool) is a pool of this state directory already"
                    : "\(other.pool) is a pool of the state directory \(other.owner) (if that is gone, remove \(other.pool)/\(Self.poolMarker))"
                throw SiloError.invalidArgument(field: "directory", value: directory, reason: reason)
            }
            // Files named as Silo names backing files, with no pool marker: another state
            // directory's LUNs from before pools were marked, or its leftovers. This state
            // directory's reenumerate would take them for its own orphans and remove them.
            if let taken = directoryEntries(path).first(where: Self.isBackingFileName) {
                throw SiloError.invalidArgument(field: "directory", value: directory,
                                                reason: "it holds \(taken), named like a LUN's backing file; its LUN may be another state directory's")
            }
            // The folders this call makes, removed again (deepest first) if it fails: a refused
            // add leaves the host as it was (E3).
            var made: [String] = []
            func removeMade() { for folder in made.reversed() { rmdir(folder) } }
            var folder = ""
            for component in path.split(separator: "/") {
                folder += "/" + String(component)
                if mkdir(folder, 0o700) == 0 {
                    made.append(folder)
                } else if errno != EEXIST {
                    let error = SiloError.system("mkdir", errno: errno, path: folder)
                    removeMade()
                    throw error
                }
            }
            let added = existing.dropFirst().map { PoolRecord(name: $0.name, directory: $0.directory) } + [PoolRecord(name: name, directory: path)]
            do throws(SiloError) {
                try claimPool(path)
                try savePools(added)
            } catch {
                unlink(path + "/" + Self.poolMarker)
                removeMade()
                throw error
            }
        }
        guard let properties = try pools().first(where: { $0.name == name }) else { throw SiloError.notFound("pool", field: "pool", value: name) }
        return properties
    }

    /// Removes an added pool from the list (its directory stays).
    /// - Throws: `deviceInUse` while LUNs live there; `invalidArgument` for the default pool.
    public func removePool(_ name: String) throws(SiloError) {
        guard name != Self.defaultPoolName else {
            throw SiloError.invalidArgument(field: "pool", value: name, reason: "the default pool cannot be removed")
        }
        try registry.prepare()
        try registry.locked(givingUp: true) { () throws(SiloError) in
            let added = try addedPools()
            guard added.contains(where: { $0.name == name }) else {
                throw noSuchPool(name)
            }
            let users = try registry.loadAll().filter { $0.pool == name }.map(\.name)
            guard users.isEmpty else {
                throw SiloError(.deviceInUse, "pool '\(name)' holds LUNs \(users.joined(separator: ", ")); delete them first",
                                field: "pool", value: name)
            }
            try savePools(added.filter { $0.name != name }.map { PoolRecord(name: $0.name, directory: $0.directory) })
            if let removed = added.first(where: { $0.name == name }), let owner = Self.poolOwner(of: removed.directory),
               isThisStateDirectory(owner) {
                unlink(removed.directory + "/" + Self.poolMarker)
            }
        }
    }

    private func savePools(_ records: [PoolRecord]) throws(SiloError) {
        try writeJSONAtomically(PoolRecord.json(records), to: poolsFile, temporary: poolsFile + ".\(getpid()).tmp", durable: true)
    }

    /// Refuses a new backing file in `pool` when its marker names another state directory (its
    /// marker removed and the folder added there since): that one's reenumerate would sweep it.
    ///
    /// An added pool's folder without its marker is refused too: the folder is a mount point
    /// whose file system is not mounted (a reboot where the mount failed or came late), and a
    /// LUN made there would land on the file system under it, the root's, measured as that one
    /// and hidden once the mount comes back. (Only the default pool is made on demand.)
    func checkOwned(_ pool: Pool) throws(SiloError) {
        guard let owner = Self.poolOwner(of: pool.directory) else {
            guard pool.directory != configuration.poolDirectory else { return }
            throw SiloError(.invalidOperation, "pool '\(pool.name)' at \(pool.directory) has lost its marker (\(Self.poolMarker)): "
                                + "is the file system it is on mounted? A LUN made there would land on the one under it",
                            field: "pool", value: pool.name)
        }
        guard !isThisStateDirectory(owner) else { return }
        throw SiloError(.invalidOperation, "pool '\(pool.name)' at \(pool.directory) is a pool of the state directory \(owner) now; "
                            + "a LUN made there would be that one's to sweep", field: "pool", value: pool.name)
    }

    /// Where a new LUN goes (S5): the pool named, else the first given drive's pool, else the default.
    /// - Throws: `objectNotFound` for an unknown drive or pool; `invalidArgument` for a drive without a pool;
    ///   `invalidOperation` for a pool another state directory's marker names.
    func placement(pool name: String?, drives: [String]) throws(SiloError) -> Pool {
        let chosen = try placementCandidate(pool: name, drives: drives)
        try checkOwned(chosen)
        return chosen
    }

    private func placementCandidate(pool name: String?, drives: [String]) throws(SiloError) -> Pool {
        if let name {
            let chosen = try pool(named: name)
            if !drives.isEmpty {
                let known = try DriveEnumerator(probeTimeout: configuration.probeTimeout).drives()
                let ids = try resolve(drives, in: known)
                guard let drive = driveID(of: chosen, in: known), ids.contains(drive) else {
                    throw SiloError.invalidArgument(field: "drive", value: drives.joined(separator: ","),
                                                    reason: "pool '\(name)' is on drive '\(driveID(of: chosen, in: known) ?? "unknown")'")
                }
            }
            return chosen
        }
        guard !drives.isEmpty else { return pool }
        let known = try DriveEnumerator(probeTimeout: configuration.probeTimeout).drives()
        let ids = try resolve(drives, in: known)
        let pools = allPools()
        for id in ids {
            if let found = pools.first(where: { driveID(of: $0, in: known) == id }) { return found }
        }
        let withPools = pools.compactMap { pool in driveID(of: pool, in: known).map { "'\($0)' (pool \(pool.name))" } }
        throw SiloError.invalidArgument(
            field: "drive", value: drives.joined(separator: ","),
            reason: "no pool on \(drives.count == 1 ? "that drive" : "those drives"); drives with pools: "
                + (withPools.isEmpty ? "none" : withPools.joined(separator: ", ")) + " ('silo pool add' makes one)"
        )
    }

    /// The drives' ids, each given by id, name (`vda`) or device path, as `silo drive show` takes them.
    private func resolve(_ drives: [String], in known: [Drive]) throws(SiloError) -> [String] {
        var ids: [String] = []
        for key in drives {
            guard let drive = known.first(where: { $0.id == key || $0.name == key || $0.devicePath == key }) else {
                throw SiloError(.objectNotFound, "no drive with id, name or path '\(key)'; 'silo drive list' shows them",
                                field: "drive", value: key)
            }
            ids.append(drive.id)
        }
        return ids
    }

    /// The drive holding `pool`'s file system: the disk itself, or the disk of its partition.
    func driveID(of pool: Pool, in drives: [Drive]) -> String? {
        guard let number = pool.deviceNumber else { return nil }
        return drives.first { drive in
            drive.deviceNumber == number || drive.partitions.contains { $0.deviceNumber == number }
        }?.id
    }
}
