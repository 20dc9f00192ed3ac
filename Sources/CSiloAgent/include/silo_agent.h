// The protocol between Silo's clients (one connection per ComputeSystem handle) and silo-init,
// the agent inside every compute system. Version 1.
//
// Transport: a SOCK_SEQPACKET Unix socket, so each message is one packet and file descriptors
// (a process's stdio) travel with it as SCM_RIGHTS. A packet is a header and a payload of at
// most SILO_AGENT_MAX_PAYLOAD bytes. Integers are in host order: both ends run on one host.
//
// Requests (client -> agent) carry an id the reply echoes; events (agent -> client) carry id 0.
//   HELLO                 -> OK {silo_agent_hello_reply}
//   SPAWN {silo_agent_spawn, strings: cwd, argv[argc], envp[envc]} + fds -> OK {int32 pid} | ERROR
//   SIGNAL {silo_agent_signal}                         -> OK | ERROR (ESRCH: no such process)
//   WATCH {silo_agent_watch} with SILO_WATCH_EXIT_IN_REPLY
//                         -> OK {} while it runs (EXITED comes at its exit) | OK {silo_agent_exited}
//                            once it has exited (no EXITED follows) | ERROR (ESRCH)
//   WATCH {int32 pid}     -> OK, then the EXITED event (at once if it exited already) | ERROR: the
//                            first form of WATCH, still served. An exit sent before, and still
//                            unread, came twice this way. An agent older than the other form
//                            refuses it (EBADMSG, the connection kept): clients fall back to this one.
//   LIST                  -> OK {uint32 count, then count x (int32 pid, NUL-terminated command)}
//   HOLD {tag} + 1 fd     -> OK: the agent keeps the descriptor open until RELEASE or its end (a
//                            LUN's lease: storage sees the LUN in use while the system runs)
//   RELEASE {tag}         -> OK | ERROR (ENOENT)
// Events: EXITED {silo_agent_exited}, to the spawning connection and to every watcher.
// The agent serves one request at a time. It reads the time each request was sent (SO_TIMESTAMPNS):
// a SPAWN, SIGNAL or HOLD it reads more than 25 s after is refused with ETIMEDOUT and not carried
// out (clients wait 30 s for a reply), and a SPAWN's exec deadline (20 s) is cut to what is left.
//
// Both sides decode with the functions below, which check every length and count and never
// read past the packet; anything malformed is refused whole.
#ifndef SILO_AGENT_H
#define SILO_AGENT_H

#include <stddef.h>
#include <stdint.h>

#define SILO_AGENT_MAGIC 0x4f4c4953u  /* "SILO" */
#define SILO_AGENT_VERSION 1
#define SILO_AGENT_MAX_PAYLOAD 65536
#define SILO_AGENT_MAX_STRINGS 4096
#define SILO_AGENT_MAX_TAG 255
/// The agent's saved user id (its real and effective ones stay 0): with it, a process inside
/// running as root no longer counts as the agent's owner, so without capabilities it cannot set
/// the agent's resource limits (prlimit: a descriptor or CPU limit that ended the system). No
/// process of a system may run as it (nor as 4294967295, which is no user id).
#define SILO_AGENT_SAVED_UID 4294967294u
/// Descriptors the agent holds at once (HOLD), each under its tag: LUN leases.
#define SILO_AGENT_MAX_HELD 64

enum silo_agent_type {
    SILO_AGENT_HELLO = 1,
    SILO_AGENT_SPAWN = 2,
    SILO_AGENT_SIGNAL = 3,
    SILO_AGENT_WATCH = 4,
    SILO_AGENT_LIST = 5,
    SILO_AGENT_HOLD = 6,
    SILO_AGENT_RELEASE = 7,
    SILO_AGENT_OK = 100,
    SILO_AGENT_ERROR = 101,
    SILO_AGENT_EXITED = 102,
};

/// SPAWN flags: which of stdin, stdout, stderr come as descriptors (in that order; the others are
/// /dev/null); CONSOLE: stdin is a terminal that becomes the process's controlling terminal.
enum silo_agent_spawn_flags {
    SILO_SPAWN_STDIN = 1 << 0,
    SILO_SPAWN_STDOUT = 1 << 1,
    SILO_SPAWN_STDERR = 1 << 2,
    SILO_SPAWN_CONSOLE = 1 << 3,
    SILO_SPAWN_USER = 1 << 4,
    SILO_SPAWN_ALL_FLAGS = (1 << 5) - 1,
};

struct silo_agent_header {
    uint32_t magic;
    uint16_t version;
    uint16_t type;
    uint32_t id;
    uint32_t length;  ///< payload bytes after the header: the packet's size less the header's
};

struct silo_agent_hello_reply {
    uint32_t version;
    uint32_t connections;  ///< live connections, this one included
    uint32_t processes;    ///< processes the agent started that still run
    uint32_t reserved;
};

struct silo_agent_spawn {
    uint32_t flags;
    uint32_t argc;  ///< at least 1
    uint32_t envc;
    uint32_t uid, gid;  ///< with SILO_SPAWN_USER
};

struct silo_agent_signal {
    int32_t pid;  ///< a process inside the system, never 1 (the agent) nor a group
    int32_t signal;
};

/// WATCH flags.
enum silo_agent_watch_flags {
    SILO_WATCH_EXIT_IN_REPLY = 1 << 0,  ///< the reply carries an exit that came already; none is sent after it
    SILO_WATCH_ALL_FLAGS = (1 << 1) - 1,
};

struct silo_agent_watch {
    int32_t pid;
    uint32_t flags;  ///< enum silo_agent_watch_flags
};
_Static_assert(sizeof(struct silo_agent_watch) == 8, "WATCH's second form is 8 bytes on the wire");

struct silo_agent_exited {
    int32_t pid;
    int32_t status;  ///< the wait status: exit code or terminating signal
};

struct silo_agent_error {
    int32_t error;  ///< an errno
    int32_t step;   ///< enum silo_agent_step: where a SPAWN failed; 0 elsewhere
};

enum silo_agent_step {
    SILO_STEP_NONE = 0, SILO_STEP_FORK, SILO_STEP_SESSION, SILO_STEP_TERMINAL, SILO_STEP_STDIO,
    SILO_STEP_DIRECTORY, SILO_STEP_USER, SILO_STEP_CAPABILITIES, SILO_STEP_EXEC,
};

/// A decoded SPAWN: pointers into the packet, which must outlive it.
struct silo_agent_spawn_request {
    struct silo_agent_spawn fixed;
    const char *cwd;
    unsigned descriptors;  ///< how many descriptors the flags promise
};

/// Checks a packet's header: magic, version, a known type, and that `length` is exactly the rest
/// of the packet. Returns 0, or an errno (EPROTO, EPROTONOSUPPORT, EBADMSG, EMSGSIZE).
int silo_agent_check_header(const void *packet, size_t size, struct silo_agent_header *header);

/// Decodes a SPAWN payload. `argv` and `envp` have room for `capacity` pointers each. Every string
/// must end with NUL inside the payload, and the payload must hold exactly cwd, argc arguments and
/// envc variables, each variable with a '=' not first. Returns 0 or EBADMSG / E2BIG / EINVAL.
int silo_agent_decode_spawn(const void *payload, size_t length, struct silo_agent_spawn_request *request,
                            const char **argv, const char **envp, size_t capacity);

/// Decodes a fixed-size payload (SIGNAL, WATCH, EXITED, ERROR, HELLO reply): exactly `size` bytes.
int silo_agent_decode_fixed(const void *payload, size_t length, void *out, size_t size);

/// Decodes a HOLD or RELEASE payload: one NUL-terminated tag of 1 to SILO_AGENT_MAX_TAG bytes that
/// ends the payload. Returns 0 or EBADMSG.
int silo_agent_decode_tag(const void *payload, size_t length, const char **tag);

/// Encodes a SPAWN payload into `buffer`; returns its length, or 0 when it does not fit.
size_t silo_agent_encode_spawn(void *buffer, size_t capacity, const struct silo_agent_spawn *fixed, const char *cwd,
                               const char *const *argv, const char *const *envp);

/// The name of a SPAWN step, for messages.
const char *silo_agent_step_name(int step);

#endif
