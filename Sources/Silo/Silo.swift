// The umbrella: `import Silo` brings the operation model and the storage provider.
@_exported import SiloOperations
@_exported import SiloStorage
@_exported import SiloCompute
