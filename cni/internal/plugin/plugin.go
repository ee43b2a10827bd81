// Package plugin is the chained CNI plugin `secgroups-cni` (docs/cni.md).
//
// It runs after the plugin that gives the pod its interface and addresses (ptp,
// bridge, …), reads them from prevResult, and asks the node agent to put the pod
// behind its policy — or behind the fail-closed placeholder until that policy
// arrives — before the runtime starts the pod's containers. It changes nothing in the
// result. ADD fails, with a message meant for `kubectl describe pod`, when the agent
// does not answer in time: the runtime then tears the sandbox down and the kubelet
// retries, so a pod never starts networking unprotected. DEL tells the agent the
// pod's addresses are released; it never fails on the agent's account (a sandbox must
// always be removable).
package plugin

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"

	"secgroups.dev/cni/internal/agent"
)

// Type is the plugin's name in a conflist ("type") and its binary's name.
const Type = "secgroups-cni"

// Defaults of the plugin's configuration keys.
const (
	DefaultSocket  = "/var/run/secgroups/cni.sock"
	DefaultTimeout = 10 * time.Second
	DelTimeout     = 2 * time.Second
)

// NetConf is our entry of the conflist.
type NetConf struct {
	types.NetConf
	// Socket is the agent's CNI socket on the host.
	Socket string `json:"socket,omitempty"`
	// TimeoutSeconds bounds an ADD: connecting (while the agent is away) and waiting
	// for the pod to be safe.
	TimeoutSeconds float64 `json:"timeoutSeconds,omitempty"`
	// ExemptNamespaces are passed through without asking the agent (their pods start
	// while the agent is down; they get no placeholder). Empty by default.
	ExemptNamespaces []string `json:"exemptNamespaces,omitempty"`
}

// K8sArgs are the CNI_ARGS a Kubernetes runtime passes (containerd, CRI-O).
type K8sArgs struct {
	types.CommonArgs
	K8S_POD_NAMESPACE          types.UnmarshallableString //nolint:revive,stylecheck // the runtime's names
	K8S_POD_NAME               types.UnmarshallableString //nolint:revive,stylecheck
	K8S_POD_UID                types.UnmarshallableString //nolint:revive,stylecheck
	K8S_POD_INFRA_CONTAINER_ID types.UnmarshallableString //nolint:revive,stylecheck
}

// ParseConf reads the plugin's configuration, prevResult included.
func ParseConf(data []byte) (*NetConf, error) {
	conf := &NetConf{}
	if err := json.Unmarshal(data, conf); err != nil {
		return nil, fmt.Errorf("%s: cannot parse the network configuration: %w", Type, err)
	}
	if err := version.ParsePrevResult(&conf.NetConf); err != nil {
		return nil, fmt.Errorf("%s: cannot parse prevResult: %w", Type, err)
	}
	if conf.Socket == "" {
		conf.Socket = DefaultSocket
	}
	if conf.TimeoutSeconds <= 0 {
		conf.TimeoutSeconds = DefaultTimeout.Seconds()
	}
	return conf, nil
}

func (c *NetConf) timeout() time.Duration {
	return time.Duration(c.TimeoutSeconds * float64(time.Second))
}

func (c *NetConf) exempt(namespace string) bool {
	for _, ns := range c.ExemptNamespaces {
		if ns == namespace {
			return true
		}
	}
	return false
}

func podArgs(args string) (*K8sArgs, error) {
	k := &K8sArgs{}
	if err := types.LoadArgs(args, k); err != nil {
		return nil, fmt.Errorf("%s: bad CNI_ARGS: %w", Type, err)
	}
	return k, nil
}

// Addresses returns the pod's IPs (CIDR notation) and the host side of its interface
// from a previous result: IPs on the sandbox's interfaces (or with no interface given),
// and the one host-side interface if there is exactly one.
func Addresses(res *current.Result) (ips []string, hostIface string) {
	hosts := []string{}
	for _, ifc := range res.Interfaces {
		if ifc.Sandbox == "" {
			hosts = append(hosts, ifc.Name)
		}
	}
	for _, ip := range res.IPs {
		if ip.Interface != nil && *ip.Interface >= 0 && *ip.Interface < len(res.Interfaces) &&
			res.Interfaces[*ip.Interface].Sandbox == "" {
			continue // an address on the host's side of the link (ptp's gateway)
		}
		ips = append(ips, ip.Address.String())
	}
	if len(hosts) == 1 {
		hostIface = hosts[0]
	}
	return ips, hostIface
}

// CmdAdd: ask the agent, return prevResult unchanged once the pod is safe.
func CmdAdd(args *skel.CmdArgs) error {
	conf, err := ParseConf(args.StdinData)
	if err != nil {
		return err
	}
	if conf.PrevResult == nil {
		return types.NewError(types.ErrInvalidNetworkConfig,
			Type+" must be chained after a plugin that gives the pod its addresses (no prevResult)", "")
	}
	res, err := current.NewResultFromResult(conf.PrevResult)
	if err != nil {
		return fmt.Errorf("%s: cannot read prevResult: %w", Type, err)
	}
	k8s, err := podArgs(args.Args)
	if err != nil {
		return err
	}
	namespace, name := string(k8s.K8S_POD_NAMESPACE), string(k8s.K8S_POD_NAME)
	if namespace == "" || conf.exempt(namespace) {
		return types.PrintResult(res, conf.CNIVersion) // not a pod, or exempt: nothing to hold
	}
	ips, host := Addresses(res)
	ctx, cancel := context.WithTimeout(context.Background(), conf.timeout())
	defer cancel()
	reply, err := agent.Call(ctx, conf.Socket, agent.Request{
		Command:       "ADD",
		ContainerID:   args.ContainerID,
		Netns:         args.Netns,
		IfName:        args.IfName,
		Namespace:     namespace,
		Name:          name,
		UID:           string(k8s.K8S_POD_UID),
		IPs:           ips,
		HostInterface: host,
	})
	if err != nil {
		return types.NewError(types.ErrTryAgainLater, fmt.Sprintf(
			"kube-secgroups: the node agent did not answer, so pod %s/%s gets no network "+
				"yet (fail closed; the kubelet retries). Is the secgroups agent running on "+
				"this node? %v", namespace, name, err), "")
	}
	if !reply.OK {
		return types.NewError(types.ErrTryAgainLater, fmt.Sprintf(
			"kube-secgroups: pod %s/%s gets no network yet (fail closed; the kubelet "+
				"retries): %s", namespace, name, reply.Error), reply.Detail)
	}
	return types.PrintResult(res, conf.CNIVersion)
}

// CmdDel: tell the agent; never fail because of it (DEL must always succeed).
func CmdDel(args *skel.CmdArgs) error {
	conf, err := ParseConf(args.StdinData)
	if err != nil {
		return err
	}
	k8s, _ := podArgs(args.Args)
	req := agent.Request{Command: "DEL", ContainerID: args.ContainerID, Netns: args.Netns, IfName: args.IfName}
	if k8s != nil {
		req.Namespace, req.Name, req.UID = string(k8s.K8S_POD_NAMESPACE), string(k8s.K8S_POD_NAME), string(k8s.K8S_POD_UID)
		if req.Namespace != "" && conf.exempt(req.Namespace) {
			return nil
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), DelTimeout)
	defer cancel()
	if reply, err := agent.Call(ctx, conf.Socket, req); err != nil || !reply.OK {
		// The agent replaces a stale binding when the address is given out again
		// (docs/cni.md, "DEL"): logging is all that is left to do.
		msg := fmt.Sprint(err)
		if reply != nil {
			msg = reply.Error
		}
		fmt.Fprintf(os.Stderr, "%s: DEL of %s not confirmed by the agent: %s\n", Type, args.ContainerID, msg)
	}
	return nil
}

// CmdCheck: the pod is still known to the agent and safe.
func CmdCheck(args *skel.CmdArgs) error {
	conf, err := ParseConf(args.StdinData)
	if err != nil {
		return err
	}
	if conf.PrevResult == nil {
		return types.NewError(types.ErrInvalidNetworkConfig, Type+": CHECK without prevResult", "")
	}
	res, err := current.NewResultFromResult(conf.PrevResult)
	if err != nil {
		return err
	}
	k8s, err := podArgs(args.Args)
	if err != nil {
		return err
	}
	if k8s.K8S_POD_NAMESPACE == "" || conf.exempt(string(k8s.K8S_POD_NAMESPACE)) {
		return nil
	}
	ips, _ := Addresses(res)
	ctx, cancel := context.WithTimeout(context.Background(), conf.timeout())
	defer cancel()
	reply, err := agent.Call(ctx, conf.Socket, agent.Request{
		Command: "CHECK", ContainerID: args.ContainerID, Namespace: string(k8s.K8S_POD_NAMESPACE),
		Name: string(k8s.K8S_POD_NAME), UID: string(k8s.K8S_POD_UID), IPs: ips,
	})
	if err != nil {
		return fmt.Errorf("kube-secgroups: the node agent did not answer: %w", err)
	}
	if !reply.OK {
		return fmt.Errorf("kube-secgroups: %s", reply.Error)
	}
	return nil
}

// Main runs the plugin (skel reads CNI_COMMAND and friends).
func Main(about string) {
	skel.PluginMain(CmdAdd, CmdCheck, CmdDel, version.All, about)
}
