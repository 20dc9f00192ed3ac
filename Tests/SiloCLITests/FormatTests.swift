import Testing

@testable import silo

@Suite struct FormatTests {
    @Test("C9 processor time shows as seconds to the millisecond, rounded", arguments: [
        (UInt64(0), "0.000 s"), (40_000, "0.004 s"), (159_059, "0.016 s"), (4_999, "0.000 s"), (5_000, "0.001 s"),
        (123_456_789, "12.346 s"), (36_000_000_000, "3600.000 s"),
    ])
    func processorTime(_ value: UInt64, _ text: String) {
        #expect(seconds(hundredNanoseconds: value) == text)
    }
}
