package main

import (
	"net/http"
	"testing"
	"time"

	"github.com/erasure-worker/erasure-worker/queue/queuetest"
)

// ROLE splits `run` in two Deployments: doors that hold no Knot credential and only take
// requests in, on a pool of their own, and workers that carry them out and report, serving no
// door.
func TestRolesSplitTheDoorsFromTheWorker(t *testing.T) {
	t.Parallel()
	r := newRig(t, withDoors(0, nil))
	doors := r.spawnWorker(t, "doors", "ROLE=doors", "KNOT_CLIENT_ID=", "KNOT_SECRET=", "DOORS_DB_MAX_CONNS=2")
	doors.waitLog(t, "serving the HTTP doors", 30*time.Second)
	r.doors.waitAPI(t, 10*time.Second)
	r.doors.submitAPI(t, 5)
	if code := doors.probe("/healthz"); code != http.StatusOK {
		t.Fatalf("the doors' /healthz: %d", code)
	}
	if code := doors.probe("/readyz"); code != http.StatusOK {
		t.Fatalf("the doors' /readyz: %d", code)
	}
	time.Sleep(time.Second)
	if c := r.counts(t); c["pending"] != 5 {
		t.Fatalf("with only the doors running, requests were carried out: %v", c)
	}
	if lines := doors.logLines("worker starting"); len(lines) != 0 {
		t.Fatal("ROLE=doors started a worker")
	}

	// The worker takes API_LISTEN_ADDR's setting too, but does not serve it (the doors hold it):
	// it starts, carries the requests out and reports them.
	w := r.startWorker(t, "worker", "ROLE=worker")
	if c := r.drained(t, time.Minute); c["succeeded/deleted"]+c["succeeded/not_found"] != 5 {
		t.Fatalf("after the worker: %v", c)
	}
	queuetest.WaitFor(t, 30*time.Second, "every outcome at the webhook receiver", func() bool {
		return r.doors.webhookStats(t).RequestRefs == 5
	})
	if lines := w.logLines("serving the HTTP doors"); len(lines) != 0 {
		t.Fatal("ROLE=worker served the doors")
	}
	w.noPanic(t)
	doors.noPanic(t)
}
