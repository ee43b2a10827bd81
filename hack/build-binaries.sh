#!/usr/bin/env bash
# Build the lab's control-plane binaries from the Go module proxy, pinned in hack/versions.env,
# into a cache outside the repository:
#   ${KSG_CACHE:-$HOME/.cache/kube-secgroups}/bin/kubernetes-<v>/{kube-apiserver,kube-controller-manager,kubectl}
#   ${KSG_CACHE:-...}/bin/etcd-<v>/etcd
#   ${KSG_CACHE:-...}/bin/helm-<v>/helm
#   ${KSG_CACHE:-...}/bin/kubeconform-<v>/kubeconform   (schema check of the chart's manifests)
#   ${KSG_CACHE:-...}/bin/kwok-<v>/kwok                 (bench/scale.py only: named, never by default)
# GOMODCACHE and GOCACHE live under the same cache dir, so CI can keep one directory.
# A binary that already exists for its pinned version is not rebuilt (no Go invocation at all).
#
# A cold build (empty Go caches) on 2 cores, measured: the control plane (kube-apiserver,
# kcm, kubectl, etcd) 9.5 min, kube-apiserver alone 5 min; all of them 16-18 min; two to
# three times that on a machine busy with other builds. Output: a line per step with its time and a
# line every 30 s while Go runs; Go's own output (the `go: downloading` lines) goes to
# ${KSG_CACHE:-...}/logs/build-<component>.log and is shown only when a build fails.
#
# Usage: hack/build-binaries.sh [--regen-modules] [--print-paths] [component ...]
#   components: kube-apiserver kube-controller-manager kubectl etcd helm kubeconform (default: all)
#               kwok (only when named)
#   --regen-modules  regenerate hack/k8sbin/go.{mod,sum}, hack/corednsbin/go.{mod,sum} and
#                    hack/etcdbin/go.{mod,sum} from the pinned tags (k8s staging replaces generated
#                    from the tag's own go.mod; CoreDNS at the version this kubeadm deploys; the
#                    modules both k8sbin and corednsbin compile aligned at one version, so a
#                    package compiled once is a Go build cache hit for every other binary)
#   --print-paths    only print the binary paths (no build)
set -euo pipefail

HACK=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# `sudo` resets PATH; find the Go toolchain where installers put it.
for d in /usr/local/go/bin /usr/lib/go/bin "$HOME/go/bin" "$HOME/.local/go/bin"; do
  if ! command -v go >/dev/null 2>&1 && [ -x "$d/go" ]; then PATH=$d:$PATH; fi
done
# shellcheck source=versions.env
source "$HACK/versions.env"
K8S=$KUBERNETES_VERSION
STG=v0.${K8S#v1.}
K8S_MINOR=$(echo "$K8S" | cut -d. -f2)
CACHE=${KSG_CACHE:-$HOME/.cache/kube-secgroups}
BIN=$CACHE/bin
export GOMODCACHE=$CACHE/go/mod GOCACHE=$CACHE/go/build GOFLAGS=-buildvcs=false
export CGO_ENABLED=0 GOTOOLCHAIN=${GOTOOLCHAIN:-local}
# The same tags (and -trimpath, CGO_ENABLED, GOFLAGS) in every Go build of the project's
# Kubernetes-side binaries, here and in hack/kind.sh: compiled packages are shared only between
# builds with identical flags.
TAGS=selinux,notest
K8S_TOOLS="kube-apiserver kube-controller-manager kubectl kubeadm kubelet kube-scheduler kube-proxy"

regen=0; print_only=0; want=()
for a in "$@"; do
  case $a in
    --regen-modules) regen=1 ;;
    --print-paths) print_only=1 ;;
    -h|--help) sed -n '2,/^set -euo pipefail/{/^set /d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
    kube-apiserver|kube-controller-manager|kubectl|etcd|helm|kubeconform|kwok) want+=("$a") ;;
    *) echo "unknown argument: $a" >&2; exit 2 ;;
  esac
done
[ ${#want[@]} -gt 0 ] || want=(kube-apiserver kube-controller-manager kubectl etcd helm kubeconform)

path_of() {
  case $1 in
    kube-apiserver|kube-controller-manager|kubectl) echo "$BIN/kubernetes-$K8S/$1" ;;
    etcd) echo "$BIN/etcd-$ETCD_VERSION/etcd" ;;
    helm) echo "$BIN/helm-$HELM_VERSION/helm" ;;
    kubeconform) echo "$BIN/kubeconform-$KUBECONFORM_VERSION/kubeconform" ;;
    kwok) echo "$BIN/kwok-$KWOK_VERSION/kwok" ;;
  esac
}

if [ $print_only = 1 ]; then
  for c in "${want[@]}"; do echo "$(path_of "$c")"; done
  exit 0
fi

LOGS=$CACHE/logs
mkdir -p "$BIN" "$GOMODCACHE" "$GOCACHE" "$LOGS"
# One build at a time per cache (parallel test sessions, CI steps).
exec 9>"$CACHE/build.lock"
if ! flock -n 9; then
  echo "another build holds $CACHE/build.lock; waiting for it"
  flock 9
fi

now() { date +%s; }
human() { # seconds -> 45s / 2m30s
  if [ "$1" -ge 60 ]; then printf '%dm%02ds' $(($1 / 60)) $(($1 % 60)); else printf '%ds' "$1"; fi
}
HEARTBEAT=${KSG_BUILD_HEARTBEAT:-30}

# run_logged NAME LOG DIR CMD...: run CMD in DIR with its output in LOG; while it runs,
# print a line every $HEARTBEAT seconds; if it fails, print the end of LOG and exit.
run_logged() {
  local name=$1 log=$2 dir=$3 t0 pid rc=0 next dl
  shift 3
  t0=$(now)
  next=$((t0 + HEARTBEAT))
  (cd "$dir" && exec "$@") >"$log" 2>&1 &
  pid=$!
  while kill -0 "$pid" 2>/dev/null; do
    sleep 1
    if [ "$(now)" -ge "$next" ] && kill -0 "$pid" 2>/dev/null; then
      dl=$(grep -c '^go: downloading' "$log" || true)
      if [ "${dl:-0}" -gt 0 ]; then dl=" ($dl modules downloaded)"; else dl=""; fi
      echo "    still building $name, $(human $(($(now) - t0)))$dl"
      next=$((next + HEARTBEAT))
    fi
  done
  wait "$pid" || rc=$?
  if [ "$rc" -ne 0 ]; then
    echo "    FAILED: building $name exited $rc after $(human $(($(now) - t0))); the end of $log:"
    grep -v '^go: downloading' "$log" | tail -n 25 | sed 's/^/    | /'
    exit "$rc"
  fi
}

gen_k8s_mod() {
  local d=$HACK/k8sbin gomod
  mkdir -p "$d"
  echo "generating $d/go.mod for k8s.io/kubernetes $K8S (staging modules at $STG)"
  # Read the upstream go.mod of the tag from the proxy, outside any module.
  gomod=$(cd / && go mod download -json "k8s.io/kubernetes@$K8S" \
          | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')
  {
    echo "module example.invalid/k8sbin"
    echo
    grep -E '^go ' "$gomod"
    grep -E '^godebug ' "$gomod" || true
    echo
    echo "require k8s.io/kubernetes $K8S"
    echo
    grep -oE 'k8s\.io/[a-z0-9-]+ => \./staging/src/k8s\.io/[a-z0-9-]+' "$gomod" \
      | awk -v v="$STG" '{print "replace " $1 " => " $1 " " v}'
  } > "$d/go.mod"
  rm -f "$d/go.sum"
  # the lab's three and the four more the kind node image needs (hack/kind.sh): one module, so
  # one set of versions for every Kubernetes binary
  # shellcheck disable=SC2046
  (cd "$d" && go get -tool $(for c in $K8S_TOOLS; do printf 'k8s.io/kubernetes/cmd/%s@%s ' "$c" "$K8S"; done))
  echo "  $(grep -c '^replace' "$d/go.mod") staging replaces; commit hack/k8sbin/go.mod and go.sum"
}

# CoreDNS at the version this kubeadm deploys (its constants), for hack/corednsbin's main.go
coredns_version() {
  local dir
  dir=$(cd / && go mod download -json "k8s.io/kubernetes@$K8S" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
  sed -n 's/^[[:space:]]*CoreDNSVersion = "\(v[0-9.]*\)"$/\1/p' "$dir/cmd/kubeadm/app/constants/constants.go"
}

gen_coredns_mod() {
  local d=$HACK/corednsbin v gomod
  v=$(coredns_version)
  [ -n "$v" ] || { echo "cannot read CoreDNSVersion from kubeadm $K8S" >&2; exit 1; }
  echo "generating $d/go.mod for github.com/coredns/coredns $v (the CoreDNS of kubeadm $K8S)"
  gomod=$(cd / && go mod download -json "github.com/coredns/coredns@$v" \
          | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')
  { echo "module example.invalid/corednsbin"; echo; grep -E '^go ' "$gomod"; } > "$d/go.mod"
  rm -f "$d/go.sum"
  (cd "$d" && go get "github.com/coredns/coredns@$v" && go mod tidy)
}

# The Go build cache shares a compiled package only if its module version and those of all its
# dependencies are the same, so a module both k8sbin and corednsbin compile (client-go,
# golang.org/x/net, gRPC, ...) must be at one version in both: the higher of the two, raised in
# the other module (CoreDNS asks for newer golang.org/x/* than Kubernetes pins). Not
# github.com/coredns/caddy: kubeadm's Corefile migration is written against its v1.1.1, CoreDNS
# needs a newer one, and no package compiled in both depends on it.
compiled_modules() { # DIR PACKAGES...: "path version" of the modules the build compiles
  local d=$1; shift
  (cd "$d" && go list -deps -tags "$TAGS" -f '{{with .Module}}{{if not .Main}}{{.Path}} {{.Version}}{{end}}{{end}}' "$@" | sort -u)
}
align_mods() {
  local k=$HACK/k8sbin c=$HACK/corednsbin i up
  for i in 1 2 3; do
    # "k8s|coredns path@version": the side whose version is lower and the version to raise it to
    # shellcheck disable=SC2046
    up=$(python3 - <(compiled_modules "$k" $(for t in $K8S_TOOLS; do echo "k8s.io/kubernetes/cmd/$t"; done)) \
                   <(compiled_modules "$c" .) <<'PY'
import sys
def key(v):  # semver order of a Go module version (pseudo-versions are prereleases)
    core, _, pre = v.split("+")[0][1:].partition("-")
    ids = tuple((0, int(x), "") if x.isdigit() else (1, 0, x) for x in pre.split(".")) if pre else ()
    return (tuple(int(x) for x in core.split(".")), 0 if pre else 1, ids)
k, c = (dict(l.split() for l in open(f) if l.strip()) for f in sys.argv[1:3])
for m in sorted(k.keys() & c.keys() - {"github.com/coredns/caddy"}):
    if k[m] != c[m]:
        print(("k8s " + m + "@" + c[m]) if key(k[m]) < key(c[m]) else ("coredns " + m + "@" + k[m]))
PY
)
    [ -n "$up" ] || { echo "  k8sbin and corednsbin agree on every module both compile"; return 0; }
    echo "  aligning (pass $i):"; echo "$up" | sed 's/^/    raise in /'
    # shellcheck disable=SC2046
    if echo "$up" | grep -q '^k8s '; then
      (cd "$k" && go get $(echo "$up" | sed -n 's/^k8s //p') && go mod tidy)
      # tidy marks the module of the tools indirect (nothing imports it); keep it the pin it is
      sed -i "s|^require k8s.io/kubernetes $K8S // indirect\$|require k8s.io/kubernetes $K8S|" "$k/go.mod"
    fi
    # shellcheck disable=SC2046
    if echo "$up" | grep -q '^coredns '; then (cd "$c" && go get $(echo "$up" | sed -n 's/^coredns //p') && go mod tidy); fi
  done
  echo "k8sbin and corednsbin still disagree after 3 passes" >&2; exit 1
}

gen_etcd_mod() {
  local d=$HACK/etcdbin
  mkdir -p "$d"
  echo "generating $d/go.mod for go.etcd.io/etcd/server/v3 $ETCD_VERSION"
  local gomod
  gomod=$(cd / && go mod download -json "go.etcd.io/etcd/server/v3@$ETCD_VERSION" \
          | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')
  { echo "module example.invalid/etcdbin"; echo; grep -E '^go ' "$gomod"; } > "$d/go.mod"
  rm -f "$d/go.sum"
  (cd "$d" && go get -tool "go.etcd.io/etcd/server/v3@$ETCD_VERSION")
  echo "  commit hack/etcdbin/go.mod and go.sum"
}

mod_pins() { # dir module version -> 0 if go.mod requires exactly that version
  [ -f "$1/go.mod" ] && [ -f "$1/go.sum" ] && grep -qE "^[[:space:]]*(require )?$2 $3( |$)" "$1/go.mod"
}

need_k8s=0; need_etcd=0
for c in "${want[@]}"; do
  [ -x "$(path_of "$c")" ] && continue
  case $c in kube-*|kubectl) need_k8s=1 ;; etcd) need_etcd=1 ;; esac
done
if [ $regen = 1 ] || { [ $need_k8s = 1 ] && ! mod_pins "$HACK/k8sbin" k8s.io/kubernetes "$K8S"; }; then
  gen_k8s_mod
  gen_coredns_mod
  align_mods
  echo "  commit hack/k8sbin/go.{mod,sum} and hack/corednsbin/go.{mod,sum}"
fi
if [ $regen = 1 ] || { [ $need_etcd = 1 ] && ! mod_pins "$HACK/etcdbin" go.etcd.io/etcd/server/v3 "$ETCD_VERSION"; }; then
  gen_etcd_mod
fi

K8S_LDFLAGS="-s -w -X k8s.io/component-base/version.gitVersion=$K8S \
 -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$K8S_MINOR \
 -X k8s.io/component-base/version.gitTreeState=clean \
 -X k8s.io/client-go/pkg/version.gitVersion=$K8S \
 -X k8s.io/client-go/pkg/version.gitMajor=1 -X k8s.io/client-go/pkg/version.gitMinor=$K8S_MINOR"
HELM_LDFLAGS="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION \
 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$K8S_MINOR \
 -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=$K8S_MINOR"

tmp=""
gb=""
# On exit (Ctrl-C included) no half-written binary stays behind; the background Go process
# gets the terminal's SIGINT itself.
trap '[ -n "$tmp" ] && rm -f "$tmp"; [ -n "$gb" ] && rm -rf "$gb"' EXIT
missing=()
for c in "${want[@]}"; do [ -x "$(path_of "$c")" ] || missing+=("$c"); done
if [ ${#missing[@]} -gt 0 ]; then
  echo "building ${missing[*]} from the Go module proxy into $BIN"
  echo "  (cold, on 2 cores: about 10 min for the control plane, 16-18 min for everything;"
  echo "  longer on a busy machine; later builds reuse $CACHE/go)"
fi
T0=$(now)
built=0
for c in "${want[@]}"; do
  out=$(path_of "$c")
  if [ -x "$out" ]; then
    echo "cached   $c -> $out"
    continue
  fi
  mkdir -p "$(dirname "$out")"
  tmp=$out.tmp.$$
  t0=$(now)
  log=$LOGS/build-$c.log
  built=$((built + 1))
  step="[$built/${#missing[@]}]"
  case $c in
    kube-apiserver|kube-controller-manager|kubectl)
      echo "$step building $c $K8S (log: $log)"
      run_logged "$c" "$log" "$HACK/k8sbin" go build -p 2 -trimpath -tags "$TAGS" \
        -ldflags "$K8S_LDFLAGS" -o "$tmp" "k8s.io/kubernetes/cmd/$c" ;;
    etcd)
      echo "$step building etcd $ETCD_VERSION (log: $log)"
      run_logged etcd "$log" "$HACK/etcdbin" go build -p 2 -trimpath -tags "$TAGS" \
        -ldflags "-s -w" -o "$tmp" go.etcd.io/etcd/server/v3 ;;
    helm)
      echo "$step building helm $HELM_VERSION (log: $log)"
      gb=$(mktemp -d)
      run_logged helm "$log" / env GOBIN="$gb" go install -p 2 -trimpath -tags "$TAGS" \
        -ldflags "$HELM_LDFLAGS" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
      mv "$gb/helm" "$tmp"; rmdir "$gb"; gb="" ;;
    kubeconform)
      echo "$step building kubeconform $KUBECONFORM_VERSION (log: $log)"
      gb=$(mktemp -d)
      run_logged kubeconform "$log" / env GOBIN="$gb" go install -p 2 -trimpath \
        -ldflags "-s -w" "github.com/yannh/kubeconform/cmd/kubeconform@$KUBECONFORM_VERSION"
      mv "$gb/kubeconform" "$tmp"; rmdir "$gb"; gb="" ;;
    kwok)
      echo "$step building kwok $KWOK_VERSION (log: $log)"
      gb=$(mktemp -d)
      run_logged kwok "$log" / env GOBIN="$gb" go install -p 2 -trimpath \
        -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
      mv "$gb/kwok" "$tmp"; rmdir "$gb"; gb="" ;;
  esac
  mv "$tmp" "$out"; tmp=""
  echo "    built $c in $(human $(($(now) - t0)))"
done

if [ "$built" -gt 0 ]; then
  echo "binaries ($built built in $(human $(($(now) - T0)))):"
else
  echo "binaries (all cached):"
fi
for c in "${want[@]}"; do echo "  $c: $(path_of "$c")"; done
