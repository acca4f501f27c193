package worker

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/erasure-worker/erasure-worker/queue"
)

// The rate limit's promise, proved over a grid of settings on a simulated clock: for every
// RATE_LIMIT_RPS and every RATE_LIMIT_BURST from 1, with 1 and with 3 replicas, at least 95% of
// the limit over any 10s once a backlog waits, and never more than limit + burst calls in any
// second at Knot. Each replica is the real heartbeat, bucket client and pacer (synctest runs
// them on a clock that moves only when every goroutine waits); the store is simStore below,
// the bucket's statement (queue.Take, tested on PostgreSQL in the queue package) done in Go;
// the trips to the database and to Knot take random times, as they do. Both figures are
// counted where the calls arrive at Knot. The quietest 10s are the fewest calls in any 10s that
// begin with a call: a window that begins just after one loses it while the call ten seconds on
// may arrive a millisecond late, so that at 1/s any stream, however exact, has windows of 9.
func TestRateLimitHoldsAtEveryRateAndBurst(t *testing.T) {
	type cell struct {
		rps      float64
		burst    int
		replicas int
	}
	var cells []cell
	for _, rps := range []float64{0.5, 1, 3, 10, 40, 100, 300, 1000, 5000} {
		bursts := []int{1, 2, max(1, int(rps/10)), max(1, int(rps))}
		slices.Sort(bursts)
		for _, burst := range slices.Compact(bursts) {
			for _, replicas := range []int{1, 3} {
				cells = append(cells, cell{rps, burst, replicas})
			}
		}
	}
	for _, c := range cells {
		t.Run(fmt.Sprintf("rps=%g/burst=%d/replicas=%d", c.rps, c.burst, c.replicas), func(t *testing.T) {
			t.Parallel()
			synctest.Test(t, func(t *testing.T) {
				arrivals := simulate(t, c.rps, c.burst, c.replicas, 12*time.Second)
				least := fewestInWindow(arrivals, 10*time.Second)
				most := mostInWindow(arrivals, time.Second)
				if want := 0.95 * 10 * c.rps; float64(least) < want {
					t.Errorf("the quietest 10s held %d calls, want at least %.1f (95%% of the limit)", least, want)
				}
				if limit := int(math.Floor(c.rps + float64(c.burst))); most > limit {
					t.Errorf("the busiest second held %d calls, want at most %d (limit + burst)", most, limit)
				}
				t.Logf("quietest 10s: %d calls (%.1f%% of the limit); busiest second: %d (limit + burst %g)",
					least, 100*float64(least)/(10*c.rps), most, c.rps+float64(c.burst))
			})
		})
	}
}

// simulate runs replicas against one simStore with a backlog that never runs out, for d of
// simulated time, and returns when each call reached Knot, in order.
func simulate(t *testing.T, rps float64, burst, replicas int, d time.Duration) []time.Time {
	ctx, cancel := context.WithCancel(t.Context())
	store := newSimStore()
	const knotLatency = 5 * time.Millisecond
	// Enough calls in flight that concurrency never holds the rate back: a replica may be
	// granted the whole deployment's rate for a while.
	concurrency := max(4, int(math.Ceil(rps*(knotLatency+lateKnot).Seconds()*2)))
	var (
		mu       sync.Mutex
		arrivals []time.Time
		wg       sync.WaitGroup
	)
	for i := range replicas {
		cfg := Config{ID: fmt.Sprintf("replica-%d", i), RateLimit: rps, Burst: burst}
		cfg.setDefaults()
		b, live, p := newRateLimit(store, cfg, func() bool { return true })
		wg.Go(func() { live.run(ctx) })
		wg.Go(func() { b.run(ctx) })
		for j := range concurrency {
			rnd := rand.New(rand.NewPCG(uint64(i), uint64(j)))
			wg.Go(func() {
				for {
					if err := p.wait(ctx, time.Now().Add(time.Hour)); err != nil {
						return
					}
					// The trip to Knot takes longer for some calls than for others.
					time.Sleep(time.Duration(rnd.Int64N(int64(lateKnot))))
					mu.Lock()
					arrivals = append(arrivals, time.Now())
					mu.Unlock()
					time.Sleep(knotLatency)
				}
			})
		}
	}
	time.Sleep(d)
	cancel()
	wg.Wait()
	if len(arrivals) == 0 {
		t.Fatal("no call reached Knot")
	}
	slices.SortFunc(arrivals, time.Time.Compare)
	return arrivals
}

// fewestInWindow is the fewest arrivals in any window [s, s+w) that begins with an arrival
// and ends by the last one.
func fewestInWindow(ts []time.Time, w time.Duration) int {
	fewest, j := len(ts), 0
	for i := range ts {
		if ts[i].Add(w).After(ts[len(ts)-1]) {
			break
		}
		for ts[j].Before(ts[i].Add(w)) {
			j++
		}
		fewest = min(fewest, j-i)
	}
	return fewest
}

// mostInWindow is the most arrivals in any closed window of length w.
func mostInWindow(ts []time.Time, w time.Duration) int {
	most, j := 0, 0
	for i := range ts {
		for ts[i].Sub(ts[j]) > w {
			j++
		}
		most = max(most, i-j+1)
	}
	return most
}

// simStore is the deployment's shared rate limit as queue keeps it in PostgreSQL, in memory:
// the live replicas' rows, and the bucket's GCRA as queue.Take computes it. Each call takes a
// random round trip; the bucket reads its clock halfway, as the database does.
type simStore struct {
	mu       sync.Mutex
	replicas map[string]simReplica
	tat      time.Time
	rnd      *rand.Rand
}

type simReplica struct {
	expires time.Time
	ceiling float64
	burst   int
}

func newSimStore() *simStore {
	return &simStore{replicas: map[string]simReplica{}, rnd: rand.New(rand.NewPCG(1, 2))}
}

// trip sleeps half a round trip to the database: 0.5 to 1.5ms.
func (s *simStore) trip() {
	s.mu.Lock()
	d := 500*time.Microsecond + time.Duration(s.rnd.Int64N(int64(time.Millisecond)))
	s.mu.Unlock()
	time.Sleep(d)
}

// limits are the lowest ceiling and burst of the live replicas.
func (s *simStore) limits(now time.Time) (ceiling float64, burst int) {
	ceiling, burst = math.Inf(1), math.MaxInt
	for _, r := range s.replicas {
		if r.expires.After(now) {
			ceiling, burst = min(ceiling, r.ceiling), min(burst, r.burst)
		}
	}
	return ceiling, burst
}

func (s *simStore) Beat(_ context.Context, h queue.Heartbeat) (queue.Deployment, error) {
	s.trip()
	defer s.trip()
	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now()
	s.replicas[h.ID] = simReplica{expires: now.Add(h.TTL), ceiling: h.CeilingRPS, burst: h.Burst}
	d := queue.Deployment{}
	d.CeilingRPS, d.Burst = s.limits(now)
	d.CurrentRPS = d.CeilingRPS
	for id, r := range s.replicas {
		if id != h.ID && r.expires.After(now) {
			d.Others++
			d.OthersWeight++
		}
	}
	return d, nil
}

func (s *simStore) Take(_ context.Context, r queue.TakeRequest) (queue.Grant, bool, error) {
	s.trip()
	defer s.trip()
	s.mu.Lock()
	defer s.mu.Unlock()
	ts := time.Now()
	ceiling, burst := s.limits(ts)
	if len(s.replicas) == 0 {
		return queue.Grant{}, false, nil
	}
	limit := max(min(ceiling, r.CeilingRPS), r.FloorRPS)
	burst = min(burst, max(r.Burst, 1))
	lateness := max(r.Lateness.Seconds(), min(float64(burst-1)/limit/2, r.MaxLateness.Seconds()))
	reserve := min(float64(burst-1)/limit, lateness)
	rps := min(limit, (math.Floor(limit)+1)/(1+lateness-reserve)*(1-1e-9))
	t0 := ts.Add(r.Lead)
	if s.tat.After(t0) {
		t0 = s.tat
	}
	tau := max(float64(burst-1)/rps-reserve, 0)
	n := int(math.Floor((ts.Sub(t0).Seconds()+r.Within.Seconds()+tau)*rps+1e-9)) + 1
	n = max(0, min(r.Want, n))
	s.tat = t0.Add(seconds(float64(n) / rps))
	return queue.Grant{N: n, First: t0.Sub(ts) - seconds(tau), Every: seconds(1 / rps), At: ts, Lateness: seconds(lateness)}, true, nil
}

func (s *simStore) SlowDown(context.Context, float64, float64, time.Duration) (float64, error) {
	return 0, nil
}

func (s *simStore) Leave(context.Context, string) error { return nil }

func seconds(s float64) time.Duration { return time.Duration(s * float64(time.Second)) }
