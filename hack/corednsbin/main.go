// Command coredns is the CoreDNS of our offline kind node image (hack/kind.sh): CoreDNS's own
// server (coremain) with only the plugins the cluster's Corefile uses, instead of CoreDNS's
// full set of 60 — the cloud back ends (route53, azure, clouddns), etcd, dnstap, geoip,
// tracing and the rest took most of a cold build.
//
// How CoreDNS assembles itself: every plugin package registers its directive in an init()
// (plugin.Register), so importing a package is what puts a plugin in the binary; the order in
// which plugins handle a query is CoreDNS's fixed list core/dnsserver.Directives, whatever the
// order of the imports here or of the lines in a Corefile. A Corefile that names a plugin this
// binary lacks fails at start with "unknown directive".
//
// The set: the Corefile kubeadm writes (cmd/kubeadm/app/phases/addons/dns, checked at build
// time by hack/kind.sh against the kubeadm it builds) — errors, health, ready, kubernetes,
// prometheus (package metrics), forward, cache, loop, reload, loadbalance — plus CoreDNS's
// default server without a Corefile (whoami, log) and the usual edits when debugging a
// cluster's DNS (debug, hosts, rewrite). These add four small packages; everything heavy in
// this binary (client-go, gRPC, QUIC) comes with the core or the kubernetes plugin.
//
// go.mod pins the modules this build shares with the Kubernetes binaries (hack/k8sbin) at the
// same versions, so their compiled packages are Go build cache hits; both files are generated
// by `hack/build-binaries.sh --regen-modules`.
package main

import (
	// the Corefile kubeadm writes
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/forward"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/loadbalance"
	_ "github.com/coredns/coredns/plugin/loop"
	_ "github.com/coredns/coredns/plugin/metrics" // directive "prometheus"
	_ "github.com/coredns/coredns/plugin/ready"
	_ "github.com/coredns/coredns/plugin/reload"

	// CoreDNS's default server (no Corefile) and debugging
	_ "github.com/coredns/coredns/plugin/debug"
	_ "github.com/coredns/coredns/plugin/hosts"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/rewrite"
	_ "github.com/coredns/coredns/plugin/whoami"

	"github.com/coredns/coredns/coremain"
)

func main() {
	coremain.Run()
}
