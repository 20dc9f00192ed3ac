#define _GNU_SOURCE
#include "silo_linux.h"

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <unistd.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/wait.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/socket.h>
#include <sys/statfs.h>
#include <stdio.h>
#include <string.h>
#include <termios.h>

_Static_assert(sizeof(struct loop_info64) == 232, "loop_info64 layout changed");
_Static_assert(sizeof(struct loop_config) == 304, "loop_config layout changed");

int silo_loop_ctl_get_free(int control_fd) { return ioctl(control_fd, LOOP_CTL_GET_FREE); }
int silo_loop_ctl_remove(int control_fd, int number) { return ioctl(control_fd, LOOP_CTL_REMOVE, number); }
int silo_loop_configure(int fd, const struct loop_config *config) { return ioctl(fd, LOOP_CONFIGURE, config); }
int silo_loop_set_capacity(int fd) { return ioctl(fd, LOOP_SET_CAPACITY, 0); }
int silo_loop_clr_fd(int fd) { return ioctl(fd, LOOP_CLR_FD, 0); }
int silo_loop_get_status64(int fd, struct loop_info64 *info) { return ioctl(fd, LOOP_GET_STATUS64, info); }
int silo_loop_set_status64(int fd, const struct loop_info64 *info) { return ioctl(fd, LOOP_SET_STATUS64, info); }
int silo_loop_set_block_size(int fd, unsigned long size) { return ioctl(fd, LOOP_SET_BLOCK_SIZE, size); }
int silo_loop_set_direct_io(int fd, unsigned long on) { return ioctl(fd, LOOP_SET_DIRECT_IO, on); }

int silo_blk_get_size64(int fd, uint64_t *size) { return ioctl(fd, BLKGETSIZE64, size); }
int silo_blk_ssz_get(int fd, int *size) { return ioctl(fd, BLKSSZGET, size); }
int silo_blk_pbsz_get(int fd, unsigned int *size) { return ioctl(fd, BLKPBSZGET, size); }

int silo_fallocate(int fd, int mode, int64_t offset, int64_t length) { return fallocate(fd, mode, offset, length); }
int silo_ficlone(int destination_fd, int source_fd) { return ioctl(destination_fd, FICLONE, source_fd); }

const int silo_FALLOC_FL_KEEP_SIZE = FALLOC_FL_KEEP_SIZE;
const int silo_FALLOC_FL_PUNCH_HOLE = FALLOC_FL_PUNCH_HOLE;
const int silo_FALLOC_FL_ZERO_RANGE = FALLOC_FL_ZERO_RANGE;
const uint32_t silo_LO_FLAGS_READ_ONLY = LO_FLAGS_READ_ONLY;
const uint32_t silo_LO_FLAGS_AUTOCLEAR = LO_FLAGS_AUTOCLEAR;
const uint32_t silo_LO_FLAGS_PARTSCAN = LO_FLAGS_PARTSCAN;
const uint32_t silo_LO_FLAGS_DIRECT_IO = LO_FLAGS_DIRECT_IO;
const int silo_LO_NAME_SIZE = LO_NAME_SIZE;
const int silo_O_DIRECT = O_DIRECT;
unsigned int silo_major(unsigned long long device) { return major(device); }
unsigned int silo_minor(unsigned long long device) { return minor(device); }
const int silo_SEEK_DATA = SEEK_DATA;
const int silo_SEEK_HOLE = SEEK_HOLE;
const int silo_O_TMPFILE = O_TMPFILE;
int silo_pipe2(int fds[2], int flags) { return pipe2(fds, flags); }
size_t silo_cmsg_space(size_t length) { return CMSG_SPACE(length); }
void silo_cmsg_put_fds(struct msghdr *message, const int *fds, int count) {
    struct cmsghdr *header = CMSG_FIRSTHDR(message);
    if (!header) return;  // no room given for the control data: nothing to attach
    header->cmsg_level = SOL_SOCKET;
    header->cmsg_type = SCM_RIGHTS;
    header->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)count);
    memcpy(CMSG_DATA(header), fds, sizeof(int) * (size_t)count);
}
int silo_set_window_size(int fd, unsigned short rows, unsigned short columns) {
    struct winsize size = { .ws_row = rows, .ws_col = columns };
    return ioctl(fd, TIOCSWINSZ, &size);
}
int silo_get_window_size(int fd, unsigned short *rows, unsigned short *columns) {
    struct winsize size = { 0 };
    int result = ioctl(fd, TIOCGWINSZ, &size);
    *rows = size.ws_row;
    *columns = size.ws_col;
    return result;
}
int silo_pty_peer(int master, int flags) { return ioctl(master, TIOCGPTPEER, flags); }
int silo_pty_unlock(int master) { int unlock = 0; return ioctl(master, TIOCSPTLCK, &unlock); }

long silo_fs_type(const char *path) {
    struct statfs info;
    return statfs(path, &info) == 0 ? (long)info.f_type : -1;
}

// Not in Debian 12's headers (Linux 6.1); one number on every architecture since 424.
#ifndef __NR_cachestat
#define __NR_cachestat 451
#endif

int silo_cachestat(int fd, uint64_t offset, uint64_t length, uint64_t *cached, uint64_t *unwritten) {
    struct { uint64_t off, len; } range = { offset, length };
    struct { uint64_t nr_cache, nr_dirty, nr_writeback, nr_evicted, nr_recently_evicted; } stat = { 0 };
    if (syscall(__NR_cachestat, fd, &range, &stat, 0) != 0) return -1;
    *cached = stat.nr_cache;
    *unwritten = stat.nr_dirty + stat.nr_writeback;
    return 0;
}

const char *silo_object_path(const void *address) {
    Dl_info info;
    return dladdr(address, &info) != 0 ? info.dli_fname : NULL;
}

pid_t silo_spawn_tied(const char *path, char *const argv[], char *const envp[], const int *fds, int count) {
    if (count < 0 || count > 16) { errno = EINVAL; return -1; }
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid != 0) return pid;
    // The child: async-signal-safe calls only (the parent has other threads).
    setpgid(0, 0);
    if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 || getppid() != parent) _exit(127);
    int moved[16];
    for (int i = 0; i < count; i++) {
        int source = fds[i] >= 0 ? fds[i] : open("/dev/null", O_RDWR | O_CLOEXEC);
        moved[i] = source >= 0 ? fcntl(source, F_DUPFD_CLOEXEC, count) : -1;  // above every target, and no higher
        if (moved[i] < 0) _exit(127);
    }
    for (int i = 0; i < count; i++) {
        if (dup2(moved[i], i) != i) _exit(127);
    }
    if (syscall(SYS_close_range, (unsigned int)count, ~0u, 0u) != 0) {
        // Before Linux 5.9: one by one, up to the descriptor limit.
        long last = sysconf(_SC_OPEN_MAX);
        for (long fd = count; fd < (last > 0 ? last : 1024); fd++) close((int)fd);
    }
    struct sigaction standard = { .sa_handler = SIG_DFL };
    for (int signal = 1; signal < 32; signal++) {
        if (signal != SIGKILL && signal != SIGSTOP) sigaction(signal, &standard, NULL);
    }
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    execve(path, argv, envp);
    _exit(127);
}

pid_t silo_spawn_scoped(const char *file, char *const argv[], char *const envp[], int keep, int private_mounts) {
    int report[2];
    if (pipe2(report, O_CLOEXEC) != 0) return -1;
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0) {
        int error = errno;
        close(report[0]);
        close(report[1]);
        errno = error;
        return -1;
    }
    if (pid == 0) {
        // The child: async-signal-safe calls only (the parent may have other threads).
        close(report[0]);
        int error = 0;
        if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0) error = errno;
        else if (getppid() != parent) error = ESRCH;  // the caller died before the line above
        // Slave, not private: the host's later mounts still show inside; none made inside shows
        // out. Where no mount namespace can be made (a container's seccomp) or its mounts cannot
        // be made slaves (a chroot whose / is no mount), the command's mounts are the host's, as
        // any command's are: it runs all the same.
        else if (private_mounts && unshare(CLONE_NEWNS) == 0) (void)mount(NULL, "/", NULL, MS_REC | MS_SLAVE, NULL);
        if (error == 0 && keep >= 0 && fcntl(keep, F_SETFD, 0) != 0) error = errno;
        if (error == 0) {
            signal(SIGPIPE, SIG_DFL);
            sigset_t none;
            sigemptyset(&none);
            sigprocmask(SIG_SETMASK, &none, NULL);
            execvpe(file, argv, envp);
            error = errno;
        }
        (void)!write(report[1], &error, sizeof error);
        _exit(127);
    }
    close(report[1]);
    int error = 0;
    ssize_t got;
    do { got = read(report[0], &error, sizeof error); } while (got < 0 && errno == EINTR);
    close(report[0]);
    if (got == (ssize_t)sizeof error) {
        while (waitpid(pid, NULL, 0) < 0 && errno == EINTR) {}
        errno = error;
        return -1;
    }
    return pid;
}

int silo_spawnattr_reset_signals(posix_spawnattr_t *attributes, int defaults) {
    sigset_t none, every;
    sigemptyset(&none);
    sigfillset(&every);
    int result = posix_spawnattr_setsigmask(attributes, &none);
    if (result == 0 && defaults) result = posix_spawnattr_setsigdefault(attributes, &every);
    short flags = POSIX_SPAWN_SETSIGMASK | (defaults ? POSIX_SPAWN_SETSIGDEF : 0);
    return result != 0 ? result : posix_spawnattr_setflags(attributes, flags);
}

// The stop signals' state; lock-free atomics, read and changed in one step from any thread.
static int stop_mode;      // 0 default action, 1 kept for the wait, 2 quit at once
static int stop_kept;      // the first SIGTERM or SIGHUP kept while the mode was 1
static pid_t stop_owner;   // the process that installed the handler (a fork without exec is not it)
static int stop_terminal;  // standard error was a terminal: the quit line clears a progress bar

// The default action, as if no handler had been there: blocked while the handler runs, the signal
// raised here is delivered when it returns.
static void stop_by_default(int sig) {
    signal(sig, SIG_DFL);
    raise(sig);
}

static void on_stop_signal(int sig) {
    int saved = errno;
    // A child forked without exec (a spawn before its reset, an attach helper) is not the command:
    // the signal does what it would have done there.
    if (getpid() != stop_owner) {
        stop_by_default(sig);
        errno = saved;
        return;
    }
    int mode = __atomic_load_n(&stop_mode, __ATOMIC_SEQ_CST);
    if (mode == 1) {
        // A SIGTERM counts over a SIGHUP: a service manager may send both at once, and the kernel
        // delivers the lower number, SIGHUP, first. Otherwise the first is kept.
        int kept = __atomic_load_n(&stop_kept, __ATOMIC_SEQ_CST);
        while ((kept == 0 || (kept == SIGHUP && sig == SIGTERM))
               && !__atomic_compare_exchange_n(&stop_kept, &kept, sig, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) {}
        if (__atomic_load_n(&stop_mode, __ATOMIC_SEQ_CST) == 1 || __atomic_exchange_n(&stop_kept, 0, __ATOMIC_SEQ_CST) == 0) {
            errno = saved;
            return;
        }
        // The wait ended while this ran, and did not take it: acted on as the mode now says.
        mode = __atomic_load_n(&stop_mode, __ATOMIC_SEQ_CST);
    }
    if (mode == 2) {
        // A cancel is under way. A second SIGTERM quits; a SIGHUP does not (a hang-up is often
        // sent twice, or right behind a SIGTERM), so the rollback is not cut short by it.
        if (sig == SIGHUP) {
            errno = saved;
            return;
        }
        static const char quit[] = "quit before the operation ended: `silo storage reenumerate` and `silo system reenumerate` tidy what it left\n";
        if (stop_terminal) (void)!write(2, "\r\033[K", 4);
        (void)!write(2, quit, sizeof quit - 1);
        _exit(128 + sig);
    }
    stop_by_default(sig);
    errno = saved;
}

int silo_stop_signals_install(void) {
    if (stop_owner == getpid()) return 0;  // installed already
    stop_owner = getpid();
    stop_terminal = isatty(2);
    int stops[] = { SIGTERM, SIGHUP };
    for (unsigned i = 0; i < sizeof stops / sizeof stops[0]; i++) {
        struct sigaction old;
        if (sigaction(stops[i], NULL, &old) != 0) return errno;
        if (old.sa_handler == SIG_IGN) continue;
        struct sigaction action = { 0 };
        action.sa_handler = on_stop_signal;
        action.sa_flags = SA_RESTART;
        sigemptyset(&action.sa_mask);
        if (sigaction(stops[i], &action, NULL) != 0) return errno;
    }
    return 0;
}

void silo_stop_signals_mode(int mode) { __atomic_store_n(&stop_mode, mode, __ATOMIC_SEQ_CST); }

int silo_stop_signal_take(void) {
    return __atomic_exchange_n(&stop_kept, 0, __ATOMIC_SEQ_CST);
}

int silo_flush_standard_output(void) {
    if (fflush(stdout) != 0) return errno ? errno : EIO;
    return ferror(stdout) ? -1 : 0;
}
