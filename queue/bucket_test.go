package queue_test

import (
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/erasure-worker/erasure-worker/queue"
)

// due lists the absolute times, on the database's clock, of a grant's sends.
func due(g queue.Grant) []time.Time {
	var ts []time.Time
	for k := range g.N {
		ts = append(ts, g.At.Add(max(g.First+time.Duration(k)*g.Every, 0)))
	}
	return ts
}

// busiestWindow is the most sends due within any half-open window of length w.
func busiestWindow(ts []time.Time, w time.Duration) int {
	slices.SortFunc(ts, func(a, b time.Time) int { return a.Compare(b) })
	most, j := 0, 0
	for i := range ts {
		for ts[i].Sub(ts[j]) >= w {
			j++
		}
		most = max(most, i-j+1)
	}
	return most
}

func take(t *testing.T, q *queue.Queue, b *testBundle, r queue.TakeRequest) queue.Grant {
	t.Helper()
	g, ok, err := q.Take(b.ctx, r)
	if err != nil || !ok {
		t.Fatalf("take %+v: %+v %v %v", r, g, ok, err)
	}
	return g
}

func TestTakeGivesTheBurstAtOnceThenOneSendPerInterval(t *testing.T) {
	q, b := setup(t)
	if _, ok, err := q.Take(b.ctx, queue.TakeRequest{Want: 1, Within: time.Second, CeilingRPS: 100, Burst: 10}); ok || err != nil {
		t.Fatalf("before any heartbeat: ok %v, err %v; want no bucket yet", ok, err)
	}
	h := beat("a", true)
	h.Burst = 10
	if _, err := q.Beat(b.ctx, h); err != nil {
		t.Fatal(err)
	}
	req := queue.TakeRequest{Want: 1000, Within: 0, CeilingRPS: 100, Burst: 10, FloorRPS: 1}
	g := take(t, q, b, req)
	if g.N != 10 || g.Every != 10*time.Millisecond || g.First > 0 {
		t.Fatalf("a full bucket, nothing wanted later than now: %+v, want the burst of 10 at once, 10ms apart after", g)
	}
	sends := due(g)
	if late := sends[9].Sub(sends[0]); late != 0 {
		t.Fatalf("the burst's sends are spread over %v, want all due at once", late)
	}
	// The bucket is empty: within a second, one send per 10ms, continuing where it stopped.
	req.Within = time.Second
	g2 := take(t, q, b, req)
	// How much the bucket refilled between the two takes depends on the machine: the first
	// send is at most one interval on, and the busiest second below is the real bound.
	if g2.N < 95 || g2.N > 111 || g2.First > 10*time.Millisecond {
		t.Fatalf("an empty bucket over the next second: %+v, want about 100 sends, the first at most one interval on", g2)
	}
	all := append(sends, due(g2)...)
	if most := busiestWindow(all, time.Second); most > 100+10 {
		t.Fatalf("the busiest second of the sends granted holds %d, want at most the rate 100 plus the burst 10", most)
	}
	// The bucket is full up to a second ahead: nothing more within a tenth of a second.
	req.Within = 100 * time.Millisecond
	if g3 := take(t, q, b, req); g3.N != 0 {
		t.Fatalf("sends granted past what the rate allows: %+v", g3)
	}
}

// Replicas taking at the same time share one bucket: the sends granted to all of them together
// never exceed the rate plus the burst in any second, however many there are.
func TestTakeKeepsTheBurstAcrossReplicas(t *testing.T) {
	q, b := setup(t)
	const rps, burst, replicas = 50, 2, 6
	h := beat("a", true)
	h.CeilingRPS, h.Burst = rps, burst
	if _, err := q.Beat(b.ctx, h); err != nil {
		t.Fatal(err)
	}
	var (
		mu  sync.Mutex
		all []time.Time
		wg  sync.WaitGroup
	)
	end := time.Now().Add(1500 * time.Millisecond)
	for range replicas {
		wg.Go(func() {
			for time.Now().Before(end) {
				g, _, err := q.Take(b.ctx, queue.TakeRequest{Want: 3, Within: 50 * time.Millisecond, CeilingRPS: rps, Burst: burst, FloorRPS: 1})
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				all = append(all, due(g)...)
				mu.Unlock()
				time.Sleep(5 * time.Millisecond)
			}
		})
	}
	wg.Wait()
	if most := busiestWindow(all, time.Second); most > rps+burst {
		t.Fatalf("%d replicas were granted %d sends in their busiest second, want at most %d + %d", replicas, most, rps, burst)
	}
	if len(all) < rps {
		t.Fatalf("%d sends granted in 1.5s at %d/s", len(all), rps)
	}
	// At one instant, never more than the burst.
	if most := busiestWindow(all, time.Microsecond); most > burst {
		t.Fatalf("%d sends due at one instant, want at most the burst %d", most, burst)
	}
}

func TestTakeFollowsTheLowestLimitTheHoldAndOlderReplicas(t *testing.T) {
	q, b := setup(t)
	a, c := beat("a", true), beat("c", true)
	a.CeilingRPS, a.Burst = 100, 10
	c.CeilingRPS, c.Burst = 50, 1 // a rollout lowers both
	for _, h := range []queue.Heartbeat{a, c, a} {
		if _, err := q.Beat(b.ctx, h); err != nil {
			t.Fatal(err)
		}
	}
	req := queue.TakeRequest{Want: 5, Within: time.Second, CeilingRPS: 100, Burst: 10, FloorRPS: 1}
	if g := take(t, q, b, req); g.Every != 20*time.Millisecond || g.First > 0 || g.First < -time.Millisecond {
		t.Fatalf("beside a replica at 50/s with a burst of 1: %+v, want one send every 20ms and no burst", g)
	}
	// A replica whose own limit is lower than the table's, before its heartbeat wrote it.
	req.CeilingRPS = 20
	if g := take(t, q, b, req); g.Every != 50*time.Millisecond {
		t.Fatalf("a replica at 20/s: %+v, want one send every 50ms", g)
	}
	// A replica of an older version spends its own share outside the bucket.
	req.CeilingRPS = 100
	if _, err := b.pool.Exec(b.ctx, `
INSERT INTO erasure_workers (id, expires_at, busy, share_rps) VALUES ('old', now() + interval '1 minute', true, 30)`); err != nil {
		t.Fatal(err)
	}
	if g := take(t, q, b, req); g.Every != 50*time.Millisecond {
		t.Fatalf("beside an older replica using 30 of 50/s: %+v, want 20/s left, one send every 50ms", g)
	}
	// A Retry-After holds every send.
	if _, err := q.SlowDown(b.ctx, 0.5, 1, 3*time.Second); err != nil {
		t.Fatal(err)
	}
	if g := take(t, q, b, req); g.N != 0 || g.Hold < 2*time.Second || g.Hold > 3*time.Second {
		t.Fatalf("during a 3s hold: %+v, want nothing granted and the hold", g)
	}
}

// Sends reaching Knot up to Lateness after their time still keep every second within the limit
// plus the burst: the bucket's depth pays for the lateness where it is deep enough, the rate
// where it is not, and nothing is taken off low rates, where a second holds a whole call to spare.
func TestTakeRunsJustSlowEnoughForLateSends(t *testing.T) {
	q, b := setup(t)
	for _, c := range []struct {
		rps      float64
		burst    int
		every    time.Duration
		lateness time.Duration // allowed: 25ms, or half the depth up to 100ms
	}{
		{10, 1, 100 * time.Millisecond, 25 * time.Millisecond},       // 11 calls fit in 1.025s at 10/s: no cost
		{1000, 1, 1023976 * time.Nanosecond, 25 * time.Millisecond},  // 1001 in 1.025s
		{1000, 100, time.Millisecond, 49500 * time.Microsecond},      // 99ms of depth pays for half of it
		{1000, 20, 1004995 * time.Nanosecond, 25 * time.Millisecond}, // 19ms of depth: the rate pays 6ms, 1001 in 1.006s
		{1000, 1000, time.Millisecond, 100 * time.Millisecond},       // 999ms of depth: 100ms at most
	} {
		h := beat("a", true)
		h.CeilingRPS, h.Burst = c.rps, c.burst
		if _, err := q.Beat(b.ctx, h); err != nil {
			t.Fatal(err)
		}
		req := queue.TakeRequest{Want: int(3 * c.rps), Within: 3 * time.Second, CeilingRPS: c.rps, Burst: c.burst,
			FloorRPS: 1, Lateness: 25 * time.Millisecond, MaxLateness: 100 * time.Millisecond}
		g := take(t, q, b, req)
		if diff := g.Every - c.every; diff < -time.Microsecond || diff > time.Microsecond {
			t.Errorf("%g/s, burst %d: one send every %v, want %v", c.rps, c.burst, g.Every, c.every)
		}
		if diff := g.Lateness - c.lateness; diff < -time.Microsecond || diff > time.Microsecond {
			t.Errorf("%g/s, burst %d: sends may be %v late, want %v", c.rps, c.burst, g.Lateness, c.lateness)
		}
		// Every send as late as it may be, but every other one on time: the worst bunching.
		sends := due(g)
		for i := range sends {
			if i%2 == 1 {
				sends[i] = sends[i].Add(g.Lateness)
			}
		}
		if most, limit := busiestWindow(sends, time.Second+time.Nanosecond), int(c.rps)+c.burst; most > limit {
			t.Errorf("%g/s, burst %d: sends up to %v late put %d in a second, want at most %d", c.rps, c.burst, g.Lateness, most, limit)
		}
		if _, err := b.pool.Exec(b.ctx, `DELETE FROM erasure_rate_limit`); err != nil {
			t.Fatal(err)
		}
	}
}

// A take that expects its answer to take a while gets no send due before it comes back.
func TestTakeGivesNoSendDueBeforeItsAnswer(t *testing.T) {
	q, b := setup(t)
	h := beat("a", true)
	h.Burst = 1
	if _, err := q.Beat(b.ctx, h); err != nil {
		t.Fatal(err)
	}
	g := take(t, q, b, queue.TakeRequest{Want: 3, Within: time.Second, CeilingRPS: 100, Burst: 1, FloorRPS: 1, Lead: 5 * time.Millisecond})
	if g.N != 3 || g.First != 5*time.Millisecond {
		t.Fatalf("a take with a 5ms lead from a full bucket: %+v, want the first send due 5ms on", g)
	}
}
