package worker_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/erasure-worker/erasure-worker/connector"
	"github.com/erasure-worker/erasure-worker/queue"
	"github.com/erasure-worker/erasure-worker/queue/queuetest"
	"github.com/erasure-worker/erasure-worker/worker"
)

// laneReceiver is a connector's receivers, in process: a report whose credentials name a host
// in hang is never answered until the test ends; any other is taken at once.
type laneReceiver struct {
	name    string
	hang    map[string]bool
	release chan struct{} // closed when the test ends

	mu      sync.Mutex
	got     map[int64]time.Time // report → when it was taken
	hanging int                 // deliveries held open now
}

func newLaneReceiver(t *testing.T, name string, hang ...string) *laneReceiver {
	d := &laneReceiver{name: name, hang: map[string]bool{}, release: make(chan struct{}), got: map[int64]time.Time{}}
	for _, h := range hang {
		d.hang[h] = true
	}
	return d
}

func (d *laneReceiver) Info() connector.Info { return connector.Info{Name: d.name} }

func (d *laneReceiver) Deliver(ctx context.Context, r connector.Report) connector.Delivery {
	var cred struct{ Host string }
	_ = json.Unmarshal(r.Credentials, &cred)
	if d.hang[cred.Host] {
		d.mu.Lock()
		d.hanging++
		d.mu.Unlock()
		defer func() {
			d.mu.Lock()
			d.hanging--
			d.mu.Unlock()
		}()
		select { // a receiver that never answers: only the delivery's timeout or the test's end
		case <-ctx.Done():
		case <-d.release:
		}
		return connector.Delivery{Result: connector.Retry, Err: errors.New("no answer")}
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.got[r.ID] = time.Now()
	return connector.Delivery{Result: connector.Delivered, HTTPStatus: 204}
}

func (d *laneReceiver) state() (taken, hanging int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.got), d.hanging
}

type lanesBundle struct {
	ctx context.Context
	q   *queue.Queue
	cfg worker.ReporterConfig
}

// setupLanes returns an empty database and a reporter config whose deliveries last as long as
// the test: a hung one is never cut short by the reporter's timeout.
func setupLanes(t *testing.T, receivers ...*laneReceiver) *lanesBundle {
	t.Helper()
	t.Parallel()
	b := &lanesBundle{ctx: context.Background(), q: queue.New(queuetest.Pool(t))}
	b.cfg = worker.ReporterConfig{
		ID:            "reporter-1",
		Deliverers:    map[string]connector.Deliverer{},
		PollInterval:  50 * time.Millisecond,
		Timeout:       time.Minute,
		Concurrency:   4,
		MinBackoff:    5 * time.Millisecond,
		MaxBackoff:    20 * time.Millisecond,
		StatsInterval: time.Second,
		Logger:        testLogger(t),
		Metrics:       worker.NewReportMetrics(prometheus.NewRegistry()),
	}
	for _, d := range receivers {
		b.cfg.Deliverers[d.name] = d
	}
	return b
}

// finish carries out n requests (prefix-0..), each with one report of connector to host, and
// returns when their reports became deliverable.
func (b *lanesBundle) finish(t *testing.T, prefix, connector, lane, host string, n int) time.Time {
	t.Helper()
	reqs := make([]queue.NewRequest, n)
	for i := range reqs {
		reqs[i] = queue.NewRequest{RequestRef: fmt.Sprintf("%s-%d", prefix, i), ExternalUserID: fmt.Sprintf("%s-user-%d", prefix, i),
			Reports: []queue.NewReport{{Connector: connector, Lane: lane, Credentials: fmt.Appendf(nil, `{"host":%q}`, host)}}}
	}
	if _, err := b.q.Enqueue(b.ctx, reqs); err != nil {
		t.Fatal(err)
	}
	jobs, err := b.q.Claim(b.ctx, "w", n, time.Minute)
	if err != nil || len(jobs) != n {
		t.Fatalf("claimed %d of %d requests (%v)", len(jobs), n, err)
	}
	results := make([]queue.Result, n)
	for i, j := range jobs {
		results[i] = j.Result()
		results[i].Transition, results[i].Outcome = queue.Succeed, queue.OutcomeDeleted
	}
	if _, err := b.q.Finish(b.ctx, "w", results); err != nil {
		t.Fatal(err)
	}
	return time.Now()
}

// run runs the reporter until the test ends; the hung receivers are let go first, so that it
// can stop.
func (b *lanesBundle) run(t *testing.T, receivers ...*laneReceiver) {
	t.Helper()
	ctx, cancel := context.WithCancel(b.ctx)
	var wg sync.WaitGroup
	r := worker.NewReporter(b.q, b.cfg)
	wg.Go(func() { r.Run(ctx) })
	t.Cleanup(func() {
		for _, d := range receivers {
			close(d.release)
		}
		cancel()
		wg.Wait()
	})
}

// delivered counts the reports of prefix's requests that the table holds delivered.
func (b *lanesBundle) delivered(t *testing.T, prefix string) int {
	t.Helper()
	n := 0
	for i := 0; ; i++ {
		rec, err := b.q.Lookup(b.ctx, fmt.Sprintf("%s-%d", prefix, i))
		if errors.Is(err, queue.ErrNotFound) {
			return n
		}
		if err != nil {
			t.Fatal(err)
		}
		for _, rep := range rec.Reports {
			if rep.Status == queue.ReportDelivered {
				n++
			}
		}
	}
}

// One connector's receiver hangs with its lane full; reports of another connector that become
// deliverable after that are delivered, and recorded, at once: the hung lane holds back only
// its own reports.
func TestAHungReceiverHoldsBackOnlyItsOwnConnectorsReports(t *testing.T) {
	slow := newLaneReceiver(t, "slow", "slow.example")
	fast := newLaneReceiver(t, "fast")
	b := setupLanes(t, slow, fast)
	b.finish(t, "slow", "slow", "", "slow.example", 3*b.cfg.Concurrency)
	b.run(t, slow, fast)
	queuetest.WaitFor(t, 10*time.Second, "the slow receiver's lane to be full", func() bool {
		_, hanging := slow.state()
		return hanging == b.cfg.Concurrency
	})

	const n = 40
	ready := b.finish(t, "fast", "fast", "", "fast.example", n)
	queuetest.WaitFor(t, 2*time.Second, "every report of the other connector taken and recorded", func() bool {
		taken, _ := fast.state()
		return taken == n && b.delivered(t, "fast") == n
	})
	t.Logf("%d reports delivered and recorded %v after they became deliverable, beside a lane of %d hung deliveries",
		n, time.Since(ready).Round(time.Millisecond), b.cfg.Concurrency)
	if taken, hanging := slow.state(); taken != 0 || hanging != b.cfg.Concurrency {
		t.Errorf("the hung receiver: %d taken, %d deliveries open; want 0 and its lane's %d, no more", taken, hanging, b.cfg.Concurrency)
	}
}

// Two receiver hosts of one connector, each its own lane: the one that hangs holds back only
// its own reports.
func TestAHungHostHoldsBackOnlyItsOwnLane(t *testing.T) {
	ketch := newLaneReceiver(t, "ketch", "hung.example")
	b := setupLanes(t, ketch)
	b.finish(t, "hung", "ketch", "hung.example", "hung.example", 3*b.cfg.Concurrency)
	b.run(t, ketch)
	queuetest.WaitFor(t, 10*time.Second, "the hung host's lane to be full", func() bool {
		_, hanging := ketch.state()
		return hanging == b.cfg.Concurrency
	})

	const n = 40
	ready := b.finish(t, "ok", "ketch", "ok.example", "ok.example", n)
	queuetest.WaitFor(t, 2*time.Second, "every report to the other host taken and recorded", func() bool {
		taken, _ := ketch.state()
		return taken == n && b.delivered(t, "ok") == n
	})
	t.Logf("%d reports delivered and recorded %v after they became deliverable, beside a hung host", n, time.Since(ready).Round(time.Millisecond))
	if _, hanging := ketch.state(); hanging != b.cfg.Concurrency {
		t.Errorf("%d deliveries open to the hung host; want its lane's %d", hanging, b.cfg.Concurrency)
	}
}

// A connector's lanes together have MaxInFlight deliveries open at most: a thousand hung hosts
// do not open a thousand connections.
func TestAConnectorsLanesShareItsMaxInFlight(t *testing.T) {
	hosts := []string{"a.example", "b.example", "c.example", "d.example", "e.example"}
	ketch := newLaneReceiver(t, "ketch", hosts...)
	b := setupLanes(t, ketch)
	b.cfg.Concurrency, b.cfg.MaxInFlight = 2, 5
	for _, h := range hosts {
		b.finish(t, h, "ketch", h, h, 3)
	}
	b.run(t, ketch)
	queuetest.WaitFor(t, 10*time.Second, "the connector's deliveries to reach MaxInFlight", func() bool {
		_, hanging := ketch.state()
		return hanging == b.cfg.MaxInFlight
	})
	time.Sleep(10 * b.cfg.PollInterval)
	if _, hanging := ketch.state(); hanging != b.cfg.MaxInFlight {
		t.Fatalf("%d deliveries open over %d hung hosts; want MaxInFlight, %d", hanging, len(hosts), b.cfg.MaxInFlight)
	}
}

func TestReporterConfigNamesTheSettingAtFault(t *testing.T) {
	for _, tc := range []struct {
		cfg  worker.ReporterConfig
		want string // "" when valid
	}{
		{worker.ReporterConfig{}, ""},
		{worker.ReporterConfig{Timeout: time.Minute}, ""}, // the lease follows: 3m
		{worker.ReporterConfig{Timeout: 10 * time.Second, Lease: 10 * time.Second}, "REPORT_LEASE (10s) must be longer than REPORT_TIMEOUT (10s)"},
		{worker.ReporterConfig{Timeout: time.Minute, Lease: 30 * time.Second}, "REPORT_LEASE (30s) must be longer than REPORT_TIMEOUT (1m0s)"},
		{worker.ReporterConfig{MinBackoff: time.Minute, MaxBackoff: time.Second}, "REPORT_MAX_BACKOFF (1s) must not be shorter than REPORT_MIN_BACKOFF (1m0s)"},
		{worker.ReporterConfig{Concurrency: 16, MaxInFlight: 8}, "REPORT_MAX_IN_FLIGHT (8) must be at least REPORT_CONCURRENCY (16)"},
	} {
		err := tc.cfg.Validate()
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%+v: %v; want valid", tc.cfg, err)
		case tc.want != "" && (err == nil || len(err.Error()) < len(tc.want) || err.Error()[:len(tc.want)] != tc.want):
			t.Errorf("%+v: %v; want %q…", tc.cfg, err, tc.want)
		}
	}
}
