// Command secgroups-cni is kube-secgroups' chained CNI plugin and its installer
// (docs/cni.md).
//
// Called by a container runtime (CNI_COMMAND set), it is the plugin. Otherwise:
//
//	secgroups-cni install   [--conf-dir D] [--bin-dir D] [--conf-name N] [--socket S] [--timeout SECONDS] [--exempt-namespaces a,b] [--watch [--interval 5s]]
//	secgroups-cni uninstall [--conf-dir D] [--bin-dir D] [--conf-name N]
//	secgroups-cni version
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"secgroups.dev/cni/internal/install"
	"secgroups.dev/cni/internal/plugin"
)

// Version is set at build time (-ldflags "-X main.Version=...").
var Version = "dev"

func main() {
	if os.Getenv("CNI_COMMAND") != "" || len(os.Args) < 2 {
		plugin.Main("kube-secgroups " + plugin.Type + " " + Version)
		return
	}
	switch os.Args[1] {
	case "install", "uninstall":
		os.Exit(installer(os.Args[1], os.Args[2:]))
	case "version", "--version":
		fmt.Println(plugin.Type, Version)
	default:
		fmt.Fprintf(os.Stderr, "usage: %s install|uninstall|version (or run by a container runtime with CNI_COMMAND set)\n", os.Args[0])
		os.Exit(2)
	}
}

func installer(cmd string, args []string) int {
	fs := flag.NewFlagSet(cmd, flag.ContinueOnError)
	confDir := fs.String("conf-dir", "/host/etc/cni/net.d", "the node's CNI configuration directory, as mounted")
	binDir := fs.String("bin-dir", "/host/opt/cni/bin", "the node's CNI binary directory, as mounted")
	confName := fs.String("conf-name", install.DefaultConfName, "our conflist's file name (must sort before the node's own)")
	socket := fs.String("socket", plugin.DefaultSocket, "the agent's CNI socket, as the node sees it")
	timeout := fs.Float64("timeout", plugin.DefaultTimeout.Seconds(), "seconds an ADD may wait for the agent")
	exempt := fs.String("exempt-namespaces", "", "comma-separated namespaces passed through without the agent")
	watch := fs.Bool("watch", false, "keep the conflist derived from the node's own until SIGTERM")
	interval := fs.Duration("interval", 5*time.Second, "with --watch: how often to check")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	self, err := os.Executable()
	if err != nil {
		fmt.Fprintln(os.Stderr, "cannot find my own binary:", err)
		return 1
	}
	entry := map[string]any{"socket": *socket, "timeoutSeconds": *timeout}
	if *exempt != "" {
		entry["exemptNamespaces"] = strings.Split(*exempt, ",")
	}
	opts := &install.Options{
		ConfDir: *confDir, BinDir: *binDir, ConfName: *confName, Binary: self, Entry: entry,
		Log: func(format string, a ...any) {
			fmt.Printf("%s %s\n", time.Now().UTC().Format(time.RFC3339), fmt.Sprintf(format, a...))
		},
	}
	if cmd == "uninstall" {
		if err := install.Uninstall(opts); err != nil {
			fmt.Fprintln(os.Stderr, "uninstall:", err)
			return 1
		}
		return 0
	}
	if *watch {
		ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
		defer stop()
		install.Watch(ctx, opts, *interval)
		return 0 // never removes anything on exit: a restart must not open a window
	}
	if err := install.Once(opts); err != nil {
		if errors.Is(err, install.ErrNoPrimary) {
			fmt.Printf("binary installed; %v yet in %s (install --watch writes the conflist when one appears)\n", err, *confDir)
			return 0
		}
		fmt.Fprintln(os.Stderr, "install:", err)
		return 1
	}
	return 0
}
