import Glibc
import SiloOperations

extension StorageProvider {
    /// Creates LUN `name` as a copy of LUN `source`: instant by reflink (`FICLONE`) where the pool's
    /// file system supports it (XFS, btrfs), otherwise copying only the data the source holds,
    /// with progress and cancel. The new LUN has the source's size, block size and provisioning,
    /// and an empty unmasking list. Copy from a source that is not being written, for a
    /// consistent copy: Silo does not freeze it.
    public func cloneLun(
        _ source: String,
        as name: String,
        context: (any Sendable)? = nil,
        callback: OperationCallback<LunProperties>? = nil
    ) throws(SiloError) -> SiloOperation<LunProperties> {
        try Names.validate(name, field: "name", what: "a LUN name")
        let original = try record(named: source)
        guard original.state == .ready, fileExists(original.backingFile) else {
            throw SiloError(.invalidOperation, "LUN '\(source)' cannot be cloned: it is not ready or its file is missing",
                            field: "source", value: source)
        }
        let id = newIdentifier()
        let pool = (try? pool(named: original.pool)) ?? self.pool  // beside the source: reflink needs one file system
        let file = pool.directory + "/" + id + ".img"
        let record = LunRecord(
            id: id, name: name, friendlyName: original.friendlyName, size: original.size,
            blockSize: original.blockSize, provisioning: original.provisioning, readOnly: original.readOnly,
            directIO: original.directIO, unmasking: .nobody, backingFile: file, pool: original.pool,
            state: .creating, online: true, device: nil,
            owner: ProcessIdentity.current(operation: "cloneLun"), createdAt: nowSeconds()
        )
        try registry.locked { () throws(SiloError) in
            if try registry.load(name) != nil {
                throw SiloError(.invalidArgument, "a LUN named '\(name)' already exists", field: "name", value: name)
            }
            // Without reflink the copy takes what the source has allocated.
            let needed = BackingFile.allocatedBytes(original.backingFile)
            let free = try pool.capacity().free
            guard needed + allocationHeadroom <= free else {
                throw SiloError(.notEnoughSpace, "not enough space to clone '\(source)': it holds \(ByteCount.format(needed)), "
                                + "\(ByteCount.format(free)) is free", field: "source", value: source)
            }
            try registry.save(record, durable: false)
        }
        let chain = OperationChain<LunProperties>([
            OperationStep("copy", weight: 90, run: { step in
                _ = try BackingFile.clone(original.backingFile, to: file,
                                          progress: { step.reportProgress(completed: $0, of: $1) },
                                          cancelled: { step.isCancelled })
            }, rollback: {
                try BackingFile.remove(file)
            }),
        ] + attachSteps(record), output: { [self] in try lun(named: name) }, cleanup: { [registry] in
            try registry.removeReservation(record, file: nil)  // the copy's rollback removes the file
        })
        do {
            return try configuration.scheduler.run(.cloneLun, chain: chain, context: context, callback: callback)
        } catch {
            try? registry.remove(name)
            throw error
        }
    }
}
