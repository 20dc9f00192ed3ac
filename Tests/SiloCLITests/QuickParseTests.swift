import ArgumentParser
import Testing

@testable import silo

extension HotCommand {
    /// Whether `invocation` is the very invocation this command runs: same type, every field equal.
    fileprivate func runs(_ invocation: any HotInvocation) -> Bool {
        (invocation as? Invocation) == self.invocation
    }
}

/// The command ArgumentParser makes of the same words, the way `silo` runs it without the quick path.
private func parsedByArgumentParser(_ words: [String]) throws -> any ParsableCommand {
    try SiloCommand.parsed(SiloCommand.placingGlobalOptions(words))
}

private func split(_ line: String) -> [String] { line.split(separator: " ").map(String.init) }

@Suite struct QuickParseTests {
    /// Lines both readers accept; the quick reader must make the same command, field for field.
    static let accepted = [
        "lun create --name a --size 64M",
        "--state-dir /tmp/s lun create --name a --size 64M --json",
        "--state-dir=/tmp/s lun create --size=1G --name=b --provisioning zeroed --type simple --pool p --mask web,db --block-size 4096 --read-only --buffered --friendly-name scratch --drive vda --drive vdb",
        "lun create --name a --size 64M --state-dir /tmp/s",
        "lun create --name a --size 64M --filesystem ext4 --label data",
        "lun delete a",
        "--state-dir /tmp/s lun delete --force a",
        "lun list",
        "lun list --json --state-dir /x",
        "lun show a --json",
        "drive list",
        "--state-dir /tmp/s drive list --json",
        "run -- /bin/true",
        "run --memory 512M --cpus 0.5 --pids 64 --id r1 --config /c.json --lun a --lun b:/mnt -- /bin/sh -c exit",
        "run -- /bin/ls --all -l -- x",
        "run",
        "run --pids=12 --",
        "process create web -- /bin/true",
        "--state-dir /tmp/s process create --detach --env A=1 --env B=2 --cwd /tmp --user 65534 --config /p.json web -- sh -c --x",
        "process create web --tty -- sh",
        "process create web --detach --json -- sleep 1",
        "process create web",
    ]

    /// Lines the quick reader leaves to ArgumentParser: help, short options, errors, odd spellings.
    static let declined = [
        "", "--help", "lun create --help", "lun create -h", "lun create --name a", "lun create --size 1G",
        "lun create --name a --size -1", "lun create --name --size 1G", "lun create --name= --size 1G",
        "lun create --name a --name b --size 1G", "lun create --name a --size 1G extra", "lun create --name a --size 1G --bogus",
        "lun create --name a --size 1G --json --json", "lun create --name a --size 1G --json=yes", "lun create --name a --size 1G -- x",
        "lun delete", "lun delete a b", "lun delete -a", "lun list extra", "lun extend a --by 1G", "lun",
        "drive show vda", "run --pids x -- true", "run --pids 0x10 -- true", "run -m 1G -- true", "run --memory",
        "process create -- true", "process create web -t -- sh", "process list web", "system start web",
        "--state-dir", "--state-dir /a --state-dir /b lun list", "lun list --generate-completion-script bash",
        "--version",
    ]

    @Test("the quick reader makes the invocation ArgumentParser's command runs", arguments: accepted)
    func sameCommand(_ line: String) throws {
        let words = split(line)
        let quick = try #require(QuickParse.parse(words), "declined a plain line: \(line)")
        let reference = try #require(try parsedByArgumentParser(words) as? any HotCommand, "not a hot command: \(line)")
        #expect(reference.runs(quick), "quick: \(quick), ArgumentParser: \(reference.invocation)")
    }

    @Test("anything but a plain line goes to ArgumentParser", arguments: declined)
    func declines(_ line: String) {
        #expect(QuickParse.parse(split(line)) == nil)
    }

    @Test("every hot command is a leaf that ArgumentParser knows by the same path")
    func shapesMatchTheTree() throws {
        for shape in QuickParse.shapes {
            var command: any ParsableCommand.Type = SiloCommand.self
            for name in shape.path {
                command = try #require(SiloCommand.subcommand(of: command, named: name), "no \(name) in \(shape.path)")
            }
            #expect(command.configuration.subcommands.isEmpty)
            #expect(command is any HotCommand.Type, "\(shape.path) runs an invocation of its own")
        }
    }

    @Test("--state-dir may stand within the subcommand path too, as before it or after it",
          arguments: ["lun --state-dir /tmp/s list --json", "lun --state-dir=/tmp/s show a", "process --state-dir /tmp/s create web -- true"])
    func globalWithinPath(_ line: String) throws {
        let words = split(line)
        let within = try #require(try parsedByArgumentParser(words) as? any HotCommand)
        let moved = words.filter { !$0.hasPrefix("--state-dir") && $0 != "/tmp/s" } + ["--state-dir", "/tmp/s"]
        let after = try #require(try parsedByArgumentParser(moved.firstIndex(of: "--").map { index in
            Array(moved[..<index]) + ["--state-dir", "/tmp/s"] + Array(moved[index..<(moved.count - 2)])
        } ?? moved) as? any HotCommand)
        #expect(after.runs(within.invocation), "within: \(within.invocation), after: \(after.invocation)")
        #expect("\(within.invocation)".contains("/tmp/s"))
        // A group that is no hot command parses the same way.
        #expect(throws: Never.self) { try parsedByArgumentParser(split("system --state-dir /tmp/s list --json")) }
    }
}
