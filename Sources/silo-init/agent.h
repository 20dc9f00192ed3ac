#ifndef SILO_INIT_AGENT_H
#define SILO_INIT_AGENT_H
/// Serves the system's handles on fd 3 (listening socket) with the handles file as fd 4. Returns
/// only at a graceful shutdown (0) or when it cannot serve (127).
int silo_agent_main(int terminate_on_last_handle);
#endif
