#!/usr/bin/env bash
# Make sure a Docker engine answers on this machine; install and start one when it does not.
#
# Idempotent and safe to call from several processes at once (tests, .ci/run, make, other scripts):
#   scripts/ensure-docker.sh          # returns 0 once `docker info` works
#
# What it does when `docker info` fails:
#   1. installs Debian's docker.io (dockerd, containerd, runc), iptables, docker-compose (SageMaker SDK
#      local mode) and debootstrap (scripts/make-base-image.sh) with apt-get, if missing;
#   2. starts dockerd in the background (there is no systemd here), logging to $DOCKERD_LOG;
#   3. polls `docker info` until the engine answers ($DOCKER_WAIT_S seconds at most).
#
# Firewall choice: dockerd runs with --iptables=false, so it never rewrites the host's firewall (with
# iptables on, dockerd sets the FORWARD policy to DROP and adds NAT chains on a machine it shares with
# others). Nothing we run needs Docker's NAT:
#   - our builds and container tests use `--network host`;
#   - SageMaker SDK local mode puts its containers on the user-defined bridge `sagemaker-local`
#     (created by docker-compose); they talk to each other over that bridge and the host reaches
#     published ports through docker-proxy, neither of which needs NAT. They cannot reach the internet,
#     which they must not anyway.
# One catch: when br_netfilter is active (net.bridge.bridge-nf-call-iptables=1, as on this machine),
# traffic between two containers on the same bridge still passes the FORWARD chain. If its policy is
# not ACCEPT (another engine, a previous dockerd with iptables on, a hardened host), containers on
# `sagemaker-local` cannot reach each other. The script then inserts one rule that accepts traffic
# from a user-defined Docker bridge to the same kind of bridge (`-i br-+ -o br-+`), once.
# `--bridge=none` skips the default docker0 bridge: nothing uses it, and it would add a 172.17/16 route.
#
# Environment: DOCKERD_LOG (default /var/log/dockerd.log), DOCKER_WAIT_S (default 90).
set -euo pipefail

DOCKERD_LOG=${DOCKERD_LOG:-/var/log/dockerd.log}
DOCKER_WAIT_S=${DOCKER_WAIT_S:-90}
LOCK=/run/ensure-docker.lock

log() { echo "ensure-docker: $*" >&2; }

engine_up() { docker info >/dev/null 2>&1; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo -n "$@"; fi
}

# docker.io's maintainer scripts try to start the service; without an init system that either fails or
# starts a dockerd with default (firewall-changing) options. policy-rc.d exit 101 forbids it for the
# duration of the install only.
apt_install() {
    local added_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' | as_root tee /usr/sbin/policy-rc.d >/dev/null
        as_root chmod 755 /usr/sbin/policy-rc.d
        added_policy=1
    fi
    local rc=0
    export DEBIAN_FRONTEND=noninteractive
    if ! as_root apt-get install -y --no-install-recommends "$@"; then
        # Fresh machines often have no package lists yet.
        as_root apt-get update && as_root apt-get install -y --no-install-recommends "$@" || rc=$?
    fi
    if [ "$added_policy" -eq 1 ]; then as_root rm -f /usr/sbin/policy-rc.d; fi
    return "$rc"
}

install_missing() {
    local missing=()
    command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
    command -v iptables >/dev/null 2>&1 || missing+=(iptables)
    command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
    command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
    if [ "${#missing[@]}" -gt 0 ]; then
        log "installing ${missing[*]}"
        apt_install "${missing[@]}"
    fi
}

allow_bridge_forwarding() {
    local policy
    policy=$(as_root iptables -S FORWARD 2>/dev/null | awk '$1 == "-P" {print $3}') || return 0
    if [ -n "$policy" ] && [ "$policy" != ACCEPT ]; then
        if ! as_root iptables -C FORWARD -i br-+ -o br-+ -j ACCEPT 2>/dev/null; then
            log "FORWARD policy is $policy: accepting traffic between containers on user-defined bridges"
            as_root iptables -I FORWARD -i br-+ -o br-+ -j ACCEPT
        fi
    fi
}

start_dockerd() {
    # dockerd writes its pid file early; a live one means a daemon is still starting up.
    if [ -s /var/run/docker.pid ] && as_root kill -0 "$(cat /var/run/docker.pid)" 2>/dev/null; then
        log "dockerd is already running (pid $(cat /var/run/docker.pid)); waiting for it"
        return 0
    fi
    log "starting dockerd (log: $DOCKERD_LOG)"
    # setsid: the daemon must outlive the caller's process group (make, pytest, a CI step).
    # shellcheck disable=SC2016  # $1 is expanded by the inner shell, on purpose
    as_root sh -c 'mkdir -p "$(dirname "$1")" && exec setsid dockerd --iptables=false --bridge=none \
        --host=unix:///var/run/docker.sock >>"$1" 2>&1 </dev/null' sh "$DOCKERD_LOG" &
}

wait_engine() {
    local deadline=$((SECONDS + DOCKER_WAIT_S))
    until engine_up; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            log "the Docker engine did not answer within ${DOCKER_WAIT_S}s; last lines of $DOCKERD_LOG:"
            tail -n 30 "$DOCKERD_LOG" >&2 || true
            return 1
        fi
        sleep 1
    done
}

main() {
    if engine_up; then
        allow_bridge_forwarding
        return 0
    fi
    # One caller installs and starts; the others wait for the lock, then find the engine up.
    exec 9>"$LOCK"
    flock 9
    if ! engine_up; then
        install_missing
        start_dockerd
        wait_engine
        log "Docker engine ready: $(docker version --format '{{.Server.Version}}')"
    fi
    allow_bridge_forwarding
}

main "$@"
