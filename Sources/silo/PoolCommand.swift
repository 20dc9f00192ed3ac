import ArgumentParser
import Silo

struct PoolCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "pool",
        abstract: "Pools: the folders, each on a drive's file system, that hold LUNs' backing files.",
        discussion: "'default' is <state-dir>/pool. A LUN goes to the pool named with --pool, else to the pool on its --drive, else to 'default'.",
        subcommands: [List.self, Add.self, Remove.self]
    )

    struct List: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "list", abstract: "Pools with their drive, size, free space and LUNs.")
        @OptionGroup var global: GlobalOptions
        @Flag(help: "Print JSON.") var json = false

        func run() throws {
            let pools = try cli { try global.provider.pools() }
            if json { return try printJSON(pools) }
            printTable(["NAME", "DRIVE", "SIZE", "FREE", "PROMISED", "LUNS", "DIRECTORY"], pools.map { pool in
                [pool.name, pool.drive, human(pool.totalBytes), human(pool.freeBytes), human(pool.promisedBytes), "\(pool.luns)", pool.directory]
            })
        }
    }

    struct Add: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "add", abstract: "Add a pool at a folder (made if missing), on whatever drive holds it.")
        @OptionGroup var global: GlobalOptions
        @Argument(help: "The pool's name.") var name: String
        @Argument(help: "An absolute folder path.") var directory: String
        @Flag(help: "Print JSON.") var json = false

        func run() throws {
            let pool = try cli(options: ["pool": "NAME", "directory": "DIRECTORY"]) { try global.provider.addPool(name, directory: directory) }
            if json { return try printJSON(pool) }
            print("pool '\(pool.name)' at \(pool.directory) on drive \(pool.drive ?? "-"): \(human(pool.freeBytes)) free of \(human(pool.totalBytes))")
        }
    }

    struct Remove: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "remove", abstract: "Forget a pool that holds no LUN (its folder stays).")
        @OptionGroup var global: GlobalOptions
        @Argument(help: "The pool's name.") var name: String

        func run() throws {
            try cli(options: ["pool": "NAME"]) { try global.provider.removePool(name) }
        }
    }
}
