#!/usr/bin/env bash
# A stand-in for the NVIDIA driver's libcuda.so.1, for testing the GPU image on a machine without a GPU.
#
#   scripts/fetch-libcuda-standin.sh            # prints the path of libcuda.so.1 (build/libcuda-standin/)
#   scripts/fetch-libcuda-standin.sh --devices  # prints a folder of two: libcuda.so.1 reporting the GPUs
#                                               # LIBCUDA_STANDIN_DEVICES names, and the library above
#
# libmxnet.so of mxnet-cu112 links libcuda.so.1, which the NVIDIA container runtime mounts from the
# host on a GPU machine; without it `import mxnet` fails. The tests mount this file instead: Debian's
# real driver library (package libcuda1, non-free), which answers "no CUDA-capable device" where there
# is no GPU, as on a GPU-less host with the driver installed. (The CUDA toolkit's stub libcuda.so is
# no good: it answers "stub library", which MXNet's GPU count turns into an error.) Test-only: the
# image never contains it.
#
# With --devices, libcuda-devices-standin.c (beside this script) is compiled into devices/libcuda.so.1, which
# answers the device queries from LIBCUDA_STANDIN_DEVICES and hands everything else to Debian's library,
# copied beside it as libcuda-debian.so.1: a test mounts both into the image's library folder.
#
# The package comes from the Debian mirror this machine's apt uses (scripts/debian-mirror.sh), with
# non-free enabled in a private apt state under build/, so the machine's apt setup is left alone.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
dest=$root/build/libcuda-standin
out=$dest/libcuda.so.1

# The devices stand-in: a shared library whose dependency is named libcuda-debian.so.1 (linked against an
# empty library of that name, since the real one calls itself libcuda.so.1), found through $ORIGIN.
devices() {
    local real=$1 folder=$dest/devices src=$here/libcuda-devices-standin.c
    if [ -s "$folder/libcuda.so.1" ] && [ "$folder/libcuda.so.1" -nt "$src" ] && [ -s "$folder/libcuda-debian.so.1" ]; then
        echo "$folder"
        return
    fi
    if ! command -v cc >/dev/null; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q gcc libc6-dev >&2 \
            || { apt-get update -q >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q gcc libc6-dev >&2; }
    fi
    local tmp
    tmp=$(mktemp -d)
    mkdir -p "$folder"
    cc -shared -o "$tmp/libcuda-debian.so.1" -Wl,-soname,libcuda-debian.so.1 -x c /dev/null
    # shellcheck disable=SC2016  # $ORIGIN is the loader's, not the shell's: it must reach the linker as written
    cc -shared -fPIC -O2 -Wall -Werror -o "$tmp/libcuda.so.1" -Wl,-soname,libcuda.so.1 "$src" \
        -Wl,--no-as-needed -L"$tmp" -l:libcuda-debian.so.1 -Wl,-rpath,'$ORIGIN' -ldl
    cp "$real" "$folder/libcuda-debian.so.1"
    mv "$tmp/libcuda.so.1" "$folder/libcuda.so.1"
    rm -rf "$tmp"
    echo "$folder"
}

if [ -s "$out" ]; then
    if [ "${1:-}" = --devices ]; then devices "$out"; else echo "$out"; fi
    exit 0
fi

suite=bookworm
mirror=$("$here/debian-mirror.sh" "$suite")
keyring=$("$here/debian-mirror.sh" --keyring "$suite" || true)
state=$dest/apt
rm -rf "$state"
mkdir -p "$state/sources" "$state/lists/partial" "$state/cache/archives/partial" "$state/pkg"
{
    printf 'Types: deb\nURIs: %s\nSuites: %s\nComponents: non-free\n' "$mirror" "$suite"
    if [ -n "$keyring" ]; then printf 'Signed-By: %s\n' "$keyring"; fi
} >"$state/sources/non-free.sources"
apt_opts=(-o "Dir::Etc::SourceList=/dev/null" -o "Dir::Etc::SourceParts=$state/sources"
    -o "Dir::State::Lists=$state/lists" -o "Dir::Cache=$state/cache" -o "Debug::NoLocking=1")
apt-get "${apt_opts[@]}" -q update >"$state/update.log" 2>&1 || {
    cat "$state/update.log" >&2
    exit 1
}
(cd "$state/pkg" && apt-get "${apt_opts[@]}" -q download libcuda1 >"$state/download.log" 2>&1) || {
    cat "$state/download.log" >&2
    exit 1
}
dpkg-deb -x "$state"/pkg/libcuda1_*.deb "$state/root"
lib=$(find "$state/root" -name 'libcuda.so.*.*' -type f | head -n 1)
[ -n "$lib" ] || { echo "fetch-libcuda-standin: no libcuda.so in the libcuda1 package" >&2; exit 1; }
cp "$lib" "$out.tmp"
mv "$out.tmp" "$out"
rm -rf "$state"
if [ "${1:-}" = --devices ]; then devices "$out"; else echo "$out"; fi
