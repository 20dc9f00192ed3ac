// The agent: silo-init's loop in a compute system that outlives one command (`--agent`). It
// serves the system's handles over the listening socket it inherits as fd 3 (protocol in
// silo_agent.h), starts processes for them with the stdio they pass, tells them when those exit,
// reaps every orphan, and ends the system when the last handle anywhere is gone
// (ShouldTerminateOnLastHandleClosed, C6): each handle holds a shared flock on the file that
// comes as fd 4, and a connection; when a connection closes, the agent tries that lock
// exclusively, and gets it only when no handle is left in any process.
#define _GNU_SOURCE
#include "agent.h"
#include "exec_search.h"

#include "silo_agent.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <linux/capability.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_CONNECTIONS 64
#define MAX_PROCESSES 1024
#define MAX_FDS 3
#define MAX_HELD SILO_AGENT_MAX_HELD

struct process {
    pid_t pid;          ///< 0: a free slot
    int running;
    int status;         ///< the wait status once exited
    int owner;          ///< the connection slot that spawned it, -1 once that closed
    uint64_t watchers;  ///< connection slots waiting for its exit
    uint64_t unsent;    ///< connection slots its exit is still to be sent to (their buffer was full)
    uint64_t exited_at; ///< order of exits, to evict the oldest exited entry first
};

static struct pollfd polls[2 + MAX_CONNECTIONS];  // signalfd, listener, connections
static struct process processes[MAX_PROCESSES];
static uint64_t exit_counter;
static int handles_fd = -1;
static int terminate_on_last_handle;
static int shutting_down;
static int last_handle_checks;  ///< retries left: a dead client's lock may drop just after its socket
static long long next_idle_check;  ///< when to try the handles lock next while no connection is live (ms, monotonic; 0: not due)
static int reserve_fd = -1;  ///< a descriptor kept to take (and refuse) a connection when none is left
static long long next_retry;  ///< when the next of last_handle_checks is due (ms, monotonic; 0: 20 ms from now)

static long long monotonic_ms(void) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (long long)now.tv_sec * 1000 + now.tv_nsec / 1000000;
}
static struct held { int fd; char tag[SILO_AGENT_MAX_TAG + 1]; } held[MAX_HELD];  ///< fd -1: free
static unsigned char packet[sizeof(struct silo_agent_header) + SILO_AGENT_MAX_PAYLOAD];

static int live_connections(void) {
    int count = 0;
    for (int i = 0; i < MAX_CONNECTIONS; i++) count += polls[2 + i].fd >= 0;
    return count;
}

static int running_processes(void) {
    int count = 0;
    for (int i = 0; i < MAX_PROCESSES; i++) count += processes[i].pid > 0 && processes[i].running;
    return count;
}

/// The entry of `pid`: the running one if there is one (an exited entry may hold a pid that came
/// round again), else the latest exited one.
static struct process *find_process(pid_t pid) {
    struct process *found = NULL;
    for (int i = 0; i < MAX_PROCESSES; i++) {
        if (processes[i].pid != pid) continue;
        if (processes[i].running) return &processes[i];
        if (!found || processes[i].exited_at > found->exited_at) found = &processes[i];
    }
    return found;
}

/// A slot for a new process: a free one, else the oldest exited one whose exit every connection
/// has been sent (a late watcher still gets the newer ones). NULL when none is left. The slot is
/// cleared by the caller once the process has started: a spawn that fails evicts nothing.
static struct process *new_process(void) {
    for (int i = 0; i < MAX_PROCESSES; i++) {
        if (processes[i].pid == 0) return &processes[i];
    }
    struct process *slot = NULL;
    for (int i = 0; i < MAX_PROCESSES; i++) {
        if (processes[i].running || processes[i].unsent) continue;
        if (!slot || processes[i].exited_at < slot->exited_at) slot = &processes[i];
    }
    return slot;
}

static void close_connection(int slot);

/// Sends one packet. An event is sent without waiting: when the client's buffer is full (it
/// reads only while it waits for something), this returns 1 and the caller keeps the event for
/// when the socket takes more (POLLOUT), rather than stall the agent behind that client or drop
/// its connection. A failure otherwise closes the connection. 0 when sent.
static int flush_exits(int slot, long long deadline);
static void set_send_timeout(int fd, long long ms);
/// How long a reply (the exits kept for its connection, then the reply itself) may wait for room
/// in its client's buffer, in all: a client that stopped reading (stopped, stuck) loses its
/// connection, and pid 1 goes on reaping and serving the others.
#define REPLY_WAIT_MS 2000

static int send_packet(int slot, uint16_t type, uint32_t id, const void *payload, uint32_t length, int event) {
    int fd = polls[2 + slot].fd;
    if (fd < 0) return 0;
    // A reply goes after the exits kept for this connection: its client reads now (it waits for
    // the reply), and the order it learns things in stays the order they happened in.
    int timeout_changed = 0;
    if (!event && (polls[2 + slot].events & POLLOUT)) {
        long long deadline = monotonic_ms() + REPLY_WAIT_MS;
        timeout_changed = flush_exits(slot, deadline);
        if (polls[2 + slot].fd < 0) return 0;
        if (timeout_changed) {
            // The reply itself gets what is left of the same 2 s.
            long long left = deadline - monotonic_ms();
            if (left <= 0) {
                close_connection(slot);
                return 0;
            }
            set_send_timeout(fd, left);
        }
    }
    struct silo_agent_header header = { SILO_AGENT_MAGIC, SILO_AGENT_VERSION, type, id, length };
    struct iovec parts[2] = { { &header, sizeof header }, { (void *)payload, length } };
    struct msghdr message = { .msg_iov = parts, .msg_iovlen = length ? 2 : 1 };
    ssize_t sent;
    do { sent = sendmsg(fd, &message, MSG_NOSIGNAL | (event ? MSG_DONTWAIT : 0)); } while (sent < 0 && errno == EINTR);
    if (timeout_changed && polls[2 + slot].fd >= 0) set_send_timeout(fd, REPLY_WAIT_MS);
    if (sent < 0 && event && (errno == EAGAIN || errno == EWOULDBLOCK)) return 1;
    if (sent < 0) close_connection(slot);
    return 0;
}

static void reply_error(int slot, uint32_t id, int error, int step) {
    struct silo_agent_error body = { error, step };
    send_packet(slot, SILO_AGENT_ERROR, id, &body, sizeof body, 0);
}

/// Tells connection `slot` that `process` exited; if its buffer is full, marks the exit unsent
/// and asks poll for room. Exits already waiting for that connection go first (`flush_exits`).
static void send_exit(int slot, struct process *process) {
    uint64_t bit = 1ull << slot;
    struct silo_agent_exited body = { process->pid, process->status };
    if (!(polls[2 + slot].events & POLLOUT) && send_packet(slot, SILO_AGENT_EXITED, 0, &body, sizeof body, 1) == 0) return;
    if (polls[2 + slot].fd < 0) return;
    process->unsent |= bit;
    polls[2 + slot].events |= POLLOUT;
}

/// Sends a connection's socket a send timeout of `ms` milliseconds.
static void set_send_timeout(int fd, long long ms) {
    struct timeval limit = { (time_t)(ms / 1000), (suseconds_t)(ms % 1000) * 1000 };
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &limit, sizeof limit);
}

/// Sends connection `slot` the exits kept for it, oldest first: until its buffer is full again,
/// or, with a `deadline` (monotonic ms; 0: none), waiting for room until then in all (a client
/// that waits for a reply reads; one that reads a packet just inside each send's own timeout would
/// otherwise hold pid 1 for up to 1,024 of them); past it the connection is hung up. Returns 1
/// when it left the socket's send timeout at what was left of the deadline.
static int flush_exits(int slot, long long deadline) {
    uint64_t bit = 1ull << slot;
    polls[2 + slot].events &= ~POLLOUT;  // no reply in between goes through here again
    int timeout_changed = 0;
    for (;;) {
        struct process *oldest = NULL;
        for (int i = 0; i < MAX_PROCESSES; i++) {
            if ((processes[i].unsent & bit) && (!oldest || processes[i].exited_at < oldest->exited_at)) oldest = &processes[i];
        }
        if (!oldest) break;
        if (deadline) {
            // Each send waits at most what is left.
            long long left = deadline - monotonic_ms();
            if (left <= 0) {
                close_connection(slot);
                return 0;
            }
            set_send_timeout(polls[2 + slot].fd, left);
            timeout_changed = 1;
        }
        struct silo_agent_exited body = { oldest->pid, oldest->status };
        if (send_packet(slot, SILO_AGENT_EXITED, 0, &body, sizeof body, !deadline) != 0) {
            polls[2 + slot].events |= POLLOUT;
            break;
        }
        if (polls[2 + slot].fd < 0) return 0;  // the send failed and closed it
        oldest->unsent &= ~bit;
    }
    return timeout_changed;
}

/// Before the agent ends: the exits still kept go out, each connection given half a second.
static void flush_all_exits(void) {
    for (int slot = 0; slot < MAX_CONNECTIONS; slot++) {
        if (polls[2 + slot].fd < 0 || !(polls[2 + slot].events & POLLOUT)) continue;
        flush_exits(slot, monotonic_ms() + 500);
    }
}

/// When a handle goes, the last one ends the system (if the document asked for that).
static void check_last_handle(void) {
    if (!terminate_on_last_handle || handles_fd < 0 || live_connections() > 0) {
        last_handle_checks = 0;
        return;
    }
    if (flock(handles_fd, LOCK_EX | LOCK_NB) != 0) {
        if (last_handle_checks > 0) last_handle_checks--;
        return;
    }
    // Say why the system ended where the host can read it, then end it: the kernel kills every
    // process of the pid namespace when its init exits.
    static const char reason[] = "terminated: last handle closed\n";
    (void)!pwrite(handles_fd, reason, sizeof reason - 1, 0);
    kill(-1, SIGKILL);
    _exit(0);
}

static void close_connection(int slot) {
    int fd = polls[2 + slot].fd;
    if (fd < 0) return;
    close(fd);
    polls[2 + slot].fd = -1;
    uint64_t bit = 1ull << slot;
    polls[2 + slot].events = POLLIN;
    for (int i = 0; i < MAX_PROCESSES; i++) {
        processes[i].watchers &= ~bit;
        processes[i].unsent &= ~bit;
        if (processes[i].owner == slot) processes[i].owner = -1;
    }
    last_handle_checks = 10;
    next_retry = 0;
    check_last_handle();
}

/// The agent may keep CAP_SETUID/SETGID (to start processes as another user), CAP_KILL (to signal
/// them) and CAP_SETPCAP (to drop those from the bounding set here); a process keeps none. The
/// bounding set goes first, while CAP_SETPCAP is still there: a switch to another user clears the
/// permitted set.
///
/// Only what the agent's own bounding set holds (read once at its start: a bounding set only
/// shrinks): four capabilities where the sandbox left it those, instead of one call for each of
/// the kernel's 41 in every process it starts.
static unsigned long long agent_bounding_set;

static void read_bounding_set(void) {
    for (int cap = 0; cap < 64; cap++) {
        int held = prctl(PR_CAPBSET_READ, cap, 0, 0, 0);
        if (held < 0) break;  // EINVAL: past the kernel's last capability
        if (held == 1) agent_bounding_set |= 1ULL << cap;
    }
}

/// 0, or -1 when a capability the agent holds could not be dropped: a process of uid 0 would
/// get it back at exec.
static int drop_bounding_set(void) {
    for (int cap = 0; cap < 64; cap++) {
        if ((agent_bounding_set & (1ULL << cap)) && prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 && errno != EINVAL) return -1;
    }
    return 0;
}

static int clear_capabilities(void) {
    struct __user_cap_header_struct header = { _LINUX_CAPABILITY_VERSION_3, 0 };
    struct __user_cap_data_struct data[2];
    memset(data, 0, sizeof data);
    return (int)syscall(SYS_capset, &header, data);
}

static __attribute__((noreturn)) void child_fail(int error_pipe, int step) {
    struct silo_agent_error failure = { errno, step };
    (void)!write(error_pipe, &failure, sizeof failure);
    _exit(127);
}

/// In the child: becomes the requested process. Never returns. It runs in a copy of the agent's
/// memory (see spawn: not a vfork).
static __attribute__((noreturn)) void become(const struct silo_agent_spawn_request *request, const char **argv,
                                             const char **envp, const int *fds, int error_pipe) {
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    if (setsid() < 0) child_fail(error_pipe, SILO_STEP_SESSION);
    // Every source goes above 2 first, so that no dup2 onto 0..2 overwrites a later source (not
    // higher: past a low descriptor limit, EINVAL).
    int sources[3];
    for (int i = 0; i < 3; i++) {
        int fd = fds[i] >= 0 ? fds[i] : open("/dev/null", O_RDWR | O_CLOEXEC);
        if (fd < 0 || (sources[i] = fcntl(fd, F_DUPFD_CLOEXEC, 3)) < 0) child_fail(error_pipe, SILO_STEP_STDIO);
    }
    int error_fd = fcntl(error_pipe, F_DUPFD_CLOEXEC, 3);
    if (error_fd < 0) child_fail(error_pipe, SILO_STEP_STDIO);
    error_pipe = error_fd;
    for (int i = 0; i < 3; i++) {
        if (dup2(sources[i], i) < 0) child_fail(error_pipe, SILO_STEP_STDIO);
    }
    // Nothing of the agent's leaks into the process: its socket, connections, the handles file.
    // close_range (Linux 5.9), else one by one up to the descriptor limit.
    if (syscall(SYS_close_range, 3, error_pipe - 1, 0) != 0 || syscall(SYS_close_range, error_pipe + 1, ~0U, 0) != 0) {
        struct rlimit limit;
        int top = getrlimit(RLIMIT_NOFILE, &limit) == 0 && limit.rlim_cur != RLIM_INFINITY && limit.rlim_cur < (1 << 20)
            ? (int)limit.rlim_cur : 1 << 20;
        for (int fd = 3; fd < top; fd++) if (fd != error_pipe) close(fd);
    }
    if ((request->fixed.flags & SILO_SPAWN_CONSOLE) && ioctl(0, TIOCSCTTY, 0) != 0) child_fail(error_pipe, SILO_STEP_TERMINAL);
    if (chdir(request->cwd) != 0) child_fail(error_pipe, SILO_STEP_DIRECTORY);
    if (drop_bounding_set() != 0) child_fail(error_pipe, SILO_STEP_CAPABILITIES);
    if (request->fixed.flags & SILO_SPAWN_USER) {
        if (setgroups(0, NULL) != 0 || setgid(request->fixed.gid) != 0 || setuid(request->fixed.uid) != 0) {
            child_fail(error_pipe, SILO_STEP_USER);
        }
    }
    if (clear_capabilities() != 0) child_fail(error_pipe, SILO_STEP_CAPABILITIES);
    // execvp's lookup, with the PATH of the process's own environment and without writing
    // `environ` (the agent's copy's: nothing of it is the process's).
    errno = (int)-silo_exec_search(silo_exec_libc, argv[0], (char *const *)argv, (char *const *)envp);
    child_fail(error_pipe, SILO_STEP_EXEC);
}

struct become_arguments {
    const struct silo_agent_spawn_request *request;
    const char **argv, **envp;
    const int *fds;
    int error_pipe[2];
};

static int become_entry(void *raw) {
    struct become_arguments *arguments = raw;
    close(arguments->error_pipe[0]);
    become(arguments->request, arguments->argv, arguments->envp, arguments->fds, arguments->error_pipe[1]);
}

/// The child's stack (in its own copy of this memory).
static char child_stack[64 * 1024] __attribute__((aligned(16)));

/// Whether `pid` is stopped (a 'T' or 't' state in /proc/<pid>/stat, after its name's last ')').
static int process_stopped(pid_t pid) {
    char path[64], text[512];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return 0;
    ssize_t n = read(fd, text, sizeof text - 1);
    close(fd);
    if (n <= 0) return 0;
    text[n] = 0;
    char *end = strrchr(text, ')');
    return end && end[1] == ' ' && (end[2] == 'T' || end[2] == 't');
}

/// How long a child may take to exec before it is killed: its steps are a handful of system calls
/// and a PATH search, so only a file system that hangs, or a stopped child, comes near it.
#define EXEC_DEADLINE_MS 20000  /* inside the 30 s a client waits for a reply */

/// How long after it was sent a request that starts, signals or holds is still carried out. The
/// agent serves one request at a time and a start may take up to its exec deadline, so a request
/// can wait behind others past the 30 s its client waits for the reply; the client has then given
/// up (closed the process's pipes, let a pause through), and the request is refused with ETIMEDOUT
/// instead of carried out behind its back. A start's exec deadline is cut to what is left of it.
#define REQUEST_DEADLINE_MS 25000

/// How long the request being served waited between its send and its read, in milliseconds.
static long long request_waited_ms;
/// When each connection was taken (monotonic ms), and how many bytes of packets were queued on it
/// then. A packet sent before its connection was taken (and its send time asked for) carries the
/// time it is read instead, and waited at least since the connection was taken; no packet waited
/// longer than its connection has been there (a wall clock set forward meanwhile).
static long long accepted_at[MAX_CONNECTIONS];
static long long queued_at_accept[MAX_CONNECTIONS];

static void accept_connection(void);

/// Waits for the child's exec (the end of its error pipe, which the exec closes) or its failure
/// report: the bytes read, 0 at the exec; -2 when it did not exec in time, and was killed. A
/// payload process may stop the child (it is uid 0, as the child is until it execs: a `kill(-1,
/// SIGSTOP)` in a loop reaches it), and the agent, pid 1, would wait for it serving nothing, its
/// handles, shutdown and last-handle check included. A child found stopped is continued.
static ssize_t wait_for_exec(pid_t pid, int pipe_fd, struct silo_agent_error *failure) {
    // New connections are taken meanwhile (not served): their requests then carry the time they
    // were sent, which one queued before its connection was taken would not.
    struct pollfd watch[2] = { { .fd = pipe_fd, .events = POLLIN }, { .fd = 3, .events = POLLIN } };
    long long left = REQUEST_DEADLINE_MS - request_waited_ms;
    long long deadline = monotonic_ms() + (left < EXEC_DEADLINE_MS ? left : EXEC_DEADLINE_MS);
    for (long long now = monotonic_ms(); now < deadline; now = monotonic_ms()) {
        int ready = poll(watch, 2, deadline - now < 100 ? (int)(deadline - now) : 100);
        if (ready > 0 && (watch[0].revents & (POLLIN | POLLHUP | POLLERR))) {
            ssize_t got;
            do { got = read(pipe_fd, failure, sizeof *failure); } while (got < 0 && errno == EINTR);
            return got;
        }
        if (ready > 0 && (watch[1].revents & POLLIN)) accept_connection();
        if (ready < 0 && errno != EINTR) break;
        if (process_stopped(pid)) kill(pid, SIGCONT);
    }
    // Reaped by reap() at its SIGCHLD, as an orphan is: a child in an uninterruptible sleep (an
    // exec reading a binary on a hung device) dies only when that ends, and pid 1 must not wait.
    kill(pid, SIGKILL);
    return -2;
}

static void spawn(int slot, uint32_t id, const unsigned char *payload, uint32_t length, int *fds, int fd_count) {
    static const char *argv[SILO_AGENT_MAX_STRINGS + 1], *envp[SILO_AGENT_MAX_STRINGS + 1];
    struct silo_agent_spawn_request request;
    int error = silo_agent_decode_spawn(payload, length, &request, argv, envp, SILO_AGENT_MAX_STRINGS + 1);
    if (error == 0 && (int)request.descriptors != fd_count) error = EBADF;
    if (error) return reply_error(slot, id, error, SILO_STEP_NONE);
    // The agent's own saved id (its processes would be its owner again), and no id at all.
    if ((request.fixed.flags & SILO_SPAWN_USER) && request.fixed.uid >= SILO_AGENT_SAVED_UID) {
        return reply_error(slot, id, EPERM, SILO_STEP_USER);
    }
    if (shutting_down) return reply_error(slot, id, ESHUTDOWN, SILO_STEP_NONE);
    // Too little of its time left for an exec to be likely: refused as late, not started and
    // killed at once (which would read as a failed exec).
    if (REQUEST_DEADLINE_MS - request_waited_ms < 1000) return reply_error(slot, id, ETIMEDOUT, SILO_STEP_NONE);
    struct process *process = new_process();
    if (!process) return reply_error(slot, id, EAGAIN, SILO_STEP_FORK);
    int stdio[3] = { -1, -1, -1 }, next = 0;
    for (int i = 0; i < 3; i++) {
        if (request.fixed.flags & (1u << i)) stdio[i] = fds[next++];
    }
    struct become_arguments arguments = { &request, argv, envp, stdio, { -1, -1 } };
    int *error_pipe = arguments.error_pipe;
    if (pipe2(error_pipe, O_CLOEXEC) != 0) return reply_error(slot, id, errno, SILO_STEP_FORK);
    // A copy of this memory (as fork), not a vfork (CLONE_VM | CLONE_VFORK, as posix_spawn does):
    // a vfork's parent waits in the kernel until the child execs, and a payload can stop the child
    // before that (see wait_for_exec). Nor CLONE_VM alone: the child would share this memory
    // while the agent goes on, and a payload's write to the child's oom_score_adj would reach
    // the agent's too (the kernel gives it to every process of a shared memory).
    pid_t pid = clone(become_entry, child_stack + sizeof child_stack, SIGCHLD, &arguments);
    int fork_error = errno;
    close(error_pipe[1]);
    if (pid < 0) {
        close(error_pipe[0]);
        return reply_error(slot, id, fork_error, SILO_STEP_FORK);
    }
    struct silo_agent_error failure;
    ssize_t got = wait_for_exec(pid, error_pipe[0], &failure);
    close(error_pipe[0]);
    if (got == -2) return reply_error(slot, id, ETIMEDOUT, SILO_STEP_EXEC);
    if (got == (ssize_t)sizeof failure) {
        // Killed, not waited for: it exits anyway, and a payload may have stopped it between its
        // report and its exit (a stopped process is never reaped by a plain waitpid). reap()
        // takes it at its SIGCHLD (see wait_for_exec).
        kill(pid, SIGKILL);
        return reply_error(slot, id, failure.error, failure.step);
    }
    memset(process, 0, sizeof *process);
    process->pid = pid;
    process->running = 1;
    process->owner = slot;
    int32_t body = pid;
    send_packet(slot, SILO_AGENT_OK, id, &body, sizeof body, 0);
}

static void list(int slot, uint32_t id) {
    static unsigned char body[SILO_AGENT_MAX_PAYLOAD];
    uint32_t count = 0;
    size_t offset = sizeof count;
    DIR *proc = opendir("/proc");
    struct dirent *entry;
    while (proc && (entry = readdir(proc))) {
        char *end;
        long pid = strtol(entry->d_name, &end, 10);
        if (*end || pid <= 0) continue;
        char path[64], command[256];
        snprintf(path, sizeof path, "/proc/%ld/cmdline", pid);
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        ssize_t n = fd >= 0 ? read(fd, command, sizeof command - 1) : -1;
        if (fd >= 0) close(fd);
        if (n < 0) n = 0;
        command[n] = 0;
        for (ssize_t i = 0; i + 1 < n; i++) if (command[i] == 0) command[i] = ' ';
        size_t size = strlen(command) + 1;
        if (offset + sizeof(int32_t) + size > sizeof body) break;
        int32_t value = (int32_t)pid;
        memcpy(body + offset, &value, sizeof value);
        memcpy(body + offset + sizeof value, command, size);
        offset += sizeof value + size;
        count++;
    }
    if (proc) closedir(proc);
    memcpy(body, &count, sizeof count);
    send_packet(slot, SILO_AGENT_OK, id, body, (uint32_t)offset, 0);
}

/// HOLD: keeps the descriptor (a lease) open under `tag`, replacing an older one of that tag.
static void hold(int slot, uint32_t id, const char *tag, int fd) {
    struct held *free_entry = NULL;
    for (int i = 0; i < MAX_HELD; i++) {
        if (held[i].fd >= 0 && strcmp(held[i].tag, tag) == 0) { close(held[i].fd); held[i].fd = -1; }
        if (held[i].fd < 0 && !free_entry) free_entry = &held[i];
    }
    if (!free_entry) { close(fd); return reply_error(slot, id, ENOSPC, SILO_STEP_NONE); }
    free_entry->fd = fd;
    strcpy(free_entry->tag, tag);
    send_packet(slot, SILO_AGENT_OK, id, NULL, 0, 0);
}

static void release(int slot, uint32_t id, const char *tag) {
    for (int i = 0; i < MAX_HELD; i++) {
        if (held[i].fd >= 0 && strcmp(held[i].tag, tag) == 0) {
            close(held[i].fd);
            held[i].fd = -1;
            send_packet(slot, SILO_AGENT_OK, id, NULL, 0, 0);
            return;
        }
    }
    reply_error(slot, id, ENOENT, SILO_STEP_NONE);
}

/// The connection slots a poll of the signals, the listener and every slot below can take: poll
/// refuses (EINVAL) more entries than the descriptor limit. MAX_CONNECTIONS unless the limit was
/// lowered under the agent.
static int connection_slots(void) {
    struct rlimit limit;
    if (getrlimit(RLIMIT_NOFILE, &limit) != 0 || limit.rlim_cur == RLIM_INFINITY || limit.rlim_cur >= 2 + MAX_CONNECTIONS) {
        return MAX_CONNECTIONS;
    }
    return limit.rlim_cur > 2 ? (int)limit.rlim_cur - 2 : 0;
}

/// A WATCH in either form: {pid} (the first) or {pid, flags}. Returns 0 or an errno.
static int decode_watch(const void *payload, size_t length, struct silo_agent_watch *watch) {
    watch->pid = 0;
    watch->flags = 0;
    if (length == sizeof watch->pid) return silo_agent_decode_fixed(payload, length, &watch->pid, sizeof watch->pid);
    int error = silo_agent_decode_fixed(payload, length, watch, sizeof *watch);
    if (error == 0 && (watch->flags & ~(uint32_t)SILO_WATCH_ALL_FLAGS)) error = EINVAL;
    return error;
}

/// Takes a connection waiting on the listener into a free slot, or refuses it.
static void accept_connection(void) {
    // The descriptor kept for refusing, taken again if a table full to the host's limit
    // (ENFILE) kept it from being reopened last time.
    if (reserve_fd < 0) reserve_fd = open("/", O_RDONLY | O_CLOEXEC);
    int fd = accept4(3, NULL, NULL, SOCK_CLOEXEC);
    if (fd < 0 && (errno == EMFILE || errno == ENFILE) && reserve_fd >= 0) {
        // No descriptor left for it: taken with the one kept for this, and refused, or
        // the listener stays readable and pid 1 spins on it.
        close(reserve_fd);
        reserve_fd = -1;  // its number may be the connection's next: never closed twice
        int refused = accept4(3, NULL, NULL, SOCK_CLOEXEC);
        if (refused >= 0) close(refused);
        reserve_fd = open("/", O_RDONLY | O_CLOEXEC);
    }
    int slot = -1;
    int fit = fd >= 0 ? connection_slots() : 0;
    for (int i = 0; fd >= 0 && i < fit && slot < 0; i++) {
        if (polls[2 + i].fd < 0) slot = i;
    }
    if (fd >= 0 && slot < 0) close(fd);  // more handles than the agent serves: refused
    if (slot >= 0) {
        set_send_timeout(fd, REPLY_WAIT_MS);  // see REPLY_WAIT_MS
        // Each request comes with the time it was sent (queued to this socket), which tells how
        // long it waited behind others (see REQUEST_DEADLINE_MS).
        int on = 1, queued = 0;
        setsockopt(fd, SOL_SOCKET, SO_TIMESTAMPNS, &on, sizeof on);
        accepted_at[slot] = monotonic_ms();
        queued_at_accept[slot] = ioctl(fd, FIONREAD, &queued) == 0 && queued > 0 ? queued : 0;
        polls[2 + slot].fd = fd;
        polls[2 + slot].revents = 0;  // a slot past the last poll's entries kept an older result
    }
}

static void serve(int slot) {
    int fd = polls[2 + slot].fd;
    // Room for one descriptor more than a request carries: one too many is seen, not cut off.
    union { struct cmsghdr align; char bytes[CMSG_SPACE(sizeof(int) * (MAX_FDS + 1)) + CMSG_SPACE(sizeof(struct timespec))]; } control;
    struct iovec part = { packet, sizeof packet };
    struct msghdr message = { .msg_iov = &part, .msg_iovlen = 1, .msg_control = control.bytes, .msg_controllen = sizeof control.bytes };
    ssize_t size;
    do { size = recvmsg(fd, &message, MSG_CMSG_CLOEXEC | MSG_DONTWAIT); } while (size < 0 && errno == EINTR);
    if (size < 0 && errno == EAGAIN) return;
    if (size < 0) return close_connection(slot);
    int fds[MAX_FDS], fd_count = 0, too_many = 0;
    // From its send time, at most as long as the connection has been taken; at least that long
    // for a packet that was queued before (its time is its read's).
    long long connected = monotonic_ms() - accepted_at[slot];
    request_waited_ms = 0;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&message); c; c = CMSG_NXTHDR(&message, c)) {
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_TIMESTAMPNS && c->cmsg_len == CMSG_LEN(sizeof(struct timespec))) {
            struct timespec sent, now;
            memcpy(&sent, CMSG_DATA(c), sizeof sent);
            clock_gettime(CLOCK_REALTIME, &now);
            long long waited = (long long)(now.tv_sec - sent.tv_sec) * 1000LL + (now.tv_nsec - sent.tv_nsec) / 1000000;
            if (waited < 0) waited = 0;  // the wall clock set back meanwhile: fresh
            request_waited_ms = waited < connected ? waited : connected;
            continue;
        }
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
        size_t n = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (size_t i = 0; i < n; i++) {
            int received;
            memcpy(&received, CMSG_DATA(c) + i * sizeof(int), sizeof received);
            if (fd_count < MAX_FDS) fds[fd_count++] = received; else { close(received); too_many = 1; }
        }
    }
    if (queued_at_accept[slot] > 0) {
        if (request_waited_ms < connected) request_waited_ms = connected;
        queued_at_accept[slot] -= size > 0 ? size : queued_at_accept[slot];
    }
    if (size == 0) {
        // The end of the connection, or an empty packet: either way descriptors that came with
        // it are not kept (a client sending empty packets with descriptors filled pid 1's table).
        for (int i = 0; i < fd_count; i++) close(fds[i]);
        return close_connection(slot);
    }
    struct silo_agent_header header;
    memset(&header, 0, sizeof header);
    int error = (message.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) || too_many ? EMSGSIZE
        : silo_agent_check_header(packet, (size_t)size, &header);
    const unsigned char *payload = packet + sizeof header;
    // The packet whole, and fewer descriptors than a request carries: the kernel could not give
    // the agent the ones sent (its table is full), not a client that sent too many (one more than
    // MAX_FDS fits the control buffer and is seen as too_many). Refused with EMFILE, and the
    // connection kept: a shortage for the while, no fault of the client.
    if ((message.msg_flags & MSG_CTRUNC) && !(message.msg_flags & MSG_TRUNC) && !too_many && fd_count < MAX_FDS
        && silo_agent_check_header(packet, (size_t)size, &header) == 0) {
        for (int i = 0; i < fd_count; i++) close(fds[i]);
        reply_error(slot, header.id, EMFILE, SILO_STEP_NONE);
        return;
    }
    if (error) {
        // A peer that does not speak this protocol, or a damaged packet: say so and hang up.
        reply_error(slot, header.id, error, SILO_STEP_NONE);
        close_connection(slot);
    } else if (request_waited_ms >= REQUEST_DEADLINE_MS
               && (header.type == SILO_AGENT_SPAWN || header.type == SILO_AGENT_SIGNAL || header.type == SILO_AGENT_HOLD)) {
        // Its client has given up on it (see REQUEST_DEADLINE_MS): not carried out (its
        // descriptors are closed below).
        reply_error(slot, header.id, ETIMEDOUT, SILO_STEP_NONE);
    } else if (header.type == SILO_AGENT_SPAWN) {
        spawn(slot, header.id, payload, header.length, fds, fd_count);
    } else if (header.type == SILO_AGENT_HOLD) {
        const char *tag;
        if ((error = silo_agent_decode_tag(payload, header.length, &tag)) || fd_count != 1) {
            reply_error(slot, header.id, error ? error : EBADF, SILO_STEP_NONE);
        } else {
            hold(slot, header.id, tag, fds[0]);
            fd_count = 0;  // kept
        }
    } else if (fd_count > 0) {
        reply_error(slot, header.id, EBADF, SILO_STEP_NONE);
    } else if (header.type == SILO_AGENT_HELLO) {
        struct silo_agent_hello_reply body = { SILO_AGENT_VERSION, (uint32_t)live_connections(), (uint32_t)running_processes(), 0 };
        send_packet(slot, SILO_AGENT_OK, header.id, &body, sizeof body, 0);
    } else if (header.type == SILO_AGENT_SIGNAL) {
        struct silo_agent_signal body;
        if ((error = silo_agent_decode_fixed(payload, header.length, &body, sizeof body))) {
            reply_error(slot, header.id, error, SILO_STEP_NONE);
        } else if (body.pid <= 1 || body.signal < 0 || body.signal > 64) {
            reply_error(slot, header.id, EINVAL, SILO_STEP_NONE);
        } else {
            struct process *process = find_process(body.pid);
            if (process && !process->running) reply_error(slot, header.id, ESRCH, SILO_STEP_NONE);
            else if (kill(body.pid, body.signal) != 0) reply_error(slot, header.id, errno, SILO_STEP_NONE);
            else send_packet(slot, SILO_AGENT_OK, header.id, NULL, 0, 0);
        }
    } else if (header.type == SILO_AGENT_WATCH) {
        struct silo_agent_watch watch;
        struct process *process = NULL;
        if ((error = decode_watch(payload, header.length, &watch))) {
            reply_error(slot, header.id, error, SILO_STEP_NONE);
        } else if (watch.pid <= 0 || !(process = find_process(watch.pid))) {
            reply_error(slot, header.id, ESRCH, SILO_STEP_NONE);
        } else if (watch.flags & SILO_WATCH_EXIT_IN_REPLY) {
            // The exit, if it came, is in the reply and nowhere after it: one this connection was
            // sent already and has not read yet, the client sees twice and keeps the first.
            if (process->running) {
                // Watched before the reply: a reply that fails closes the connection, which
                // clears this slot's bits (set after, it would outlive the connection and reach
                // the next one in the slot).
                process->watchers |= 1ull << slot;
                send_packet(slot, SILO_AGENT_OK, header.id, NULL, 0, 0);
            } else {
                process->unsent &= ~(1ull << slot);  // in the reply instead
                struct silo_agent_exited body = { process->pid, process->status };
                send_packet(slot, SILO_AGENT_OK, header.id, &body, sizeof body, 0);
            }
        } else {
            // An exit kept for this connection goes with the reply (send_packet flushes those):
            // sent again after it, the client would hold a second one for a pid that may be reused.
            int kept = (process->unsent & (1ull << slot)) != 0;
            if (process->running) process->watchers |= 1ull << slot;  // before the reply (above)
            send_packet(slot, SILO_AGENT_OK, header.id, NULL, 0, 0);
            if (!process->running && !kept) send_exit(slot, process);
        }
    } else if (header.type == SILO_AGENT_LIST) {
        list(slot, header.id);
    } else if (header.type == SILO_AGENT_RELEASE) {
        const char *tag;
        if ((error = silo_agent_decode_tag(payload, header.length, &tag))) reply_error(slot, header.id, error, SILO_STEP_NONE);
        else release(slot, header.id, tag);
    } else {
        reply_error(slot, header.id, EPROTO, SILO_STEP_NONE);  // a reply or an event sent to the agent
    }
    for (int i = 0; i < fd_count; i++) close(fds[i]);
}

static void reap(void) {
    for (;;) {
        int status;
        pid_t pid = waitpid(-1, &status, WNOHANG);
        if (pid <= 0) break;
        struct process *process = find_process(pid);
        if (!process || !process->running) continue;  // an orphan that came to init: just reaped
        process->running = 0;
        process->status = status;
        process->exited_at = ++exit_counter;
        if (process->owner >= 0) send_exit(process->owner, process);
        for (int slot = 0; slot < MAX_CONNECTIONS; slot++) {
            if ((process->watchers & (1ull << slot)) && slot != process->owner) send_exit(slot, process);
        }
        process->watchers = 0;
    }
}

int silo_agent_main(int terminate_flag) {
    prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
    // Not the owner of the processes it starts, for the checks that ask for the same user ids
    // (prlimit, as a ptrace): their exec makes their own saved id theirs again.
    if (setresuid((uid_t)-1, (uid_t)-1, SILO_AGENT_SAVED_UID) != 0) {
        fprintf(stderr, "silo-init: the agent cannot set its saved user id: %s\n", strerror(errno));
    }
    read_bounding_set();
    terminate_on_last_handle = terminate_flag;
    handles_fd = fcntl(4, F_GETFD) >= 0 ? 4 : -1;
    sigset_t all;
    sigfillset(&all);
    sigprocmask(SIG_BLOCK, &all, NULL);
    polls[0].fd = signalfd(-1, &all, SFD_CLOEXEC | SFD_NONBLOCK);
    polls[1].fd = 3;
    if (polls[0].fd < 0 || fcntl(3, F_SETFD, FD_CLOEXEC) != 0) {
        fprintf(stderr, "silo-init: the agent needs its socket as fd 3\n");
        return 127;
    }
    if (handles_fd >= 0) fcntl(handles_fd, F_SETFD, FD_CLOEXEC);
    reserve_fd = open("/", O_RDONLY | O_CLOEXEC);
    for (int i = 0; i < 2 + MAX_CONNECTIONS; i++) polls[i].events = POLLIN;
    for (int i = 0; i < MAX_HELD; i++) held[i].fd = -1;
    for (int i = 0; i < MAX_CONNECTIONS; i++) polls[2 + i].fd = -1;
    for (;;) {
        // A handle whose process never connected (it opened the system before it started) holds
        // the handles file's lock and nothing else: when its process dies no connection closes.
        // While the document asks to end with the last handle and no connection is live, the
        // lock is tried once a second as well.
        // A deadline, not a timeout restarted by every wake-up: orphans exiting more often than
        // once a second (each a SIGCHLD) would otherwise keep the check from ever running.
        // The retries after a connection closed keep a deadline too: a payload waking pid 1 more
        // often than every 20 ms (signals it sends to 1, orphans) would otherwise hold them off.
        if (last_handle_checks > 0) {
            long long now = monotonic_ms();
            if (next_retry == 0) next_retry = now + 20;
            if (now >= next_retry) {
                next_retry = now + 20;
                check_last_handle();
            }
        }
        int idle_check = terminate_on_last_handle && handles_fd >= 0 && live_connections() == 0;
        int timeout = -1;
        if (last_handle_checks > 0) {
            long long now = monotonic_ms();
            timeout = (int)(next_retry - now > 0 ? next_retry - now : 0);
        } else if (idle_check) {
            long long now = monotonic_ms();
            if (next_idle_check == 0) next_idle_check = now + 1000;
            if (now >= next_idle_check) {
                next_idle_check = now + 1000;
                check_last_handle();
            }
            timeout = (int)(next_idle_check - now > 0 ? next_idle_check - now : 0);
        } else {
            next_idle_check = 0;
        }
        // Only up to the last connection in use: poll refuses (EINVAL) more entries than the
        // descriptor limit, which the host's root may lower under a running agent.
        nfds_t watched = 2;
        for (int i = 0; i < MAX_CONNECTIONS; i++) {
            if (polls[2 + i].fd >= 0) watched = (nfds_t)(2 + i + 1);
        }
        int ready = poll(polls, watched, timeout);
        if (ready < 0 && errno == EINVAL) {
            // Still more than the limit: the soft limit back up to the hard one; where that is
            // refused or the hard one is lower too, the connections past it are hung up (new ones
            // are taken only in slots that fit, see connection_slots), so that pid 1 goes on
            // reaping and serving. Never an exit: pid 1 leaving ends the system.
            struct rlimit limit;
            int raised = 0;
            if (getrlimit(RLIMIT_NOFILE, &limit) == 0 && limit.rlim_cur < limit.rlim_max) {
                limit.rlim_cur = limit.rlim_max;
                raised = setrlimit(RLIMIT_NOFILE, &limit) == 0;
            }
            if (!raised) {
                int fit = connection_slots();
                for (int i = MAX_CONNECTIONS - 1; i >= fit; i--) {
                    if (polls[2 + i].fd >= 0) close_connection(i);
                }
                if (fit <= 0) {  // not even the signals and the listener: reap by polling
                    reap();
                    usleep(10000);
                }
            }
            continue;
        }
        if (ready < 0 && errno != EINTR) usleep(10000);  // ENOMEM: again, without spinning
        if (ready <= 0) continue;  // a deadline came (checked at the top), or EINTR
        if (polls[0].revents & POLLIN) {
            struct signalfd_siginfo info;
            // At most 64 at a time: every signal is blocked, so signals sent to pid 1 from inside
            // queue instead of being dropped, and a payload sending them as fast as they are read
            // would keep an unbounded loop here, and pid 1 from serving, for good.
            for (int drained = 0; drained < 64 && read(polls[0].fd, &info, sizeof info) == (ssize_t)sizeof info; drained++) {
                if (info.ssi_signo == SIGCHLD) {
                    reap();
                } else if ((info.ssi_signo == SIGTERM || info.ssi_signo == SIGINT) && info.ssi_pid == 0 && info.ssi_code == SI_USER) {
                    // From outside the system only (a kill whose sender's pid is 0 in this
                    // namespace; sigqueue and F_SETSIG can forge the pid, not SI_USER): a process
                    // inside may not shut the whole system down.
                    // A graceful shutdown (C5): every process is asked to end; the agent goes
                    // when none is left, and the host kills what stays past its grace period.
                    shutting_down = 1;
                    kill(-1, SIGTERM);
                    // A stopped process keeps the SIGTERM pending until it runs again: continued,
                    // so that it can end and the shutdown stays graceful (as shells and systemd do).
                    kill(-1, SIGCONT);
                }
            }
            siginfo_t child;
            if (shutting_down && waitid(P_ALL, 0, &child, WEXITED | WNOHANG | WNOWAIT) < 0 && errno == ECHILD) {
                flush_all_exits();
                return 0;
            }
        }
        if (polls[1].revents & POLLIN) accept_connection();
        for (int slot = 0; slot < MAX_CONNECTIONS; slot++) {
            short events = polls[2 + slot].revents;
            if (polls[2 + slot].fd < 0 || !events) continue;
            if ((events & POLLOUT) && polls[2 + slot].fd >= 0) flush_exits(slot, 0);
            if (polls[2 + slot].fd < 0) continue;
            if (events & POLLIN) serve(slot);
            else if (events & (POLLHUP | POLLERR | POLLNVAL)) close_connection(slot);
        }
    }
}
