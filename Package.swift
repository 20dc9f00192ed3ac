// swift-tools-version: 6.1
import PackageDescription

let strict: [SwiftSetting] = [
    .swiftLanguageMode(.v6),
    .enableUpcomingFeature("ExistentialAny"),
]

let package = Package(
    name: "Silo",
    products: [
        .library(name: "Silo", targets: ["Silo"]),
        .executable(name: "silo", targets: ["silo"]),
        .executable(name: "silo-init", targets: ["silo-init"]),
        .executable(name: "operations-tour", targets: ["OperationsTour"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-system", from: "1.4.0"),
    ],
    targets: [
        .target(name: "SiloOperations", swiftSettings: strict),
        .target(name: "CSiloLinux"),
        .target(name: "CSiloAgent"),
        // libudev and libblkid (headers from libudev-dev and libblkid-dev), opened when first used:
        // see Sources/CSiloProbe/include/silo_probe.h.
        .target(name: "CSiloProbe"),
        // The silo executable's command line, without the Swift runtime's read of /proc/self/maps.
        .target(name: "CSiloMain"),
        .target(
            name: "SiloStorage",
            dependencies: [
                "SiloOperations", "CSiloLinux", "CSiloProbe",
                .product(name: "SystemPackage", package: "swift-system"),
            ],
            swiftSettings: strict
        ),
        .target(name: "SiloCompute", dependencies: ["SiloOperations", "CSiloLinux", "CSiloAgent"], swiftSettings: strict),
        .target(name: "Silo", dependencies: ["SiloOperations", "SiloStorage", "SiloCompute"], swiftSettings: strict),
        // Init is C, but SwiftPM links it with swiftc: with the Swift runtime and dynamically
        // against libstdc++ and libm, which ld.so loads and relocates at every system's start.
        // Static, and with swift_image.c keeping the Swift runtime out, init and /bin/true take
        // 1.0 ms instead of 2.1 here, and an idle init 0.6 MiB instead of 3.8. Not PIE: glibc's
        // static-pie start refuses the rpath SwiftPM gives every executable. Release builds only
        // (what the scripts run): a sanitizer's runtime cannot link into a static executable, and
        // debug builds bind the Swift runtime's folder into systems instead.
        .executableTarget(
            name: "silo-init",
            dependencies: ["CSiloAgent"],
            path: "Sources/silo-init",
            // The entry point takes run mode before the C library starts (run_fast.c).
            linkerSettings: [.unsafeFlags(["-static-executable", "-Xlinker", "-e", "-Xlinker", "silo_init_entry"],
                                          .when(configuration: .release))]
        ),
        .executableTarget(
            name: "silo",
            dependencies: ["Silo", "CSiloLinux", "CSiloMain", .product(name: "ArgumentParser", package: "swift-argument-parser")],
            swiftSettings: strict
        ),
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
        .executableTarget(
            name: "StorageBench",
            dependencies: ["SiloStorage", "CSiloLinux"],
            path: "Benchmarks/StorageBench",
            swiftSettings: strict
        ),
        .executableTarget(
            name: "ComputeBench",
            dependencies: ["SiloCompute"],
            path: "Benchmarks/ComputeBench",
            swiftSettings: strict
        ),
        .testTarget(name: "SiloOperationsTests", dependencies: ["SiloOperations"], swiftSettings: strict),
        .testTarget(name: "SiloComputeTests", dependencies: ["SiloCompute", "CSiloAgent", "CSiloLinux"], swiftSettings: strict),
        .testTarget(
            name: "SiloCLITests",
            dependencies: ["silo", .product(name: "ArgumentParser", package: "swift-argument-parser")],
            swiftSettings: strict
        ),
        .testTarget(
            name: "SiloStorageTests",
            dependencies: ["SiloStorage", "CSiloLinux", .product(name: "SystemPackage", package: "swift-system")],
            swiftSettings: strict
        ),
    ]
)
