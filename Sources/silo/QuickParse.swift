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
/// What it makes is the command's `Invocation` (see `HotCommand`), not the ArgumentParser command,
/// whose property wrappers cost the start as much again. `QuickParseTests` parses a corpus both
/// ways and compares the invocations.
enum QuickParse {
    /// The arguments of one hot command, as its scan found them. Plain arrays, searched in order:
    /// a Set or Dictionary of strings would cost this start a conformance scan of its own.
    struct Arguments {
        struct Value {
            let name: String
            let value: String
        }

        var values: [Value] = []
        var flags: [String] = []
        var positionals: [String] = []
        var command: [String] = []

        func value(_ name: String) -> String? { values.last { $0.name == name }?.value }
        func values(_ name: String) -> [String] { values.filter { $0.name == name }.map(\.value) }
        func flag(_ name: String) -> Bool { flags.contains(name) }

        var global: Globals { Globals(stateDirectory: value("state-dir")) }
    }

    /// What one hot command accepts, and how its invocation is built from a scan.
    struct Shape: Sendable {
        let path: [String]
        var options: [String] = []
        var repeatable: [String] = []
        var flags: [String] = []
        var positionals = 0
        /// Takes the words after `--` as its command (`.postTerminator`).
        var takesCommand = false
        let make: @Sendable (Arguments) -> (any HotInvocation)?
    }

    /// The invocation `arguments` (without the program's name) name, when a hot command's shape
    /// takes them all; nil sends them to ArgumentParser.
    static func parse(_ arguments: [String]) -> (any HotInvocation)? {
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
                guard value == nil, !scanned.flags.contains(name) else { return nil }
                scanned.flags.append(name)
                continue
            }
            let single = shape.options.contains(name) || name == "state-dir"
            guard single || shape.repeatable.contains(name) else { return nil }
            if value == nil, index < words.count {
                value = words[index]
                index += 1
            }
            guard let value, !value.isEmpty, !value.hasPrefix("-") else { return nil }
            guard !single || scanned.value(name) == nil else { return nil }
            scanned.values.append(Arguments.Value(name: name, value: value))
        }
        guard scanned.positionals.count == shape.positionals else { return nil }
        return scanned
    }

    /// The hot commands. Each `make` gives ArgumentParser's defaults for the options absent (the
    /// invocations' memberwise initialisers leave no field unset).
    static let shapes: [Shape] = [
        Shape(path: ["lun", "create"],
              options: ["name", "size", "provisioning", "type", "pool", "mask", "block-size", "friendly-name", "filesystem", "label"],
              repeatable: ["drive"], flags: ["read-only", "buffered", "json"]) { arguments in
            guard let name = arguments.value("name"), let size = arguments.value("size") else { return nil }
            return LunCommand.Create.Invocation(
                global: arguments.global, name: name, size: size,
                provisioning: arguments.value("provisioning") ?? "thin", type: arguments.value("type") ?? "default",
                drive: arguments.values("drive"), pool: arguments.value("pool"), mask: arguments.value("mask") ?? "",
                blockSize: arguments.value("block-size") ?? "512", readOnly: arguments.flag("read-only"),
                buffered: arguments.flag("buffered"), friendlyName: arguments.value("friendly-name"),
                filesystem: arguments.value("filesystem"), label: arguments.value("label"), json: arguments.flag("json"))
        },
        Shape(path: ["lun", "delete"], flags: ["force"], positionals: 1) { arguments in
            LunCommand.Delete.Invocation(global: arguments.global, name: arguments.positionals[0], force: arguments.flag("force"))
        },
        Shape(path: ["lun", "list"], flags: ["json"]) { arguments in
            LunCommand.List.Invocation(global: arguments.global, json: arguments.flag("json"))
        },
        Shape(path: ["lun", "show"], flags: ["json"], positionals: 1) { arguments in
            LunCommand.Show.Invocation(global: arguments.global, name: arguments.positionals[0], json: arguments.flag("json"))
        },
        Shape(path: ["drive", "list"], flags: ["json"]) { arguments in
            DriveCommand.List.Invocation(global: arguments.global, json: arguments.flag("json"))
        },
        Shape(path: ["run"], options: ["id", "config", "memory", "cpus", "pids"], repeatable: ["lun"],
              takesCommand: true) { arguments in
            var pids = 1024
            if let text = arguments.value("pids") {
                guard let value = Int(text) else { return nil }
                pids = value
            }
            return RunCommand.Invocation(
                global: arguments.global, id: arguments.value("id"), config: arguments.value("config"),
                memory: arguments.value("memory"), cpus: arguments.value("cpus"), pids: pids,
                lun: arguments.values("lun"), command: arguments.command)
        },
        Shape(path: ["process", "create"], options: ["config", "cwd", "user"], repeatable: ["env"],
              flags: ["detach", "tty", "json"], positionals: 1, takesCommand: true) { arguments in
            ProcessCommand.Create.Invocation(
                global: arguments.global, id: arguments.positionals[0], config: arguments.value("config"),
                cwd: arguments.value("cwd"), env: arguments.values("env"), user: arguments.value("user"),
                detach: arguments.flag("detach"), tty: arguments.flag("tty"), json: arguments.flag("json"), command: arguments.command)
        },
    ]
}
