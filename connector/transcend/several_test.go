package transcend_test

import (
	"context"
	"io"
	"log/slog"
	"net/http/httptest"
	"slices"
	"testing"
	"time"

	"github.com/erasure-worker/erasure-worker/connector"
	"github.com/erasure-worker/erasure-worker/connector/transcend"
	"github.com/erasure-worker/erasure-worker/connector/transcend/transcendfake"
	"github.com/erasure-worker/erasure-worker/queue"
	"github.com/erasure-worker/erasure-worker/queue/queuetest"
	"github.com/erasure-worker/erasure-worker/settings"
	"github.com/erasure-worker/erasure-worker/worker"
)

// A request of several identifiers comes as an item per identifier, each with its own nonce:
// each is stored as a request of its own (the request's ref, then ref#2, ref#3), carried out,
// and reported with its own nonce; pulled again, none is stored twice.
func TestEachIdentifierOfARequestIsCarriedOutAndReported(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	fake := transcendfake.New(transcendfake.Options{APIKey: conformanceKey, DataSiloID: conformanceSilo})
	srv := httptest.NewServer(fake)
	t.Cleanup(srv.Close)
	env := map[string]string{"TRANSCEND_URL": srv.URL, "TRANSCEND_API_KEY": conformanceKey, "TRANSCEND_DATA_SILO_ID": conformanceSilo}
	s := settings.New("run", func(k string) string { return env[k] }, io.Discard)
	read := transcend.Connector{}.Declare(s)
	if _, err := s.Parse(nil); err != nil {
		t.Fatal(err)
	}
	parts := read()
	if s.Err() != nil || parts == nil {
		t.Fatalf("settings: %v", s.Err())
	}
	pool := queuetest.Pool(t)
	q := queue.New(pool)
	in := worker.NewIntake(q, worker.IntakeConfig{Info: transcend.Connector{}.Info(), Prefixes: []string{"transcend:"}})

	fake.Add(
		transcendfake.Item{RequestID: "req-many", Identifier: "person-a@example.com", Type: "email"},
		transcendfake.Item{RequestID: "req-many", Identifier: "person-a", Type: "userId"},
		transcendfake.Item{RequestID: "req-one", Identifier: "person-d"},
		transcendfake.Item{RequestID: "req-many", Identifier: "person-c", Type: "phone"},
	)
	for range 2 {
		if err := parts.Puller.Pull(ctx, in, slog.New(slog.DiscardHandler)); err != nil {
			t.Fatal(err)
		}
	}
	rows, err := pool.Query(ctx, `SELECT request_ref || ' ' || external_user_id FROM erasure_requests ORDER BY request_ref`)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for rows.Next() {
		var r string
		if err := rows.Scan(&r); err != nil {
			t.Fatal(err)
		}
		got = append(got, r)
	}
	base := "transcend:" + conformanceSilo + ":"
	want := []string{base + "req-many person-a@example.com", base + "req-many#2 person-a", base + "req-many#3 person-c", base + "req-one person-d"}
	if !slices.Equal(got, want) {
		t.Fatalf("stored after two pulls:\n%q\nwant\n%q", got, want)
	}

	jobs, err := q.Claim(ctx, "w", 10, time.Minute)
	if err != nil || len(jobs) != 4 {
		t.Fatalf("claim: %d (%v)", len(jobs), err)
	}
	results := make([]queue.Result, len(jobs))
	for i, j := range jobs {
		results[i] = j.Result()
		results[i].Transition, results[i].Outcome = queue.Succeed, queue.OutcomeDeleted
	}
	if _, err := q.Finish(ctx, "w", results); err != nil {
		t.Fatal(err)
	}
	rctx, cancel := context.WithCancel(ctx)
	rep := worker.NewReporter(q, worker.ReporterConfig{ID: "r", Deliverers: map[string]connector.Deliverer{"transcend": parts.Deliverer},
		PollInterval: 20 * time.Millisecond, Timeout: time.Second, MinBackoff: 10 * time.Millisecond, MaxBackoff: 100 * time.Millisecond})
	done := make(chan struct{})
	go func() { rep.Run(rctx); close(done) }()
	queuetest.WaitFor(t, 20*time.Second, "every report delivered", func() bool {
		var n int
		_ = pool.QueryRow(ctx, `SELECT count(*) FROM erasure_reports WHERE status = 'delivered'`).Scan(&n)
		return n == 4
	})
	cancel()
	<-done
	if st := fake.Stats(); st.ItemsReported != 4 || st.ItemsPending != 0 || st.BadNonces+st.MismatchedProfileIDs+st.DuplicateReports != 0 {
		t.Errorf("transcend: %+v; want each of the 4 items reported once with its own nonce", st)
	}
}
