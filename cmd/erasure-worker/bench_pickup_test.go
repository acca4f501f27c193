//go:build bench

package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"slices"
	"testing"
	"time"

	"github.com/erasure-worker/erasure-worker/knotclient/knotfake"
	"github.com/erasure-worker/erasure-worker/queue"
	"github.com/erasure-worker/erasure-worker/queue/queuetest"
	"github.com/erasure-worker/erasure-worker/worker"
)

// 4. Pickup latency: an idle worker, one INSERT, until the call reaches Knot.
func benchPickup(t *testing.T, r *benchReport) {
	arrivals := make(chan time.Time, 16)
	fake := knotfake.New(knotfake.Options{ClientID: "e2e-client", Secret: "e2e-secret"})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if req.URL.Path == "/user/delete" {
			select {
			case arrivals <- time.Now():
			default:
			}
		}
		fake.ServeHTTP(w, req)
	}))
	t.Cleanup(srv.Close)

	for _, mode := range []struct {
		name    string
		listen  bool
		poll    time.Duration
		reps    int
		pause   func() time.Duration
		p50Goal time.Duration
		p99Goal time.Duration
	}{
		// NOTIFY: the poll interval is the default; pauses long enough for the worker to idle.
		{name: "notify", listen: true, poll: worker.DefaultPollInterval, reps: 50,
			pause:   func() time.Duration { return 50*time.Millisecond + rand.N(100*time.Millisecond) },
			p50Goal: 20 * time.Millisecond, p99Goal: 100 * time.Millisecond},
		// Poll only: pauses spread over the interval, so inserts land anywhere in its cycle. One
		// that lands just after a poll waits a whole interval, then a claim and a call: the goal
		// allows those 25ms.
		{name: "poll", listen: false, poll: 500 * time.Millisecond, reps: 40,
			pause:   func() time.Duration { return rand.N(500 * time.Millisecond) },
			p99Goal: 525 * time.Millisecond},
	} {
		ctx := context.Background()
		dbURL := queuetest.URL(t)
		pool := benchPool(t, dbURL, nil)
		w, err := worker.New(queue.New(pool), benchKnotClient(t, srv.URL), worker.Config{
			ID:            "bench-pickup-" + mode.name,
			RateLimit:     100,
			PollInterval:  mode.poll,
			DisableListen: !mode.listen,
		})
		if err != nil {
			t.Fatal(err)
		}
		runCtx, cancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { w.Run(runCtx); done <- nil }()
		conn := connect(t, dbURL)
		i := 0
		pickup := func() (time.Duration, bool) {
			i++
			for len(arrivals) > 0 {
				<-arrivals
			}
			start := time.Now()
			benchExec(t, conn, `INSERT INTO erasure_requests (request_ref, external_user_id) VALUES ($1, $2)`,
				fmt.Sprintf("pickup-%s-%d", mode.name, i), fmt.Sprintf("person-%d", i))
			select {
			case at := <-arrivals:
				return at.Sub(start), true
			case <-time.After(10 * time.Second):
				return 0, false
			}
		}
		// The first call waits for the rate limit's first share (two heartbeats).
		if _, ok := pickup(); !ok {
			t.Fatalf("%s: the first request did not reach Knot within 10s", mode.name)
		}
		stop := r.profile(t, "4-pickup-"+mode.name)
		var lat []time.Duration
		for range mode.reps {
			time.Sleep(mode.pause())
			d, ok := pickup()
			if !ok {
				t.Errorf("%s: a request did not reach Knot within 10s", mode.name)
				continue
			}
			lat = append(lat, d)
		}
		profile := stop()
		cancel()
		<-done
		if len(lat) == 0 {
			t.Fatalf("%s: nothing measured", mode.name)
		}
		slices.Sort(lat)
		p50, p99, worst := benchPercentile(lat, 0.5), benchPercentile(lat, 0.99), lat[len(lat)-1]
		t.Logf("pickup %s: p50 %v p99 %v max %v over %d", mode.name, p50, p99, worst, len(lat))
		ok := true
		if mode.listen {
			ok = r.judge("4", "pickup with LISTEN/NOTIFY: p50", benchMs(p50), "< 20 ms", p50 < mode.p50Goal) && ok
			ok = r.judge("4", "pickup with LISTEN/NOTIFY: p99", benchMs(p99), "< 100 ms", p99 < mode.p99Goal) && ok
		} else {
			r.info("4", fmt.Sprintf("pickup polling only (DisableListen, PollInterval %v): p50", mode.poll), benchMs(p50))
			ok = r.judge("4", fmt.Sprintf("pickup polling only (DisableListen, PollInterval %v): p99 (max %s)", mode.poll, benchMs(worst)),
				benchMs(p99), fmt.Sprintf("< %v + 25 ms", mode.poll), p99 < mode.p99Goal)
		}
		if !ok {
			r.missed("4. Pickup latency ("+mode.name+"): CPU profile of the test process (worker in-process)", pprofTop(profile))
		}
	}
	r.note("**4.** An idle in-process worker (RATE_LIMIT_RPS=100, CONCURRENCY auto) on a fresh database calls an httptest " +
		"server in front of a `knotfake.Server` that records when each call arrives; the time is from just before the " +
		"INSERT of one row (its own connection, autocommit) to that arrival. A first request, not counted, waits for the " +
		"rate limit's first share; then 50 requests with NOTIFY after pauses of 50–150ms, and 40 polling only after pauses " +
		"spread over the poll interval. Polling only, a row inserted just after a poll waits the whole interval and then a " +
		"claim and a call, hence the 25ms allowance.")
}
