#!/usr/bin/env bash
# Build the Dockerfile and smoke-test the image against a real registry and PostgreSQL on the host.
#
#   bash .ci/image-smoke.sh            # as root; .ci/run calls it after the test suite
#
# This machine pulls no image from any registry, so the base image is made here: debootstrap a
# minimal Debian with python3 (from the host's own apt sources) and `docker import` it, cached as
# $BASE_TAG in the engine's storage. The Dockerfile is built on it with --build-arg BASE_IMAGE
# (its default stays the official Python slim image). pip inside the build may not reach the
# package index (another CA, no route), so the wheels are built on the host and served to the
# build on 127.0.0.1.
#
# Then, with a docker-registry and the PostgreSQL test cluster on the host:
#   db upgrade; scan exits 0 on a new release, 1 after the tag is overwritten; run turns healthy
#   (read-only root filesystem, /tmp a tmpfs, as in deploy/kubernetes/); the process is not root;
#   docker stop ends it with exit code 0 well before the SIGKILL; a daemon on another port than
#   9797 turns healthy too (the health check follows http.listen).
# Needs: root, Debian/Ubuntu (apt-get), docker-registry and .venv (scripts/test installs both).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$(pwd)"

BASE_TAG="${WATCHDOG_CI_BASE_IMAGE:-tag-watchdog-ci-base:bookworm}"
IMAGE="tag-watchdog:ci"
SUITE="${WATCHDOG_CI_SUITE:-bookworm}"
WORK="$(mktemp -d /tmp/image-smoke.XXXXXX)"
DOCKER_LOG="$WORK/dockerd.log"
STARTED_DOCKERD=""
PIDS=()
CONTAINERS=()

say() { echo "image-smoke: $*" >&2; }
fail() {
    say "FAILED: $*"
    exit 1
}

cleanup() {
    local rc=$?
    for c in "${CONTAINERS[@]}"; do docker rm -f "$c" >/dev/null 2>&1 || true; done
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    if [ -n "$STARTED_DOCKERD" ]; then
        kill "$STARTED_DOCKERD" 2>/dev/null || true
        wait "$STARTED_DOCKERD" 2>/dev/null || true
    fi
    if [ "$rc" != 0 ] && [ -f "$DOCKER_LOG" ]; then
        say "last lines of dockerd's log:"
        tail -n 20 "$DOCKER_LOG" >&2 || true
    fi
    [ -d "$WORK/rootfs" ] && unmount_rootfs "$WORK/rootfs"
    rm -rf --one-file-system "$WORK"
    exit "$rc"
}
trap cleanup EXIT

if [ "$(id -u)" != 0 ]; then
    fail "must run as root (it installs packages and starts dockerd)"
fi

# --- the engine ------------------------------------------------------------------------------------

need=()
command -v dockerd >/dev/null 2>&1 || need+=(docker.io)
command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
if [ ${#need[@]} -gt 0 ]; then
    say "installing ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

if ! docker info >/dev/null 2>&1; then
    say "starting dockerd"
    # No iptables and no bridge on these machines: builds and containers use the host's network.
    dockerd --iptables=false --bridge=none >"$DOCKER_LOG" 2>&1 &
    STARTED_DOCKERD=$!
    for _ in $(seq 1 60); do
        docker info >/dev/null 2>&1 && break
        kill -0 "$STARTED_DOCKERD" 2>/dev/null || fail "dockerd exited"
        sleep 1
    done
    docker info >/dev/null 2>&1 || fail "dockerd did not answer within 60 s"
fi

# --- the base image ----------------------------------------------------------------------------------

apt_mirror() {
    # The host's own Debian mirror: the first URIs/deb line of its apt sources.
    local uri=""
    if [ -f /etc/apt/sources.list.d/debian.sources ]; then
        uri="$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources)"
    fi
    if [ -z "$uri" ] && [ -f /etc/apt/sources.list ]; then
        uri="$(awk '$1 == "deb" && $2 !~ /^\[/ {print $2; exit} $1 == "deb" {print $3; exit}' /etc/apt/sources.list)"
    fi
    [ -n "$uri" ] || fail "no Debian mirror found in the host's apt sources"
    echo "$uri"
}

unmount_rootfs() {
    # debootstrap mounts /proc (and more) inside the tree; a failed run can leave them mounted.
    local m
    awk -v r="$1/" 'index($2, r) == 1 {print $2}' /proc/mounts | sort -r | while read -r m; do
        umount -l "$m" 2>/dev/null || true
    done
}

if docker image inspect "$BASE_TAG" >/dev/null 2>&1; then
    say "base image $BASE_TAG is cached"
else
    mirror="$(apt_mirror)"
    say "making base image $BASE_TAG: debootstrap $SUITE from the host's mirror"
    rootfs="$WORK/rootfs"
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
        "$SUITE" "$rootfs" "$mirror" >"$WORK/debootstrap.log" 2>&1 ||
        { tail -n 20 "$WORK/debootstrap.log" >&2; fail "debootstrap"; }
    unmount_rootfs "$rootfs"
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    tar -C "$rootfs" --one-file-system -c . | docker import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'CMD ["python3"]' - "$BASE_TAG" >/dev/null
    rm -rf --one-file-system "$rootfs"
fi
docker run --rm --network host "$BASE_TAG" python3 -c 'import venv, ssl' ||
    fail "base image $BASE_TAG has no usable python3"

if [ "${WATCHDOG_CI_BASE_ONLY:-}" = 1 ]; then
    say "base image ready"
    exit 0
fi

# --- the image -----------------------------------------------------------------------------------------

PY="$ROOT/.venv/bin/python"
[ -x "$PY" ] || fail ".venv is missing: run ./scripts/test first"

free_port() {
    "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

wait_http() {
    # wait_http URL SECONDS: until URL answers 200
    local deadline=$((SECONDS + $2))
    until "$PY" -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)' "$1" 2>/dev/null; do
        [ "$SECONDS" -lt "$deadline" ] || return 1
        sleep 1
    done
}

say "building wheels on the host (the build uses them instead of the package index)"
mkdir -p "$WORK/wheels"
{
    "$PY" -m pip wheel --quiet --disable-pip-version-check -w "$WORK/wheels" "$ROOT" &&
        # the build backend, for pip's isolated build of the project inside the image
        "$PY" -m pip download --quiet --disable-pip-version-check -d "$WORK/wheels" \
            'setuptools>=68' wheel
} >"$WORK/pip.log" 2>&1 || { grep -v "^WARNING: Location" "$WORK/pip.log" | tail -n 20 >&2; fail "pip wheel"; }
WHEEL_PORT="$(free_port)"
"$PY" -m http.server --bind 127.0.0.1 --directory "$WORK/wheels" "$WHEEL_PORT" >"$WORK/wheels.log" 2>&1 &
PIDS+=($!)
wait_http "http://127.0.0.1:$WHEEL_PORT/" 30 || fail "the wheel server did not start"

say "building $IMAGE on $BASE_TAG"
previous="$(docker image inspect -f '{{.Id}}' "$IMAGE" 2>/dev/null || true)"
DOCKER_BUILDKIT=0 docker build --network host --quiet \
    --build-arg BASE_IMAGE="$BASE_TAG" \
    --build-arg PIP_NO_INDEX=1 \
    --build-arg PIP_FIND_LINKS="http://127.0.0.1:$WHEEL_PORT/" \
    -t "$IMAGE" . >"$WORK/build.log" 2>&1 || { tail -n 30 "$WORK/build.log" >&2; fail "docker build"; }
# the previous CI image, when nothing else names it now: do not let one pile up per run
if [ -n "$previous" ] && [ "$previous" != "$(docker image inspect -f '{{.Id}}' "$IMAGE")" ] &&
    [ "$(docker image inspect -f '{{len .RepoTags}}' "$previous" 2>/dev/null)" = 0 ]; then
    docker rmi "$previous" >/dev/null 2>&1 || true
fi

# --- a registry and a database on the host ---------------------------------------------------------------

REGISTRY_PORT="$(free_port)"
mkdir -p "$WORK/registry"
cat >"$WORK/registry/config.yml" <<YAML
version: 0.1
log: {level: error, accesslog: {disabled: true}}
storage: {filesystem: {rootdirectory: $WORK/registry/storage}, delete: {enabled: true}}
http: {addr: 127.0.0.1:$REGISTRY_PORT, secret: image-smoke}
YAML
docker-registry serve "$WORK/registry/config.yml" >"$WORK/registry.log" 2>&1 &
PIDS+=($!)
wait_http "http://127.0.0.1:$REGISTRY_PORT/v2/" 30 || fail "docker-registry did not start"

TEST_PG_URL="$(bash .ci/postgres.sh | tail -n 1)"
DATABASE=watchdog_image_smoke
runuser -u postgres -- psql -X -q -v ON_ERROR_STOP=1 -d postgres -c "SET client_min_messages = warning" \
    -c "DROP DATABASE IF EXISTS $DATABASE" -c "CREATE DATABASE $DATABASE OWNER watchdog" >&2
DATABASE_URL="${TEST_PG_URL%/*}/$DATABASE"

push() {
    # push TAG SEED: a small single-platform image at $REGISTRY_PORT/smoke/server:TAG
    "$PY" - "$REGISTRY_PORT" "$1" "$2" <<'PYTHON'
import sys

from tests.support import images

port, tag, seed = sys.argv[1:]
with images.Pusher(f"http://127.0.0.1:{port}") as pusher:
    print(pusher.image("smoke/server", tag, seed=seed).digest)
PYTHON
}

# The first daemon listens on the default 127.0.0.1:9797 (host network); a second one, last,
# on another port.
if ! "$PY" -c 'import socket; socket.create_server(("127.0.0.1", 9797)).close()' 2>/dev/null; then
    fail "port 9797 is taken on this machine"
fi
cat >"$WORK/config.yaml" <<YAML
database_url: "\${WATCHDOG_DATABASE_URL}"
interval: 5s
jitter: 1s
http: {listen: "127.0.0.1:9797"}
watches:
  - repository: 127.0.0.1:$REGISTRY_PORT/smoke/server
YAML
chmod 0644 "$WORK/config.yaml"
chmod 0755 "$WORK"

# As deploy/kubernetes/ runs it: read-only root filesystem, /tmp the only writable place.
RUN_ARGS=(--network host --read-only --tmpfs /tmp
    -v "$WORK/config.yaml:/etc/tag-watchdog/config.yaml:ro"
    -e WATCHDOG_DATABASE_URL="$DATABASE_URL")

in_image() {
    # in_image EXPECTED_STATUS ARGS...: run a one-off command in the image, check its exit status
    local expected=$1 status=0
    shift
    docker run --rm "${RUN_ARGS[@]}" "$IMAGE" "$@" -c /etc/tag-watchdog/config.yaml \
        >"$WORK/out.txt" 2>&1 || status=$?
    if [ "$status" != "$expected" ]; then
        cat "$WORK/out.txt" >&2
        fail "tag-watchdog $* exited $status, expected $expected"
    fi
    say "tag-watchdog $*: exit $status as expected"
}

wait_healthy() {
    # wait_healthy CONTAINER: until the image's own health check says healthy
    local deadline=$((SECONDS + 90))
    until [ "$(docker inspect -f '{{.State.Health.Status}}' "$1")" = healthy ]; do
        if [ "$SECONDS" -ge "$deadline" ] || [ "$(docker inspect -f '{{.State.Running}}' "$1")" != true ]; then
            docker logs "$1" >&2 || true
            docker inspect -f '{{json .State.Health}}' "$1" >&2 || true
            fail "$1 did not turn healthy"
        fi
        sleep 1
    done
}

# --- the smoke test --------------------------------------------------------------------------------------

in_image 0 db upgrade
grep -q "upgraded (empty) ->" "$WORK/out.txt" || { cat "$WORK/out.txt" >&2; fail "db upgrade did not migrate"; }
in_image 0 db upgrade   # again: a no-op
grep -q "already at revision" "$WORK/out.txt" || { cat "$WORK/out.txt" >&2; fail "second db upgrade"; }

push 1.0.0 first >/dev/null
in_image 0 scan
push 1.0.0 overwritten >/dev/null      # the accidental re-release
in_image 1 scan
grep -q "1.0.0" "$WORK/out.txt" || { cat "$WORK/out.txt" >&2; fail "scan did not name the moved tag"; }

# SQLite in a named volume, the image's state directory (README: "Container image")
VOLUME="tag-watchdog-smoke-$$"
cat >"$WORK/sqlite.yaml" <<YAML
database_url: sqlite:////var/lib/tag-watchdog/watchdog.db
watches: [127.0.0.1:$REGISTRY_PORT/smoke/server]
YAML
chmod 0644 "$WORK/sqlite.yaml"
status=0
docker run --rm --network host --read-only --tmpfs /tmp -v "$VOLUME:/var/lib/tag-watchdog" \
    -v "$WORK/sqlite.yaml:/etc/tag-watchdog/config.yaml:ro" "$IMAGE" \
    scan -c /etc/tag-watchdog/config.yaml >"$WORK/out.txt" 2>&1 || status=$?
docker volume rm "$VOLUME" >/dev/null 2>&1 || true
[ "$status" = 0 ] || { cat "$WORK/out.txt" >&2; fail "scan on SQLite in a volume exited $status"; }
say "tag-watchdog scan on SQLite in a volume: exit 0 as expected"

say "starting the daemon"
NAME="tag-watchdog-smoke-$$"
CONTAINERS+=("$NAME")
# the image's own health check, asked every 2 s instead of every 30 s
docker run -d --name "$NAME" "${RUN_ARGS[@]}" --health-interval 2s --health-start-period 60s \
    "$IMAGE" >/dev/null
wait_healthy "$NAME"
say "healthy"
wait_http "http://127.0.0.1:9797/readyz" 60 || { docker logs "$NAME" >&2; fail "/readyz"; }
"$PY" -c 'import sys, urllib.request; body = urllib.request.urlopen(sys.argv[1]).read().decode(); assert "tag_watchdog_build_info" in body' \
    "http://127.0.0.1:9797/metrics" || fail "/metrics"
say "ready, metrics served"

uid="$(docker exec "$NAME" python -c 'import os; print(os.stat("/proc/1").st_uid)')"
[ "$uid" = 10001 ] || fail "the daemon runs as uid $uid, not 10001"
say "the daemon runs as uid $uid"

start=$SECONDS
docker stop -t 75 "$NAME" >/dev/null
took=$((SECONDS - start))
code="$(docker inspect -f '{{.State.ExitCode}}' "$NAME")"
docker logs "$NAME" >"$WORK/daemon.log" 2>&1
if [ "$code" != 0 ] || [ "$took" -ge 75 ]; then
    tail -n 20 "$WORK/daemon.log" >&2
    fail "docker stop: exit code $code after ${took}s (0, before the SIGKILL at 75 s, expected)"
fi
grep -q "stopped" "$WORK/daemon.log" || { tail -n 20 "$WORK/daemon.log" >&2; fail "no 'stopped' in the log"; }
say "docker stop: exit code 0 after ${took}s"

# The health check follows http.listen: a daemon on another port turns healthy too (it asked the
# fixed 127.0.0.1:9797 once, and such a daemon was "unhealthy" while it served).
OTHER_PORT="$(free_port)"
sed "s/127.0.0.1:9797/127.0.0.1:$OTHER_PORT/" "$WORK/config.yaml" >"$WORK/other-port.yaml"
grep -q "127.0.0.1:$OTHER_PORT" "$WORK/other-port.yaml" || fail "no listen address to change"
chmod 0644 "$WORK/other-port.yaml"
OTHER="tag-watchdog-smoke-port-$$"
CONTAINERS+=("$OTHER")
docker run -d --name "$OTHER" --network host --read-only --tmpfs /tmp \
    -v "$WORK/other-port.yaml:/etc/tag-watchdog/config.yaml:ro" \
    -e WATCHDOG_DATABASE_URL="$DATABASE_URL" \
    --health-interval 2s --health-start-period 60s "$IMAGE" >/dev/null
wait_healthy "$OTHER"
wait_http "http://127.0.0.1:$OTHER_PORT/readyz" 60 || { docker logs "$OTHER" >&2; fail "/readyz on $OTHER_PORT"; }
docker stop -t 75 "$OTHER" >/dev/null
say "a daemon on port $OTHER_PORT: healthy (the health check follows http.listen)"

say "OK: image $IMAGE built on $BASE_TAG and smoke-tested"
