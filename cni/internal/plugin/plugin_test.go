package plugin

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"

	"secgroups.dev/cni/internal/agent"
)

// What ptp (cniVersion 0.3.1) hands the next plugin: the host veth, the pod's eth0,
// the pod's address on eth0.
const prevResult = `{
  "cniVersion": "0.3.1",
  "interfaces": [
    {"name": "veth1a2b3c4d", "mac": "aa:bb:cc:dd:ee:01"},
    {"name": "eth0", "mac": "aa:bb:cc:dd:ee:02", "sandbox": "/var/run/netns/cni-1"}
  ],
  "ips": [
    {"version": "4", "interface": 1, "address": "100.91.1.7/24", "gateway": "100.91.1.1"},
    {"version": "6", "interface": 1, "address": "fd00:91::7/64"}
  ],
  "routes": [{"dst": "0.0.0.0/0"}],
  "dns": {}
}`

func conf(socket string, extra string) []byte {
	return []byte(fmt.Sprintf(`{"cniVersion":"0.3.1","name":"ksg-podnet","type":"secgroups-cni",
	  "socket":%q,"timeoutSeconds":1%s,"prevResult":%s}`, socket, extra, prevResult))
}

func fakeAgent(t *testing.T, reply agent.Reply) (string, chan agent.Request) {
	t.Helper()
	socket := filepath.Join(t.TempDir(), "cni.sock")
	ln, err := net.Listen("unix", socket)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	got := make(chan agent.Request, 4)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			line, _ := bufio.NewReader(c).ReadBytes('\n')
			var req agent.Request
			_ = json.Unmarshal(line, &req)
			got <- req
			body, _ := json.Marshal(reply)
			_, _ = c.Write(append(body, '\n'))
			c.Close()
		}
	}()
	return socket, got
}

const k8sArgs = "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-1;K8S_POD_UID=u-1;K8S_POD_INFRA_CONTAINER_ID=c1"

// capture runs f with stdout redirected and returns what it printed.
func capture(t *testing.T, f func() error) (string, error) {
	t.Helper()
	r, w, _ := os.Pipe()
	old := os.Stdout
	os.Stdout = w
	err := f()
	w.Close()
	os.Stdout = old
	out, _ := io.ReadAll(r)
	return string(out), err
}

func TestAddTellsTheAgentThePodAndPassesTheResultOn(t *testing.T) {
	socket, got := fakeAgent(t, agent.Reply{OK: true, State: "placeholder"})
	args := &skel.CmdArgs{ContainerID: "c1", Netns: "/var/run/netns/cni-1", IfName: "eth0",
		Args: k8sArgs, StdinData: conf(socket, "")}
	out, err := capture(t, func() error { return CmdAdd(args) })
	if err != nil {
		t.Fatal(err)
	}
	req := <-got
	if req.Command != "ADD" || req.Namespace != "shop" || req.Name != "web-1" || req.UID != "u-1" ||
		req.HostInterface != "veth1a2b3c4d" || strings.Join(req.IPs, ",") != "100.91.1.7/24,fd00:91::7/64" {
		t.Fatalf("request %+v", req)
	}
	if !strings.Contains(out, `"100.91.1.7/24"`) || !strings.Contains(out, `"cniVersion": "0.3.1"`) {
		t.Fatalf("prevResult not passed on in the config's version: %s", out)
	}
}

func TestAddFailsReadablyWithoutAnAgent(t *testing.T) {
	args := &skel.CmdArgs{ContainerID: "c1", Args: k8sArgs,
		StdinData: conf(filepath.Join(t.TempDir(), "absent.sock"), "")}
	_, err := capture(t, func() error { return CmdAdd(args) })
	e, ok := err.(*types.Error)
	if !ok || e.Code != types.ErrTryAgainLater {
		t.Fatalf("got %#v", err)
	}
	for _, want := range []string{"shop/web-1", "fail closed", "absent.sock", "agent"} {
		if !strings.Contains(e.Error(), want) {
			t.Fatalf("%q missing from %q", want, e.Error())
		}
	}
}

func TestAddReportsTheAgentsRefusal(t *testing.T) {
	socket, _ := fakeAgent(t, agent.Reply{OK: false, Error: "the agent is not ready: WaitingForInitialList"})
	args := &skel.CmdArgs{ContainerID: "c1", Args: k8sArgs, StdinData: conf(socket, "")}
	_, err := capture(t, func() error { return CmdAdd(args) })
	if err == nil || !strings.Contains(err.Error(), "WaitingForInitialList") {
		t.Fatalf("got %v", err)
	}
}

func TestAddPassesExemptNamespacesAndNonPodsThrough(t *testing.T) {
	absent := filepath.Join(t.TempDir(), "absent.sock")
	for _, c := range []struct{ args, extra string }{
		{k8sArgs, `,"exemptNamespaces":["shop"]`},
		{"IgnoreUnknown=1", ""},
	} {
		args := &skel.CmdArgs{ContainerID: "c1", Args: c.args, StdinData: conf(absent, c.extra)}
		if _, err := capture(t, func() error { return CmdAdd(args) }); err != nil {
			t.Fatalf("%s: %v", c.args, err)
		}
	}
}

func TestAddNeedsAPreviousResult(t *testing.T) {
	args := &skel.CmdArgs{ContainerID: "c1", Args: k8sArgs,
		StdinData: []byte(`{"cniVersion":"0.3.1","name":"n","type":"secgroups-cni"}`)}
	_, err := capture(t, func() error { return CmdAdd(args) })
	if err == nil || !strings.Contains(err.Error(), "chained after") {
		t.Fatalf("got %v", err)
	}
}

func TestDelNeverFailsOnTheAgentsAccount(t *testing.T) {
	args := &skel.CmdArgs{ContainerID: "c1", Args: k8sArgs,
		StdinData: conf(filepath.Join(t.TempDir(), "absent.sock"), "")}
	if err := CmdDel(args); err != nil {
		t.Fatal(err)
	}
	socket, got := fakeAgent(t, agent.Reply{OK: true})
	args.StdinData = conf(socket, "")
	if err := CmdDel(args); err != nil {
		t.Fatal(err)
	}
	if req := <-got; req.Command != "DEL" || req.ContainerID != "c1" {
		t.Fatalf("request %+v", req)
	}
}
