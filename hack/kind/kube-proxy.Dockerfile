# kube-proxy for the offline node image: the binary built from Go modules on the Debian base,
# with nft (nftables mode) and iptables/conntrack (iptables mode, cleanup of the other mode).
# iptables-wrapper picks the legacy or nft backend the way kind and upstream's image do.
ARG BASE
FROM ${BASE}
RUN apt-get update -q \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends nftables iptables conntrack \
 && apt-get clean && rm -rf /var/lib/apt/lists/*
COPY kube-proxy /usr/local/bin/kube-proxy
COPY iptables-wrapper /usr/sbin/iptables-wrapper
RUN for t in iptables ip6tables; do \
      update-alternatives --install /usr/sbin/$t $t /usr/sbin/iptables-wrapper 100 \
        --slave /usr/sbin/$t-restore $t-restore /usr/sbin/iptables-wrapper \
        --slave /usr/sbin/$t-save $t-save /usr/sbin/iptables-wrapper \
      && update-alternatives --set $t /usr/sbin/iptables-wrapper; done
