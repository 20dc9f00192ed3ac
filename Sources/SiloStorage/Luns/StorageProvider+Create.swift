import Glibc
import SiloOperations

extension StorageProvider {
    /// Creates a LUN [IVdsSubSystem::CreateLun]: reserve (the record and the sparse backing file),
    /// then a chain that allocates or zeroes it (with progress), attaches a loop device, links
    /// `/dev/silo/<name>`, and registers. Cancel or failure at any step removes the file, the
    /// device and the record (S7).
    ///
    /// Bad arguments, a taken name or too little space throw at once and change nothing (E3, S5).
    public func createLun(
        _ spec: LunSpec,
        context: (any Sendable)? = nil,
        callback: OperationCallback<LunProperties>? = nil
    ) throws(SiloError) -> SiloOperation<LunProperties> {
        try spec.validate()
        let pool = try placement(pool: spec.pool, drives: spec.drives)
        let size = spec.roundedSize
        let id = newIdentifier()
        let file = pool.directory + "/" + id + ".img"
        let record = LunRecord(
            id: id, name: spec.name, friendlyName: spec.friendlyName, size: size,
            blockSize: spec.logicalBlockSize, provisioning: spec.provisioning, readOnly: spec.readOnly,
            directIO: spec.directIO, unmasking: spec.unmasking, backingFile: file, pool: pool.name,
            state: .creating, online: true, device: nil,
            owner: try ProcessIdentity.current(operation: "createLun"), createdAt: nowSeconds()
        )
        // On a new state directory the lock below makes its folders: a size that cannot fit is
        // refused before, so a refused create leaves no state directory behind (E3).
        if !fileExists(configuration.lockFile) {
            try checkCapacity(for: size, provisioning: spec.provisioning, field: "size", pool: pool)
        }
        // The record is the intent: if this process dies from here on, reenumerate finds a
        // `creating` record whose owner is gone and removes everything it names (S15).
        try registry.locked(givingUp: true) { () throws(SiloError) in
            if try registry.load(spec.name) != nil {
                throw SiloError(.invalidArgument, "a LUN named '\(spec.name)' already exists", field: "name", value: spec.name)
            }
            try checkCapacity(for: size, provisioning: spec.provisioning, field: "size", pool: pool)
            try registry.save(record, durable: false)
            // The sparse file, at its full size, is the reservation the next create's capacity
            // check counts (promisedBytes), so it is made before the lock is let go.
            do throws(SiloError) {
                try BackingFile.create(file, size: size)
            } catch {
                try? registry.removeHoldingLock(spec.name, durable: false)
                throw error
            }
        }
        do {
            return try configuration.scheduler.run(
                .createLun, chain: creationChain(record, fileSystem: spec.fileSystem), context: context, callback: callback
            )
        } catch {
            try? BackingFile.remove(file)
            try? registry.remove(spec.name)
            throw error
        }
    }

    private func creationChain(_ record: LunRecord, fileSystem: LunFileSystem?) -> OperationChain<LunProperties> {
        let file = record.backingFile
        let size = record.size
        // The backing file was made with the reservation; a failed or cancelled chain removes it
        // in its cleanup, whichever step it stopped at.
        var steps: [OperationStep] = []
        switch record.provisioning {
        case .thin:
            break
        case .thick:
            steps.append(OperationStep("allocate", weight: 4, run: { _ in
                try BackingFile.allocate(file, from: 0, to: size)
            }))
        case .zeroed:
            steps.append(OperationStep("zero", weight: 90, run: { step in
                try BackingFile.allocate(file, from: 0, to: size)
                try BackingFile.zero(file, from: 0, to: size, progress: { step.reportProgress(completed: $0, of: $1) },
                                     cancelled: { step.isCancelled })
            }))
        }
        steps += attachSteps(record, fileSystem: fileSystem)
        // The record and the file made before the chain are the reservation: removed on any
        // failure or cancel before "register". Past it the LUN is made, and a failure after (its
        // properties could not be read) undoes nothing.
        return OperationChain(steps, output: { [self] in try lun(named: record.name) }, cleanup: { [self] in
            try undoReservation(record, file: file)
        })
    }

    /// Removes a failed or cancelled provisioning's record and backing file (while the record is
    /// still the provisioning's). A device the attach's rollback could not unbind (something
    /// opened it meanwhile) keeps them: removed, they would leave the device bound to a deleted
    /// file that no record names, shown by no `lun list`, until a reenumerate swept it as an
    /// orphan. Kept, the LUN is listed as creating, the error says why, and once this process
    /// ends it is a dead provisioning's, whose rollback reenumerate finishes when the device is free.
    ///
    /// The kept record names no owner: this process has given up on it, so reenumerate need not
    /// wait for the process to end, and a delete says it is half-created.
    func undoReservation(_ record: LunRecord, file: String) throws(SiloError) {
        // Only a reservation still this provisioning's: past "register" the LUN is made, and its
        // device is its own (a failure after, reading its properties, undoes nothing).
        guard let stored = try registry.load(record.name), stored.id == record.id, stored.state == .creating else { return }
        guard let device = LoopDevice.bound(naming: record.id).first(where: { $0.binding?.tag == record.tag }) else {
            return try registry.removeReservation(record, file: file)
        }
        try registry.locked { () throws(SiloError) in
            guard var kept = try registry.load(record.name), kept.id == record.id, kept.state == .creating else { return }
            kept.owner = nil
            try registry.save(kept)
        }
        throw SiloError(.deviceInUse, "\(device.path) of LUN '\(record.name)' could not be unbound (it is held open): "
                        + "its record and backing file stay until `silo storage reenumerate` finishes the rollback",
                        field: "name", value: record.name)
    }

    /// The last steps of every chain that makes a LUN: attach its loop device, make its file
    /// system if one was asked for, link its stable name, make its backing file durable, and
    /// register it as ready, which is the point of no return (the record is made durable only
    /// after the file it names).
    func attachSteps(_ record: LunRecord, fileSystem: LunFileSystem? = nil) -> [OperationStep] {
        let attachment = StepValue<LoopDevice.Attachment>()
        let attach = OperationStep("attach", weight: 2, run: { _ in
            var options = record.loopOptions
            options.syncFirst = true  // a file this call made
            attachment.set(try LoopDevice.attach(backing: record.backingFile, options: options))
        }, rollback: {
            try attachment.value?.device.detach(expecting: record.tag)
        })
        // What mkfs wrote is in the backing file, which the chain's cleanup removes: no rollback.
        let format = fileSystem.map { fileSystem in
            OperationStep("filesystem", weight: 4, run: { step in
                guard let device = attachment.value?.device else { return }
                try fileSystem.make(on: device, tag: record.tag, cancelled: { step.isCancelled })
            })
        }
        return [attach] + (format.map { [$0] } ?? []) + [
            OperationStep("link", weight: 1, run: { [self] _ in
                guard let device = attachment.value?.device else { return }
                try link(record.name, to: device)
            }, rollback: { [self] in
                unlinkName(record.name)
            }),
            OperationStep("sync", weight: 1, run: { [self] _ in
                // Where LOOP_CONFIGURE fsynced the file (LoopDevice.configureSyncsBackingFile),
                // another fsync finds nothing to write and still costs a device flush (cheap on this
                // project's VM, whose host absorbs a flush that carries nothing new; not measured on
                // other disks). Only for a direct-I/O device, for which the kernel must write the
                // page cache back before binding, and a pool on the registry's file system, whose
                // failure the record's fsync then reports; mkfs writes through the device after the
                // bind, so a formatted LUN syncs again.
                if fileSystem == nil, attachment.value?.directIO == true, LoopDevice.configureSyncsBackingFile,
                   sameFileSystem(record.backingFile, registry.directory) { return }
                try BackingFile.sync(record.backingFile)
            }),
            OperationStep("register", weight: 1, pointOfNoReturn: true, run: { [self] _ in
                do throws(SiloError) {
                    try endChange(record.name, mark: nil) { stored in
                        stored.state = .ready
                        stored.device = attachment.value?.device.number
                    }
                } catch {
                    guard let failed = reopenRegistration(record) else { throw error }
                    throw error.adding(.init(message: "the record could not be put back to creating (\(failed.message)): "
                                             + "`silo storage reenumerate` finds it ready with no device", source: "rollback"))
                }
            }),
        ]
    }

    /// Puts a provisioning's record back to `creating` when its "register" failed after the
    /// record's rename took (the folder's fsync failed): the step failed, so the chain rolls the
    /// device and the name back, and a record left `ready` would name a LUN with no device that
    /// the cleanup (which removes only a reservation still `creating`) keeps. Back to `creating`,
    /// the cleanup removes it with its file, as for any failure before the commit. Its owner is
    /// the provisioning again, so a reenumerate meanwhile leaves it to this rollback. A LUN that
    /// another call took up in the moment it was ready (marked for a change or a delete, or
    /// leased) is left to that call.
    /// - Returns: the error that kept the record from being put back, if any.
    func reopenRegistration(_ record: LunRecord) -> SiloError? {
        do throws(SiloError) {
            try registry.locked { () throws(SiloError) in
                guard var stored = try registry.load(record.name), stored.id == record.id, stored.state == .ready,
                      registry.mark(.changing, record.name) == nil, registry.mark(.deleting, record.name) == nil,
                      leaseHolders(record.name).isEmpty else { return }
                stored.state = .creating
                stored.device = nil
                stored.owner = record.owner
                try registry.save(stored, durable: false)
            }
            return nil
        } catch {
            return error
        }
    }

}

extension LunRecord {
    var loopOptions: LoopDevice.Options {
        LoopDevice.Options(logicalBlockSize: blockSize, readOnly: readOnly, directIO: directIO, tag: tag)
    }
}

/// Whether two paths are on one file system (one device number); false when either cannot be read.
func sameFileSystem(_ first: String, _ second: String) -> Bool {
    var one = stat(), two = stat()
    return stat(first, &one) == 0 && stat(second, &two) == 0 && one.st_dev == two.st_dev
}
