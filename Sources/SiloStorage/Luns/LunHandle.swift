import SiloOperations

/// A handle on one LUN, bound to its id [IVdsLun]: once the LUN is deleted, every call throws
/// `objectDeleted` (S10), even if a new LUN takes the same name.
public struct LunHandle: Sendable {
    public let id: String
    public let name: String
    let provider: StorageProvider

    public func properties() throws(SiloError) -> LunProperties {
        guard let record = try provider.registry.load(name), record.id == id else {
            throw SiloError(.objectDeleted, "LUN '\(name)' (\(id)) was deleted", field: "name", value: name)
        }
        return provider.properties(of: record)
    }

    // Each checks its id where it takes the registry lock: a check before, then a call by name,
    // would act on another LUN that took the name between the two.

    public func extend(by bytes: UInt64) throws(SiloError) -> SiloOperation<LunProperties> {
        _ = try properties()
        return try provider.extendLun(name, by: bytes, to: nil, id: id, context: nil, callback: nil)
    }

    public func shrink(by bytes: UInt64, force: Bool = false) throws(SiloError) -> SiloOperation<LunProperties> {
        _ = try properties()
        return try provider.shrinkLun(name, by: bytes, force: force, id: id, context: nil, callback: nil)
    }

    public func delete(force: Bool = false) throws(SiloError) -> SiloOperation<Void> {
        _ = try properties()
        return try provider.deleteLun(name, force: force, id: id, context: nil, callback: nil)
    }
}

extension StorageProvider {
    /// A handle on the LUN named `name`.
    public func open(_ name: String) throws(SiloError) -> LunHandle {
        let record = try record(named: name)
        return LunHandle(id: record.id, name: record.name, provider: self)
    }
}
