import FoundationEssentials
import Testing

@testable import SiloOperations

/// The hand-written JSON of Silo's records, against Foundation's JSONEncoder and JSONDecoder as the
/// independent reference: the text they wrote before must read the same, and what is written now
/// must be what they wrote.
@Suite("The records' JSON writer and reader")
struct JSONObjectTests {
    struct Inner: Codable, Equatable {
        var count: Int32
        var label: String?
    }

    struct Sample: Codable, Equatable {
        var text: String
        var small: UInt32
        var large: UInt64
        var negative: Int64
        var plain: Int
        var flag: Bool
        var absent: String?
        var inner: Inner?
        var list: [Inner]?
        var empty: [Inner]?
    }

    /// Strings JSON must escape (quote, backslash, every kind of control character) or must not
    /// (slash, DEL, non-ASCII, the line separators JavaScript minds).
    static let awkward = "q\"b\\s/ \u{0}\u{1}\u{7}\u{8}\t\n\u{b}\u{c}\r\u{1b}\u{1f} \u{7f} é ü 日本 😀"
        + " \u{2028}\u{2029} end"

    let sample = Sample(text: awkward, small: UInt32.max, large: UInt64.max, negative: Int64.min, plain: -42,
                        flag: true, absent: nil, inner: Inner(count: Int32.min, label: "in/side"),
                        list: [Inner(count: 1, label: nil), Inner(count: 2, label: "two")], empty: [])

    func writer(_ inner: Inner) -> JSONObjectWriter {
        var object = JSONObjectWriter()
        object.add("count", inner.count)
        object.add("label", inner.label)
        return object
    }

    func writer(_ sample: Sample) -> JSONObjectWriter {
        var object = JSONObjectWriter()
        // Added out of order on purpose: the writer sorts.
        object.add("text", sample.text)
        object.add("small", sample.small)
        object.add("large", sample.large)
        object.add("negative", sample.negative)
        object.add("plain", sample.plain)
        object.add("flag", sample.flag)
        object.add("absent", sample.absent)
        object.add("inner", sample.inner.map { writer($0) })
        object.add("list", sample.list?.map { writer($0) })
        object.add("empty", sample.empty?.map { writer($0) })
        return object
    }

    func read(_ text: String) throws(SiloError) -> Sample {
        let object = try JSONObjectReader(json: text)
        func inner(_ object: JSONObjectReader) throws(SiloError) -> Inner {
            Inner(count: try object.required("count"), label: try object.optional("label"))
        }
        func inners(_ key: String) throws(SiloError) -> [Inner]? {
            try object.objects(key)?.map { (item) throws(SiloError) in try inner(item) }
        }
        return Sample(text: try object.required("text"), small: try object.required("small"),
                      large: try object.required("large"), negative: try object.required("negative"),
                      plain: try object.required("plain"), flag: try object.required("flag"),
                      absent: try object.optional("absent"),
                      inner: try object.object("inner").map { (item) throws(SiloError) in try inner(item) },
                      list: try inners("list"), empty: try inners("empty"))
    }

    /// The registry's options (`pretty`) or the compute records' (not).
    func encoded(_ value: some Encodable, pretty: Bool) throws -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = pretty ? [.sortedKeys, .prettyPrinted, .withoutEscapingSlashes] : [.sortedKeys]
        return String(decoding: try encoder.encode(value), as: UTF8.self)
    }

    @Test("Pretty text is JSONEncoder's with sorted keys, pretty printed, slashes as they are")
    func prettyMatchesEncoder() throws {
        #expect(writer(sample).text(.pretty) == (try encoded(sample, pretty: true)))
    }

    @Test("Compact text is JSONEncoder's with sorted keys only, slashes escaped")
    func compactMatchesEncoder() throws {
        #expect(writer(sample).text(.compact) == (try encoded(sample, pretty: false)))
    }

    @Test("Absent optionals are left out, as JSONEncoder leaves them out", arguments: [true, false])
    func absentOptionals(pretty: Bool) throws {
        let bare = Sample(text: "", small: 0, large: 0, negative: 0, plain: 0, flag: false, absent: nil, inner: nil,
                          list: nil, empty: nil)
        let text = writer(bare).text(pretty ? .pretty : .compact)
        #expect(text == (try encoded(bare, pretty: pretty)))
        #expect(!text.contains("absent") && !text.contains("null"))
        #expect(try read(text) == bare)
    }

    @Test("An array of objects, empty or not, is JSONEncoder's", arguments: [0, 1, 3])
    func arrays(count: Int) throws {
        let items = (0..<count).map { Inner(count: Int32($0), label: $0 == 1 ? nil : "n/\($0)") }
        #expect(JSONObjectWriter.text(items.map { writer($0) }, .pretty)
            == (try encoded(items, pretty: true)))
        #expect(JSONObjectWriter.text(items.map { writer($0) }, .compact) == (try encoded(items, pretty: false)))
        let objects = try JSONObjectReader.objects(json: try encoded(items, pretty: false))
        let read = try objects.map { (object) throws(SiloError) in
            Inner(count: try object.required("count"), label: try object.optional("label"))
        }
        #expect(read == items)
    }

    @Test("What JSONEncoder wrote reads back the same, in either format", arguments: [true, false])
    func readsEncoderText(pretty: Bool) throws {
        let text = try encoded(sample, pretty: pretty)
        #expect(try read(text) == sample)
    }

    @Test("JSONDecoder reads what is written to the same values, awkward strings included", arguments: [true, false])
    func decoderReadsWriterText(pretty: Bool) throws {
        let text = writer(sample).text(pretty ? .pretty : .compact)
        #expect(try JSONDecoder().decode(Sample.self, from: Data(text.utf8)) == sample)
        #expect(try read(text) == sample)
        #expect(text.contains("é ü 日本 😀"), "non-ASCII is written as UTF-8, not escaped")
    }

    @Test("Every control character is escaped as JSONEncoder escapes it, and reads back")
    func controlCharacters() throws {
        for scalar in (0..<0x20).compactMap(Unicode.Scalar.init) + ["\"", "\\", "/", "\u{7f}"] {
            let value = Inner(count: 0, label: "a\(scalar)b")
            #expect(writer(value).text(.compact) == (try encoded(value, pretty: false)),
                    "U+\(String(scalar.value, radix: 16))")
            let read = try JSONObjectReader(json: writer(value).text(.pretty))
            #expect(try read.optional("label") == value.label)
        }
    }

    @Test("Unknown keys are ignored and null is an absent optional, as JSONDecoder takes them")
    func lenientReading() throws {
        let text = #"{"count": 7, "label": null, "later": {"added": [1, "two", null]}, "also": 1.5e3}"#
        let object = try JSONObjectReader(json: text)
        #expect(try object.required("count") == Int32(7))
        #expect(try object.optional("label") == String?.none)
        #expect(try JSONDecoder().decode(Inner.self, from: Data(text.utf8)) == Inner(count: 7, label: nil))
    }

    @Test("A missing field, a wrong type, a number out of range or a damaged text is invalidJSON naming what is wrong")
    func refusals() throws {
        let cases: [(text: String, field: String)] = [
            (#"{"label": "x"}"#, "count"),
            (#"{"count": "7"}"#, "count"),
            (#"{"count": 7.5}"#, "count"),
            (#"{"count": 2147483648}"#, "count"),
            (#"{"count": null}"#, "count"),
            (#"{"count": 7, "label": 8}"#, "label"),
            (#"{"count": 7, "label": "x""#, "document"),
            (#"[{"count": 7}]"#, "record"),
            ("", "document"),
        ]
        for (text, field) in cases {
            let error = #expect(throws: SiloError.self, "\(text)") {
                let object = try JSONObjectReader(json: text)
                _ = Inner(count: try object.required("count"), label: try object.optional("label"))
            }
            #expect(error?.code == .invalidJSON, "\(text)")
            #expect(error?.field == field, "\(text)")
            if field != "document" {
                #expect(error?.message.contains(field) == true, "\(text): \(error?.message ?? "")")
            }
        }
    }

    @Test("A nested field's error names its path")
    func nestedPath() throws {
        let text = #"{"list": [{"count": 1}, {"count": true}]}"#
        let error = #expect(throws: SiloError.self) {
            for item in try JSONObjectReader(json: text).objects("list") ?? [] {
                let _: Int32 = try item.required("count")
            }
        }
        #expect(error?.field == "list[1].count")
    }
}
