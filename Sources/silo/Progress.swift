import CSiloLinux
import Glibc
import Silo
import Synchronization

/// Starts an operation and waits for it, showing its progress on standard error: a bar on a
/// terminal, a plain percent line otherwise. Ctrl-C cancels it; the wait then ends with the
/// rollback done. A SIGTERM or SIGHUP from the start on (a quick operation is done on this thread
/// by `start`) is kept for the wait, never ending silo halfway. `options` and `typed`: as `cli`'s,
/// for the operation's own failure (an extend's allocation that runs out of space names `--by`,
/// not the library's `size`).
func waitShowingProgress<Output: Sendable>(_ start: @autoclosure () throws -> SiloOperation<Output>, quiet: Bool = false,
                                           options: [String: String] = [:], typed: [String: String] = [:]) throws -> Output {
    let terminal = isatty(2) == 1
    var lastShown = -1
    var interrupts = Interrupts()
    defer { interrupts.end() }
    let operation = try start()
    // Quick operations show nothing: progress appears once one has run for half a second.
    let showFrom = ContinuousClock.now + .milliseconds(500)
    while operation.status.isPending {
        if !quiet, ContinuousClock.now >= showFrom, case .running(let progress) = operation.status,
           progress.percent != lastShown {
            if terminal {
                writeStandardError("\r" + bar(progress) + "\u{1B}[K")
            } else if progress.percent / 10 != lastShown / 10 || lastShown < 0 {
                writeStandardError("\(progress.percent)%\(progress.stage.map { " \($0)" } ?? "")\n")
            }
            lastShown = progress.percent
        }
        _ = try? operation.wait(timeout: .milliseconds(100))
        interrupts.take(operation)
    }
    if terminal, lastShown >= 0, !quiet { writeStandardError("\r\u{1B}[K") }
    return try cli(options: options, typed: typed) {
        try interrupts.stopped(operation)
        return try operation.wait()
    }
}

/// Starts and waits for an operation that shows no progress (a system's start, pause,
/// shutdown...), with signals read as `waitShowingProgress` reads them; its failure is thrown as
/// the operation's error.
func waitInterruptibly<Output: Sendable>(_ start: @autoclosure () throws(SiloError) -> SiloOperation<Output>) throws(SiloError) -> Output {
    var interrupts = Interrupts()
    defer { interrupts.end() }
    let operation = try start()
    while operation.status.isPending {
        _ = try? operation.wait(timeout: .milliseconds(100))
        interrupts.take(operation)
    }
    try interrupts.stopped(operation)
    return try operation.wait()
}

/// Takes a pending Ctrl-C, if one came: SIGINT is blocked in every thread (SiloCommand.main), so
/// it waits, pending, for a wait to take it here.
func takePendingInterrupt() -> Bool {
    var interrupt = sigset_t()
    sigemptyset(&interrupt)
    sigaddset(&interrupt, SIGINT)
    var noWait = timespec()
    return sigtimedwait(&interrupt, nil, &noWait) == SIGINT
}

/// Ctrl-C during a wait, taken by the waiting loop, and SIGTERM and SIGHUP taken as Ctrl-C is
/// (kept for the loop by silo_stop_signals_install's handler while it waits). The first cancels
/// the operation (said only when the operation takes it); the command then exits 130, or 128 + the
/// number of the SIGTERM or SIGHUP that cancelled it. An operation past its point of no return, or
/// never cancellable, finishes instead, and then a SIGTERM or SIGHUP ends silo. The second quits at
/// once, whatever the operation is doing: for an operation that cannot end soon (waiting for
/// another process's lock, a rollback stuck on a busy device); a SIGHUP then is ignored, since
/// hang-ups come in pairs and right behind a SIGTERM. What a quit leaves half done, reenumerate
/// tidies, as after any killed run. Outside such a wait, SIGTERM and SIGHUP end silo as their
/// default actions do.
struct Interrupts {
    private var count = 0
    /// The SIGTERM or SIGHUP whose cancel the operation took.
    private var stop: Int32 = 0
    /// The SIGTERM or SIGHUP the operation could not take (it finishes): it ends silo once the
    /// operation has.
    private var unheeded: Int32 = 0

    /// From here on, SIGTERM and SIGHUP are kept for the wait. Their handler is installed by the
    /// first wait, not at start-up: a command that never waits (a query, `run`) keeps their
    /// default actions without it, and starts without its syscalls.
    init() {
        _ = silo_stop_signals_install()
        silo_stop_signals_mode(1)
    }

    /// The wait is over: a SIGTERM or SIGHUP from now on ends silo as its default action does,
    /// and so does one the operation finished despite, or that came as it ended, not taken by the
    /// loop (the operation is whole: done, failed and rolled back, or cancelled).
    func end() {
        silo_stop_signals_mode(0)
        let kept = silo_stop_signal_take()
        if kept != 0 || unheeded != 0 { raise(kept != 0 ? kept : unheeded) }
    }

    mutating func take<Output: Sendable>(_ operation: SiloOperation<Output>) {
        // An operation that has ended takes no cancel: what came meanwhile is for `stopped` and
        // `end` (a Ctrl-C then is too late, and is dropped).
        guard operation.status.isPending else { return }
        let signal = takePendingInterrupt() ? SIGINT : silo_stop_signal_take()
        guard signal != 0 else { return }
        count += 1
        if count > 1 { quit(signal) }
        // From now on a SIGTERM or SIGHUP quits from its handler, even while this thread is busy.
        // One kept between the take above and this change: a SIGTERM is the second signal, and a
        // SIGHUP is dropped, as the handler now drops it.
        silo_stop_signals_mode(2)
        if silo_stop_signal_take() == SIGTERM { quit(SIGTERM) }
        let again = signal == SIGINT ? "Ctrl-C again to quit now" : "again, or Ctrl-C, to quit now"
        let name = signal == SIGTERM ? "SIGTERM: " : signal == SIGHUP ? "SIGHUP: " : ""
        if cancels(operation) {
            if signal != SIGINT { stop = signal }
            cancellingSignal.store(signal, ordering: .relaxed)
            printError(clearLine + name + "cancelling: rolling back... (\(again))")
        } else {
            if signal != SIGINT { unheeded = signal }
            if operation.status.isPending { printError(clearLine + name + "finishing: too far along to cancel (\(again))") }
        }
    }

    /// Whether the operation takes a cancel: one that ended meanwhile (cancel does nothing then)
    /// takes none, unless it ended cancelled.
    private func cancels<Output: Sendable>(_ operation: SiloOperation<Output>) -> Bool {
        guard (try? operation.cancel()) != nil else { return false }
        switch operation.status {
        case .succeeded: return false
        case .failed(let error): return error.code == .operationCancelled
        case .queued, .running: return true
        }
    }

    /// Over a progress bar, the line is cleared first; in a log, no bare carriage return.
    private var clearLine: String { isatty(2) == 1 ? "\r\u{1B}[K" : "" }

    private func quit(_ signal: Int32) -> Never {
        printError(clearLine + "quit before the operation ended: `silo storage reenumerate` and `silo system reenumerate` tidy what it left")
        _exit(128 + signal)  // at once: no atexit handler runs under a worker mid-step
    }

    /// A SIGTERM or SIGHUP that came as the operation failed of something else is what ended it:
    /// a service manager's stop also reaches the programs an operation runs (systemd signals the
    /// whole cgroup, mkfs included), which then fail the step before the loop takes the signal.
    /// The command ends as a cancel by that signal does (128 + its number), with the step's
    /// failure in the message (a failed operation has rolled back what it could).
    mutating func stopped<Output: Sendable>(_ operation: SiloOperation<Output>) throws(SiloError) {
        guard case .failed(let error) = operation.status, error.code != .operationCancelled else { return }
        var signal = stop != 0 ? stop : unheeded
        if signal == 0 { signal = silo_stop_signal_take() }
        guard signal != 0 else { return }
        unheeded = 0  // ended here, with its message, not by `end`
        cancellingSignal.store(signal, ordering: .relaxed)
        throw SiloError(.operationCancelled, "\(signal == SIGTERM ? "SIGTERM" : "SIGHUP") came as the operation failed: \(error.message)")
    }
}

/// The signal whose cancel ended the command's operation: its exit code is 128 + this (130 for
/// Ctrl-C, 143 for SIGTERM, 129 for SIGHUP). A cancel no signal asked for is Ctrl-C's.
let cancellingSignal = Atomic<Int32>(SIGINT)

private func bar(_ progress: OperationProgress) -> String {
    let width = 30
    let filled = progress.percent * width / 100
    var text = "[" + String(repeating: "#", count: filled) + String(repeating: ".", count: width - filled) + "] "
    text += "\(progress.percent)%"
    if let done = progress.completedUnits, let total = progress.totalUnits {
        text += "  \(human(done))/\(human(total))"
    }
    if let rate = progress.unitsPerSecond, rate.isFinite, rate >= 0 { text += "  \(human(rate < 1.8e19 ? UInt64(rate) : .max))/s" }
    if let left = progress.estimatedTimeRemaining { text += "  \(left.components.seconds)s left" }
    if let stage = progress.stage { text += "  \(stage)" }
    return text
}
