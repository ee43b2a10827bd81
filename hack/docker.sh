#!/usr/bin/env bash
# A Docker engine for the kind cluster and the image builds, on a machine that may have none.
#
#   hack/docker.sh start    use the Docker daemon that already answers on the default socket, or
#                           install Debian's docker.io (if missing) and start OUR dockerd with our own
#                           config (below); waits until it answers
#   hack/docker.sh stop     stop our dockerd (never someone else's) and its containerd; delete the
#                           bridges it leaves in our ranges; check that no route of ours is left
#   hack/docker.sh status   which daemon answers, ours or not, and what it holds
#   hack/docker.sh env      `export` lines for the docker CLI (DOCKER_BUILDKIT=0 with our daemon)
#
# Our daemon (files under ${KSG_CACHE:-~/.cache/kube-secgroups}/docker: daemon.json, data/,
# dockerd.pid, dockerd.log; nothing in /etc/docker is read or written):
#   * addresses inside 100.64.0.0/10 and outside the netns lab's blackholed 100.64.0.0/12:
#     docker0 100.88.0.1/24, networks from 100.89.0.0/16 (kind's network: 100.90.0.0/24,
#     made by hack/kind.sh); never Docker's 172.17/16 defaults;
#   * "iptables": false and "ip-forward": false: dockerd adds no chain, NAT rule or FORWARD
#     policy to the root netns and leaves the forwarding sysctl alone, so the lab's routes and
#     blackholes are untouched. The price: containers have no NAT to the outside, so builds that
#     download (apt, pip) use --network host, and a kind node refuses traffic for the outside
#     itself (hack/kind/ksg-podnet);
#   * a runc wrapper as the default runtime when this machine's capability bounding set lacks
#     CAP_SYS_RESOURCE (some VMs): runc would fail every --privileged container ("unable to apply
#     caps: operation not permitted"), and kind's nodes are privileged containers. The wrapper
#     removes that one capability from the container's spec.
#
# Environment: KSG_CACHE (the project cache), KSG_DOCKER_REQUIRE_OWN=1 (fail instead of using
# another daemon that already answers).
set -euo pipefail
# shellcheck disable=SC2034  # read by lib/common.sh
TAG=docker
# shellcheck source=lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

D=$KSG_CACHE/docker
LOG_DIR=$D/logs
CONFIG=$D/daemon.json
PIDFILE=$D/dockerd.pid
WRAPPER=$D/runc-nosysres
DOCKER_BIP=100.88.0.1/24
DOCKER_POOL=100.89.0.0/16
# Every address our daemon and kind use is in 100.88.0.0/13 (100.88.0.0 - 100.95.255.255).
OUR_RANGE_RE='^100\.(8[89]|9[0-5])\.'

our_pid() { # the PID of OUR dockerd, if it runs
  local pid
  pid=$(cat "$PIDFILE" 2>/dev/null) || return 1
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "--config-file $CONFIG" && echo "$pid"
}
answers() { timeout 10 docker info >/dev/null 2>&1; }

lacks_sys_resource() { # bit 24 of the capability bounding set
  local bnd
  bnd=$(awk '/^CapBnd:/{print $2}' /proc/self/status)
  [ $(((16#$bnd >> 24) & 1)) = 0 ]
}

write_config() {
  mkdir -p "$D/data" "$LOG_DIR"
  local runtime_args=()
  if lacks_sys_resource; then
    # create/run name the bundle (its config.json is the container's spec); exec names a process
    # spec file. Both are rewritten without CAP_SYS_RESOURCE, then the real runc runs.
    cat >"$WRAPPER" <<'WRAP'
#!/bin/bash
# runc without CAP_SYS_RESOURCE (written by hack/docker.sh: this machine's bounding set lacks it)
drop() { # FILE JQ-PATH
  [ -f "$1" ] || return 0
  /usr/bin/jq "if $2 then $2 |= with_entries(.value |= (if type == \"array\" then map(select(. != \"CAP_SYS_RESOURCE\")) else . end)) else . end" \
    "$1" >"$1.ksg.$$" && mv "$1.ksg.$$" "$1"
}
a=("$@")
for ((i = 0; i < ${#a[@]}; i++)); do
  case "${a[i]}" in
    --bundle|-b) drop "${a[i+1]}/config.json" .process.capabilities ;;
    --bundle=*) drop "${a[i]#--bundle=}/config.json" .process.capabilities ;;
    --process|-p) drop "${a[i+1]}" .capabilities ;;
    --process=*) drop "${a[i]#--process=}" .capabilities ;;
  esac
done
exec /usr/sbin/runc "$@"
WRAP
    chmod 755 "$WRAPPER"
    runtime_args=(--arg wrapper "$WRAPPER")
  fi
  jq -n --arg bip "$DOCKER_BIP" --arg pool "$DOCKER_POOL" --arg root "$D/data" --arg pid "$PIDFILE" \
    "${runtime_args[@]}" '{
      bip: $bip,
      "default-address-pools": [{base: $pool, size: 24}],
      ipv6: false,
      iptables: false,
      "ip-forward": false,
      "ip-masq": false,
      "data-root": $root,
      pidfile: $pid,
      "storage-driver": "overlay2",
      "log-driver": "json-file",
      "log-opts": {"max-size": "10m", "max-file": "2"}
    } + (if $ARGS.named.wrapper then
          {runtimes: {"ksg-runc": {path: $ARGS.named.wrapper}}, "default-runtime": "ksg-runc"}
         else {} end)' >"$CONFIG.tmp"
  mv "$CONFIG.tmp" "$CONFIG"
}

cmd_start() {
  local pid
  if pid=$(our_pid); then log "our dockerd runs (pid $pid)"; return 0; fi
  if [ -S /var/run/docker.sock ] && answers; then
    [ "${KSG_DOCKER_REQUIRE_OWN:-0}" = 1 ] && die "another Docker daemon answers on /var/run/docker.sock; stop it or unset KSG_DOCKER_REQUIRE_OWN"
    log "using the Docker daemon that already runs ($(docker version -f '{{.Server.Version}}' 2>/dev/null), root $(docker info -f '{{.DockerRootDir}}' 2>/dev/null))"
    return 0
  fi
  need_root "starting dockerd"
  step "docker.io (Debian)"
  mkdir -p "$LOG_DIR"
  apt_install docker.io jq iproute2 ca-certificates
  step_done "$(dpkg-query -W -f '${Version}' docker.io)"
  step "dockerd"
  write_config
  # a dead dockerd may have left its pid file; dockerd refuses to start over a live one only
  rm -f "$PIDFILE"
  setsid nohup dockerd --config-file "$CONFIG" >>"$D/dockerd.log" 2>&1 </dev/null &
  for _ in $(seq 120); do   # deadline 60 s
    if answers && our_pid >/dev/null; then break; fi
    sleep 0.5
  done
  pid=$(our_pid) || { tail -n 20 "$D/dockerd.log" >&2; die "dockerd did not come up in 60 s (log $D/dockerd.log)"; }
  [ "$(docker info -f '{{.DockerRootDir}}')" = "$D/data" ] || die "a daemon answers, but not with our data root"
  step_done "pid $pid, $(docker version -f 'server {{.Server.Version}}' 2>/dev/null)$( [ -x "$WRAPPER" ] && lacks_sys_resource && echo ', runc without CAP_SYS_RESOURCE')"
}

cmd_stop() {
  local pid kids c dev left m
  if pid=$(our_pid); then
    need_root "stopping dockerd"
    step "stop dockerd"
    local n
    n=$(docker ps -q 2>/dev/null | wc -l)
    [ "$n" = 0 ] || log "$n running container(s): dockerd stops them as it exits"
    kids=$(pgrep -P "$pid" || true)   # its containerd
    kill -TERM "$pid"
    for _ in $(seq 90); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    if kill -0 "$pid" 2>/dev/null; then log "dockerd $pid still runs after 45 s: SIGKILL"; kill -KILL "$pid"; fi
    for c in $kids; do
      for _ in $(seq 20); do kill -0 "$c" 2>/dev/null || break; sleep 0.5; done
      if kill -0 "$c" 2>/dev/null && grep -q containerd "/proc/$c/cmdline" 2>/dev/null; then kill -TERM "$c"; fi
    done
    rm -f "$PIDFILE"
    step_done "pid $pid"
  else
    log "our dockerd does not run"
  fi
  # dockerd leaves its bridges (docker0, one per network) behind: delete those holding our addresses
  for dev in $(ip -o -4 addr show 2>/dev/null | awk '{print $2, $4}' | grep -E " ${OUR_RANGE_RE#^}" | awk '{print $1}' | sort -u); do
    if [ -d "/sys/class/net/$dev/bridge" ]; then ip link del "$dev" && log "deleted bridge $dev"; fi
  done
  # mounts dockerd may have left (a killed daemon): overlay and shm mounts under our data root
  for m in $(awk -v r="$D/data" 'index($5, r) == 1 {print $5}' /proc/self/mountinfo | sort -r); do
    umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || log "cannot unmount $m"
  done
  left=$(ip -4 route show 2>/dev/null | grep -E "$OUR_RANGE_RE" || true)
  [ -z "$left" ] || die "routes left in 100.88.0.0/13: $left"
  log "no dockerd of ours, no bridge or route in 100.88.0.0/13"
  summary
}

cmd_status() {
  local pid
  if pid=$(our_pid); then
    echo "dockerd: ours, pid $pid, $(docker version -f 'server {{.Server.Version}}' 2>/dev/null), config $CONFIG, log $D/dockerd.log"
    echo "containers: $(docker ps -q | wc -l) running; networks: $(docker network ls --format '{{.Name}}' | tr '\n' ' ')"
    echo "data root: $(du -sh "$D/data" 2>/dev/null | cut -f1)"
  elif answers; then
    echo "dockerd: not ours, answers on the default socket (root $(docker info -f '{{.DockerRootDir}}'))"
  else
    echo "dockerd: none"
  fi
  echo "routes in 100.88.0.0/13: $(ip -4 route show | grep -cE "$OUR_RANGE_RE" || true)"
}

cmd_env() {
  echo "export DOCKER_BUILDKIT=0"
}

case ${1:-} in
  start) cmd_start; summary ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  env) cmd_env ;;
  is-ours) our_pid >/dev/null ;;
  *) sed -n '2,30p' "$0"; exit 2 ;;
esac
