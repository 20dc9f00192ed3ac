import CSiloProbe
import Dispatch
import SiloOperations
import Synchronization

/// libblkid probes of several devices, on threads of their own (up to four), started when the
/// batch is made. Each probe mostly waits for its device's contents to be read, so the waits
/// overlap. `result` waits for them at most until the batch's deadline: a device whose reads never
/// return (a suspended device-mapper table, a network disk whose server went) leaves its thread
/// blocked, and its probe's result missing, instead of holding up the caller for good.
final class ProbeBatch: Sendable {
    private let paths: [String]
    /// Loop devices' backing files, by device path: read instead of the device where they can be.
    private let backings: [String: LoopBacking]
    private let next = Atomic<Int>(0)
    private let results: Mutex<[String: BlockProbe]>
    private let finished = DispatchSemaphore(value: 0)
    /// How many threads took part of the work (each signals `finished` once).
    private let threads = Atomic<Int>(0)
    /// Whether the threads were waited for.
    private let collected = Mutex(false)
    private let deadline: DispatchTime

    init(paths: [String], backings: [String: LoopBacking] = [:], timeout: Duration = .seconds(10)) {
        self.paths = paths
        self.backings = backings
        self.results = Mutex([:])
        let (seconds, attoseconds) = timeout.components
        self.deadline = .now() + .nanoseconds(Int(min(seconds, 86_400) * 1_000_000_000 + attoseconds / 1_000_000_000))
        guard !paths.isEmpty else { return }
        // Loaded here, once, not by the first probes at the same time.
        _ = silo_blkid()
        var started = 0
        for _ in 0..<min(paths.count, 4) {
            guard PlatformThread.spawn({ [self] in
                work()
                finished.signal()
            }) else { break }
            started += 1
        }
        threads.store(started, ordering: .releasing)
    }

    /// Devices whose probe, of any batch in this process, has not returned: a later batch leaves
    /// them out rather than leave another thread (and descriptor) blocked on each, at every listing.
    private static let inFlight = Mutex<Set<String>>([])

    /// Probes paths until none is left.
    private func work() {
        while true {
            let index = next.add(1, ordering: .relaxed).oldValue
            guard index < paths.count else { break }
            let path = paths[index]
            guard Self.inFlight.withLock({ $0.insert(path).inserted }) else { continue }
            defer { _ = Self.inFlight.withLock { $0.remove(path) } }
            if let probe = try? BlockProbe.probe(path: path, backing: backings[path]) {
                results.withLock { $0[path] = probe }
            }
        }
    }

    /// What the probe of `path` found; nil when it found nothing, could not read the device, or
    /// had not finished by the deadline.
    func result(_ path: String) -> BlockProbe? {
        guard !paths.isEmpty else { return nil }
        collected.withLock { collected in
            guard !collected else { return }
            // No thread could start (none left to the process): what is left is probed here,
            // without a deadline.
            if threads.load(ordering: .acquiring) == 0 { work() }
            for _ in 0..<threads.load(ordering: .acquiring) where finished.wait(timeout: deadline) == .timedOut { break }
            collected = true
        }
        return results.withLock { $0[path] }
    }
}
