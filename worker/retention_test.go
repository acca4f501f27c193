package worker_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/erasure-worker/erasure-worker/knotclient/knotfake"
	"github.com/erasure-worker/erasure-worker/queue"
	"github.com/erasure-worker/erasure-worker/queue/queuetest"
	"github.com/erasure-worker/erasure-worker/worker"
)

const (
	week     = 7 * 24 * time.Hour
	twoYears = 730 * 24 * time.Hour
)

type retentionBundle struct {
	*testBundle
	metrics *worker.RetentionMetrics
	cfg     worker.RetentionConfig
}

// setupRetention carries out n requests (user-0..) through a worker against the fake Knot
// (user-1 forbidden, so it fails), so that the purge meets the rows a real run leaves, and
// returns a purge config with batches of 3 under the keys of a key file.
func setupRetention(t *testing.T, n int) *retentionBundle {
	t.Helper()
	b := &retentionBundle{testBundle: setup(t, knotfake.Options{Exists: knotfake.MissingShare(0.3)})}
	b.forbidden.Store("user-1", true)
	b.insert(t, users(n)...)
	stop := b.start(t)
	queuetest.WaitFor(t, 20*time.Second, "the queue to drain", b.drained(t))
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if got := b.count(t, `status = 'failed'`); got != 1 {
		t.Fatalf("%d failed requests, want user-1's", got)
	}
	b.metrics = worker.NewRetentionMetrics(prometheus.NewRegistry())
	b.cfg = worker.RetentionConfig{
		ID: "purger-1", Identifier: week, Keys: readKeys(t, "a key of the test, at least 32 bytes long"), Evidence: twoYears,
		Interval: 50 * time.Millisecond, StatsInterval: 20 * time.Millisecond, BatchSize: 3,
		Logger: testLogger(t), Metrics: b.metrics,
	}
	return b
}

// readKeys writes keys to a key file, newest first, and reads it as `run` does.
func readKeys(t *testing.T, keys ...string) worker.IdentifierKeys {
	t.Helper()
	path := filepath.Join(t.TempDir(), "identifier-keys")
	if err := os.WriteFile(path, []byte("# newest first\n"+strings.Join(keys, "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	k, err := worker.ReadIdentifierKeys(path)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func (b *retentionBundle) purge(t *testing.T) {
	t.Helper()
	r, err := worker.NewRetention(b.q, b.cfg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Round(b.ctx); err != nil {
		t.Fatal(err)
	}
}

// finishedAgo back-dates the completion of the requests of these external_user_ids.
func (b *retentionBundle) finishedAgo(t *testing.T, ago time.Duration, users ...string) {
	t.Helper()
	if _, err := b.pool.Exec(b.ctx, `UPDATE erasure_requests SET completed_at = now() - $2 * interval '1 millisecond' WHERE external_user_id = ANY($1)`,
		users, ago.Milliseconds()); err != nil {
		t.Fatal(err)
	}
}

// userID is what the request once made for raw holds now.
func (b *retentionBundle) userID(t *testing.T, ref string) string {
	t.Helper()
	var uid string
	if err := b.pool.QueryRow(b.ctx, `SELECT external_user_id FROM erasure_requests WHERE request_ref = $1`, ref).Scan(&uid); err != nil {
		t.Fatalf("%s: %v", ref, err)
	}
	return uid
}

// lookUp finds the request_ref of the request for raw as a look-up by id does: the raw id, or
// its pseudonym under any of keys.
func (b *retentionBundle) lookUp(t *testing.T, keys worker.IdentifierKeys, raw string) string {
	t.Helper()
	var ref string
	if err := b.pool.QueryRow(b.ctx, `SELECT request_ref FROM erasure_requests WHERE external_user_id = ANY($1)`,
		append([]string{raw}, keys.Pseudonyms(raw)...)).Scan(&ref); err != nil {
		t.Fatalf("look-up of %s: %v", raw, err)
	}
	return ref
}

func TestFinishedRequestsArePseudonymisedInBatchesOnceTheirRetentionPassed(t *testing.T) {
	b := setupRetention(t, 10)
	due := users(8) // user-0..7, with the failed user-1
	b.finishedAgo(t, week+time.Minute, due...)
	b.finishedAgo(t, week-time.Minute, "user-8")
	// Open requests, received years ago, keep their ids.
	if _, err := b.pool.Exec(b.ctx, `
INSERT INTO erasure_requests (request_ref, external_user_id, received_at) VALUES
  ('open-1', 'open-user-1', now() - interval '3 years'), ('open-2', 'open-user-2', now() - interval '3 years')`); err != nil {
		t.Fatal(err)
	}
	if jobs, err := b.q.Claim(b.ctx, "w", 1, time.Minute); err != nil || len(jobs) != 1 {
		t.Fatalf("claim: %v %v", jobs, err)
	}

	b.purge(t)
	for i, raw := range due {
		if got, want := b.userID(t, fmt.Sprintf("ref-%d", i)), b.cfg.Keys.Pseudonym(raw); got != want {
			t.Errorf("%s: external_user_id %q, want its pseudonym %q", raw, got, want)
		}
		if ref := b.lookUp(t, b.cfg.Keys, raw); ref != fmt.Sprintf("ref-%d", i) {
			t.Errorf("look-up of %s found %s", raw, ref)
		}
	}
	for ref, raw := range map[string]string{"ref-8": "user-8", "ref-9": "user-9", "open-1": "open-user-1", "open-2": "open-user-2"} {
		if got := b.userID(t, ref); got != raw {
			t.Errorf("%s: external_user_id %q, want %q kept (not yet due, or open)", ref, got, raw)
		}
	}
	if got := testutil.ToFloat64(b.metrics.Pseudonymised); got != 8 {
		t.Errorf("erasure_retention_pseudonymised_total = %v, want 8 (in batches of 3)", got)
	}
	var evidence int
	if err := b.pool.QueryRow(b.ctx, `SELECT count(*) FROM erasure_attempts`).Scan(&evidence); err != nil || evidence < 10 {
		t.Errorf("%d calls kept (%v): pseudonymising must keep the evidence", evidence, err)
	}
}

func TestEvidenceIsDeletedOnceItsRetentionPassed(t *testing.T) {
	b := setupRetention(t, 6)
	b.finishedAgo(t, twoYears+time.Minute, "user-0", "user-1", "user-2", "user-3")
	b.finishedAgo(t, twoYears-time.Minute, "user-4")
	b.purge(t)

	var requests, calls int
	if err := b.pool.QueryRow(b.ctx, `SELECT (SELECT count(*) FROM erasure_requests), (SELECT count(*) FROM erasure_attempts)`).
		Scan(&requests, &calls); err != nil {
		t.Fatal(err)
	}
	if requests != 2 {
		t.Errorf("%d requests left, want user-4's and user-5's", requests)
	}
	var orphans int
	if err := b.pool.QueryRow(b.ctx, `SELECT count(*) FROM erasure_attempts a WHERE NOT EXISTS (SELECT 1 FROM erasure_requests r WHERE r.id = a.request_id)`).
		Scan(&orphans); err != nil || orphans != 0 || calls < 2 {
		t.Errorf("%d calls left, %d of them without their request (%v)", calls, orphans, err)
	}
	if got := testutil.ToFloat64(b.metrics.Deleted); got != 4 {
		t.Errorf("erasure_retention_deleted_total = %v, want 4", got)
	}
	// user-4 was a minute short of two years, but well past a week: pseudonymised, kept.
	if got := b.userID(t, "ref-4"); got != b.cfg.Keys.Pseudonym("user-4") {
		t.Errorf("ref-4 holds %q, want its pseudonym", got)
	}
}

func TestABacklogLongerThanARoundIsPurgedWithoutWaitingAnInterval(t *testing.T) {
	b := setupRetention(t, 10)
	b.finishedAgo(t, twoYears+time.Minute, users(10)...)
	// Each round has time for one batch of 3 per step; the next is due a minute later unless
	// the purge goes on at once while rows are left.
	b.cfg.Interval = time.Minute
	r, err := worker.NewRetention(b.q, worker.WithRoundBudget(b.cfg, time.Nanosecond))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(b.ctx)
	var wg sync.WaitGroup
	wg.Go(func() { r.Run(ctx) })
	defer func() { cancel(); wg.Wait() }()
	// The counter moves once the deleting statement has returned: wait for both.
	queuetest.WaitFor(t, 10*time.Second, "four rounds to delete the ten requests, and count them", func() bool {
		return b.count(t, `true`) == 0 && testutil.ToFloat64(b.metrics.Deleted) == 10
	})
}

func TestARotatedKeyStillFindsWhatTheOldKeyPseudonymised(t *testing.T) {
	b := setupRetention(t, 4)
	oldKey, newKey := "the key of last year, at least 32 bytes", "the key of this year, at least 32 bytes"
	b.cfg.Keys = readKeys(t, oldKey)
	b.finishedAgo(t, week+time.Minute, "user-0", "user-1")
	b.purge(t)
	underOld := b.userID(t, "ref-0")

	// The operator puts a new key first in the file and restarts.
	b.cfg.Keys = readKeys(t, newKey, oldKey)
	b.finishedAgo(t, week+time.Minute, "user-2")
	b.purge(t)
	if got, want := b.userID(t, "ref-2"), b.cfg.Keys.Pseudonym("user-2"); got != want || got == readKeys(t, oldKey).Pseudonym("user-2") {
		t.Errorf("after the rotation ref-2 holds %q, want its pseudonym under the new key %q", got, want)
	}
	if underOld != readKeys(t, oldKey).Pseudonym("user-0") || underOld == b.cfg.Keys.Pseudonym("user-0") {
		t.Fatalf("ref-0 holds %q: not the old key's pseudonym, the test proves nothing", underOld)
	}
	for raw, ref := range map[string]string{"user-0": "ref-0", "user-1": "ref-1", "user-2": "ref-2", "user-3": "ref-3"} {
		if got := b.lookUp(t, b.cfg.Keys, raw); got != ref {
			t.Errorf("with the new file, the look-up of %s found %s, want %s", raw, got, ref)
		}
	}
}

func TestOneReplicaPurgesWhileEveryReplicaShowsTheLag(t *testing.T) {
	b := setupRetention(t, 7)
	// A request whose Transcend report was never delivered is pseudonymised on time with the
	// others (issue 23): the report keeps its own copy of the id.
	b.finishReported(t, "transcend:held", "held-user")
	b.finishedAgo(t, week+time.Hour, append(users(7), "held-user")...)
	// One round, then none for a minute: a request that falls due after the round shows as
	// retention behind until the next.
	b.cfg.Interval = time.Minute

	ctx, cancel := context.WithCancel(b.ctx)
	var wg sync.WaitGroup
	replicas := make([]*worker.RetentionMetrics, 3)
	for i := range replicas {
		cfg := b.cfg
		cfg.ID = fmt.Sprintf("purger-%d", i)
		cfg.Metrics = worker.NewRetentionMetrics(prometheus.NewRegistry())
		replicas[i] = cfg.Metrics
		r, err := worker.NewRetention(b.q, cfg)
		if err != nil {
			t.Fatal(err)
		}
		wg.Go(func() { r.Run(ctx) })
	}
	defer func() { cancel(); wg.Wait() }()

	queuetest.WaitFor(t, 10*time.Second, "the purge", func() bool { return b.count(t, `pseudonymised_at IS NOT NULL`) == 8 })
	b.finishReported(t, "transcend:late", "late-user")
	b.finishedAgo(t, week+time.Hour, "late-user")
	queuetest.WaitFor(t, 5*time.Second, "every replica's gauges", func() bool {
		for _, m := range replicas {
			if testutil.ToFloat64(m.Due.WithLabelValues(worker.StepPseudonymise)) != 1 {
				return false
			}
		}
		return true
	})
	var total float64
	purgers := 0
	for i, m := range replicas {
		if lag := testutil.ToFloat64(m.Lag.WithLabelValues(worker.StepPseudonymise)); lag < 3590 || lag > 3700 {
			t.Errorf("replica %d: erasure_retention_lag_seconds{step=pseudonymise} = %v, want an hour: the late request", i, lag)
		}
		if due := testutil.ToFloat64(m.Due.WithLabelValues(worker.StepDelete)); due != 0 {
			t.Errorf("replica %d: %v due for deletion, want 0", i, due)
		}
		if n := testutil.ToFloat64(m.Pseudonymised); n > 0 {
			purgers++
			total += n
		}
	}
	if purgers != 1 || total != 8 {
		t.Errorf("%d replicas purged %v rows in all, want one replica and 8 rows", purgers, total)
	}
	if got := b.userID(t, "transcend:held"); got != b.cfg.Keys.Pseudonym("held-user") {
		t.Errorf("the request with an undelivered report holds %q, want its pseudonym: reports hold no request's id back", got)
	}
}

// finishReported carries out a request with a Transcend report that stays undelivered.
func (b *retentionBundle) finishReported(t *testing.T, ref, user string) {
	t.Helper()
	if _, err := b.q.Enqueue(b.ctx, []queue.NewRequest{{RequestRef: ref, ExternalUserID: user,
		Reports: []queue.NewReport{{Connector: "transcend", Credentials: fmt.Appendf(nil, `{"nonce":"n","identifier":%q}`, user)}}}}); err != nil {
		t.Fatal(err)
	}
	jobs, err := b.q.Claim(b.ctx, "w", 1, time.Minute)
	if err != nil || len(jobs) != 1 {
		t.Fatalf("claim: %v %v", jobs, err)
	}
	res := jobs[0].Result()
	res.Transition, res.Outcome = queue.Succeed, queue.OutcomeDeleted
	if _, err := b.q.Finish(b.ctx, "w", []queue.Result{res}); err != nil {
		t.Fatal(err)
	}
}

func TestNewRetentionRefusesAPolicyThatCannotHold(t *testing.T) {
	keys := worker.NewIdentifierKeys([]byte("a key of the test, at least 32 bytes long"))
	for _, tc := range []struct {
		name string
		cfg  worker.RetentionConfig
		want string
	}{
		{"no key", worker.RetentionConfig{Identifier: week}, "there is no identifier key"},
		{"evidence before the id", worker.RetentionConfig{Identifier: twoYears, Keys: keys, Evidence: week}, "not longer than identifier retention"},
		{"a slow purge", worker.RetentionConfig{Identifier: week, Keys: keys, Interval: time.Hour}, "longer than 1m0s"},
	} {
		if _, err := worker.NewRetention(nil, tc.cfg); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", tc.name, err, tc.want)
		}
	}
	if _, err := worker.NewRetention(nil, worker.RetentionConfig{}); err != nil {
		t.Errorf("pseudonymisation off, the defaults: %v", err)
	}
}
