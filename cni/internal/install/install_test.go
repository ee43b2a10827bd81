package install

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The offline kind nodes' configuration (hack/kind/ksg-podnet), as the node holds it.
const ksgPodnet = `{
  "cniVersion": "0.3.1",
  "name": "ksg-podnet",
  "plugins": [
    {"type": "ptp", "ipMasq": false, "mtu": 1500,
     "ipam": {"type": "host-local", "ranges": [[{"subnet": "100.91.1.0/24"}]]}},
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}`

func entry() map[string]any {
	return map[string]any{"socket": "/var/run/secgroups/cni.sock", "timeoutSeconds": 10}
}

func types(t *testing.T, conflist []byte) []string {
	t.Helper()
	var doc struct {
		Name    string           `json:"name"`
		Version string           `json:"cniVersion"`
		Plugins []map[string]any `json:"plugins"`
	}
	if err := json.Unmarshal(conflist, &doc); err != nil {
		t.Fatal(err)
	}
	out := []string{doc.Name, doc.Version}
	for _, p := range doc.Plugins {
		out = append(out, p["type"].(string))
	}
	return out
}

func TestDeriveAppendsOurEntryToTheChain(t *testing.T) {
	got, err := Derive([]byte(ksgPodnet), entry())
	if err != nil {
		t.Fatal(err)
	}
	want := "ksg-podnet 0.3.1 ptp portmap secgroups-cni"
	if s := strings.Join(types(t, got), " "); s != want {
		t.Fatalf("got %q, want %q", s, want)
	}
	// Derived again from its own output: still one entry of ours (a hand-edited primary).
	again, _ := Derive(got, entry())
	if s := strings.Join(types(t, again), " "); s != want {
		t.Fatalf("re-derived: got %q", s)
	}
}

func TestDeriveMakesASinglePluginConfigurationAList(t *testing.T) {
	single := `{"cniVersion": "0.4.0", "name": "net", "type": "bridge", "bridge": "cni0"}`
	got, err := Derive([]byte(single), entry())
	if err != nil {
		t.Fatal(err)
	}
	if s := strings.Join(types(t, got), " "); s != "net 0.4.0 bridge secgroups-cni" {
		t.Fatalf("got %q", s)
	}
	if strings.Count(string(got), `"bridge": "cni0"`) != 1 {
		t.Fatalf("the plugin's own keys were not kept: %s", got)
	}
}

func write(t *testing.T, dir, name, body string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestPrimaryIsTheFirstUsableFileByName(t *testing.T) {
	dir := t.TempDir()
	write(t, dir, "99-loopback.conf", `{"cniVersion":"0.3.1","name":"lo","type":"loopback"}`)
	write(t, dir, "10-ksg-podnet.conflist", ksgPodnet)
	write(t, dir, "05-broken.conflist", `{not json`)
	write(t, dir, "07-empty.conflist", `{"name":"x","plugins":[]}`)
	write(t, dir, "README", `{"type":"ptp"}`)
	write(t, dir, DefaultConfName, ksgPodnet) // ours: skipped
	name, _, err := Primary(dir, DefaultConfName)
	if err != nil || name != "10-ksg-podnet.conflist" {
		t.Fatalf("got %q, %v", name, err)
	}
	if _, _, err := Primary(t.TempDir(), DefaultConfName); err != ErrNoPrimary {
		t.Fatalf("empty dir: %v", err)
	}
}

func TestOnceInstallsFollowsThePrimaryAndUninstallRemovesEverything(t *testing.T) {
	conf, bin := t.TempDir(), t.TempDir()
	self := filepath.Join(t.TempDir(), "plugin")
	write(t, filepath.Dir(self), "plugin", "#!binary")
	opts := &Options{ConfDir: conf, BinDir: bin, Binary: self, Entry: entry()}

	if err := Once(opts); err != ErrNoPrimary {
		t.Fatalf("no primary yet: %v", err)
	}
	if _, err := os.Stat(filepath.Join(bin, PluginType)); err != nil {
		t.Fatalf("the binary goes first, even without a primary: %v", err)
	}
	if _, err := os.Stat(filepath.Join(conf, DefaultConfName)); !os.IsNotExist(err) {
		t.Fatalf("no conflist without a primary: %v", err)
	}

	write(t, conf, "10-ksg-podnet.conflist", ksgPodnet)
	if err := Once(opts); err != nil {
		t.Fatal(err)
	}
	ours, _ := os.ReadFile(filepath.Join(conf, DefaultConfName))
	if s := strings.Join(types(t, ours), " "); s != "ksg-podnet 0.3.1 ptp portmap secgroups-cni" {
		t.Fatalf("got %q", s)
	}
	primary, _ := os.ReadFile(filepath.Join(conf, "10-ksg-podnet.conflist"))
	if string(primary) != ksgPodnet {
		t.Fatal("the primary was edited")
	}

	// The primary's writer changes it (a new podCIDR): ours follows.
	write(t, conf, "10-ksg-podnet.conflist", strings.Replace(ksgPodnet, "100.91.1.0/24", "100.91.7.0/24", 1))
	if err := Once(opts); err != nil {
		t.Fatal(err)
	}
	ours, _ = os.ReadFile(filepath.Join(conf, DefaultConfName))
	if !strings.Contains(string(ours), "100.91.7.0/24") {
		t.Fatalf("not re-derived: %s", ours)
	}

	if err := Uninstall(opts); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{filepath.Join(conf, DefaultConfName), filepath.Join(bin, PluginType)} {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Fatalf("%s left behind", p)
		}
	}
	if err := Uninstall(opts); err != nil {
		t.Fatalf("uninstall twice: %v", err)
	}
}

func TestOnceRefusesAPrimaryThatSortsFirst(t *testing.T) {
	conf := t.TempDir()
	write(t, conf, "00-aaa.conflist", ksgPodnet)
	err := Once(&Options{ConfDir: conf, BinDir: t.TempDir(), Entry: entry()})
	if err == nil || !strings.Contains(err.Error(), "sorts before") {
		t.Fatalf("got %v", err)
	}
}
