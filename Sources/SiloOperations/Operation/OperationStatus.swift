/// Where an operation stands, read without blocking [VDS IVdsAsync::QueryStatus, HcsGetOperationResult].
public enum OperationStatus: Sendable, Equatable {
    /// Admitted to nothing yet: waiting in the scheduler's FIFO queue, at 0%.
    case queued
    /// Running; `progress.percent` is in 0...99 and never decreases.
    case running(OperationProgress)
    /// Completed with its output; 100%.
    case succeeded
    /// Completed with an error (a cancel completes with `operationCancelled`); 0%.
    case failed(SiloError)

    /// True while queued or running: the VDS/HCS "operation pending" state.
    public var isPending: Bool {
        switch self {
        case .queued, .running: true
        case .succeeded, .failed: false
        }
    }

    /// 0...99 while pending, 100 on success, 0 after failure [VDS percent-complete rules].
    public var percentComplete: Int {
        switch self {
        case .queued, .failed: 0
        case .running(let progress): progress.percent
        case .succeeded: 100
        }
    }

    public var error: SiloError? {
        if case .failed(let error) = self { return error }
        return nil
    }

    /// The progress of a running operation: percent, and for byte-counting steps the bytes done,
    /// the total, the rate, the time left and the stage; nil when it is not running.
    public var progress: OperationProgress? {
        if case .running(let progress) = self { return progress }
        return nil
    }
}

/// Progress a person can use: percent, and where the producer counts units (bytes), how many are
/// done, the rate and an estimate of the time left.
public struct OperationProgress: Sendable, Equatable {
    /// 0...99; 100 is reported only by completion.
    public var percent: Int
    /// Units done in the current unit-counting stage (bytes zeroed, bytes copied), if it counts any.
    public var completedUnits: UInt64?
    public var totalUnits: UInt64?
    /// Units per second since the stage began.
    public var unitsPerSecond: Double?
    /// Time left at the current rate.
    public var estimatedTimeRemaining: Duration?
    /// The name of the step now running, for chains.
    public var stage: String?

    public init(
        percent: Int = 0,
        completedUnits: UInt64? = nil,
        totalUnits: UInt64? = nil,
        unitsPerSecond: Double? = nil,
        estimatedTimeRemaining: Duration? = nil,
        stage: String? = nil
    ) {
        self.percent = percent
        self.completedUnits = completedUnits
        self.totalUnits = totalUnits
        self.unitsPerSecond = unitsPerSecond
        self.estimatedTimeRemaining = estimatedTimeRemaining
        self.stage = stage
    }
}
