import Glibc
import SiloOperations

/// The listening socket of a system's agent, `<system>/agent.sock`, made on the host and handed to
/// the agent as a descriptor.
struct AgentListener {
    let fd: Int32
    let directory: String

    init(directory: String) throws(SiloError) {
        self.directory = directory
        let folder = open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard folder >= 0 else { throw SiloError.system("open", errno: errno, path: directory) }
        defer { Glibc.close(folder) }
        let fd = socket(AF_UNIX, Int32(SOCK_SEQPACKET.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw SiloError.system("socket", errno: errno) }
        unlinkat(folder, "agent.sock", 0)  // a stale one from a system that died
        // Through the folder's descriptor: a socket path has at most 107 bytes.
        let bound = withSocketAddress("/proc/self/fd/\(folder)/agent.sock") { bind(fd, $0, $1) }
        guard bound == 0, listen(fd, 64) == 0 else {
            let error = errno
            Glibc.close(fd)
            throw SiloError.system("bind", errno: error, path: directory + "/agent.sock")
        }
        fchmodat(folder, "agent.sock", 0o600, 0)
        self.fd = fd
    }

    func close() { Glibc.close(fd) }

    func remove() { unlink(directory + "/agent.sock") }
}
