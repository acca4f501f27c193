package queue_test

import (
	"testing"
	"time"

	"github.com/erasure-worker/erasure-worker/queue"
)

func beat(id string, busy bool) queue.Heartbeat {
	return queue.Heartbeat{ID: id, Busy: busy, CeilingRPS: 100, StepRPS: 10, Quiet: 2 * time.Second, TTL: time.Second, IdleWeight: 0.01}
}

func TestBeatCountsLiveReplicasAndTheirWeights(t *testing.T) {
	q, b := setup(t)
	d, err := q.Beat(b.ctx, beat("a", true))
	if err != nil {
		t.Fatal(err)
	}
	if d.CurrentRPS != 100 || d.Others != 0 || d.Hold != 0 {
		t.Fatalf("first replica sees %+v, want the full 100 and nobody else", d)
	}
	if _, err := q.Beat(b.ctx, beat("b", false)); err != nil {
		t.Fatal(err)
	}
	d, err = q.Beat(b.ctx, beat("a", true))
	if err != nil || d.Others != 1 || d.OthersWeight != 0.01 {
		t.Fatalf("a sees %+v (%v), want one idle other", d, err)
	}
	// A replica whose heartbeat expired no longer counts; one that leaves stops at once.
	if _, err := b.pool.Exec(b.ctx, `UPDATE erasure_workers SET expires_at = now() - interval '1 second' WHERE id = 'b'`); err != nil {
		t.Fatal(err)
	}
	if d, _ = q.Beat(b.ctx, beat("a", true)); d.Others != 0 {
		t.Fatalf("an expired replica still counts: %+v", d)
	}
	if _, err := q.Beat(b.ctx, beat("c", true)); err != nil {
		t.Fatal(err)
	}
	if err := q.Leave(b.ctx, "c"); err != nil {
		t.Fatal(err)
	}
	if d, _ = q.Beat(b.ctx, beat("a", true)); d.Others != 0 {
		t.Fatalf("a replica that left still counts: %+v", d)
	}
	rl, err := q.ReadRateLimit(b.ctx)
	if err != nil || rl.CeilingRPS != 100 || len(rl.Replicas) != 2 {
		t.Fatalf("ReadRateLimit: %+v %v, want a and the expired b", rl, err)
	}
}

func TestSlowDownHalvesOnceASecondHoldsAndRecovers(t *testing.T) {
	q, b := setup(t)
	if _, err := q.Beat(b.ctx, beat("a", true)); err != nil {
		t.Fatal(err)
	}
	// Three replicas told 429 at once halve the deployment's rate once, not three times.
	for range 3 {
		rps, err := q.SlowDown(b.ctx, 0.5, 1, 2*time.Second)
		if err != nil || rps != 50 {
			t.Fatalf("slow down: %v %v, want 50", rps, err)
		}
	}
	d, err := q.Beat(b.ctx, beat("a", true))
	if err != nil || d.CurrentRPS != 50 || d.Hold < time.Second || d.Hold > 2*time.Second {
		t.Fatalf("after 429: %+v %v, want 50 and a hold of up to 2s", d, err)
	}
	// Within the quiet period the rate stays down; after it, it rises by the step per second
	// since the last raise, never above the ceiling.
	if _, err := b.pool.Exec(b.ctx, `UPDATE erasure_rate_limit SET decreased_at = now() - interval '10 seconds', increased_at = now() - interval '3 seconds', hold_until = 'epoch'`); err != nil {
		t.Fatal(err)
	}
	d, _ = q.Beat(b.ctx, beat("a", true))
	if d.CurrentRPS < 80 || d.CurrentRPS > 81 || d.Hold != 0 {
		t.Fatalf("after 3 quiet seconds: %+v, want 50 + 3×10 and no hold", d)
	}
	if _, err := b.pool.Exec(b.ctx, `UPDATE erasure_rate_limit SET increased_at = now() - interval '1 hour'`); err != nil {
		t.Fatal(err)
	}
	if d, _ = q.Beat(b.ctx, beat("a", true)); d.CurrentRPS != 100 {
		t.Fatalf("after an hour: %v, want the ceiling 100", d.CurrentRPS)
	}
}
