package worker

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/erasure-worker/erasure-worker/queue"
)

// scriptedStore answers heartbeats and takes as the test scripts them: the limiter is tested
// without a database, on a fake clock. (The statements themselves, the bucket included, are
// tested on a real PostgreSQL in the queue package.)
type scriptedStore struct {
	next    queue.Deployment
	err     error
	grant   queue.Grant
	noRow   bool
	takeErr error
	wanted  []int // Want of each take
}

func (s *scriptedStore) Beat(context.Context, queue.Heartbeat) (queue.Deployment, error) {
	return s.next, s.err
}
func (s *scriptedStore) SlowDown(context.Context, float64, float64, time.Duration) (float64, error) {
	return s.next.CurrentRPS, nil
}
func (s *scriptedStore) Leave(context.Context, string) error { return nil }
func (s *scriptedStore) Take(_ context.Context, r queue.TakeRequest) (queue.Grant, bool, error) {
	s.wanted = append(s.wanted, r.Want)
	return s.grant, !s.noRow, s.takeErr
}

type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time          { return c.t }
func (c *fakeClock) advance(d time.Duration) { c.t = c.t.Add(d) }

// limiter is one replica's part of the rate limit, for tests that drive it step by step.
type limiter struct {
	*pacer
	live *liveness
}

func (l *limiter) beat(ctx context.Context) { l.live.beat(ctx) }

func setupLimiter(t *testing.T, rps float64, burst int) (*limiter, *scriptedStore, *fakeClock) {
	t.Helper()
	clock := &fakeClock{t: time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)}
	cfg := Config{ID: "me", RateLimit: rps, Burst: burst, clock: clock.now}
	cfg.setDefaults()
	store := &scriptedStore{next: queue.Deployment{CeilingRPS: rps, Burst: burst, CurrentRPS: rps}}
	_, live, p := newRateLimit(store, cfg, func() bool { return true })
	return &limiter{pacer: p, live: live}, store, clock
}

// takeNow runs step until it asks for a take, and takes.
func takeNow(t *testing.T, l *limiter, clock *fakeClock, by time.Time) {
	t.Helper()
	s := l.step(clock.now(), by)
	if !s.take {
		t.Fatalf("with no send in stock, want a take: %+v", s)
	}
	l.take(context.Background())
}

func TestLimiterSendsWhatTheBucketGrantsWhenItIsDue(t *testing.T) {
	l, store, clock := setupLimiter(t, 100, 10)
	far := clock.now().Add(time.Hour)
	if s := l.step(clock.now(), far); s.answer == nil || s.take {
		t.Fatalf("before the first heartbeat (no bucket yet): %+v, want to wait for it", s)
	}
	l.beat(context.Background())
	store.grant = queue.Grant{N: 3, First: -5 * time.Millisecond, Every: 10 * time.Millisecond}
	l.waiting = 3
	takeNow(t, l, clock, far)
	if len(store.wanted) != 1 || store.wanted[0] != 3 {
		t.Fatalf("takes wanted %v, want one take for the 3 calls waiting", store.wanted)
	}
	start := clock.now()
	var got []time.Duration
	for range 3 {
		s := l.step(clock.now(), far)
		if s.send == nil {
			t.Fatalf("a send in stock, but %+v", s)
		}
		got = append(got, s.send.at.Sub(start))
	}
	if want := []time.Duration{0, 5 * time.Millisecond, 15 * time.Millisecond}; !slices.Equal(got, want) {
		t.Fatalf("sends due at %v after the answer, want %v (never before the database's time)", got, want)
	}
}

// stocked is a limiter past its first heartbeat holding the sends of one take that got g.
func stocked(t *testing.T, rps float64, burst int, g queue.Grant) (*limiter, *fakeClock, time.Time) {
	t.Helper()
	l, store, clock := setupLimiter(t, rps, burst)
	far := clock.now().Add(time.Hour)
	l.beat(context.Background())
	store.grant = g
	takeNow(t, l, clock, far)
	return l, clock, far
}

func TestLimiterGivesUpASendItCouldNotUseInTime(t *testing.T) {
	l, clock, far := stocked(t, 100, 1, queue.Grant{N: 2, Every: 10 * time.Millisecond})
	clock.advance(lateSend + 5*time.Millisecond) // the first is 5ms past lateSend, the second within it
	s := l.step(clock.now(), far)
	if s.send == nil || s.send.at != clock.now().Add(-lateSend+5*time.Millisecond) {
		t.Fatalf("want the second send (the first is given up): %+v", s)
	}
	clock.advance(10 * time.Millisecond)
	if s := l.step(clock.now(), far); !s.take {
		t.Fatalf("grant used up: %+v, want a take", s)
	}
}

func TestLimiterNeverWaitsPastTheDeadline(t *testing.T) {
	l, store, clock := setupLimiter(t, 1, 1)
	l.beat(context.Background())
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
	clock.advance(13 * time.Second)
	now = clock.now()
	// The bucket is taken far ahead (a small share, others first): nothing due in time.
	store.grant = queue.Grant{N: 0, First: 10 * time.Second, Every: time.Second}
	takeNow(t, l, clock, now.Add(time.Minute))
	if _, ok := asTooLate(l.step(now, now.Add(2*time.Second)).err); !ok {
		t.Fatal("a send 10s away against a deadline 2s away: want the claim back at once")
	}
	if s := l.step(now, now.Add(time.Minute)); s.sleep == 0 || now.Add(s.sleep).After(now.Add(10*time.Second)) {
		t.Fatalf("a send 10s away against a deadline 1m away: %+v, want to sleep until it can be taken", s)
	}
	// A send in stock due after the deadline.
	store.grant = queue.Grant{N: 1, First: 5 * time.Second, Every: time.Second}
	clock.advance(10 * time.Second)
	now = clock.now()
	takeNow(t, l, clock, now.Add(time.Minute))
	if _, ok := asTooLate(l.step(now, now.Add(2*time.Second)).err); !ok {
		t.Fatal("a send 5s away against a deadline 2s away: want the claim back")
	}
	if sendable := l.sendable(0); sendable != 0 {
		t.Fatalf("sendable within no time: %v", sendable)
	}
}

// A replica that cannot reach the bucket sends nothing but what it holds.
func TestLimiterSendsNothingWhileTheBucketIsUnreachable(t *testing.T) {
	l, store, clock := setupLimiter(t, 10, 1)
	far := clock.now().Add(time.Hour)
	l.beat(context.Background())
	store.takeErr = errors.New("database unreachable")
	takeNow(t, l, clock, far)
	if s := l.step(clock.now(), far); s.take || s.send != nil || s.sleep == 0 {
		t.Fatalf("right after a failed take: %+v, want to sleep before trying again", s)
	}
	clock.advance(time.Second)
	store.takeErr = nil
	store.grant = queue.Grant{N: 1}
	takeNow(t, l, clock, far)
	if s := l.step(clock.now(), far); s.send == nil {
		t.Fatalf("the bucket answers again: %+v, want its send", s)
	}
}

func TestLimiterDropsItsStockOnA429(t *testing.T) {
	l, clock, far := stocked(t, 100, 10, queue.Grant{N: 10, Every: 10 * time.Millisecond})
	l.slowDown(time.Second)
	clock.advance(time.Second)
	if s := l.step(clock.now(), far); !s.take {
		t.Fatalf("after a 429's hold: %+v, want a fresh take at the deployment's new rate, not the old stock", s)
	}
}

// The share is an estimate of what the bucket will give, following the lowest ceiling.
func TestLimiterEstimatesItsShare(t *testing.T) {
	l, store, _ := setupLimiter(t, 100, 10)
	store.next = queue.Deployment{CeilingRPS: 50, Burst: 2, CurrentRPS: 100, Others: 1, OthersWeight: 1}
	l.beat(context.Background())
	if share := l.live.currentShare(); share != 25 {
		t.Fatalf("share beside a busy replica with a lower limit: %v, want 25 (half of 50)", share)
	}
	if sendable := l.sendable(2 * time.Second); sendable != 50 {
		t.Fatalf("sendable within 2s at 25/s: %v", sendable)
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

// A take whose answer was slow still knows when the database read its clock to within the
// fastest recent trip, so that its sends keep their lateness.
func TestASlowTakeKnowsTheDatabasesTimeFromAFastOne(t *testing.T) {
	var o dbOffset
	local := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	skew := 3*time.Second + 123*time.Millisecond // the database's clock is ahead
	// A fast take: the database read its clock 0.4ms into a 1ms trip.
	from, to := o.read(local.Add(400*time.Microsecond+skew), local, local.Add(time.Millisecond))
	if !from.Equal(local) || !to.Equal(local.Add(time.Millisecond)) {
		t.Fatalf("the first take: between %v and %v, want its whole trip", from.Sub(local), to.Sub(local))
	}
	// A second later, a slow one: 30ms, the clock read 25ms in.
	asked := local.Add(time.Second)
	from, to = o.read(asked.Add(25*time.Millisecond+skew), asked, asked.Add(30*time.Millisecond))
	read := asked.Add(25 * time.Millisecond)
	if from.After(read) || to.Before(read) {
		t.Fatalf("the slow take's clock read at 25ms, bounded between %v and %v", from.Sub(asked), to.Sub(asked))
	}
	if to.Sub(from) > 2*time.Millisecond {
		t.Fatalf("the slow take bounded to %v, want within the fast trip (1ms) and a second's drift", to.Sub(from))
	}
	// The database's clock steps back by a minute: the bounds start again from this take.
	asked = local.Add(2 * time.Second)
	from, to = o.read(asked.Add(5*time.Millisecond+skew-time.Minute), asked, asked.Add(10*time.Millisecond))
	if !from.Equal(asked) || !to.Equal(asked.Add(10*time.Millisecond)) {
		t.Fatalf("after a step of the database's clock: between %v and %v, want the take's whole trip", from.Sub(asked), to.Sub(asked))
	}
}
