/// A completion callback given with a call [HcsCreateOperation's callback, WS_ASYNC_CONTEXT].
///
/// It runs exactly once, after the call that took it has returned, never on the caller's thread,
/// and never when the call throws. It receives the completed operation: query its result, drop it,
/// or start another operation from inside; none of that deadlocks.
public struct OperationCallback<Output: Sendable>: Sendable {
    public let model: CallbackModel
    let body: @Sendable (SiloOperation<Output>) -> Void

    public init(model: CallbackModel, _ body: @escaping @Sendable (SiloOperation<Output>) -> Void) {
        self.model = model
        self.body = body
    }

    /// Runs on Silo's completion thread; must not block.
    public static func short(_ body: @escaping @Sendable (SiloOperation<Output>) -> Void) -> Self {
        Self(model: .short, body)
    }

    /// Runs on a thread where blocking is allowed.
    public static func long(_ body: @escaping @Sendable (SiloOperation<Output>) -> Void) -> Self {
        Self(model: .long, body)
    }
}
