package fides_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/erasure-worker/erasure-worker/connector"
	"github.com/erasure-worker/erasure-worker/connector/fides/fidesfake"
)

// noPark makes the fake's tasks await their callback as soon as the door answered.
var noPark = fidesfake.Options{ParkDelay: -1}

// deliverAfterHold waits out the report's hold (a few ms here) and delivers it.
func (b *testBundle) deliverAfterHold(t *testing.T, r connector.Report) connector.Delivery {
	t.Helper()
	time.Sleep(20 * time.Millisecond)
	return b.parts.Deliverer.Deliver(context.Background(), r)
}

func TestTheCallbackTellsFidesTheRowsMasked(t *testing.T) {
	t.Parallel()
	b := setup(t, "10ms", noPark)
	for id, want := range map[string]int{"pri_deleted": 1, "pri_not_found": 0} {
		b.push(t, id, "person-"+id+"@example.com")
		outcome := strings.TrimPrefix(id, "pri_")
		if d := b.deliverAfterHold(t, b.report(t, id, outcome)); d.Result != connector.Delivered || d.Err != nil {
			t.Fatalf("%s: %+v, want delivered", outcome, d)
		}
		task, _ := b.fake.Task(id)
		if task.Completions != 1 || len(task.RowsMasked) != 1 || task.RowsMasked[0] != want {
			t.Errorf("%s: Fides took %d completions with rows_masked %v, want one with %d", outcome, task.Completions, task.RowsMasked, want)
		}
	}
}

func TestNoCallbackIsSentBeforeTheHold(t *testing.T) {
	t.Parallel()
	b := setup(t, "10m", noPark)
	b.push(t, "pri_1", "person-1@example.com")
	r := b.report(t, "pri_1", "deleted")
	// The queue holds the report; a release that does not know holds hands it over anyway.
	for _, notBefore := range []time.Time{{}, time.Now().Add(10 * time.Minute)} {
		r.NotBefore = notBefore
		d := b.parts.Deliverer.Deliver(context.Background(), r)
		if d.Result != connector.Retry || d.RetryAfter < 9*time.Minute || d.RetryAfter > 10*time.Minute {
			t.Errorf("delivered within the hold (NotBefore %v): %+v, want a retry once FIDES_CALLBACK_DELAY has passed", notBefore, d)
		}
	}
	if st := b.fake.Stats(); st.Callbacks != 0 {
		t.Fatalf("Fides was called back %d times within the hold", st.Callbacks)
	}
}

// Once the hold is over, a 400 says that the task awaits no callback: told before (an answer
// lost), or its privacy request closed. It counts as delivered, and is not sent again.
func TestA400AfterTheHoldCountsAsDelivered(t *testing.T) {
	t.Parallel()
	b := setup(t, "10ms", noPark)
	b.push(t, "pri_1", "person-1@example.com")
	r := b.report(t, "pri_1", "deleted")
	if d := b.deliverAfterHold(t, r); d.Result != connector.Delivered {
		t.Fatalf("first callback: %+v", d)
	}
	// The answer was lost: the reporter sends it again.
	if d := b.parts.Deliverer.Deliver(context.Background(), r); d.Result != connector.Closed || d.HTTPStatus != 400 {
		t.Fatalf("the repeat: %+v, want closed on Fides' 400", d)
	}
	if task, _ := b.fake.Task("pri_1"); task.Completions != 1 || task.Repeats != 1 {
		t.Fatalf("Fides took %d completions and %d repeats, want 1 and 1", task.Completions, task.Repeats)
	}
}

func TestAnExpiredTokenFailsThatReportAlone(t *testing.T) {
	t.Parallel()
	b := setup(t, "10ms", noPark)
	b.push(t, "pri_old", "person-old@example.com")
	b.push(t, "pri_new", "person-new@example.com")
	b.fake.SetTokenLifetime(5 * time.Millisecond) // both tokens are past it once the hold is over
	d := b.deliverAfterHold(t, b.report(t, "pri_old", "deleted"))
	if d.Result != connector.Rejected || d.HTTPStatus != 403 || !strings.Contains(d.Err.Error(), "403 Forbidden: the reply-to-token is wrong or expired") {
		t.Fatalf("an expired token: %+v, want this report rejected naming the 403 (not the connector paused)", d)
	}
	if st := b.fake.Stats(); st.Expired != 1 || st.Completions != 0 {
		t.Fatalf("Fides counted %d expired tokens and %d completions, want 1 and 0", st.Expired, st.Completions)
	}
	b.fake.SetTokenLifetime(time.Hour)
	if d := b.parts.Deliverer.Deliver(context.Background(), b.report(t, "pri_new", "deleted")); d.Result != connector.Delivered {
		t.Fatalf("another report with its own good token: %+v, want delivered", d)
	}
}

func TestAFailedRequestIsNotCalledBack(t *testing.T) {
	t.Parallel()
	b := setup(t, "10ms", noPark)
	b.push(t, "pri_f", "person-f@example.com")
	for _, outcome := range []string{"rejected", "invalid", "exhausted"} {
		r := b.report(t, "pri_f", outcome)
		r.ErrorCode = "NO_ACCESS"
		d := b.deliverAfterHold(t, r)
		if d.Result != connector.Rejected || d.Err == nil ||
			!strings.Contains(d.Err.Error(), "the Knot erasure failed: "+outcome+" (NO_ACCESS)") || !strings.Contains(d.Err.Error(), "no failure callback") {
			t.Errorf("%s: %+v, want the report failed with the reason, saying Fides has no failure callback", outcome, d)
		}
	}
	if st := b.fake.Stats(); st.Callbacks != 0 {
		t.Fatalf("Fides was called back %d times for a failed request", st.Callbacks)
	}
}

func TestDeliveryErrorsHoldNoTokenNorPerson(t *testing.T) {
	t.Parallel()
	b := setup(t, "10ms", noPark)
	user := "person-secret-42@example.com"
	b.push(t, "pri_1", user)
	task, _ := b.fake.Task("pri_1")
	r := b.report(t, "pri_1", "deleted")
	var errs []error
	for _, f := range []fidesfake.Faults{{ErrorRate: 1}, {RateLimitRate: 1, RetryAfter: fidesfake.Duration(time.Second)}, {}} {
		b.fake.SetFaults(f)
		errs = append(errs, b.deliverAfterHold(t, r).Err)
	}
	b.fake.DropTask("pri_1")
	errs = append(errs, b.parts.Deliverer.Deliver(context.Background(), r).Err) // 400: told already
	failed := r
	failed.Outcome, failed.ErrorCode = "rejected", "X_"+user
	errs = append(errs, b.parts.Deliverer.Deliver(context.Background(), failed).Err)
	b.fides.Close()
	errs = append(errs, b.parts.Deliverer.Deliver(context.Background(), r).Err)
	for i, err := range errs {
		if err == nil && i != 2 {
			t.Errorf("attempt %d: no error", i)
			continue
		}
		if err != nil && (strings.Contains(err.Error(), task.Token) || strings.Contains(err.Error(), user) || strings.Contains(err.Error(), "callback?")) {
			t.Errorf("attempt %d: the error holds a secret: %v", i, err)
		}
	}
}
