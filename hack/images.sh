#!/usr/bin/env bash
# Build the operator, agent and probe images (images/Dockerfile) with the Docker engine.
#
#   hack/images.sh [build] [operator|agent|probe ...]   build (default: all three)
#   hack/images.sh names                                  the image references kind loads
#
# Each image is tagged kube-secgroups/<target>:<version> (the chart's default tag, the project's
# version) and kube-secgroups/<target>:<version>-<inputs>, where <inputs> is a hash of everything
# the build reads: the Dockerfile, the locks, the build context (.dockerignore's rules) and the
# base image. An image labelled with the same hash already exists -> nothing is built.
#
# The base: KSG_IMAGE_BASE if set; with our own dockerd (no registry: this machine class, CI) the
# debootstrap image of hack/lib/debian.sh; otherwise the Dockerfile's pinned default. apt and pip
# reach their registries through the host's network (--network host; our dockerd does no NAT).
#
# Environment: KSG_IMAGES_REV=<commit> builds from that commit instead of the work tree;
# KSG_IMAGE_BASE; KSG_BUILD_CA_FILE (extra CAs for pip, see build_ca_certs); KSG_REFRESH_BASE=1.
set -euo pipefail
# shellcheck disable=SC2034  # read by lib/common.sh
TAG=images
# shellcheck source=lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
# shellcheck source=lib/debian.sh
source "$HACK_DIR/lib/debian.sh"
LOG_DIR=$KSG_CACHE/images/logs
TARGETS=(operator agent probe)
REPO=kube-secgroups
VERSION=$(sed -n 's/^version *= *"\(.*\)"/\1/p' "$REPO_DIR/pyproject.toml" | head -n 1)
export DOCKER_BUILDKIT=0   # Debian's dockerd 20.10: no buildx; the legacy builder honours --network host

names() { local t; for t in "${TARGETS[@]}"; do echo "$REPO/$t:$VERSION"; done; }

# The build context, snapshotted once for all three builds (other work may edit the tree
# meanwhile): git's view of the work tree (tracked + untracked, not ignored), or of the commit
# KSG_IMAGES_REV (e.g. HEAD), minus .dockerignore's entries, as a tar. Prints the hash of its contents; the tar is $CTX_TAR.
CTX_TAR=$KSG_CACHE/images/context.tar
snapshot_context() {
  mkdir -p "${CTX_TAR%/*}"
  (cd "$REPO_DIR" && python3 - "$CTX_TAR" <<'PY'
import fnmatch, hashlib, io, os, subprocess, sys, tarfile
rev = os.environ.get("KSG_IMAGES_REV", "")
def git(*a):
    return subprocess.run(["git", *a], check=True, capture_output=True).stdout
if rev:  # a commit instead of the work tree: every file from one `git archive`
    with tarfile.open(fileobj=io.BytesIO(git("archive", "--format=tar", rev))) as arc:
        blobs = {m.name: arc.extractfile(m).read() for m in arc.getmembers() if m.isfile()}
    files = list(blobs)
else:
    files = git("ls-files", "-co", "--exclude-standard", "-z").decode().split("\0")
def read(f):
    if rev:
        return blobs[f]
    with open(f, "rb") as fh:
        return fh.read()
pats = [l.strip() for l in read(".dockerignore").decode().splitlines() if l.strip() and not l.startswith("#")]
deny = [p for p in pats if not p.startswith("!")]
allow = [p[1:] for p in pats if p.startswith("!")]
def hit(parts, p):  # the path, one of its leading dirs, or (**/x) any component matches
    if p.startswith("**/"):
        return any(fnmatch.fnmatch(c, p[3:]) for c in parts)
    return any(fnmatch.fnmatch("/".join(parts[:i]), p) for i in range(1, len(parts) + 1))
h = hashlib.sha256()
with tarfile.open(sys.argv[1] + ".tmp", "w") as tar:
    for f in sorted(set(x for x in files if x) | {"images/Dockerfile", ".dockerignore"}):
        parts = f.split("/")
        keep = f in ("images/Dockerfile", ".dockerignore") or any(fnmatch.fnmatch(f, p) for p in allow)
        if not keep and any(hit(parts, p) for p in deny):
            continue
        try:
            data = read(f)
        except (FileNotFoundError, IsADirectoryError, KeyError):  # deleted in the work tree, submodule
            continue
        h.update(f.encode() + b"\0" + hashlib.sha256(data).digest())
        info = tarfile.TarInfo(f)
        info.size, info.mode, info.mtime = len(data), 0o644, 0
        tar.addfile(info, io.BytesIO(data))
print(h.hexdigest()[:16])
PY
  ) && mv "$CTX_TAR.tmp" "$CTX_TAR"
}

# CAs this host trusts beyond Debian's set (e.g. a TLS-intercepting proxy's), for pip in the
# build stage: KSG_BUILD_CA_FILE, or the certificates in /usr/local/share/ca-certificates
build_ca_certs() {
  if [ -n "${KSG_BUILD_CA_FILE:-}" ]; then cat "$KSG_BUILD_CA_FILE"; return; fi
  find /usr/local/share/ca-certificates -name '*.crt' -type f -exec cat {} + 2>/dev/null || true
}

# drop our older builds of these targets (other hash tags), so their layers can be freed
prune_old() {
  local t old
  for t in "$@"; do
    for old in $(docker images --format '{{.Repository}}:{{.Tag}}' "$REPO/$t" | grep -E ":$VERSION-[0-9a-f]{16}\$" | grep -vx "$REPO/$t:$VERSION-$inputs"); do
      docker rmi "$old" >/dev/null 2>&1 || true
    done
  done
}

cmd_build() {
  local want=("$@") t base base_id inputs ref
  [ ${#want[@]} -gt 0 ] || want=("${TARGETS[@]}")
  for t in "${want[@]}"; do [[ " ${TARGETS[*]} " == *" $t "* ]] || die "unknown image $t (one of: ${TARGETS[*]})"; done
  "$HACK_DIR/docker.sh" start
  step "base image"
  if [ -n "${KSG_IMAGE_BASE:-}" ]; then base=$KSG_IMAGE_BASE
  elif "$HACK_DIR/docker.sh" is-ours; then ensure_debian_image; base=$DEBIAN_IMAGE
  else base=$(sed -n 's/^ARG BASE=//p' "$REPO_DIR/images/Dockerfile")
  fi
  base_id=$(docker image inspect -f '{{.Id}}' "$base" 2>/dev/null || echo "$base")
  step_done "$base"
  local ctx
  step "build context${KSG_IMAGES_REV:+ of $KSG_IMAGES_REV}"
  ctx=$(snapshot_context) || die "cannot snapshot the build context"
  step_done "$(du -k "$CTX_TAR" | cut -f1) KB"
  inputs=$(echo "$base_id $ctx" | hash16)
  for t in "${want[@]}"; do
    ref=$REPO/$t:$VERSION-$inputs
    step "$t"
    if [ "$(docker image inspect -f '{{index .Config.Labels "dev.kube-secgroups.inputs"}}' "$ref" 2>/dev/null)" = "$inputs" ]; then
      docker tag "$ref" "$REPO/$t:$VERSION"
      step_done "cached: $ref"; continue
    fi
    run_logged "build-$t" docker build --force-rm --network host -f images/Dockerfile --target "$t" \
      --build-arg "BASE=$base" --build-arg "BUILD_CA_CERTS=$(build_ca_certs)" --label "dev.kube-secgroups.inputs=$inputs" \
      --label "org.opencontainers.image.version=$VERSION" -t "$ref" -t "$REPO/$t:$VERSION" - <"$CTX_TAR"
    step_done "$ref, $(docker image inspect -f '{{.Size}}' "$ref" | awk '{printf "%d MB", $1/1e6}')"
  done
  prune_old "${want[@]}"
}

case ${1:-build} in
  build) shift || true; SUMMARY_WHAT="build $*"; cmd_build "$@"; summary ;;
  names) names ;;
  operator|agent|probe) SUMMARY_WHAT="build $*"; cmd_build "$@"; summary ;;
  *) sed -n '2,17p' "$0"; exit 2 ;;
esac
