import FoundationEssentials
import Glibc
import SiloOperations
import Testing

@testable import SiloCompute

let fixtures = "/" + #filePath.split(separator: "/").dropLast(3).joined(separator: "/") + "/fixtures/compute"

func fixture(_ name: String) -> String {
    guard let file = fopen(fixtures + "/" + name, "r") else { return "" }
    defer { fclose(file) }
    var text = ""
    var buffer = [CChar](repeating: 0, count: 4096)
    while fgets(&buffer, Int32(buffer.count), file) != nil { text += String(cString: buffer) }
    return text
}

struct BadDocument: Decodable, Sendable, CustomTestStringConvertible {
    let name: String
    let document: String
    let field: String
    let contains: String
    var testDescription: String { name }
}

let badDocuments: [BadDocument] = {
    struct Corpus: Decodable { let cases: [BadDocument] }
    return (try? JSONDecoder().decode(Corpus.self, from: Data(fixture("bad-documents.json").utf8)).cases) ?? []
}()

@Suite("ComputeSystem and ProcessParameters documents")
struct DocumentTests {
    @Test("C1 the seeds' empty-VM document works as is: memory and CPU limits, terminate on last handle")
    func emptyVM() throws {
        let text = fixture("empty-vm.json")
        try #require(!text.isEmpty, "fixtures/compute/empty-vm.json is missing")
        let document = try ComputeSystemDocument(json: text)
        #expect(document.kind == .virtualMachine)
        #expect(document.owner == "Sample")
        #expect(document.memoryLimit == 1024 << 20)
        #expect(document.processorCount == 2)
        #expect(document.shouldTerminateOnLastHandleClosed)
        #expect(document.schemaVersion == (2, 1))
    }

    @Test("C2 fields that do not apply to a process sandbox are accepted and listed as ignored")
    func ignoredFields() throws {
        let document = try ComputeSystemDocument(json: fixture("empty-vm.json"))
        #expect(document.ignoredFields == ["VirtualMachine.Chipset", "VirtualMachine.ComputeTopology.Memory.Backing"])
    }

    @Test("C1 a Container document: limits from Memory and Processor")
    func container() throws {
        let document = try ComputeSystemDocument(json: """
            {"SchemaVersion": {"Major": 2, "Minor": 5}, "Container": {"Memory": {"SizeInMB": 256},
             "Processor": {"Count": 1, "Maximum": 5000}, "Networking": {}}}
            """)
        #expect(document.kind == .container)
        #expect(document.memoryLimit == 256 << 20)
        #expect(document.processorCount == 1)
        #expect(document.processorLimit == 5000)
        #expect(document.ignoredFields == ["Container.Networking"])
        #expect(!document.shouldTerminateOnLastHandleClosed)
    }

    @Test("C12 SCSI attachments name LUNs, with an optional mount path")
    func scsi() throws {
        let document = try ComputeSystemDocument(json: """
            {"SchemaVersion": {"Major": 2, "Minor": 1}, "VirtualMachine": {"Devices": {"Scsi": {
              "primary": {"Attachments": {"1": {"Type": "VirtualDisk", "Path": "logs", "ReadOnly": true},
                                          "0": {"Path": "db1", "MountPath": "/data"}}}}}}}
            """)
        #expect(document.scsiAttachments.map(\.lun) == ["db1", "logs"])
        #expect(document.scsiAttachments.map(\.index) == [0, 1])
        #expect(document.scsiAttachments[0].mountPath == "/data")
        #expect(document.scsiAttachments[1].readOnly)
    }

    @Test("C12 ModifySettingRequest: SCSI Add and Remove, Memory and Processor Update; anything else names its field")
    func modifyRequests() throws {
        let add = try ModifyRequest(json: """
            {"ResourcePath": "VirtualMachine/Devices/Scsi/0/Attachments/1", "RequestType": "Add",
             "Settings": {"Type": "VirtualDisk", "Path": "data", "MountPath": "/data", "ReadOnly": true}}
            """)
        #expect(add.change == .attach(.init(controller: "0", index: 1, lun: "data", readOnly: true, mountPath: "/data")))
        #expect(try ModifyRequest(json: #"{"ResourcePath": "Container/Devices/Scsi/x/Attachments/3", "RequestType": "Remove"}"#).change
                == .detach(controller: "x", index: 3))
        #expect(try ModifyRequest(json: #"{"ResourcePath": "VirtualMachine/ComputeTopology/Memory/SizeInMB", "RequestType": "Update", "Settings": 2048}"#).change
                == .memory(megabytes: 2048))
        #expect(try ModifyRequest(json: #"{"ResourcePath": "Container/Processor/Count", "Settings": 2}"#).change == .processorCount(2))
        #expect(try ModifyRequest(json: #"{"ResourcePath": "VirtualMachine/ComputeTopology/Processor/Weight", "RequestType": "Update", "Settings": 300}"#).change
                == .processorWeight(300))
        // 0 is HCS's unset value: the default share, as in a document.
        #expect(try ModifyRequest(json: #"{"ResourcePath": "VirtualMachine/ComputeTopology/Processor/Weight", "RequestType": "Update", "Settings": 0}"#).change
                == .processorWeight(100))
        #expect(try ModifyRequest(json: #"{"ResourcePath": "VirtualMachine/ComputeTopology/Processor/Limit", "RequestType": "Update", "Settings": 25000}"#).change
                == .processorLimit(25000))
        for limit in ["0", "100001", "-1", "\"half\""] {
            let error = #expect(throws: SiloError.self, "\(limit)") {
                _ = try ModifyRequest(json: #"{"ResourcePath": "Container/Processor/Limit", "RequestType": "Update", "Settings": "# + limit + "}")
            }
            #expect(error?.field == "Settings", "\(limit)")
        }
        let bad: [(String, String)] = [
            (#"{"ResourcePath": "VirtualMachine/Devices/NetworkAdapters/0", "RequestType": "Add"}"#, "ResourcePath"),
            (#"{"ResourcePath": "VirtualMachine/Devices/Scsi/0/Attachments/1", "RequestType": "Add"}"#, "Settings"),
            (#"{"ResourcePath": "VirtualMachine/Devices/Scsi/0/Attachments/99", "RequestType": "Remove"}"#, "ResourcePath"),
            (#"{"ResourcePath": "VirtualMachine/Devices/Scsi/0/Attachments/1", "RequestType": "Add", "Settings": {"Path": "d", "Bogus": 1}}"#, "Settings.Bogus"),
            (#"{"ResourcePath": "VirtualMachine/Devices/Scsi/0/Attachments/1", "RequestType": "Add", "Settings": {"Path": "d", "MountPath": "/a/../b"}}"#, "Settings.MountPath"),
            (#"{"ResourcePath": "VirtualMachine/ComputeTopology/Memory/SizeInMB", "RequestType": "Update", "Settings": 1}"#, "Settings"),
            (#"{"ResourcePath": "VirtualMachine/ComputeTopology/Memory/SizeInMB", "RequestType": "Patch", "Settings": 64}"#, "RequestType"),
            (#"{"RequestType": "Update", "Settings": 64}"#, "ResourcePath"),
            (#"{"ResourcePath": "Vm/Memory", "Extra": true}"#, "Extra"),
        ]
        for (text, field) in bad {
            let error = #expect(throws: SiloError.self) { _ = try ModifyRequest(json: text) }
            #expect(error?.code == .invalidJSON, "\(text)")
            #expect(error?.field == field, "\(text): \(String(describing: error?.field)) \(error?.message ?? "")")
        }
    }

    @Test("The bad-document corpus is there")
    func corpus() { #expect(badDocuments.count >= 20) }

    @Test("C2 bad documents throw invalidJSON naming the line and column or the field's path", arguments: badDocuments)
    func rejects(_ bad: BadDocument) {
        let error = #expect(throws: SiloError.self) { _ = try ComputeSystemDocument(json: bad.document) }
        #expect(error?.code == .invalidJSON)
        #expect(error?.field == bad.field, "\(error?.message ?? "")")
        #expect(error?.message.contains(bad.contains) == true, "\(error?.message ?? "")")
    }

    @Test("C7 ProcessParameters: CommandLine or CommandArgs, environment, pipes, console size")
    func processParameters() throws {
        let parameters = try ProcessParameters(json: """
            {"CommandLine": "sh -c 'echo \\"hi there\\"' a\\\\ b", "WorkingDirectory": "/tmp",
             "Environment": {"A": "1", "PATH": "/bin"}, "User": "nobody",
             "CreateStdInPipe": true, "CreateStdOutPipe": true, "EmulateConsole": true, "ConsoleSize": [24, 80]}
            """)
        #expect(parameters.arguments == ["sh", "-c", "echo \"hi there\"", "a b"])
        #expect(parameters.workingDirectory == "/tmp")
        #expect(parameters.environment == ["A": "1", "PATH": "/bin"])
        #expect(parameters.user == "nobody")
        #expect(parameters.createStdInPipe && parameters.createStdOutPipe && !parameters.createStdErrPipe)
        #expect(parameters.consoleSize?.height == 24 && parameters.consoleSize?.width == 80)
        let args = try ProcessParameters(json: #"{"CommandArgs": ["/bin/echo", "a b", ""]}"#)
        #expect(args.arguments == ["/bin/echo", "a b", ""])
        for bad in [#"{}"#, #"{"CommandLine": "x", "CommandArgs": ["x"]}"#, #"{"CommandLine": "x 'y"}"#,
                    #"{"CommandArgs": [1]}"#, #"{"CommandLine": "   "}"#, #"{"CommandLine": "x", "ConsoleSize": [24]}"#,
                    #"{"CommandLine": "x", "WorkingDirectory": "relative"}"#, #"{"CommandLine": "x", "Environment": {"A=B": "c"}}"#,
                    #"{"CommandLine": "x", "Shell": true}"#] {
            #expect((#expect(throws: SiloError.self, "\(bad)") { _ = try ProcessParameters(json: bad) })?.code == .invalidJSON)
        }
    }

    @Test("The JSON reader: escapes, unicode, numbers, positions")
    func reader() throws {
        let value = try JSONReader.parse("{\n  \"a\": \"\\u00e9\\ud83d\\ude00\\n\",\n  \"b\": [-1.5e3, 0, true, null]\n}")
        guard case .object(let members) = value.value, case .string(let text) = members[0].value.value,
              case .array(let items) = members[1].value.value else {
            Issue.record("unexpected shape")
            return
        }
        #expect(text == "é😀\n")
        #expect(members[1].value.line == 3 && members[1].value.column == 8)
        #expect(items.count == 4)
        for bad in ["01", "1.", "-", "\"\\x\"", "\"a", "[1,]", "{\"a\" 1}", "tru", "1 2", "\"\u{1}\""] {
            #expect(throws: SiloError.self, "\(bad)") { _ = try JSONReader.parse(bad) }
        }
        // Lone or reversed surrogates, and nesting past the limit.
        for bad in ["\"\\uDC00\"", "\"\\uD800\\u0041\"", "\"\\uD800\"", String(repeating: "[", count: 65) + String(repeating: "]", count: 65)] {
            #expect(throws: SiloError.self, "\(bad)") { _ = try JSONReader.parse(bad) }
        }
    }

    @Test("C2 a field given twice is refused by name, also among thousands of fields")
    func duplicateFields() throws {
        let error = #expect(throws: SiloError.self) { _ = try JSONReader.parse(#"{"Owner": "a", "Owner": "b"}"#) }
        #expect(error?.message.contains("field 'Owner' appears twice") == true, "\(error?.message ?? "")")
        var text = "{"
        for index in 0..<20_000 { text += "\"f\(index)\": \(index)," }
        let many = try JSONReader.parse(text + "\"last\": 0}")
        guard case .object(let members) = many.value else { throw SiloError(.unexpected, "not an object") }
        #expect(members.count == 20_001)
        #expect(throws: SiloError.self) { _ = try JSONReader.parse(text + "\"f19999\": 0}") }
    }
}

@Suite("Document reader fuzz")
struct DocumentFuzzTests {
    /// A small deterministic generator, so a failure can be replayed.
    struct Generator: RandomNumberGenerator {
        var state: UInt64
        mutating func next() -> UInt64 {
            state = state &* 6364136223846793005 &+ 1442695040888963407
            return state
        }
    }

    @Test("C2 mutated documents give a document or a SiloError, never a crash or another error")
    func mutations() {
        let seeds = [fixture("empty-vm.json")] + badDocuments.map(\.document) + [
            #"{"SchemaVersion":{"Major":2,"Minor":1},"VirtualMachine":{"Devices":{"Scsi":{"0":{"Attachments":{"0":{"Path":"db1","MountPath":"/data"}}}}}}}"#,
        ]
        let alphabet = Array("{}[]\",:0123456789.-+eE tfnrlu\\\n\tabcxyz".utf8) + [0x00, 0xC3, 0xA9, 0xFF]
        var generator = Generator(state: 0x5eed)
        var accepted = 0
        var refused = 0
        for iteration in 0..<20_000 {
            var bytes = Array(seeds[iteration % seeds.count].utf8)
            for _ in 0..<Int.random(in: 1...6, using: &generator) {
                let position = bytes.isEmpty ? 0 : Int.random(in: 0..<bytes.count, using: &generator)
                switch Int.random(in: 0..<4, using: &generator) {
                case 0 where !bytes.isEmpty: bytes.remove(at: position)
                case 1: bytes.insert(alphabet.randomElement(using: &generator) ?? 0x20, at: position)
                case 2 where !bytes.isEmpty: bytes[position] = alphabet.randomElement(using: &generator) ?? 0x20
                default:
                    let cut = Int.random(in: 0...bytes.count, using: &generator)
                    bytes = Array(bytes[..<cut])
                }
            }
            let text = String(decoding: bytes, as: UTF8.self)
            do {
                _ = try ComputeSystemDocument(json: text)
                accepted += 1
            } catch {
                refused += 1
                #expect(error.code == .invalidJSON || error.code == .invalidArgument, "\(error)")
                #expect(!error.message.isEmpty)
            }
            _ = try? ProcessParameters(json: text)
        }
        #expect(accepted > 0, "some mutations still parse: the fuzzer reaches past the decoder's first checks")
        #expect(refused > 10_000, "most mutations break a document")
    }
}

@Suite("The runtime folder")
struct RuntimeFolderTests {
    @Test("a state directory is read as storage reads it: absolute, and the default one's systems in /run/silo")
    func runtimeFolder() {
        var buffer = [CChar](repeating: 0, count: 4096)
        let cwd = getcwd(&buffer, buffer.count).map { String(cString: $0) } ?? "/"
        #expect(ComputeConfiguration(stateDirectory: "/var/lib/silo").runtimeDirectory == "/run/silo")
        #expect(ComputeConfiguration(stateDirectory: "/var/lib/silo/").runtimeDirectory == "/run/silo")
        #expect(ComputeConfiguration(stateDirectory: "/tmp/s/./").runtimeDirectory == "/tmp/s/run")
        #expect(ComputeConfiguration(stateDirectory: "relative/s").runtimeDirectory == (cwd == "/" ? "" : cwd) + "/relative/s/run")
    }
}

@Suite("Parameters and changes made in Swift")
struct ProgrammaticInputTests {
    @Test("E1 ProcessParameters made in Swift are held to the document's rules: each bad one names its field",
          arguments: [
              (ProcessParameters(arguments: []), "CommandLine"),
              (ProcessParameters(arguments: [""]), "CommandLine"),
              (ProcessParameters(arguments: ["/bin/true"], workingDirectory: "tmp"), "WorkingDirectory"),
              (ProcessParameters(arguments: ["/bin/true"], environment: ["": "x"]), "Environment"),
              (ProcessParameters(arguments: ["/bin/true"], environment: ["A=B": "x"]), "Environment"),
              (ProcessParameters(arguments: ["/bin/true"], emulateConsole: true, consoleSize: (70_000, 80)), "ConsoleSize"),
              (ProcessParameters(arguments: ["/bin/true"], emulateConsole: true, consoleSize: (24, 0)), "ConsoleSize"),
          ] as [(ProcessParameters, String)])
    func badParameters(parameters: ProcessParameters, field: String) {
        let error = #expect(throws: SiloError.self) { try parameters.validate() }
        #expect(error?.code == .invalidArgument && error?.field == field, "\(String(describing: error))")
    }

    @Test("E1 good ProcessParameters pass")
    func goodParameters() throws {
        try ProcessParameters(arguments: ["/bin/true"], workingDirectory: "/tmp", environment: ["A": "b=c"],
                              emulateConsole: true, consoleSize: (24, 80)).validate()
    }

    @Test("E1 a modify's change made in Swift is held to a request's bounds: out of them it names the field, in them it passes",
          arguments: [
              (ModifyRequest.Change.memory(megabytes: -1), "Settings"), (.memory(megabytes: 3), "Settings"),
              (.memory(megabytes: Int.max), "Settings"), (.processorCount(0), "Settings"), (.processorCount(1025), "Settings"),
              (.processorWeight(0), "Settings"), (.processorLimit(100_001), "Settings"), (.detach(controller: "0", index: 64), "ResourcePath"),
              (.memory(megabytes: 4), nil), (.processorCount(2), nil), (.processorLimit(5000), nil), (.detach(controller: "0", index: 1), nil),
          ] as [(ModifyRequest.Change, String?)])
    func changes(change: ModifyRequest.Change, field: String?) throws {
        if let field {
            let error = #expect(throws: SiloError.self) { try ModifyRequest(change: change).validate() }
            #expect(error?.code == .invalidArgument && error?.field == field, "\(String(describing: error))")
        } else {
            try ModifyRequest(change: change).validate()
        }
    }
}
