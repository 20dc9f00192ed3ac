import Glibc
import SiloOperations

/// A loop device of Silo's (tagged `silo:<LUN id>`) that no state directory claims: its state
/// directory, or its pool, was removed while it was attached. `storage reenumerate` cannot see it
/// (it sweeps only its own pools, and its state directory may be gone), so nothing else ever
/// detaches it.
public struct OrphanDevice: Sendable, Equatable, Codable {
    public var devicePath: String
    public var lunID: String
    /// As the kernel names it (without its " (deleted)").
    public var backingFile: String
    public var reason: String
    /// With a detach: whether it was detached; else why it was kept (in use).
    public var detached: Bool
    public var kept: String?
}

/// What `orphans(detach:)` found, and did.
public struct OrphanReport: Sendable, Equatable, Codable {
    public var devices: [OrphanDevice] = []
    /// Stable names (links under `/dev/silo` and `/dev/silo-*`) that name a loop device that is
    /// unbound, or not Silo's: whatever device takes the number next. Removed with a detach.
    public var staleNames: [String] = []
    /// Silo devices left alone because whether anyone claims them cannot be told (a registry that
    /// cannot be read, a damaged record), with why.
    public var undetermined: [String] = []
}

extension StorageProvider {
    /// Silo's loop devices on the whole host that no state directory claims, and the stable names
    /// that name no Silo device; with `detach`, the devices nothing holds are detached and those
    /// names removed.
    ///
    /// A device is claimed when a state directory has a record with its LUN id: the one its pool's
    /// marker names, this provider's, or the default one. Anything that cannot be read counts as
    /// claimed (reported, never detached). A device in use (mounted, held open, holding other
    /// devices) is kept. The data of a device whose backing file was deleted lives only in that
    /// device: once detached, it is gone.
    public func orphans(detach: Bool) throws(SiloError) -> OrphanReport {
        try orphans(detach: detach, backedUnder: nil)
    }

    /// `orphans(detach:)` for the devices whose backing file is under `prefix` only, and the
    /// stable names of those devices (tests: nothing else on the host is touched).
    func orphans(detach: Bool, backedUnder prefix: String?) throws(SiloError) -> OrphanReport {
        var report = OrphanReport()
        var registries: [String: Result<Set<String>, SiloError>] = [:]
        func ids(of stateDirectory: String) -> Result<Set<String>, SiloError>? {
            guard fileExists(stateDirectory) else { return nil }
            if let known = registries[stateDirectory] { return known }
            let registry = LunRegistry(configuration: StorageConfiguration(stateDirectory: stateDirectory))
            var damaged: [SiloError] = []
            let result: Result<Set<String>, SiloError>
            do throws(SiloError) {
                let records = fileExists(registry.directory) ? try registry.loadAll(damaged: &damaged) : []
                result = damaged.first.map { .failure($0) } ?? .success(Set(records.map(\.id)))
            } catch {
                result = .failure(error)
            }
            registries[stateDirectory] = result
            return result
        }
        for device in try LoopDevice.listed() {
            guard let binding = try device.readBinding(), binding.tag.hasPrefix("silo:") else { continue }
            let id = String(binding.tag.dropFirst(5))
            guard var file = readSmallFile(device.sysfs + "/loop/backing_file") else { continue }  // unbound since
            let deleted = file.hasSuffix(" (deleted)")
            if deleted { file.removeLast(" (deleted)".count) }
            if let prefix, !file.hasPrefix(prefix + "/") { continue }
            let folder = file.lastIndex(of: "/").map { String(file[..<$0]) } ?? file
            let marked = Self.poolOwner(of: folder)
            var claimants = [configuration.stateDirectory, StorageConfiguration.defaultStateDirectory]
            if let marked { claimants.insert(marked, at: 0) }
            var claimed = false
            var unknown: String?
            for stateDirectory in claimants {
                switch ids(of: stateDirectory) {
                case .success(let known)?: if known.contains(id) { claimed = true }
                case .failure(let error)?: unknown = "\(device.path) (silo:\(id)): the registry of \(stateDirectory) cannot be read (\(error.message))"
                case nil: break
                }
                if claimed { break }
            }
            if claimed { continue }
            if let unknown {
                report.undetermined.append(unknown)
                continue
            }
            let reason: String
            if let marked, fileExists(marked) {
                reason = "state directory \(marked) has no LUN with its id"
            } else if let marked {
                reason = "its state directory \(marked) is gone"
            } else if !fileExists(folder) {
                reason = "its pool folder \(folder) is gone"
            } else {
                reason = "its folder \(folder) is no pool of any state directory"
            }
            var orphan = OrphanDevice(devicePath: device.path, lunID: id, backingFile: file,
                                      reason: deleted ? reason + "; its backing file was deleted" : reason,
                                      detached: false, kept: nil)
            if detach {
                do throws(SiloError) {
                    orphan.detached = try device.detach(expecting: binding.tag)
                    if !orphan.detached { orphan.kept = "unbound or bound again meanwhile" }
                } catch {
                    orphan.kept = error.message
                }
            }
            report.devices.append(orphan)
        }
        // Stable names: under the default folder and every state directory's (/dev/silo-<hash>).
        let folders = ["/dev/silo"] + directoryEntries("/dev").filter { $0.hasPrefix("silo-") }.map { "/dev/" + $0 }
        let seen = Set(report.devices.map(\.devicePath))
        for folder in folders {
            var removed = false
            for name in directoryEntries(folder) {
                let link = folder + "/" + name
                guard Self.isStableName(link), let target = resolveLink(link),
                      let number = Int(target.dropFirst("/dev/loop".count)) else { continue }
                if prefix != nil, !seen.contains(target) { continue }
                if LoopDevice(number: number).binding?.tag.hasPrefix("silo:") == true { continue }
                report.staleNames.append(link)
                // Checked again just before: a create may have bound the number since.
                if detach, LoopDevice(number: number).binding?.tag.hasPrefix("silo:") != true, unlink(link) == 0 { removed = true }
            }
            // A state directory's folder of names goes when this emptied it, as its deletes leave it.
            if removed, folder != "/dev/silo" { rmdir(folder) }
        }
        return report
    }
}
