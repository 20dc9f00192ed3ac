/// Where callbacks run [WS_CALLBACK_MODEL].
public enum CallbackModel: Sendable, Hashable {
    /// On Silo's completion thread, one callback at a time, in completion order. The callback must
    /// not block: a slow one delays every other `.short` callback.
    case short
    /// On a thread of its own from Silo's callback pool; it may block as long as it needs. Silo
    /// starts a thread whenever none is free, so a slow `.long` callback delays nothing else.
    case long
}

/// The threads that run callbacks and event handlers. Never the caller's.
enum CallbackThreads {
    /// Silo's completion thread: runs `.short` callbacks and handlers in order.
    static let completion = ThreadPool(name: "silo-completion", maxThreads: 1)
    /// Runs `.long` callbacks, one thread each while they run.
    static let long = ThreadPool(name: "silo-callback", maxThreads: 4096)

    static func run(_ model: CallbackModel, _ job: @escaping ThreadPool.Job) {
        switch model {
        case .short: completion.submit(job)
        case .long: long.submit(job)
        }
    }
}
