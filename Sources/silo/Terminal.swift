import CSiloLinux
import Glibc
import Silo

/// Runs an attached process on this command's terminal through its pseudo-terminal (`--tty`): this
/// terminal goes raw (keys, Ctrl-C included, reach the process's own terminal), bytes are copied
/// both ways, a window change resizes the process's console, SIGTERM and SIGHUP are passed on.
/// Returns the process's exit code; the terminal is restored.
func relayTerminal(_ process: ComputeProcess) throws -> Int32 {
    guard let console = process.standardOutput else { return try waitForwardingSignals(process) }
    blockForwardedSignals()  // before the terminal goes raw: a SIGTERM now is relayed, not fatal
    var saved = termios()
    let raw = tcgetattr(0, &saved) == 0
    if raw {
        var settings = saved
        cfmakeraw(&settings)
        tcsetattr(0, TCSANOW, &settings)
    }
    defer { if raw { tcsetattr(0, TCSANOW, &saved) } }
    var watched = sigset_t()
    sigemptyset(&watched)
    for signal in [SIGWINCH, SIGTERM, SIGHUP, SIGINT] { sigaddset(&watched, signal) }
    pthread_sigmask(SIG_BLOCK, &watched, nil)
    var tick = timespec(tv_sec: 0, tv_nsec: 0)
    var buffer = [UInt8](repeating: 0, count: 16384)
    var inputOpen = true
    // Standard output gone (a pipe whose reader quit, EPIPE: SIGPIPE is ignored): the console is
    // still read, so the process never blocks writing to it, and what it writes is dropped.
    var outputOpen = true
    /// Copies what the console holds to standard output; false once the console is closed.
    func copyOut() -> Bool {
        let count = read(console, &buffer, buffer.count)
        if count <= 0 { return false }  // EIO: the process's side of the terminal closed
        var offset = 0
        while outputOpen, offset < count {
            let written = buffer.withUnsafeBytes { write(1, $0.baseAddress! + offset, count - offset) }
            if written < 0, errno == EINTR { continue }
            if written <= 0 {
                outputOpen = false
                break
            }
            offset += written
        }
        return true
    }
    while true {
        var fds = [pollfd(fd: console, events: Int16(POLLIN), revents: 0), pollfd(fd: inputOpen ? 0 : -1, events: Int16(POLLIN), revents: 0)]
        _ = poll(&fds, 2, 50)
        if fds[0].revents & Int16(POLLIN | POLLHUP | POLLERR) != 0 {
            if !copyOut() { break }
        }
        if inputOpen, fds[1].revents & Int16(POLLIN | POLLHUP) != 0 {
            let count = read(0, &buffer, buffer.count)
            if count <= 0 {
                inputOpen = false
                process.closeStandardInput()
            } else {
                _ = write(console, buffer, count)
            }
        }
        let signal = sigtimedwait(&watched, nil, &tick)
        if signal == SIGWINCH {
            var rows: UInt16 = 0, columns: UInt16 = 0
            if silo_get_window_size(0, &rows, &columns) == 0, rows > 0, columns > 0 {
                try? process.resizeConsole(height: Int(rows), width: Int(columns))
            }
        } else if signal > 0 {
            _ = try? process.signal(signal).wait(timeout: .seconds(5))
        }
        if process.status.exited {
            // What it wrote last, after the poll above, is shown before the relay ends.
            var pending = [pollfd(fd: console, events: Int16(POLLIN), revents: 0)]
            while poll(&pending, 1, 0) > 0, pending[0].revents & Int16(POLLIN) != 0, copyOut() {}
            break
        }
    }
    // The process may run on with its side of the terminal closed (it handed its stdio elsewhere):
    // this terminal is the person's again, and its signals reach the process as without --tty.
    if raw { tcsetattr(0, TCSANOW, &saved) }
    return try waitForwardingSignals(process)
}

/// This terminal's size, for a console of the same.
func terminalSize() -> (height: Int, width: Int)? {
    var rows: UInt16 = 0, columns: UInt16 = 0
    guard silo_get_window_size(0, &rows, &columns) == 0, rows > 0, columns > 0 else { return nil }
    return (Int(rows), Int(columns))
}
