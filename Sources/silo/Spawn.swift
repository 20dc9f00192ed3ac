import CSiloLinux
import Glibc
import Silo

/// Runs a program with the terminal attached and extra environment; returns its exit code
/// (128 + signal if a signal ended it).
func runForeground(_ program: String, _ arguments: [String], environment: [String: String]) throws -> Int32 {
    // An inherited entry of a name given here goes: with two, getenv in C (and Go's copy) takes
    // the first, the inherited one, and a command told SILO_LUN_DEVICE would write elsewhere.
    var entries: [String] = []
    var index = 0
    while let entry = environ[index] {
        let text = String(cString: entry)
        index += 1
        if let equals = text.firstIndex(of: "="), environment[String(text[..<equals])] != nil { continue }
        entries.append(text)
    }
    entries += environment.map { "\($0.key)=\($0.value)" }
    let argv = arguments.map { strdup($0) } + [nil]
    let envp = entries.map { strdup($0) } + [nil]
    defer {
        argv.forEach { free($0) }
        envp.forEach { free($0) }
    }
    // The child gets the default signal mask back: silo blocks SIGINT for its own use.
    var attributes = posix_spawnattr_t()
    posix_spawnattr_init(&attributes)
    defer { posix_spawnattr_destroy(&attributes) }
    silo_spawnattr_reset_signals(&attributes, 0)
    // silo ignores SIGPIPE for itself; the command gets the default (what its caller ignored stays).
    var pipe = sigset_t()
    sigemptyset(&pipe)
    sigaddset(&pipe, SIGPIPE)
    posix_spawnattr_setsigdefault(&attributes, &pipe)
    posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
    var pid: pid_t = 0
    let result = posix_spawnp(&pid, program, nil, &attributes, argv, envp)
    guard result == 0 else {
        // As a shell says it: 127 for a program not found, 126 for one found but not runnable.
        let code: SiloError.Code = result == ENOENT ? .objectNotFound : result == EACCES || result == EPERM ? .accessDenied : .systemCallFailed
        let error = SiloError(code, "cannot run '\(program)': \(String(cString: strerror(result)))",
                              field: "command", value: program)
        printError("Error: \(CLIFailure(error: error, option: "COMMAND"))")
        return result == ENOENT ? 127 : 126
    }
    var status: Int32 = 0
    while waitpid(pid, &status, 0) < 0, errno == EINTR {}
    return (status & 0x7f) == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
}
