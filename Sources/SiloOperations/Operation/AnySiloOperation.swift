/// What every operation offers whatever its output: the form in which events carry operations
/// (`SiloEvent.operation`). Cast to `SiloOperation<Output>` for the typed output.
public protocol AnySiloOperation: AnyObject, Sendable {
    var id: OperationID { get }
    var type: OperationType { get }
    var context: (any Sendable)? { get }
    var status: OperationStatus { get }
    var resultDocument: String? { get }
    func cancel() throws(SiloError)
    /// Blocks like `wait(timeout:)` but discards the output.
    func waitForCompletion(timeout: Duration?) throws(SiloError)
}
