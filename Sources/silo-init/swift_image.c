// silo-init has no Swift code, but swiftc links swiftrt.o into every executable, and its
// constructor registers the image with the Swift runtime. These two do-nothing definitions satisfy
// its references, so the linker takes nothing from libswiftCore (and through it libstdc++): init
// stays a small static C program that starts in about half the time. Weak: were the runtime
// linked in after all, its own definitions would win.
__attribute__((weak)) void swift_addNewDSOImage(const void *image) { (void)image; }
__attribute__((weak)) int _swift_backtrace_isThunkFunction(const char *name) { (void)name; return 0; }
