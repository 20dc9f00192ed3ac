import ArgumentParser

/// The commands scripts and tests run in loops, read without ArgumentParser.
///
/// ArgumentParser builds its tables of a command's arguments by reflection, and the Swift runtime
/// answers each of those first questions by scanning every protocol conformance in the binary:
/// about 1 ms of a 2.5 ms start here, against 0.03 ms for the work of `lun list`. These few
/// commands are read by hand when they are written plainly: long options as `--name value` or
/// `--name=value` once each (repeatable ones as often as wanted), flags once, the positional
/// arguments the command takes, and the command after `--`. Anything else (help, a short
/// option, an unknown or repeated option, a value that starts with `-` or is empty, a missing
/// required value, a number that does not parse) returns nil and goes through ArgumentParser,
/// which then writes its usual message; so the two never disagree on a line they both accept.
/// `QuickParseTests` parses a corpus both ways and compares every field of the commands.
enum QuickParse {
    /// The arguments of one hot command, as its scan found them.
    struct Arguments {
        var values: [String: [String]] = [:]
        var flags: Set<String> = []
        var positionals: [String] = []
        var command: [String] = []

        func value(_ name: String) -> String? { values[name]?.last }
        func values(_ name: String) -> [String] { values[name] ?? [] }
        func flag(_ name: String) -> Bool { flags.contains(name) }

        var global: GlobalOptions {
            var global = GlobalOptions()
            global.stateDirectory = value("state-dir")
            return global
        }
    }

    /// What one hot command accepts, and how its command value is built from a scan.
    struct Shape: Sendable {
        let path: [String]
        var options: Set<String> = []
        var repeatable: Set<String> = []
        var flags: Set<String> = []
        var positionals = 0
        /// Takes the words after `--` as its command (`.postTerminator`).
        var takesCommand = false
        let make: @Sendable (Arguments) -> (any ParsableCommand)?
    }

    /// The command `arguments` (without the program's name) name, when a hot command's shape
    /// takes them all; nil sends them to ArgumentParser.
    static func parse(_ arguments: [String]) -> (any ParsableCommand)? {
        var rest = arguments[...]
        var globals: [String] = []
        // `--state-dir` may stand before the subcommand path (`silo --state-dir D lun list`).
        while let first = rest.first, first == "--state-dir" || first.hasPrefix("--state-dir=") {
            globals.append(first)
            rest = rest.dropFirst()
            if first == "--state-dir", let value = rest.first {
                globals.append(value)
                rest = rest.dropFirst()
            }
        }
        guard let shape = shapes.first(where: { rest.starts(with: $0.path) }) else { return nil }
        guard let scanned = scan(globals + rest.dropFirst(shape.path.count), shape) else { return nil }
        return shape.make(scanned)
    }

    static func scan(_ words: [String], _ shape: Shape) -> Arguments? {
        var scanned = Arguments()
        var index = 0
        while index < words.count {
            let word = words[index]
            index += 1
            if word == "--" {
                guard shape.takesCommand else { return nil }
                scanned.command = Array(words[index...])
                break
            }
            guard word.hasPrefix("-") else {
                scanned.positionals.append(word)
                continue
            }
            guard word.hasPrefix("--") else { return nil }
            var name = String(word.dropFirst(2))
            var value: String?
            if let equals = name.firstIndex(of: "=") {
                value = String(name[name.index(after: equals)...])
                name = String(name[..<equals])
            }
            if shape.flags.contains(name) {
                guard value == nil, scanned.flags.insert(name).inserted else { return nil }
                continue
            }
            let single = shape.options.contains(name) || name == "state-dir"
            guard single || shape.repeatable.contains(name) else { return nil }
            if value == nil, index < words.count {
                value = words[index]
                index += 1
            }
            guard let value, !value.isEmpty, !value.hasPrefix("-") else { return nil }
            guard !single || scanned.values[name] == nil else { return nil }
            scanned.values[name, default: []].append(value)
        }
        guard scanned.positionals.count == shape.positionals else { return nil }
        return scanned
    }

    /// The hot commands. Each `make` sets every property of its command (one it missed would trap
    /// when read, and the tests read them all), with ArgumentParser's defaults for those absent.
    static let shapes: [Shape] = [
        Shape(path: ["lun", "create"],
              options: ["name", "size", "provisioning", "type", "pool", "mask", "block-size", "friendly-name"],
              repeatable: ["drive"], flags: ["read-only", "buffered", "json"]) { arguments in
            guard let name = arguments.value("name"), let size = arguments.value("size") else { return nil }
            var command = LunCommand.Create()
            command.global = arguments.global
            command.name = name
            command.size = size
            command.provisioning = arguments.value("provisioning") ?? "thin"
            command.type = arguments.value("type") ?? "default"
            command.drive = arguments.values("drive")
            command.pool = arguments.value("pool")
            command.mask = arguments.value("mask") ?? ""
            command.blockSize = arguments.value("block-size") ?? "512"
            command.readOnly = arguments.flag("read-only")
            command.buffered = arguments.flag("buffered")
            command.friendlyName = arguments.value("friendly-name")
            command.json = arguments.flag("json")
            return command
        },
        Shape(path: ["lun", "delete"], flags: ["force"], positionals: 1) { arguments in
            var command = LunCommand.Delete()
            command.global = arguments.global
            command.name = arguments.positionals[0]
            command.force = arguments.flag("force")
            return command
        },
        Shape(path: ["lun", "list"], flags: ["json"]) { arguments in
            var command = LunCommand.List()
            command.global = arguments.global
            command.json = arguments.flag("json")
            return command
        },
        Shape(path: ["lun", "show"], flags: ["json"], positionals: 1) { arguments in
            var command = LunCommand.Show()
            command.global = arguments.global
            command.name = arguments.positionals[0]
            command.json = arguments.flag("json")
            return command
        },
        Shape(path: ["drive", "list"], flags: ["json"]) { arguments in
            var command = DriveCommand.List()
            command.global = arguments.global
            command.json = arguments.flag("json")
            return command
        },
        Shape(path: ["run"], options: ["id", "config", "memory", "cpus", "pids"], repeatable: ["lun"],
              takesCommand: true) { arguments in
            var command = RunCommand()
            command.global = arguments.global
            command.id = arguments.value("id")
            command.config = arguments.value("config")
            command.memory = arguments.value("memory")
            command.cpus = arguments.value("cpus")
            if let pids = arguments.value("pids") {
                guard let value = Int(pids) else { return nil }
                command.pids = value
            } else {
                command.pids = 1024
            }
            command.lun = arguments.values("lun")
            command.command = arguments.command
            return command
        },
        Shape(path: ["process", "create"], options: ["config", "cwd", "user"], repeatable: ["env"],
              flags: ["detach", "tty"], positionals: 1, takesCommand: true) { arguments in
            var command = ProcessCommand.Create()
            command.global = arguments.global
            command.id = arguments.positionals[0]
            command.config = arguments.value("config")
            command.cwd = arguments.value("cwd")
            command.env = arguments.values("env")
            command.user = arguments.value("user")
            command.detach = arguments.flag("detach")
            command.tty = arguments.flag("tty")
            command.command = arguments.command
            return command
        },
    ]
}
