package worker_test

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"golang.org/x/time/rate"

	"github.com/erasure-worker/erasure-worker/connector"
	"github.com/erasure-worker/erasure-worker/connector/webhook"
	"github.com/erasure-worker/erasure-worker/connector/webhook/webhookfake"
	"github.com/erasure-worker/erasure-worker/queue"
	"github.com/erasure-worker/erasure-worker/queue/queuetest"
	"github.com/erasure-worker/erasure-worker/worker"
)

// sendWebhook is the glue `run` puts between the reporter and the generic connector.
type sendWebhook struct{ s *webhook.Sender }

func (sendWebhook) Info() connector.Info { return connector.Info{Name: "webhook"} }

func (w sendWebhook) Deliver(ctx context.Context, r connector.Report) connector.Delivery {
	return w.s.Send(ctx, "msg_"+strconv.FormatInt(r.ID, 10), webhook.Outcome{
		RequestRef: r.RequestRef, Outcome: r.Outcome, ErrorCode: r.ErrorCode, CompletedAt: r.CompletedAt,
	}, time.Now())
}

type reporterBundle struct {
	ctx      context.Context
	q        *queue.Queue
	pool     *pgxpool.Pool
	fake     *webhookfake.Server
	metrics  *worker.ReportMetrics
	cfg      worker.ReporterConfig
	finished []string // request_refs finished with a report
}

// setupReporter returns a database holding n finished requests (half deleted, half rejected)
// whose outcomes go to a webhook receiver, and a reporter config that delivers them there.
func setupReporter(t *testing.T, n int, faults webhookfake.Faults) *reporterBundle {
	t.Helper()
	t.Parallel()
	key := make([]byte, 32)
	_, _ = rand.Read(key)
	secret := "whsec_" + base64.StdEncoding.EncodeToString(key)
	fake, err := webhookfake.New(webhookfake.Options{Secret: secret, Faults: faults})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(fake)
	t.Cleanup(srv.Close)
	sender, err := webhook.NewSender(srv.URL+"/outcomes", secret, nil)
	if err != nil {
		t.Fatal(err)
	}
	pool := queuetest.Pool(t)
	b := &reporterBundle{ctx: context.Background(), q: queue.New(pool), pool: pool, fake: fake,
		metrics: worker.NewReportMetrics(prometheus.NewRegistry())}
	reqs := make([]queue.NewRequest, n)
	for i := range reqs {
		ref := fmt.Sprintf("api-%d", i)
		reqs[i] = queue.NewRequest{RequestRef: ref, ExternalUserID: fmt.Sprintf("user-%d", i),
			Reports: []queue.NewReport{{Connector: "webhook"}}}
		b.finished = append(b.finished, ref)
	}
	if _, err := b.q.Enqueue(b.ctx, reqs); err != nil {
		t.Fatal(err)
	}
	jobs, err := b.q.Claim(b.ctx, "w", n, time.Minute)
	if err != nil || len(jobs) != n {
		t.Fatalf("claim: %v", err)
	}
	results := make([]queue.Result, n)
	for i, j := range jobs {
		results[i] = j.Result()
		results[i].Transition, results[i].Outcome = queue.Succeed, queue.OutcomeDeleted
		if i%2 == 1 {
			results[i].Transition, results[i].Outcome, results[i].ErrorCode = queue.Fail, queue.OutcomeRejected, "NO_ACCESS"
		}
	}
	if _, err := b.q.Finish(b.ctx, "w", results); err != nil {
		t.Fatal(err)
	}
	b.cfg = worker.ReporterConfig{
		ID:            "reporter-1",
		Deliverers:    map[string]connector.Deliverer{"webhook": sendWebhook{sender}},
		PollInterval:  10 * time.Millisecond,
		Timeout:       time.Second,
		MinBackoff:    5 * time.Millisecond,
		MaxBackoff:    20 * time.Millisecond,
		ProbeInterval: 200 * time.Millisecond,
		StatsInterval: 20 * time.Millisecond,
		Logger:        testLogger(t),
		Metrics:       b.metrics,
	}
	return b
}

// run runs reporters until stop.
func (b *reporterBundle) run(t *testing.T, replicas int) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(b.ctx)
	var wg sync.WaitGroup
	for i := range replicas {
		cfg := b.cfg
		cfg.ID = fmt.Sprintf("reporter-%d", i)
		r := worker.NewReporter(b.q, cfg)
		wg.Go(func() { r.Run(ctx) })
	}
	var once sync.Once
	stop = func() { once.Do(func() { cancel(); wg.Wait() }) }
	t.Cleanup(stop)
	return stop
}

func (b *reporterBundle) waitDelivered(t *testing.T, want int64, within time.Duration) queue.ReportStats {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		st, err := b.q.ReportStats(b.ctx, []string{"webhook"})
		if err != nil {
			t.Fatal(err)
		}
		if b.fake.Stats().RequestRefs >= want && st.Pending["webhook"] == 0 {
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %s: receiver has %d of %d requests, %d reports pending", within, b.fake.Stats().RequestRefs, want, st.Pending["webhook"])
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestReportersDeliverEveryOutcomeOnceThroughReceiverFaults(t *testing.T) {
	const n = 120
	b := setupReporter(t, n, webhookfake.Faults{ErrorRate: 0.3, HangRate: 0.02, LostAnswerRate: 0.05})
	b.cfg.Timeout = 200 * time.Millisecond // hung deliveries time out and are retried
	b.run(t, 3)
	b.waitDelivered(t, n, 30*time.Second)

	st := b.fake.Stats()
	if st.RequestRefs != n || st.ConflictingOutcomes != 0 || st.ConflictingWebhookIDs != 0 || st.Violations != 0 || st.BadSignatures != 0 {
		t.Fatalf("receiver saw %+v; want each of %d requests with one outcome, signed", st, n)
	}
	if st.ByType[webhook.EventSucceeded] != n/2 || st.ByType[webhook.EventFailed] != n/2 {
		t.Fatalf("receiver saw events %v, want %d of each", st.ByType, n/2)
	}
	// Only a retry repeats a report: the same webhook-id, which the receiver drops.
	if st.RequestRefsSeveralIDs != 0 {
		t.Fatalf("%d requests were reported under several webhook-ids", st.RequestRefsSeveralIDs)
	}
	// Every attempt is evidence, and no delivered report keeps its credentials.
	var attempts int64
	for _, ref := range b.finished {
		rec, err := b.q.Lookup(b.ctx, ref)
		if err != nil {
			t.Fatal(err)
		}
		if len(rec.Reports) != 1 || rec.Reports[0].Status != queue.ReportDelivered || rec.Reports[0].DeliveredAt.IsZero() {
			t.Fatalf("%s: reports %+v, want one delivered", ref, rec.Reports)
		}
		attempts += int64(rec.Reports[0].Attempts)
	}
	if faulted := st.Faulted["error"]; faulted == 0 {
		t.Fatal("the receiver injected no 500: the test proves nothing")
	}
	if attempts < n+st.Faulted["error"] {
		t.Fatalf("%d delivery attempts recorded, want at least one per request plus one per 500 (%d)", attempts, n+st.Faulted["error"])
	}
	if got := testutil.ToFloat64(b.metrics.Delivered.WithLabelValues("webhook", "retry")); got < float64(st.Faulted["error"]) {
		t.Errorf("erasure_reports_delivered_total{result=retry} = %v, want at least the %d 500s", got, st.Faulted["error"])
	}
}

func TestAConnectorWhoseReceiverRejectsOurCredentialsIsPausedThenResumes(t *testing.T) {
	const n = 20
	b := setupReporter(t, n, webhookfake.Faults{RejectSignatures: true})
	b.run(t, 1)

	deadline := time.Now().Add(10 * time.Second)
	for testutil.ToFloat64(b.metrics.Paused.WithLabelValues("webhook")) != 1 {
		if time.Now().After(deadline) {
			t.Fatal("erasure_reports_paused{connector=webhook} never became 1")
		}
		time.Sleep(10 * time.Millisecond)
	}
	// While paused, one report is tried per probe interval, not all twenty again and again.
	// (The batch that met the first 401 may still be landing: let it.)
	time.Sleep(b.cfg.ProbeInterval / 2)
	before := b.fake.Stats().Messages
	time.Sleep(5 * b.cfg.ProbeInterval)
	if probes := b.fake.Stats().Messages - before; probes > 6 {
		t.Fatalf("%d deliveries in 5 probe intervals while paused, want about one per interval", probes)
	}
	b.fake.SetFaults(webhookfake.Faults{})
	b.waitDelivered(t, n, 10*time.Second)
	if got := testutil.ToFloat64(b.metrics.Paused.WithLabelValues("webhook")); got != 0 {
		t.Fatalf("erasure_reports_paused = %v after the receiver took our reports, want 0", got)
	}
}

func TestAReportRefusedForGoodWaitsForRequeue(t *testing.T) {
	const n = 4
	b := setupReporter(t, n, webhookfake.Faults{ConflictRate: 1}) // 409 means nothing to Standard Webhooks
	stop := b.run(t, 1)
	deadline := time.Now().Add(10 * time.Second)
	for {
		st, err := b.q.ReportStats(b.ctx, []string{"webhook"})
		if err != nil {
			t.Fatal(err)
		}
		if st.Failed["webhook"] == n {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("report stats %+v, want %d failed", st, n)
		}
		time.Sleep(10 * time.Millisecond)
	}
	sent := b.fake.Stats().Messages
	time.Sleep(100 * time.Millisecond)
	if again := b.fake.Stats().Messages - sent; again != 0 {
		t.Fatalf("a failed report was sent %d more times", again)
	}
	stop()

	b.fake.SetFaults(webhookfake.Faults{})
	if got, err := b.q.RequeueReports(b.ctx, "webhook"); err != nil || got != n {
		t.Fatalf("requeued %d (%v), want %d", got, err, n)
	}
	b.run(t, 1)
	b.waitDelivered(t, n, 10*time.Second)
}

// pacedWebhook is a receiver that publishes a limit: burst reports at once, then one an hour.
type pacedWebhook struct {
	sendWebhook
	burst int
}

func (p pacedWebhook) Pace() (rate.Limit, int) { return rate.Every(time.Hour), p.burst }

func TestAReceiverThatPublishesALimitGetsNoMore(t *testing.T) {
	const n, burst = 10, 3
	b := setupReporter(t, n, webhookfake.Faults{})
	b.cfg.Deliverers["webhook"] = pacedWebhook{b.cfg.Deliverers["webhook"].(sendWebhook), burst}
	stop := b.run(t, 1)
	b.waitReceived(t, burst, 10*time.Second)
	time.Sleep(300 * time.Millisecond) // thirty rounds: none may send another
	stop()
	if got := b.fake.Stats().RequestRefs; got != burst {
		t.Fatalf("the receiver got %d reports, want its published %d", got, burst)
	}
	// The others wait their turn without spending an attempt.
	var attempts int
	for _, ref := range b.finished {
		rec, err := b.q.Lookup(b.ctx, ref)
		if err != nil {
			t.Fatal(err)
		}
		for _, rep := range rec.Reports {
			attempts += rep.Attempts
		}
	}
	if attempts != burst {
		t.Fatalf("%d delivery attempts recorded, want %d: a report held back by the pace is not an attempt", attempts, burst)
	}
}

func (b *reporterBundle) waitReceived(t *testing.T, want int64, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for b.fake.Stats().RequestRefs < want {
		if time.Now().After(deadline) {
			t.Fatalf("after %s: receiver has %d of %d requests", within, b.fake.Stats().RequestRefs, want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Issue 23: a report that keeps failing, for whatever reason, is given up REPORT_MAX_AGE after
// its request finished: failed with its last reason, counted, and no longer tried; `reports
// requeue` sends it again.
func TestAReportThatKeepsFailingGivesUpAfterItsMaxAgeUntilRequeued(t *testing.T) {
	for _, tc := range []struct {
		name   string
		faults webhookfake.Faults
		reason string // in the last error of every report given up
	}{
		{"5xx", webhookfake.Faults{ErrorRate: 1}, "500"},
		{"hung", webhookfake.Faults{HangRate: 1}, "deadline exceeded"},
		{"401, paused", webhookfake.Faults{RejectSignatures: true}, "401"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			const n = 6
			b := setupReporter(t, n, tc.faults)
			b.cfg.Timeout = 100 * time.Millisecond
			b.cfg.ProbeInterval = 50 * time.Millisecond
			b.cfg.MaxAge = 700 * time.Millisecond
			stop := b.run(t, 2)
			queuetest.WaitFor(t, 10*time.Second, "every report given up", func() bool {
				st, err := b.q.ReportStats(b.ctx, []string{"webhook"})
				return err == nil && st.Failed["webhook"] == n && st.Pending["webhook"] == 0
			})
			// No longer tried.
			time.Sleep(100 * time.Millisecond)
			sent := b.fake.Stats().Messages
			time.Sleep(300 * time.Millisecond)
			if again := b.fake.Stats().Messages - sent; again != 0 {
				t.Errorf("reports given up were sent %d more times", again)
			}
			stop()

			withReason := 0
			for _, ref := range b.finished {
				var status, lastError string
				if err := b.pool.QueryRow(b.ctx, `SELECT rep.status, rep.last_error FROM erasure_reports rep JOIN erasure_requests r ON r.id = rep.request_id WHERE r.request_ref = $1`, ref).
					Scan(&status, &lastError); err != nil {
					t.Fatal(err)
				}
				if !strings.HasPrefix(lastError, "gave up after REPORT_MAX_AGE (700ms): ") {
					t.Errorf("%s: %s with %q, want failed with the reason it gave up", ref, status, lastError)
				}
				if strings.Contains(lastError, tc.reason) {
					withReason++
				}
			}
			// A paused lane tries one report per probe: the others' last reason may be none.
			if withReason == 0 || (tc.name != "401, paused" && withReason != n) {
				t.Errorf("%d of %d reports given up with their last error (%q)", withReason, n, tc.reason)
			}
			if got := testutil.ToFloat64(b.metrics.GivenUp.WithLabelValues("webhook")); got != n {
				t.Errorf("erasure_reports_given_up_total{connector=webhook} = %v, want %d", got, n)
			}

			b.fake.SetFaults(webhookfake.Faults{})
			if got, err := b.q.RequeueReports(b.ctx, "webhook"); err != nil || got != n {
				t.Fatalf("requeued %d (%v), want %d", got, err, n)
			}
			b.run(t, 1)
			b.waitDelivered(t, n, 10*time.Second)
		})
	}
}
