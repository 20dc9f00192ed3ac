import Glibc
import SiloOperations

extension StorageProvider {
    /// Creates LUN `name` as a copy of LUN `source`: instant by reflink (`FICLONE`) where the pool's
    /// file system supports it (XFS, btrfs), otherwise copying only the data the source holds,
    /// with progress and cancel. The new LUN has the source's size, block size and provisioning,
    /// and an empty unmasking list. Copy from a source that is not being written, for a
    /// consistent copy: Silo does not freeze it.
    ///
    /// While the copy reads the source's file, the clone holds a lease on the source (as a
    /// compute system it is attached to does): a delete or an offline of the source is refused
    /// (`deviceInUse`, "read by clone 'NAME'"), and so is an extend or a shrink
    /// (`anotherCallInProgress`), each of which would leave the copy with neither size. Clones
    /// of one source at once share it. A clone is refused while a change or a delete of the
    /// source runs.
    public func cloneLun(
        _ source: String,
        as name: String,
        context: (any Sendable)? = nil,
        callback: OperationCallback<LunProperties>? = nil
    ) throws(SiloError) -> SiloOperation<LunProperties> {
        try Names.validate(name, field: "name", what: "a LUN name")
        // The lease first, then the look for a live change: a change marks the LUN first, then
        // looks for clones (refuseWhileCloned), so of two at once at least one sees the other.
        // The record is read under the registry lock once leased: a change that ended before
        // the lease may have resized the file; a dead one is settled.
        let sourceLease: LunLease
        let original: LunRecord
        do throws(SiloError) {
            let sourceID = try self.record(named: source).id
            sourceLease = try lease(source, holder: Self.cloneHolder(name), id: sourceID)
            do throws(SiloError) {
                original = try registry.locked(givingUp: true) { () throws(SiloError) -> LunRecord in
                    let current = try self.record(named: source)
                    try checkChangeable(current)
                    guard current.id == sourceID, current.state == .ready, fileExists(current.backingFile) else {
                        throw SiloError(.invalidOperation, "LUN '\(source)' cannot be cloned: it is not ready or its file is missing",
                                        field: "source", value: source)
                    }
                    return try settlingDeadChange(current)
                }
            } catch {
                sourceLease.release()
                throw error
            }
        } catch {
            var named = error
            if named.field == "name" { named.field = "source" }  // not the new LUN's name
            throw named
        }
        let id = newIdentifier()
        // Beside the source (reflink needs one file system), in the pool its record names: a pool
        // list that cannot be read refuses, rather than the clone landing in the default pool
        // while its record names the source's.
        let pool: Pool
        do throws(SiloError) {
            pool = try self.pool(named: original.pool)
        } catch {
            sourceLease.release()
            throw error
        }
        let file = pool.directory + "/" + id + ".img"
        let record = LunRecord(
            id: id, name: name, friendlyName: original.friendlyName, size: original.size,
            blockSize: original.blockSize, provisioning: original.provisioning, readOnly: original.readOnly,
            directIO: original.directIO, unmasking: .nobody, backingFile: file, pool: original.pool,
            state: .creating, online: true, device: nil,
            owner: try ProcessIdentity.current(operation: "cloneLun"), createdAt: nowSeconds()
        )
        do throws(SiloError) {
            try checkOwned(pool)
            try reserveClone(record, of: original, source: source, pool: pool)
        } catch {
            sourceLease.release()
            throw error
        }
        var steps = [
            OperationStep("copy", weight: 90, run: { step in
                defer { sourceLease.release() }  // the source is read no more
                try BackingFile.remove(file)  // the reservation: the copy makes the file itself
                // What was written through the source's device and still sits in the device's own
                // page cache reaches its file first (a write of moments ago, a holder that keeps
                // the device open: the cache is flushed by an fsync or the last close only).
                if let device = self.attachedDevice(original) { try device.flush() }
                // A thick or zeroed LUN's space is its own: shared extents (a reflink) would need
                // new blocks at the first write to either LUN, which a full file system would refuse
                // as I/O errors inside them. Only a thin clone shares.
                _ = try BackingFile.clone(original.backingFile, to: file, reflink: original.provisioning == .thin,
                                          progress: { step.reportProgress(completed: $0, of: $1) },
                                          cancelled: { step.isCancelled })
            }),
        ]
        // A sparse copy leaves holes where a thick source had unwritten space: a thick or zeroed
        // clone is given all of its space, as its record says (fallocate keeps the data).
        if original.provisioning != .thin {
            steps.append(OperationStep("allocate", weight: 4, run: { _ in
                // What the copy wrote holds its space already: only the holes need it free.
                try BackingFile.allocate(file, from: 0, to: original.size, allocated: BackingFile.allocatedBytes(file))
            }))
        }
        let chain = OperationChain<LunProperties>(steps + attachSteps(record), output: { [self] in try lun(named: name) },
                                                  cleanup: { [self] in
            sourceLease.release()  // a cancel before the copy began
            try undoReservation(record, file: file)
        })
        do {
            return try configuration.scheduler.run(.cloneLun, chain: chain, context: context, callback: callback)
        } catch {
            sourceLease.release()
            try? BackingFile.remove(file)
            try? registry.remove(name)
            throw error
        }
    }

    /// The clone's reservation, as a create's: its record and its file, under the registry lock.
    private func reserveClone(_ record: LunRecord, of original: LunRecord, source: String, pool: Pool) throws(SiloError) {
        let name = record.name, file = record.backingFile
        try registry.locked(givingUp: true) { () throws(SiloError) in
            if try registry.load(name) != nil {
                throw SiloError(.invalidArgument, "a LUN named '\(name)' already exists", field: "name", value: name)
            }
            // What a create of its size and provisioning would need (a thin clone's size counts
            // against the overcommit ratio, a thick one's against free space)...
            try checkCapacity(for: original.size, provisioning: original.provisioning, field: "source", value: source, pool: pool)
            // ...and, without reflink, the copy takes what the source has allocated.
            let needed = BackingFile.allocatedBytes(original.backingFile)
            let free = try pool.capacity().free
            guard needed + allocationHeadroom <= free else {
                throw SiloError(.notEnoughSpace, "not enough space to clone '\(source)': it holds \(ByteCount.format(needed)), "
                                + "\(ByteCount.format(free)) is free", field: "source", value: source)
            }
            try registry.save(record, durable: false)
            // The clone's promise counts from now, as a create's file does (the copy makes it anew).
            do throws(SiloError) {
                try BackingFile.create(file, size: original.size)
            } catch {
                try? registry.removeHoldingLock(name, durable: false)
                throw error
            }
        }
    }
}
