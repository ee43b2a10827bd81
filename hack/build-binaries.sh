#!/usr/bin/env bash
# Build the lab's control-plane binaries from the Go module proxy, pinned in hack/versions.env,
# into a cache outside the repository:
#   ${KSG_CACHE:-$HOME/.cache/kube-secgroups}/bin/kubernetes-<v>/{kube-apiserver,kube-controller-manager,kubectl}
#   ${KSG_CACHE:-...}/bin/etcd-<v>/etcd
#   ${KSG_CACHE:-...}/bin/helm-<v>/helm
#   ${KSG_CACHE:-...}/bin/kubeconform-<v>/kubeconform   (schema check of the chart's manifests)
# GOMODCACHE and GOCACHE live under the same cache dir, so CI can keep one directory.
# A binary that already exists for its pinned version is not rebuilt (no Go invocation at all).
#
# Usage: hack/build-binaries.sh [--regen-modules] [--print-paths] [component ...]
#   components: kube-apiserver kube-controller-manager kubectl etcd helm kubeconform (default: all)
#   --regen-modules  regenerate hack/k8sbin/go.{mod,sum} and hack/etcdbin/go.{mod,sum} from the
#                    pinned tags (k8s staging replaces generated from the tag's own go.mod)
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
TAGS=selinux,notest

regen=0; print_only=0; want=()
for a in "$@"; do
  case $a in
    --regen-modules) regen=1 ;;
    --print-paths) print_only=1 ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    kube-apiserver|kube-controller-manager|kubectl|etcd|helm|kubeconform) want+=("$a") ;;
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
  esac
}

if [ $print_only = 1 ]; then
  for c in "${want[@]}"; do echo "$(path_of "$c")"; done
  exit 0
fi

mkdir -p "$BIN" "$GOMODCACHE" "$GOCACHE"
# One build at a time per cache (parallel test sessions, CI steps).
exec 9>"$CACHE/build.lock"
flock 9

now() { date +%s; }
step() { printf '%s' "$*"; }

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
  (cd "$d" && go get -tool "k8s.io/kubernetes/cmd/kube-apiserver@$K8S" \
      "k8s.io/kubernetes/cmd/kube-controller-manager@$K8S" "k8s.io/kubernetes/cmd/kubectl@$K8S")
  echo "  $(grep -c '^replace' "$d/go.mod") staging replaces; commit hack/k8sbin/go.mod and go.sum"
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
trap '[ -n "$tmp" ] && rm -f "$tmp"' EXIT
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
  case $c in
    kube-apiserver|kube-controller-manager|kubectl)
      step "building $c $K8S ..."
      (cd "$HACK/k8sbin" && go build -p 2 -trimpath -tags "$TAGS" -ldflags "$K8S_LDFLAGS" \
          -o "$tmp" "k8s.io/kubernetes/cmd/$c") ;;
    etcd)
      step "building etcd $ETCD_VERSION ..."
      (cd "$HACK/etcdbin" && go build -p 2 -trimpath -tags "$TAGS" -ldflags "-s -w" \
          -o "$tmp" go.etcd.io/etcd/server/v3) ;;
    helm)
      step "building helm $HELM_VERSION ..."
      gb=$(mktemp -d)
      (cd / && GOBIN=$gb go install -p 2 -trimpath -tags "$TAGS" -ldflags "$HELM_LDFLAGS" \
          "helm.sh/helm/v3/cmd/helm@$HELM_VERSION")
      mv "$gb/helm" "$tmp"; rmdir "$gb" ;;
    kubeconform)
      step "building kubeconform $KUBECONFORM_VERSION ..."
      gb=$(mktemp -d)
      (cd / && GOBIN=$gb go install -p 2 -trimpath -ldflags "-s -w" \
          "github.com/yannh/kubeconform/cmd/kubeconform@$KUBECONFORM_VERSION")
      mv "$gb/kubeconform" "$tmp"; rmdir "$gb" ;;
  esac
  mv "$tmp" "$out"; tmp=""
  echo " $(( $(now) - t0 )) s"
  built=$((built + 1))
done

echo "binaries ($built built):"
for c in "${want[@]}"; do echo "  $c: $(path_of "$c")"; done
