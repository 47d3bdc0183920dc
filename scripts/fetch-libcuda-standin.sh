#!/usr/bin/env bash
# A stand-in for the NVIDIA driver's libcuda.so.1, for testing the GPU image on a machine without a GPU.
#
#   scripts/fetch-libcuda-standin.sh      # prints the path of libcuda.so.1 (build/libcuda-standin/)
#
# libmxnet.so of mxnet-cu112 links libcuda.so.1, which the NVIDIA container runtime mounts from the
# host on a GPU machine; without it `import mxnet` fails. The tests mount this file instead: Debian's
# real driver library (package libcuda1, non-free), which answers "no CUDA-capable device" where there
# is no GPU, as on a GPU-less host with the driver installed. (The CUDA toolkit's stub libcuda.so is
# no good: it answers "stub library", which MXNet's GPU count turns into an error.) Test-only: the
# image never contains it.
#
# The package comes from the Debian mirror this machine's apt uses (scripts/debian-mirror.sh), with
# non-free enabled in a private apt state under build/, so the machine's apt setup is left alone.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
dest=$root/build/libcuda-standin
out=$dest/libcuda.so.1
if [ -s "$out" ]; then
    echo "$out"
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
echo "$out"
