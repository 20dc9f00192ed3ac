// cgroup2's device controller: a BPF_PROG_TYPE_CGROUP_DEVICE program that allows a list of
// devices and denies every other (cgroup v1 did this with devices.allow/deny files). The program
// is built here from the rules, a few instructions per rule, and attached to the system's cgroup2
// directory, where a new attach replaces the old program (single-program mode).
// See: Documentation/admin-guide/cgroup-v2.rst "Device controller", include/uapi/linux/bpf.h.
#define _GNU_SOURCE
#include "silo_linux.h"

#include <errno.h>
#include <stddef.h>
#include <linux/bpf.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#define INSN(code_, dst_, src_, off_, imm_) \
    ((struct bpf_insn){ .code = (code_), .dst_reg = (dst_), .src_reg = (src_), .off = (off_), .imm = (imm_) })

int silo_device_filter_load(const struct silo_device_rule *rules, int count, char *log, unsigned log_size) {
    if (count < 0 || count > 256) { errno = E2BIG; return -1; }
    struct bpf_insn program[6 + 256 * 6 + 2];
    int n = 0;
    // r2 = type (low 16 bits of access_type), r3 = major, r4 = minor, r5 = access (high 16 bits)
    program[n++] = INSN(BPF_LDX | BPF_W | BPF_MEM, BPF_REG_2, BPF_REG_1, offsetof(struct bpf_cgroup_dev_ctx, access_type), 0);
    program[n++] = INSN(BPF_ALU64 | BPF_MOV | BPF_X, BPF_REG_5, BPF_REG_2, 0, 0);
    program[n++] = INSN(BPF_ALU | BPF_AND | BPF_K, BPF_REG_2, 0, 0, 0xFFFF);
    program[n++] = INSN(BPF_ALU | BPF_RSH | BPF_K, BPF_REG_5, 0, 0, 16);
    program[n++] = INSN(BPF_LDX | BPF_W | BPF_MEM, BPF_REG_3, BPF_REG_1, offsetof(struct bpf_cgroup_dev_ctx, major), 0);
    program[n++] = INSN(BPF_LDX | BPF_W | BPF_MEM, BPF_REG_4, BPF_REG_1, offsetof(struct bpf_cgroup_dev_ctx, minor), 0);
    const unsigned all = BPF_DEVCG_ACC_MKNOD | BPF_DEVCG_ACC_READ | BPF_DEVCG_ACC_WRITE;
    for (int i = 0; i < count; i++) {
        const struct silo_device_rule *rule = &rules[i];
        int wildcard = rule->minor < 0;
        // What the request may ask beyond the rule's access: a request that asks any of it is
        // not this rule's (write to a device allowed for reading).
        unsigned beyond = all & ~rule->access;
        // Each test jumps past the rest of this rule (to the next rule) when it does not match:
        // `remaining` counts the instructions after the first test, up to the exit.
        int remaining = 3 + !wildcard + (beyond != 0);
        program[n++] = INSN(BPF_JMP | BPF_JNE | BPF_K, BPF_REG_2, 0, remaining--, rule->block ? BPF_DEVCG_DEV_BLOCK : BPF_DEVCG_DEV_CHAR);
        program[n++] = INSN(BPF_JMP | BPF_JNE | BPF_K, BPF_REG_3, 0, remaining--, (int)rule->major);
        if (!wildcard) program[n++] = INSN(BPF_JMP | BPF_JNE | BPF_K, BPF_REG_4, 0, remaining--, rule->minor);
        if (beyond) program[n++] = INSN(BPF_JMP | BPF_JSET | BPF_K, BPF_REG_5, 0, remaining--, (int)beyond);
        program[n++] = INSN(BPF_ALU64 | BPF_MOV | BPF_K, BPF_REG_0, 0, 0, 1);
        program[n++] = INSN(BPF_JMP | BPF_EXIT, 0, 0, 0, 0);
    }
    program[n++] = INSN(BPF_ALU64 | BPF_MOV | BPF_K, BPF_REG_0, 0, 0, 0);
    program[n++] = INSN(BPF_JMP | BPF_EXIT, 0, 0, 0, 0);

    union bpf_attr attr;
    memset(&attr, 0, sizeof attr);
    attr.prog_type = BPF_PROG_TYPE_CGROUP_DEVICE;
    attr.insns = (unsigned long long)(unsigned long)program;
    attr.insn_cnt = (unsigned)n;
    attr.license = (unsigned long long)(unsigned long)"GPL";
    if (log && log_size) {
        log[0] = 0;
        attr.log_buf = (unsigned long long)(unsigned long)log;
        attr.log_size = log_size;
        attr.log_level = 1;
    }
    return (int)syscall(SYS_bpf, BPF_PROG_LOAD, &attr, sizeof attr);
}

int silo_device_filter_attach(int cgroup_fd, int program_fd) {
    union bpf_attr attr;
    memset(&attr, 0, sizeof attr);
    attr.target_fd = (unsigned)cgroup_fd;
    attr.attach_bpf_fd = (unsigned)program_fd;
    attr.attach_type = BPF_CGROUP_DEVICE;
    return (int)syscall(SYS_bpf, BPF_PROG_ATTACH, &attr, sizeof attr);
}

int silo_device_filter_detach(int cgroup_fd) {
    union bpf_attr attr;
    memset(&attr, 0, sizeof attr);
    attr.target_fd = (unsigned)cgroup_fd;
    attr.attach_bpf_fd = (unsigned)-1;  // no program named: the one attached, in single-program mode
    attr.attach_type = BPF_CGROUP_DEVICE;
    return (int)syscall(SYS_bpf, BPF_PROG_DETACH, &attr, sizeof attr);
}
