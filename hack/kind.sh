#!/usr/bin/env bash
# A 3-node kind cluster (1 control plane + 2 workers, kind-config.yaml) on this machine, with or
# without a container registry.
#
#   hack/kind.sh up       Docker (hack/docker.sh start), kind, the node image, the cluster; waits
#                         until every node is Ready and every kube-system pod Running, then loads
#                         our images (hack/images.sh) if they were built
#   hack/kind.sh down     delete the cluster; with our own dockerd: every kind cluster on it, the
#                         `kind` network and dockerd itself (no container, network, bridge, route
#                         or dockerd process is left)
#   hack/kind.sh build    kind and the node image only (cached), no cluster
#   hack/kind.sh load [IMAGE...]   `kind load docker-image` (default: our three images)
#   hack/kind.sh selftest probe pods on every node: pods across nodes (TCP/UDP/ICMP/GRE; the
#                         receivers see the senders' pod addresses), a
#                         Service by ClusterIP, DNS name and NodePort, egress refused
#   hack/kind.sh mem      memory of the node containers and of dockerd
#   hack/kind.sh status   daemon, cluster, nodes, pods, cached artefacts
#   hack/kind.sh plan     what `build` would compile, with the cold time to expect
#   hack/kind.sh rootfs   only the Debian rootfs (debootstrap), cached: for a background start
#   hack/kind.sh env      `export` lines: KUBECONFIG, PATH (kind, kubectl), KSG_KIND_* for tests
#
# Which node image:
#   * KSG_KIND_NODE_IMAGE=<image> if set (e.g. kindest/node:v1.36.x on a machine with a registry);
#   * otherwise, when a Docker daemon that is not ours already runs (a developer machine with
#     Docker and a registry): kind's default kindest/node image for its version;
#   * otherwise (no registry: this machine class and CI) one built offline, as below, cached by
#     content. KSG_KIND_BUILD_NODE=1 forces the offline build.
# The offline node image, from package registries only:
#   apt/debootstrap -> Debian rootfs image (hack/lib/debian.sh) -> kind's base image
#   (hack/kind/base.Dockerfile: kind's own image files + Debian's containerd, runc, CNI plugins);
#   Go module proxy -> kind; kubeadm, kubelet, kube-scheduler, kube-proxy from hack/k8sbin (and
#   kube-apiserver, kube-controller-manager, kubectl unless hack/build-binaries.sh already built
#   them); CoreDNS with only the plugins kubeadm's Corefile uses (hack/corednsbin) and crictl at
#   the versions this kubeadm asks for; etcd: the lab's (same minor as kubeadm's); gcc -> pause;
#   -> component images tagged as kubeadm expects, imported into the node's containerd ->
#   node image with ksg-podnet (pod networking) and ksg-egress-guard (hack/kind/).
#
# Environment: KSG_CACHE [~/.cache/kube-secgroups] (everything built lives in $KSG_CACHE/kind; Go's
# module and build caches are the project's, shared with hack/build-binaries.sh),
# KSG_KIND_NAME [ksg], KSG_KIND_KUBECONFIG [$KSG_CACHE/kind/kubeconfig],
# KSG_KIND_NODE_IMAGE, KSG_KIND_BUILD_NODE, KSG_KIND_OFFLINE_IMAGE (the offline node image's tag
# [kube-secgroups/kind-node:<k8s version>]: another one builds a second image beside it),
# KSG_REFRESH_BASE (hack/lib/debian.sh).
set -euo pipefail
# shellcheck disable=SC2034  # read by lib/common.sh
TAG=kind
# shellcheck source=lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
# shellcheck source=lib/debian.sh
source "$HACK_DIR/lib/debian.sh"
# shellcheck source=versions.env
source "$HACK_DIR/versions.env"
LAB_ETCD_VERSION=$ETCD_VERSION   # the lab's etcd; ETCD_VERSION becomes kubeadm's below
# shellcheck source=kind/versions.env
source "$HACK_DIR/kind/versions.env"

K8S=$KUBERNETES_VERSION
MINOR=$(echo "$K8S" | cut -d. -f2)
CRICTL_VERSION=v1.$MINOR.0
NAME=${KSG_KIND_NAME:-ksg}
C=$KSG_CACHE/kind
LOG_DIR=$C/logs
B=$C/build
KUBECONFIG_FILE=${KSG_KIND_KUBECONFIG:-$C/kubeconfig}
CONFIG=$REPO_DIR/kind-config.yaml
KIND_NET=100.90.0.0/24
KIND_GW=100.90.0.1
KIND_BIN=$C/kind-$KIND_VERSION/kind
K8S_DIR=$C/kubernetes-$K8S
BASE_IMAGE=kube-secgroups/kind-base:$KIND_VERSION
OFFLINE_NODE_IMAGE=${KSG_KIND_OFFLINE_IMAGE:-kube-secgroups/kind-node:$K8S}
# a cold `build` measured on 2 cores (docs/performance.md#kind), for `plan`
KIND_COLD_ESTIMATE="8 min at a load average of 10, about half that on 2 idle cores"
K8S_CMDS="kubeadm kubelet kubectl kube-apiserver kube-controller-manager kube-scheduler kube-proxy"
export DOCKER_BUILDKIT=0   # Debian's dockerd 20.10 has no buildx; the legacy builder honours --network host
mkdir -p "$C" "$LOG_DIR" "$B"

img_label() { docker image inspect -f "{{index .Config.Labels \"$2\"}}" "$1" 2>/dev/null || true; }
mod_dir() { (cd / && go mod download -json "$1" | jq -r .Dir); }
mod_gomod() { (cd / && go mod download -json "$1" | jq -r .GoMod); }
kctl() { "$K8S_DIR/kubectl" --kubeconfig "$KUBECONFIG_FILE" "$@"; }

# ------------------------------------------------------------------------------ Go binaries
build_kind() {
  step "kind $KIND_VERSION"
  if [ -x "$KIND_BIN" ]; then step_done cached; return; fi
  mkdir -p "${KIND_BIN%/*}"
  run_logged build-kind env GOBIN="${KIND_BIN%/*}" go install -trimpath -ldflags "-s -w" "sigs.k8s.io/kind@$KIND_VERSION"
  step_done built
}

# kubeadm, kubelet, kube-scheduler and kube-proxy come from hack/k8sbin, the module
# hack/build-binaries.sh builds the lab's three from (committed go.mod/go.sum; its tools list all
# seven), with the same tags, -trimpath and caches: the packages it compiled are cache hits here,
# and so are those CoreDNS shares with them (hack/corednsbin is aligned with k8sbin).
K8S_MOD=$HACK_DIR/k8sbin
GO_TAGS=selinux,notest   # hack/build-binaries.sh's: `notest` drops fuzz files from apimachinery
pins() { grep -qE "^[[:space:]]*(require )?$2 $3( |\$)" "$1/go.mod" 2>/dev/null && [ -s "$1/go.sum" ]; }

build_k8s() {
  step "kubernetes $K8S binaries"
  local missing=() copied=() c m
  mkdir -p "$K8S_DIR"
  for c in $K8S_CMDS; do
    [ -x "$K8S_DIR/$c" ] && continue
    if [ -x "$KSG_CACHE/bin/kubernetes-$K8S/$c" ]; then   # built by hack/build-binaries.sh, same flags
      cp "$KSG_CACHE/bin/kubernetes-$K8S/$c" "$K8S_DIR/$c.tmp" && mv "$K8S_DIR/$c.tmp" "$K8S_DIR/$c"
      copied+=("$c"); continue
    fi
    missing+=("$c")
  done
  if [ ${#missing[@]} -eq 0 ]; then step_done "cached${copied:+; copied ${copied[*]}}"; return; fi
  m=$K8S_MOD
  pins "$m" k8s.io/kubernetes "$K8S" || die "hack/k8sbin does not pin k8s.io/kubernetes $K8S: run hack/build-binaries.sh --regen-modules"
  # the ldflags and tags of hack/build-binaries.sh: its compiled packages are cache hits here
  local ld="-s -w -X k8s.io/component-base/version.gitVersion=$K8S \
 -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$MINOR \
 -X k8s.io/component-base/version.gitTreeState=clean \
 -X k8s.io/client-go/pkg/version.gitVersion=$K8S \
 -X k8s.io/client-go/pkg/version.gitMajor=1 -X k8s.io/client-go/pkg/version.gitMinor=$MINOR"
  log "go build ${missing[*]} (the slow part with a cold Go cache)"
  rm -rf "$K8S_DIR.tmp"; mkdir -p "$K8S_DIR.tmp"
  # shellcheck disable=SC2046
  run_logged build-k8s sh -c "cd '$m' && /usr/bin/time -f 'go build: %e s, %M KB max RSS' go build -trimpath -tags $GO_TAGS -ldflags '$ld' -o '$K8S_DIR.tmp/' $(for c in "${missing[@]}"; do printf 'k8s.io/kubernetes/cmd/%s ' "$c"; done)"
  for c in "${missing[@]}"; do mv "$K8S_DIR.tmp/$c" "$K8S_DIR/$c"; done
  rmdir "$K8S_DIR.tmp"
  step_done "built ${missing[*]}${copied:+; copied ${copied[*]}}; $(tail -n 1 "$LOG_DIR/build-k8s.log")"
}

# etcd, CoreDNS and pause at the tags this kubeadm pulls (kubeadm config images list)
resolve_component_tags() {
  local f=$K8S_DIR/images.txt
  [ -s "$f" ] || "$K8S_DIR/kubeadm" config images list --kubernetes-version "$K8S" >"$f"
  ETCD_TAG=$(sed -n 's|.*/etcd:||p' "$f"); COREDNS_TAG=$(sed -n 's|.*/coredns:||p' "$f")
  PAUSE_TAG=$(sed -n 's|.*/pause:||p' "$f")
  [ -n "$ETCD_TAG" ] && [ -n "$COREDNS_TAG" ] && [ -n "$PAUSE_TAG" ] || die "cannot read the image tags from $f"
  ETCD_VERSION=v${ETCD_TAG%-*}   # 3.6.8-0 -> v3.6.8 (hack/versions.env's is LAB_ETCD_VERSION here)
  KIND_SRC=$(mod_dir "sigs.k8s.io/kind@$KIND_VERSION")
  # kind's containerd config pins its own sandbox (pause) image tag
  SANDBOX_TAG=$(sed -n 's|^ *sandbox_image = "registry.k8s.io/pause:\(.*\)"|\1|p' "$KIND_SRC/images/base/files/etc/containerd/config.toml")
  [ -n "$SANDBOX_TAG" ] || die "cannot read sandbox_image from kind's containerd config"
}

# etcd: the lab's (hack/build-binaries.sh, LAB_ETCD_VERSION in hack/versions.env) when it is a
# patch release of the same minor as the one kubeadm asks for — it is built anyway, and a second
# etcd cost 2 min of a cold build — else kubeadm's own version. The image keeps kubeadm's tag.
build_etcd() {
  local lab
  lab=$("$REPO_DIR/hack/build-binaries.sh" --print-paths etcd)
  if [ "$(echo "$LAB_ETCD_VERSION" | cut -d. -f1-2)" = "$(echo "$ETCD_VERSION" | cut -d. -f1-2)" ]; then
    step "etcd $LAB_ETCD_VERSION (the lab's) as etcd:$ETCD_TAG"
    [ -x "$lab" ] || "$REPO_DIR/hack/build-binaries.sh" etcd >"$LOG_DIR/build-etcd.log" 2>&1 \
      || { tail -n 30 "$LOG_DIR/build-etcd.log" >&2; die "hack/build-binaries.sh etcd failed (log $LOG_DIR/build-etcd.log)"; }
    ETCD_BIN=$lab
    step_done "$("$ETCD_BIN" --version | head -n 1)"
    return
  fi
  step "etcd $ETCD_VERSION"
  local out=$C/etcd-$ETCD_VERSION/etcd m=$C/mod/etcd-$ETCD_VERSION
  ETCD_BIN=$out
  if [ -x "$out" ]; then step_done cached; return; fi
  mkdir -p "${out%/*}" "$m"
  # etcd's server module has replace directives, so `go install ...@version` refuses it: a wrapper module
  if [ ! -s "$m/go.sum" ]; then
    { echo "module example.invalid/ksgetcd"; echo; grep -E '^go ' "$(mod_gomod "go.etcd.io/etcd/server/v3@$ETCD_VERSION")"; } >"$m/go.mod"
    run_logged etcd-go-get sh -c "cd '$m' && go get go.etcd.io/etcd/server/v3@$ETCD_VERSION"
  fi
  run_logged build-etcd sh -c "cd '$m' && go build -trimpath -ldflags '-s -w' -o '$out.tmp' go.etcd.io/etcd/server/v3"
  mv "$out.tmp" "$out"
  step_done built
}

# CoreDNS from hack/corednsbin: our main package with only the plugins the cluster's Corefile
# uses, its go.mod aligned with hack/k8sbin (client-go & co. are cache hits). Cached by the
# content of the wrapper; checked against the Corefile this kubeadm writes.
coredns_hash() { cat "$HACK_DIR"/corednsbin/{main.go,go.mod,go.sum} | hash16; }
build_coredns() {
  local d=$HACK_DIR/corednsbin h
  step "coredns $COREDNS_TAG (hack/corednsbin)"
  pins "$d" github.com/coredns/coredns "$COREDNS_TAG" \
    || die "hack/corednsbin does not pin CoreDNS $COREDNS_TAG (kubeadm $K8S's): run hack/build-binaries.sh --regen-modules"
  h=$(coredns_hash)
  COREDNS_BIN=$C/coredns-$COREDNS_TAG-$h/coredns
  if [ -x "$COREDNS_BIN" ]; then step_done cached; return; fi
  mkdir -p "${COREDNS_BIN%/*}"
  run_logged build-coredns sh -c "cd '$d' && go build -trimpath -tags $GO_TAGS -ldflags '-s -w' -o '$COREDNS_BIN.tmp' ."
  check_coredns_plugins "$COREDNS_BIN.tmp"
  mv "$COREDNS_BIN.tmp" "$COREDNS_BIN"
  step_done "built, $("$COREDNS_BIN" -plugins | wc -l) plugins"
}

# Every directive of the Corefile kubeadm writes (its CoreDNS ConfigMap template) must be a plugin
# of our CoreDNS: a Corefile naming a missing one fails at start ("unknown directive").
check_coredns_plugins() {
  local src missing
  src=$(mod_dir "k8s.io/kubernetes@$K8S")/cmd/kubeadm/app/phases/addons/dns/manifests.go
  missing=$(python3 - "$src" <("$1" -plugins) <<'PY'
import re, sys
text = open(sys.argv[1]).read()
corefile = text.split("Corefile: |", 1)[1].split("`", 1)[0]
depth, want = 0, set()
for line in corefile.splitlines():
    line = re.sub(r"\{\{.*?\}\}", "", line).strip()   # template actions
    if depth == 1 and line and line[0] not in "{}":
        want.add(line.split()[0])
    depth += line.count("{") - line.count("}")
have = set(open(sys.argv[2]).read().split())
if not want:
    print("(no directive found in " + sys.argv[1] + ")")
print(" ".join(sorted(want - have)))
PY
  )
  [ -z "$missing" ] || die "kubeadm $K8S's Corefile uses plugins hack/corednsbin lacks: $missing (add them to hack/corednsbin/main.go)"
}

go_install_step() { # NAME VERSION PACKAGE@VERSION BINARY
  step "$1 $2"
  local dir=$C/$1-$2
  if [ -x "$dir/$4" ]; then step_done cached; return; fi
  mkdir -p "$dir"
  run_logged "build-$1" env GOBIN="$dir" go install -trimpath -tags "$GO_TAGS" -ldflags "-s -w" "$3"
  step_done built
}

build_pause() {
  step "pause $PAUSE_TAG"
  local out=$C/pause-$PAUSE_TAG/pause
  if [ -x "$out" ]; then step_done cached; return; fi
  apt_install gcc libc6-dev
  mkdir -p "${out%/*}"
  # build/pause/linux/pause.c ships in the k8s.io/kubernetes module
  gcc -Os -Wall -Werror -static -DVERSION="$PAUSE_TAG" -o "$out.tmp" "$(mod_dir "k8s.io/kubernetes@$K8S")/build/pause/linux/pause.c"
  strip "$out.tmp" && mv "$out.tmp" "$out"
  step_done built
}

# ------------------------------------------------------------------------------ images
build_base_image() {
  step "kind base image"
  local ctx=$B/base h
  rm -rf "$ctx"; mkdir -p "$ctx"
  cp -r "$KIND_SRC/images/base/files" "$ctx/files"; chmod -R u+w "$ctx"
  cp "$HACK_DIR/kind/base.Dockerfile" "$ctx/Dockerfile"
  h=$( { echo "$DEBIAN_IMAGE"; cat "$ctx/Dockerfile"; (cd "$ctx" && find files -type f -exec sha256sum {} + | sort); } | hash16)
  if [ "$(img_label "$BASE_IMAGE" dev.kube-secgroups.inputs)" = "$h" ]; then step_done cached; return; fi
  run_logged build-base docker build --force-rm --network host --build-arg "BASE=$DEBIAN_IMAGE" \
    --label "dev.kube-secgroups.inputs=$h" -t "$BASE_IMAGE" "$ctx"
  step_done "$(docker image inspect -f '{{.Size}}' "$BASE_IMAGE" | awk '{printf "%d MB", $1/1e6}')"
}

node_image_inputs() { # the content key of the offline node image
  {
    docker image inspect -f '{{.Id}}' "$BASE_IMAGE" "$DEBIAN_IMAGE"
    (cd "$HACK_DIR/kind" && cat versions.env kube-proxy.Dockerfile iptables-wrapper default-cni.yaml ksg-podnet* ksg-egress-guard*)
    echo "$ETCD_TAG $COREDNS_TAG $PAUSE_TAG $SANDBOX_TAG $CRICTL_VERSION"
    declare -f build_node_image component_image
    # binaries are rebuilt only when missing, so size + mtime identify them (hashing 600 MB would
    # cost seconds on every warm `up`)
    stat -c '%n %s %Y' "$K8S_DIR"/* "$ETCD_BIN" "$COREDNS_BIN" \
      "$C/crictl-$CRICTL_VERSION/crictl" "$C/pause-$PAUSE_TAG/pause"
  } | hash16
}

component_image() { # TAG BINARY [PATH-IN-IMAGE]: FROM scratch, one static binary
  local d bin=${2##*/}
  d=$(mktemp -d "$B/component.XXXXXX")
  cp "$2" "$d/"
  printf 'FROM scratch\nCOPY %s %s\nENV PATH=/usr/local/bin:/usr/bin:/bin\nENTRYPOINT ["%s"]\n' \
    "$bin" "${3:-/usr/local/bin/$bin}" "${3:-/usr/local/bin/$bin}" >"$d/Dockerfile"
  run_logged build-component docker build --force-rm -t "$1" "$d"
  rm -rf "$d"
}

build_node_image() {
  step "node image $OFFLINE_NODE_IMAGE"
  local h ctx=$B/node c bc=ksg-kind-nodebuild i
  h=$(node_image_inputs)
  if [ "$(img_label "$OFFLINE_NODE_IMAGE" dev.kube-secgroups.inputs)" = "$h" ]; then step_done cached; return; fi
  rm -rf "$ctx"; mkdir -p "$ctx/kube-proxy"
  # the images kubeadm runs, tagged as it expects (they are never pulled: the node has them)
  for c in kube-apiserver kube-controller-manager kube-scheduler; do component_image "registry.k8s.io/$c:$K8S" "$K8S_DIR/$c"; done
  component_image "registry.k8s.io/etcd:$ETCD_TAG" "$ETCD_BIN"
  component_image "registry.k8s.io/coredns/coredns:$COREDNS_TAG" "$COREDNS_BIN" /coredns
  component_image "registry.k8s.io/pause:$PAUSE_TAG" "$C/pause-$PAUSE_TAG/pause" /pause
  [ "$SANDBOX_TAG" = "$PAUSE_TAG" ] || docker tag "registry.k8s.io/pause:$PAUSE_TAG" "registry.k8s.io/pause:$SANDBOX_TAG"
  cp "$K8S_DIR/kube-proxy" "$HACK_DIR/kind/iptables-wrapper" "$ctx/kube-proxy/"
  run_logged build-kube-proxy docker build --force-rm --network host --build-arg "BASE=$DEBIAN_IMAGE" \
    -f "$HACK_DIR/kind/kube-proxy.Dockerfile" -t "registry.k8s.io/kube-proxy:$K8S" "$ctx/kube-proxy"
  local images="registry.k8s.io/kube-apiserver:$K8S registry.k8s.io/kube-controller-manager:$K8S
    registry.k8s.io/kube-scheduler:$K8S registry.k8s.io/kube-proxy:$K8S registry.k8s.io/etcd:$ETCD_TAG
    registry.k8s.io/coredns/coredns:$COREDNS_TAG registry.k8s.io/pause:$PAUSE_TAG registry.k8s.io/pause:$SANDBOX_TAG"
  # shellcheck disable=SC2086
  docker save -o "$ctx/images.tar" $images
  # What `kind build node-image` does, without its pulls: a container of the base image gets the
  # binaries, /kind/version and the images in containerd's k8s.io namespace, then is committed.
  docker rm -f "$bc" >/dev/null 2>&1 || true
  docker run -d --name "$bc" --network none --entrypoint=sleep "$BASE_IMAGE" infinity >/dev/null
  for c in kubeadm kubelet kubectl; do docker cp "$K8S_DIR/$c" "$bc:/usr/bin/$c"; done
  docker cp "$C/crictl-$CRICTL_VERSION/crictl" "$bc:/usr/local/bin/crictl"
  docker cp "$HACK_DIR/kind/ksg-podnet" "$bc:/usr/local/bin/ksg-podnet"
  docker cp "$HACK_DIR/kind/ksg-podnet.service" "$bc:/etc/systemd/system/ksg-podnet.service"
  docker cp "$HACK_DIR/kind/ksg-egress-guard.nft" "$bc:/etc/ksg-egress-guard.nft"
  docker cp "$HACK_DIR/kind/ksg-egress-guard.service" "$bc:/etc/systemd/system/ksg-egress-guard.service"
  docker exec "$bc" mkdir -p /kind/manifests /etc/cni/net.d
  docker cp "$HACK_DIR/kind/default-cni.yaml" "$bc:/kind/manifests/default-cni.yaml"
  docker exec "$bc" sh -c "chmod 755 /usr/local/bin/ksg-podnet && chmod 644 /etc/systemd/system/ksg-*.service /etc/ksg-egress-guard.nft \
    && systemctl enable ksg-podnet.service ksg-egress-guard.service >/dev/null 2>&1 && printf '%s' '$K8S' >/kind/version \
    && (nohup containerd >/tmp/containerd.log 2>&1 & echo \$! >/tmp/containerd.pid)"
  for i in $(seq 60); do docker exec "$bc" ctr version >/dev/null 2>&1 && break; sleep 0.5; done
  run_logged node-import sh -c "docker exec -i '$bc' ctr --namespace=k8s.io images import \
    --label=io.cri-containerd.pinned=pinned --all-platforms --no-unpack --digests - <'$ctx/images.tar'"
  # the container's PID 1 (sleep) never reaps: wait until containerd is a zombie, not gone
  docker exec "$bc" sh -c 'p=$(cat /tmp/containerd.pid); kill $p
    while [ -e /proc/$p ] && ! grep -q "^State:.*Z" /proc/$p/status; do sleep 0.2; done; rm -f /tmp/containerd.*'
  docker commit --change 'ENTRYPOINT ["/usr/local/bin/entrypoint", "/sbin/init"]' \
    --change "LABEL dev.kube-secgroups.inputs=$h" "$bc" "$OFFLINE_NODE_IMAGE" >/dev/null
  docker rm -f "$bc" >/dev/null
  rm -rf "$ctx"
  step_done "$(docker image inspect -f '{{.Size}}' "$OFFLINE_NODE_IMAGE" | awk '{printf "%d MB", $1/1e6}')"
}

# ------------------------------------------------------------------------------ build / up / down
DEBOOT_PID=""
cmd_build() {
  need_root "hack/kind.sh"
  "$HACK_DIR/docker.sh" start
  step "tools"
  apt_install jq gcc libc6-dev
  setup_go
  step_done "$(go version | cut -d' ' -f3)"
  choose_node_image
  if [ "$NODE_IMAGE" != "$OFFLINE_NODE_IMAGE" ]; then build_kind; return; fi
  # debootstrap is network-bound: let it run while the Go builds use the CPUs
  if [ ! -s "$(debian_rootfs_path)" ] || [ "${KSG_REFRESH_BASE:-0}" = 1 ]; then
    log "debootstrap in the background (log $LOG_DIR/debootstrap.log)"
    debian_rootfs_build >"$LOG_DIR/debootstrap.log" 2>&1 &
    DEBOOT_PID=$!
  fi
  build_kind
  build_k8s
  resolve_component_tags
  build_etcd
  build_coredns
  go_install_step crictl "$CRICTL_VERSION" "sigs.k8s.io/cri-tools/cmd/crictl@$CRICTL_VERSION" crictl
  build_pause
  step "debian base image"
  if [ -n "$DEBOOT_PID" ]; then
    wait "$DEBOOT_PID" || { tail -n 30 "$LOG_DIR/debootstrap.log" >&2; die "debootstrap failed (log $LOG_DIR/debootstrap.log)"; }
  fi
  ensure_debian_image
  step_done "$DEBIAN_IMAGE"
  build_base_image
  build_node_image
}

choose_node_image() {
  if [ -n "${KSG_KIND_NODE_IMAGE:-}" ]; then NODE_IMAGE=$KSG_KIND_NODE_IMAGE; log "node image $NODE_IMAGE (KSG_KIND_NODE_IMAGE)"
  elif [ "${KSG_KIND_BUILD_NODE:-0}" = 1 ] || "$HACK_DIR/docker.sh" is-ours; then NODE_IMAGE=$OFFLINE_NODE_IMAGE
  else NODE_IMAGE=""; log "a Docker daemon of this machine runs: kind's default node image"
  fi
  NODE_IMAGE=${NODE_IMAGE:-kind-default}
}

kubectl_for_host() { # kubectl for the host: ours, or the one hack/build-binaries.sh built
  [ -x "$K8S_DIR/kubectl" ] && return 0
  if [ -x "$KSG_CACHE/bin/kubernetes-$K8S/kubectl" ]; then mkdir -p "$K8S_DIR"; cp "$KSG_CACHE/bin/kubernetes-$K8S/kubectl" "$K8S_DIR/kubectl"; return 0; fi
  "$REPO_DIR/hack/build-binaries.sh" kubectl >/dev/null && cp "$KSG_CACHE/bin/kubernetes-$K8S/kubectl" "$K8S_DIR/kubectl"
}

ensure_kind_network() {
  local subnet
  subnet=$(docker network inspect kind -f '{{range .IPAM.Config}}{{.Subnet}} {{end}}' 2>/dev/null || true)
  subnet=${subnet% }
  [ "$subnet" = "$KIND_NET" ] && return 0
  [ -z "$subnet" ] || die "a docker network 'kind' exists with subnet $subnet, not $KIND_NET: delete it (docker network rm kind)"
  # kind uses an existing network named "kind"; made by kind itself it would take Docker's
  # defaults (172.x and an fc00:: IPv6 range)
  docker network create -d bridge --subnet "$KIND_NET" --gateway "$KIND_GW" \
    -o com.docker.network.bridge.enable_ip_masquerade=false -o com.docker.network.driver.mtu=1500 kind >/dev/null
}

cluster_exists() { "$KIND_BIN" get clusters 2>/dev/null | grep -qx "$NAME"; }
cluster_healthy() {
  cluster_exists || return 1
  [ "$(docker ps -q --filter "label=io.x-k8s.kind.cluster=$NAME" --filter status=running | wc -l)" -eq 3 ] \
    && kctl get --raw /readyz >/dev/null 2>&1
}

wait_ready() {
  step "wait: nodes Ready, kube-system Running"
  local i bad
  run_logged wait-nodes "$K8S_DIR/kubectl" --kubeconfig "$KUBECONFIG_FILE" wait --for=condition=Ready node --all --timeout=300s
  run_logged wait-proxy "$K8S_DIR/kubectl" --kubeconfig "$KUBECONFIG_FILE" -n kube-system rollout status daemonset/kube-proxy --timeout=300s
  run_logged wait-coredns "$K8S_DIR/kubectl" --kubeconfig "$KUBECONFIG_FILE" -n kube-system rollout status deployment/coredns --timeout=300s
  for i in $(seq 90); do   # deadline 180 s
    bad=$(kctl -n kube-system get pods --no-headers 2>/dev/null | awk '$3 != "Running"' | wc -l)
    [ "$bad" -eq 0 ] && break; sleep 2
  done
  [ "$bad" -eq 0 ] || { kctl -n kube-system get pods >&2; die "kube-system pods are not Running after 180 s"; }
  step_done "$(kctl get nodes --no-headers | wc -l) nodes, $(kctl -n kube-system get pods --no-headers | wc -l) kube-system pods"
}

cmd_up() {
  SUMMARY_WHAT=up
  cmd_build
  kubectl_for_host
  step "kind create cluster $NAME"
  if cluster_healthy; then
    step_done "already running"
  else
    if cluster_exists; then log "cluster $NAME exists but is not healthy: deleting it"; "$KIND_BIN" delete cluster --name "$NAME" --kubeconfig "$KUBECONFIG_FILE" >/dev/null 2>&1 || true; fi
    ensure_kind_network
    local image_args=()
    [ "$NODE_IMAGE" = kind-default ] || image_args=(--image "$NODE_IMAGE")
    run_logged kind-create "$KIND_BIN" create cluster --name "$NAME" "${image_args[@]}" \
      --config "$CONFIG" --kubeconfig "$KUBECONFIG_FILE" --wait 0s
    step_done "$(grep -c '✓' "$LOG_DIR/kind-create.log" || true) kind steps"
  fi
  # loading the images (tens of seconds) overlaps the wait for Ready: containerd already runs
  local load_pid=""
  if [ "${KSG_KIND_NO_LOAD:-0}" != 1 ]; then
    load_images >"$LOG_DIR/load.out" 2>&1 &
    load_pid=$!
  fi
  wait_ready
  if [ -n "$load_pid" ]; then
    step "kind load (ran during the wait)"
    wait "$load_pid" || { cat "$LOG_DIR/load.out" >&2; die "kind load failed"; }
    step_done "$(sed -n 's/.*kind load [0-9]* image(s): \([0-9.]* s\).*/\1 in all/p' "$LOG_DIR/load.out")$(grep -q 'no image of ours' "$LOG_DIR/load.out" && echo 'no image of ours: make images')"
  fi
  kctl get nodes -o custom-columns='NAME:.metadata.name,READY:.status.conditions[?(@.type=="Ready")].status,VERSION:.status.nodeInfo.kubeletVersion,INTERNAL-IP:.status.addresses[?(@.type=="InternalIP")].address,POD-CIDR:.spec.podCIDR,RUNTIME:.status.nodeInfo.containerRuntimeVersion'
  summary
  echo "# use it:  eval \"\$(hack/kind.sh env)\""
  cmd_env
}

# our three images, as hack/images.sh tags them
our_images() { "$HACK_DIR/images.sh" names 2>/dev/null || true; }

load_images() {
  local imgs=("$@") present=() i
  [ ${#imgs[@]} -gt 0 ] || mapfile -t imgs < <(our_images)
  for i in "${imgs[@]}"; do docker image inspect "$i" >/dev/null 2>&1 && present+=("$i"); done
  if [ ${#present[@]} -eq 0 ]; then log "no image of ours to load (make images builds them)"; return 0; fi
  step "kind load ${#present[@]} image(s)"
  run_logged kind-load "$KIND_BIN" load docker-image --name "$NAME" "${present[@]}"
  step_done "${present[*]}"
}

cmd_load() {
  [ -x "$KIND_BIN" ] && cluster_exists || die "no kind cluster $NAME (hack/kind.sh up)"
  load_images "$@"
  summary
}

cmd_down() {
  need_root "hack/kind.sh down"
  SUMMARY_WHAT=down
  local cl
  if "$HACK_DIR/docker.sh" is-ours; then
    # every kind cluster on our daemon is ours (or a test's, made from our config)
    for cl in $( [ -x "$KIND_BIN" ] && "$KIND_BIN" get clusters 2>/dev/null); do
      step "kind delete cluster $cl"
      "$KIND_BIN" delete cluster --name "$cl" --kubeconfig "$KUBECONFIG_FILE" >/dev/null 2>&1
      step_done
    done
    if docker network inspect kind >/dev/null 2>&1; then docker network rm kind >/dev/null && log "docker network kind removed"; fi
    "$HACK_DIR/docker.sh" stop
  elif [ -x "$KIND_BIN" ] && cluster_exists; then
    step "kind delete cluster $NAME"
    "$KIND_BIN" delete cluster --name "$NAME" --kubeconfig "$KUBECONFIG_FILE" >/dev/null 2>&1
    step_done "the Docker daemon is not ours: left running"
  elif timeout 10 docker info >/dev/null 2>&1; then
    log "no cluster $NAME on the running Docker daemon (not ours: left running)"
  else
    # no daemon at all: a killed dockerd of ours may have left its bridges and mounts
    "$HACK_DIR/docker.sh" stop
  fi
  rm -f "$KUBECONFIG_FILE"
  summary
}

# A workload check of the running cluster with our probe image: one probe pod per node and a
# NodePort Service; from every pod, every pod by IP (TCP, UDP, ICMP, GRE) across nodes, the
# Service by ClusterIP and by DNS name, the NodePort on every node, and an address outside the
# cluster refused by the egress guard (hack/kind/selftest.py). Deletes its namespace at the end.
cmd_selftest() {
  cluster_healthy || die "no healthy cluster $NAME (hack/kind.sh up)"
  local ns=ksg-selftest img plan p ok fail
  img=$("$HACK_DIR/images.sh" names | grep /probe:)
  SUMMARY_WHAT=selftest
  load_images "$img"
  step "selftest: probe pods"
  kctl delete namespace "$ns" --ignore-not-found --wait=true >/dev/null
  kctl create namespace "$ns" >/dev/null
  kctl -n "$ns" apply -f - >/dev/null <<YAML
apiVersion: apps/v1
kind: Deployment
metadata: {name: probe}
spec:
  replicas: 3
  selector: {matchLabels: {app: probe}}
  template:
    metadata: {labels: {app: probe}}
    spec:
      terminationGracePeriodSeconds: 1
      # ICMP probes use ping sockets; containerd (unlike Docker) leaves ping_group_range closed
      securityContext: {sysctls: [{name: net.ipv4.ping_group_range, value: "0 2147483647"}]}
      tolerations: [{key: node-role.kubernetes.io/control-plane, operator: Exists, effect: NoSchedule}]
      topologySpreadConstraints:
      - {maxSkew: 1, topologyKey: kubernetes.io/hostname, whenUnsatisfiable: DoNotSchedule, labelSelector: {matchLabels: {app: probe}}}
      containers:
      - name: probe
        image: $img
        imagePullPolicy: Never
        args: ["--name", "\$(POD_NAME)", "--control", "/run/probed.sock"]
        env: [{name: POD_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}]
        readinessProbe: {tcpSocket: {port: 80}, periodSeconds: 1}
---
apiVersion: v1
kind: Service
metadata: {name: probe}
spec:
  type: NodePort
  selector: {app: probe}
  ports: [{name: tcp, port: 80, protocol: TCP}, {name: udp, port: 80, protocol: UDP}]
YAML
  run_logged selftest-rollout "$K8S_DIR/kubectl" --kubeconfig "$KUBECONFIG_FILE" -n "$ns" rollout status deployment/probe --timeout=180s
  step_done "$(kctl -n "$ns" get pods -l app=probe -o jsonpath='{range .items[*]}{.spec.nodeName}{" "}{end}')"
  step "selftest: probes"
  plan=$(kctl -n "$ns" get pods,svc,nodes -o json | python3 -c '
import json, sys
items = json.load(sys.stdin)["items"]
pods = {i["metadata"]["name"]: i["status"]["podIP"] for i in items if i["kind"] == "Pod"}
svc = next(i for i in items if i["kind"] == "Service")
nodes = {i["metadata"]["name"]: next(a["address"] for a in i["status"]["addresses"] if a["type"] == "InternalIP")
         for i in items if i["kind"] == "Node"}
print(json.dumps({"pods": pods, "cluster_ip": svc["spec"]["clusterIP"], "nodes": nodes,
                  "node_port": next(p["nodePort"] for p in svc["spec"]["ports"] if p["protocol"] == "TCP"),
                  "service_name": "probe.ksg-selftest.svc.cluster.local", "outside": "100.64.250.10"}))')
  ok=0; fail=0
  for p in $(kctl -n "$ns" get pods -l app=probe -o jsonpath='{.items[*].metadata.name}'); do
    kctl -n "$ns" exec -i "$p" -- python3 - "$plan" <"$HACK_DIR/kind/selftest.py" >"$LOG_DIR/selftest-$p.jsonl" 2>&1 || true
    read -r o f < <(python3 - "$LOG_DIR/selftest-$p.jsonl" "$p" <<'PY'
import json, sys
rows, bad = [], []
for line in open(sys.argv[1]):
    try:
        rows.append(json.loads(line))
    except ValueError:
        bad.append(line.rstrip())
fails = [r for r in rows if r["ok"] != r["expect"]]
for r in fails:
    print(f"  FAIL {sys.argv[2]} -> {r['target']} {r['what']}: {r['detail']}", file=sys.stderr)
for b in bad:
    print(f"  {sys.argv[2]}: {b}", file=sys.stderr)
print(len(rows) - len(fails), len(fails) + (1 if bad or not rows else 0))
PY
    )
    log "  from $p: $o ok, $f failed"
    ok=$((ok + o)); fail=$((fail + f))
  done
  # pod-to-pod traffic is routed, not masqueraded: every pod saw every pod's own address
  local ips seen
  ips=$(kctl -n "$ns" get pods -l app=probe -o jsonpath='{.items[*].status.podIP}')
  for p in $(kctl -n "$ns" get pods -l app=probe -o jsonpath='{.items[*].metadata.name}'); do
    seen=$(kctl -n "$ns" exec -i "$p" -- python3 - seen <"$HACK_DIR/kind/selftest.py" 2>&1 || true)
    if python3 -c 'import json, sys; seen = set(json.loads(sys.argv[1])); sys.exit(0 if set(sys.argv[2].split()) <= seen else 1)' "$seen" "$ips" 2>/dev/null; then
      ok=$((ok + 1))
    else
      fail=$((fail + 1)); log "  FAIL $p did not see every pod's address as a source: $seen (pods: $ips)"
    fi
  done
  kctl delete namespace "$ns" --wait=false >/dev/null
  step_done "$ok ok, $fail failed"
  summary
  [ "$fail" -eq 0 ] || die "selftest: $fail checks failed (logs $LOG_DIR/selftest-*.jsonl)"
}

# memory of the running cluster: per node container, its memory cgroup's anonymous memory
# (rss) and page cache (cgroup v1 memory.stat, or v2 anon/file); dockerd and its containerd
cmd_mem() {
  cluster_healthy || die "no healthy cluster $NAME"
  local c id cg rss cache tr=0 tc=0 kb=0 p pid
  for c in $(docker ps --filter "label=io.x-k8s.kind.cluster=$NAME" --format '{{.Names}}' | sort); do
    id=$(docker inspect -f '{{.Id}}' "$c"); cg=""
    for p in /sys/fs/cgroup/memory/docker/"$id" /sys/fs/cgroup/memory/system.slice/docker-"$id".scope \
             /sys/fs/cgroup/system.slice/docker-"$id".scope /sys/fs/cgroup/docker/"$id"; do
      [ -f "$p/memory.stat" ] && { cg=$p; break; }
    done
    [ -n "$cg" ] || { echo "  $c: memory cgroup not found"; continue; }
    rss=$(awk '$1 == "total_rss" || $1 == "anon" {print int($2 / 1048576); exit}' "$cg/memory.stat")
    cache=$(awk '$1 == "total_cache" || $1 == "file" {print int($2 / 1048576); exit}' "$cg/memory.stat")
    printf '  %-20s anonymous %5d MB, page cache %5d MB\n' "$c" "$rss" "$cache"
    tr=$((tr + rss)); tc=$((tc + cache))
  done
  printf '  %-20s anonymous %5d MB, page cache %5d MB\n' "all nodes" "$tr" "$tc"
  if pid=$(cat "$KSG_CACHE/docker/dockerd.pid" 2>/dev/null) && kill -0 "$pid" 2>/dev/null; then
    for p in $pid $(pgrep -P "$pid" containerd || true); do kb=$((kb + $(awk '/^VmRSS/{print $2}' "/proc/$p/status"))); done
    printf '  %-20s RSS %d MB\n' "dockerd + containerd" $((kb / 1024))
  fi
}

# What `build` would compile (no root, no Docker needed): said up front by .ci/run, since a cold
# build is most of a first CI run. Times: docs/performance.md#kind.
cmd_plan() {
  local todo=() c
  [ -x "$KIND_BIN" ] || todo+=(kind)
  for c in kubeadm kubelet kube-scheduler kube-proxy; do
    [ -x "$K8S_DIR/$c" ] || { todo+=("kubeadm/kubelet/kube-scheduler/kube-proxy"); break; }
  done
  compgen -G "$C/coredns-*-$(coredns_hash)/coredns" >/dev/null || todo+=(CoreDNS)
  [ -x "$C/crictl-$CRICTL_VERSION/crictl" ] || todo+=(crictl)
  [ -s "$(debian_rootfs_path)" ] || todo+=("Debian rootfs (debootstrap, in the background)")
  if [ ${#todo[@]} -eq 0 ]; then
    log "kind: binaries cached; the node image is checked against them (rebuilt after a recipe change: ≈ 30 s)"
  else
    c=$(printf '%s, ' "${todo[@]}")
    log "kind: to build: ${c%, }, then the kind base and node images"
    log "kind: all of it from a cold cache (control-plane packages already compiled) ≈ ${KIND_COLD_ESTIMATE}"
  fi
}

# The Debian rootfs tar alone (debootstrap: network-bound, 1-5 min), cached; .ci/run starts it in
# the background while the control plane compiles (hack/images.sh and `build` wait for it: a lock).
cmd_rootfs() {
  need_root "hack/kind.sh rootfs"
  step "Debian rootfs (debootstrap)"
  debian_rootfs_build >>"$LOG_DIR/debootstrap.log" 2>&1 \
    || { tail -n 30 "$LOG_DIR/debootstrap.log" >&2; die "debootstrap failed (log $LOG_DIR/debootstrap.log)"; }
  step_done "$(debian_rootfs_path)"
}

cmd_status() {
  "$HACK_DIR/docker.sh" status
  if [ -x "$KIND_BIN" ] && timeout 10 docker info >/dev/null 2>&1; then
    echo "kind clusters: $("$KIND_BIN" get clusters 2>/dev/null | tr '\n' ' ')"
    if cluster_healthy; then kctl get nodes -o wide; kctl get pods -A -o wide; fi
    docker images --format '{{.Repository}}:{{.Tag}}\t{{.Size}}' | grep -E '^kube-secgroups/' || true
  fi
  echo "cache: $C ($(du -sh "$C" 2>/dev/null | cut -f1))"
}

cmd_env() {
  echo "export KUBECONFIG=$KUBECONFIG_FILE"
  echo "export PATH=${KIND_BIN%/*}:$K8S_DIR:\$PATH"
  echo "export KSG_KIND_CLUSTER=$NAME KSG_KIND_CONFIG=$CONFIG"
}

case ${1:-} in
  up) cmd_up ;;
  down) cmd_down ;;
  build) SUMMARY_WHAT=build; cmd_build; summary ;;
  load) shift; cmd_load "$@" ;;
  status) cmd_status ;;
  plan) cmd_plan ;;
  rootfs) cmd_rootfs ;;
  selftest) cmd_selftest ;;
  mem) cmd_mem ;;
  env) cmd_env ;;
  *) sed -n '2,43p' "$0"; exit 2 ;;
esac
