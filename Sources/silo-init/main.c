// silo-init: pid 1 of every compute system. It starts the payload, forwards the signals a
// supervisor sends, reaps every orphan, and exits with the payload's status (128 + signal when a
// signal ended it). Small and libc-only; it is made non-dumpable, so the payload cannot ptrace it.
//
// Usage: silo-init [--] PROGRAM ARGUMENTS...   run the payload, exit with its status
//        silo-init --agent [--terminate-on-last-handle]
//                                               serve the system's handles (agent.c): processes
//                                               come later, through them
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "agent.h"
#include "exec_search.h"
#include "run_fast.h"

int main(int argc, char **argv) {
    // Both modes end by signalling every process they can see (kill(-1, ...)): inside a system's
    // pid namespace that is the system; started by hand on the host, as root, it would be every
    // process of the host. So nothing runs unless this is pid 1 of its namespace.
    if (getpid() != 1) {
        fprintf(stderr, "silo-init: refusing to run as pid %d: it is pid 1 of a compute system's pid namespace, "
                        "started by Silo (silo run, silo system start)\n", (int)getpid());
        return 64;
    }
    int first = 1;
    if (first < argc && strcmp(argv[first], "--agent") == 0) {
        return silo_agent_main(first + 1 < argc && strcmp(argv[first + 1], "--terminate-on-last-handle") == 0);
    }
    if (first < argc && strcmp(argv[first], "--") == 0) first++;
    if (first >= argc) {
        fprintf(stderr, "silo-init: no program to run\n");
        return 127;
    }
#if defined(__x86_64__)
    // The code release builds reach from their entry point before the C library starts.
    silo_init_run(argv + first, environ);
#else
    static const int forwarded[] = { SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGWINCH, SIGCONT };
    prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);

    sigset_t all;
    sigfillset(&all);
    sigprocmask(SIG_BLOCK, &all, NULL);

    pid_t payload = fork();
    if (payload < 0) {
        perror("silo-init: fork");
        return 127;
    }
    if (payload == 0) {
        sigset_t none;  // the payload starts with nothing blocked, whatever init was started with
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        setsid();
        int error = (int)-silo_exec_search(silo_exec_libc, argv[first], argv + first, environ);
        fprintf(stderr, "silo-init: cannot run %s: %s\n", argv[first], strerror(error));
        _exit(error == ENOENT ? 127 : 126);  // as a shell says it: not found, or found and not runnable
    }

    int exit_code = 0;
    for (;;) {
        siginfo_t info;
        int signal = sigwaitinfo(&all, &info);
        if (signal < 0) continue;
        if (signal == SIGCHLD) {
            for (;;) {
                int status;
                pid_t pid = waitpid(-1, &status, WNOHANG);
                if (pid <= 0) break;
                if (pid == payload) {
                    exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
                    // The payload is gone: the system ends. The kernel kills what is left in the
                    // pid namespace when pid 1 exits.
                    return exit_code;
                }
            }
            continue;
        }
        for (size_t i = 0; i < sizeof forwarded / sizeof forwarded[0]; i++) {
            if (signal == forwarded[i]) {
                kill(-payload, signal);  // the payload's whole session
                break;
            }
        }
    }
#endif
}
