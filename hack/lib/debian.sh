# shellcheck shell=bash
# The Debian base image every image of ours starts from when no registry is reachable: a
# `debootstrap --variant=minbase` rootfs of bookworm from the host's Debian mirror, `docker
# import`ed. The rootfs tar is cached under $KSG_CACHE/debian, keyed by suite, variant, mirrors
# and this recipe; the image is tagged with the sha256 of that tar (its content), so every image
# built on it changes exactly when the rootfs does. KSG_REFRESH_BASE=1 makes a fresh rootfs
# (Debian's security updates).
# Sourced by hack/images.sh and hack/kind.sh after lib/common.sh; needs LOG_DIR set.

DEBIAN_SUITE=${DEBIAN_SUITE:-bookworm}
DEBIAN_REPO=kube-secgroups/debian

# The host's Debian mirror and security mirror, from its apt sources (deb822 or one-line).
_apt_uris() {
  grep -hE '^(URIs:|deb )' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null \
    | sed -E 's/^URIs: *//; s/^deb (\[[^]]*\] )?//; s/ .*//' || true
}
debian_mirror() {
  local u
  u=${KSG_DEBIAN_MIRROR:-$(_apt_uris | grep -v -- -security | grep -m1 debian || true)}
  echo "${u:-http://deb.debian.org/debian}"
}
debian_security_mirror() {
  local u
  u=${KSG_DEBIAN_SECURITY_MIRROR:-$(_apt_uris | grep -m1 -- -security || true)}
  echo "${u:-http://deb.debian.org/debian-security}"
}

_make_rootfs_tar() { # OUT.tar: debootstrap, apt sources for derived images, no docs or caches
  local out=$1 root mirror sec
  root=$(mktemp -d "$KSG_CACHE/debian/rootfs.XXXXXX")
  mirror=$(debian_mirror); sec=$(debian_security_mirror)
  echo "debootstrap --variant=minbase $DEBIAN_SUITE from $mirror"
  debootstrap --variant=minbase "$DEBIAN_SUITE" "$root" "$mirror" || { rm -rf --one-file-system "$root"; return 1; }
  printf 'deb %s %s main\ndeb %s %s-updates main\ndeb %s %s-security main\n' \
    "$mirror" "$DEBIAN_SUITE" "$mirror" "$DEBIAN_SUITE" "$sec" "$DEBIAN_SUITE" >"$root/etc/apt/sources.list"
  # images derived from it install packages without documentation
  printf '%s\n' 'path-exclude /usr/share/doc/*' 'path-include /usr/share/doc/*/copyright' \
    'path-exclude /usr/share/man/*' 'path-exclude /usr/share/info/*' >"$root/etc/dpkg/dpkg.cfg.d/90-nodoc"
  : >"$root/etc/resolv.conf"; echo localhost >"$root/etc/hostname"   # debootstrap copied the host's
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/var/log/*.log \
    "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/debootstrap
  tar -C "$root" --numeric-owner -cf "$out.tmp" . && mv "$out.tmp" "$out"
  rm -rf --one-file-system "$root"
}

# debian_rootfs_tar: the cached tar's path (built if missing). With & it can run in the
# background while other work goes on (hack/kind.sh overlaps it with the Go builds).
debian_rootfs_path() {
  local key
  key=$(printf '%s\n' "$DEBIAN_SUITE minbase" "$(debian_mirror)" "$(debian_security_mirror)" \
        "$(declare -f _make_rootfs_tar)" | hash16)
  echo "$KSG_CACHE/debian/$DEBIAN_SUITE-minbase-$key.tar"
}
debian_rootfs_build() {
  local tar
  tar=$(debian_rootfs_path)
  [ "${KSG_REFRESH_BASE:-0}" = 1 ] && rm -f "$tar"
  [ -s "$tar" ] && return 0
  mkdir -p "$KSG_CACHE/debian"
  # one debootstrap at a time (hack/images.sh and hack/kind.sh may both need it)
  local fd
  exec {fd}>"$KSG_CACHE/debian/build.lock"
  flock "$fd"
  if [ ! -s "$tar" ]; then apt_install debootstrap && _make_rootfs_tar "$tar"; fi
  exec {fd}>&-
}

# ensure_debian_image: sets DEBIAN_IMAGE to kube-secgroups/debian:<suite>-<content hash>, importing
# the rootfs tar (built first if missing) when no such image exists.
ensure_debian_image() {
  local tar h
  mkdir -p "$LOG_DIR"
  debian_rootfs_build >>"$LOG_DIR/debootstrap.log" 2>&1 \
    || { tail -n 30 "$LOG_DIR/debootstrap.log" >&2; die "debootstrap failed (log $LOG_DIR/debootstrap.log)"; }
  tar=$(debian_rootfs_path)
  # the tar's hash, kept beside it (hashing 100 MB costs seconds on a busy machine)
  [ "$tar.sha256" -nt "$tar" ] || sha256sum "$tar" | cut -d' ' -f1 >"$tar.sha256"
  h=$(cut -c1-12 "$tar.sha256")
  DEBIAN_IMAGE=$DEBIAN_REPO:$DEBIAN_SUITE-$h
  if ! docker image inspect "$DEBIAN_IMAGE" >/dev/null 2>&1; then
    docker import --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
      --change 'ENV LANG=C.UTF-8' --change 'CMD ["bash"]' "$tar" "$DEBIAN_IMAGE" >/dev/null
  fi
  docker tag "$DEBIAN_IMAGE" "$DEBIAN_REPO:$DEBIAN_SUITE"
}
