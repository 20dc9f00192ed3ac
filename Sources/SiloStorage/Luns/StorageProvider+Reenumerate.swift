import Glibc
import SiloOperations

/// What `reenumerate` found and did.
public struct ReenumerateReport: Sendable, Hashable, Codable {
    /// LUNs re-attached (after a reboot, or an attach that was lost).
    public var attached: [String] = []
    /// Half-made LUNs of processes that died mid-call, removed with everything they made.
    public var rolledBack: [String] = []
    /// Changes of processes that died mid-call, finished or undone, and records corrected to
    /// what the kernel has (a device number, a second device bound to a LUN's file): name: what was done.
    public var repaired: [String] = []
    /// Silo-tagged loop devices of this pool with no LUN, detached.
    public var orphanDevicesDetached: [String] = []
    /// Backing files in the pool with no LUN, removed.
    public var orphanFilesRemoved: [String] = []
    /// Stable names fixed or removed.
    public var linksFixed: [String] = []
    /// What Silo could not repair and will not hide: a missing backing file, a busy orphan device.
    public var drift: [String] = []
}

extension StorageProvider {
    /// Reconciles the registry with the kernel (S13, S15): finishes or undoes what dead processes
    /// left half-done, re-attaches LUNs whose devices are gone, detaches Silo's orphan devices of
    /// this pool, removes orphan files, and fixes the stable names. Loop devices that are not
    /// Silo's, or belong to another state directory's pool, are never touched.
    public func reenumerate(
        context: (any Sendable)? = nil,
        callback: OperationCallback<ReenumerateReport>? = nil
    ) throws(SiloError) -> SiloOperation<ReenumerateReport> {
        try registry.prepare()
        return try configuration.scheduler.run(.reenumerate, context: context, callback: callback, cancellable: false) {
            [self] _ in
            // Its wait for the lock, before anything changes, may give up as others' do (a Ctrl-C).
            try registry.locked(givingUp: true) { () throws(SiloError) -> ReenumerateReport in try reconcile() }
        }
    }

    /// Runs under the registry lock.
    private func reconcile() throws(SiloError) -> ReenumerateReport {
        var report = ReenumerateReport()
        // A damaged pool list hides the added pools: their files would look like no pool's, and
        // their LUNs' devices like none of this state directory's. Said, and no orphan is swept.
        var pools = [pool]
        var poolListDamaged = false
        do throws(SiloError) {
            pools += try addedPools()
        } catch {
            report.drift.append("\(error.message); no orphan device or file is removed while it is damaged")
            poolListDamaged = true
        }
        // Silo-tagged devices by LUN id: a record's are found by its tag alone (the id is the
        // LUN's own), wherever its file is. Those bound to files of these pools are the ones an
        // orphan sweep may detach: only in pools of this state directory (one whose marker names
        // another holds that one's LUNs, as the file sweep below says). The pools are told by
        // identity: the kernel names a backing file by its resolved path, which need not be the
        // one the state directory was given as.
        let poolFolders = Set(pools.filter { pool in Self.poolOwner(of: pool.directory).map(isThisStateDirectory) ?? true }
            .compactMap { FileIdentity(path: $0.directory) })
        var ours: [String: [LoopDevice]] = [:]
        var tagged: [String: [(device: LoopDevice, file: FileIdentity)]] = [:]
        // Devices not Silo's, by the file they are bound to: never touched, but a LUN's file bound
        // to one is drift (and gets no second device).
        var untagged: [FileIdentity: [LoopDevice]] = [:]
        for device in try LoopDevice.listed() {
            // The kernel's word first: an unbound device is passed over. One that cannot be read
            // stops the reconcile before it changes anything: a LUN whose device it cannot see
            // would get a second one over its file.
            let status: LoopDevice.Status, binding: (tag: String, fileDevice: UInt64, inode: UInt64)
            do throws(SiloError) {
                guard let bound = try device.readBinding() else { continue }
                guard let read = device.status else {
                    if try device.readBinding() == nil { continue }  // unbound since, by another tool
                    throw SiloError(.systemCallFailed, "\(device.sysfs)/loop/backing_file could not be read",
                                    field: "device", value: device.path)
                }
                (status, binding) = (read, bound)
            } catch {
                var stopped = error
                stopped.message = "reenumerate changed nothing: \(device.path) could not be read (\(error.message)); "
                    + "a LUN whose device it cannot see would get a second one"
                throw stopped
            }
            let tag = binding.tag
            guard tag.hasPrefix("silo:") else {
                untagged[FileIdentity(device: binding.fileDevice, inode: binding.inode), default: []].append(device)
                continue
            }
            let id = String(tag.dropFirst(5))
            tagged[id, default: []].append((device, FileIdentity(device: binding.fileDevice, inode: binding.inode)))
            guard let slash = status.backingFile.lastIndex(of: "/"),
                  let folder = FileIdentity(path: String(status.backingFile[..<slash])), poolFolders.contains(folder) else { continue }
            ours[id, default: []].append(device)
        }

        // Every listing before the first change: one that cannot be read stops the reconcile with
        // nothing changed.
        let marked = try LunRegistry.Mark.allCases.map { (mark) throws(SiloError) in
            (mark, try registry.markNames(mark))
        }
        var damaged: [SiloError] = []
        var records = try registry.loadAll(damaged: &damaged)
        // Marks of calls in progress. A live one's LUN is left alone. A dead delete's mark goes:
        // the delete did not finish (or finished all but this), and the LUN is settled below like
        // any other. A dead change's mark goes once its record is settled below.
        var busy = Set<String>()
        var deadChanges: [String: LunRecord.Owner] = [:]
        for (mark, names) in marked {
            for name in names {
                let owner = registry.mark(mark, name)
                if let owner, ProcessIdentity.isAlive(owner) {
                    if ProcessIdentity.isForeign(owner) { report.drift.append(Self.foreign(name, owner)) }
                    busy.insert(name)
                    continue
                }
                if mark == .changing, let owner {
                    deadChanges[name] = owner
                    continue
                }
                registry.removeMark(mark, name)
                report.repaired.append("\(name): \(owner?.operation ?? "a call") of a dead process settled")
            }
        }
        // A damaged record (a power loss on a file system that does not order a rename after the
        // data it renames) is reported, not fatal; but its LUN's file and devices cannot be told
        // from orphans, so nothing is swept as an orphan until it is repaired or removed.
        report.drift += damaged.map { "\($0.message); no orphan device or file is removed while it is there" }
        // Each pool folder's marker, read once for all its records.
        var folderOwners: [String: String?] = [:]
        for index in records.indices.reversed() {
            var record = records[index]
            // The LUN's devices are its own, whatever happens below: a live call's too, which
            // the sweep of devices no record claims would otherwise detach under it.
            ours.removeValue(forKey: record.id)
            // A record whose file is in a pool folder another state directory's marker names is
            // that one's (a copy of a state directory, a backup restored beside it, names the
            // original's files, which the original's LUNs and devices still use): reported, and
            // nothing of it touched, its dead change's mark included.
            let folder = record.backingFile.lastIndex(of: "/").map { String(record.backingFile[..<$0]) } ?? record.backingFile
            let owner = folderOwners[folder] ?? { let read = Self.poolOwner(of: folder); folderOwners[folder] = .some(read); return read }()
            if let owner, !isThisStateDirectory(owner) {
                report.drift.append("\(record.name): its file \(record.backingFile) is in a pool of the state directory \(owner) "
                                    + "(a copy of it?); left alone")
                deadChanges.removeValue(forKey: record.name)
                continue
            }
            // A device carrying its id is its own only when bound to its file (when the file is
            // there to tell): a copy of this state directory (a backup restored beside it) has the
            // same ids, and its devices are not this one's to detach, link or call online.
            let file = FileIdentity(path: record.backingFile)
            let fileMissing = file == nil && errno == ENOENT
            var devices: [LoopDevice] = []
            for (device, bound) in tagged[record.id] ?? [] {
                if fileMissing || bound == file {
                    devices.append(device)
                } else {
                    report.drift.append("\(record.name): \(device.path) carries its id but is bound to another file "
                                        + "(a copy of this state directory's?); left alone")
                }
            }
            // A live call (a mark beside the record, or a provisioning's owner in it): leave it.
            if busy.contains(record.name) { continue }
            if let owner = record.owner, ProcessIdentity.isAlive(owner) {
                if ProcessIdentity.isForeign(owner) { report.drift.append(Self.foreign(record.name, owner)) }
                continue
            }
            if record.state == .creating {
                // Died while provisioning: undo everything the record names. A device that
                // cannot be detached (something holds it) keeps its record, and says why: the
                // next reenumerate finishes the rollback.
                // The stable name first, as a delete's (`releasing`): the freed numbers go to the
                // next attach of anyone.
                unlinkName(record.name)
                var held: [String] = []
                for device in devices {
                    do throws(SiloError) { try device.detach(expecting: record.tag) } catch { held.append("\(device.path): \(error.message)") }
                }
                guard held.isEmpty else {
                    report.drift.append("\(record.name): half-created \(record.owner.map { "by dead pid \($0.pid)" } ?? "by a call that failed"), not rolled back while "
                                        + held.joined(separator: "; "))
                    continue
                }
                // Not under another tool's device (a losetup by hand of the half-made file): the
                // record goes, the file stays, and that is said, as the orphan sweep says it.
                if let bound = file.flatMap({ untagged[$0] }), !bound.isEmpty {
                    report.drift.append("\(record.name): half-created, rolled back but for its file \(record.backingFile), "
                                        + "which \(bound.map(\.path).joined(separator: ", ")) (not Silo's) is bound to; kept")
                } else {
                    try? BackingFile.remove(record.backingFile)
                }
                try registry.removeHoldingLock(record.name)
                records.remove(at: index)
                report.rolledBack.append(record.name)
                continue
            }
            let deadOwner = record.owner ?? deadChanges[record.name]
            if let owner = deadOwner {
                // Died mid-change: the file's size tells how far it got.
                if let size = settledSize(record), size != record.size { record.size = size }
                // The device takes the file's size, whichever way the settling went.
                if let device = devices.first { try? device.refreshCapacity(expecting: record.tag) }
                record.owner = nil
                let whose = owner.pid > 0 ? "of dead pid \(owner.pid)" : "that could not record its end"
                report.repaired.append("\(record.name): \(owner.operation) \(whose) settled")
            }
            // Online by its record, with no device, and an `offline` that died: it died after its
            // detach (before it, the device would be here), so the offline is finished, not undone
            // by an attach below under someone working on the file as the offline allowed.
            if record.online, devices.isEmpty, deadOwner?.operation == "offline" {
                record.online = false
            }
            // Offline by its record, with a device: an `online` that died after its attach is
            // finished (the LUN is online); any other device (an attach whose stable name failed)
            // goes, as the record says.
            if !record.online, !devices.isEmpty {
                if deadOwner?.operation == "online" {
                    record.online = true
                } else {
                    devices = devices.filter { device in
                        do throws(SiloError) {
                            // Its stable name (a killed online's) goes first, as a delete's.
                            let unbound = try releasing(record.name, device) { () throws(SiloError) in
                                try device.detach(expecting: record.tag)
                            }
                            if unbound {
                                report.repaired.append("\(record.name): offline, its device \(device.path) detached")
                            }
                            return false
                        } catch {
                            report.drift.append("\(record.name): offline, but \(device.path) is bound to its file and in use: \(error.message)")
                            return true
                        }
                    }
                }
            }
            // The one the record names, if it is among them; others are duplicates.
            let found = devices.first { $0.number == record.device } ?? devices.first
            var device = found
            for extra in devices where extra != found {
                do throws(SiloError) {
                    // Unbound meanwhile (by another reenumerate, a delete): nothing was corrected here.
                    if try extra.detach(expecting: record.tag) {
                        report.repaired.append("\(record.name): a second device bound to its file, \(extra.path), detached")
                    }
                } catch {
                    report.drift.append("\(record.name): a second device bound to its file, \(extra.path), is in use: \(error.message)")
                }
            }
            let foreign = file.flatMap { untagged[$0] } ?? []
            if !foreign.isEmpty {
                report.drift.append("\(record.name): its backing file is bound to \(foreign.map(\.path).joined(separator: ", ")), which is not Silo's; "
                                    + (device == nil ? "no device of Silo's is bound beside it" : "two devices over one file may each miss the other's writes"))
            }
            if !fileExists(record.backingFile) {
                report.drift.append("\(record.name): backing file \(record.backingFile) is missing")
            } else if record.online, device == nil, foreign.isEmpty {
                do throws(SiloError) {
                    device = try LoopDevice.attach(backing: record.backingFile, options: record.loopOptions).device
                    report.attached.append(record.name)
                } catch {
                    report.drift.append("\(record.name): cannot attach: \(error.message)")
                }
            }
            // Not hidden: a device found bound that the record did not name (a call killed between
            // its attach and its record write), unless the dead call's settling above said so.
            // Attached now, or none to be had, the report says so already.
            if let found, record.device != found.number, deadOwner == nil {
                let named = record.device.map { "/dev/loop\($0)" } ?? "no device"
                report.repaired.append("\(record.name): its record named \(named), its device is \(found.path)")
            }
            record.device = device?.number
            let link = configuration.linkDirectory + "/" + record.name
            if let device {
                if resolveLink(link) != device.path {
                    try? self.link(record.name, to: device)
                    report.linksFixed.append(record.name)
                }
            } else if Self.isStableName(link) {
                // A stable name of a LUN without a device would name whatever device takes that number.
                unlinkName(record.name)
                report.linksFixed.append(record.name)
            }
            if record != records[index] { try registry.save(record) }
            records[index] = record
            if deadChanges.removeValue(forKey: record.name) != nil { registry.removeMark(.changing, record.name) }
        }
        // Dead changes' marks of LUNs no longer there.
        for name in deadChanges.keys { registry.removeMark(.changing, name) }

        // Silo devices of this pool that no record claims (a crash between attach and register
        // whose record was already gone, or a registry restored from backup). One held open
        // keeps its backing file: removed, the device would stay bound to a deleted file that
        // nothing names, until the next reenumerate found it free.
        var heldFiles = Set<FileIdentity>()
        for (id, devices) in ours where damaged.isEmpty && !poolListDamaged {
            for device in devices {
                let binding = device.binding  // read before the detach: its file is kept if it stays bound
                do throws(SiloError) {
                    if try device.detach(expecting: LunRecord.tag(id: id)) {
                        report.orphanDevicesDetached.append("\(device.path) (silo:\(id))")
                    }
                } catch {
                    if let binding { heldFiles.insert(FileIdentity(device: binding.fileDevice, inode: binding.inode)) }
                    report.drift.append("\(device.path) (silo:\(id)) has no LUN but is in use (\(error.message)), its backing file is kept")
                }
            }
        }
        // Backing files no record names, told by identity (device and inode), not by path: a
        // record's path and the pool folder's listing may spell one folder two ways.
        // A record's path counts too: a provisioning in progress (a clone's copy) may not have
        // made its file yet when this set is taken.
        let named = Set(records.compactMap { FileIdentity(path: $0.backingFile) })
        let namedPaths = Set(records.map(\.backingFile))
        for pool in pools where damaged.isEmpty && !poolListDamaged {
            // Only pools of this state directory: one that another's marker names holds its files.
            if let owner = Self.poolOwner(of: pool.directory) {
                guard isThisStateDirectory(owner) else {
                    report.drift.append("pool '\(pool.name)' at \(pool.directory) is a pool of the state directory \(owner); its files are left alone")
                    continue
                }
            } else if pool.directory == configuration.poolDirectory
                        || records.contains(where: { $0.pool == pool.name && fileExists($0.backingFile) }) {
                try? claimPool(pool.directory)  // made before pools were marked
            } else {
                // No marker and none of its LUNs' files: its file system is not mounted (a mount
                // that failed at boot). Marked here, the folder under the mount point would take
                // new LUNs on the file system below, which a missing marker refuses; nor is
                // anything in it swept.
                report.drift.append("pool '\(pool.name)' at \(pool.directory) has no marker and none of its LUNs' files: "
                                    + "is its file system mounted? It is left alone")
                continue
            }
            for entry in directoryEntries(pool.directory) where Self.isBackingFileName(entry) {
                let path = pool.directory + "/" + entry
                if !namedPaths.contains(path), let identity = FileIdentity(path: path), !named.contains(identity) {
                    // A file another tool's device is bound to is that device's: kept, and said.
                    if let foreign = untagged[identity] {
                        report.drift.append("\(path) has no LUN but is bound to \(foreign.map(\.path).joined(separator: ", ")), which is not Silo's; it is kept")
                    } else if !heldFiles.contains(identity) {
                        try? BackingFile.remove(path)
                        report.orphanFilesRemoved.append(path)
                    }
                }
            }
        }
        // Stable names without a LUN (a damaged record's name is still its LUN's).
        let names = Set(records.map(\.name) + damaged.compactMap { error -> String? in
            guard let file = error.value?.split(separator: "/").last, file.hasSuffix(".json") else { return nil }
            return String(file.dropLast(".json".count))
        })
        for entry in directoryEntries(configuration.linkDirectory) where !names.contains(entry) && !entry.hasPrefix(".")
            && Self.isStableName(configuration.linkDirectory + "/" + entry) {
            unlinkName(entry)
            report.linksFixed.append(entry)
        }
        // What a killed process left half-written: a record's temporary copy
        // (`.<name>.json.<pid>.tmp`) or a stable name's (`.<name>.<pid>`), a minute old at least:
        // a writer is done with its copy in milliseconds, and one of another pid namespace (a
        // container sharing the state directory) may have a pid that means nothing here.
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        for (folder, pidField) in [(registry.directory, 2), (configuration.linkDirectory, 1)] {
            for entry in directoryEntries(folder, hidden: true) where entry.hasPrefix(".") {
                var fields = entry.split(separator: ".")
                if folder == registry.directory {
                    guard entry.hasSuffix(".tmp") else { continue }
                    fields.removeLast()
                } else if !Self.isStableName(folder + "/" + entry) {
                    continue  // the link folder may be a user's: only a link to a loop device is Silo's
                }
                var info = stat()
                guard fields.count > pidField, let pid = Int32(fields[fields.count - 1]), pid > 0,
                      lstat(folder + "/" + entry, &info) == 0, now.tv_sec - info.st_mtim.tv_sec >= 60,
                      kill(pid, 0) != 0, errno == ESRCH else { continue }
                unlink(folder + "/" + entry)
                report.repaired.append("\(folder)/\(entry): left by dead pid \(pid), removed")
            }
        }
        return report
    }

    /// Said of a LUN a process of another pid namespace is changing: its pid cannot be looked up
    /// here, so it is left alone, as a live call's would be.
    static func foreign(_ name: String, _ owner: LunRecord.Owner) -> String {
        "\(name): \(owner.operation) by pid \(owner.pid) of another pid namespace is changing it; left alone "
            + "(reenumerate from that namespace settles it if that process died)"
    }
}

/// A file's device and inode: the same file however its path is written.
struct FileIdentity: Hashable {
    let device: UInt64
    let inode: UInt64

    init(device: UInt64, inode: UInt64) {
        self.device = device
        self.inode = inode
    }

    init?(path: String) {
        var info = stat()
        guard stat(path, &info) == 0 else { return nil }
        device = UInt64(info.st_dev)
        inode = UInt64(info.st_ino)
    }
}
