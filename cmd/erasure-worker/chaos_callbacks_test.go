//go:build chaos

package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/erasure-worker/erasure-worker/connector/ketch/ketchfake"
	"github.com/erasure-worker/erasure-worker/queue/queuetest"
)

// Ketch callbacks aimed inside (issue 23: a Ketch caller made the worker POST to loopback, the
// metadata service and the cluster's private services, and read their answers back). The worker
// runs as the rig runs it, KETCH_CALLBACK_ALLOW naming only ketchfake's host:port; listeners on
// the loopback ports named below count every connection they get. A callback to a literal
// loopback, private, CGNAT or link-local address is refused at intake, 400 naming
// request.callbacks[i].url, and nothing is stored; a callback to a name that resolves to
// loopback (localhost) is taken, its request carried out, and its report fails as not public
// without a dial. The listeners see no connection at all.
func TestChaosCallbacksNeverDialled(t *testing.T) {
	t.Parallel()
	r := newRig(t, withDoors(0, nil))
	v4 := countConnections(t, "tcp4", "127.0.0.1:0")
	port := v4.port()
	v6 := countConnections(t, "tcp6", net.JoinHostPort("::1", port)) // nil without IPv6 loopback
	if v6 == nil {
		t.Log("no IPv6 loopback: https://[::1]:PORT/ is still sent, and refused at intake")
	}
	w := r.startWorker(t, "worker", "POLL_INTERVAL=200ms", "STATS_INTERVAL=1s")
	r.doors.waitAPI(t, 30*time.Second)
	ketch := ketchfake.New(ketchfake.Options{IdentitySpace: rigKetchSpace})

	// Literal addresses: refused at intake.
	refused := []struct {
		uid       string
		callbacks []string
		field     string
	}{
		{"cb-loopback", []string{"https://127.0.0.1:" + port + "/"}, "request.callbacks[0].url"},
		{"cb-private", []string{"https://10.0.0.1/"}, "request.callbacks[0].url"},
		{"cb-metadata", []string{"https://169.254.169.254/latest/meta-data/"}, "request.callbacks[0].url"},
		{"cb-loopback6", []string{"https://[::1]:" + port + "/"}, "request.callbacks[0].url"},
		{"cb-linklocal6", []string{"https://[fe80::1]/"}, "request.callbacks[0].url"},
		{"cb-cgnat", []string{"https://100.64.0.1/"}, "request.callbacks[0].url"},
		{"cb-second", []string{"https://localhost:" + port + "/", "https://192.168.1.1/"}, "request.callbacks[1].url"},
		{"cb-plain-http", []string{"http://localhost:" + port + "/"}, "request.callbacks[0].url"},
	}
	for _, c := range refused {
		status, body := pushDeleteRequest(t, r.doors.apiAddr, ketch, c.uid, c.callbacks)
		if status != http.StatusBadRequest || !strings.Contains(body, c.field) {
			t.Errorf("callbacks %v: answered %d %s; want 400 naming %s", c.callbacks, status, body, c.field)
		}
	}

	// A name that resolves to loopback passes intake (a name is checked when dialled) and is
	// never dialled.
	const named = "cb-localhost"
	if status, body := pushDeleteRequest(t, r.doors.apiAddr, ketch, named, []string{"https://localhost:" + port + "/callback"}); status != http.StatusOK || !strings.Contains(body, `"in_progress"`) {
		t.Fatalf("a callback to localhost: answered %d %s; want 200 in_progress", status, body)
	}
	conn := r.db(t)
	var (
		reportStatus, lastError string
		attempts                int
	)
	dialled := func() int64 {
		n := v4.count()
		if v6 != nil {
			n += v6.count()
		}
		return n
	}
	queuetest.WaitFor(t, time.Minute, "the localhost callback's report to end, or a dial", func() bool {
		err := conn.QueryRow(context.Background(), `SELECT p.status, coalesce(p.last_error, ''), p.attempts FROM erasure_reports p
JOIN erasure_requests q ON q.id = p.request_id WHERE q.request_ref = $1`, "ketch:"+named).Scan(&reportStatus, &lastError, &attempts)
		if err != nil {
			t.Fatalf("the localhost callback's report: %v", err)
		}
		return reportStatus == "failed" || reportStatus == "delivered" || dialled() > 0
	})
	t.Logf("the localhost callback's report: %s after %d attempt(s): %s", reportStatus, attempts, lastError)
	if reportStatus != "failed" || !strings.Contains(lastError, "not public") || attempts != 1 {
		t.Errorf("the localhost callback's report: %s after %d attempts, last error %q; want failed at once as not public", reportStatus, attempts, lastError)
	}

	// What an operator sees: the failed report in status, and only the one request stored.
	out, errOut, code := r.cli(t, "", "status", "--json")
	var st struct{ Reports []reportsDoc }
	if err := json.Unmarshal([]byte(out), &st); code != 0 || err != nil {
		t.Fatalf("status --json: exit %d, %v: %s %s", code, err, out, errOut)
	}
	for _, rep := range st.Reports {
		if rep.Connector == "ketch" && (rep.Failed != 1 || !strings.Contains(rep.LastError, "not public")) {
			t.Errorf("status shows Ketch's reports as %+v; want 1 failed, its last error saying not public", rep)
		}
	}
	if stored := chaosQueryInt(t, conn, `SELECT count(*) FROM erasure_requests`); stored != 1 {
		t.Errorf("%d requests stored; want only %s (every other was refused at intake)", stored, named)
	}
	if n := chaosQueryInt(t, conn, `SELECT count(*) FROM erasure_reports`); n != 1 {
		t.Errorf("%d reports stored; want only %s's", n, named)
	}

	// Nothing reached the listeners, before or after the report failed.
	time.Sleep(time.Second)
	if n := dialled(); n != 0 {
		t.Errorf("the listeners on localhost port %s got %d connections; want none", port, n)
	}
	w.noPanic(t)
}

// pushDeleteRequest sends the worker's Ketch door a DeleteRequest as Ketch would, with the
// callbacks given (each with a credential of its own), and returns the answer.
func pushDeleteRequest(t *testing.T, apiAddr string, ketch *ketchfake.Server, uid string, callbacks []string) (int, string) {
	t.Helper()
	var req map[string]any
	if err := json.Unmarshal(ketch.DeleteRequest(uid, uid+"-person", ketchfake.NoCallbacks()), &req); err != nil {
		t.Fatal(err)
	}
	var cbs []map[string]any
	for i, u := range callbacks {
		cbs = append(cbs, map[string]any{"url": u, "headers": map[string]string{"Authorization": fmt.Sprintf("Bearer %s-%d", uid, i)}})
	}
	req["request"].(map[string]any)["callbacks"] = cbs
	body, err := json.Marshal(req)
	if err != nil {
		t.Fatal(err)
	}
	hr, _ := http.NewRequest(http.MethodPost, "http://"+apiAddr+"/v1/ketch", bytes.NewReader(body))
	hr.Header.Set("Authorization", rigKetchValue)
	hr.Header.Set("Content-Type", "application/json")
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Do(hr)
	if err != nil {
		t.Fatalf("POST /v1/ketch %s: %v", uid, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// connCounter is a listener that counts the connections it is offered and closes them.
type connCounter struct {
	ln net.Listener
	n  atomic.Int64
}

// countConnections listens on addr until the end of the test; nil when addr cannot be had.
func countConnections(t *testing.T, network, addr string) *connCounter {
	t.Helper()
	ln, err := net.Listen(network, addr)
	if err != nil {
		if network == "tcp4" {
			t.Fatal(err)
		}
		return nil
	}
	c := &connCounter{ln: ln}
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			c.n.Add(1)
			conn.Close()
		}
	})
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	return c
}

func (c *connCounter) count() int64 { return c.n.Load() }

func (c *connCounter) port() string {
	_, p, _ := net.SplitHostPort(c.ln.Addr().String())
	return p
}
