import Glibc
import Foundation
import Testing

@testable import SiloOperations

@Suite("Errors and result documents")
struct ErrorTests {
    @Test("E1 a failure names its field and value and carries a stable code")
    func errorNamesFieldAndValue() {
        let error = SiloError.invalidArgument(field: "size", value: "-1", reason: "must be greater than zero")
        #expect(error.code == .invalidArgument)
        #expect(error.field == "size")
        #expect(error.value == "-1")
        #expect(error.message.contains("size"))
        #expect(error.message.contains("'-1'"))
        #expect(error.description == error.message)
    }

    @Test(
        "E1 codes keep the original API's numeric values",
        arguments: [
            (SiloError.Code.invalidArgument, 0x8007_0057 as UInt32),
            (.notSupported, 0x8004_2400), (.anotherCallInProgress, 0x8004_2404), (.objectNotFound, 0x8004_2405),
            (.objectDeleted, 0x8004_240B), (.cancelTooLate, 0x8004_240C), (.operationCancelled, 0x8004_240D),
            (.notEnoughSpace, 0x8004_240F), (.deviceInUse, 0x8004_2413), (.shrinkOverData, 0x8004_2816),
            (.invalidShrinkSize, 0x8004_2817), (.invalidState, 0x8037_0105), (.invalidJSON, 0x8037_010D),
            (.systemNotFound, 0x8037_010E), (.systemAlreadyExists, 0x8037_010F),
            (.systemAlreadyStopped, 0x8037_0110), (.operationPending, 0x8037_0117),
            (.operationTimeout, 0x8037_0118), (.operationSystemCallbackAlreadySet, 0x8037_0119),
            (.processAlreadyStopped, 0x8037_011F), (.tooManyOperations, 0x803D_0008),
        ]
    )
    func codeValues(code: SiloError.Code, value: UInt32) {
        #expect(code.rawValue == value, "\(code.name) should be 0x\(String(value, radix: 16))")
        #expect(code.hresult == Int32(bitPattern: value))
        #expect(SiloError.Code(hresult: code.hresult) == code)
    }

    @Test("E1 codes are distinct and their names are the case names")
    func codeNames() {
        let all = SiloError.Code.allCases
        #expect(Set(all.map(\.rawValue)).count == all.count)
        #expect(SiloError.Code.operationCancelled.name == "operationCancelled")
        #expect(SiloError.Code.tooManyOperations.description == "tooManyOperations (0x803D0008)")
    }

    @Test("E1 a refused system call carries the syscall, errno and path")
    func systemError() {
        let error = SiloError.system("LOOP_CONFIGURE", errno: 16, path: "/dev/loop7")
        #expect(error.code == .systemCallFailed)
        #expect(error.syscall == "LOOP_CONFIGURE")
        #expect(error.errno == 16)
        #expect(error.value == "/dev/loop7")
        #expect(error.message.contains("LOOP_CONFIGURE") && error.message.contains("/dev/loop7"))
        #expect(SiloError.system("mount", errno: 1).code == .accessDenied)
        #expect(SiloError.system("write", errno: 28).code == .notEnoughSpace)
        #expect(error.message == "LOOP_CONFIGURE on /dev/loop7 failed: Device or resource busy (errno 16)", "says what the errno means")
        #expect(SiloError.system("ioctl", errno: 4095).message == "ioctl failed (errno 4095)", "an unknown errno by its number")
    }

    @Test("E1 the errno descriptions are the C library's own words")
    func errnoDescriptionsMatch() {
        for (number, text) in SiloOperations.errnoDescriptions {
            #expect(String(cString: strerror(number)) == text, "errno \(number)")
        }
    }

    @Test("E2 a failed operation's result document is the HCS ResultError JSON")
    func resultDocumentOfFailure() throws {
        let scheduler = OperationScheduler()
        let failure = SiloError.invalidArgument(field: "SizeInMB", value: "0", reason: "must be at least 4")
            .adding(.init(message: "rollback of step 'attach' failed", source: "rollback"))
        let operation: SiloOperation<Int> = try scheduler.start(.createComputeSystem) { $0.fail(failure) }
        #expect(throws: failure) { try operation.wait() }

        let text = try #require(operation.resultDocument)
        let json = try #require(try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any])
        #expect(json["Error"] as? Int == Int(Int32(bitPattern: 0x8007_0057)))
        #expect(json["ErrorMessage"] as? String == failure.message)
        let events = try #require(json["ErrorEvents"] as? [[String: Any]])
        #expect(events.count == 1)
        #expect(events.first?["Message"] as? String == "rollback of step 'attach' failed")
        #expect(try SiloError(resultDocument: text) == failure)
    }

    @Test("E2 a successful operation's result document is its output as JSON")
    func resultDocumentOfSuccess() throws {
        struct Properties: Codable, Sendable, Equatable { var Id: String; var SizeInMB: Int }
        let scheduler = OperationScheduler()
        let operation: SiloOperation<Properties> = try scheduler.start(.getProperties, placement: .inline) {
            $0.succeed(Properties(Id: "test", SizeInMB: 1024))
        }
        #expect(operation.resultDocument == #"{"Id":"test","SizeInMB":1024}"#)
        let pending: SiloOperation<Int> = try scheduler.start(.start) { _ = $0 }  // abandoned below
        _ = try? pending.wait()
        #expect(try SiloError(resultDocument: #require(pending.resultDocument)).code == .operationAbandoned)
    }

    @Test("E3 an invalid call throws at once: no operation, no callback, no work, nothing changes")
    func invalidCallThrowsSynchronously() throws {
        let scheduler = OperationScheduler(limits: .init(maxRunning: 1, maxQueued: 0))
        let channel = EventChannel(owner: "system-e3")
        try channel.setHandler(options: .operationCallbacks) { _ in }
        let workRan = Counter()
        let callbackRan = Counter()
        let both = #expect(throws: SiloError.self) {
            _ = try scheduler.start(.start, callback: .short { (_: SiloOperation<Int>) in callbackRan.increment() },
                                    events: channel) { _ in workRan.increment() }
        }
        #expect(both?.code == .operationSystemCallbackAlreadySet, "\(String(describing: both))")
        // Full scheduler: the refused call must not leave a queued entry or a slot taken.
        let release = Signal()
        let running = try blockedOperation(on: scheduler, output: 1, release: release)
        let error = #expect(throws: SiloError.self) {
            _ = try scheduler.start(.start, callback: .short { (_: SiloOperation<Int>) in callbackRan.increment() }) {
                _ in workRan.increment()
            }
        }
        #expect(error?.code == .tooManyOperations)
        #expect(error?.field == "maxQueued" && error?.value == "0")
        #expect(scheduler.load == (running: 1, queued: 0))
        release.fire()
        #expect(try running.wait() == 1)
        usleepMilliseconds(50)
        #expect(workRan.value == 0)
        #expect(callbackRan.value == 0)
        #expect(eventually { scheduler.load == (running: 0, queued: 0) })
        channel.close()
    }
}
