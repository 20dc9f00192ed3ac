import SiloOperations

/// How to start a process in a compute system [HCS ProcessParameters] (C7).
public struct ProcessParameters: Sendable, Hashable {
    /// The program and its arguments. From `CommandArgs`, or `CommandLine` split as a shell would
    /// split words (quotes and backslashes; no expansion).
    public var arguments: [String]
    public var workingDirectory: String?
    public var environment: [String: String]
    /// A user name or numeric uid inside the system; nil is root.
    public var user: String?
    public var createStdInPipe: Bool
    public var createStdOutPipe: Bool
    public var createStdErrPipe: Bool
    /// A pseudo-terminal instead of pipes.
    public var emulateConsole: Bool
    /// `[height, width]` of the console.
    public var consoleSize: (height: Int, width: Int)?

    public init(
        arguments: [String], workingDirectory: String? = nil, environment: [String: String] = [:], user: String? = nil,
        createStdInPipe: Bool = false, createStdOutPipe: Bool = false, createStdErrPipe: Bool = false,
        emulateConsole: Bool = false, consoleSize: (height: Int, width: Int)? = nil
    ) {
        self.arguments = arguments
        self.workingDirectory = workingDirectory
        self.environment = environment
        self.user = user
        self.createStdInPipe = createStdInPipe
        self.createStdOutPipe = createStdOutPipe
        self.createStdErrPipe = createStdErrPipe
        self.emulateConsole = emulateConsole
        self.consoleSize = consoleSize
    }

    /// The rules a ProcessParameters document is read by, for parameters made in Swift: what
    /// would reach the agent as a bad message, silently change a variable, or trap on a console size.
    /// - Throws: `invalidArgument` naming the document's field.
    public func validate() throws(SiloError) {
        guard let program = arguments.first, !program.isEmpty else {
            throw SiloError.invalidArgument(field: "CommandLine", value: "", reason: "give a program to run")
        }
        if let workingDirectory, !workingDirectory.hasPrefix("/") {
            throw SiloError.invalidArgument(field: "WorkingDirectory", value: workingDirectory, reason: "must be an absolute path")
        }
        for key in environment.keys where key.isEmpty || key.utf8.contains(UInt8(ascii: "=")) || key.utf8.contains(0) {
            throw SiloError.invalidArgument(field: "Environment", value: key, reason: "a variable name is not empty and has no '=' or NUL")
        }
        if let size = consoleSize, !(1...10_000).contains(size.height) || !(1...10_000).contains(size.width) {
            throw SiloError.invalidArgument(field: "ConsoleSize", value: "[\(size.height), \(size.width)]", reason: "each is 1...10000")
        }
    }

    public static func == (lhs: Self, rhs: Self) -> Bool {
        lhs.arguments == rhs.arguments && lhs.workingDirectory == rhs.workingDirectory && lhs.environment == rhs.environment
            && lhs.user == rhs.user && lhs.createStdInPipe == rhs.createStdInPipe
            && lhs.createStdOutPipe == rhs.createStdOutPipe && lhs.createStdErrPipe == rhs.createStdErrPipe
            && lhs.emulateConsole == rhs.emulateConsole && lhs.consoleSize?.height == rhs.consoleSize?.height
            && lhs.consoleSize?.width == rhs.consoleSize?.width
    }

    public func hash(into hasher: inout Hasher) { hasher.combine(arguments) }

    /// Parses and checks a ProcessParameters document.
    public init(json text: String) throws(SiloError) {
        let root = try DocumentObject(try JSONReader.parse(text), path: "")
        _ = try root.check(
            applied: ["CommandLine", "CommandArgs", "WorkingDirectory", "Environment", "User", "CreateStdInPipe",
                      "CreateStdOutPipe", "CreateStdErrPipe", "EmulateConsole", "ConsoleSize"],
            ignored: ["RestrictedToken", "ApplicationName"]
        )
        let line = try root.string("CommandLine")
        let args = try root.array("CommandArgs")
        switch (line, args) {
        case (nil, nil):
            throw SiloError(.invalidJSON, "give CommandLine or CommandArgs", field: "CommandLine", value: "")
        case (.some, .some):
            throw SiloError(.invalidJSON, "give CommandLine or CommandArgs, not both", field: "CommandArgs", value: "both")
        case (let line?, nil):
            arguments = try Self.split(line)
        case (nil, let items?):
            arguments = try items.enumerated().map { (index, item) throws(SiloError) -> String in
                guard case .string(let text) = item.value else {
                    throw DocumentObject.typeError("CommandArgs[\(index)]", "a string", item)
                }
                return text
            }
        }
        guard let program = arguments.first, !program.isEmpty else {
            throw SiloError(.invalidJSON, "the command is empty", field: line == nil ? "CommandArgs" : "CommandLine", value: "")
        }
        workingDirectory = try root.string("WorkingDirectory")
        if let directory = workingDirectory, !directory.hasPrefix("/") {
            throw SiloError(.invalidJSON, "WorkingDirectory must be an absolute path", field: "WorkingDirectory", value: directory)
        }
        var environment: [String: String] = [:]
        if let variables = try root.object("Environment") {
            for member in variables.members {
                guard !member.key.isEmpty, !member.key.contains("="), !member.key.contains("\0") else {
                    throw SiloError(.invalidJSON, "Environment has an invalid variable name '\(member.key)'",
                                    field: variables.child(member.key), value: member.key)
                }
                guard case .string(let value) = member.value.value else {
                    throw DocumentObject.typeError(variables.child(member.key), "a string", member.value)
                }
                environment[member.key] = value
            }
        }
        self.environment = environment
        user = try root.string("User")
        createStdInPipe = try root.bool("CreateStdInPipe") ?? false
        createStdOutPipe = try root.bool("CreateStdOutPipe") ?? false
        createStdErrPipe = try root.bool("CreateStdErrPipe") ?? false
        emulateConsole = try root.bool("EmulateConsole") ?? false
        if let size = try root.array("ConsoleSize") {
            let numbers = size.compactMap { item -> Int? in
                if case .number(let text) = item.value { return Int(text) }
                return nil
            }
            guard numbers.count == 2, numbers.allSatisfy({ (1...10_000).contains($0) }) else {
                throw SiloError(.invalidJSON, "ConsoleSize is [height, width], each 1...10000", field: "ConsoleSize", value: "\(numbers)")
            }
            consoleSize = (numbers[0], numbers[1])
        } else {
            consoleSize = nil
        }
    }

    /// Splits a command line into words: spaces separate, single quotes keep everything, double
    /// quotes keep all but `\"` and `\\`, a backslash outside quotes escapes the next character.
    static func split(_ line: String) throws(SiloError) -> [String] {
        var words: [String] = []
        var current = ""
        var inWord = false
        var quote: Character?
        var escaped = false
        for character in line {
            if escaped {
                current.append(character)
                escaped = false
                continue
            }
            switch (quote, character) {
            case (nil, "\\"), ("\"", "\\"):
                escaped = true
                inWord = true
            case (nil, "'"), (nil, "\""):
                quote = character
                inWord = true
            case ("'", "'"), ("\"", "\""):
                quote = nil
            case (nil, " "), (nil, "\t"):
                if inWord { words.append(current) }
                current = ""
                inWord = false
            default:
                current.append(character)
                inWord = true
            }
        }
        guard quote == nil, !escaped else {
            throw SiloError(.invalidJSON, "CommandLine has an unclosed quote or a trailing backslash", field: "CommandLine", value: line)
        }
        if inWord { words.append(current) }
        return words
    }
}
