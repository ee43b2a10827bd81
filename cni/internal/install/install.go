// Package install puts secgroups-cni into a node's CNI configuration and takes it out
// again (docs/cni.md, "Installation").
//
// The node's own network configuration (the "primary": the first .conf/.conflist the
// runtime would load, written by the cluster's network plugin) is never edited. We
// write our own conflist, named to sort before it, holding the primary's plugins
// followed by ours — the runtime loads the first file, so it runs the same chain plus
// secgroups-cni. Two reasons, both measured on kind nodes: the primary's writer
// (kindnetd, or the offline image's ksg-podnet) rewrites its file whenever it differs
// from what it wants, which would drop an entry inserted into it within seconds; and
// uninstalling is deleting one file. The copy follows the primary: `install --watch`
// re-derives it whenever the primary changes.
//
// The binary is copied first and the conflist written after, both atomically
// (temporary file + rename), so the runtime never sees a chain naming a plugin that is
// not there.
package install

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"time"
)

// PluginType is the "type" of our conflist entry and the binary's name.
const PluginType = "secgroups-cni"

// DefaultConfName sorts before the usual primaries (10-kindnet, 10-ksg-podnet,
// 10-calico, 05-cilium …).
const DefaultConfName = "00-secgroups.conflist"

// Options say where the node keeps its CNI configuration and binaries (as mounted in
// the installer's container) and what our entry holds.
type Options struct {
	ConfDir  string
	BinDir   string
	ConfName string
	// Binary is the file to copy to BinDir/secgroups-cni (the installer's own).
	Binary string
	// Entry is our conflist entry; "type" is set to PluginType.
	Entry map[string]any
	// Log receives one line per change.
	Log func(format string, args ...any)
}

// ErrNoPrimary: the node has no CNI configuration of its own yet.
var ErrNoPrimary = errors.New("no CNI network configuration to chain after")

func (o *Options) confName() string {
	if o.ConfName == "" {
		return DefaultConfName
	}
	return o.ConfName
}

func (o *Options) logf(format string, args ...any) {
	if o.Log != nil {
		o.Log(format, args...)
	}
}

// Primary is the file the runtime would load if ours were not there: the first, by
// name, of the .conf, .conflist and .json files that parse and name a plugin. Files
// we wrote are skipped.
func Primary(confDir, ours string) (string, []byte, error) {
	entries, err := os.ReadDir(confDir)
	if err != nil {
		if os.IsNotExist(err) {
			return "", nil, ErrNoPrimary
		}
		return "", nil, err
	}
	names := []string{}
	for _, e := range entries {
		ext := filepath.Ext(e.Name())
		if e.IsDir() || e.Name() == ours || (ext != ".conf" && ext != ".conflist" && ext != ".json") {
			continue
		}
		names = append(names, e.Name())
	}
	sort.Strings(names)
	for _, name := range names {
		data, err := os.ReadFile(filepath.Join(confDir, name))
		if err != nil {
			continue
		}
		var doc map[string]any
		if json.Unmarshal(data, &doc) != nil {
			continue
		}
		if plugins, ok := doc["plugins"].([]any); ok && len(plugins) > 0 {
			return name, data, nil
		}
		if t, ok := doc["type"].(string); ok && t != "" {
			return name, data, nil
		}
	}
	return "", nil, ErrNoPrimary
}

// Derive is the conflist the runtime should load: the primary's network (a list, or
// a single plugin made a list) with our entry appended — any entry of ours already
// there (a primary someone edited by hand, an older install) replaced.
func Derive(primary []byte, entry map[string]any) ([]byte, error) {
	var doc map[string]any
	if err := json.Unmarshal(primary, &doc); err != nil {
		return nil, fmt.Errorf("the primary CNI configuration is not JSON: %w", err)
	}
	ours := map[string]any{}
	for k, v := range entry {
		ours[k] = v
	}
	ours["type"] = PluginType
	var out map[string]any
	if raw, ok := doc["plugins"].([]any); ok {
		out = map[string]any{}
		for k, v := range doc {
			out[k] = v
		}
		plugins := []any{}
		for _, p := range raw {
			if m, ok := p.(map[string]any); ok && m["type"] == PluginType {
				continue
			}
			plugins = append(plugins, p)
		}
		out["plugins"] = append(plugins, ours)
	} else {
		single := map[string]any{}
		for k, v := range doc {
			if k != "cniVersion" && k != "name" {
				single[k] = v
			}
		}
		out = map[string]any{"cniVersion": doc["cniVersion"], "name": doc["name"], "plugins": []any{single, ours}}
		if out["cniVersion"] == nil {
			out["cniVersion"] = "0.3.1"
		}
	}
	body, err := json.MarshalIndent(out, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(body, '\n'), nil
}

// writeAtomic replaces path with data unless it already holds exactly that; true if
// it wrote.
func writeAtomic(path string, data []byte, mode os.FileMode) (bool, error) {
	if old, err := os.ReadFile(path); err == nil && bytes.Equal(old, data) {
		return false, nil
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-")
	if err != nil {
		return false, err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return false, err
	}
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return false, err
	}
	if err := tmp.Close(); err != nil {
		return false, err
	}
	return true, os.Rename(tmp.Name(), path)
}

func copyBinary(src, dst string) (bool, error) {
	in, err := os.Open(src)
	if err != nil {
		return false, err
	}
	defer in.Close()
	data, err := io.ReadAll(in)
	if err != nil {
		return false, err
	}
	return writeAtomic(dst, data, 0o755)
}

// Once copies the binary and writes our conflist from the current primary.
// ErrNoPrimary when the node has no configuration yet (the binary is copied anyway).
func Once(o *Options) error {
	if o.Binary != "" {
		dst := filepath.Join(o.BinDir, PluginType)
		if changed, err := copyBinary(o.Binary, dst); err != nil {
			return fmt.Errorf("copying %s to %s: %w", o.Binary, dst, err)
		} else if changed {
			o.logf("installed %s", dst)
		}
	}
	name, data, err := Primary(o.ConfDir, o.confName())
	if err != nil {
		return err
	}
	if name <= o.confName() {
		return fmt.Errorf("%s sorts before %s: the runtime would load it, not ours (set a --conf-name that sorts first)", name, o.confName())
	}
	want, err := Derive(data, o.Entry)
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	path := filepath.Join(o.ConfDir, o.confName())
	changed, err := writeAtomic(path, want, 0o644)
	if err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if changed {
		o.logf("wrote %s: the chain of %s, then %s", path, name, PluginType)
	}
	return nil
}

// Watch keeps our conflist derived from the primary (and the binary in place) every
// interval until ctx ends. Errors are logged and retried; ErrNoPrimary is waited out.
func Watch(ctx context.Context, o *Options, interval time.Duration) {
	last := ""
	for {
		err := Once(o)
		msg := ""
		if err != nil {
			msg = err.Error()
		}
		if msg != last && msg != "" {
			o.logf("not installed (retrying every %s): %s", interval, msg)
		}
		last = msg
		select {
		case <-ctx.Done():
			return
		case <-time.After(interval):
		}
	}
}

// Uninstall removes our conflist, then the binary (the runtime falls back to the
// primary at once). Missing files are fine.
func Uninstall(o *Options) error {
	path := filepath.Join(o.ConfDir, o.confName())
	if err := os.Remove(path); err == nil {
		o.logf("removed %s", path)
	} else if !os.IsNotExist(err) {
		return err
	}
	bin := filepath.Join(o.BinDir, PluginType)
	if err := os.Remove(bin); err == nil {
		o.logf("removed %s", bin)
	} else if !os.IsNotExist(err) {
		return err
	}
	return nil
}
