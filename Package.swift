// swift-tools-version: 6.1
import PackageDescription

let strict: [SwiftSetting] = [
    .swiftLanguageMode(.v6),
    .enableUpcomingFeature("ExistentialAny"),
]

let package = Package(
    name: "Silo",
    products: [
        // The umbrella module `Silo` arrives with the storage issue; until then the product
        // carries the operation model alone.
        .library(name: "Silo", targets: ["SiloOperations"]),
        .executable(name: "operations-tour", targets: ["OperationsTour"]),
    ],
    targets: [
        .target(name: "SiloOperations", swiftSettings: strict),
        .executableTarget(
            name: "OperationsTour",
            dependencies: ["SiloOperations"],
            path: "Examples/OperationsTour",
            swiftSettings: strict
        ),
        .executableTarget(
            name: "OperationsBench",
            dependencies: ["SiloOperations"],
            path: "Benchmarks/OperationsBench",
            swiftSettings: strict
        ),
        .testTarget(name: "SiloOperationsTests", dependencies: ["SiloOperations"], swiftSettings: strict),
    ]
)
