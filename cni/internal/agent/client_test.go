package agent

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// serve answers every request on socket with reply (after delay).
func serve(t *testing.T, socket string, delay time.Duration, reply Reply) (got chan Request) {
	t.Helper()
	ln, err := net.Listen("unix", socket)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	got = make(chan Request, 10)
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			go func(c net.Conn) {
				defer c.Close()
				line, err := bufio.NewReader(c).ReadBytes('\n')
				if err != nil {
					return
				}
				var req Request
				_ = json.Unmarshal(line, &req)
				got <- req
				time.Sleep(delay)
				body, _ := json.Marshal(reply)
				_, _ = c.Write(append(body, '\n'))
			}(conn)
		}
	}()
	return got
}

func TestCallSendsTheRequestAndTheDeadline(t *testing.T) {
	socket := filepath.Join(t.TempDir(), "cni.sock")
	got := serve(t, socket, 0, Reply{OK: true, State: "placeholder"})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	reply, err := Call(ctx, socket, Request{Command: "ADD", Namespace: "shop", IPs: []string{"100.64.1.2/32"}})
	if err != nil || !reply.OK || reply.State != "placeholder" {
		t.Fatalf("reply %+v, err %v", reply, err)
	}
	req := <-got
	if req.Version != ProtocolVersion || req.Command != "ADD" || req.Namespace != "shop" {
		t.Fatalf("request %+v", req)
	}
	if req.TimeoutMs <= 0 || req.TimeoutMs >= 3000 {
		t.Fatalf("the agent must be told to answer before the plugin gives up: %d ms", req.TimeoutMs)
	}
}

func TestCallWaitsForAnAgentThatIsStarting(t *testing.T) {
	socket := filepath.Join(t.TempDir(), "cni.sock")
	go func() {
		time.Sleep(600 * time.Millisecond)
		serve(t, socket, 0, Reply{OK: true, State: "policy"})
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	reply, err := Call(ctx, socket, Request{Command: "ADD"})
	if err != nil || reply.State != "policy" {
		t.Fatalf("reply %+v, err %v", reply, err)
	}
}

func TestCallGivesUpAtTheDeadlineWithoutAnAgent(t *testing.T) {
	socket := filepath.Join(t.TempDir(), "absent.sock")
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	_, err := Call(ctx, socket, Request{Command: "ADD"})
	var unreachable *UnreachableError
	if !errors.As(err, &unreachable) {
		t.Fatalf("got %v", err)
	}
	if !strings.Contains(err.Error(), socket) || !strings.Contains(err.Error(), "no such file") {
		t.Fatalf("the error must name the socket and why: %v", err)
	}
}

func TestCallGivesUpOnASilentAgent(t *testing.T) {
	socket := filepath.Join(t.TempDir(), "cni.sock")
	serve(t, socket, 10*time.Second, Reply{OK: true})
	ctx, cancel := context.WithTimeout(context.Background(), 400*time.Millisecond)
	defer cancel()
	start := time.Now()
	if _, err := Call(ctx, socket, Request{Command: "ADD"}); err == nil {
		t.Fatal("a silent agent must fail the call")
	}
	if time.Since(start) > 5*time.Second {
		t.Fatal("the deadline was not kept")
	}
}
