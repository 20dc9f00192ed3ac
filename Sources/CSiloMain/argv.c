// The command line for the `silo` executable, as the C library hands it to initializers.
//
// On Linux the Swift runtime finds argv for CommandLine.arguments with a static initializer
// (CommandLine.cpp's ArgvGrabber) that reads /proc/self/maps at every start to locate the stack,
// then walks back from `environ`: about 70 µs of each short CLI call here (the kernel printing
// every mapping's path, sscanf parsing each line). glibc passes argc and argv to every function
// in .init_array; this file keeps them and defines the two runtime entry points that
// CommandLine.cpp would, so a static link never pulls that object (or its initializer) in. A
// dynamically linked build has both; the runtime's own is used there, with the same result.

#include "silo_main.h"

static int saved_count;
static char **saved_arguments;
static char **override_arguments;
static int override_count;

static void save_arguments(int count, char **arguments, char **environment) {
    (void)environment;
    saved_count = count;
    saved_arguments = arguments;
}

__attribute__((section(".init_array"), used)) static void (*const save_arguments_entry)(int, char **, char **) = save_arguments;

// Both are declared SWIFT_CC(swift) in the runtime; with one pointer (and an int) and a pointer
// result, the Swift calling convention passes and returns them as C does.
__attribute__((swiftcall, visibility("default")))
void _swift_stdlib_overrideUnsafeArgvArgc(char **arguments, int count) {
    override_arguments = arguments;
    override_count = count;
}

__attribute__((swiftcall, visibility("default")))
char **_swift_stdlib_getUnsafeArgvArgc(int *count) {
    static char *none[] = { 0 };
    if (override_arguments) {
        *count = override_count;
        return override_arguments;
    }
    *count = saved_arguments ? saved_count : 0;
    return saved_arguments ? saved_arguments : none;
}
