// Measures the operation model against bare baselines in the same run and prints the ratios.
// Run through scripts/bench/operations (release build). Modes: single | threads | callbacks | all.
#if canImport(Glibc)
import Glibc
#endif
import Dispatch
import SiloOperations
import Synchronization

// MARK: The bare baseline: a one-shot future on a pthread mutex and condition variable.

final class BareFuture: @unchecked Sendable {
    // @unchecked: every field is read and written only under `mutex`.
    private var mutex = pthread_mutex_t()
    private var condition = pthread_cond_t()
    private var value: Int?

    init() {
        pthread_mutex_init(&mutex, nil)
        pthread_cond_init(&condition, nil)
    }

    deinit {
        pthread_cond_destroy(&condition)
        pthread_mutex_destroy(&mutex)
    }

    func complete(_ newValue: Int) {
        pthread_mutex_lock(&mutex)
        value = newValue
        pthread_cond_broadcast(&condition)
        pthread_mutex_unlock(&mutex)
    }

    func wait() -> Int {
        pthread_mutex_lock(&mutex)
        while value == nil { pthread_cond_wait(&condition, &mutex) }
        let result = value ?? 0
        pthread_mutex_unlock(&mutex)
        return result
    }
}

/// A thread that completes the futures handed to it: the baseline's producer for handoffs.
final class BareProducer: @unchecked Sendable {
    // @unchecked: `pending` is touched only under `mutex`.
    private var mutex = pthread_mutex_t()
    private var condition = pthread_cond_t()
    private var pending: [@Sendable () -> Void] = []

    init() {
        pthread_mutex_init(&mutex, nil)
        pthread_cond_init(&condition, nil)
        let thread = Thread { [self] in self.loop() }
        thread.start()
    }

    func submit(_ future: BareFuture) {
        submit { future.complete(1) }
    }

    func submit(_ job: @escaping @Sendable () -> Void) {
        pthread_mutex_lock(&mutex)
        pending.append(job)
        pthread_cond_signal(&condition)
        pthread_mutex_unlock(&mutex)
    }

    private func loop() {
        while true {
            pthread_mutex_lock(&mutex)
            while pending.isEmpty { pthread_cond_wait(&condition, &mutex) }
            let batch = pending
            pending.removeAll(keepingCapacity: true)
            pthread_mutex_unlock(&mutex)
            for job in batch { job() }
        }
    }
}

/// A minimal detached thread, so the benchmark needs no Foundation.
final class Thread: @unchecked Sendable {
    // @unchecked: `body` is set once before the thread starts and only read by it.
    let body: () -> Void
    init(_ body: @escaping () -> Void) { self.body = body }
    func start() {
        var thread = pthread_t()
        let context = Unmanaged.passRetained(self).toOpaque()
        pthread_create(&thread, nil, { raw in
            guard let raw else { return nil }
            Unmanaged<Thread>.fromOpaque(raw).takeRetainedValue().body()
            return nil
        }, context)
        pthread_detach(thread)
    }
}

// MARK: Measuring

func seconds(_ body: () -> Void) -> Double {
    let start = ContinuousClock.now
    body()
    let elapsed = ContinuousClock.now - start
    return Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
}

/// Best of `repeats` runs of `iterations` round trips, as round trips per second.
func rate(iterations: Int, repeats: Int = 5, _ body: (Int) -> Void) -> Double {
    var best = 0.0
    for _ in 0..<repeats {
        let time = seconds { body(iterations) }
        best = max(best, Double(iterations) / time)
    }
    return best
}

func median(_ values: [Double]) -> Double {
    let sorted = values.sorted()
    return sorted[sorted.count / 2]
}

func format(_ value: Double) -> String {
    if value >= 1_000_000 { return String(Int(value / 1000)) + "k" }
    if value >= 10_000 { return String(Int(value / 1000)) + "k" }
    return String(Int(value))
}

func microseconds(_ value: Double) -> String {
    let scaled = (value * 1e7).rounded() / 10
    return "\(scaled) us"
}

func ratio(_ silo: Double, _ baseline: Double) -> String {
    let value = (silo / baseline * 100).rounded() / 100
    return "\(value)x"
}

func pad(_ text: String, _ width: Int) -> String {
    text.count >= width ? text : text + String(repeating: " ", count: width - text.count)
}

func report(_ name: String, silo: String, baseline: String, ratio: String, goal: String) {
    print("\(pad(name, 42)) silo \(pad(silo, 11)) baseline \(pad(baseline, 11)) ratio \(pad(ratio, 7)) \(goal)")
}

let scheduler = OperationScheduler(limits: .init(maxRunning: 256, maxQueued: 1 << 20))

func singleThreaded() {
    let iterations = 400_000
    // Warm up both paths.
    for index in 0..<10_000 {
        _ = try? scheduler.start(.createLun, placement: .inline) { $0.succeed(index) }.wait()
        let future = BareFuture()
        future.complete(index)
        _ = future.wait()
    }
    let silo = rate(iterations: iterations) { count in
        for index in 0..<count {
            let operation: SiloOperation<Int>? = try? scheduler.start(.createLun, placement: .inline) {
                $0.succeed(index)
            }
            _ = try? operation?.wait()
        }
    }
    let bare = rate(iterations: iterations) { count in
        for index in 0..<count {
            let future = BareFuture()
            future.complete(index)
            _ = future.wait()
        }
    }
    report(
        "create → complete → wait, one thread", silo: format(silo) + "/s", baseline: format(bare) + "/s",
        ratio: ratio(bare, silo),
        goal: "goal ≤ 3x: " + (bare / silo <= 3 ? "met" : "NOT met") + "; goal ≥ 300k/s: " + (silo >= 300_000 ? "met" : "NOT met")
    )
}

func parallel() {
    let threads = 4
    let perThread = 100_000
    let silo = rate(iterations: threads * perThread, repeats: 3) { _ in
        DispatchQueue.concurrentPerform(iterations: threads) { _ in
            for index in 0..<perThread {
                _ = try? scheduler.start(.createLun, placement: .inline) { $0.succeed(index) }.wait()
            }
        }
    }
    let bare = rate(iterations: threads * perThread, repeats: 3) { _ in
        DispatchQueue.concurrentPerform(iterations: threads) { _ in
            for index in 0..<perThread {
                let future = BareFuture()
                future.complete(index)
                _ = future.wait()
            }
        }
    }
    report(
        "same, \(threads) threads at once", silo: format(silo) + "/s", baseline: format(bare) + "/s",
        ratio: ratio(bare, silo), goal: "goal ≤ 3x: " + (bare / silo <= 3 ? "met" : "NOT met")
    )
}

func handoff() {
    let iterations = 20_000
    let producer = BareProducer()
    let silo = rate(iterations: iterations, repeats: 3) { count in
        for index in 0..<count {
            _ = try? scheduler.start(.createLun, placement: .worker) { $0.succeed(index) }.wait()
        }
    }
    let bare = rate(iterations: iterations, repeats: 3) { count in
        for _ in 0..<count {
            let future = BareFuture()
            producer.submit(future)
            _ = future.wait()
        }
    }
    report(
        "completed on another thread, waited here", silo: format(silo) + "/s", baseline: format(bare) + "/s",
        ratio: ratio(bare, silo), goal: "goal ≤ 3x: " + (bare / silo <= 3 ? "met" : "NOT met")
    )
}

func callbackLatency() async {
    let samples = 5000
    // Silo: time from succeed() to the start of the .short callback on the completion thread.
    var siloLatencies: [Double] = []
    siloLatencies.reserveCapacity(samples)
    for _ in 0..<samples {
        let started = Mutex<ContinuousClock.Instant?>(nil)
        let latency = Mutex<Double>(0)
        let done = DispatchSemaphore(value: 0)
        _ = try? scheduler.start(.createLun, callback: .short { (_: SiloOperation<Int>) in
            let now = ContinuousClock.now
            if let start = started.withLock({ $0 }) {
                let elapsed = now - start
                latency.withLock { $0 = Double(elapsed.components.attoseconds) / 1e18 + Double(elapsed.components.seconds) }
            }
            done.signal()
        }, placement: .inline) { driver in
            started.withLock { $0 = ContinuousClock.now }
            driver.succeed(1)
        }
        done.wait()
        siloLatencies.append(latency.withLock { $0 })
    }
    // Baseline: time from CheckedContinuation.resume() to the awaiting task running again.
    var bareLatencies: [Double] = []
    bareLatencies.reserveCapacity(samples)
    for _ in 0..<samples {
        let resumedAt = Mutex<ContinuousClock.Instant?>(nil)
        let ready = DispatchSemaphore(value: 0)
        let box = Mutex<CheckedContinuation<Void, Never>?>(nil)
        let task = Task.detached { () -> Double in
            await withCheckedContinuation { continuation in
                box.withLock { $0 = continuation }
                ready.signal()
            }
            let now = ContinuousClock.now
            guard let start = resumedAt.withLock({ $0 }) else { return 0 }
            let elapsed = now - start
            return Double(elapsed.components.attoseconds) / 1e18 + Double(elapsed.components.seconds)
        }
        ready.wait()
        resumedAt.withLock { $0 = ContinuousClock.now }
        box.withLock { $0 }?.resume()
        bareLatencies.append(await task.value)
    }
    let silo = median(siloLatencies)
    let bare = median(bareLatencies)
    report(
        "callback dispatch latency (median)", silo: microseconds(silo), baseline: microseconds(bare),
        ratio: ratio(silo, bare), goal: "goal ≤ 3x: " + (silo / bare <= 3 ? "met" : "NOT met")
    )
}

func awaitRoundTrip() async {
    let iterations = 50_000
    let resumer = BareProducer()
    var best = (silo: 0.0, bare: 0.0)
    for _ in 0..<3 {
        let siloStart = ContinuousClock.now
        for index in 0..<iterations {
            let operation: SiloOperation<Int>? = try? scheduler.start(.createLun, placement: .worker) {
                $0.succeed(index)
            }
            _ = try? await operation?.value
        }
        let siloTime = ContinuousClock.now - siloStart
        let bareStart = ContinuousClock.now
        for _ in 0..<iterations {
            // Resumed from a plain thread, as Silo's operations are: a Dispatch thread would run
            // the resumed task itself and skip the wake-up both sides pay in real use.
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                resumer.submit { continuation.resume() }
            }
        }
        let bareTime = ContinuousClock.now - bareStart
        func perSecond(_ time: Duration) -> Double {
            Double(iterations) / (Double(time.components.seconds) + Double(time.components.attoseconds) / 1e18)
        }
        best = (max(best.silo, perSecond(siloTime)), max(best.bare, perSecond(bareTime)))
    }
    report(
        "await value, completed on another thread", silo: format(best.silo) + "/s",
        baseline: format(best.bare) + "/s", ratio: ratio(best.bare, best.silo),
        goal: "goal ≤ 3x: " + (best.bare / best.silo <= 3 ? "met" : "NOT met")
    )
}

let mode = CommandLine.arguments.dropFirst().first ?? "all"
print("ratio = silo's cost / the baseline's cost (1.0x = as fast as the bare baseline)")
if mode == "single" || mode == "all" { singleThreaded() }
if mode == "threads" || mode == "all" {
    parallel()
    handoff()
    // Off the main actor, where a library caller's tasks usually run.
    await Task.detached { await awaitRoundTrip() }.value
}
if mode == "callbacks" || mode == "all" { await callbackLatency() }

