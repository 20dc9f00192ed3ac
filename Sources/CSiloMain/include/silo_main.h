#ifndef SILO_MAIN_H
#define SILO_MAIN_H

/// Nothing to call: this target gives the `silo` executable its command line without the Swift
/// runtime reading /proc/self/maps at every start (see argv.c).
int silo_main_argument_count(void);

#endif
