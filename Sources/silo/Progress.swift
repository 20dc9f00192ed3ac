import Glibc
import Silo

/// Waits for an operation, showing its progress on standard error: a bar on a terminal, a plain
/// percent line otherwise. Ctrl-C cancels it; the wait then ends with the rollback done.
/// `options` and `typed`: as `cli`'s, for the operation's own failure (an extend's allocation
/// that runs out of space names `--by`, not the library's `size`).
func waitShowingProgress<Output: Sendable>(_ operation: SiloOperation<Output>, quiet: Bool = false,
                                           options: [String: String] = [:], typed: [String: String] = [:]) throws -> Output {
    let terminal = isatty(2) == 1
    var lastShown = -1
    var interrupts = Interrupts()
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
    return try cli(options: options, typed: typed) { try operation.wait() }
}

/// Waits for an operation that shows no progress (a system's start, pause, shutdown...), with
/// Ctrl-C read as `waitShowingProgress` reads it; its failure is thrown as the operation's error.
func waitInterruptibly<Output: Sendable>(_ operation: SiloOperation<Output>) throws(SiloError) -> Output {
    var interrupts = Interrupts()
    while operation.status.isPending {
        _ = try? operation.wait(timeout: .milliseconds(100))
        interrupts.take(operation)
    }
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

/// Ctrl-C during a wait, taken by the waiting loop. The first cancels the operation (said only when the
/// operation takes it: one past its point of no return, or never cancellable, finishes). The
/// second quits at once with 130, whatever the operation is doing: for an operation that cannot
/// end soon (waiting for another process's lock, a rollback stuck on a busy device). What a quit
/// leaves half done, reenumerate tidies, as after any killed run.
struct Interrupts {
    private var count = 0

    mutating func take<Output: Sendable>(_ operation: SiloOperation<Output>) {
        guard takePendingInterrupt() else { return }
        count += 1
        // Over a progress bar, the line is cleared first; in a log, no bare carriage return.
        let start = isatty(2) == 1 ? "\r\u{1B}[K" : ""
        if count > 1 {
            printError(start + "quit before the operation ended: `silo storage reenumerate` and `silo system reenumerate` tidy what it left")
            _exit(130)  // at once: no atexit handler runs under a worker mid-step
        }
        if (try? operation.cancel()) != nil {
            printError(start + "cancelling: rolling back... (Ctrl-C again to quit now)")
        } else {
            printError(start + "finishing: too far along to cancel (Ctrl-C again to quit now)")
        }
    }
}

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
