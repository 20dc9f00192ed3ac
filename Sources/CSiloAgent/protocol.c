// See silo_agent.h. Pure functions over bytes: shared by silo-init and SiloCompute, and fuzzed
// by the tests. Nothing here trusts a length or a count it has not checked against the packet.
#include "silo_agent.h"

#include <errno.h>
#include <string.h>

int silo_agent_check_header(const void *packet, size_t size, struct silo_agent_header *header) {
    if (size < sizeof *header) return EBADMSG;
    memcpy(header, packet, sizeof *header);
    if (header->magic != SILO_AGENT_MAGIC) return EPROTO;
    if (header->version != SILO_AGENT_VERSION) return EPROTONOSUPPORT;
    if (header->length > SILO_AGENT_MAX_PAYLOAD) return EMSGSIZE;
    if ((size_t)header->length != size - sizeof *header) return EBADMSG;
    switch (header->type) {
    case SILO_AGENT_HELLO: case SILO_AGENT_SPAWN: case SILO_AGENT_SIGNAL: case SILO_AGENT_WATCH:
    case SILO_AGENT_LIST: case SILO_AGENT_HOLD: case SILO_AGENT_RELEASE: case SILO_AGENT_OK: case SILO_AGENT_ERROR: case SILO_AGENT_EXITED:
        return 0;
    default:
        return EPROTO;
    }
}

int silo_agent_decode_fixed(const void *payload, size_t length, void *out, size_t size) {
    if (length != size) return EBADMSG;
    memcpy(out, payload, size);
    return 0;
}

/// The NUL-terminated string at *offset, which must end inside the payload; advances past it.
static const char *next_string(const char *bytes, size_t length, size_t *offset) {
    if (*offset >= length) return NULL;
    const char *start = bytes + *offset;
    const char *end = memchr(start, 0, length - *offset);
    if (!end) return NULL;
    *offset += (size_t)(end - start) + 1;
    return start;
}

int silo_agent_decode_spawn(const void *payload, size_t length, struct silo_agent_spawn_request *request,
                            const char **argv, const char **envp, size_t capacity) {
    if (length < sizeof request->fixed) return EBADMSG;
    memcpy(&request->fixed, payload, sizeof request->fixed);
    const struct silo_agent_spawn *fixed = &request->fixed;
    if (fixed->flags & ~(uint32_t)SILO_SPAWN_ALL_FLAGS) return EINVAL;
    if (fixed->argc < 1) return EINVAL;
    if (fixed->argc > SILO_AGENT_MAX_STRINGS || fixed->envc > SILO_AGENT_MAX_STRINGS) return E2BIG;
    if ((size_t)fixed->argc + 1 > capacity || (size_t)fixed->envc + 1 > capacity) return E2BIG;
    if ((fixed->flags & SILO_SPAWN_CONSOLE) && !(fixed->flags & SILO_SPAWN_STDIN)) return EINVAL;
    request->descriptors = !!(fixed->flags & SILO_SPAWN_STDIN) + !!(fixed->flags & SILO_SPAWN_STDOUT)
        + !!(fixed->flags & SILO_SPAWN_STDERR);

    const char *bytes = (const char *)payload;
    size_t offset = sizeof request->fixed;
    request->cwd = next_string(bytes, length, &offset);
    if (!request->cwd || request->cwd[0] != '/') return EBADMSG;
    for (uint32_t i = 0; i < fixed->argc; i++) {
        argv[i] = next_string(bytes, length, &offset);
        if (!argv[i]) return EBADMSG;
    }
    argv[fixed->argc] = NULL;
    if (argv[0][0] == 0) return EINVAL;
    for (uint32_t i = 0; i < fixed->envc; i++) {
        envp[i] = next_string(bytes, length, &offset);
        if (!envp[i]) return EBADMSG;
        const char *equals = strchr(envp[i], '=');
        if (!equals || equals == envp[i]) return EINVAL;
    }
    envp[fixed->envc] = NULL;
    if (offset != length) return EBADMSG;  // nothing may trail the last string
    return 0;
}

int silo_agent_decode_tag(const void *payload, size_t length, const char **tag) {
    if (length < 2 || length > SILO_AGENT_MAX_TAG + 1) return EBADMSG;
    const char *bytes = (const char *)payload;
    if (bytes[length - 1] != 0 || memchr(bytes, 0, length - 1) != NULL) return EBADMSG;
    *tag = bytes;
    return 0;
}

/// Appends `text` and its NUL; false when it does not fit.
static int put_string(char *buffer, size_t capacity, size_t *offset, const char *text) {
    size_t size = strlen(text) + 1;
    if (size > capacity - *offset) return 0;
    memcpy(buffer + *offset, text, size);
    *offset += size;
    return 1;
}

size_t silo_agent_encode_spawn(void *buffer, size_t capacity, const struct silo_agent_spawn *fixed, const char *cwd,
                               const char *const *argv, const char *const *envp) {
    if (capacity > SILO_AGENT_MAX_PAYLOAD) capacity = SILO_AGENT_MAX_PAYLOAD;
    if (capacity < sizeof *fixed) return 0;
    char *bytes = (char *)buffer;
    memcpy(bytes, fixed, sizeof *fixed);
    size_t offset = sizeof *fixed;
    if (!put_string(bytes, capacity, &offset, cwd)) return 0;
    for (uint32_t i = 0; i < fixed->argc; i++) {
        if (!argv[i] || !put_string(bytes, capacity, &offset, argv[i])) return 0;
    }
    for (uint32_t i = 0; i < fixed->envc; i++) {
        if (!envp[i] || !put_string(bytes, capacity, &offset, envp[i])) return 0;
    }
    return offset;
}

const char *silo_agent_step_name(int step) {
    switch (step) {
    case SILO_STEP_FORK: return "fork";
    case SILO_STEP_SESSION: return "start a session";
    case SILO_STEP_TERMINAL: return "take the console as controlling terminal";
    case SILO_STEP_STDIO: return "set up stdio";
    case SILO_STEP_DIRECTORY: return "change to the working directory";
    case SILO_STEP_USER: return "switch user";
    case SILO_STEP_CAPABILITIES: return "drop capabilities";
    case SILO_STEP_EXEC: return "exec";
    default: return "agent";
    }
}
