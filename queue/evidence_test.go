package queue_test

import (
	"errors"
	"fmt"
	"reflect"
	"testing"
	"time"

	"github.com/erasure-worker/erasure-worker/queue"
)

// insertFinishedEvidence adds a succeeded request received at receivedAt, with one call to Knot
// and one delivered webhook report, straight through SQL, and returns its id.
func (b *testBundle) insertFinishedEvidence(t *testing.T, ref, externalUserID string, receivedAt time.Time) int64 {
	t.Helper()
	var id int64
	err := b.pool.QueryRow(b.ctx, `
WITH req AS (
    INSERT INTO erasure_requests (request_ref, external_user_id, status, outcome, attempts,
                                  received_at, due_at, completed_at)
    VALUES ($1, $2, 'succeeded', 'deleted', 1, $3::timestamptz, $3::timestamptz + interval '30 days', $3::timestamptz + interval '2 seconds')
    RETURNING id, received_at
), call AS (
    INSERT INTO erasure_attempts (request_id, attempt, worker, started_at, duration_ms, http_status, result)
    SELECT id, 1, 'w1', received_at + interval '1 second', 42, 200, 'deleted' FROM req
), report AS (
    INSERT INTO erasure_reports (request_id, connector, status, attempts, ready_at, delivered_at, last_result, last_http_status)
    SELECT id, 'webhook', 'delivered', 1, received_at + interval '2 seconds', received_at + interval '3 seconds', 'delivered', 204 FROM req
)
SELECT id FROM req`, ref, externalUserID, receivedAt).Scan(&id)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func TestEvidenceLookupByExternalUserIDFindsTheRawIDAndItsPseudonyms(t *testing.T) {
	q, b := setup(t)
	day := time.Date(2026, 1, 10, 9, 0, 0, 0, time.UTC)
	b.insertFinishedEvidence(t, "first", "alice", day)
	b.insertFinishedEvidence(t, "second", "alice", day.Add(48*time.Hour))
	b.insertFinishedEvidence(t, "other", "bob", day)
	const oldPseudonym, newPseudonym = "hmac-sha256:0101", "hmac-sha256:0202"
	if _, err := b.pool.Exec(b.ctx, `UPDATE erasure_requests SET external_user_id = $1 WHERE request_ref = 'first'`, oldPseudonym); err != nil {
		t.Fatal(err)
	}

	got, err := q.LookupByExternalUserID(b.ctx, []string{"alice"})
	if err != nil || len(got) != 1 || got[0].RequestRef != "second" {
		t.Fatalf("by the raw id: %+v (%v), want only the request whose id is kept", got, err)
	}
	got, err = q.LookupByExternalUserID(b.ctx, []string{"alice", newPseudonym, oldPseudonym})
	if err != nil || len(got) != 2 || got[0].RequestRef != "first" || got[1].RequestRef != "second" {
		t.Fatalf("by the raw id and its pseudonyms: %+v (%v), want first and second, oldest first", got, err)
	}
	// The same shape as Lookup: one record, whichever way it is found.
	for _, rec := range got {
		want, err := q.Lookup(b.ctx, rec.RequestRef)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(rec, want) {
			t.Errorf("by id:\n%+v\nby ref:\n%+v", rec, want)
		}
		if len(rec.Calls) != 1 || rec.Calls[0].HTTPStatus != 200 || len(rec.Reports) != 1 || rec.Reports[0].DeliveredAt.IsZero() {
			t.Errorf("record %s lacks its call or its delivered report: %+v", rec.RequestRef, rec)
		}
	}
	if got, err := q.LookupByExternalUserID(b.ctx, []string{"carol"}); err != nil || len(got) != 0 {
		t.Fatalf("an unknown id: %+v (%v), want nothing and no error", got, err)
	}
}

func TestEvidenceExportReadsEveryRequestOfThePeriodOnceAcrossWindows(t *testing.T) {
	q, b := setup(t)
	since := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	until := since.Add(24 * time.Hour)
	// 4500 requests, one a minute from 12:00 the day before: 1440 in the period, the rest either
	// side, spread over three windows of ids, received out of id order ((7i mod 4500) minutes)
	// so that the windows must follow the ids, not the times.
	const n = 4500
	_, err := b.pool.Exec(b.ctx, `
INSERT INTO erasure_requests (request_ref, external_user_id, received_at)
SELECT 'exp-' || i, 'user-' || i, $1::timestamptz + ((7 * i) % $2) * interval '1 minute'
FROM generate_series(0, $2 - 1) AS i`, since.Add(-12*time.Hour), n)
	if err != nil {
		t.Fatal(err)
	}
	// Exactly on each boundary: since is in, until is out.
	b.insertFinishedEvidence(t, "at-since", "u-since", since)
	b.insertFinishedEvidence(t, "at-until", "u-until", until)
	b.insertFinishedEvidence(t, "just-before-until", "u-before", until.Add(-time.Microsecond))

	var want []string
	rows, err := b.pool.Query(b.ctx, `SELECT request_ref FROM erasure_requests WHERE received_at >= $1 AND received_at < $2 ORDER BY id`, since, until)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var ref string
		if err := rows.Scan(&ref); err != nil {
			t.Fatal(err)
		}
		want = append(want, ref)
	}
	if rows.Err() != nil || len(want) != 1440+2 {
		t.Fatalf("the fixture holds %d requests in the period (%v), want the 1440 inside and the 2 on its boundaries", len(want), rows.Err())
	}

	var got []string
	var lastID int64
	err = q.ExportRecords(b.ctx, since, until, func(rec queue.Record) error {
		if rec.ID <= lastID {
			t.Errorf("record %d after %d: not in id order", rec.ID, lastID)
		}
		lastID = rec.ID
		if rec.ReceivedAt.Before(since) || !rec.ReceivedAt.Before(until) {
			t.Errorf("%s received %s, outside [%s, %s)", rec.RequestRef, rec.ReceivedAt, since, until)
		}
		if rec.RequestRef == "at-since" && (len(rec.Calls) != 1 || len(rec.Reports) != 1) {
			t.Errorf("the export's record lacks the calls or reports: %+v", rec)
		}
		got = append(got, rec.RequestRef)
		if len(got) == 1 {
			// Arrived after the export started: not part of it, though received in the period.
			b.insertFinishedEvidence(t, "arrived-during-the-export", "u-late", since)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("exported %d records, want %d; first difference at %d", len(got), len(want), firstDifference(got, want))
	}

	stop := errors.New("stop")
	calls := 0
	err = q.ExportRecords(b.ctx, since, until, func(queue.Record) error { calls++; return stop })
	if !errors.Is(err, stop) || calls != 1 {
		t.Fatalf("a failing callback: %v after %d calls, want its error after one", err, calls)
	}
	if err := q.ExportRecords(b.ctx, since.Add(-48*time.Hour), since.Add(-24*time.Hour), func(rec queue.Record) error {
		return fmt.Errorf("an empty period exported %s", rec.RequestRef)
	}); err != nil {
		t.Fatal(err)
	}
}

func firstDifference(a, b []string) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}
