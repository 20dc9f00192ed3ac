import Glibc
import Silo

/// Waits for an operation, showing its progress on standard error: a bar on a terminal, a plain
/// percent line otherwise. Ctrl-C cancels it; the wait then ends with the rollback done.
/// `options` and `typed`: as `cli`'s, for the operation's own failure (an extend's allocation
/// that runs out of space names `--by`, not the library's `size`).
func waitShowingProgress<Output: Sendable>(_ operation: SiloOperation<Output>, quiet: Bool = false,
                                           options: [String: String] = [:], typed: [String: String] = [:]) throws -> Output {
    var interrupt = sigset_t()
    sigemptyset(&interrupt)
    sigaddset(&interrupt, SIGINT)
    var noWait = timespec()
    let terminal = isatty(2) == 1
    var lastShown = -1
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
        // SIGINT is blocked in every thread (SiloCommand.main); take a pending one here.
        if sigtimedwait(&interrupt, nil, &noWait) == SIGINT {
            // Said only when the operation takes the cancel: one past its point of no return (or
            // never cancellable, as online and offline are) finishes, and says nothing false.
            if (try? operation.cancel()) != nil { printError("\rcancelling: rolling back...") }
        }
    }
    if terminal, lastShown >= 0, !quiet { writeStandardError("\r\u{1B}[K") }
    return try cli(options: options, typed: typed) { try operation.wait() }
}

private func bar(_ progress: OperationProgress) -> String {
    let width = 30
    let filled = progress.percent * width / 100
    var text = "[" + String(repeating: "#", count: filled) + String(repeating: ".", count: width - filled) + "] "
    text += "\(progress.percent)%"
    if let done = progress.completedUnits, let total = progress.totalUnits {
        text += "  \(human(done))/\(human(total))"
    }
    if let rate = progress.unitsPerSecond { text += "  \(human(UInt64(rate)))/s" }
    if let left = progress.estimatedTimeRemaining { text += "  \(left.components.seconds)s left" }
    if let stage = progress.stage { text += "  \(stage)" }
    return text
}
