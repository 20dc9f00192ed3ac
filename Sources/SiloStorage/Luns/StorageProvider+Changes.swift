import Glibc
import SiloOperations

extension StorageProvider {
    /// Deletes a LUN [IVdsLun::Delete]: detach, remove the record, unlink its name, remove the
    /// backing file.
    ///
    /// The call checks the LUN and marks it with a delete mark beside its record
    /// (`LunRegistry.placeMark`) under the registry lock, which keeps other changes off it
    /// (S12); the operation unbinds the device and removes the record under the lock, then the
    /// mark, the name and the backing file (were this process to die first, reenumerate removes
    /// the file as an orphan and the mark as a dead one's).
    ///
    /// - Parameter force: reserved; a LUN in use is never deleted.
    /// - Throws: at once, `deviceInUse` when the LUN is mounted, held open, holds other devices,
    ///   or is attached to a compute system (a live ``LunLease``; detach it first) (S10); `objectNotFound` for an unknown name; `anotherCallInProgress` while another call runs.
    public func deleteLun(
        _ name: String,
        force: Bool = false,
        context: (any Sendable)? = nil,
        callback: OperationCallback<Void>? = nil
    ) throws(SiloError) -> SiloOperation<Void> {
        try deleteLun(name, force: force, id: nil, context: context, callback: callback)
    }

    /// `id`, when given, must be the LUN's under the lock (a ``LunHandle``'s: the name may have
    /// been deleted and made again since the handle was opened).
    func deleteLun(_ name: String, force: Bool, id: String?, context: (any Sendable)?,
                   callback: OperationCallback<Void>?) throws(SiloError) -> SiloOperation<Void> {
        try Names.validate(name, field: "name", what: "a LUN name")
        let owner = try ProcessIdentity.current(operation: "deleteLun")
        let record = try registry.locked(missing: .notFound("LUN", field: "name", value: name), givingUp: true) {
            () throws(SiloError) -> LunRecord in
            let record = try self.record(named: name)
            try Self.check(record, isLun: id)
            try checkChangeable(record)
            try checkUnused(record)
            try registry.placeMark(.deleting, name, owner: owner)
            return record
        }
        do {
            return try configuration.scheduler.run(.deleteLun, context: context, callback: callback, cancellable: false,
                                                   withdrawn: { [registry] in registry.removeMark(.deleting, name) }) {
                [self] _ in
                do {
                    // The mark kept the record as it was read. The unbind refuses a device
                    // anything holds open (a mount, a holder, a system's lease, a process), the
                    // way it refuses a lazy detach.
                    // The mark and the stable name go under the same lock as the record: once
                    // it is let go, a create may take the name, and a delete of that LUN mark it.
                    try registry.locked { () throws(SiloError) in
                        try refuseForeignUse(record)  // here, where nothing of the LUN has gone yet
                        let device = attachedDevice(record, everywhere: true)
                        try unleased(name, device: device) { () throws(SiloError) in
                            if let device {
                                try releasing(name, device) { () throws(SiloError) in
                                    try device.unbind(expecting: record.tag)
                                }
                            }
                            try registry.removeHoldingLock(name, durable: false)
                        }
                        registry.removeMark(.deleting, name)
                        unlinkName(name)
                    }
                } catch {
                    registry.removeMark(.deleting, name)
                    throw error
                }
                try BackingFile.remove(record.backingFile)
                try registry.syncFolder()
            }
        } catch {
            registry.removeMark(.deleting, name)
            throw error
        }
    }

    /// - Throws: `deviceInUse` when the LUN's device is mounted, held open or holds other devices,
    ///   or the LUN is attached to a compute system (S10).
    private func checkUnused(_ record: LunRecord) throws(SiloError) {
        let device = attachedDevice(record, everywhere: true)
        if let use = use(of: record.name, device: device) {
            throw SiloError(.deviceInUse, "LUN '\(record.name)' is in use as \(device?.path ?? "a file") (\(use)); release it first",
                            field: "name", value: record.name)
        }
    }

    /// A LUN whose backing file another tool's loop device is bound to (a `losetup` by hand) is in
    /// use by it: its file is not bound again, removed or cut under that device, whose reads and
    /// writes go to it, and the device is not Silo's to detach (S13).
    /// - Throws: `code` (`deviceInUse` by default), naming the device.
    func refuseForeignUse(_ record: LunRecord, code: SiloError.Code = .deviceInUse) throws(SiloError) {
        let foreign = Self.foreignDevices(of: record)
        guard !foreign.isEmpty else { return }
        throw SiloError(code, "LUN '\(record.name)' is in use: its backing file is bound to \(foreign.map(\.path).joined(separator: ", ")), "
                        + "which is not Silo's; detach that device first (losetup -d)",
                        field: "name", value: record.name)
    }

    /// Grows a LUN online [IVdsLun::Extend]: the backing file grows (allocated or zeroed to match
    /// its provisioning), then `LOOP_SET_CAPACITY` tells the device, which stays attached and mounted (S8).
    /// Give `by` or `to`; the new size is rounded up to the block size.
    public func extendLun(
        _ name: String,
        by growth: UInt64? = nil,
        to target: UInt64? = nil,
        context: (any Sendable)? = nil,
        callback: OperationCallback<LunProperties>? = nil
    ) throws(SiloError) -> SiloOperation<LunProperties> {
        try extendLun(name, by: growth, to: target, id: nil, context: context, callback: callback)
    }

    func extendLun(_ name: String, by growth: UInt64?, to target: UInt64?, id: String?, context: (any Sendable)?,
                   callback: OperationCallback<LunProperties>?) throws(SiloError) -> SiloOperation<LunProperties> {
        // Worked out from the record under the lock that marks it: one read before could be
        // stale by a change that ended meanwhile (an extend "to" would then cut its growth off).
        // What the arguments alone tell is refused before the lock, where settling a dead change
        // would already change the host for a call that cannot run (E3).
        try Self.checkGrowth(by: growth, to: target)
        var extended: UInt64 = 0
        let (record, mark) = try beginChange(name, operation: "extendLun") { (current) throws(SiloError) in
            try Self.check(current, isLun: id)
            try refuseWhileCloned(name, what: "extend")
            extended = try extendedSize(current, by: growth, to: target)
            try checkCapacity(for: extended - current.size, provisioning: current.provisioning, field: growth == nil ? "to" : "by",
                              value: "\(growth ?? target ?? 0)",
                              pool: (try? pool(named: current.pool)) ?? pool)
            // A thin LUN's promise is its file's size, which the next check sums: grown here, under
            // the lock, as a create makes its file, or two extends at once would both pass a check
            // the two together fail (thick and zeroed growth is checked against free space, and
            // its allocation fails when it is not there). The change's mark is in place already:
            // killed from here on, the extend is settled by the file's size.
            if current.provisioning == .thin {
                do throws(SiloError) {
                    try BackingFile.resize(current.backingFile, to: extended)
                } catch {
                    throw BackingFile.spaceError(error, path: current.backingFile, size: extended)
                }
            }
        }
        let newSize = extended
        // Until the device has grown, a failure or cancel gives the reserved growth back (the
        // record then takes the file's size).
        let resized = StepValue<Bool>()
        let giveBack: @Sendable () -> Void = { [record] in
            if record.provisioning == .thin, resized.value != true { try? BackingFile.resize(record.backingFile, to: record.size) }
        }
        let chain = OperationChain<LunProperties>([
            OperationStep("grow backing file", weight: record.provisioning == .zeroed ? 90 : 2, run: { step in
                try BackingFile.resize(record.backingFile, to: newSize)
                do throws(SiloError) {
                    switch record.provisioning {
                    // Durable before the record says the new size, which is fsync'd: else a power
                    // loss could leave a record of 15G over a file of 10G, a thick LUN without the
                    // space it reserved (zeroing syncs its data and the file's size with it).
                    case .thin: try BackingFile.sync(record.backingFile)
                    case .thick:
                        try BackingFile.allocate(record.backingFile, from: record.size, to: newSize)
                        try BackingFile.sync(record.backingFile)
                    case .zeroed:
                        try BackingFile.allocate(record.backingFile, from: record.size, to: newSize)
                        try BackingFile.zero(record.backingFile, from: record.size, to: newSize,
                                             progress: { step.reportProgress(completed: $0, of: $1) },
                                             cancelled: { step.isCancelled })
                    }
                } catch {
                    // This step did not complete, so no rollback runs for it: it undoes its own growth.
                    try? BackingFile.resize(record.backingFile, to: record.size)
                    throw error
                }
            }, rollback: {
                try BackingFile.resize(record.backingFile, to: record.size)
            }),
            // The commit is the capacity change alone: a check that failed within the same step
            // would roll the file back under a device that already grew.
            OperationStep("resize device", weight: 1, pointOfNoReturn: true, run: { [self] _ in
                resized.set(true)
                try attachedDevice(record, everywhere: true)?.refreshCapacity(expecting: record.tag)
            }),
            OperationStep("check device", weight: 0, run: { [self] _ in
                try checkDeviceSize(record, expecting: newSize)
            }),
            OperationStep("register", weight: 1, run: { [self] _ in
                try endChange(name, mark: mark) { $0.size = newSize }
            }),
        ], output: { [self] in try lun(named: name) }, cleanup: { [self] in
            giveBack()
            try endChange(name, mark: mark, sizedByFile: record)
        })
        do throws(SiloError) {
            return try configuration.scheduler.run(.extendLun, chain: chain, context: context, callback: callback)
        } catch {
            // Refused at once: the growth goes back before the mark, which keeps other changes off.
            giveBack()
            try? endChange(name, mark: mark)
            throw error
        }
    }

    /// Removes bytes from the end of a LUN [IVdsLun::Shrink]. Data before the new end is kept.
    ///
    /// - Parameter force: shrink even over a mounted file system or data that reaches past the new end.
    /// - Throws: at once, `invalidShrinkSize` when `bytes` is zero or not less than the size;
    ///   `shrinkOverData` when a file system or partition found by libblkid ends past the new end,
    ///   or the LUN is mounted, unless `force` (S9).
    public func shrinkLun(
        _ name: String,
        by bytes: UInt64,
        force: Bool = false,
        context: (any Sendable)? = nil,
        callback: OperationCallback<LunProperties>? = nil
    ) throws(SiloError) -> SiloOperation<LunProperties> {
        try shrinkLun(name, by: bytes, force: force, id: nil, context: context, callback: callback)
    }

    func shrinkLun(_ name: String, by bytes: UInt64, force: Bool, id: String?, context: (any Sendable)?,
                   callback: OperationCallback<LunProperties>?) throws(SiloError) -> SiloOperation<LunProperties> {
        // From the record under the lock that marks it (see extendLun); nothing at all before it.
        if bytes == 0 {
            throw SiloError(.invalidShrinkSize, "cannot shrink LUN '\(name)' by 0 B: the amount must be more than zero",
                            field: "by", value: "0")
        }
        var shrunk: UInt64 = 0
        let (record, mark) = try beginChange(name, operation: "shrinkLun") { (current) throws(SiloError) in
            try Self.check(current, isLun: id)
            try refuseWhileCloned(name, what: "shrink")
            let block = UInt64(current.blockSize)
            // Rounded only below the size (8 EiB at most): near UInt64.max the rounding overflowed.
            let removed = bytes >= current.size || bytes.isMultiple(of: block) ? bytes : (bytes / block + 1) * block
            guard bytes > 0, removed < current.size else {
                throw SiloError(
                    .invalidShrinkSize,
                    "cannot shrink LUN '\(name)' of \(ByteCount.format(current.size)) by \(ByteCount.format(bytes)): "
                        + "the amount must be more than zero and less than the size",
                    field: "by", value: "\(bytes)"
                )
            }
            shrunk = current.size - removed
        }
        let newSize = shrunk
        do throws(SiloError) {
            // Not even forced: --force answers for Silo's own device, not for another tool's,
            // nor for a compute system that Silo gave the LUN to (a lease).
            try refuseForeignUse(record, code: .shrinkOverData)
            try refuseLeased(name)
            if !force { try guardData(record, newSize: newSize) }
        } catch {
            try? endChange(name, mark: mark)
            throw error
        }
        let chain = OperationChain<LunProperties>([
            // Cutting the file loses what lies past the cut: there is no undoing it.
            OperationStep("cut backing file", weight: 2, pointOfNoReturn: true, run: { [self] _ in
                let device = attachedDevice(record, everywhere: true)
                // Checked again where a lease cannot be taken meanwhile: a system may have been
                // given the LUN (and mounted it) since the call's check. Forced too: --force
                // answers for a mount or data the caller knows of, not for a running system that
                // Silo itself gave the LUN to.
                try unleased(name, device: device) { () throws(SiloError) in
                    if !force, let device, let use = InUse.check(device) {
                        throw SiloError(.shrinkOverData, "LUN '\(name)' is in use (\(use)); release it or pass --force",
                                        field: "name", value: name)
                    }
                    try cut(record, to: newSize, device: device)
                }
            }),
            OperationStep("register", weight: 1, run: { [self] _ in
                // The cut durable before the record that says it (see extend).
                try BackingFile.sync(record.backingFile)
                try endChange(name, mark: mark) { $0.size = newSize }
            }),
        ], output: { [self] in try lun(named: name) }, cleanup: { [self] in try endChange(name, mark: mark, sizedByFile: record) })
        return try runChange(name, mark: mark, .shrinkLun, chain: chain, context: context, callback: callback)
    }

    /// Replaces the unmasking list [IVdsLun::SetMask]: `*` every compute system, `""` none, or
    /// `;`-separated system ids (S11). Never accumulates.
    @discardableResult
    public func setMask(_ name: String, _ list: String) throws(SiloError) -> LunProperties {
        let unmasking = try UnmaskingList.parse(list)
        let mark = try beginChange(name, operation: "setMask").mark
        do throws(SiloError) {
            // A system the LUN is attached to keeps it only while the list names it: one the new
            // list leaves out is refused here, not left holding a LUN it may no longer see (S11).
            // Checked and written under the lease lock (after the registry's, the order a delete
            // takes them in): an attach leases first and reads the list again under its lease, so
            // it either is seen here or sees the new list.
            try registry.locked { () throws(SiloError) in
                try underLeaseLock { () throws(SiloError) in
                    let holders = liveHolders(name)
                    if let holder = holders.first(where: { Self.system(ofHolder: $0).map { !unmasking.contains(system: $0) } ?? false }),
                       let system = Self.system(ofHolder: holder) {
                        // A raw LUN's lease stays with its system until it stops (a process inside
                        // may hold the node): a detach does not end it.
                        let release = holder.hasSuffix(" (raw)") ? "stop that system first (a raw LUN stays leased to it until it stops)"
                            : "detach it there first ('silo system modify \(system) --detach \(name)')"
                        throw SiloError(.deviceInUse,
                                        "LUN '\(name)' is attached to compute system '\(system)', which the list '\(list)' leaves out; "
                                            + release + ", or keep it on the list",
                                        field: "unmasking list", value: list)
                    }
                    guard var record = try registry.load(name) else { throw SiloError.notFound("LUN", field: "name", value: name) }
                    guard record.unmasking != unmasking else { return }
                    record.unmasking = unmasking
                    try registry.save(record)
                }
            }
            try endChange(name, mark: mark)
        } catch {
            // The change failed to land (a full disk): the mark must not outlive the call, or the
            // LUN stays busy for as long as this process lives.
            try? endChange(name, mark: mark)
            throw error
        }
        return try lun(named: name)
    }

    /// Takes a LUN offline (detaches its loop device, keeps the data) or back online
    /// [IVdsLun::SetStatus]. Online also repairs a LUN left detached, as after a reboot.
    public func setOnline(
        _ name: String,
        _ online: Bool,
        context: (any Sendable)? = nil,
        callback: OperationCallback<LunProperties>? = nil
    ) throws(SiloError) -> SiloOperation<LunProperties> {
        let (record, mark) = try beginChange(name, operation: online ? "online" : "offline")
        let device = attachedDevice(record, everywhere: true)
        if !online, let use = use(of: name, device: device) {
            try? endChange(name, mark: mark)
            throw SiloError(.deviceInUse, "LUN '\(name)' is in use as \(device?.path ?? "a file") (\(use)); release it first",
                            field: "name", value: name)
        }
        if online, !fileExists(record.backingFile) {
            try? endChange(name, mark: mark)
            throw SiloError(.objectDeleted, "the backing file of LUN '\(name)' is gone: \(record.backingFile)",
                            field: "name", value: name)
        }
        return try startChange(name, mark: mark, .recoverLun, context: context, callback: callback, cancellable: false) { [self] _ in
            if online {
                // A device found gets its stable name put right where it does not name it (the
                // record named another number, or the name was removed: an offline killed
                // between its unlink and its detach, or a hand).
                if let device, device.number != record.device {
                    try link(name, to: device)
                } else if let device, resolveLink(configuration.linkDirectory + "/" + name) != device.path {
                    try? link(name, to: device)  // a repair: where something else stands, the online still holds
                }
                let attached = device == nil ? try attach(record) : nil
                do throws(SiloError) {
                    try endChange(name, mark: mark) {
                        $0.online = true
                        $0.device = (device ?? attached)?.number
                    }
                } catch {
                    // A record that cannot say online must not be left with a device it does not
                    // name: the one this call bound goes, and its stable name with it.
                    if let attached {
                        unlinkName(name)  // first, as a delete's (`releasing`)
                        _ = try? attached.unbind(expecting: record.tag)  // this call's: no in-use check to refuse it
                    }
                    throw error
                }
            } else {
                try unleased(name, device: device) { () throws(SiloError) in
                    if let device {
                        try releasing(name, device) { () throws(SiloError) in try device.detach(expecting: record.tag) }
                    }
                }
                unlinkName(name)
                try endChange(name, mark: mark) {
                    $0.online = false
                    $0.device = nil
                }
            }
            return try lun(named: name)
        }
    }

    // MARK: Helpers

    /// - Throws: `objectDeleted` when `record` is no longer the LUN `id` (nil: any).
    static func check(_ record: LunRecord, isLun id: String?) throws(SiloError) {
        guard let id, record.id != id else { return }
        throw SiloError(.objectDeleted, "LUN '\(record.name)' (\(id)) was deleted; the name is another LUN's now",
                        field: "name", value: record.name)
    }

    func attach(_ record: LunRecord) throws(SiloError) -> LoopDevice {
        // Two devices over one file, one with direct I/O and one through the page cache, would
        // each miss the other's writes.
        try refuseForeignUse(record)
        let device = try LoopDevice.attach(backing: record.backingFile, options: record.loopOptions).device
        do throws(SiloError) {
            try link(record.name, to: device)
        } catch {
            // This call's device, just bound: no in-use check refuses its unbinding (reenumerate
            // detaches it, the record saying offline, if even that fails).
            do throws(SiloError) {
                _ = try device.unbind(expecting: record.tag)
            } catch let unbound {
                throw error.adding(.init(message: "its device \(device.path) could not be unbound (\(unbound.message)); "
                                         + "`silo storage reenumerate` detaches it", source: "rollback"))
            }
            throw error
        }
        return device
    }

    /// The devices bound to a LUN's backing file that do not carry its tag.
    static func foreignDevices(of record: LunRecord) -> [LoopDevice] {
        LoopDevice.bound(toFile: record.backingFile).filter { $0.tag != record.tag }.map(\.device)
    }

    /// Exactly one of `by` and `to`, and a growth of more than nothing.
    private static func checkGrowth(by growth: UInt64?, to target: UInt64?) throws(SiloError) {
        if growth == 0 { throw SiloError.invalidArgument(field: "by", value: "0", reason: "must be greater than zero") }
        if (growth == nil) == (target == nil) {
            throw SiloError.invalidArgument(field: "by", value: "\(growth.map(String.init) ?? "")", reason: "give exactly one of 'by' and 'to'")
        }
    }

    private func extendedSize(_ record: LunRecord, by growth: UInt64?, to target: UInt64?) throws(SiloError) -> UInt64 {
        let block = UInt64(record.blockSize)
        func rounded(_ value: UInt64) -> UInt64 { value.isMultiple(of: block) ? value : (value / block + 1) * block }
        switch (growth, target) {
        case (let growth?, nil):
            let (sum, overflow) = record.size.addingReportingOverflow(growth)
            guard !overflow, sum <= ByteCount.maximum - block else {
                throw SiloError.invalidArgument(field: "by", value: "\(growth)", reason: "the LUN would exceed 8 EiB")
            }
            return rounded(sum)
        case (nil, let target?):
            guard target <= ByteCount.maximum - block else {
                throw SiloError.invalidArgument(field: "to", value: "\(target)", reason: "larger than the 8 EiB a file can hold")
            }
            let size = rounded(target)
            guard size > record.size else {
                throw SiloError.invalidArgument(
                    field: "to", value: "\(target)",
                    reason: "must be larger than the current size \(ByteCount.format(record.size)) (\(record.size) bytes)"
                )
            }
            return size
        default:
            throw SiloError.invalidArgument(field: "by", value: "\(growth.map(String.init) ?? "")",
                                            reason: "give exactly one of 'by' and 'to'")
        }
    }

    /// Cuts a LUN's file to `size`, its device first: capped at the new end before the file is
    /// cut, and uncapped after. A write past the new end while the file was cut and before the
    /// device learned it went into the file past its end and grew it back, and the shrink failed
    /// after its point of no return (a writer of the last blocks did it in every run of the test).
    /// The cap alone is not enough: a write checked against the old size just before the cap may
    /// still be on its way to the device's queue (waiting while the kernel freezes it), and land
    /// after the cut. Each setting of the cap or its removal drains that queue, so the file is
    /// cut and the queue drained until the file keeps its size, and checked again once the cap is
    /// gone: the removal sizes the device by its file, and a straggler that landed just then made
    /// the device its old size again (Linux 6.1, a writer of the last block under emulation, 1
    /// shrink in 24). Then it all starts again.
    private func cut(_ record: LunRecord, to size: UInt64, device: LoopDevice?) throws(SiloError) {
        guard let device else { return try BackingFile.resize(record.backingFile, to: size) }
        do throws(SiloError) {
            for _ in 0..<10 {
                try device.limitSize(to: size, expecting: record.tag)
                try BackingFile.resize(record.backingFile, to: size)
                try device.limitSize(to: size, expecting: record.tag)  // what got in before the cap lands
                guard BackingFile.size(record.backingFile) == size else { continue }
                // A cap left behind (this process killed before here, or a call failing) is taken
                // away by the next refresh of the device: an extend's, or the settling of this change.
                try device.limitSize(to: 0, expecting: record.tag)
                try device.limitSize(to: 0, expecting: record.tag)  // and what got in since
                // The device is checked here, once: the cut leaves it at its file's size.
                if BackingFile.size(record.backingFile) == size, device.size == size { return }
            }
        } catch {
            try? device.limitSize(to: 0, expecting: record.tag)  // the device is its file's size again
            throw error
        }
        throw SiloError(.unexpected, "\(device.path) and \(record.backingFile) did not keep the size they were cut to, \(size) bytes, "
                        + "in ten tries (writes past the new end?): the device reports \(device.size ?? 0), the file \(BackingFile.size(record.backingFile) ?? 0)",
                        field: "device", value: device.path)
    }

    /// Confirms the LUN's device took its new capacity.
    private func checkDeviceSize(_ record: LunRecord, expecting size: UInt64) throws(SiloError) {
        guard let device = attachedDevice(record, everywhere: true) else { return }
        let now = device.size ?? 0
        guard now == size else {
            throw SiloError(.unexpected, "\(device.path) reports \(now) bytes after resizing to \(size)",
                            field: "device", value: device.path)
        }
    }

    /// Refuses a shrink that would cut a LUN in use (mounted anywhere, held open, under another
    /// device, swap, attached to a compute system) or data libblkid finds past the new end.
    private func guardData(_ record: LunRecord, newSize: UInt64) throws(SiloError) {
        let device = attachedDevice(record, everywhere: true)
        if let device, let number = device.deviceNumber, let mount = InUse.mountPoints(of: number).first {
            throw SiloError(.shrinkOverData, "LUN '\(record.name)' is mounted on \(mount); unmount it or pass --force",
                            field: "name", value: record.name)
        }
        // A file system smaller than the LUN, mounted in a system's own mount namespace, or a
        // mapping over it with no signature of its own: nothing on the device says where it ends.
        // (A system's lease was refused before, forced or not: `refuseLeased`.)
        if let use = device.flatMap({ InUse.check($0) }) {
            throw SiloError(.shrinkOverData, "LUN '\(record.name)' is in use (\(use)); release it or pass --force",
                            field: "name", value: record.name)
        }
        // An offline LUN is read from its file, at its own sector size.
        let probe = try BlockProbe.probe(path: device?.path ?? record.backingFile, sectorSize: device == nil ? record.blockSize : nil)
        let end = probe.dataEnd(deviceSize: record.size)
        guard end <= newSize else {
            if probe.ambiguous {
                throw SiloError(.shrinkOverData,
                                "LUN '\(record.name)' holds data Silo cannot tell the end of (libblkid found more than one signature, "
                                    + "or could not read the device); shrink the data first or pass --force",
                                field: "by", value: "\(record.size - newSize)")
            }
            let what = probe.filesystemType.map { "a \($0) file system" } ?? "a \(probe.partitionTableType ?? "partition") table"
            throw SiloError(
                .shrinkOverData,
                "LUN '\(record.name)' holds \(what) that ends at \(end) bytes, past the new end at \(newSize); "
                    + "shrink the data first or pass --force",
                field: "by", value: "\(record.size - newSize)"
            )
        }
    }

    /// Runs a change as an operation; the owner mark is cleared whatever happens.
    private func startChange<Output: Sendable>(
        _ name: String,
        mark: UInt64,
        _ type: OperationType,
        context: (any Sendable)?,
        callback: OperationCallback<Output>?,
        cancellable: Bool,
        _ body: @escaping @Sendable (OperationDriver<Output>) throws -> Output
    ) throws(SiloError) -> SiloOperation<Output> {
        do {
            return try configuration.scheduler.run(type, context: context, callback: callback, cancellable: cancellable,
                                                   withdrawn: { [self] in try? endChange(name, mark: mark) }) {
                [self] driver in
                do {
                    return try body(driver)
                } catch {
                    try? endChange(name, mark: mark)
                    throw error
                }
            }
        } catch {
            try? endChange(name, mark: mark)
            throw error
        }
    }

    private func runChange(
        _ name: String,
        mark: UInt64,
        _ type: OperationType,
        chain: OperationChain<LunProperties>,
        context: (any Sendable)?,
        callback: OperationCallback<LunProperties>?
    ) throws(SiloError) -> SiloOperation<LunProperties> {
        do {
            return try configuration.scheduler.run(type, chain: chain, context: context, callback: callback)
        } catch {
            try? endChange(name, mark: mark)
            throw error
        }
    }
}

extension StorageProvider {
    /// The host's drives [IVdsProvider's drives], with the pool and the LUN extents on each.
    public func drives() throws(SiloError) -> [Drive] {
        let records = (try? registry.loadAll()) ?? []
        var drives = try DriveEnumerator(probeTimeout: configuration.probeTimeout).drives(luns: records)
        for pool in allPools().reversed() {
            guard let id = driveID(of: pool, in: drives), let index = drives.firstIndex(where: { $0.id == id }) else { continue }
            drives[index].pool = pool.directory  // the first pool on the drive
            drives[index].pools.insert(pool.name, at: 0)
        }
        return drives
    }

    /// One drive by id, or by kernel name (`vda`) or device path (`/dev/vda`).
    public func drive(_ key: String) throws(SiloError) -> Drive {
        guard let drive = try drives().first(where: { $0.id == key || $0.name == key || $0.devicePath == key }) else {
            throw SiloError(.objectNotFound, "no drive with id, name or path '\(key)'", field: "drive", value: key)
        }
        return drive
    }
}
