// execvp's lookup, once, for each place silo-init starts a program: run mode without the C
// library (run_fast.c), run mode with it (main.c, off x86-64) and the agent's process starts
// (agent.c, in a child that shares the agent's memory until it execs). It writes nothing but its
// own stack, calls no C library function (memcpy and the like are IFUNCs that run mode meets
// before glibc has relocated them), and takes the exec itself as a function that returns -errno:
// a raw system call in run mode, execve elsewhere.
//
// The lookup is glibc's: a name with a '/' is run as it is; any other is tried in each folder of
// the environment's PATH (glibc's default, /bin:/usr/bin, without one; an empty entry is the
// working directory), going on past a folder where it is not found (ENOENT, ENOTDIR, ESTALE,
// ENODEV, ETIMEDOUT) or not runnable (EACCES, remembered), and stopping at any other failure. A
// file the kernel cannot run (ENOEXEC: a script without #!) is run by /bin/sh, as execvp does.
//
// Define SILO_EXEC_ATTRIBUTES before including it to give the functions attributes of their own
// (run mode's: no stack protector, no builtins), and SILO_EXEC_WITHOUT_LIBC to leave out
// silo_exec_libc, the exec for code that runs with the C library.
#ifndef SILO_INIT_EXEC_SEARCH_H
#define SILO_INIT_EXEC_SEARCH_H

#include <errno.h>
#include <stddef.h>

#ifndef SILO_EXEC_ATTRIBUTES
#define SILO_EXEC_ATTRIBUTES
#endif

/// An exec: returns only when it failed, with -errno.
typedef long (*silo_exec_call)(const char *path, char *const *argv, char *const *envp);

/// The most arguments a script without #! is run with (its /bin/sh argument list is on the
/// caller's stack: 32 KiB at this count, on the 64 KiB stacks of the agent's and run mode's children).
#define SILO_EXEC_SCRIPT_ARGUMENTS 4096

/// execve, and /bin/sh FILE ARGS... when the kernel does not know the format. Returns -errno.
SILO_EXEC_ATTRIBUTES __attribute__((unused)) static long silo_exec_one(silo_exec_call exec, const char *path, char *const *argv, char *const *envp) {
    long error = exec(path, argv, envp);
    if (error != -ENOEXEC) return error;
    size_t count = 0;
    while (argv[count]) count++;
    if (count > SILO_EXEC_SCRIPT_ARGUMENTS) return error;
    const char *script[count + 2];
    script[0] = "/bin/sh";
    script[1] = path;
    for (size_t i = 1; i <= count; i++) script[i + 1] = argv[i];
    exec("/bin/sh", (char *const *)script, envp);
    return error;
}

/// execvp: returns only when nothing could be run, with -errno as execvp's errno would be:
/// -ENOENT when nothing was found (a shell's 127), another when something found could not be run (126).
SILO_EXEC_ATTRIBUTES __attribute__((unused)) static long silo_exec_search(silo_exec_call exec, const char *file, char *const *argv, char *const *envp) {
    if (!*file) return -ENOENT;
    for (const char *c = file; *c; c++) {
        if (*c == '/') return silo_exec_one(exec, file, argv, envp);
    }
    const char *path = "/bin:/usr/bin";
    for (char *const *e = envp; e && *e; e++) {
        const char *v = *e;
        if (v[0] == 'P' && v[1] == 'A' && v[2] == 'T' && v[3] == 'H' && v[4] == '=') {
            path = v + 5;
            break;
        }
    }
    size_t name = 0;
    while (file[name]) name++;
    int denied = 0;
    char buffer[4096];
    for (const char *p = path;; p++) {
        const char *end = p;
        while (*end && *end != ':') end++;
        size_t folder = (size_t)(end - p);
        if (folder + 1 + name + 1 <= sizeof buffer) {
            size_t at = 0;
            for (size_t i = 0; i < folder; i++) buffer[at++] = p[i];
            if (folder) buffer[at++] = '/';  // an empty entry: the name alone, in the working directory
            for (size_t i = 0; i <= name; i++) buffer[at++] = file[i];
            long error = silo_exec_one(exec, buffer, argv, envp);
            if (error == -EACCES) {
                denied = 1;
            } else if (error != -ENOENT && error != -ENOTDIR && error != -ESTALE
                       && error != -ENODEV && error != -ETIMEDOUT) {
                return error;
            }
        }
        if (!*end) break;
        p = end;
    }
    return denied ? -EACCES : -ENOENT;
}

#ifndef SILO_EXEC_WITHOUT_LIBC
#include <unistd.h>

/// The exec of code that runs with the C library: execve, its errno as -errno.
__attribute__((unused)) static long silo_exec_libc(const char *path, char *const *argv, char *const *envp) {
    execve(path, argv, envp);
    return -errno;
}
#endif

#endif
