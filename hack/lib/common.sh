# shellcheck shell=bash
# Shared helpers for hack/docker.sh, hack/images.sh and hack/kind.sh: progress lines with
# elapsed times, per-step logs, the project cache, the Go toolchain and its caches.
# Sourced, never run. Callers set TAG (the prefix of their progress lines) before sourcing.

KSG_CACHE=${KSG_CACHE:-$HOME/.cache/kube-secgroups}
HACK_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck disable=SC2034  # used by the scripts that source this
REPO_DIR=$(cd "$HACK_DIR/.." && pwd)
: "${TAG:=hack}"

_T0=${EPOCHREALTIME/./}
_ms() { local t=${EPOCHREALTIME/./}; echo $((t / 1000)); }
_secs() { printf '%d.%d' $(($1 / 1000)) $((($1 % 1000) / 100)); }   # ms -> "12.3"
log() { printf '[%s %6ss] %s\n' "$TAG" "$(_secs $(($(_ms) - _T0 / 1000)))" "$*"; }
die() { log "ERROR: $*" >&2; exit 1; }

# step NAME ... step_done [NOTE]: one line when a step starts, one with its time when it ends;
# every finished step is also kept for `summary` and appended to $LOG_DIR/timings.txt.
STEPS=()
_STEP=""; _STEP_T0=0
step() { _STEP=$1; _STEP_T0=$(_ms); log "── $1"; }
step_done() {
  local dt=$(($(_ms) - _STEP_T0))
  STEPS+=("$(printf '%-34s %7s s  %s' "$_STEP" "$(_secs $dt)" "${1:-}")")
  log "   $_STEP: $(_secs $dt) s${1:+ ($1)}"
}
summary() {
  [ ${#STEPS[@]} -gt 0 ] || return 0
  log "── times"
  printf '  %s\n' "${STEPS[@]}"
  log "total $(_secs $(($(_ms) - _T0 / 1000))) s"
  if [ -n "${LOG_DIR:-}" ]; then
    mkdir -p "$LOG_DIR"
    { echo "$(date -u +%FT%TZ) $TAG ${SUMMARY_WHAT:-}"; printf '  %s\n' "${STEPS[@]}"; } >>"$LOG_DIR/timings.txt"
  fi
}

# run_logged NAME CMD...: output to $LOG_DIR/NAME.log; on failure the log's tail and a clear error.
run_logged() {
  local name=$1; shift
  mkdir -p "$LOG_DIR"
  if ! "$@" >"$LOG_DIR/$name.log" 2>&1; then
    tail -n 40 "$LOG_DIR/$name.log" >&2
    die "$name failed (full log: $LOG_DIR/$name.log)"
  fi
}

need_root() { [ "$(id -u)" = 0 ] || die "$1 needs root (run with sudo)"; }

# apt_install PKG...: install the Debian packages that are missing. A temporary policy-rc.d keeps
# packaged daemons (docker, containerd) from starting: we start our own, with our own config.
apt_install() {
  local need=() p made=0
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || need+=("$p"); done
  [ ${#need[@]} -gt 0 ] || return 0
  need_root "installing ${need[*]}"
  log "apt-get install ${need[*]}"
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && made=1
  fi
  local rc=0
  { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}"; } \
    >"$LOG_DIR/apt-get.log" 2>&1 || rc=$?
  [ $made = 1 ] && rm -f /usr/sbin/policy-rc.d
  [ $rc = 0 ] || { tail -n 30 "$LOG_DIR/apt-get.log" >&2; die "apt-get install ${need[*]} failed (log $LOG_DIR/apt-get.log)"; }
}

# setup_go: a Go toolchain on PATH and the project's module and build caches (the same ones
# hack/build-binaries.sh fills, so its compiled packages are reused; Go's cache is safe for
# concurrent use, so we do not take its build.lock).
setup_go() {
  local d
  for d in /usr/local/go/bin /usr/lib/go/bin "$HOME/go/bin" "$HOME/.local/go/bin"; do
    if ! command -v go >/dev/null 2>&1 && [ -x "$d/go" ]; then PATH=$d:$PATH; fi
  done
  command -v go >/dev/null 2>&1 || die "no Go toolchain on PATH (need go >= 1.24)"
  export GOMODCACHE=$KSG_CACHE/go/mod GOCACHE=$KSG_CACHE/go/build GOFLAGS=-buildvcs=false
  export CGO_ENABLED=0 GOTOOLCHAIN=${GOTOOLCHAIN:-auto}
  mkdir -p "$GOMODCACHE" "$GOCACHE"
}

# hash16: the first 16 hex digits of the sha256 of stdin (content keys of cached artefacts).
hash16() { sha256sum | cut -c1-16; }
