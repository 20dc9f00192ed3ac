/// A first-in, first-out queue with amortised O(1) append and pop, and removal by predicate.
struct FIFO<Element> {
    private var storage: [Element?] = []
    private var head = 0

    var count: Int { storage.count - head }
    var first: Element? { head < storage.count ? storage[head] : nil }
    var isEmpty: Bool { count == 0 }

    mutating func append(_ element: Element) {
        storage.append(element)
    }

    mutating func popFirst() -> Element? {
        guard head < storage.count else { return nil }
        let element = storage[head]
        storage[head] = nil
        head += 1
        if head >= 64, head * 2 >= storage.count {
            storage.removeFirst(head)
            head = 0
        }
        return element
    }

    /// Removes and returns the first element matching `predicate`. O(n).
    mutating func removeFirst(where predicate: (Element) -> Bool) -> Element? {
        for index in head..<storage.count {
            if let element = storage[index], predicate(element) {
                storage.remove(at: index)
                return element
            }
        }
        return nil
    }

    /// Removes every element, returning them in order.
    mutating func removeAll() -> [Element] {
        let all = storage[head...].compactMap { $0 }
        storage.removeAll()
        head = 0
        return all
    }
}
