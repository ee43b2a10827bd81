# The kind "base" image, offline: kind's own images/base stage (systemd as PID 1, kind's unit files,
# entrypoint and containerd config, read from the kind module in the Go module cache into files/)
# with Debian's containerd, runc and CNI plugins in place of the ones kind builds from GitHub
# sources. hack/kind.sh builds it with --network host (apt-get needs the host's network: our
# dockerd does no NAT).
ARG BASE
FROM ${BASE}
COPY files/usr/local/bin/ /usr/local/bin/
COPY files/kind/ /kind/
COPY files/etc/ /etc/
RUN chmod 755 /kind /kind/bin /kind/bin/* /usr/local/bin/* \
 && chmod -R go-w /etc/containerd /etc/default /etc/sysctl.d /etc/systemd/system \
 && printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d \
 && apt-get update -q \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends -o Dpkg::Options::=--force-confold \
      containerd runc containernetworking-plugins \
      systemd systemd-sysv dbus conntrack iptables nftables iproute2 ethtool util-linux mount kmod \
      libseccomp2 pigz e2fsprogs bash ca-certificates curl jq procps socat \
 && apt-get clean && rm -rf /var/lib/apt/lists/* /usr/sbin/policy-rc.d \
 && find /lib/systemd/system/sysinit.target.wants/ -name systemd-tmpfiles-setup.service -delete \
 && rm -f /lib/systemd/system/multi-user.target.wants/* /etc/systemd/system/*.wants/* \
      /lib/systemd/system/local-fs.target.wants/* /lib/systemd/system/sockets.target.wants/*udev* \
      /lib/systemd/system/sockets.target.wants/*initctl* /lib/systemd/system/basic.target.wants/* \
 && echo ReadKMsg=no >>/etc/systemd/journald.conf \
 && ln -sf /usr/lib/systemd/systemd /sbin/init
# Debian's paths -> the ones kind's unit files and containerd config name
RUN ln -s /usr/bin/containerd /usr/local/bin/containerd \
 && ln -s /usr/bin/ctr /usr/local/bin/ctr \
 && ln -s /usr/bin/containerd-shim-runc-v2 /usr/local/bin/containerd-shim-runc-v2 \
 && ln -s /usr/sbin/runc /usr/local/sbin/runc \
 && mkdir -p /opt/cni && ln -s /usr/lib/cni /opt/cni/bin \
 && ctr oci spec \
    | jq '.hooks.createContainer[.hooks.createContainer | length] |= . + {"path": "/kind/bin/mount-product-files.sh"}' \
    | jq 'del(.process.rlimits)' >/etc/containerd/cri-base.json \
 && containerd --version && runc --version
RUN systemctl enable kubelet.service containerd.service undo-mount-hacks.service \
 && systemctl mask systemd-binfmt.service \
 && mkdir -p /etc/kubernetes/manifests
ENV container=docker
STOPSIGNAL SIGRTMIN+3
ENTRYPOINT ["/usr/local/bin/entrypoint", "/sbin/init"]
