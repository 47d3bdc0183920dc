#!/usr/bin/env bash
# Make sure the images' base, debian:bookworm-slim, is in the local Docker engine.
#
#   scripts/make-base-image.sh        # idempotent: does nothing when the tag is already there
#
# Order of attempts:
#   1. the tag is present locally: done;
#   2. `docker pull` (skipped with BASE_IMAGE_PULL=0; bounded by BASE_IMAGE_PULL_TIMEOUT_S, since a
#      registry that cannot be reached may hang rather than fail);
#   3. build it: `debootstrap --variant=minbase bookworm` from the Debian mirror that this machine's
#      apt uses (scripts/debian-mirror.sh reads /etc/apt/sources.list.d at run time), trimmed the way
#      Docker's official slim images are (no docs, man pages or apt caches), then `docker import`.
#      The root file system is cached as build/base/bookworm-minbase.tar, so a rerun takes seconds.
#
# Environment: BASE_IMAGE (default debian:bookworm-slim), BASE_CACHE_DIR (default build/base),
# BASE_IMAGE_PULL, BASE_IMAGE_PULL_TIMEOUT_S (default 30).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
BASE_IMAGE=${BASE_IMAGE:-debian:bookworm-slim}
BASE_CACHE_DIR=${BASE_CACHE_DIR:-$root/build/base}
BASE_IMAGE_PULL=${BASE_IMAGE_PULL:-1}
BASE_IMAGE_PULL_TIMEOUT_S=${BASE_IMAGE_PULL_TIMEOUT_S:-30}
suite=bookworm
tarball=$BASE_CACHE_DIR/$suite-minbase.tar

log() { echo "make-base-image: $*" >&2; }

have_image() { docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; }

# The parts of the official images' minimizing config that keep later `apt-get install` layers small.
write_slim_config() {
    local fs=$1
    mkdir -p "$fs/etc/dpkg/dpkg.cfg.d" "$fs/etc/apt/apt.conf.d"
    cat >"$fs/etc/dpkg/dpkg.cfg.d/docker" <<'EOF'
# Documentation, manuals and translations are of no use in an image.
path-exclude /usr/share/locale/*
path-exclude /usr/share/man/*
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
EOF
    cat >"$fs/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
    echo 'Acquire::Languages "none";' >"$fs/etc/apt/apt.conf.d/docker-no-languages"
    printf 'Acquire::GzipIndexes "true";\nAcquire::CompressionTypes::Order:: "gz";\n' \
        >"$fs/etc/apt/apt.conf.d/docker-gzip-indexes"
    echo 'APT::AutoRemove::SuggestsImportant "false";' >"$fs/etc/apt/apt.conf.d/docker-autoremove-suggests"
    # Services must not start during `apt-get install` in a build.
    printf '#!/bin/sh\nexit 101\n' >"$fs/usr/sbin/policy-rc.d"
    chmod 755 "$fs/usr/sbin/policy-rc.d"
}

# The image's apt points at the same mirror as this machine's, with updates and security when known.
write_sources() {
    local fs=$1 mirror=$2 security
    rm -f "$fs/etc/apt/sources.list"
    mkdir -p "$fs/etc/apt/sources.list.d"
    {
        printf 'Types: deb\nURIs: %s\nSuites: %s %s-updates\nComponents: main\n' "$mirror" "$suite" "$suite"
        if security=$("$here/debian-mirror.sh" "$suite-security" 2>/dev/null); then
            printf '\nTypes: deb\nURIs: %s\nSuites: %s-security\nComponents: main\n' "$security" "$suite"
        fi
    } >"$fs/etc/apt/sources.list.d/debian.sources"
}

make_rootfs_tarball() {
    local mirror keyring fs
    command -v debootstrap >/dev/null 2>&1 || {
        log "installing debootstrap"
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends debootstrap \
            || { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends debootstrap; }
    }
    mirror=$("$here/debian-mirror.sh" "$suite")
    keyring=$("$here/debian-mirror.sh" --keyring "$suite" || true)
    mkdir -p "$BASE_CACHE_DIR"
    fs=$(mktemp -d "$BASE_CACHE_DIR/rootfs.XXXXXX")
    # shellcheck disable=SC2064  # expand $fs now: the trap must remove this very folder
    trap "rm -rf '$fs'" EXIT
    log "debootstrap --variant=minbase $suite from $mirror"
    local args=(--variant=minbase)
    if [ -n "$keyring" ] && [ -f "$keyring" ]; then args+=("--keyring=$keyring"); fi
    debootstrap "${args[@]}" "$suite" "$fs" "$mirror" >"$BASE_CACHE_DIR/debootstrap.log" 2>&1 || {
        tail -n 30 "$BASE_CACHE_DIR/debootstrap.log" >&2
        return 1
    }
    write_slim_config "$fs"
    write_sources "$fs" "$mirror"
    # What debootstrap leaves behind: downloaded packages, package lists, the host's name and resolver,
    # documentation installed before the dpkg excludes existed. Docker provides hostname and resolv.conf.
    rm -rf "$fs"/var/cache/apt/archives/*.deb "$fs"/var/cache/apt/*.bin "$fs"/var/lib/apt/lists/* \
        "$fs"/var/log/* "$fs"/tmp/* "$fs"/etc/hostname "$fs"/usr/share/man/* "$fs"/usr/share/info/* \
        "$fs"/usr/share/locale/* "$fs"/usr/share/lintian/*
    find "$fs/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
    : >"$fs/etc/resolv.conf"
    mkdir -p "$fs/var/lib/apt/lists/partial"
    tar --numeric-owner --exclude='./dev/*' --exclude='./proc/*' --exclude='./sys/*' \
        -C "$fs" -cf "$tarball.tmp" .
    mv "$tarball.tmp" "$tarball"
    rm -rf "$fs"
    trap - EXIT
}

main() {
    "$here/ensure-docker.sh"
    if have_image; then
        return 0
    fi
    if [ "$BASE_IMAGE_PULL" = 1 ]; then
        log "trying docker pull $BASE_IMAGE"
        if timeout "$BASE_IMAGE_PULL_TIMEOUT_S" docker pull -q "$BASE_IMAGE" >/dev/null 2>&1; then
            return 0
        fi
        log "cannot pull $BASE_IMAGE: building it with debootstrap"
    fi
    # Two callers at once (make -j, parallel tests) build it once.
    mkdir -p "$BASE_CACHE_DIR"
    exec 9>"$BASE_CACHE_DIR/.lock"
    flock 9
    have_image && return 0
    if [ ! -s "$tarball" ]; then
        make_rootfs_tarball
    else
        log "reusing $tarball"
    fi
    docker import \
        --change 'CMD ["bash"]' \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --message "debootstrap --variant=minbase $suite (scripts/make-base-image.sh)" \
        "$tarball" "$BASE_IMAGE" >/dev/null
    log "imported $BASE_IMAGE ($(docker image inspect --format '{{.Size}}' "$BASE_IMAGE") bytes)"
}

main "$@"
