import Dispatch
import Synchronization

/// An elastic pool of Silo-owned threads running jobs in FIFO order.
///
/// A job never waits for a thread while the pool is below `maxThreads`: a submit that finds no idle
/// thread for it starts one. Threads idle for `idleTimeout` exit, so an idle process keeps none.
final class ThreadPool: Sendable {
    typealias Job = @Sendable () -> Void

    private struct State {
        var jobs = FIFO<Job>()
        var threads = 0
        var idle = 0
    }

    let name: String
    let maxThreads: Int
    private let idleTimeout: Duration
    private let state = SiloMutex(State())
    /// Counts queued jobs; each submit signals once and each taken job consumed one signal.
    private let available = SpinningSemaphore(spin: ThreadPool.spin)

    init(name: String, maxThreads: Int, idleTimeout: Duration = .seconds(5)) {
        precondition(maxThreads > 0, "a pool needs at least one thread")
        self.name = name
        self.maxThreads = maxThreads
        self.idleTimeout = idleTimeout
    }

    func submit(_ job: @escaping Job) {
        let spawn = state.withLock { state in
            state.jobs.append(job)
            // Jobs not yet taken by an idle thread need threads of their own.
            guard state.jobs.count > state.idle, state.threads < maxThreads else { return false }
            state.threads += 1
            return true
        }
        available.signal()
        if spawn { startThread() }
    }

    /// Threads now alive, for tests and statistics.
    var threadCount: Int { state.withLock { $0.threads } }

    private func startThread() {
        let started = PlatformThread.spawn { [self] in self.workLoop() }
        if !started {
            // The system is out of threads. The job stays queued; an existing thread takes it later,
            // and if this was to be the only one, there is nothing more honest than to stop.
            let alone = state.withLock { state in
                state.threads -= 1
                return state.threads == 0
            }
            if alone { preconditionFailure("\(name): the system refused to start any thread") }
        }
    }

    /// How long an idle thread polls for work before it sleeps in the kernel.
    static let spin: Duration = .microseconds(100)

    private enum Next {
        case run(Job)
        case waitAgain
        case exit
    }

    private func workLoop() {
        while true {
            state.withLock { $0.idle += 1 }
            let timedOut = !available.wait(timeout: idleTimeout)
            let next: Next = state.withLock { state in
                state.idle -= 1
                if timedOut {
                    // No signal consumed. Leave only if nothing is queued; a job queued just now
                    // keeps its signal for whichever thread waits next (this one, looping).
                    guard state.jobs.isEmpty else { return .waitAgain }
                    state.threads -= 1
                    return .exit
                }
                // Every signal follows an append, and every consumed signal pops once.
                guard let job = state.jobs.popFirst() else { return .waitAgain }
                return .run(job)
            }
            switch next {
            case .run(let job): job()
            case .waitAgain: continue
            case .exit: return
            }
        }
    }
}

extension Duration {
    var nanoseconds: Int64 {
        let (seconds, attoseconds) = components
        let total = seconds.multipliedReportingOverflow(by: 1_000_000_000)
        if total.overflow { return seconds < 0 ? 0 : .max }
        let sum = total.partialValue.addingReportingOverflow(attoseconds / 1_000_000_000)
        return sum.overflow ? (seconds < 0 ? 0 : .max) : max(0, sum.partialValue)
    }
}
