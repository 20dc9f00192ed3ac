# Shared by the scripts: find the Swift toolchain and install missing Debian packages.
# shellcheck shell=bash

# Debian packages the build, the tests and the demo need: the C libraries Silo links
# (libudev, libblkid, found with pkg-config), and the tools the tests use as independent
# references or to put file systems on LUNs (losetup, lsblk, blkid, mount, mkfs.ext4).
SILO_APT_PACKAGES=(pkg-config libudev-dev libblkid-dev util-linux mount e2fsprogs fdisk xfsprogs ${SILO_APT_PACKAGES_EXTRA:-})

silo_find_swift() {
    if ! command -v swift >/dev/null 2>&1 && [ -x /opt/swift/usr/bin/swift ]; then
        export PATH="/opt/swift/usr/bin:$PATH"
    fi
    if ! command -v swift >/dev/null 2>&1; then
        echo "error: no Swift toolchain: install Swift 6.1 or newer (https://swift.org/install) and put it on PATH" >&2
        exit 1
    fi
}

# Compiles every C file of the package for another architecture (aarch64: aarch64-linux-gnu),
# with the toolchain's clang and Debian's cross headers, to object files only: the C layer
# (system call numbers, the seccomp filter's architecture, init's entry point) must build there
# too, where no machine of ours can run it. Exits non-zero on the first error.
# Usage: silo_cross_compile_c TRIPLE
silo_cross_compile_c() {
    local triple="$1" clang out file
    # Beside the real swift, not a shim or link to it.
    clang="$(dirname "$(readlink -f "$(command -v swift)")")/clang"
    [ -x "$clang" ] || clang=$(command -v clang || true)
    [ -n "$clang" ] || { echo "error: no clang beside swift or on PATH to compile the C files for $triple" >&2; return 1; }
    out=$(mktemp -d /tmp/silo-cross.XXXXXX)
    # shellcheck disable=SC2064  # $out is expanded now, on purpose
    trap "rm -rf '$out'; trap - RETURN" RETURN
    for file in Sources/*/*.c; do
        # The cross headers first; the host's last, for libudev.h and blkid.h (the same everywhere).
        "$clang" --target="$triple" --sysroot="/usr/$triple" -isystem "/usr/$triple/include" -idirafter /usr/include \
            $(for dir in Sources/*/include; do printf -- '-I %s ' "$dir"; done) -I Sources/silo-init \
            -O2 -Werror=implicit-function-declaration -c -o "$out/$(basename "$file").o" "$file" \
            || { echo "error: $file does not compile for $triple" >&2; return 1; }
    done
    # silo-init's release builds link with -e silo_init_entry: without it the linker would start
    # init at the first byte of its text.
    if ! nm "$out/run_fast.c.o" | grep -q " T silo_init_entry$"; then
        echo "error: silo-init defines no silo_init_entry for $triple" >&2; return 1
    fi
    echo "every C file compiles for $triple ($(ls "$out" | wc -l) objects), and init has its entry point"
}

# Prints which of the given Debian packages are not installed, one per line.
silo_missing_packages() {
    local package
    for package in "$@"; do
        dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || echo "$package"
    done
}

# Installs whichever of the given Debian packages are missing (needs root, as the tests do).
silo_install_packages() {
    local missing=()
    mapfile -t missing < <(silo_missing_packages "$@")
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" -ne 0 ]; then
        echo "error: missing Debian packages ${missing[*]}; run as root or: sudo apt-get install ${missing[*]}" >&2
        exit 1
    fi
    echo "installing ${missing[*]}" >&2
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# Builds release products the way the demo and the benchmarks run them, into .build-static, linked
# for a short start (the CLI's start is most of a `silo lun list`):
# - the Swift runtime linked in (--static-swift-stdlib), and libstdc++ and libgcc, the runtime's
#   C++ library and unwinder, too: as shared libraries they cost the dynamic loader about 0.4 ms
#   of symbol binding at every start. The link names -lstdc++ itself, so a folder holding only
#   libstdc++.a, searched before the compiler's own (swiftc's -L comes first; -Xlinker -L would
#   come last), makes that name the archive; clang's -static-libgcc does the same for libgcc_s.
# - no $ORIGIN rpath (--disable-local-rpath): nothing is loaded from beside the binary, and the
#   loader would look there first for each of the libraries that remain (libudev, libblkid, libc).
# - not position-independent (-no-pie): the loader has none of the ~41,000 relative relocations
#   of a PIE this size to apply, and the pages they sit on stay shared, not copied: 277 page
#   faults instead of 371 and 0.2 ms less per start here (ASLR still places the stack, heap and
#   libraries; the executable's own image sits at its link address, as a static one does).
# - no exported symbols (--no-export-dynamic; the Swift driver exports every symbol of an
#   executable): the runtime's start-up asks dladdr where it was loaded from, and dladdr walks the
#   executable's whole dynamic symbol table, 4,467 entries here (0.13M instructions of every start);
#   nothing looks a symbol of silo up by name.
# - metadata of generic types reached through accessor calls, not mangled names
#   (-disable-concrete-type-metadata-mangled-name-accessors): by name, the runtime demangles the
#   type and checks each generic requirement by scanning every protocol conformance in the binary
#   (a first `[String: String]` costs a process 0.27M instructions); the accessors pass the witness
#   tables the compiler already knows. lun create 3.79M -> 2.99M instructions, delete 2.81M -> 2.14M.
# - not fully static (-static-executable): that saved 0.2 ms a start (no dynamic loader), but
#   libblkid opened with dlopen from a static program crashed when drives were probed several at
#   a time (116 segfaults in 200 `drive list --json` runs with an ext4 loop device present).
# Where libstdc++.a is missing (no libstdc++-dev), the link goes without it.
# Usage: silo_build_static PRODUCT...
silo_build_static() {
    local flags=() archive="" compiler libs="$PWD/.build-static/static-libs"
    local toolchain
    toolchain=$(dirname "$(readlink -f "$(command -v swift)")")
    # clang (or gcc) answers with the bare name when there is no libstdc++.a (no libstdc++-dev).
    for compiler in "$toolchain/clang" gcc; do
        archive=$("$compiler" -print-file-name=libstdc++.a 2>/dev/null) && break
    done
    if [ -f "$archive" ]; then
        mkdir -p "$libs"
        ln -sfn "$archive" "$libs/libstdc++.a"
        flags+=(-Xswiftc -L -Xswiftc "$libs" -Xswiftc -Xclang-linker -Xswiftc -static-libgcc)
    fi
    flags+=(-Xswiftc -Xclang-linker -Xswiftc -no-pie -Xlinker --no-export-dynamic)
    flags+=(-Xswiftc -Xfrontend -Xswiftc -disable-concrete-type-metadata-mangled-name-accessors)
    local product log
    log=$(mktemp)
    for product in "$@"; do
        # Quiet when it builds; the compiler's output, and a failure, when it does not.
        if ! swift build -c release --static-swift-stdlib --disable-local-rpath --scratch-path .build-static "${flags[@]}" \
            --product "$product" >"$log" 2>&1; then
            cat "$log" >&2
            rm -f "$log"
            echo "error: the release build of $product failed" >&2
            return 1
        fi
    done
    rm -f "$log"
}

# Side-by-side timings that a shared, noisy machine cannot tilt: hyperfine runs the commands in
# ROUNDS rounds, each round in a rotated order, so that no command always runs in the same slot
# of a load swing; a ratio is the median over rounds of silo's median over the peer's median.
# Usage: silo_rounds OUT ROUNDS RUNS NAME COMMAND [NAME COMMAND]...; the first NAME is silo's.
# Writes OUT.tsv (round, name, median seconds); silo_rounds_report OUT PEER... prints the ratios.
silo_rounds() {
    local out=$1 rounds=$2 runs=$3 names=() commands=() args r i
    shift 3
    while [ $# -gt 1 ]; do names+=("$1"); commands+=("$2"); shift 2; done
    : >"$out.tsv"
    for ((r = 0; r < rounds; r++)); do
        args=()
        for ((i = 0; i < ${#names[@]}; i++)); do
            local k=$(( (i + r) % ${#names[@]} ))
            args+=(-n "${names[k]}" "${commands[k]}")
        done
        hyperfine -N --warmup 3 --runs "$runs" --export-json "$out.$r.json" "${args[@]}" >/dev/null
        jq -r --arg r "$r" '.results[] | [$r, .command, .median] | @tsv' "$out.$r.json" >>"$out.tsv"
    done
}

# Prints, for each PEER, silo's and the peer's medians (ms, medians over the rounds) and the median
# and range of the per-round ratios silo/peer. The first name in OUT.tsv's rounds is silo's.
silo_rounds_report() {
    local out=$1 silo peer
    shift
    silo=$(head -n 1 "$out.tsv" | cut -f2)
    for peer in "$@"; do
        awk -F'\t' -v s="$silo" -v p="$peer" '
            function median(a, n,   i, j, t) {
                for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
                return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
            }
            $2 == s { sv[$1] = $3 } $2 == p { pv[$1] = $3 }
            END {
                n = 0
                for (r in sv) if (r in pv) { n++; S[n] = sv[r]; P[n] = pv[r]; R[n] = sv[r] / pv[r] }
                lo = R[1]; hi = R[1]
                for (i = 1; i <= n; i++) { if (R[i] < lo) lo = R[i]; if (R[i] > hi) hi = R[i] }
                printf "%s %.2f ms, %s %.2f ms, ratio %.2fx (rounds %.2f-%.2f)\n", s, median(S, n) * 1000, p, median(P, n) * 1000, median(R, n), lo, hi
            }' "$out.tsv"
    done
}
