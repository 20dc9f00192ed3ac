// The child side of a compute system: everything between clone3 and exec, in C, using only
// async-signal-safe system calls (the parent is a multi-threaded Swift process; no Swift, no
// malloc, no locks run in the child). The parent prepares every path and array beforehand.
#ifndef SILO_SANDBOX_H
#define SILO_SANDBOX_H

#include <sys/types.h>

struct silo_sandbox_config {
    /// An empty directory the child mounts its new root (a tmpfs) on.
    const char *root;
    const char *hostname;
    /// NULL-terminated: the program to run as pid 1, and its environment.
    char *const *argv;
    char *const *envp;
    /// Host paths bound read-only at the same place inside ("/usr", "/etc/passwd", ...); host
    /// symbolic links (such as /bin -> usr/bin) are recreated as links. NULL-terminated.
    const char *const *read_only_binds;
    /// Device nodes bound from the host ("/dev/null", ...). NULL-terminated.
    const char *const *devices;
    /// /proc paths covered: files by /dev/null, directories by an empty read-only tmpfs.
    const char *const *masked_paths;
    /// /proc paths made read-only (such as /proc/sys).
    const char *const *read_only_paths;
    /// On failure the child writes `struct silo_sandbox_failure` here and exits 127. Close-on-exec,
    /// so the parent reads EOF when exec succeeded.
    int error_fd;
    /// Standard descriptors for the program; -1 keeps the inherited one.
    int stdin_fd, stdout_fd, stderr_fd;
    /// Highest capability number (/proc/sys/kernel/cap_last_cap).
    int last_capability;
    /// Whether to install the seccomp deny-list.
    int seccomp;
    /// LUN file systems to mount inside: the mount points inside, NULL-terminated, and for each a
    /// detached mount the caller made (silo_lun_mount_open), which the child moves there. The
    /// device nodes themselves go in `devices`.
    const char *const *mount_targets;
    const int *mount_fds;
    /// A cgroup2 directory's descriptor to start the child in (CLONE_INTO_CGROUP: no migration
    /// later, which costs an RCU grace period); -1 for none.
    int cgroup_fd;
    /// Open for writing: the `tasks` file of each cgroup v1 hierarchy the child joins (and a
    /// cgroup2 `cgroup.procs` when CLONE_INTO_CGROUP is not used). The child writes "0" (itself)
    /// to each first thing, before its cgroup namespace. `cgroup_task_count` of them.
    const int *cgroup_task_fds;
    int cgroup_task_count;
    /// Silo's init on the host, bound read-only at /.silo/init inside (NULL: none).
    const char *init_binary;
    /// Clone flags beyond pid, mount, uts, ipc, net (for example CLONE_NEWUSER); 0 for none.
    unsigned long long extra_clone_flags;
    /// Nonzero: the child gets SIGKILL when the thread that started it dies (PR_SET_PDEATHSIG), so
    /// a `silo run` killed mid-run takes its system with it. That thread must wait for the child.
    int die_with_parent;
    /// Descriptors the program inherits as 3, 4, ... in this order (such as the agent's socket);
    /// every other descriptor is closed. `inherit_count` of them, at most 16.
    const int *inherit_fds;
    int inherit_count;
    /// Capabilities (bit n = capability n) the program keeps, in its bounding, permitted and
    /// effective sets; 0 drops every one. Silo's agent keeps SETUID, SETGID and SETPCAP to start
    /// processes as other users, and KILL to signal them; it drops them in each process it starts.
    unsigned long long keep_capabilities;
    /// Non-NULL: another thread of the caller works while the child builds its mounts (see
    /// struct silo_sandbox_gate), and the child waits for it before it joins the cgroups.
    struct silo_sandbox_gate *gate;
    /// A clone of the shared read-only root (silo_sandbox_template_clone) to attach at `root`
    /// instead of building one; -1 for none. Not with LUN mounts (their folders need a root of
    /// the system's own).
    int root_tree_fd;
};

/// Work done by another thread of the caller while the child mounts its root, on the other CPU:
/// the child's network namespace (about 0.35 ms to make here) and, on hosts where the child joins
/// every cgroup hierarchy itself (no cgroup2, so no CLONE_INTO_CGROUP), the cgroup (0.3 to 0.4 ms).
/// The child shares the caller's descriptor table until that thread is done (CLONE_FILES), then
/// takes a copy of its own: what the thread opened (the namespace, the `tasks` files) is in it.
struct silo_sandbox_gate {
    /// The thread writes one byte to pipe[1] once the fields below are final; the child reads pipe[0].
    int pipe[2];
    /// Set before the spawn: the thread makes the network namespace (the clone makes none).
    int makes_net;
    /// Nonzero: the thread failed with this errno, and the child gives up.
    int error;
    /// A fresh network namespace with lo up, for the child to enter; -1 for none.
    int net_fd;
    /// More `tasks` files for the child to join, opened by the thread. `task_count` of them.
    int task_fds[16];
    int task_count;
};

struct sock_filter;
/// The seccomp program every sandbox installs (classic BPF), made on first use; `*length`
/// instructions. For tests; silo_sandbox_spawn makes it before its child needs it.
const struct sock_filter *silo_sandbox_seccomp_program(unsigned short *length);

/// A clone of the shared read-only root for these binds, devices and init (see sandbox.c), to
/// pass as root_tree_fd and close after the spawn; else -errno: -ENOENT when there is none yet or
/// it is out of date (with `build`, it is made or remade for the next call, and -ENOENT or the
/// build's error is returned), -ENOTSUP when the kernel cannot make one.
int silo_sandbox_template_clone(const char *const *binds, const char *const *devices, const char *init, int build);

/// On the calling thread: unshares a network namespace, brings its lo up, returns a descriptor for
/// it and goes back to the thread's own namespace. -1 with errno on failure.
int silo_sandbox_make_netns(void);
/// Counts a start in this process; returns the count before it (0 for the first).
unsigned silo_sandbox_count_start(void);
/// The network namespace made ahead of time (with lo up) for the next sandbox, taken (the caller
/// closes it), or -1 when there is none.
int silo_sandbox_netns_take(void);
/// Makes one ahead of time for the next sandbox, unless there is one; on the calling thread.
void silo_sandbox_netns_refill(void);
/// Opens the gate: the child reads the fields (error, net_fd, task_fds) after this.
void silo_sandbox_gate_open(struct silo_sandbox_gate *gate);

struct silo_sandbox_failure {
    /// Which step failed: see silo_sandbox_step_name.
    int step;
    int error;
};

/// Starts the sandbox. Returns the child's pid (and a pidfd in *pidfd), or -1 with errno set. On
/// x86-64 the child shares the caller's memory until its exec (CLONE_VM | CLONE_VFORK), and the
/// calling thread waits until then, with every signal blocked; the child execs with none blocked.
pid_t silo_sandbox_spawn(const struct silo_sandbox_config *config, int *pidfd);

/// Makes a LUN's file system as a detached mount (fsopen, fsconfig, fsmount; Linux 5.2), nosuid
/// and nodev, read-only (the superblock, not only the mount) when asked: in the caller's context,
/// so the device is opened under the caller's device cgroup, not under the system's, which lets
/// its payload only read the node of a mounted LUN. Returns its descriptor (close-on-exec), or -1
/// with errno.
int silo_lun_mount_open(const char *device, const char *type, int read_only);

/// A block device given to (or taken from) a running system: its node inside, its number, and
/// optionally where its file system is mounted.
struct silo_attach_config {
    const char *device_path;  ///< such as /dev/loop3: the host's node, bound at that path inside when not mounted
    unsigned int major, minor;
    const char *mount_target;  ///< NULL: no mount
    const char *filesystem_type;
    int read_only;
};

/// Enters the mount namespace of `init_pid` in a forked child (setns needs a single thread) and
/// makes the device node and the mount there (`attach` 1), or unmounts and removes them (0).
/// `init_pidfd` is init's pidfd, opened by the caller before it checked that `init_pid` is still
/// the system's init (its start time), or -1 on a kernel without pidfds. A namespace that turns
/// out to be the caller's own is refused (EINVAL at the enter step).
/// Returns 0, or -1 with *failure set to the step and errno (steps of silo_sandbox_step_name).
int silo_sandbox_attach(pid_t init_pid, int init_pidfd, const struct silo_attach_config *config, int attach, struct silo_sandbox_failure *failure);

/// pidfd_open(pid, 0): a descriptor for the process, or -1 with errno (ENOSYS before Linux 5.3).
int silo_pidfd_open(pid_t pid);

/// A readable name for a failure's step.
const char *silo_sandbox_step_name(int step);

#endif
