// See silo_sandbox.h. Every function here runs in the child after clone3, so only
// async-signal-safe calls (raw system calls and pure string copies) appear below.
#define _GNU_SOURCE
#include "silo_sandbox.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/audit.h>
#include <linux/capability.h>
#include <linux/filter.h>
#include <linux/keyctl.h>
#include <linux/sched.h>
#include <linux/seccomp.h>
#include <net/if.h>
#include <netinet/in.h>
#include <sched.h>
#include <signal.h>
#include <stddef.h>
#include <string.h>
#include <poll.h>
#include <pthread.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <termios.h>
#include <sys/wait.h>
#include <unistd.h>

enum step {
    STEP_ENTER = 100, STEP_DEVICE_NODE, STEP_UNMOUNT, STEP_KEEP_READ_ONLY,
    STEP_CGROUP_JOIN = 1, STEP_CGROUP_NS, STEP_PRIVATE, STEP_ROOT_TMPFS, STEP_BIND, STEP_PROC, STEP_MASK, STEP_DEV,
    STEP_TMP, STEP_MOUNT_LUN, STEP_PIVOT, STEP_READ_ONLY_ROOT, STEP_HOSTNAME, STEP_LOOPBACK, STEP_STDIO, STEP_CAPABILITIES,
    STEP_NO_NEW_PRIVS, STEP_SECCOMP, STEP_EXEC, STEP_KEYRING, STEP_GATE, STEP_NET_ENTER, STEP_CORE_LIMIT, STEP_SESSION,
};

const char *silo_sandbox_step_name(int step) {
    switch (step) {
    case STEP_CGROUP_JOIN: return "join the cgroup";
    case STEP_CGROUP_NS: return "unshare the cgroup namespace";
    case STEP_PRIVATE: return "make the mount tree private";
    case STEP_ROOT_TMPFS: return "mount the root tmpfs";
    case STEP_BIND: return "bind host folders read-only";
    case STEP_PROC: return "mount /proc";
    case STEP_MASK: return "mask /proc paths";
    case STEP_DEV: return "build /dev";
    case STEP_TMP: return "mount /tmp";
    case STEP_MOUNT_LUN: return "mount an attached LUN";
    case STEP_PIVOT: return "pivot_root";
    case STEP_READ_ONLY_ROOT: return "make the root read-only";
    case STEP_HOSTNAME: return "set the hostname";
    case STEP_LOOPBACK: return "bring up lo";
    case STEP_STDIO: return "set up stdio";
    case STEP_CAPABILITIES: return "drop capabilities";
    case STEP_NO_NEW_PRIVS: return "set no_new_privs";
    case STEP_SECCOMP: return "install the seccomp filter";
    case STEP_EXEC: return "exec";
    case STEP_KEYRING: return "join a fresh session keyring";
    case STEP_GATE: return "get its cgroup and network namespace";
    case STEP_NET_ENTER: return "enter its network namespace";
    case STEP_CORE_LIMIT: return "turn core dumps off";
    case STEP_SESSION: return "start a session of its own";
    case STEP_ENTER: return "enter the system's mount namespace";
    case STEP_DEVICE_NODE: return "make or remove the device node";
    case STEP_UNMOUNT: return "unmount the LUN's file system (busy?)";
    case STEP_KEEP_READ_ONLY: return "make its root read-only again (the system was killed)";
    default: return "unknown step";
    }
}

/// The error pipe of silo_sandbox_attach's child, a fork with its own copy of memory. A sandbox's
/// child shares its parent's memory (CLONE_VM): its pipe is in its own copy of the config.
static int attach_error_fd = -1;

static __attribute__((noreturn)) void fail(const struct silo_sandbox_config *c, int step) {
    struct silo_sandbox_failure failure = { step, errno };
    int fd = c ? c->error_fd : attach_error_fd;
    if (fd >= 0) (void)!write(fd, &failure, sizeof failure);
    _exit(127);
}

/// The new root while the child builds it: its working directory, once the root tmpfs is mounted.
/// Paths relative to it walk one to three components, not the host path of the system's folder
/// (a hundred such walks in all).
#define NEW_ROOT "."

/// dst = a + b, bounded; no allocation.
static void join(char *dst, size_t size, const char *a, const char *b) {
    size_t n = 0;
    for (; *a && n + 1 < size; a++) dst[n++] = *a;
    for (; *b && n + 1 < size; b++) dst[n++] = *b;
    dst[n] = 0;
}

/// mkdir -p of path inside (path starts with '/', or with NEW_ROOT "./", which exists).
static int make_dirs(const char *path) {
    char buffer[4096];
    size_t length = strlen(path);
    if (length >= sizeof buffer) { errno = ENAMETOOLONG; return -1; }
    memcpy(buffer, path, length + 1);
    for (size_t i = path[0] == '.' ? 2 : 1; i <= length; i++) {
        if (buffer[i] == '/' || buffer[i] == 0) {
            char saved = buffer[i];
            buffer[i] = 0;
            if (mkdir(buffer, 0755) != 0 && errno != EEXIST) return -1;
            buffer[i] = saved;
        }
    }
    return 0;
}

/// Closes every descriptor from `first` up but `keep`: close_range (Linux 5.9), else one by one
/// up to the descriptor limit. Async-signal-safe; -1 when neither can be done.
static int close_all_from(int first, int keep) {
    if ((keep <= first || syscall(SYS_close_range, first, keep - 1, 0) == 0)
        && syscall(SYS_close_range, keep + 1 > first ? keep + 1 : first, ~0U, 0) == 0) return 0;
    struct rlimit limit;
    if (getrlimit(RLIMIT_NOFILE, &limit) != 0) return -1;
    int top = limit.rlim_cur == RLIM_INFINITY || limit.rlim_cur > 1 << 20 ? 1 << 20 : (int)limit.rlim_cur;
    for (int fd = first; fd < top; fd++) if (fd != keep) close(fd);
    return 0;
}

/// Creates an empty file (a mount point for a file bind), or finds one: one system call.
static int make_file(const char *path) {
    return mknod(path, S_IFREG | 0644, 0) == 0 || errno == EEXIST ? 0 : -1;
}

/// Binds host `source` at `target`, read-only, no setuid, no devices.
/// struct mount_attr of <linux/mount.h>, which does not mix with glibc's <sys/mount.h>.
struct silo_mount_attr { unsigned long long attr_set, attr_clr, propagation, userns_fd; };
#define SILO_MOUNT_ATTR_RDONLY 0x1
#define SILO_MOUNT_ATTR_NOSUID 0x2
#define SILO_MOUNT_ATTR_NODEV 0x4
#define SILO_MOUNT_ATTR_NOEXEC 0x8
#define SILO_AT_RECURSIVE 0x8000

/// Binds host `source` at `target`, read-only, no setuid, no devices: the bind and every mount
/// under it. A remount changes only the top mount of a recursive bind, so a host mount below
/// /usr or /etc would stay writable; mount_setattr(AT_RECURSIVE) (Linux 5.12) reaches them all.
static int bind_read_only(const char *source, const char *target, unsigned long extra) {
    if (mount(source, target, NULL, MS_BIND | MS_REC, NULL) != 0) return -1;
    struct silo_mount_attr attr = { SILO_MOUNT_ATTR_RDONLY | SILO_MOUNT_ATTR_NOSUID | SILO_MOUNT_ATTR_NODEV
                                        | ((extra & MS_NOEXEC) ? SILO_MOUNT_ATTR_NOEXEC : 0), 0, 0, 0 };
    if (syscall(SYS_mount_setattr, AT_FDCWD, target, SILO_AT_RECURSIVE, &attr, sizeof attr) == 0) return 0;
    if (errno != ENOSYS) return -1;
    return mount(NULL, target, NULL, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV | extra, NULL);
}

/// The parent folder of `target` (inside), made unless it is `made`, the last one made.
static void make_parent(const struct silo_sandbox_config *c, const char *target, char *made, size_t size) {
    char parent[4096];
    join(parent, sizeof parent, target, "");
    char *slash = strrchr(parent, '/');
    if (!slash || slash == parent) return;
    *slash = 0;
    if (strcmp(parent, made) == 0) return;  // /etc's files: one mkdir, not one each
    if (make_dirs(parent) != 0) fail(c, STEP_BIND);
    join(made, size, parent, "");
}

/// Binds the host paths (recursively), still writable: lock_root makes them all read-only at once.
static void bind_host_paths(const struct silo_sandbox_config *c) {
    char target[4096], link[4096], made[4096] = "";
    for (const char *const *path = c->read_only_binds; path && *path; path++) {
        struct stat info;
        if (lstat(*path, &info) != 0) continue;  // not on this host (e.g. /lib32)
        join(target, sizeof target, NEW_ROOT, *path);
        if (S_ISLNK(info.st_mode)) {
            ssize_t n = readlink(*path, link, sizeof link - 1);
            if (n < 0) fail(c, STEP_BIND);
            link[n] = 0;
            make_parent(c, target, made, sizeof made);
            if (symlink(link, target) != 0 && errno != EEXIST) fail(c, STEP_BIND);
            continue;
        }
        if (S_ISDIR(info.st_mode)) {
            if (make_dirs(target) != 0) fail(c, STEP_BIND);
        } else {
            make_parent(c, target, made, sizeof made);
            if (make_file(target) != 0) fail(c, STEP_BIND);
        }
        if (mount(*path, target, NULL, MS_BIND | MS_REC, NULL) != 0) fail(c, STEP_BIND);
    }
}

/// Read-only, no setuid, no devices: the root tmpfs, every bind on it and every mount under those,
/// in one call (before the mounts of /dev, /proc and /tmp, which keep their own flags). A remount
/// changes only the mount it names, so a host mount below /usr would stay writable; before Linux
/// 5.12 (no mount_setattr) that is what each bind gets, as before this call existed.
static void lock_root(const struct silo_sandbox_config *c) {
    struct silo_mount_attr attr = { SILO_MOUNT_ATTR_RDONLY | SILO_MOUNT_ATTR_NOSUID | SILO_MOUNT_ATTR_NODEV, 0, 0, 0 };
    if (syscall(SYS_mount_setattr, AT_FDCWD, NEW_ROOT, SILO_AT_RECURSIVE, &attr, sizeof attr) == 0) return;
    if (errno != ENOSYS) fail(c, STEP_BIND);
    char target[4096];
    for (const char *const *path = c->read_only_binds; path && *path; path++) {
        struct stat info;
        if (lstat(*path, &info) != 0 || S_ISLNK(info.st_mode)) continue;
        join(target, sizeof target, NEW_ROOT, *path);
        if (mount(NULL, target, NULL, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV, NULL) != 0) fail(c, STEP_BIND);
    }
    if (c->init_binary) {
        join(target, sizeof target, NEW_ROOT, "/.silo/init");
        if (mount(NULL, target, NULL, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV, NULL) != 0) fail(c, STEP_BIND);
    }
}

/// The system's own terminals and shared memory, on /dev/pts and /dev/shm (which exist).
static void mount_dev_instances(const struct silo_sandbox_config *c) {
    // max: the ptys of all devpts instances come from one host-wide pool (kernel.pty.max).
    if (mount("devpts", NEW_ROOT "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC, "newinstance,ptmxmode=0666,mode=620,max=256") != 0) fail(c, STEP_DEV);
    if (mount("shm", NEW_ROOT "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=1777,size=64m") != 0) fail(c, STEP_DEV);
}

static void build_dev(const struct silo_sandbox_config *c) {
    char dev[4096], target[4096];
    join(dev, sizeof dev, NEW_ROOT, "/dev");  // made by child()
    if (mount("tmpfs", dev, "tmpfs", MS_NOSUID | MS_NOEXEC, "mode=755,size=64k") != 0) fail(c, STEP_DEV);
    for (const char *const *node = c->devices; node && *node; node++) {
        join(target, sizeof target, NEW_ROOT, *node);
        if (make_file(target) != 0) fail(c, STEP_DEV);
        if (mount(*node, target, NULL, MS_BIND, NULL) != 0) fail(c, STEP_DEV);
    }
    join(target, sizeof target, NEW_ROOT, "/dev/pts");
    if (make_dirs(target) != 0) fail(c, STEP_DEV);
    join(target, sizeof target, NEW_ROOT, "/dev/ptmx");
    if (symlink("pts/ptmx", target) != 0) fail(c, STEP_DEV);
    join(target, sizeof target, NEW_ROOT, "/dev/shm");
    if (make_dirs(target) != 0) fail(c, STEP_DEV);
    static const char *const links[][2] = {
        { "/proc/self/fd", "/dev/fd" }, { "/proc/self/fd/0", "/dev/stdin" },
        { "/proc/self/fd/1", "/dev/stdout" }, { "/proc/self/fd/2", "/dev/stderr" },
    };
    for (size_t i = 0; i < sizeof links / sizeof links[0]; i++) {
        join(target, sizeof target, NEW_ROOT, links[i][1]);
        if (symlink(links[i][0], target) != 0) fail(c, STEP_DEV);
    }
    if (mount(NULL, dev, NULL, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NOEXEC, "mode=755,size=64k") != 0) fail(c, STEP_DEV);
    // The device binds: no setuid, no exec, and read-only, one call for all, before devpts and
    // shm are mounted (they stay writable). Read-only keeps the host's device inodes as they
    // are: the payload, uid 0 and so their owner, needs no capability to chmod, chown back,
    // touch or set an ACL on /dev/null or a raw LUN's node, and that would change the host's
    // own node (writes through a device node are not writes to the mount, and still work).
    struct silo_mount_attr attr = { SILO_MOUNT_ATTR_RDONLY | SILO_MOUNT_ATTR_NOSUID | SILO_MOUNT_ATTR_NOEXEC, 0, 0, 0 };
    if (syscall(SYS_mount_setattr, AT_FDCWD, dev, SILO_AT_RECURSIVE, &attr, sizeof attr) != 0) {
        if (errno != ENOSYS) fail(c, STEP_DEV);
        for (const char *const *node = c->devices; node && *node; node++) {
            join(target, sizeof target, NEW_ROOT, *node);
            if (mount(NULL, target, NULL, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NOEXEC, NULL) != 0) fail(c, STEP_DEV);
        }
    }
    mount_dev_instances(c);
}

// MARK: A shared read-only root

// A system's root without its per-system mounts (/dev/pts, /dev/shm, /proc, /tmp): the root tmpfs
// with the host binds and init, and the /dev tmpfs with the device binds, all read-only, built
// once by the caller as a detached mount tree (the new mount API, Linux 6.15 for moving mounts
// onto a detached tree) and cloned for each child in one call (open_tree). The child attaches the
// clone instead of making about 40 mounts and files, and when the system ends the two tmpfs
// superblocks stay (they are the template's) instead of being torn down in init's exit. Both
// superblocks are read-only, so systems sharing them cannot write to them; what they can see of
// each other through them is what a shared read-only host folder such as /usr shows already.
// A host path the template binds that changed since (a file replaced by rename, as resolv.conf
// is) makes the next use rebuild it. These run in the caller, never in the child.

#define SILO_OPEN_TREE_CLONE 1
#define SILO_OPEN_TREE_CLOEXEC O_CLOEXEC
#define SILO_MOVE_MOUNT_F_EMPTY_PATH 0x4
#define SILO_FSCONFIG_SET_FLAG 0
#define SILO_FSCONFIG_SET_STRING 1
#define SILO_FSCONFIG_CMD_CREATE 6
#define SILO_FSCONFIG_CMD_RECONFIGURE 7
#define SILO_FSMOUNT_CLOEXEC 1
#define SILO_FSPICK_CLOEXEC 1
#define SILO_FSPICK_EMPTY_PATH 8

static pthread_mutex_t template_lock = PTHREAD_MUTEX_INITIALIZER;
static int template_fd = -1;
static int template_unsupported;
static char template_key[16384];
static struct { dev_t dev; ino_t ino; const char *path; } template_sources[96];
static int template_source_count;
static char template_paths[16384];

/// A new tmpfs as a detached mount, read-write until made read-only; -1 with errno.
static int new_tmpfs(const char *size, unsigned long long attributes) {
    int fs = (int)syscall(SYS_fsopen, "tmpfs", SILO_FSMOUNT_CLOEXEC);
    if (fs < 0) return -1;
    int mounted = -1;
    if (syscall(SYS_fsconfig, fs, SILO_FSCONFIG_SET_STRING, "source", "tmpfs", 0) == 0
        && syscall(SYS_fsconfig, fs, SILO_FSCONFIG_SET_STRING, "mode", "755", 0) == 0
        && syscall(SYS_fsconfig, fs, SILO_FSCONFIG_SET_STRING, "size", size, 0) == 0
        && syscall(SYS_fsconfig, fs, SILO_FSCONFIG_CMD_CREATE, NULL, NULL, 0) == 0) {
        mounted = (int)syscall(SYS_fsmount, fs, SILO_FSMOUNT_CLOEXEC, attributes);
    }
    int error = errno;
    close(fs);
    errno = error;
    return mounted;
}

/// The superblock of the detached mount `fd` read-only (a remount, not a mount attribute).
static int superblock_read_only(int fd) {
    int fs = (int)syscall(SYS_fspick, fd, "", SILO_FSPICK_EMPTY_PATH | SILO_FSPICK_CLOEXEC);
    if (fs < 0) return -1;
    int result = syscall(SYS_fsconfig, fs, SILO_FSCONFIG_SET_FLAG, "ro", NULL, 0) == 0
        && syscall(SYS_fsconfig, fs, SILO_FSCONFIG_CMD_RECONFIGURE, NULL, NULL, 0) == 0 ? 0 : -1;
    int error = errno;
    close(fs);
    errno = error;
    return result;
}

/// Binds host `source` (with the mounts below it when `recursive`) at `path` below the detached tree `tree`.
static int attach_bind(int tree, const char *path, const char *source, int recursive) {
    int bind = (int)syscall(SYS_open_tree, AT_FDCWD, source, SILO_OPEN_TREE_CLONE | SILO_OPEN_TREE_CLOEXEC | (recursive ? SILO_AT_RECURSIVE : 0));
    if (bind < 0) return -1;
    int result = (int)syscall(SYS_move_mount, bind, "", tree, path, SILO_MOVE_MOUNT_F_EMPTY_PATH);
    int error = errno;
    close(bind);
    errno = error;
    return result;
}

/// mkdir -p of `path` (relative, no leading '/') below the directory `dirfd`.
static int make_dirs_at(int dirfd, const char *path) {
    char buffer[4096];
    size_t length = strlen(path);
    if (length >= sizeof buffer) { errno = ENAMETOOLONG; return -1; }
    memcpy(buffer, path, length + 1);
    for (size_t i = 1; i <= length; i++) {
        if (buffer[i] == '/' || buffer[i] == 0) {
            char saved = buffer[i];
            buffer[i] = 0;
            if (mkdirat(dirfd, buffer, 0755) != 0 && errno != EEXIST) return -1;
            buffer[i] = saved;
        }
    }
    return 0;
}

static int make_parent_at(int dirfd, const char *path) {
    char parent[4096];
    join(parent, sizeof parent, path, "");
    char *slash = strrchr(parent, '/');
    if (!slash) return 0;
    *slash = 0;
    return make_dirs_at(dirfd, parent);
}

static int remember_source(const char *path, char **at, char *end) {
    struct stat info;
    if (lstat(path, &info) != 0 || template_source_count >= (int)(sizeof template_sources / sizeof template_sources[0])) return -1;
    size_t length = strlen(path) + 1;
    if (*at + length > end) return -1;
    memcpy(*at, path, length);
    template_sources[template_source_count].dev = info.st_dev;
    template_sources[template_source_count].ino = info.st_ino;
    template_sources[template_source_count].path = *at;
    template_source_count++;
    *at += length;
    return 0;
}

/// Builds the template; its descriptor, or -1 with errno.
static int template_build(const char *const *binds, const char *const *devices, const char *init) {
    template_source_count = 0;
    char *at = template_paths, *end = template_paths + sizeof template_paths;
    int root = new_tmpfs("1m", SILO_MOUNT_ATTR_NOSUID | SILO_MOUNT_ATTR_NODEV);
    if (root < 0) return -1;
    int dev = -1;
    static const char *const mount_points[] = { "dev", "proc", "tmp", ".silo" };
    for (size_t i = 0; i < sizeof mount_points / sizeof mount_points[0]; i++) {
        if (mkdirat(root, mount_points[i], 0755) != 0) goto failed;
    }
    if (init && mknodat(root, ".silo/init", S_IFREG | 0644, 0) != 0) goto failed;
    for (const char *const *path = binds; path && *path; path++) {
        struct stat info;
        if (**path != '/' || lstat(*path, &info) != 0) continue;  // not on this host (e.g. /lib32)
        if (remember_source(*path, &at, end) != 0) goto failed;
        const char *inside = *path + 1;
        if (S_ISLNK(info.st_mode)) {
            char link[4096];
            ssize_t n = readlink(*path, link, sizeof link - 1);
            if (n < 0) goto failed;
            link[n] = 0;
            if (make_parent_at(root, inside) != 0 || symlinkat(link, root, inside) != 0) goto failed;
            continue;
        }
        if (S_ISDIR(info.st_mode)) {
            if (make_dirs_at(root, inside) != 0) goto failed;
        } else if (make_parent_at(root, inside) != 0 || (mknodat(root, inside, S_IFREG | 0644, 0) != 0 && errno != EEXIST)) {
            goto failed;
        }
        if (attach_bind(root, inside, *path, 1) != 0) goto failed;
    }
    if (init && (attach_bind(root, ".silo/init", init, 1) != 0 || remember_source(init, &at, end) != 0)) goto failed;
    // Private too, said outright: were these binds peers of the shared host mounts they were
    // cloned from, what the host mounts later below /usr or /etc would show up in every root
    // cloned from this one. (Linux 6.18 already makes detached clones private; a test checks
    // that no mount inside is a peer or a slave of the host's.)
    struct silo_mount_attr locked = { SILO_MOUNT_ATTR_RDONLY | SILO_MOUNT_ATTR_NOSUID | SILO_MOUNT_ATTR_NODEV, 0, MS_PRIVATE, 0 };
    if (syscall(SYS_mount_setattr, root, "", AT_EMPTY_PATH | SILO_AT_RECURSIVE, &locked, sizeof locked) != 0) goto failed;
    if (superblock_read_only(root) != 0) goto failed;
    // /dev: the device binds (nosuid, noexec), the mount points of devpts and shm, the links.
    dev = new_tmpfs("64k", SILO_MOUNT_ATTR_NOSUID | SILO_MOUNT_ATTR_NOEXEC);
    if (dev < 0) goto failed;
    for (const char *const *node = devices; node && *node; node++) {
        if (strncmp(*node, "/dev/", 5) != 0 || strchr(*node + 5, '/')) { errno = EINVAL; goto failed; }
        if (mknodat(dev, *node + 5, S_IFREG | 0644, 0) != 0 || attach_bind(dev, *node + 5, *node, 0) != 0) goto failed;
        if (remember_source(*node, &at, end) != 0) goto failed;
    }
    if (mkdirat(dev, "pts", 0755) != 0 || symlinkat("pts/ptmx", dev, "ptmx") != 0 || mkdirat(dev, "shm", 0755) != 0) goto failed;
    static const char *const links[][2] = {
        { "/proc/self/fd", "fd" }, { "/proc/self/fd/0", "stdin" }, { "/proc/self/fd/1", "stdout" }, { "/proc/self/fd/2", "stderr" },
    };
    for (size_t i = 0; i < sizeof links / sizeof links[0]; i++) {
        if (symlinkat(links[i][0], dev, links[i][1]) != 0) goto failed;
    }
    // Read-only binds too: see build_dev (the host's device inodes stay as they are).
    struct silo_mount_attr devices_attr = { SILO_MOUNT_ATTR_RDONLY | SILO_MOUNT_ATTR_NOSUID | SILO_MOUNT_ATTR_NOEXEC, 0, MS_PRIVATE, 0 };
    struct silo_mount_attr read_only = { SILO_MOUNT_ATTR_RDONLY, 0, 0, 0 };
    if (syscall(SYS_mount_setattr, dev, "", AT_EMPTY_PATH | SILO_AT_RECURSIVE, &devices_attr, sizeof devices_attr) != 0
        || syscall(SYS_mount_setattr, dev, "", AT_EMPTY_PATH, &read_only, sizeof read_only) != 0
        || superblock_read_only(dev) != 0
        || syscall(SYS_move_mount, dev, "", root, "dev", SILO_MOVE_MOUNT_F_EMPTY_PATH) != 0) {
        goto failed;
    }
    close(dev);
    return root;
failed:;
    int error = errno;
    if (dev >= 0) close(dev);
    close(root);
    template_source_count = 0;
    errno = error;
    return -1;
}

/// binds, devices and init as one string, to tell whether the template is the one asked for.
static int template_key_of(const char *const *binds, const char *const *devices, const char *init, char *key, size_t size) {
    size_t n = 0;
    const char *const *lists[] = { binds, devices };
    for (int l = 0; l < 2; l++) {
        for (const char *const *p = lists[l]; p && *p; p++) {
            size_t length = strlen(*p);
            if (n + length + 2 >= size) return -1;
            memcpy(key + n, *p, length);
            n += length;
            key[n++] = '\n';
        }
        if (n + 2 >= size) return -1;
        key[n++] = '\t';
    }
    size_t length = init ? strlen(init) : 0;
    if (n + length + 1 >= size) return -1;
    if (init) memcpy(key + n, init, length);
    key[n + length] = 0;
    return 0;
}

static int template_current(void) {
    for (int i = 0; i < template_source_count; i++) {
        struct stat info;
        if (lstat(template_sources[i].path, &info) != 0 || info.st_dev != template_sources[i].dev || info.st_ino != template_sources[i].ino) return 0;
    }
    return 1;
}

int silo_sandbox_template_clone(const char *const *binds, const char *const *devices, const char *init, int build) {
    static char key[sizeof template_key];
    pthread_mutex_lock(&template_lock);
    int clone = -1, error = ENOENT;
    if (template_unsupported || template_key_of(binds, devices, init, key, sizeof key) != 0) {
        error = ENOTSUP;
    } else if (template_fd >= 0 && strcmp(key, template_key) == 0 && template_current()) {
        clone = (int)syscall(SYS_open_tree, template_fd, "", SILO_OPEN_TREE_CLONE | SILO_OPEN_TREE_CLOEXEC | SILO_AT_RECURSIVE | AT_EMPTY_PATH);
        error = errno;
    } else if (build) {
        if (template_fd >= 0) close(template_fd);
        template_fd = template_build(binds, devices, init);
        error = template_fd >= 0 ? ENOENT : errno;  // built for the next call: none to give now
        if (template_fd >= 0) {
            memcpy(template_key, key, sizeof key);
        } else if (error == EINVAL || error == ENOSYS || error == EPERM) {
            template_unsupported = 1;  // an older kernel, or not allowed here: never again
        }
    }
    pthread_mutex_unlock(&template_lock);
    return clone >= 0 ? clone : -error;
}

static void mount_proc(const struct silo_sandbox_config *c) {
    char proc[4096], target[4096], null_device[4096];
    join(proc, sizeof proc, NEW_ROOT, "/proc");  // made by child()
    if (mount("proc", proc, "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) != 0) fail(c, STEP_PROC);
    join(null_device, sizeof null_device, NEW_ROOT, "/dev/null");
    // No stat of each path first (19 lookups in /proc): the mount itself says whether the path is
    // there (ENOENT, once /dev/null is known to be) and what it is (ENOTDIR: a folder, which an
    // empty read-only tmpfs covers instead).
    struct stat null_info;
    if (stat(null_device, &null_info) != 0 || !S_ISCHR(null_info.st_mode)) fail(c, STEP_MASK);
    for (const char *const *path = c->masked_paths; path && *path; path++) {
        join(target, sizeof target, NEW_ROOT, *path);
        if (mount(null_device, target, NULL, MS_BIND, NULL) == 0 || errno == ENOENT) continue;
        if (errno != ENOTDIR) fail(c, STEP_MASK);
        if (mount("tmpfs", target, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=0") != 0) fail(c, STEP_MASK);
    }
    for (const char *const *path = c->read_only_paths; path && *path; path++) {
        join(target, sizeof target, NEW_ROOT, *path);
        if (bind_read_only(target, target, MS_NOEXEC) != 0 && errno != ENOENT) fail(c, STEP_MASK);
    }
}

/// Brings up lo in the calling thread's network namespace. 0, or -1 with errno.
static int bring_up_loopback(void) {
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    struct ifreq request;
    memset(&request, 0, sizeof request);
    memcpy(request.ifr_name, "lo", 3);
    int result = ioctl(fd, SIOCGIFFLAGS, &request);
    if (result == 0) {
        request.ifr_flags |= IFF_UP | IFF_RUNNING;
        result = ioctl(fd, SIOCSIFFLAGS, &request);
    }
    int error = errno;
    close(fd);
    errno = error;
    return result;
}

static void loopback_up(const struct silo_sandbox_config *c) {
    if (bring_up_loopback() != 0) fail(c, STEP_LOOPBACK);
}

int silo_sandbox_make_netns(void) {
    int own = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
    if (own < 0) return -1;
    if (unshare(CLONE_NEWNET) != 0) {
        int error = errno;
        close(own);
        errno = error;
        return -1;
    }
    int fresh = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
    int error = fresh < 0 ? errno : 0;
    if (fresh >= 0 && bring_up_loopback() != 0) {
        error = errno;
        close(fresh);
        fresh = -1;
    }
    // Back to the thread's own namespace (for what it does next).
    if (setns(own, CLONE_NEWNET) != 0) {
        error = errno;
        if (fresh >= 0) close(fresh);
        fresh = -1;
    }
    close(own);
    errno = error;
    return fresh;
}

// A fresh network namespace made ahead of time: one, kept by the caller's process for its next
// sandbox (made after a sandbox started, off its path: 0.35 to 0.6 ms here). Never used by anyone
// before it is taken, so a sandbox that takes it gets what it would have made.
static pthread_mutex_t spare_net_lock = PTHREAD_MUTEX_INITIALIZER;
static int spare_net = -1;

unsigned silo_sandbox_count_start(void) {
    static unsigned starts;
    return __atomic_fetch_add(&starts, 1, __ATOMIC_RELAXED);
}

int silo_sandbox_netns_take(void) {
    pthread_mutex_lock(&spare_net_lock);
    int fd = spare_net;
    spare_net = -1;
    pthread_mutex_unlock(&spare_net_lock);
    return fd;
}

void silo_sandbox_netns_refill(void) {
    pthread_mutex_lock(&spare_net_lock);
    int empty = spare_net < 0;
    pthread_mutex_unlock(&spare_net_lock);
    if (!empty) return;
    int fd = silo_sandbox_make_netns();
    if (fd < 0) return;
    pthread_mutex_lock(&spare_net_lock);
    if (spare_net < 0) { spare_net = fd; fd = -1; }
    pthread_mutex_unlock(&spare_net_lock);
    if (fd >= 0) close(fd);
}

void silo_sandbox_gate_open(struct silo_sandbox_gate *gate) {
    char byte = 1;
    while (write(gate->pipe[1], &byte, 1) < 0 && errno == EINTR) {}
}

/// Joins the cgroup: "0" into each `tasks` file (see child()), then a cgroup namespace of its own.
static void join_cgroups(const struct silo_sandbox_config *c, const int *fds, int count) {
    for (int i = 0; i < count; i++) {
        if (write(fds[i], "0", 1) != 1) fail(c, STEP_CGROUP_JOIN);
        close(fds[i]);
    }
}

/// After the caller's other thread is done (struct silo_sandbox_gate): a descriptor table of the
/// child's own, the cgroup, and the network namespace that thread made.
static void pass_gate(struct silo_sandbox_config *c) {
    struct silo_sandbox_gate *gate = c->gate;
    char byte;
    ssize_t got;
    do { got = read(gate->pipe[0], &byte, 1); } while (got < 0 && errno == EINTR);
    if (got != 1) { if (got == 0) errno = EPIPE; fail(c, STEP_GATE); }
    if (gate->error) { errno = gate->error; fail(c, STEP_GATE); }
    // From here on, closing and moving descriptors changes the child's table only.
    if (unshare(CLONE_FILES) != 0) fail(c, STEP_GATE);
    join_cgroups(c, c->cgroup_task_fds, c->cgroup_task_count);
    join_cgroups(c, gate->task_fds, gate->task_count > 16 ? 16 : gate->task_count);
    if (unshare(CLONE_NEWCGROUP) != 0) fail(c, STEP_CGROUP_NS);
    if (gate->makes_net) {
        if (setns(gate->net_fd, CLONE_NEWNET) != 0) fail(c, STEP_NET_ENTER);
        close(gate->net_fd);
    } else {
        loopback_up(c);
    }
}

static void drop_capabilities(const struct silo_sandbox_config *c) {
    unsigned long long keep = c->keep_capabilities;
    for (int cap = 0; cap <= c->last_capability; cap++) {
        if (cap < 64 && (keep & (1ull << cap))) continue;
        if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 && errno != EINVAL) fail(c, STEP_CAPABILITIES);
    }
    if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0 && errno != EINVAL) fail(c, STEP_CAPABILITIES);
    struct __user_cap_header_struct header = { _LINUX_CAPABILITY_VERSION_3, 0 };
    struct __user_cap_data_struct data[2];
    memset(data, 0, sizeof data);
    // Root keeps at exec what its permitted set holds (no_new_privs grants nothing more).
    data[0].permitted = data[0].effective = (uint32_t)keep;
    data[1].permitted = data[1].effective = (uint32_t)(keep >> 32);
    if (syscall(SYS_capset, &header, data) != 0) fail(c, STEP_CAPABILITIES);
}

/// The architecture the filter is written for: a system call made through another ABI (i386's
/// int 0x80 on x86-64, AArch32 on aarch64) has other numbers, and is killed. Only little-endian
/// architectures: the argument checks below read an argument's low 32 bits at its first byte.
#if defined(__x86_64__)
#define SILO_AUDIT_ARCH AUDIT_ARCH_X86_64
#elif defined(__aarch64__) && defined(__AARCH64EL__)
#define SILO_AUDIT_ARCH AUDIT_ARCH_AARCH64
#elif defined(__riscv) && __riscv_xlen == 64
#define SILO_AUDIT_ARCH AUDIT_ARCH_RISCV64
#else
#error "Silo's seccomp filter is written for x86-64, aarch64 and riscv64; review its table for this architecture"
#endif

/// The default deny-list: what a payload has no business doing even as root in its own
/// namespaces. Everything else is allowed; syscall numbers past the table get ENOSYS, so new
/// kernel interfaces are closed until reviewed.
enum seccomp_rule { DENY_EPERM, DENY_ENOSYS, CLONE_FLAGS, IOCTL_DENIED, SOCKET_FAMILY, DEVICE_NODE_1, DEVICE_NODE_2, FCNTL_LEASE, PERSONALITY };
static const struct { unsigned nr; enum seccomp_rule rule; } seccomp_rules[] = {
    { __NR_mount, DENY_EPERM }, { __NR_umount2, DENY_EPERM }, { __NR_pivot_root, DENY_EPERM },
    { __NR_unshare, DENY_EPERM }, { __NR_setns, DENY_EPERM }, { __NR_move_mount, DENY_EPERM },
    { __NR_open_tree, DENY_EPERM }, { __NR_fsopen, DENY_EPERM }, { __NR_fsmount, DENY_EPERM },
    { __NR_fsconfig, DENY_EPERM }, { __NR_fspick, DENY_EPERM }, { __NR_mount_setattr, DENY_EPERM },
    // The kernel log: dmesg_restrict is the host's choice, not the payload's.
    { __NR_syslog, DENY_EPERM },
    { __NR_kexec_load, DENY_EPERM }, { __NR_kexec_file_load, DENY_EPERM }, { __NR_init_module, DENY_EPERM },
    { __NR_finit_module, DENY_EPERM }, { __NR_delete_module, DENY_EPERM }, { __NR_bpf, DENY_EPERM },
    { __NR_perf_event_open, DENY_EPERM }, { __NR_keyctl, DENY_EPERM }, { __NR_add_key, DENY_EPERM },
    { __NR_request_key, DENY_EPERM }, { __NR_ptrace, DENY_EPERM }, { __NR_process_vm_readv, DENY_EPERM },
    { __NR_process_vm_writev, DENY_EPERM }, { __NR_open_by_handle_at, DENY_EPERM }, { __NR_reboot, DENY_EPERM },
    { __NR_swapon, DENY_EPERM }, { __NR_swapoff, DENY_EPERM }, { __NR_settimeofday, DENY_EPERM },
    { __NR_clock_settime, DENY_EPERM }, { __NR_clock_adjtime, DENY_EPERM }, { __NR_adjtimex, DENY_EPERM },
    { __NR_acct, DENY_EPERM }, { __NR_quotactl, DENY_EPERM }, { __NR_userfaultfd, DENY_EPERM },
#ifdef __NR__sysctl
    // The binary sysctl interface (gone in Linux 5.5; x86-64's 156): it reached /proc/sys through
    // the kernel's own proc mount, past the read-only bind of /proc/sys.
    { __NR__sysctl, DENY_EPERM },
#endif
    // Device nodes (character and block: their mode in mknod's second argument, mknodat's third);
    // FIFOs and sockets, which mkfifo and servers make without privilege, are allowed.
#ifdef __NR_mknod  // (the architectures with the generic table, aarch64 and riscv64, have mknodat only)
    { __NR_mknod, DEVICE_NODE_1 },
#endif
    { __NR_mknodat, DEVICE_NODE_2 },
    // A read lease (F_SETLEASE) on a file it owns: the payload is the host's root, so it owns the
    // host files bound read-only, and a lease stalls a host writer of one for the lease-break time.
    { __NR_fcntl, FCNTL_LEASE },
    // personality: only the values container profiles allow (the query, Linux, 32-bit, uname26),
    // not READ_IMPLIES_EXEC, ADDR_NO_RANDOMIZE and the rest.
    { __NR_personality, PERSONALITY },
    // Calls a capability guards today (none is held): closed whatever capabilities a caller keeps.
    { __NR_chroot, DENY_EPERM }, { __NR_vhangup, DENY_EPERM },
#ifdef __NR_iopl
    { __NR_iopl, DENY_EPERM },
#endif
#ifdef __NR_ioperm
    { __NR_ioperm, DENY_EPERM },
#endif
#ifdef __NR_lookup_dcookie
    { __NR_lookup_dcookie, DENY_EPERM },
#endif
    // File handles of the host's files (useless while open_by_handle_at is denied, and Docker
    // refuses them without CAP_SYS_ADMIN), and fanotify's kernel surface beyond inotify's.
    { __NR_name_to_handle_at, DENY_EPERM }, { __NR_fanotify_init, DENY_EPERM },
    // Secret memory leaves the kernel's direct map (fragmenting it host-wide) and stops hibernation.
#ifdef __NR_memfd_secret
    { __NR_memfd_secret, DENY_ENOSYS },
#endif
    // What container profiles deny too: the LDT (espfix bugs), NUMA memory policy and page moves,
    // host file system statistics (ustat, sysfs), uselib, quotactl by descriptor, and the
    // ptrace-like calls ptrace's refusal would otherwise leave (kcmp, pidfd_getfd, process_madvise).
    // (x86-64's modify_ldt, ustat, sysfs and uselib have no number in the generic table.)
#ifdef __NR_modify_ldt
    { __NR_modify_ldt, DENY_EPERM },
#endif
#ifdef __NR_ustat
    { __NR_ustat, DENY_EPERM },
#endif
#ifdef __NR_sysfs
    { __NR_sysfs, DENY_EPERM },
#endif
#ifdef __NR_uselib
    { __NR_uselib, DENY_EPERM },
#endif
    { __NR_mbind, DENY_EPERM }, { __NR_set_mempolicy, DENY_EPERM },
    { __NR_get_mempolicy, DENY_EPERM }, { __NR_migrate_pages, DENY_EPERM }, { __NR_move_pages, DENY_EPERM },
    { __NR_set_mempolicy_home_node, DENY_EPERM }, { __NR_quotactl_fd, DENY_EPERM }, { __NR_kcmp, DENY_EPERM },
    { __NR_pidfd_getfd, DENY_EPERM }, { __NR_process_madvise, DENY_EPERM },
    // clone3 passes its flags in memory the filter cannot read: ENOSYS makes libc fall back to
    // clone, whose flags it can.
    { __NR_clone3, DENY_ENOSYS },
    // io_uring: the operations it runs never pass through this filter (and it has been a steady
    // source of kernel bugs). ENOSYS: its users fall back to plain system calls.
    { __NR_io_uring_setup, DENY_ENOSYS }, { __NR_io_uring_enter, DENY_ENOSYS }, { __NR_io_uring_register, DENY_ENOSYS },
    // socket and socketpair: only AF_UNIX; AF_INET and AF_INET6 with the IP, TCP, UDP, UDP-Lite
    // and ICMP protocols; AF_NETLINK's NETLINK_ROUTE. A family or protocol the kernel has not
    // loaded is a module it loads on demand, before any privilege check (a steady source of
    // kernel bugs: RDS, TIPC, SCTP, DCCP, L2TP, netlink's generic families and diag modules...);
    // NETLINK_KOBJECT_UEVENT would bring every host uevent (other systems' LUNs come and go);
    // AF_VSOCK is not in the network namespace.
    { __NR_socket, SOCKET_FAMILY }, { __NR_socketpair, SOCKET_FAMILY },
    // clone with CLONE_NEWUSER (or any namespace flag): no nested namespaces.
    { __NR_clone, CLONE_FLAGS },
    // ioctl(fd, TIOCSTI): faking terminal input; TIOCSETD (module autoload); the loop driver's requests (0x4C00-0x4C0F, and
    // /dev/loop-control's 0x4C80-0x4C8F): the driver asks for no privilege for some, so a payload
    // holding an attached LUN's node, even opened read-only, could detach the host's loop device
    // under it (LOOP_CLR_FD) or swap its backing file (LOOP_CHANGE_FD); and block tracing. The
    // kernel compares only the low 32 bits of the command, so the filter does too (a high-bit
    // variant is the same request).
    { __NR_ioctl, IOCTL_DENIED },
};
#define SECCOMP_RULES (sizeof seccomp_rules / sizeof seccomp_rules[0])

#define ALLOW BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW)
#define DENY(error) BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | ((error) & SECCOMP_RET_DATA))

/// The program, made once by the caller (seccomp_program) before any child reads it.
static struct sock_filter seccomp_filter[512];  // 285 used now; the kernel takes up to 4096
static unsigned short seccomp_length;
static pthread_once_t seccomp_once = PTHREAD_ONCE_INIT;

static int seccomp_jump_too_far;

/// A jump over `length` instructions, checked to fit the 8 bits BPF gives it: one that does not
/// would land elsewhere, so the program is dropped (and install fails) instead.
static unsigned char jump(unsigned length) {
    if (length > 255) seccomp_jump_too_far = 1;
    return (unsigned char)length;
}

static void emit(struct sock_filter instruction) {
    if (seccomp_length < sizeof seccomp_filter / sizeof seccomp_filter[0]) seccomp_filter[seccomp_length] = instruction;
    seccomp_length++;
}

/// What one rule does with the system call number already matched (A holds it).
static void emit_rule(enum seccomp_rule rule) {
    switch (rule) {
    case DENY_EPERM: emit((struct sock_filter)DENY(EPERM)); break;
    case DENY_ENOSYS: emit((struct sock_filter)DENY(ENOSYS)); break;
    case CLONE_FLAGS:
        emit((struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, args[0])));
        emit((struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JSET | BPF_K,
            CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWCGROUP, 0, 1));
        emit((struct sock_filter)DENY(EPERM));
        emit((struct sock_filter)ALLOW);
        break;
    case IOCTL_DENIED:
        emit((struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, args[1])));
        emit((struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, TIOCSTI, 8, 0));
        // TIOCSETD: a line discipline the kernel has not loaded is a module it loads on demand
        // (dev.tty.ldisc_autoload, on by default), past the deny-list's module calls.
        emit((struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, TIOCSETD, 7, 0));
        // TIOCLINUX: on a virtual console, its selection paste types text as TIOCSTI does (before
        // Linux 6.7 without a privilege), and its other requests reach the console's state.
        emit((struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, TIOCLINUX, 6, 0));
        // 0x4C00-0x4C0F and 0x4C80-0x4C8F alike: both lose bits 0-3 and 7.
        emit((struct sock_filter)BPF_STMT(BPF_ALU | BPF_AND | BPF_K, 0xFFFFFF70u));
        emit((struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 0x4C00, 4, 0));
        // BLKTRACESETUP, START, STOP, TEARDOWN (type 0x12, numbers 115-118, whatever the size
        // and direction bits): a block trace's buffers are the host's, not the system's.
        emit((struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, args[1])));
        emit((struct sock_filter)BPF_STMT(BPF_ALU | BPF_AND | BPF_K, 0xFFFF));
        emit((struct sock_filter)BPF_STMT(BPF_ALU | BPF_SUB | BPF_K, 0x1273));
        emit((struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JGE | BPF_K, 4, 1, 0));
        emit((struct sock_filter)DENY(EPERM));
        emit((struct sock_filter)ALLOW);
        break;
    case SOCKET_FAMILY:
        // Family and protocol are ints: their low 32 bits, as the kernel reads them.
        emit((struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, args[0])));  // 0
        emit((struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AF_UNIX, 18, 0));     // 1 -> allow
        emit((struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AF_NETLINK, 3, 0));   // 2 -> 6
        emit((struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AF_INET, 4, 0));      // 3 -> 8
        emit((struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AF_INET6, 3, 0));     // 4 -> 8
        emit((struct sock_filter)DENY(EAFNOSUPPORT));                                      // 5
        emit((struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, args[2])));  // 6: netlink
        emit((struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 0 /* NETLINK_ROUTE */, 12, 11));  // 7 -> allow, 19
        // AF_INET with SOCK_PACKET is turned into an AF_PACKET socket by the kernel (whose module it
        // loads on demand): the type's low bits, without SOCK_NONBLOCK and SOCK_CLOEXEC.
        emit((struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, args[1])));  // 8: inet
        emit((struct sock_filter)BPF_STMT(BPF_ALU | BPF_AND | BPF_K, 0xF));                // 9
        emit((struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SOCK_PACKET, 7, 0));  // 10 -> 18
        emit((struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, args[2])));  // 11
        emit((struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, IPPROTO_IP, 7, 0));     // 12 -> allow
        emit((struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, IPPROTO_TCP, 6, 0));    // 13
        emit((struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, IPPROTO_UDP, 5, 0));    // 14
        emit((struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, IPPROTO_ICMP, 4, 0));   // 15
        emit((struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, IPPROTO_ICMPV6, 3, 0)); // 16
        emit((struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, IPPROTO_UDPLITE, 2, 1)); // 17 -> allow, 19
        emit((struct sock_filter)DENY(ESOCKTNOSUPPORT));                                   // 18
        emit((struct sock_filter)DENY(EPROTONOSUPPORT));                                   // 19
        emit((struct sock_filter)ALLOW);                                                   // 20
        break;
    case DEVICE_NODE_1:
    case DEVICE_NODE_2:
        // The mode's file type (S_IFMT) in the low 32 bits of the argument.
        emit((struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS,
                                          rule == DEVICE_NODE_1 ? offsetof(struct seccomp_data, args[1]) : offsetof(struct seccomp_data, args[2])));
        emit((struct sock_filter)BPF_STMT(BPF_ALU | BPF_AND | BPF_K, S_IFMT));
        emit((struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, S_IFCHR, 1, 0));
        emit((struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, S_IFBLK, 0, 1));
        emit((struct sock_filter)DENY(EPERM));
        emit((struct sock_filter)ALLOW);
        break;
    case FCNTL_LEASE:
        emit((struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, args[1])));
        emit((struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, F_SETLEASE, 0, 1));
        emit((struct sock_filter)DENY(EPERM));
        emit((struct sock_filter)ALLOW);
        break;
    case PERSONALITY:
        emit((struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, args[0])));
        emit((struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 0 /* PER_LINUX */, 5, 0));
        emit((struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 8 /* PER_LINUX32 */, 4, 0));
        emit((struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 0x20000 /* UNAME26 */, 3, 0));
        emit((struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 0x20008 /* PER_LINUX32 | UNAME26 */, 2, 0));
        emit((struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 0xffffffff /* the query */, 1, 0));
        emit((struct sock_filter)DENY(EPERM));
        emit((struct sock_filter)ALLOW);
        break;
    }
}

static unsigned rule_length(enum seccomp_rule rule) {
    switch (rule) {
    case IOCTL_DENIED: return 12;
    case SOCKET_FAMILY: return 21;
    case DEVICE_NODE_1: case DEVICE_NODE_2: return 6;
    case CLONE_FLAGS: case FCNTL_LEASE: return 4;
    case PERSONALITY: return 8;
    default: return 1;
    }
}

/// Instructions emit_tree(order, count) emits.
static unsigned tree_length(const unsigned char *order, unsigned count) {
    if (count <= 3) {
        unsigned length = 1;  // the final ALLOW
        for (unsigned i = 0; i < count; i++) length += 1 + rule_length(seccomp_rules[order[i]].rule);
        return length;
    }
    unsigned half = count / 2;
    return 1 + tree_length(order, half) + tree_length(order + half, count - half);
}

/// A binary search over the rules, by number (`order` sorts them): a handful of comparisons for
/// any system call instead of one for each rule. The kernel runs the program for every system
/// call number when it installs it (to find those it always allows), and for each system call
/// the payload makes that it cannot answer from that.
static void emit_tree(const unsigned char *order, unsigned count) {
    if (count <= 3) {
        for (unsigned i = 0; i < count; i++) {
            enum seccomp_rule rule = seccomp_rules[order[i]].rule;
            emit((struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, seccomp_rules[order[i]].nr, 0, jump(rule_length(rule))));
            emit_rule(rule);
        }
        emit((struct sock_filter)ALLOW);
        return;
    }
    unsigned half = count / 2;
    // Numbers from the right half's first on: over the left half.
    emit((struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JGE | BPF_K, seccomp_rules[order[half]].nr, jump(tree_length(order, half)), 0));
    emit_tree(order, half);
    emit_tree(order + half, count - half);
}

static void make_seccomp_program(void) {
    unsigned char order[SECCOMP_RULES];
    for (unsigned i = 0; i < SECCOMP_RULES; i++) order[i] = (unsigned char)i;
    for (unsigned i = 1; i < SECCOMP_RULES; i++) {  // insertion sort by number
        unsigned char key = order[i];
        unsigned j = i;
        for (; j > 0 && seccomp_rules[order[j - 1]].nr > seccomp_rules[key].nr; j--) order[j] = order[j - 1];
        order[j] = key;
    }
    seccomp_length = 0;
    emit((struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)));
    emit((struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SILO_AUDIT_ARCH, 1, 0));
    emit((struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS));
    emit((struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)));
    // Numbers beyond the known table (the same on every architecture from 424 on), and on
    // x86-64 x32 system calls (bit 30): ENOSYS.
    emit((struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JGE | BPF_K, 463, 0, 1));
    emit((struct sock_filter)DENY(ENOSYS));
    emit_tree(order, SECCOMP_RULES);
    // Too long for the table, or a jump too far for its 8 bits (neither is so): no program, and
    // install_seccomp fails rather than allow.
    if (seccomp_length > sizeof seccomp_filter / sizeof seccomp_filter[0] || seccomp_jump_too_far) seccomp_length = 0;
}

/// The program's instructions and length, made on first use. For the caller, before the clone.
const struct sock_filter *silo_sandbox_seccomp_program(unsigned short *length) {
    pthread_once(&seccomp_once, make_seccomp_program);
    *length = seccomp_length;
    return seccomp_filter;
}

static void install_seccomp(const struct silo_sandbox_config *c) {
    if (seccomp_length == 0) { errno = EINVAL; fail(c, STEP_SECCOMP); }
    struct sock_fprog program = { seccomp_length, seccomp_filter };
    if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &program) != 0) fail(c, STEP_SECCOMP);
}

static void setup_stdio(struct silo_sandbox_config *c) {
    // Every source first goes above any target (0 .. 2 + inherited), so no dup2 overwrites a
    // source still to be placed, nor the error pipe. Just above: a fixed floor such as 64 is
    // past the descriptor limit of a caller that runs with a low one (EINVAL).
    int sources[3 + 16];
    int count = 3 + (c->inherit_count > 16 ? 16 : c->inherit_count);
    for (int target = 0; target < count; target++) {
        int fd = target < 3 ? (target == 0 ? c->stdin_fd : target == 1 ? c->stdout_fd : c->stderr_fd) : c->inherit_fds[target - 3];
        if (fd < 0 && target < 3) {  // keep the inherited stdio descriptor, if there is one
            sources[target] = -1;
            continue;
        }
        sources[target] = fcntl(fd, F_DUPFD_CLOEXEC, count);
        if (sources[target] < 0) fail(c, STEP_STDIO);
    }
    int moved = fcntl(c->error_fd, F_DUPFD_CLOEXEC, count);
    if (moved < 0) fail(c, STEP_STDIO);
    c->error_fd = moved;
    for (int target = 0; target < count; target++) {
        if (sources[target] >= 0 && dup2(sources[target], target) < 0) fail(c, STEP_STDIO);
    }
    // Nothing else of the parent's leaks in: close every descriptor but those and the error pipe.
    if (close_all_from(count, c->error_fd) != 0) fail(c, STEP_STDIO);
}

/// The child's argument: its own copy of the config (it moves its error pipe), in the parent's
/// memory, on the stack of the parent's waiting thread.
static int child(void *argument) {
    struct silo_sandbox_config *c = argument;
    // Until exec this runs in the parent's memory (CLONE_VM), so none of the parent's signal
    // handlers may run here. Every signal is blocked: the parent blocked them around clone, and
    // this blocks the two glibc keeps out of any mask it sets (SIGCANCEL, SIGSETXID). A signal
    // that comes now stays pending; a fault while blocked kills (the kernel resets its handler).
    // Silo's init execs with all of them still blocked, so no handler can run before the exec
    // resets them. A program that execs with signals unblocked (the last sigprocmask below) could
    // take a pending one in between: its handlers go back to the default first, as exec would do.
    unsigned long long every_signal = ~0ULL;
    syscall(SYS_rt_sigprocmask, SIG_SETMASK, &every_signal, NULL, sizeof every_signal);
    // Signals the caller ignores stay ignored across exec: a SIGCHLD ignored by a daemon that
    // embeds Silo would make the kernel reap init's children unseen (silo run would hang, no
    // process exit would be reported), and an ignored SIGPIPE or SIGHUP would reach payloads.
    // Every ignored signal goes back to its default (glibc's own two included, which its
    // sigaction refuses: hence the raw call); for a program that is not Silo's init, every handled
    // one too, which could run between the unblock and the exec (exec resets those for init).
    for (int sig = 1; sig <= 64; sig++) {
        struct { void *handler; unsigned long flags; void *restorer; unsigned long mask; } action = { 0 }, none = { 0 };
        if (sig == SIGKILL || sig == SIGSTOP || syscall(SYS_rt_sigaction, sig, NULL, &action, 8) != 0) continue;
        if (action.handler == (void *)SIG_DFL || (c->init_binary && action.handler != (void *)SIG_IGN)) continue;
        syscall(SYS_rt_sigaction, sig, &none, NULL, 8);
    }
    if (c->die_with_parent && prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) != 0) fail(c, STEP_CGROUP_JOIN);
    // Join the system's cgroup in each v1 hierarchy (they have no CLONE_INTO_CGROUP). "0" in a
    // `tasks` file moves the calling thread only, and the kernel then skips the global
    // cgroup_threadgroup_rwsem, whose write side waits for an RCU grace period (5 to 15 ms here)
    // when a parent moves a process by pid through cgroup.procs. This child has one thread, so
    // moving it moves the whole process; what it forks or spawns later is born inside. With a
    // gate, that comes after the mounts (pass_gate), once the caller's other thread made the
    // cgroup: until then the child runs in the caller's cgroup, where its mounts' few kernel
    // objects stay charged. Nothing of the payload's runs before it joins.
    if (!c->gate) {
        join_cgroups(c, c->cgroup_task_fds, c->cgroup_task_count);
        // After joining the cgroup: the namespace's root is the system's own cgroup.
        if (unshare(CLONE_NEWCGROUP) != 0) fail(c, STEP_CGROUP_NS);
    }
    if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) != 0) fail(c, STEP_PRIVATE);
    char target[4096];
    if (c->root_tree_fd >= 0) {
        // A clone of the shared read-only root (silo_sandbox_template_clone): only what is the
        // system's own goes on it. Not closed here: the descriptor may be the caller's too.
        if (syscall(SYS_move_mount, c->root_tree_fd, "", AT_FDCWD, c->root, SILO_MOVE_MOUNT_F_EMPTY_PATH) != 0) fail(c, STEP_ROOT_TMPFS);
        if (chdir(c->root) != 0) fail(c, STEP_ROOT_TMPFS);
        mount_dev_instances(c);
        goto per_system;
    }
    if (mount("tmpfs", c->root, "tmpfs", MS_NOSUID | MS_NODEV, "mode=755,size=1m") != 0) fail(c, STEP_ROOT_TMPFS);
    if (chdir(c->root) != 0) fail(c, STEP_ROOT_TMPFS);  // into the tmpfs: NEW_ROOT
    // Every mount point on the root tmpfs first, while it is writable and before any host folder
    // is bound on it: a LUN's folder below a bind is then looked up in the (read-only) host
    // folder, never made there.
    for (size_t i = 0; c->mount_targets && c->mount_targets[i]; i++) {
        join(target, sizeof target, NEW_ROOT, c->mount_targets[i]);
        if (make_dirs(target) != 0) fail(c, STEP_MOUNT_LUN);
    }
    static const char *const mount_points[] = { NEW_ROOT "/dev", NEW_ROOT "/proc", NEW_ROOT "/tmp" };
    for (size_t i = 0; i < sizeof mount_points / sizeof mount_points[0]; i++) {
        if (mkdir(mount_points[i], 0755) != 0 && errno != EEXIST) fail(c, STEP_ROOT_TMPFS);
    }
    static const char init_target[] = NEW_ROOT "/.silo/init";
    if (c->init_binary) {
        if (mkdir(NEW_ROOT "/.silo", 0755) != 0 && errno != EEXIST) fail(c, STEP_BIND);
        if (make_file(init_target) != 0) fail(c, STEP_BIND);
    }
    bind_host_paths(c);
    if (c->init_binary && mount(c->init_binary, init_target, NULL, MS_BIND | MS_REC, NULL) != 0) fail(c, STEP_BIND);
    lock_root(c);
    build_dev(c);
per_system:
    mount_proc(c);
    join(target, sizeof target, NEW_ROOT, "/tmp");
    if (mount("tmpfs", target, "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777,size=256m") != 0) fail(c, STEP_TMP);
    for (size_t i = 0; c->mount_targets && c->mount_targets[i]; i++) {
        join(target, sizeof target, NEW_ROOT, c->mount_targets[i]);
        // Made again: a folder under /tmp was made on the root tmpfs, which the private /tmp now
        // covers (elsewhere every part exists, and mkdir says EEXIST before a read-only EROFS).
        if (make_dirs(target) != 0) fail(c, STEP_MOUNT_LUN);
        if (syscall(SYS_move_mount, c->mount_fds[i], "", AT_FDCWD, target, SILO_MOVE_MOUNT_F_EMPTY_PATH) != 0) fail(c, STEP_MOUNT_LUN);
    }
    // pivot_root(".", "."), in NEW_ROOT: the old root is stacked under the new one; detach it.
    if (syscall(SYS_pivot_root, ".", ".") != 0) fail(c, STEP_PIVOT);
    if (umount2(".", MNT_DETACH) != 0) fail(c, STEP_PIVOT);
    if (chdir("/") != 0) fail(c, STEP_PIVOT);
    // (The shared root's superblock is read-only already, and not this system's to change.)
    if (c->root_tree_fd < 0 && mount(NULL, "/", NULL, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV, "mode=755,size=1m") != 0) {
        fail(c, STEP_READ_ONLY_ROOT);
    }
    if (c->hostname && sethostname(c->hostname, strlen(c->hostname)) != 0) fail(c, STEP_HOSTNAME);
    if (c->gate) pass_gate(c); else loopback_up(c);
    // A session keyring of its own: the caller's (and its keys) stay out of reach. Kernels
    // without keys (ENOSYS) have nothing to share.
    if (syscall(SYS_keyctl, KEYCTL_JOIN_SESSION_KEYRING, 0) < 0 && errno != ENOSYS) fail(c, STEP_KEYRING);
    setup_stdio(c);
    // No supplementary group of the caller's (a host group's files in the read-only binds stay
    // out of reach). The raw system calls: glibc's would signal the caller's other threads to
    // change theirs too. Where the kernel refuses (a user namespace whose setgroups is denied),
    // only a caller that has none goes on: a group kept is access kept.
    if (syscall(SYS_setgroups, 0, NULL) != 0 && syscall(SYS_getgroups, 0, NULL) != 0) fail(c, STEP_CAPABILITIES);
    drop_capabilities(c);
    // No core dumps, for good (a hard limit of 0 that no process inside can raise): the host's
    // core_pattern helper (systemd-coredump, apport) would otherwise run as host root on a core
    // file the payload wrote.
    struct rlimit no_core = { 0, 0 };
    if (setrlimit(RLIMIT_CORE, &no_core) != 0) fail(c, STEP_CORE_LIMIT);
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) fail(c, STEP_NO_NEW_PRIVS);
    if (c->seccomp) install_seccomp(c);
    // The signal mask at exec is chosen here, not inherited from the caller (silo blocks SIGINT in
    // every thread, and a payload that inherited that could not be interrupted). Silo's init
    // starts with every signal blocked: it takes them from a signalfd, and one that came before
    // it got there would be dropped (a pid namespace's init ignores signals it has no handler
    // for), as a SIGTERM right after start was. Init unblocks them in what it starts. Any other
    // program starts with none blocked.
    if (!c->init_binary) {
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        // A payload run as pid 1 itself (no init) leaves the caller's controlling terminal: on a
        // virtual console that terminal's keyboard and console requests need no privilege but
        // being its process. (Silo's init does the same for every process it starts.)
        if (setsid() < 0) fail(c, STEP_SESSION);
    }
    execve(c->argv[0], c->argv, c->envp);
    fail(c, STEP_EXEC);
}

#if defined(__x86_64__)
#define SILO_STRING(x) #x
#define SILO_NUMBER(x) SILO_STRING(x)
/// clone3 for a child on its own stack in this memory (CLONE_VM): it starts where no frame of this
/// function exists, so it cannot return from the system call into C. It calls entry(argument)
/// there and exits with the result. Returns the pid, or -errno.
long silo_clone3_on_stack(struct clone_args *args, size_t size, int (*entry)(void *), void *argument)
    __attribute__((visibility("hidden")));
__asm__(
    ".text\n"
    ".globl silo_clone3_on_stack\n"
    ".hidden silo_clone3_on_stack\n"
    ".type silo_clone3_on_stack, @function\n"
    "silo_clone3_on_stack:\n"
    "    mov %rdx, %r8\n"  // entry and argument: the system call keeps r8 and r9
    "    mov %rcx, %r9\n"
    "    mov $" SILO_NUMBER(__NR_clone3) ", %eax\n"
    "    syscall\n"
    "    test %rax, %rax\n"
    "    jnz 1f\n"
    "    xor %ebp, %ebp\n"  // the child, on its new stack
    "    mov %r9, %rdi\n"
    "    call *%r8\n"
    "    mov %eax, %edi\n"
    "    mov $" SILO_NUMBER(__NR_exit) ", %eax\n"
    "    syscall\n"
    "    hlt\n"
    "1:  ret\n"
    ".size silo_clone3_on_stack, .-silo_clone3_on_stack\n");
#endif

pid_t silo_sandbox_spawn(const struct silo_sandbox_config *config, int *pidfd) {
    struct clone_args args;
    memset(&args, 0, sizeof args);
    args.flags = CLONE_NEWPID | CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_PIDFD | config->extra_clone_flags;
    if (!config->gate || !config->gate->makes_net) args.flags |= CLONE_NEWNET;
    // The caller's other thread opens descriptors for the child while it runs (pass_gate).
    if (config->gate) args.flags |= CLONE_FILES;
    args.pidfd = (unsigned long long)(unsigned long)pidfd;
    args.exit_signal = SIGCHLD;
    if (config->cgroup_fd >= 0) {
        args.flags |= CLONE_INTO_CGROUP;
        args.cgroup = (unsigned long long)config->cgroup_fd;
    }
    struct silo_sandbox_config copy = *config;
    unsigned short seccomp_instructions;
    if (config->seccomp) (void)silo_sandbox_seccomp_program(&seccomp_instructions);
    sigset_t all, mask;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &mask);
    long pid;
#if defined(__x86_64__)
    // The child shares this memory until it execs (CLONE_VM), and this thread waits until then
    // (CLONE_VFORK): the kernel copies none of this process's page tables, nor tears the copy down
    // at exec, and neither side takes copy-on-write faults; 0.25 ms of every start here. It runs
    // on a stack of its own, with a guard page below.
    const size_t stack_size = 256 * 1024, guard = 4096;
    char *stack = mmap(NULL, stack_size + guard, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
    if (stack == MAP_FAILED) {
        pid = -errno;
    } else {
        (void)mprotect(stack, guard, PROT_NONE);
        args.flags |= CLONE_VM | CLONE_VFORK;
        args.stack = (unsigned long long)(unsigned long)(stack + guard);
        args.stack_size = stack_size;
        pid = silo_clone3_on_stack(&args, sizeof args, child, &copy);
        munmap(stack, stack_size + guard);
    }
    if (pid < 0) {
        errno = (int)-pid;
        pid = -1;
    }
#else
    // Without CLONE_VM the child runs on a copy of this memory as it is at the clone, so it would
    // never see the fields the caller's other thread sets later (struct silo_sandbox_gate): wait
    // for that thread first (poll leaves its byte in the pipe for the child). The overlap is lost.
    if (config->gate) {
        struct pollfd ready = { config->gate->pipe[0], POLLIN, 0 };
        while (poll(&ready, 1, -1) < 0 && errno == EINTR) {}
    }
    // CLONE_VFORK: this thread waits until the child has exec'd or died, as on x86-64; the caller
    // closes descriptors after the spawn that a child sharing its table (CLONE_FILES) still needs.
    args.flags |= CLONE_VFORK;
    pid = syscall(SYS_clone3, &args, sizeof args);
    if (pid == 0) _exit(child(&copy));
#endif
    int saved = errno;
    pthread_sigmask(SIG_SETMASK, &mask, NULL);
    errno = saved;
    return (pid_t)pid;
}

/// Opens directory `path` of the current root, component by component, never following a
/// symbolic link (a component that is one fails with ENOTDIR) nor taking `.` or `..`; with
/// `create`, makes the missing ones (mode 0755). An O_PATH descriptor, or -1 with errno.
/// For a running system's folders, which its payload may change under the host's feet.
static int open_dir_nofollow(const char *path, int create) {
    int dir = open("/", O_PATH | O_DIRECTORY | O_CLOEXEC);
    char part[256];
    const char *p = path;
    while (dir >= 0) {
        while (*p == '/') p++;
        if (!*p) return dir;
        size_t n = strcspn(p, "/");
        int error = 0;
        if (n >= sizeof part) error = ENAMETOOLONG;
        else {
            memcpy(part, p, n);
            part[n] = 0;
            if (strcmp(part, ".") == 0 || strcmp(part, "..") == 0) error = EINVAL;
        }
        p += n;
        int next = -1;
        if (!error) {
            next = openat(dir, part, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
            if (next < 0 && errno == ENOENT && create) {
                if (mkdirat(dir, part, 0755) == 0 || errno == EEXIST) next = openat(dir, part, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
            }
            if (next < 0) error = errno;
        }
        close(dir);
        if (error) { errno = error; return -1; }
        dir = next;
    }
    return -1;
}

#define SILO_MOVE_MOUNT_T_EMPTY_PATH 0x40
#define SILO_UMOUNT_NOFOLLOW 0x8

int silo_lun_mount_open(const char *device, const char *type, int read_only) {
    int fs = (int)syscall(SYS_fsopen, type, SILO_FSMOUNT_CLOEXEC);
    if (fs < 0) return -1;
    int mounted = -1;
    // Read-only is the file system's (no journal replay, no superblock write, and a read-only
    // loop device takes it), not only the mount's.
    if (syscall(SYS_fsconfig, fs, SILO_FSCONFIG_SET_STRING, "source", device, 0) == 0
        && (!read_only || syscall(SYS_fsconfig, fs, SILO_FSCONFIG_SET_FLAG, "ro", NULL, 0) == 0)
        && syscall(SYS_fsconfig, fs, SILO_FSCONFIG_CMD_CREATE, NULL, NULL, 0) == 0) {
        mounted = (int)syscall(SYS_fsmount, fs, SILO_FSMOUNT_CLOEXEC,
                               SILO_MOUNT_ATTR_NOSUID | SILO_MOUNT_ATTR_NODEV | (read_only ? SILO_MOUNT_ATTR_RDONLY : 0));
    }
    int error = errno;
    close(fs);
    errno = error;
    return mounted;
}

/// Moves the detached mount `mounted` (silo_lun_mount_open) onto the directory `target_fd` refers
/// to: the directory already opened, not a path looked up again (which the payload could point
/// elsewhere in between).
static int mount_on(int mounted, int target_fd) {
    return (int)syscall(SYS_move_mount, mounted, "", target_fd, "", SILO_MOVE_MOUNT_F_EMPTY_PATH | SILO_MOVE_MOUNT_T_EMPTY_PATH);
}

/// Unmounts the LUN's file system at `path`, if that is where it is: the parent is opened without
/// following links, the last component is checked to be a mount of device `number` (nothing else
/// is unmounted), and the unmount goes by that name from the parent, not following a link. A
/// mount point cannot be renamed or removed, so the name stays the one checked.
static int unmount_lun(const char *path, dev_t number) {
    const char *slash = strrchr(path, '/');
    if (!slash || !slash[1]) { errno = EINVAL; return -1; }
    char parent_path[4096];
    size_t length = (size_t)(slash - path);
    if (length >= sizeof parent_path) { errno = ENAMETOOLONG; return -1; }
    memcpy(parent_path, path, length);
    parent_path[length] = 0;
    int parent = open_dir_nofollow(parent_path, 0);
    if (parent < 0) return errno == ENOENT ? 0 : -1;  // gone: nothing mounted there
    int leaf = openat(parent, slash + 1, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    struct stat info;
    int ours = leaf >= 0 && fstat(leaf, &info) == 0 && info.st_dev == number;
    if (leaf >= 0) close(leaf);
    int result = 0;
    if (ours) {
        if (fchdir(parent) != 0 || umount2(slash + 1, SILO_UMOUNT_NOFOLLOW) != 0) result = -1;
        int error = errno;
        (void)!chdir("/");
        errno = error;
    }
    close(parent);
    return result;
}

/// The child of silo_sandbox_attach, inside the system's mount namespace. /dev and / are read-only
/// tmpfs mounts there: each is made writable for the one change and read-only again. The system's
/// own processes may change its folders meanwhile (links, renames): the mount path is walked
/// without following links, and the mount and unmount act on what that walk found.
/// The system's root or /dev could not be made read-only again after a change (its payload held
/// a file open for writing there meanwhile): a system whose root its payload can write is not
/// one Silo runs, so it is killed, all of it (its init's end ends its pid namespace).
static __attribute__((noreturn)) void fail_writable(int init_pidfd, pid_t init_pid) {
    int error = errno;
    if (init_pidfd < 0 || syscall(SYS_pidfd_send_signal, init_pidfd, SIGKILL, NULL, 0) != 0) kill(init_pid, SIGKILL);
    errno = error;
    fail(NULL, STEP_KEEP_READ_ONLY);
}

static int attach_child(int init_pidfd, pid_t init_pid, const struct silo_attach_config *a, int attach, int report) {
    attach_error_fd = report;
    // A LUN to mount gets no node inside: its file system is made here, from the host's node and
    // under the host's device cgroup, before entering the system's namespace.
    int mounted = -1;
    if (attach && a->mount_target) {
        mounted = silo_lun_mount_open(a->device_path, a->filesystem_type, a->read_only);
        if (mounted < 0) fail(NULL, STEP_MOUNT_LUN);
    }
    // A raw LUN's node inside is a bind of the host's (as at start), not a node made there: a
    // detach unmounts it, where removing a node the payload holds open would leave the read-only
    // /dev unable to go read-only again (an open, unlinked inode), and a start-time bind cannot be
    // unlinked at all.
    int node = -1, node_remount = 0;
    if (attach && !a->mount_target) {
        node = (int)syscall(SYS_open_tree, AT_FDCWD, a->device_path, SILO_OPEN_TREE_CLONE | SILO_OPEN_TREE_CLOEXEC);
        if (node < 0) fail(NULL, STEP_DEVICE_NODE);
        // As the start's binds of /dev: read-only (the host's node keeps its owner, mode and
        // times), nosuid, noexec (the host's /dev mount may be neither).
        struct silo_mount_attr flags = { SILO_MOUNT_ATTR_RDONLY | SILO_MOUNT_ATTR_NOSUID | SILO_MOUNT_ATTR_NOEXEC, 0, 0, 0 };
        if (syscall(SYS_mount_setattr, node, "", AT_EMPTY_PATH, &flags, sizeof flags) != 0) {
            if (errno != ENOSYS) fail(NULL, STEP_DEVICE_NODE);
            node_remount = 1;  // before Linux 5.12: a bind remount once it is in place
        }
    }
    // The system's init by its pidfd (it cannot be another process that took its pid since the
    // caller checked it); by /proc/<pid> only where there is no pidfd or setns takes none (before
    // Linux 5.3 and 5.8), and then only while the pidfd's process still lives.
    char path[64] = "/proc/";
    char number[16];
    int n = 0;
    for (pid_t value = init_pid; value > 0 && n < 15; value /= 10) number[n++] = (char)('0' + value % 10);
    size_t at = strlen(path);
    while (n > 0) path[at++] = number[--n];
    path[at] = 0;
    join(path, sizeof path, path, "/ns/mnt");
    // A system's init always has a mount namespace of its own: the host's (this process's) would
    // mean the pid names some other process now, and nothing of the host's /dev may be touched.
    // The namespace is opened once, compared by that descriptor, and (where setns takes no
    // pidfd) entered by it; it was the pidfd's process's if that still lives after the open.
    int ns = open(path, O_RDONLY | O_CLOEXEC);
    struct stat own_namespace, target_namespace;
    if (ns < 0 || stat("/proc/self/ns/mnt", &own_namespace) != 0 || fstat(ns, &target_namespace) != 0) fail(NULL, STEP_ENTER);
    if (init_pidfd >= 0 && syscall(SYS_pidfd_send_signal, init_pidfd, 0, NULL, 0) != 0) fail(NULL, STEP_ENTER);
    if (target_namespace.st_ino == own_namespace.st_ino && target_namespace.st_dev == own_namespace.st_dev) {
        errno = EINVAL;
        fail(NULL, STEP_ENTER);
    }
    int by_pidfd = init_pidfd >= 0 && setns(init_pidfd, CLONE_NEWNS) == 0;
    if (!by_pidfd && init_pidfd >= 0 && errno != EINVAL) fail(NULL, STEP_ENTER);
    if (!by_pidfd && setns(ns, CLONE_NEWNS) != 0) fail(NULL, STEP_ENTER);
    close(ns);
    if (chdir("/") != 0) fail(NULL, STEP_ENTER);
    static const char dev_options[] = "mode=755,size=64k", root_options[] = "mode=755,size=1m";
    if (!attach && a->mount_target) {
        if (unmount_lun(a->mount_target, makedev(a->major, a->minor)) != 0 && errno != EINVAL) fail(NULL, STEP_UNMOUNT);
    }
    // The node: bound for a raw LUN; removed at any detach (a LUN mounted by an older Silo had
    // one). The system is frozen: nothing inside opens the empty file before the bind covers it.
    if (attach && a->mount_target) goto mount_lun;
    if (mount(NULL, "/dev", NULL, MS_REMOUNT | MS_NOSUID | MS_NOEXEC, dev_options) != 0) fail(NULL, STEP_DEVICE_NODE);
    int made = 0, made_error = 0;
    struct stat there;
    if (attach) {
        int placeholder = open(a->device_path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0);
        if (placeholder >= 0) {
            close(placeholder);
            made = (int)syscall(SYS_move_mount, node, "", AT_FDCWD, a->device_path, SILO_MOVE_MOUNT_F_EMPTY_PATH);
            int placed = made == 0;
            if (placed && node_remount) made = mount(NULL, a->device_path, NULL, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NOEXEC, NULL);
            made_error = errno;
            if (made != 0) {
                if (placed) (void)umount2(a->device_path, MNT_DETACH | SILO_UMOUNT_NOFOLLOW);
                unlink(a->device_path);
            }
        } else if (errno == EEXIST && fstatat(AT_FDCWD, a->device_path, &there, AT_SYMLINK_NOFOLLOW) == 0 && S_ISBLK(there.st_mode)
                   && there.st_rdev == makedev(a->major, a->minor)) {
            // Already there (bound at start, or by an earlier attach): only as this device's node.
        } else {
            made = -1, made_error = errno == EEXIST || errno == 0 ? EEXIST : errno;
        }
    } else {
        // Unbound first (lazily: a process inside may hold it open), then the empty file under it.
        if (umount2(a->device_path, MNT_DETACH | SILO_UMOUNT_NOFOLLOW) != 0 && errno != EINVAL && errno != ENOENT) made = -1, made_error = errno;
        if (made == 0 && unlink(a->device_path) != 0 && errno != ENOENT) made = -1, made_error = errno;
    }
    if (mount(NULL, "/dev", NULL, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NOEXEC, dev_options) != 0) fail_writable(init_pidfd, init_pid);
    if (made != 0) { errno = made_error; fail(NULL, STEP_DEVICE_NODE); }
    if (node >= 0) close(node);
mount_lun:
    if (attach && a->mount_target) {
        // The root is made writable only when a folder on the way is missing.
        int target = open_dir_nofollow(a->mount_target, 0);
        if (target < 0 && errno == ENOENT) {
            if (mount(NULL, "/", NULL, MS_REMOUNT | MS_NOSUID | MS_NODEV, root_options) != 0) fail(NULL, STEP_MOUNT_LUN);
            target = open_dir_nofollow(a->mount_target, 1);
            int target_error = errno;
            if (mount(NULL, "/", NULL, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV, root_options) != 0) fail_writable(init_pidfd, init_pid);
            errno = target_error;
        }
        if (target < 0) fail(NULL, STEP_MOUNT_LUN);
        if (mount_on(mounted, target) != 0) fail(NULL, STEP_MOUNT_LUN);
        close(target);
        close(mounted);
    }
    return 0;
}

int silo_pidfd_open(pid_t pid) {
    return (int)syscall(SYS_pidfd_open, pid, 0);
}

int silo_sandbox_attach(pid_t init_pid, int init_pidfd, const struct silo_attach_config *config, int attach, struct silo_sandbox_failure *failure) {
    int report[2];
    if (pipe2(report, O_CLOEXEC) != 0) return -1;
    pid_t pid = fork();
    if (pid == 0) {
        close(report[0]);
        _exit(attach_child(init_pidfd, init_pid, config, attach, report[1]));
    }
    close(report[1]);
    if (pid < 0) { close(report[0]); return -1; }
    ssize_t got;
    do { got = read(report[0], failure, sizeof *failure); } while (got < 0 && errno == EINTR);
    close(report[0]);
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {}
    if (got == (ssize_t)sizeof *failure) return -1;
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) { failure->step = STEP_ENTER; failure->error = ECHILD; return -1; }
    return 0;
}
