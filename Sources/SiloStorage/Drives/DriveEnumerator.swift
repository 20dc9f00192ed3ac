import CSiloLinux
import CSiloProbe
import Glibc
import SiloOperations

/// Lists the host's block devices from sysfs, with libudev's database where udevd keeps one, and
/// a libblkid probe of each device opened read-only (S1).
struct DriveEnumerator {
    /// How long the probes may take in all (see ``StorageConfiguration/probeTimeout``).
    var probeTimeout: Duration = .seconds(10)
    /// Every drive, sorted by kernel name. Silo's own LUN devices are left out: they are LUNs (S2).
    ///
    /// Whole disks are the entries of /sys/block. libudev's enumerator would resolve every sysfs
    /// path component by component (about 25 opens a device, thousands on a host with a hundred
    /// idle loop nodes), so it is asked only about the devices that are drives, and only where
    /// udevd keeps its database (/run/udev/data): serials, WWNs and file system facts are what it
    /// adds to sysfs, and without udevd it has none of them (it then cost a listing its loading,
    /// its path walks and a failed database open for every property asked: 0.4 ms here).
    ///
    /// The devices are probed several at once (`ProbeBatch`): their waits for the devices'
    /// contents overlap.
    func drives(luns: [LunRecord] = []) throws(SiloError) -> [Drive] {
        let udev = try Udev.open()
        defer { udev?.close() }
        let mounts = MountTable.read()
        // A LUN's device is no drive (S2): told by its owner tag, or, where the device cannot be
        // opened to read that (a caller without root, a static /dev), by the record naming it
        // and its backing file.
        let lunDevices = Dictionary(luns.compactMap { record in record.device.map { ("loop\($0)", record.backingFile) } },
                                    uniquingKeysWith: { first, _ in first })
        let found = directoryEntries("/sys/block").compactMap { name in candidate(name, lunDevices: lunDevices) }
        // Not probed (listed all the same): a suspended device-mapper table, whose reads wait for
        // its resume, and a removable disk that takes no partitions (a floppy drive: each read
        // waits for the drive to give up), which /proc/partitions and so blkid leave out too.
        let probes = ProbeBatch(paths: found.filter { !$0.readsMayWait }.flatMap { disk in
            (disk.size > 0 ? [disk.devicePath] : []) + disk.partitions.map { "/dev/" + $0 }
        }, backings: Dictionary(found.compactMap { disk in disk.loopBacking.map { (disk.devicePath, $0) } },
                                uniquingKeysWith: { first, _ in first }), timeout: probeTimeout)
        var drives = found.map { describe($0, udev: udev, mounts: mounts, probes: probes) }
        attachExtents(&drives, luns: luns)
        return drives
    }

    /// What the first look at a /sys/block entry finds, if it is a drive.
    private struct Candidate {
        let name: String
        let sysfs: String
        let bus: String
        let backing: String?
        /// A bound loop device's file and place in it, which its probe may read instead (LoopBacking).
        let loopBacking: LoopBacking?
        let number: String
        let size: UInt64
        /// Kernel names of its partitions.
        let partitions: [String]
        var devicePath: String { "/dev/" + name }
        /// A device whose reads may wait for good, left unprobed.
        var readsMayWait: Bool {
            readSmallFile(sysfs + "/dm/suspended") == "1"
                || (readSmallFile(sysfs + "/removable") == "1" && readSmallFile(sysfs + "/ext_range") == "1")
        }
    }

    private func candidate(_ name: String, lunDevices: [String: String]) -> Candidate? {
        let sysfs = "/sys/block/" + name
        let bus = busType(name)
        var backing: String?
        var loopBacking: LoopBacking?
        if bus == "loop" {
            // Unbound loop devices are no drives; bound ones with Silo's tag are LUNs (S2).
            guard let file = readSmallFile(sysfs + "/loop/backing_file") else { return nil }
            let fd = open("/dev/" + name, O_RDONLY | O_CLOEXEC | O_NONBLOCK)
            if fd >= 0 {
                defer { close(fd) }
                var info = loop_info64()
                if silo_loop_get_status64(fd, &info) == 0, cName(info.lo_file_name).hasPrefix("silo:") { return nil }
                loopBacking = LoopBacking(status: info, file: file)
            } else if lunDevices[name] == file {
                return nil
            }
            backing = file
        }
        if bus == "ram" { return nil }  // lsblk leaves out ram disks too
        guard let number = readSmallFile(sysfs + "/dev") else { return nil }
        let partitions = directoryEntries(sysfs).filter { fileExists(sysfs + "/" + $0 + "/partition") }
        return Candidate(name: name, sysfs: sysfs, bus: bus, backing: backing, loopBacking: loopBacking, number: number,
                         size: (readNumber(sysfs + "/size") ?? 0) * 512, partitions: partitions)
    }

    private func describe(_ disk: Candidate, udev: Udev?, mounts: MountTable, probes: ProbeBatch) -> Drive {
        let sysfs = disk.sysfs
        let device = udev?.device(disk.name)
        defer { device?.release() }
        func property(_ key: String) -> String? { device?.property(key).flatMap(clean) }
        let probe = disk.size > 0 ? probes.result(disk.devicePath) : nil
        let model = property("ID_MODEL") ?? clean(readSmallFile(sysfs + "/device/model"))
        let serial = property("ID_SERIAL_SHORT") ?? clean(readSmallFile(sysfs + "/serial") ?? readSmallFile(sysfs + "/device/serial"))
        let wwn = property("ID_WWN") ?? clean(readSmallFile(sysfs + "/wwid") ?? readSmallFile(sysfs + "/device/wwid"))
        return Drive(
            id: stableID(name: disk.name, bus: disk.bus, model: model, serial: serial, wwn: wwn),
            name: disk.name,
            devicePath: disk.devicePath,
            deviceNumber: disk.number,
            size: disk.size,
            logicalSectorSize: UInt32(readNumber(sysfs + "/queue/logical_block_size") ?? 512),
            physicalSectorSize: UInt32(readNumber(sysfs + "/queue/physical_block_size") ?? 512),
            busType: disk.bus,
            isRotational: readSmallFile(sysfs + "/queue/rotational") == "1",
            isRemovable: readSmallFile(sysfs + "/removable") == "1",
            isReadOnly: readSmallFile(sysfs + "/ro") == "1",
            model: model,
            vendor: property("ID_VENDOR") ?? clean(readSmallFile(sysfs + "/device/vendor")),
            serial: serial,
            wwn: wwn,
            partitionTableType: probe?.partitionTableType ?? property("ID_PART_TABLE_TYPE"),
            filesystemType: probe?.filesystemType ?? property("ID_FS_TYPE"),
            filesystemUUID: probe?.uuid ?? property("ID_FS_UUID"),
            filesystemLabel: probe?.label ?? property("ID_FS_LABEL"),
            mountPoints: mounts.points(of: disk.number),
            holders: directoryEntries(sysfs + "/holders"),
            partitions: partitions(of: disk, mounts: mounts, probes: probes),
            backingFile: disk.backing,
            pool: nil,
            extents: []
        )
    }

    /// The kernel's partition devices, with what the drive's table says of each; and the table's
    /// entries the kernel made no device for (all of them on a loop device bound without partition
    /// scanning, or a kernel without that table's parser), their file systems probed through the
    /// drive (read-only, as every probe). Device mapper volumes are never partitioned by the
    /// kernel (kpartx maps their partitions as volumes of their own): theirs are not listed. md
    /// arrays are (md0p1), and theirs are.
    private func partitions(of disk: Candidate, mounts: MountTable, probes: ProbeBatch) -> [DrivePartition] {
        let table = disk.size > 0 && disk.bus != "dm" ? probes.result(disk.devicePath)?.partitions ?? [] : []
        let kernel = disk.partitions.compactMap { entry -> DrivePartition? in
            let path = disk.sysfs + "/" + entry
            guard let number = readNumber(path + "/partition"), let deviceNumber = readSmallFile(path + "/dev") else { return nil }
            let probe = probes.result("/dev/" + entry)
            let start = (readNumber(path + "/start") ?? 0) * 512
            // The same entry: a table rewritten since the kernel read it may number others alike.
            let listed = table.first { $0.number == Int(number) && $0.start == start }
            return DrivePartition(
                name: entry,
                devicePath: "/dev/" + entry,
                deviceNumber: deviceNumber,
                number: Int(number),
                start: start,
                size: (readNumber(path + "/size") ?? 0) * 512,
                partitionType: listed?.type,
                partitionUUID: listed?.uuid,
                partitionLabel: listed?.name,
                filesystemType: probe?.filesystemType,
                filesystemUUID: probe?.uuid,
                filesystemLabel: probe?.label,
                mountPoints: mounts.points(of: deviceNumber)
            )
        }
        // The kernel's name for partition N: `p` between a name that ends in a digit and N.
        let separator = disk.name.last.map { $0.isNumber } == true ? "p" : ""
        let made = Set(kernel.map(\.number))
        let unmade = table.filter { entry in
            entry.size > 0 && entry.start < disk.size && !made.contains(entry.number)
        }.map { entry in
            // An extended partition holds the logical ones: its file system is theirs, and its
            // size is given as the kernel gives it, the 1 KiB of its first table.
            let extended = entry.isExtended == true
            let probe = extended ? nil : try? BlockProbe.probe(path: disk.devicePath, offset: entry.start, size: entry.size)
            return DrivePartition(
                name: disk.name + separator + String(entry.number),
                devicePath: nil,
                deviceNumber: nil,
                number: entry.number,
                start: entry.start,
                size: extended ? min(entry.size, 1024) : entry.size,
                partitionType: entry.type,
                partitionUUID: entry.uuid,
                partitionLabel: entry.name,
                filesystemType: probe?.filesystemType,
                filesystemUUID: probe?.uuid,
                filesystemLabel: probe?.label,
                mountPoints: []
            )
        }
        return (kernel + unmade).sorted { $0.number < $1.number }
    }

    private func attachExtents(_ drives: inout [Drive], luns: [LunRecord]) {
        for record in luns {
            var info = stat()
            guard stat(record.backingFile, &info) == 0 else { continue }
            let number = "\(silo_major(UInt64(info.st_dev))):\(silo_minor(UInt64(info.st_dev)))"
            guard let index = drives.firstIndex(where: { drive in
                drive.deviceNumber == number || drive.partitions.contains { $0.deviceNumber == number }
            }) else { continue }
            drives[index].extents.append(DriveExtent(
                lun: record.name, backingFile: record.backingFile, allocatedBytes: UInt64(info.st_blocks) * 512
            ))
        }
    }

    func busType(_ name: String) -> String {
        for (prefix, bus) in [("loop", "loop"), ("zram", "zram"), ("ram", "ram"), ("md", "md"), ("dm-", "dm"), ("nbd", "nbd"), ("mmcblk", "mmc"), ("nvme", "nvme")] where name.hasPrefix(prefix) {
            return bus
        }
        let path = resolveLink("/sys/block/" + name) ?? ""
        if path.containsBytes("/virtio") { return "virtio" }
        if path.containsBytes("/usb") { return "usb" }
        if path.containsBytes("/ata") { return "ata" }
        if path.containsBytes("/host") { return "scsi" }
        return "unknown"
    }

    private func stableID(name: String, bus: String, model: String?, serial: String?, wwn: String?) -> String {
        if let wwn, !wwn.isEmpty { return "wwn-" + sanitize(wwn) }
        if let serial, !serial.isEmpty { return bus + "-" + sanitize((model.map { $0 + "_" } ?? "") + serial) }
        if ["loop", "zram", "md", "dm", "nbd"].contains(bus) { return bus + "-" + name }
        // No serial: the device's place on its bus is what stays the same across boots.
        let place = (resolveLink("/sys/block/" + name) ?? name).split(separator: "/").dropLast(2).last.map(String.init) ?? name
        return bus + "-path-" + sanitize(place)
    }

    private func sanitize(_ text: String) -> String {
        String(text.map { $0.isLetter || $0.isNumber || "._-:".contains($0) ? $0 : "_" })
    }

    private func clean(_ text: String?) -> String? {
        guard let text = text?.trimmingSpaces, !text.isEmpty else { return nil }
        return text
    }
}

/// libudev, where udevd keeps its database: what it knows of a device beyond sysfs.
private struct Udev {
    let api: silo_udev_api
    let context: OpaquePointer

    /// Nil without udevd's database (/run/udev/data), which is all libudev would add.
    static func open() throws(SiloError) -> Udev? {
        guard fileExists("/run/udev/data") else { return nil }
        guard let api = silo_udev()?.pointee else {
            throw SiloError(.systemNotConfiguredForOperation, "libudev: \(String(cString: silo_probe_error()))")
        }
        guard let context = api.new_context() else { throw SiloError(.outOfMemory, "libudev: udev_new failed") }
        return Udev(api: api, context: context)
    }

    func close() { _ = api.unref(context) }

    func device(_ name: String) -> Device? {
        api.device_new_from_subsystem_sysname(context, "block", name).map { Device(api: api, handle: $0) }
    }

    struct Device {
        let api: silo_udev_api
        let handle: OpaquePointer

        func property(_ key: String) -> String? {
            api.device_get_property_value(handle, key).map { String(cString: $0) }
        }

        func release() { _ = api.device_unref(handle) }
    }
}

/// /proc/self/mountinfo, indexed by `major:minor`.
struct MountTable {
    private var byDevice: [String: [String]] = [:]

    /// Read as bytes (InUse.forEachMount): splitting mountinfo's text by Characters cost a drive
    /// list 1.5M instructions.
    static func read() -> MountTable {
        var table = MountTable()
        InUse.forEachMount { device, mountPoint in
            table.byDevice[String(decoding: device, as: UTF8.self), default: []]
                .append(Paths.unescapedMountPath(String(decoding: mountPoint, as: UTF8.self)))
        }
        return table
    }

    func points(of deviceNumber: String) -> [String] { byDevice[deviceNumber] ?? [] }
}
