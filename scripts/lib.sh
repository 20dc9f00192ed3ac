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

# Installs whichever of the given Debian packages are missing (needs root, as the tests do).
silo_install_packages() {
    local missing=()
    for package in "$@"; do
        dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" -ne 0 ]; then
        echo "error: missing Debian packages ${missing[*]}; run as root or: sudo apt-get install ${missing[*]}" >&2
        exit 1
    fi
    echo "installing ${missing[*]}" >&2
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}
