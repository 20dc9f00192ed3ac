import CSiloProbe
import Dispatch
import SiloOperations
import Synchronization

/// libblkid probes of several devices: all but one start on threads of their own (up to three)
/// when the batch is made; the first `result` probes what is left on the maker's thread, then
/// waits for the others. Each probe mostly waits for its device's contents to be read, so the
/// waits overlap. One device costs no thread (a thread's creation took 0.1-0.25 ms here).
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

    init(paths: [String], backings: [String: LoopBacking] = [:]) {
        self.paths = paths
        self.backings = backings
        self.results = Mutex([:])
        guard !paths.isEmpty else { return }
        // Loaded here, once, not by the first probes at the same time.
        _ = silo_blkid()
        var started = 0
        for _ in 0..<min(paths.count - 1, 3) {
            guard PlatformThread.spawn({ [self] in
                work()
                finished.signal()
            }) else { break }
            started += 1
        }
        threads.store(started, ordering: .releasing)
    }

    /// Probes paths until none is left.
    private func work() {
        while true {
            let index = next.add(1, ordering: .relaxed).oldValue
            guard index < paths.count else { break }
            if let probe = try? BlockProbe.probe(path: paths[index], backing: backings[paths[index]]) {
                results.withLock { $0[paths[index]] = probe }
            }
        }
    }

    /// What the probe of `path` found; nil when it found nothing or could not read the device.
    func result(_ path: String) -> BlockProbe? {
        guard !paths.isEmpty else { return nil }
        collected.withLock { collected in
            guard !collected else { return }
            work()
            for _ in 0..<threads.load(ordering: .acquiring) { finished.wait() }
            collected = true
        }
        return results.withLock { $0[path] }
    }
}
