import Synchronization

/// Admits operations: at most `maxRunning` run at once, up to `maxQueued` more wait in FIFO order
/// (status `queued`, 0%), and a call beyond that is refused at once with `tooManyOperations`
/// [WWSAPI: limit the outstanding asynchronous operations].
///
/// This is the producer's entry point: ``start(_:context:callback:events:cancellable:placement:_:)``
/// creates the operation and hands the work an ``OperationDriver``; ``run(_:context:callback:events:cancellable:_:)``
/// wraps a blocking body; ``run(_:chain:context:callback:events:)`` runs an ``OperationChain``.
public final class OperationScheduler: Sendable {
    public struct Limits: Sendable, Hashable {
        /// Operations admitted (running) at once.
        public var maxRunning: Int
        /// Operations waiting for a slot; one more is refused with `tooManyOperations`.
        public var maxQueued: Int

        public init(maxRunning: Int = 64, maxQueued: Int = 4096) {
            self.maxRunning = maxRunning
            self.maxQueued = maxQueued
        }
    }

    /// Where admitted work starts.
    public enum Placement: Sendable, Hashable {
        /// On a Silo worker thread: the work may block (system calls, I/O, waiting on a child).
        case worker
        /// On the calling thread, inside the call, when admitted at once: the work must not block;
        /// it completes at once or starts something that completes later. Work admitted from the
        /// queue starts on a worker thread.
        case inline
    }

    /// The scheduler Silo's storage and compute calls use unless given another.
    public static let shared = OperationScheduler()

    public let limits: Limits
    /// Work meant for a worker thread runs on the thread that starts it, inside the call, when it
    /// is admitted at once (see ``init(limits:runsOnCaller:)``).
    public let runsOnCaller: Bool
    let workerPool: ThreadPool
    /// Admitted operations. Changed with atomics so that the common case, a free slot and an
    /// empty queue, takes no lock.
    private let running = Atomic<Int>(0)
    /// `queue.count`, readable without the lock.
    private let queuedCount = Atomic<Int>(0)
    private let queue = SiloMutex(FIFO<Queued>())
    private static let lastID = Atomic<UInt64>(0)

    private struct Queued {
        let id: OperationID
        /// Moves the operation to running; false if it was cancelled while queued.
        let admit: @Sendable () -> Bool
        /// Starts its work (once admitted).
        let launch: @Sendable () -> Void
    }

    /// - Parameter runsOnCaller: run blocking work on the thread that starts it, inside the call,
    ///   instead of on a worker thread: for a caller that waits for each operation right away and
    ///   wants neither its progress nor to cancel it meanwhile, such as a command-line tool's quick
    ///   commands (a worker thread cost each such process its creation and two hand-overs). The call
    ///   then returns a completed operation, which O1 allows; callbacks still run after the call
    ///   returns (O11). Work admitted from the queue still starts on a worker thread.
    public init(limits: Limits = Limits(), runsOnCaller: Bool = false) {
        precondition(limits.maxRunning > 0 && limits.maxQueued >= 0, "limits must allow one running operation")
        self.limits = limits
        self.runsOnCaller = runsOnCaller
        // Twice the slots: a slot is given back when its operation completes, which may be before
        // its work returns (an operation failed by its cancel handler while its body still blocks,
        // a producer that completes and then tidies up); an operation admitted into that slot
        // must not wait for a thread, least of all one whose body waits for it. Threads are made
        // only when needed.
        let (threads, overflow) = limits.maxRunning.multipliedReportingOverflow(by: 2)
        self.workerPool = ThreadPool(name: "silo-worker", maxThreads: overflow ? Int.max : threads)
    }

    /// Operations admitted now and operations waiting, for statistics and tests.
    public var load: (running: Int, queued: Int) {
        (running.load(ordering: .sequentiallyConsistent), queuedCount.load(ordering: .sequentiallyConsistent))
    }

    /// Creates an operation and starts `work` when a slot is free.
    ///
    /// `work` gets the driver and completes it at once or later, from any thread. Arguments are
    /// checked before anything is created: a refused call throws, creates no operation and runs no
    /// callback (E3).
    /// - Throws: `tooManyOperations` when the queue is full; `operationSystemCallbackAlreadySet`
    ///   when `events` routes completions to its handler and `callback` is given.
    public func start<Output: Sendable>(
        _ type: OperationType,
        context: (any Sendable)? = nil,
        callback: OperationCallback<Output>? = nil,
        events: EventChannel? = nil,
        cancellable: Bool = true,
        placement: Placement = .worker,
        _ work: @escaping @Sendable (OperationDriver<Output>) -> Void
    ) throws(SiloError) -> SiloOperation<Output> {
        try start(type, context: context, callback: callback, events: events, cancellable: cancellable,
                  placement: placement, withdrawn: nil, work)
    }

    func start<Output: Sendable>(
        _ type: OperationType,
        context: (any Sendable)?,
        callback: OperationCallback<Output>?,
        events: EventChannel?,
        cancellable: Bool,
        placement: Placement,
        withdrawn: (@Sendable () throws -> Void)?,
        _ work: @escaping @Sendable (OperationDriver<Output>) -> Void
    ) throws(SiloError) -> SiloOperation<Output> {
        if let events { try events.checkCall(bringsCallback: callback != nil) }
        let id = OperationID(rawValue: Self.lastID.add(1, ordering: .relaxed).newValue)
        let operation = SiloOperation<Output>(
            id: id,
            type: type,
            context: context,
            cancellable: cancellable,
            callback: callback,
            channel: events,
            scheduler: self
        )
        if let withdrawn { operation.setWithdrawnCleanup(withdrawn) }
        // FIFO: a newcomer takes a free slot only when nobody is queued before it.
        if queuedCount.load(ordering: .sequentiallyConsistent) == 0, acquireSlot() {
            launch(operation, placement: placement, work)
        } else {
            let admittedNow = try queue.withLock { (queue) throws(SiloError) -> Bool in
                // A slot freed since the check, with nobody queued before this one: it starts now,
                // not refused as too many (a full queue of 0) nor queued behind nobody.
                if queue.isEmpty, acquireSlot() { return true }
                guard queue.count < limits.maxQueued else {
                    throw SiloError(
                        .tooManyOperations,
                        "too many operations: \(running.load(ordering: .relaxed)) running and \(queue.count) queued "
                            + "(limits \(limits.maxRunning) and \(limits.maxQueued)); try again later",
                        field: "maxQueued",
                        value: "\(limits.maxQueued)"
                    )
                }
                operation.markQueued()
                queue.append(queuedEntry(operation, work))
                queuedCount.store(queue.count, ordering: .sequentiallyConsistent)
                return false
            }
            if admittedNow {
                launch(operation, placement: placement, work)
            } else {
                // A slot may have freed between the check above and the append.
                admitQueued()
            }
        }
        operation.publish()
        return operation
    }

    /// Runs a blocking body on a worker thread; its return value completes the operation, its
    /// error fails it. A `cancellable` body polls `driver.isCancelled` (or calls
    /// `checkCancellation()`) and undoes its work, and calls `driver.enterPointOfNoReturn()`
    /// before a change it cannot undo (a cancel after that is refused as too late). A cancel
    /// accepted after the body's last look still ends the operation cancelled (O8): a body keeps
    /// nothing it cannot undo past its last look, unless it entered the point of no return.
    /// - Parameter withdrawn: undoes what the call did before the operation (a mark it placed)
    ///   when the operation is cancelled while queued, and `body` never runs; as a chain's cleanup.
    public func run<Output: Sendable>(
        _ type: OperationType,
        context: (any Sendable)? = nil,
        callback: OperationCallback<Output>? = nil,
        events: EventChannel? = nil,
        cancellable: Bool = true,
        withdrawn: (@Sendable () throws -> Void)? = nil,
        _ body: @escaping @Sendable (OperationDriver<Output>) throws -> Output
    ) throws(SiloError) -> SiloOperation<Output> {
        try start(type, context: context, callback: callback, events: events, cancellable: cancellable,
                  placement: .worker, withdrawn: withdrawn) { driver in
            do {
                let output = try body(driver)
                // A cancel accepted after the body's last look ends the operation cancelled (O8),
                // not accepted and then lost to the success; one from here on is too late (O9).
                try driver.enterPointOfNoReturn()
                driver.succeed(output)
            } catch {
                let error = SiloError(error)
                driver.fail(driver.isCancelled && error.code != .operationCancelled
                    ? driver.cancellationError.adding(.init(message: error.message, source: "step"))
                    : error)
            }
        }
    }

    private func launch<Output>(
        _ operation: SiloOperation<Output>,
        placement: Placement,
        _ work: @escaping @Sendable (OperationDriver<Output>) -> Void
    ) {
        switch placement {
        case .inline:
            work(OperationDriver(operation))
        case .worker where runsOnCaller:
            work(OperationDriver(operation))
        case .worker:
            workerPool.submit { work(OperationDriver(operation)) }
        }
    }

    private func queuedEntry<Output>(
        _ operation: SiloOperation<Output>,
        _ work: @escaping @Sendable (OperationDriver<Output>) -> Void
    ) -> Queued {
        // From the queue, always on a worker: the releasing thread may be anyone's.
        Queued(id: operation.id, admit: { operation.admit() }, launch: { [self] in self.workerPool.submit { work(OperationDriver(operation)) } })
    }

    /// Removes a queued operation; false if it already left the queue.
    func withdraw(_ id: OperationID) -> Bool {
        queue.withLock { queue in
            let removed = queue.removeFirst(where: { $0.id == id }) != nil
            queuedCount.store(queue.count, ordering: .sequentiallyConsistent)
            return removed
        }
    }

    /// Gives back a running slot; the first queued operation takes it.
    func release() {
        releaseSlot()
        admitAfterRelease()
    }

    /// The slot's count alone (an atomic, no lock): an operation gives it back before anyone can
    /// see it completed, then calls ``admitAfterRelease()``.
    func releaseSlot() {
        running.subtract(1, ordering: .sequentiallyConsistent)
    }

    func admitAfterRelease() {
        if queuedCount.load(ordering: .sequentiallyConsistent) > 0 { admitQueued() }
    }

    private func acquireSlot() -> Bool {
        // Sequentially consistent, like release(): an enqueuer stores queuedCount then reads
        // running, a releaser stores running then reads queuedCount; with weaker orderings both
        // could miss the other's store and leave an operation queued beside a free slot.
        var current = running.load(ordering: .sequentiallyConsistent)
        while current < limits.maxRunning {
            let (exchanged, original) = running.compareExchange(
                expected: current, desired: current + 1, ordering: .sequentiallyConsistent
            )
            if exchanged { return true }
            current = original
        }
        return false
    }

    /// Launches queued operations, in order, while slots are free. Both sides of the race (a
    /// release that finds the queue empty, an append that finds no slot) call this after their
    /// change, so no operation waits while a slot is free.
    private func admitQueued() {
        while queuedCount.load(ordering: .sequentiallyConsistent) > 0, acquireSlot() {
            // Admitted under the queue's lock: one cancelled while queued stays in the queue for its
            // cancel(), which withdraws it and completes it on the cancelling thread (after its
            // cleanup, before that call returns), never on this one.
            let next: Queued? = queue.withLock { queue in
                let next = if let first = queue.first, first.admit() { queue.popFirst() } else { queue.removeFirst { $0.admit() } }
                queuedCount.store(queue.count, ordering: .sequentiallyConsistent)
                // Nothing that can start (the queue is empty, or all of it is being withdrawn):
                // the slot goes back under the queue's lock, so an append after this finds it
                // free; given back after the unlock, an append in between would find no slot,
                // and its operation would wait beside a free one with nobody to admit it.
                if next == nil { running.subtract(1, ordering: .sequentiallyConsistent) }
                return next
            }
            guard let next else { return }
            next.launch()
        }
    }
}
