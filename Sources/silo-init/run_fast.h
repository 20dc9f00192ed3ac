#ifndef SILO_INIT_RUN_FAST_H
#define SILO_INIT_RUN_FAST_H
/// Run mode on x86-64 (run_fast.c): pid 1 for the payload argv (argv[0] looked up as execvp
/// does), forwarding signals to its session and reaping orphans; exits with the payload's status.
/// Raw system calls only: it also runs before the C library has started.
__attribute__((noreturn)) void silo_init_run(char *const *argv, char *const *envp);
#endif
