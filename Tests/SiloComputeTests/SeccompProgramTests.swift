import CSiloLinux
import Glibc
import Testing

/// The seccomp program every sandbox installs, run here by a small classic-BPF interpreter for
/// every system call number, against the deny-list as this file states it. The sandbox tests
/// check a few denials in the kernel; this checks that the program's search over the list (a
/// binary search since it was made faster) gives each number its verdict, and nothing else.
@Suite("The seccomp program", .x8664Numbers)
struct SeccompProgramTests {
    static let auditArchX8664: UInt32 = 0xC000_003E
    static let retKillProcess: UInt32 = 0x8000_0000
    static let retAllow: UInt32 = 0x7fff_0000
    static func retErrno(_ error: Int32) -> UInt32 { 0x0005_0000 | UInt32(error) }

    /// x86-64 numbers of the system calls refused with EPERM (arch/x86/entry/syscalls/syscall_64.tbl).
    static let refused: [String: UInt32] = [
        "mount": 165, "umount2": 166, "pivot_root": 155, "unshare": 272, "setns": 308, "move_mount": 429,
        "open_tree": 428, "fsopen": 430, "fsmount": 432, "fsconfig": 431, "fspick": 433, "mount_setattr": 442,
        "syslog": 103, "kexec_load": 246, "kexec_file_load": 320, "init_module": 175, "finit_module": 313,
        "delete_module": 176, "bpf": 321, "perf_event_open": 298, "keyctl": 250, "add_key": 248,
        "request_key": 249, "ptrace": 101, "process_vm_readv": 310, "process_vm_writev": 311,
        "open_by_handle_at": 304, "reboot": 169, "swapon": 167, "swapoff": 168, "settimeofday": 164,
        "clock_settime": 227, "clock_adjtime": 305, "adjtimex": 159, "acct": 163, "quotactl": 179,
        "userfaultfd": 323, "chroot": 161, "vhangup": 153, "iopl": 172, "ioperm": 173, "lookup_dcookie": 212,
        "name_to_handle_at": 303, "fanotify_init": 300, "_sysctl": 156,
        "modify_ldt": 154, "mbind": 237, "set_mempolicy": 238, "get_mempolicy": 239, "migrate_pages": 256,
        "move_pages": 279, "set_mempolicy_home_node": 450, "ustat": 136, "sysfs": 139, "uselib": 134,
        "quotactl_fd": 443, "kcmp": 312, "pidfd_getfd": 438, "process_madvise": 440,
    ]
    /// Refused with ENOSYS: clone3 (its flags are out of the filter's reach), io_uring, memfd_secret.
    static let unimplemented: Set<UInt32> = [435, 425, 426, 427, 447]
    static let clone: UInt32 = 56, clone3: UInt32 = 435, ioctl: UInt32 = 16, socket: UInt32 = 41, socketpair: UInt32 = 53
    static let namespaceFlags: UInt64 = 0x1000_0000 | 0x0002_0000 | 0x2000_0000 | 0x4000_0000 | 0x0400_0000 | 0x0800_0000 | 0x0200_0000
    static let tiocsti: UInt64 = 0x5412

    /// What the program answers for one system call (struct seccomp_data: nr, arch, ip, args).
    func verdict(nr: UInt32, arch: UInt32 = auditArchX8664, args: [UInt64] = []) throws -> UInt32 {
        var length: UInt16 = 0
        // struct sock_filter { u16 code; u8 jt; u8 jf; u32 k; }, 8 bytes each.
        let program = UnsafeRawPointer(try #require(silo_sandbox_seccomp_program(&length)))
        #expect(length > 0)
        var data = [UInt8](repeating: 0, count: 64)
        func put32(_ value: UInt32, at offset: Int) { for i in 0..<4 { data[offset + i] = UInt8((value >> (8 * UInt32(i))) & 0xff) } }
        put32(nr, at: 0)
        put32(arch, at: 4)
        for (index, arg) in args.enumerated() {
            put32(UInt32(truncatingIfNeeded: arg), at: 16 + 8 * index)
            put32(UInt32(truncatingIfNeeded: arg >> 32), at: 20 + 8 * index)
        }
        var accumulator: UInt32 = 0
        var pc = 0
        for _ in 0..<Int(length) + 1 {
            try #require(pc < Int(length), "the program ran off its end")
            let code = program.loadUnaligned(fromByteOffset: 8 * pc, as: UInt16.self)
            let jt = program.load(fromByteOffset: 8 * pc + 2, as: UInt8.self)
            let jf = program.load(fromByteOffset: 8 * pc + 3, as: UInt8.self)
            let k = program.loadUnaligned(fromByteOffset: 8 * pc + 4, as: UInt32.self)
            switch code {
            case 0x20:  // BPF_LD | BPF_W | BPF_ABS
                let offset = Int(k)
                accumulator = UInt32(data[offset]) | UInt32(data[offset + 1]) << 8 | UInt32(data[offset + 2]) << 16 | UInt32(data[offset + 3]) << 24
                pc += 1
            case 0x15: pc += 1 + Int(accumulator == k ? jt : jf)  // BPF_JMP | BPF_JEQ | BPF_K
            case 0x35: pc += 1 + Int(accumulator >= k ? jt : jf)  // BPF_JMP | BPF_JGE | BPF_K
            case 0x45: pc += 1 + Int(accumulator & k != 0 ? jt : jf)  // BPF_JMP | BPF_JSET | BPF_K
            case 0x54:  // BPF_ALU | BPF_AND | BPF_K
                accumulator &= k
                pc += 1
            case 0x14:  // BPF_ALU | BPF_SUB | BPF_K
                accumulator &-= k
                pc += 1
            case 0x06: return k  // BPF_RET | BPF_K
            default:
                Issue.record("an instruction this interpreter does not know: \(code)")
                return 0
            }
        }
        Issue.record("the program did not end")
        return 0
    }

    @Test("C11 every system call number gets the deny-list's verdict: EPERM, ENOSYS past the table and for clone3 and io_uring, allowed otherwise")
    func everyNumber() throws {
        let refusedNumbers = Set(Self.refused.values)
        for nr in UInt32(0)..<600 {
            let expected: UInt32
            if nr >= 463 || Self.unimplemented.contains(nr) {
                expected = Self.retErrno(ENOSYS)
            } else if refusedNumbers.contains(nr) {
                expected = Self.retErrno(EPERM)
            } else if nr == Self.socket || nr == Self.socketpair {
                expected = Self.retErrno(EAFNOSUPPORT)  // its arguments here are zeros: AF_UNSPEC
            } else {
                expected = Self.retAllow
            }
            #expect(try verdict(nr: nr) == expected, "system call \(nr)")
        }
        // x32 system calls (bit 30) are refused whatever their number.
        #expect(try verdict(nr: 0x4000_0000 | 1) == Self.retErrno(ENOSYS))
    }

    @Test("C11 clone with a namespace flag, ioctl TIOCSTI, TIOCSETD, the loop driver's and block tracing's ioctls (both forms), and sockets of families other than unix, inet, inet6 and netlink are refused; their other uses are not")
    func arguments() throws {
        #expect(try verdict(nr: Self.clone, args: [UInt64(SIGCHLD)]) == Self.retAllow)
        for flag in [0x1000_0000, 0x0002_0000, 0x2000_0000, 0x4000_0000, 0x0400_0000, 0x0800_0000, 0x0200_0000] as [UInt64] {
            #expect(try verdict(nr: Self.clone, args: [flag | UInt64(SIGCHLD)]) == Self.retErrno(EPERM), "clone flag \(flag)")
        }
        #expect(try verdict(nr: Self.ioctl, args: [0, Self.tiocsti]) == Self.retErrno(EPERM))
        #expect(try verdict(nr: Self.ioctl, args: [0, 0xffff_ffff_0000_0000 | Self.tiocsti]) == Self.retErrno(EPERM))
        #expect(try verdict(nr: Self.ioctl, args: [0, 0x5401]) == Self.retAllow)  // TCGETS
        // The loop driver's requests (LOOP_SET_FD ... LOOP_CONFIGURE, and the rest of its range)
        // and /dev/loop-control's; not the block layer's, nor their neighbours.
        for command: UInt64 in Array(0x4C00...0x4C0F) + Array(0x4C80...0x4C8F) {
            #expect(try verdict(nr: Self.ioctl, args: [3, command]) == Self.retErrno(EPERM), "ioctl \(command)")
            #expect(try verdict(nr: Self.ioctl, args: [3, 0x1_0000_0000 | command]) == Self.retErrno(EPERM), "ioctl high \(command)")
        }
        // TIOCSETD, whose unloaded line disciplines are modules the kernel loads on demand.
        #expect(try verdict(nr: Self.ioctl, args: [0, 0x5423]) == Self.retErrno(EPERM))
        #expect(try verdict(nr: Self.ioctl, args: [0, 0x5424]) == Self.retAllow)  // TIOCGETD
        // TIOCLINUX, whose selection paste types into a virtual console as TIOCSTI does.
        #expect(try verdict(nr: Self.ioctl, args: [0, 0x541C]) == Self.retErrno(EPERM))
        #expect(try verdict(nr: Self.ioctl, args: [0, 0x1_0000_541C]) == Self.retErrno(EPERM))
        // Block tracing: BLKTRACESETUP (_IOWR, 72 bytes), START, STOP, TEARDOWN.
        for command: UInt64 in [0xC048_1273, 0x1274, 0x1275, 0x1276, 0x1_0000_1274] {
            #expect(try verdict(nr: Self.ioctl, args: [3, command]) == Self.retErrno(EPERM), "ioctl \(command)")
        }
        // BLKGETSIZE64, BLKSSZGET, BLKDISCARD and BLKGETDISKSEQ beside the trace numbers, TCGETS.
        for command: UInt64 in [0x4BFF, 0x4C10, 0x4C7F, 0x4C90, 0x8008_1272, 0x1268, 0x1277, 0x8008_1280, 0x5412 + 1] {
            #expect(try verdict(nr: Self.ioctl, args: [3, command]) == Self.retAllow, "ioctl \(command)")
        }
        // socket and socketpair: unix (any protocol), inet and inet6 with IP, TCP, UDP, ICMP,
        // ICMPv6 and UDP-Lite, netlink's NETLINK_ROUTE (also with high bits set, which the kernel
        // drops); every other family is refused: vsock (40), packet (17), RDS (21), TIPC (30),
        // Bluetooth (31), ALG (38), and anything past the table; and every other protocol.
        for call in [Self.socket, Self.socketpair] {
            for (family, proto): (UInt64, UInt64) in [(1, 0), (1, 7), (2, 0), (2, 6), (2, 17), (2, 1), (2, 136), (10, 0), (10, 6),
                                                         (10, 58), (16, 0), (0x1_0000_0002, 0x1_0000_0006)] {
                #expect(try verdict(nr: call, args: [family, 1, proto]) == Self.retAllow, "\(call): family \(family), protocol \(proto)")
            }
            for family: UInt64 in [0, 3, 4, 5, 17, 21, 30, 31, 38, 40, 44, 45, 46, 1000] {
                #expect(try verdict(nr: call, args: [family, 1, 0]) == Self.retErrno(EAFNOSUPPORT), "\(call): family \(family)")
            }
            // SCTP, DCCP, L2TP, raw IP, SMC; netlink's uevents, generic netlink, sock_diag, audit.
            for (family, proto): (UInt64, UInt64) in [(2, 132), (10, 132), (2, 33), (2, 115), (2, 255), (2, 256),
                                                         (16, 15), (16, 16), (16, 4), (16, 9)] {
                #expect(try verdict(nr: call, args: [family, 1, proto]) == Self.retErrno(EPROTONOSUPPORT),
                        "\(call): family \(family), protocol \(proto)")
            }
            // inet and inet6 with SOCK_PACKET (10), with or without SOCK_NONBLOCK and SOCK_CLOEXEC:
            // the kernel makes an AF_PACKET socket of it. Datagrams and streams with those flags pass.
            for (family, type): (UInt64, UInt64) in [(2, 10), (2, 0x8_000A), (2, 0x800 | 10), (10, 10)] {
                #expect(try verdict(nr: call, args: [family, type, 768]) == Self.retErrno(ESOCKTNOSUPPORT), "\(call): type \(type)")
            }
            for type: UInt64 in [0x8_0001, 0x802, 3] {
                #expect(try verdict(nr: call, args: [2, type, 0]) == Self.retAllow, "\(call): type \(type)")
            }
        }
    }

    @Test("C11 mknod and mknodat refuse device nodes and allow FIFOs, sockets and files; fcntl refuses F_SETLEASE; personality allows only the container profiles' values")
    func nodesLeasesPersonality() throws {
        let mknod: UInt32 = 133, mknodat: UInt32 = 259, fcntl: UInt32 = 72, personality: UInt32 = 135
        for (type, allowed): (UInt64, Bool) in [(UInt64(S_IFCHR), false), (UInt64(S_IFBLK), false), (UInt64(S_IFIFO), true),
                                                 (UInt64(S_IFSOCK), true), (UInt64(S_IFREG), true), (0, true),
                                                 (0x1_0000_0000 | UInt64(S_IFCHR), false)] {
            let expected = allowed ? Self.retAllow : Self.retErrno(EPERM)
            #expect(try verdict(nr: mknod, args: [0, type | 0o600, 0]) == expected, "mknod \(type)")
            #expect(try verdict(nr: mknodat, args: [UInt64(bitPattern: Int64(AT_FDCWD)), 0, type | 0o600, 0]) == expected, "mknodat \(type)")
        }
        #expect(try verdict(nr: fcntl, args: [3, 1024]) == Self.retErrno(EPERM))  // F_SETLEASE
        #expect(try verdict(nr: fcntl, args: [3, 0x1_0000_0400]) == Self.retErrno(EPERM))
        for command: UInt64 in [0, 1, 2, 3, 4, 1025, 1030, 1031] {  // F_DUPFD ... F_SETFL, F_GETLEASE, F_DUPFD_CLOEXEC, F_SETPIPE_SZ
            #expect(try verdict(nr: fcntl, args: [3, command]) == Self.retAllow, "fcntl \(command)")
        }
        for persona: UInt64 in [0, 8, 0x20000, 0x20008, 0xffff_ffff] {
            #expect(try verdict(nr: personality, args: [persona]) == Self.retAllow, "personality \(persona)")
        }
        for persona: UInt64 in [0x0040000, 0x0400000, 0x0200000, 1] {  // ADDR_NO_RANDOMIZE, READ_IMPLIES_EXEC, ADDR_COMPAT_LAYOUT, PER_SVR4
            #expect(try verdict(nr: personality, args: [persona]) == Self.retErrno(EPERM), "personality \(persona)")
        }
    }

    @Test("C11 another architecture's system calls kill the process")
    func otherArchitectures() throws {
        #expect(try verdict(nr: 0, arch: 0x4000_0003) == Self.retKillProcess)  // i386
        #expect(try verdict(nr: 0, arch: 0xC000_00B7) == Self.retKillProcess)  // aarch64
    }
}
