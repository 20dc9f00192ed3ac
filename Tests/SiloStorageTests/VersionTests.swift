import SiloOperations
import Testing

@Suite("The CLI's version", .requiresSiloBinary)
struct VersionTests {
    @Test("silo --version prints Silo's version and exits 0, after a subcommand's name too")
    func version() {
        let shown = execute(siloBinary, ["--version"])
        #expect(shown.status == 0)
        #expect(shown.output == siloVersion + "\n")
        #expect(siloVersion.split(separator: ".").count == 3 && siloVersion.split(separator: ".").allSatisfy { Int($0) != nil })
        let after = execute(siloBinary, ["lun", "list", "--version"])
        #expect(after.status == 0 && after.output == siloVersion + "\n")
    }
}
