// Package agent is the plugin's side of the node agent's CNI socket (docs/cni.md, "The
// socket"): one request, one reply, newline-delimited JSON over a unix stream socket.
//
// The agent answers an ADD only once the pod is safe: its own policy is in force, or the
// fail-closed placeholder is (nothing but ND/DHCP to and from its IPs). The plugin waits
// for that within a deadline; an agent that is not there (no socket, connection refused:
// restarting, not installed yet) is retried until the deadline, then the ADD fails with
// an error that says so, and the runtime tears the sandbox down (the kubelet retries).
package agent

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"time"
)

// ProtocolVersion is the version of the request and reply shapes below.
const ProtocolVersion = 1

// Request is what the plugin sends. IPs are the pod's addresses (CIDR notation, as the
// previous plugin's result has them); HostInterface is the host side of the pod's veth,
// when the previous result names exactly one.
type Request struct {
	Version       int      `json:"version"`
	Command       string   `json:"command"`
	ContainerID   string   `json:"containerID"`
	Netns         string   `json:"netns,omitempty"`
	IfName        string   `json:"ifName,omitempty"`
	Namespace     string   `json:"namespace,omitempty"`
	Name          string   `json:"name,omitempty"`
	UID           string   `json:"uid,omitempty"`
	IPs           []string `json:"ips,omitempty"`
	HostInterface string   `json:"hostInterface,omitempty"`
	TimeoutMs     int64    `json:"timeoutMs"`
}

// Reply is the agent's answer. State (ADD, CHECK) says what protects the pod now:
// "policy" (its own policy is in force), "placeholder" (nothing but ND/DHCP until it
// is) or "unmanaged" (its namespace is not enforced and its IPs are nobody else's).
type Reply struct {
	OK     bool   `json:"ok"`
	State  string `json:"state,omitempty"`
	Error  string `json:"error,omitempty"`
	Detail string `json:"detail,omitempty"`
}

// UnreachableError: the agent did not answer before the deadline (no socket, refused,
// or silent). Last is the last dial or read error.
type UnreachableError struct {
	Socket string
	Waited time.Duration
	Last   error
}

func (e *UnreachableError) Error() string {
	return fmt.Sprintf("no answer on %s within %s (%v)", e.Socket, e.Waited.Round(time.Millisecond), e.Last)
}

// RetryInterval is the pause between two connection attempts while the agent is away.
var RetryInterval = 200 * time.Millisecond

// Call sends req to the agent at socket and returns its reply. It keeps trying to
// connect until ctx's deadline; once connected, it waits for the reply until then.
// req.TimeoutMs is set from the deadline, so the agent answers (with an error) before
// the plugin gives up.
func Call(ctx context.Context, socket string, req Request) (*Reply, error) {
	start := time.Now()
	req.Version = ProtocolVersion
	var last error
	for {
		reply, err := once(ctx, socket, req)
		if err == nil {
			return reply, nil
		}
		last = err
		var dialErr *dialError
		if !errors.As(err, &dialErr) {
			// Connected, then the exchange failed: the agent went away mid-request or
			// the deadline passed while it worked. Not retried: the deadline decides.
			return nil, &UnreachableError{socket, time.Since(start), err}
		}
		select {
		case <-ctx.Done():
			return nil, &UnreachableError{socket, time.Since(start), last}
		case <-time.After(RetryInterval):
		}
	}
}

type dialError struct{ err error }

func (e *dialError) Error() string { return e.err.Error() }
func (e *dialError) Unwrap() error { return e.err }

func once(ctx context.Context, socket string, req Request) (*Reply, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", socket)
	if err != nil {
		return nil, &dialError{err}
	}
	defer conn.Close()
	if deadline, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(deadline)
		left := time.Until(deadline) - 250*time.Millisecond // room for the agent's error reply
		if left < 100*time.Millisecond {
			left = 100 * time.Millisecond
		}
		req.TimeoutMs = left.Milliseconds()
	}
	body, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	if _, err := conn.Write(append(body, '\n')); err != nil {
		return nil, err
	}
	line, err := bufio.NewReaderSize(conn, 64*1024).ReadBytes('\n')
	if err != nil {
		return nil, fmt.Errorf("reading the agent's reply: %w", err)
	}
	var reply Reply
	if err := json.Unmarshal(line, &reply); err != nil {
		return nil, fmt.Errorf("the agent's reply is not JSON: %w", err)
	}
	return &reply, nil
}
