#!/usr/bin/env bash
# Build the image for linux/amd64 and push it to Amazon ECR, ready for a SageMaker Estimator.
# Run `./build_and_push.sh --help` for the options; the README's "Shipping" section shows examples.
#
# Why not the usual notebook snippet: `aws ecr get-login` is gone from AWS CLI v2 (this uses
# get-login-password), an image built on Apple Silicon fails on SageMaker with "exec format error"
# (this builds for linux/amd64), and `:latest` alone cannot be traced back to a commit (this tags
# VERSION-FLAVOUR from `git describe` plus FLAVOUR).
#
# Written for bash 3.2 too (macOS): hence ${array[@]+"${array[@]}"} for arrays that may be empty.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PLATFORM=linux/amd64

usage() {
    cat <<'EOF'
Usage: build_and_push.sh [cpu|gpu] [options]

Builds docker/Dockerfile.FLAVOUR (default flavour: cpu) for linux/amd64, creates the ECR
repository when it is missing, logs Docker in with `aws ecr get-login-password`, pushes the
tags VERSION-FLAVOUR and FLAVOUR, and prints the image URI (VERSION-FLAVOUR) on stdout.

Options:
  --region REGION      AWS region; default: $AWS_REGION, then $AWS_DEFAULT_REGION,
                       then `aws configure get region`
  --profile PROFILE    AWS CLI profile (same as AWS_PROFILE=PROFILE)
  --repository NAME    ECR repository name (default: $ECR_REPOSITORY or mxnet-byoc)
  --version VERSION    version tag (default: `git describe --tags --always --dirty`, or
                       the package version when this is no git checkout)
  --extra-ca FILE      a TLS-inspecting proxy's CA for pip during the build (builder stage
                       only, see docker/ca/README.md); default: $EXTRA_CA, else pip's own
                       CA setting ($PIP_CERT or `cert =` in /etc/pip.conf), as `make image-cpu`;
                       --extra-ca '' uses none
  --image IMAGE        push this already built local image instead of building one
  --dockerfile FILE    build FILE instead of docker/Dockerfile.FLAVOUR (then only
                       `docker build` runs: no base image or CA preparation)
  --context DIR        build context (default: this checkout's root)
  --registry HOST      push to HOST instead of ACCOUNT.dkr.ecr.REGION.amazonaws.com
                       (default: $ECR_REGISTRY); for a mirror or a test registry. The STS
                       and ECR calls are made all the same.
  --dry-run            print every command instead of running it; the output is a shell
                       script (no AWS call, no Docker command, no build)
  -h, --help           show this help

Needs: docker, the AWS CLI (v1 or v2) and credentials allowed to call sts:GetCallerIdentity
and the ECR actions in docs/iam-policy.json.
EOF
}

die() {
    echo "build_and_push.sh: error: $*" >&2
    exit 1
}

note() { echo "build_and_push.sh: $*" >&2; }

# --- options ------------------------------------------------------------------------------------

flavour=cpu
region=""
repository=${ECR_REPOSITORY:-mxnet-byoc}
version=""
# Unset and empty differ, as in the Makefile: EXTRA_CA= turns pip's CA default off.
if [ -n "${EXTRA_CA+set}" ]; then
    extra_ca=$EXTRA_CA
else
    extra_ca=${PIP_CERT:-$(sed -n 's/^[[:space:]]*cert[[:space:]]*=[[:space:]]*//p' /etc/pip.conf 2>/dev/null | head -n 1)}
fi
base_image=${BASE_IMAGE:-debian:bookworm-slim}
image=""
dockerfile=""
context=$ROOT
registry=${ECR_REGISTRY:-}
dry_run=0

need_value() {
    if [ "$#" -lt 2 ] || [ -z "$2" ]; then die "$1 needs a value (see --help)"; fi
}

while [ "$#" -gt 0 ]; do
    case "$1" in
        cpu | gpu) flavour=$1 ;;
        --region) need_value "$@"; region=$2; shift ;;
        --profile) need_value "$@"; export AWS_PROFILE=$2; shift ;;
        --repository) need_value "$@"; repository=$2; shift ;;
        --version) need_value "$@"; version=$2; shift ;;
        --extra-ca)
            [ "$#" -ge 2 ] || die "--extra-ca needs a value (see --help)"
            extra_ca=$2; shift ;;
        --image) need_value "$@"; image=$2; shift ;;
        --dockerfile) need_value "$@"; dockerfile=$2; shift ;;
        --context) need_value "$@"; context=$2; shift ;;
        --registry) need_value "$@"; registry=$2; shift ;;
        --dry-run) dry_run=1 ;;
        -h | --help) usage; exit 0 ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
    shift
done

# ECR's rules for repository names; checked here so a typo fails before any build.
[[ "$repository" =~ ^[a-z0-9]+([._-][a-z0-9]+)*(/[a-z0-9]+([._-][a-z0-9]+)*)*$ ]] ||
    die "'$repository' is no valid ECR repository name (lower-case letters, digits, '.', '_', '-', '/')"
if [ -n "$image" ] && [ -n "$dockerfile" ]; then
    die "--image pushes an existing image, --dockerfile builds one: give only one of them"
fi
if [ -z "$image" ]; then
    project_build=0
    if [ -z "$dockerfile" ]; then project_build=1; fi
    dockerfile=${dockerfile:-$ROOT/docker/Dockerfile.$flavour}
    [ -f "$dockerfile" ] || die "$dockerfile not found"
    [ -d "$context" ] || die "build context $context is no folder"
    if [ "$project_build" -eq 1 ] && [ -n "$extra_ca" ] && [ ! -f "$extra_ca" ]; then
        die "extra CA bundle '$extra_ca' not found"
    fi
fi

# --- the tools ----------------------------------------------------------------------------------

missing_tool() {
    # A dry run only prints, so a missing tool is worth a word but not a stop.
    if [ "$dry_run" -eq 1 ]; then note "warning: $1 (a real run would stop here)"; else die "$1"; fi
}

if ! command -v aws >/dev/null 2>&1; then
    missing_tool "the AWS CLI ('aws') is not on PATH: install it (https://aws.amazon.com/cli/) or use the one from pip (awscli)"
fi
if ! command -v docker >/dev/null 2>&1; then
    missing_tool "'docker' is not on PATH: install Docker"
elif [ "$dry_run" -eq 0 ] && ! docker info >/dev/null 2>&1; then
    die "docker is installed but no Docker engine answers (is the daemon running? may this user use it?)"
fi

# --- what gets pushed ---------------------------------------------------------------------------

if [ -z "$region" ]; then region=${AWS_REGION:-${AWS_DEFAULT_REGION:-}}; fi
if [ -z "$region" ] && command -v aws >/dev/null 2>&1; then
    # Reads the local AWS config only; no request leaves the machine.
    region=$(aws configure get region 2>/dev/null || true)
fi
[ -n "$region" ] || die "no AWS region: pass --region, set AWS_REGION or run 'aws configure set region REGION'"

if [ -z "$version" ]; then
    version=$(git -C "$ROOT" describe --tags --always --dirty 2>/dev/null || true)
    if [ -z "$version" ]; then
        version=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' "$ROOT/container/mxnet_byoc/__init__.py" 2>/dev/null || true)
        version=${version:-dev}
        note "no git history to describe: tagging version $version"
    fi
fi
# Docker tags: [A-Za-z0-9_.-], not starting with '.' or '-', at most 128 characters.
[[ "$version" =~ ^[A-Za-z0-9_][A-Za-z0-9_.-]{0,100}$ ]] || die "'$version' cannot be part of a Docker tag"
version_tag="$version-$flavour"

case "$(uname -m)" in
    x86_64 | amd64) arm=0 ;;
    *) arm=1 ;;
esac
buildx=0
if [ -z "$image" ] && command -v docker >/dev/null 2>&1 && docker buildx version >/dev/null 2>&1; then buildx=1; fi
if [ -z "$image" ] && [ "$arm" -eq 1 ]; then
    if [ "$buildx" -eq 0 ]; then
        die "this is a $(uname -m) machine and its Docker has no buildx: an image built here would not run on SageMaker (exec format error). Install docker buildx with QEMU emulation (docker run --privileged tonistiigi/binfmt --install amd64) or build on an x86_64 machine"
    fi
    note "this is a $(uname -m) machine: building linux/amd64 under emulation with buildx (slow, but the only image SageMaker runs)"
fi

# --- running or printing ------------------------------------------------------------------------

quote() {
    local out="" arg
    for arg in "$@"; do out+="${out:+ }$(printf '%q' "$arg")"; done
    printf '%s' "$out"
}

# Every command goes through here: printed (stdout in a dry run, stderr otherwise), then run.
run() {
    if [ "$dry_run" -eq 1 ]; then
        # The account is only known when the printed script runs: leave its variable unquoted.
        # shellcheck disable=SC2016  # "$account" is meant literally here
        { quote "$@"; echo; } | sed 's/\\\$account/"$account"/g'
    else
        echo "+ $(quote "$@")" >&2
        # stdout carries the image URI only, so `uri=$(./build_and_push.sh)` works.
        "$@" >&2
    fi
}

# --- 1. who we are: the account, and proof that the credentials work -----------------------------

if [ "$dry_run" -eq 1 ]; then
    echo "account=\$(aws sts get-caller-identity --query Account --output text)"
    # shellcheck disable=SC2016  # a placeholder, expanded by whoever runs the printed script
    account='$account'
else
    echo "+ aws sts get-caller-identity --query Account --output text" >&2
    errfile=$(mktemp)
    trap 'rm -f "$errfile"' EXIT
    if ! account=$(aws sts get-caller-identity --query Account --output text 2>"$errfile"); then
        die "AWS credentials are missing or not valid ('aws sts get-caller-identity' failed): $(cat "$errfile"). Configure them with 'aws configure', AWS_PROFILE or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY"
    fi
    [[ "$account" =~ ^[0-9]{12}$ ]] || die "'aws sts get-caller-identity' answered '$account', not a 12-digit account id"
fi

case "$region" in
    cn-*) suffix=amazonaws.com.cn ;;
    *) suffix=amazonaws.com ;;
esac
host=${registry:-$account.dkr.ecr.$region.$suffix}
uri_version="$host/$repository:$version_tag"
uri_flavour="$host/$repository:$flavour"

# --- 2. the repository -------------------------------------------------------------------------

if [ "$dry_run" -eq 1 ]; then
    echo "$(quote aws ecr describe-repositories --region "$region" --repository-names "$repository") >/dev/null 2>&1 ||"
    echo "  $(quote aws ecr create-repository --region "$region" --repository-name "$repository" \
        --image-scanning-configuration scanOnPush=true)"
else
    echo "+ $(quote aws ecr describe-repositories --region "$region" --repository-names "$repository")" >&2
    if ! err=$(aws ecr describe-repositories --region "$region" --repository-names "$repository" 2>&1 >/dev/null); then
        case "$err" in
            *RepositoryNotFoundException*)
                note "creating the ECR repository $repository in $region"
                run aws ecr create-repository --region "$region" --repository-name "$repository" \
                    --image-scanning-configuration scanOnPush=true
                ;;
            *) die "cannot look up the ECR repository $repository: $err" ;;
        esac
    fi
fi

# --- 3. login: get-login-password (AWS CLI v2 has no get-login) ----------------------------------

if [ "$dry_run" -eq 1 ]; then
    echo "$(quote aws ecr get-login-password --region "$region") |"
    echo "  docker login --username AWS --password-stdin \"$host\""
else
    echo "+ aws ecr get-login-password --region $region | docker login --username AWS --password-stdin $host" >&2
    aws ecr get-login-password --region "$region" | docker login --username AWS --password-stdin "$host" >&2 ||
        die "docker login to $host failed (see above)"
fi

# --- 4. the image -------------------------------------------------------------------------------

if [ -n "$image" ]; then
    if [ "$dry_run" -eq 0 ]; then
        arch=$(docker image inspect --format '{{.Os}}/{{.Architecture}}' "$image" 2>/dev/null) ||
            die "no local image '$image' (docker image inspect found nothing)"
        [ "$arch" = "$PLATFORM" ] ||
            die "image '$image' is $arch: SageMaker runs $PLATFORM only (exec format error otherwise)"
    fi
    run docker tag "$image" "$uri_version"
else
    # The same steps and build arguments as the Makefile's image targets, so both give the same image.
    build_args=(--build-arg "BASE_IMAGE=$base_image")
    if [ "$project_build" -eq 1 ]; then
        # Pulled, or made with debootstrap where no registry serves it (idempotent).
        run env "BASE_IMAGE=$base_image" "$ROOT/scripts/make-base-image.sh"
        run rm -f "$ROOT/docker/ca/extra-ca.pem"
        if [ -n "$extra_ca" ]; then run cp "$extra_ca" "$ROOT/docker/ca/extra-ca.pem"; fi
    fi
    if [ "$buildx" -eq 1 ]; then
        # --load: into the local engine, pushed below; --provenance=false: SageMaker rejects the
        # manifest list that provenance attestations turn a single image into.
        provenance=()
        if docker buildx build --help 2>/dev/null | grep -q -- --provenance; then provenance=(--provenance=false); fi
        run docker buildx build --platform "$PLATFORM" --load ${provenance[@]+"${provenance[@]}"} --network host \
            "${build_args[@]}" -f "$dockerfile" -t "$uri_version" "$context"
    else
        run docker build --network host "${build_args[@]}" -f "$dockerfile" -t "$uri_version" "$context"
    fi
fi
run docker tag "$uri_version" "$uri_flavour"

# --- 5. push ------------------------------------------------------------------------------------

run docker push "$uri_version"
run docker push "$uri_flavour"

if [ "$dry_run" -eq 0 ]; then note "pushed $uri_version (also tagged $flavour)"; fi
if [ "$dry_run" -eq 1 ]; then
    echo "echo \"$uri_version\""
else
    echo "$uri_version"
fi
