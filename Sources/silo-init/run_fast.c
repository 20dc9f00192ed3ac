// silo-init's run mode (silo-init -- PROGRAM ARGUMENTS...) without the C library, on x86-64.
//
// A static glibc program spends about 0.3 ms of its start in the C library's initialisation here,
// most of it in CPUID instructions (the cache and feature probes of init_cpu_features), each of
// which exits to the hypervisor in a VM (4 us apiece on this host). Run mode is the payload's pid 1
// and needs only a handful of system calls, so the executable's entry point (silo_init_entry,
// set with the linker's -e in release builds) takes that path before the C library starts: it
// calls silo_init_run, which makes raw system calls only. Every other mode (--agent) continues to
// glibc's _start as if nothing had happened. main() calls silo_init_run too, so builds with the
// usual entry point (debug) run the same code.
//
// Nothing here may touch thread-local storage (errno), the stack protector's canary (both live
// behind %fs, which is not set up before glibc starts) or a C library function (memcpy and the
// like are IFUNCs that glibc relocates while it starts).
#if defined(__x86_64__)
#include <signal.h>
#include <stddef.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>

#include "run_fast.h"

#define FAST __attribute__((no_stack_protector, no_builtin))
#define SILO_EXEC_ATTRIBUTES FAST
#define SILO_EXEC_WITHOUT_LIBC
#include "exec_search.h"

FAST static long sys(long n, long a, long b, long c, long d) {
    long ret;
    register long r10 __asm__("r10") = d;
    __asm__ volatile("syscall" : "=a"(ret) : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10) : "rcx", "r11", "memory");
    return ret;
}

/// Runs entry(argument) in a child that shares this memory until it execs or exits (CLONE_VM |
/// CLONE_VFORK, as posix_spawn does): no copy of the page tables. The child runs on `stack_top`;
/// returns its pid or -errno.
long silo_init_vfork_call(int (*entry)(void *), void *argument, void *stack_top) __attribute__((visibility("hidden")));
__asm__(
    ".text\n"
    ".globl silo_init_vfork_call\n"
    ".hidden silo_init_vfork_call\n"
    ".type silo_init_vfork_call, @function\n"
    "silo_init_vfork_call:\n"
    "    mov %rdi, %r9\n"  // entry and argument: the system call keeps r8 and r9 (no CLONE_SETTLS)
    "    mov %rsi, %r8\n"
    "    mov %rdx, %rsi\n"
    "    mov $0x4111, %edi\n"  // CLONE_VM | CLONE_VFORK | SIGCHLD
    "    xor %edx, %edx\n"
    "    xor %r10d, %r10d\n"
    "    mov $56, %eax\n"  // clone
    "    syscall\n"
    "    test %rax, %rax\n"
    "    jnz 1f\n"
    "    xor %ebp, %ebp\n"  // the child, on its own stack
    "    mov %r8, %rdi\n"
    "    call *%r9\n"
    "    mov %eax, %edi\n"
    "    mov $60, %eax\n"  // exit
    "    syscall\n"
    "    hlt\n"
    "1:  ret\n"
    ".size silo_init_vfork_call, .-silo_init_vfork_call\n");

FAST static size_t length(const char *s) {
    size_t n = 0;
    while (s[n]) n++;
    return n;
}

FAST static int same(const char *a, const char *b) {
    while (*a && *a == *b) a++, b++;
    return *a == *b;
}

FAST static void say(const char *text) { sys(SYS_write, 2, (long)text, (long)length(text), 0); }

/// The message glibc's strerror gives for the errors an exec meets; the number for the others.
FAST static void say_error(long error) {
    static const struct { int error; const char *text; } texts[] = {
        { 1, "Operation not permitted" }, { 2, "No such file or directory" }, { 5, "Input/output error" },
        { 7, "Argument list too long" }, { 8, "Exec format error" }, { 12, "Cannot allocate memory" },
        { 13, "Permission denied" }, { 14, "Bad address" }, { 20, "Not a directory" }, { 21, "Is a directory" },
        { 22, "Invalid argument" }, { 23, "Too many open files in system" }, { 24, "Too many open files" },
        { 26, "Text file busy" }, { 36, "File name too long" }, { 40, "Too many levels of symbolic links" },
    };
    for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++) {
        if (texts[i].error == error) { say(texts[i].text); return; }
    }
    char number[24] = "Unknown error ";
    size_t at = 14;
    char digits[8];
    int n = 0;
    for (long value = error; n < 7 && (value > 0 || n == 0); value /= 10) digits[n++] = (char)('0' + value % 10);
    while (n > 0) number[at++] = digits[--n];
    number[at] = 0;
    say(number);
}

/// The exec the lookup (exec_search.h) makes: the raw system call.
FAST static long exec_raw(const char *path, char *const *argv, char *const *envp) {
    return sys(SYS_execve, (long)path, (long)argv, (long)envp, 0);
}

struct payload { char *const *argv; char *const *envp; };

/// The payload's side of the vfork: nothing blocked, a session of its own, exec.
FAST static int start_payload(void *argument) {
    struct payload *payload = argument;
    unsigned long none = 0;
    sys(SYS_rt_sigprocmask, SIG_SETMASK, (long)&none, 0, sizeof none);
    sys(SYS_setsid, 0, 0, 0, 0);
    long error = silo_exec_search(exec_raw, payload->argv[0], payload->argv, payload->envp);
    say("silo-init: cannot run ");
    say(payload->argv[0]);
    say(": ");
    say_error(-error);
    say("\n");
    return error == -2 ? 127 : 126;  // as a shell says it: not found, or found and not runnable
}

static char payload_stack[64 * 1024] __attribute__((aligned(16)));

FAST __attribute__((noreturn)) void silo_init_run(char *const *argv, char *const *envp) {
    // Not dumpable: the payload, root in its namespaces, cannot ptrace pid 1 or read its memory.
    sys(SYS_prctl, PR_SET_DUMPABLE, 0, 0, 0);
    unsigned long all = ~0UL;
    sys(SYS_rt_sigprocmask, SIG_BLOCK, (long)&all, 0, sizeof all);
    struct payload payload = { argv, envp };
    long pid = silo_init_vfork_call(start_payload, &payload, payload_stack + sizeof payload_stack);
    if (pid < 0) {
        say("silo-init: fork: ");
        say_error(-pid);
        say("\n");
        sys(SYS_exit_group, 127, 0, 0, 0);
    }
    static const int forwarded[] = { SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGWINCH, SIGCONT };
    for (;;) {
        siginfo_t info;
        long signal = sys(SYS_rt_sigtimedwait, (long)&all, (long)&info, 0, sizeof all);
        if (signal < 0) continue;
        if (signal == SIGCHLD) {
            for (;;) {
                int status = 0;
                long reaped = sys(SYS_wait4, -1, (long)&status, WNOHANG, 0);
                if (reaped <= 0) break;
                // The payload is gone: the system ends. The kernel kills what is left in the pid
                // namespace when pid 1 exits.
                if (reaped == pid) sys(SYS_exit_group, WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status), 0, 0, 0);
            }
            continue;
        }
        for (size_t i = 0; i < sizeof forwarded / sizeof forwarded[0]; i++) {
            if (signal == forwarded[i]) {
                sys(SYS_kill, -pid, signal, 0, 0);  // the payload's whole session
                break;
            }
        }
    }
}

/// Called from silo_init_entry with the initial stack: argc, argv..., NULL, envp..., NULL. Returns
/// (to glibc's _start) unless this is run mode.
FAST void silo_init_fast(long *stack) {
    long argc = stack[0];
    char *const *argv = (char *const *)(stack + 1);
    if (argc < 3 || !same(argv[1], "--")) return;
    if (sys(SYS_getpid, 0, 0, 0, 0) != 1) return;  // main() refuses, with a message
    silo_init_run(argv + 2, argv + argc + 1);
}

// The entry point: keep the stack and %rdx (the kernel's atexit pointer) as they are for _start.
__asm__(
    ".text\n"
    ".globl silo_init_entry\n"
    ".type silo_init_entry, @function\n"
    "silo_init_entry:\n"
    "    mov %rsp, %r12\n"
    "    mov %rdx, %r13\n"
    "    mov %rsp, %rdi\n"
    "    and $-16, %rsp\n"
    "    call silo_init_fast\n"
    "    mov %r12, %rsp\n"
    "    mov %r13, %rdx\n"
    "    jmp _start\n"
    ".size silo_init_entry, .-silo_init_entry\n");
#elif defined(__aarch64__) || (defined(__riscv) && __riscv_xlen == 64)
// Elsewhere run mode is main()'s, after the C library starts: the entry point release builds
// link with (-e silo_init_entry) is glibc's _start itself, registers and stack untouched.
__asm__(
    ".text\n"
    ".globl silo_init_entry\n"
    ".type silo_init_entry, %function\n"
    "silo_init_entry:\n"
#if defined(__aarch64__)
    "    b _start\n"
#else
    "    j _start\n"
#endif
    ".size silo_init_entry, .-silo_init_entry\n");
#endif
