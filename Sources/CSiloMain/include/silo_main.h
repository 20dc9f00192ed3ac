#ifndef SILO_MAIN_H
#define SILO_MAIN_H

// Nothing to call: this target gives the `silo` executable its command line without the Swift
// runtime reading /proc/self/maps at every start (see argv.c). Its object is linked because the
// executable depends on the target; it defines what the runtime's argv object would.

#endif
