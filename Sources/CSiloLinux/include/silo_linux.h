// The few Linux calls Swift cannot make directly: variadic ioctl, ioctl numbers built by _IO*
// macros, and fallocate/FICLONE flags. One line each, no logic. See man 4 loop, man 2 ioctl_ficlone.
#ifndef SILO_LINUX_H
#define SILO_LINUX_H

#include <stdint.h>
#include <spawn.h>
#include <sys/types.h>
#include <linux/loop.h>
#include "silo_sandbox.h"

int silo_loop_ctl_get_free(int control_fd);
int silo_loop_ctl_remove(int control_fd, int number);
int silo_loop_configure(int fd, const struct loop_config *config);
int silo_loop_set_capacity(int fd);
int silo_loop_clr_fd(int fd);
int silo_loop_get_status64(int fd, struct loop_info64 *info);
int silo_loop_set_status64(int fd, const struct loop_info64 *info);
int silo_loop_set_block_size(int fd, unsigned long size);
int silo_loop_set_direct_io(int fd, unsigned long on);

int silo_blk_get_size64(int fd, uint64_t *size);
int silo_blk_ssz_get(int fd, int *size);
int silo_blk_pbsz_get(int fd, unsigned int *size);

int silo_fallocate(int fd, int mode, int64_t offset, int64_t length);
int silo_ficlone(int destination_fd, int source_fd);
int silo_pipe2(int fds[2], int flags);
/// Starts `path` (argv, envp) in a process group of its own, killed (SIGKILL) when the thread that
/// started it ends (so when its process dies, however), with fds[i] as its descriptor i (-1: /dev/null) and no other open;
/// default signal handling and mask. The child exits 127 when a step before exec fails.
pid_t silo_spawn_tied(const char *path, char *const argv[], char *const envp[], const int *fds, int count);
/// Sets `attributes` (initialized) so that posix_spawn's child starts with no signal blocked and,
/// when `defaults` is not 0, every signal's default action: a thread's mask (a Dispatch or Swift
/// concurrency thread blocks nearly every signal) and its process's ignored signals are inherited
/// otherwise. Returns posix_spawnattr's error, or 0.
int silo_spawnattr_reset_signals(posix_spawnattr_t *attributes, int defaults);
/// Runs `file` (looked up in PATH, as execvp does) as a child tied to this process: SIGKILLed
/// when this process dies; in a mount namespace of its own, whose mounts never reach the host's
/// and go with its last process, when `private_mounts` (where one can be made); with descriptor `keep` (or -1) open
/// across the exec; with no signal blocked and SIGPIPE at its default. Same process group (a
/// terminal's job control still reaches it). Returns its pid, or -1 with errno set (the exec's).
pid_t silo_spawn_scoped(const char *file, char *const argv[], char *const envp[], int keep, int private_mounts);
/// Flushes the C library's standard output: 0 when everything was written; the flush's errno when
/// it failed; -1 when an earlier write had failed (its errno gone).
int silo_flush_standard_output(void);
/// SIGTERM and SIGHUP for the `silo` command (unless they came ignored, as under nohup): a handler
/// that ends the process as their default action does, except while a command waits for a
/// cancellable operation (`silo_stop_signals_mode(1)`): then it keeps the signal for the wait to
/// take (`silo_stop_signal_take`), which cancels the operation as a Ctrl-C does; once a cancel is
/// under way (mode 2) a SIGTERM quits at once, as a second Ctrl-C does: a line on standard
/// error, exit 128 + its number (a SIGHUP then is ignored). In a child forked without exec, the
/// default action. A second call does nothing. Returns 0, or sigaction's errno.
int silo_stop_signals_install(void);
/// 0: a stop signal ends the process (its default action); 1: kept for the wait; 2: quits at once.
void silo_stop_signals_mode(int mode);
/// The stop signal kept since the last call (SIGTERM over SIGHUP, else the first), or 0.
int silo_stop_signal_take(void);
/// statfs(path)'s f_type (the file system's magic number), or -1 with errno set.
long silo_fs_type(const char *path);
/// cachestat(2) (Linux 6.5) of `length` bytes from `offset` of `fd`'s page cache (0: to the end):
/// sets the pages cached and the dirty or under-writeback ones; 0, or -1 with errno set (ENOSYS
/// before 6.5).
int silo_cachestat(int fd, uint64_t offset, uint64_t length, uint64_t *cached, uint64_t *unwritten);
/// dladdr(address)'s dli_fname: the path of the loaded object that holds `address`, or NULL.
const char *silo_object_path(const void *address);

struct msghdr;
/// CMSG_SPACE(length).
size_t silo_cmsg_space(size_t length);
/// Fills message's control buffer (of silo_cmsg_space(count * sizeof(int)) bytes) with one
/// SCM_RIGHTS message carrying `fds`.
void silo_cmsg_put_fds(struct msghdr *message, const int *fds, int count);
/// ioctl(TIOCSWINSZ) / ioctl(TIOCGPTPEER): a terminal's size; a pseudo-terminal's other end.
int silo_set_window_size(int fd, unsigned short rows, unsigned short columns);
int silo_get_window_size(int fd, unsigned short *rows, unsigned short *columns);
int silo_pty_peer(int master, int flags);
/// ioctl(TIOCSPTLCK, 0): unlocks a new pseudo-terminal (unlockpt).
int silo_pty_unlock(int master);

/// A device a cgroup2 device program allows: block or character, major, minor (-1: any), and
/// how (BPF_DEVCG_ACC_MKNOD 1, READ 2, WRITE 4).
struct silo_device_rule {
    int block;
    unsigned int major;
    int minor;
    unsigned int access;
};
/// Loads a BPF_PROG_TYPE_CGROUP_DEVICE program allowing exactly `rules` (at most 256); returns
/// its descriptor, or -1 with errno (the verifier's words in `log`).
int silo_device_filter_load(const struct silo_device_rule *rules, int count, char *log, unsigned log_size);
/// Attaches it to a cgroup2 directory as its only device program, replacing one attached before.
int silo_device_filter_attach(int cgroup_fd, int program_fd);
/// Detaches the device program of the cgroup2 directory `cgroup_fd` (single-program mode, which
/// detaches without naming the program); -1 with ENOENT when it has none.
int silo_device_filter_detach(int cgroup_fd);

extern const int silo_O_DIRECT;
extern const int silo_O_TMPFILE;
extern const int silo_SEEK_DATA;
extern const int silo_SEEK_HOLE;

unsigned int silo_major(unsigned long long device);
unsigned int silo_minor(unsigned long long device);

extern const int silo_FALLOC_FL_KEEP_SIZE;
extern const int silo_FALLOC_FL_PUNCH_HOLE;
extern const int silo_FALLOC_FL_ZERO_RANGE;
extern const uint32_t silo_LO_FLAGS_READ_ONLY;
extern const uint32_t silo_LO_FLAGS_AUTOCLEAR;
extern const uint32_t silo_LO_FLAGS_PARTSCAN;
extern const uint32_t silo_LO_FLAGS_DIRECT_IO;
extern const int silo_LO_NAME_SIZE;

#endif
