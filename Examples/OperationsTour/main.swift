// A tour of Silo's operation model: create, wait, check the output, with progress, cancel,
// callbacks, event handlers and await. `scripts/demo` runs it.
import Dispatch
import SiloOperations

/// A make-believe provisioning: three steps with weights, the long one reporting bytes, each with
/// a rollback. Storage's real `createLun` is built the same way.
func provisioning(name: String, bytes: UInt64, log: @escaping @Sendable (String) -> Void) -> OperationChain<String> {
    OperationChain([
        OperationStep("create backing file", weight: 1, run: { _ in log("  step: create \(name).img") },
                      rollback: { log("  rollback: remove \(name).img") }),
        OperationStep("zero", weight: 8, run: { step in
            var done: UInt64 = 0
            while done < bytes {
                try step.checkCancellation()
                sleepMilliseconds(20)
                done += bytes / 50
                step.reportProgress(completed: min(done, bytes), of: bytes)
            }
        }),
        OperationStep("register", weight: 1, pointOfNoReturn: true, run: { _ in log("  step: register \(name)") }),
    ], output: { "/dev/silo/\(name)" })
}

func sleepMilliseconds(_ milliseconds: Int) {
    _ = DispatchSemaphore(value: 0).wait(timeout: .now() + .milliseconds(milliseconds))
}

func bar(_ status: OperationStatus) -> String {
    let percent = status.percentComplete
    let filled = percent / 5
    var line = "[" + String(repeating: "#", count: filled) + String(repeating: ".", count: 20 - filled) + "] \(percent)%"
    if case .running(let progress) = status, let rate = progress.unitsPerSecond,
       let left = progress.estimatedTimeRemaining {
        line += "  \(Int(rate / 1_048_576)) MiB/s, \(left.components.seconds)s left (\(progress.stage ?? ""))"
    }
    return line
}

let say: @Sendable (String) -> Void = { print($0) }
let scheduler = OperationScheduler.shared

print("1. Create, watch progress, wait, check the output")
let create = try scheduler.run(.createLun, chain: provisioning(name: "db1", bytes: 1 << 30, log: say))
while create.status.isPending {
    print("  " + bar(create.status))
    sleepMilliseconds(200)
}
let device = try create.wait()
print("  done: \(device), status \(create.status), result document \(create.resultDocument ?? "")")

print("\n2. Cancel half-way: completed steps roll back, every waiter wakes with operationCancelled")
let doomed = try scheduler.run(.createLun, chain: provisioning(name: "db2", bytes: 1 << 30, log: say))
while doomed.status.percentComplete < 40 { sleepMilliseconds(10) }
print("  cancelling at \(doomed.status.percentComplete)%")
try doomed.cancel()
do {
    _ = try doomed.wait()
} catch {
    print("  wait threw \(error.code): \(error.message)")
    print("  result document: \(doomed.resultDocument ?? "")")
}

print("\n3. A wait that times out leaves the operation running")
let slow: SiloOperation<Int> = try scheduler.run(.start) { _ in
    sleepMilliseconds(300)
    return 42
}
do {
    _ = try slow.wait(timeout: .milliseconds(50))
} catch {
    print("  \(error.code): \(error.message)")
}
print("  a later wait returns \(try slow.wait())")

print("\n4. A completion callback, given with the call, runs once on Silo's completion thread")
let called = DispatchSemaphore(value: 0)
_ = try scheduler.run(.getProperties, callback: .short { (operation: SiloOperation<String>) in
    print("  callback: operation \(operation.id) (\(operation.type)) → \((try? operation.wait()) ?? "?")")
    called.signal()
}) { _ in "{\"State\":\"Running\"}" }
called.wait()

print("\n5. An event handler with operationCallbacks receives completions instead")
let handle = EventChannel(owner: "demo-system")
let delivered = DispatchSemaphore(value: 0)
try handle.setHandler(options: .operationCallbacks) { event in
    print("  event \(event.type): operation \(event.operation?.id.description ?? "-") → \(event.operation?.resultDocument ?? "")")
    delivered.signal()
}
_ = try scheduler.run(.pause, events: handle) { _ in 1 }
delivered.wait()
do {
    _ = try scheduler.run(.resume, callback: .short { (_: SiloOperation<Int>) in }, events: handle) { _ in 1 }
} catch {
    print("  a call that brings its own callback is refused: \(error.code)")
}
handle.close()

print("\n6. await")
let awaited: SiloOperation<[String]> = try scheduler.run(.enumerate) { _ in ["db1", "web"] }
print("  await value → \(try await awaited.value)")
