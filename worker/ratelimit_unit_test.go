package worker

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/erasure-worker/erasure-worker/queue"
)

// scriptedStore answers heartbeats as the test scripts them: the limiter's state machine is
// tested without a database, on a fake clock. (The statements themselves are tested on a real
// PostgreSQL in the queue package.)
type scriptedStore struct {
	next queue.Deployment
	err  error
}

func (s *scriptedStore) Beat(context.Context, queue.Heartbeat) (queue.Deployment, error) {
	return s.next, s.err
}
func (s *scriptedStore) SlowDown(context.Context, float64, float64, time.Duration) (float64, error) {
	return s.next.CurrentRPS, nil
}
func (s *scriptedStore) Leave(context.Context, string) error { return nil }

type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time          { return c.t }
func (c *fakeClock) advance(d time.Duration) { c.t = c.t.Add(d) }

func setupLimiter(t *testing.T, rps float64, burst int) (*limiter, *scriptedStore, *fakeClock) {
	t.Helper()
	clock := &fakeClock{t: time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)}
	cfg := Config{ID: "me", RateLimit: rps, Burst: burst, clock: clock.now}
	cfg.setDefaults()
	store := &scriptedStore{next: queue.Deployment{CeilingRPS: rps, Burst: burst, CurrentRPS: rps}}
	return newLimiter(store, cfg, func() bool { return true }), store, clock
}

// beat runs one heartbeat on the fake clock, then moves it on by an interval.
func beat(l *limiter, clock *fakeClock) float64 {
	l.beat(context.Background())
	share := l.currentShare()
	clock.advance(l.interval)
	return share
}

func TestLimiterJoinerWaitsTwoBeatsThenTakesItsShare(t *testing.T) {
	l, store, clock := setupLimiter(t, 100, 10)
	store.next.Others, store.next.OthersWeight = 1, 1 // one busy replica already there
	got := []float64{beat(l, clock), beat(l, clock), beat(l, clock)}
	if got[0] != 0 || got[1] != 0 || got[2] != 50 {
		t.Fatalf("a joiner's shares over three beats: %v; want 0, 0, then half of 100", got)
	}
	// The other replica leaves: its room is taken at once.
	store.next.Others, store.next.OthersWeight = 0, 0
	if share := beat(l, clock); share != 100 {
		t.Fatalf("share after the other replica left: %v, want 100 at once", share)
	}
}

func TestLimiterFollowsTheLowestCeilingAndBurst(t *testing.T) {
	l, store, clock := setupLimiter(t, 100, 10)
	for range 3 {
		beat(l, clock)
	}
	// A replica with RATE_LIMIT_RPS=50, RATE_LIMIT_BURST=2 joins; the deployment's rate is
	// still 100 in the table.
	store.next = queue.Deployment{CeilingRPS: 50, Burst: 2, CurrentRPS: 100, Others: 1, OthersWeight: 1}
	if share := beat(l, clock); share != 25 {
		t.Fatalf("share beside a replica with a lower limit: %v, want 25 (half of 50)", share)
	}
	if b := l.lim.Burst(); b != 1 {
		t.Fatalf("burst %d, want 1 (half of the lowest burst 2)", b)
	}
}

func TestLimiterStopsSendingAfterTwoMissedBeats(t *testing.T) {
	l, store, clock := setupLimiter(t, 10, 1)
	for range 3 {
		beat(l, clock)
	}
	far := clock.now().Add(time.Hour)
	if s := l.step(clock.now(), far); s.renewal != nil || s.err != nil {
		t.Fatalf("with a share in force: %+v", s)
	}
	store.err = errors.New("database unreachable")
	beat(l, clock)
	beat(l, clock)
	clock.advance(l.interval / 2)
	if s := l.step(clock.now(), far); s.renewal == nil {
		t.Fatalf("two heartbeats missed and still sending: %+v", s)
	}
	store.err = nil
	beat(l, clock)
	if s := l.step(clock.now(), far); s.renewal != nil {
		t.Fatalf("a heartbeat answered and still not sending: %+v", s)
	}
}

func TestLimiterNeverWaitsPastTheDeadline(t *testing.T) {
	l, _, clock := setupLimiter(t, 1, 1)
	for range 3 {
		beat(l, clock)
	}
	now := clock.now()
	// A Retry-After hold that outlasts the deadline: back at once, saying how long it holds.
	l.slowDown(12 * time.Second)
	s := l.step(now, now.Add(3*time.Second))
	tl, ok := asTooLate(s.err)
	if !ok || tl.hold != 12*time.Second {
		t.Fatalf("hold of 12s against a deadline 3s away: %+v", s)
	}
	// A hold that ends in time is slept out.
	if s := l.step(now, now.Add(time.Minute)); s.err != nil || s.sleep != 12*time.Second {
		t.Fatalf("hold of 12s against a deadline 1m away: %+v", s)
	}
	// A share that spaces tokens further apart than the deadline: back at once.
	clock.advance(13 * time.Second)
	beat(l, clock)
	now = clock.now()
	l.lim.SetLimitAt(now, 0.1) // one call every 10s
	l.lim.ReserveN(now, l.lim.Burst())
	if s := l.step(now, now.Add(2*time.Second)); s.err == nil {
		t.Fatalf("a token 10s away against a deadline 2s away: %+v", s)
	}
	if sendable := l.sendable(2 * time.Second); sendable >= 1 {
		t.Fatalf("sendable within 2s at 0.1/s with no token: %v, want < 1 (claim nothing)", sendable)
	}
}

func TestAutoConcurrencyFollowsShareAndLatency(t *testing.T) {
	for _, c := range []struct {
		share, latency float64
		want           int
	}{
		{0, 0.1, minAutoConcurrency},
		{10, 0.2, 5},                    // 10/s × 0.2s × 1.5 = 3, +2
		{100, 0.2, 32},                  // 30 + 2
		{1000, 0.5, maxAutoConcurrency}, // capped
	} {
		if got := autoConcurrency(c.share, c.latency); got != c.want {
			t.Errorf("autoConcurrency(%v rps, %vs) = %d, want %d", c.share, c.latency, got, c.want)
		}
	}
}

func TestBackoffsStayWithinHalfAndAllOfTheirNominalLength(t *testing.T) {
	cfg := Config{RetryMinBackoff: time.Second, RetryMaxBackoff: 8 * time.Second}
	for attempt, nominal := range []time.Duration{0, time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second, 8 * time.Second} {
		if attempt == 0 {
			continue
		}
		for range 200 {
			if d := cfg.retryDelay(attempt); d < nominal/2 || d > nominal {
				t.Fatalf("retry delay after attempt %d: %v, want between %v and %v", attempt, d, nominal/2, nominal)
			}
		}
	}
}

// A joiner grows at its third heartbeat, two intervals after its row appeared. A replica whose
// heartbeats failed meanwhile never saw the joiner and still holds its old, larger share: it
// must have stopped sending by then, or the two together exceed the limit.
func TestLimiterStopsBeforeAnUnseenJoinerGrows(t *testing.T) {
	l, store, clock := setupLimiter(t, 100, 10)
	for range 3 {
		beat(l, clock)
	}
	// Its last heartbeat that answered; the joiner's row appears just after it.
	l.beat(context.Background())
	last := clock.now()
	if share := l.currentShare(); share != 100 {
		t.Fatalf("share alone: %v", share)
	}
	store.err = errors.New("heartbeat timed out")
	clock.advance(l.interval)
	l.beat(context.Background())
	clock.advance(l.interval)
	if s := l.step(last.Add(2*l.interval), last.Add(time.Hour)); s.renewal == nil {
		t.Fatalf("still sending at its old share two intervals after its last heartbeat, when a joiner may grow: %+v", s)
	}
}
