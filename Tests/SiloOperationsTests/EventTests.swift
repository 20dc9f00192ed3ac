import Dispatch
import Synchronization
import Testing

@testable import SiloOperations

@Suite("Event handlers on handles")
struct EventTests {
    let scheduler = OperationScheduler()

    @Test("O16 with operationCallbacks, callback-less completions arrive as operationCompleted events")
    func operationCompletedEvents() throws {
        let channel = EventChannel(owner: "system-o16")
        defer { channel.close() }
        let events = Recorder<(SiloEventType, OperationID?, String?)>()
        let got = Signal()
        try channel.setHandler(options: .operationCallbacks) { event in
            events.append((event.type, event.operation?.id, event.operation?.resultDocument))
            got.fire()
        }
        let operation: SiloOperation<Int> = try scheduler.start(.start, events: channel) { $0.succeed(4) }
        #expect(got.wait())
        #expect(try operation.wait() == 4)
        let event = try #require(events.values.first)
        #expect(event.0 == .operationCompleted)
        #expect(event.1 == operation.id)
        #expect(event.2 == "4")
        // Operations on objects without that option routed nowhere: no event.
        let plain = EventChannel(owner: "system-plain")
        try plain.setHandler { _ in events.append((.systemExited, nil, nil)) }
        _ = try scheduler.start(.start, events: plain) { (driver: OperationDriver<Int>) in driver.succeed(1) }.wait()
        usleepMilliseconds(50)
        #expect(events.count == 1)
        plain.close()
    }

    @Test("The hook for 'a handler is set' runs once, whether it comes before or after the handler")
    func handlerSetHookOnce() throws {
        for hookFirst in [true, false] {
            let channel = EventChannel(owner: "system-hook")
            defer { channel.close() }
            let calls = Counter()
            if hookFirst { channel.whenHandlerSet { calls.increment() } }
            #expect(calls.value == 0)
            try channel.setHandler { _ in }
            if !hookFirst { channel.whenHandlerSet { calls.increment() } }
            #expect(calls.value == 1, "hook first: \(hookFirst)")
        }
    }

    @Test("O16 an operation with its own callback is not routed to a handler without the option")
    func ownCallbackWithoutOption() throws {
        let channel = EventChannel(owner: "system")
        defer { channel.close() }
        let events = Counter()
        try channel.setHandler { _ in events.increment() }
        let called = Signal()
        _ = try scheduler.start(.start, callback: .short { (_: SiloOperation<Int>) in called.fire() }, events: channel) {
            $0.succeed(1)
        }
        #expect(called.wait())
        usleepMilliseconds(30)
        #expect(events.value == 0)
    }

    @Test("O17 with such a handler, a call bringing its own callback is refused")
    func callbackAlreadySet() throws {
        let channel = EventChannel(owner: "system-o17")
        defer { channel.close() }
        try channel.setHandler(options: .operationCallbacks) { _ in }
        let ran = Counter()
        let error = #expect(throws: SiloError.self) {
            _ = try scheduler.start(.start, callback: .short { (_: SiloOperation<Int>) in }, events: channel) {
                _ in ran.increment()
            }
        }
        #expect(error?.code == .operationSystemCallbackAlreadySet)
        #expect(error?.code.rawValue == 0x8037_0119)
        #expect(ran.value == 0)
    }

    @Test("O17 registering a second handler on the same handle is refused")
    func secondHandler() throws {
        let channel = EventChannel(owner: "system-o17b")
        defer { channel.close() }
        try channel.setHandler { _ in }
        let error = #expect(throws: SiloError.self) { try channel.setHandler(options: .operationCallbacks) { _ in } }
        #expect(error?.code == .operationSystemCallbackAlreadySet)
        #expect(!channel.routesOperationCompletions, "the refused registration must change nothing")
    }

    @Test("O18 nothing is delivered after close, and closing delivers no event")
    func nothingAfterClose() throws {
        let channel = EventChannel(owner: "system-o18")
        let events = Counter()
        try channel.setHandler(options: .operationCallbacks) { _ in events.increment() }
        let release = Signal()
        let operation = try blockedOperation(on: scheduler, output: 1, release: release, events: channel)
        channel.close()
        channel.post(SiloEvent(type: .systemExited, data: #"{"ExitType":"Forced"}"#))
        release.fire()
        _ = try operation.wait()
        usleepMilliseconds(50)
        #expect(events.value == 0)
        #expect(throws: SiloError.self) { try channel.setHandler { _ in } }
        #expect(throws: SiloError.self) {
            _ = try scheduler.start(.start, events: channel) { (driver: OperationDriver<Int>) in driver.succeed(1) }
        }
    }

    @Test("O18 close waits for a handler running on another thread; no call starts after it returns")
    func closeWaitsForRunningHandler() throws {
        let channel = EventChannel(owner: "system-o18b")
        let inHandler = Signal()
        let handlerMayReturn = Signal()
        let calls = Counter()
        let afterClose = Atomic<Bool>(false)
        let lateCall = Atomic<Bool>(false)
        let handlerReturned = Atomic<Bool>(false)
        try channel.setHandler(model: .long) { _ in
            if afterClose.load(ordering: .acquiring) { lateCall.store(true, ordering: .relaxed) }
            calls.increment()
            inHandler.fire()
            _ = handlerMayReturn.wait()
            handlerReturned.store(true, ordering: .releasing)
        }
        for _ in 0..<5 { channel.post(SiloEvent(type: .processExited)) }
        #expect(inHandler.wait())
        DispatchQueue.global().asyncAfter(deadline: .now() + .milliseconds(30)) { handlerMayReturn.fire() }
        channel.close()
        let returned = handlerReturned.load(ordering: .acquiring)
        #expect(returned, "close returned while the handler still ran")
        afterClose.store(true, ordering: .releasing)
        usleepMilliseconds(50)
        #expect(calls.value == 1)
        #expect(lateCall.load(ordering: .relaxed) == false)
    }

    @Test("O18 a handler may close its own handle without deadlock")
    func closeFromHandler() throws {
        let channel = EventChannel(owner: "system-o18c")
        let closed = Signal()
        let calls = Counter()
        try channel.setHandler { _ in
            calls.increment()
            channel.close()
            closed.fire()
        }
        channel.post(SiloEvent(type: .systemExited))
        channel.post(SiloEvent(type: .systemExited))
        #expect(closed.wait())
        usleepMilliseconds(30)
        #expect(calls.value == 1)
    }

    @Test("Events reach the handler in the order posted")
    func eventsInOrder() throws {
        let channel = EventChannel(owner: "ordered")
        defer { channel.close() }
        let seen = Recorder<String>()
        let all = Signal()
        try channel.setHandler(model: .long) { event in
            seen.append(event.data ?? "")
            if seen.count == 500 { all.fire() }
        }
        for index in 0..<500 { channel.post(SiloEvent(type: .processExited, data: "\(index)")) }
        #expect(all.wait())
        #expect(seen.values == (0..<500).map(String.init))
    }
}
