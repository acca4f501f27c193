package queue

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// Heartbeat is what a replica says of itself each time it renews its place in the shared rate
// limit.
type Heartbeat struct {
	ID         string
	Busy       bool
	ShareRPS   float64       // the rate it allowed itself since the last heartbeat
	CeilingRPS float64       // this replica's RATE_LIMIT_RPS
	Burst      int           // this replica's RATE_LIMIT_BURST (0: none of its own)
	StepRPS    float64       // how much the deployment's rate may rise per second after 429s stop
	Quiet      time.Duration // how long after the last 429 the rate stays down before rising
	TTL        time.Duration // how long this heartbeat keeps the replica counted as alive
	IdleWeight float64       // an idle replica's weight beside a busy one's 1
	Paused     bool          // the replica has paused on Knot's rejection of its credentials
}

// Deployment is the shared rate limit as one heartbeat saw it.
type Deployment struct {
	// CeilingRPS and Burst are the lowest RATE_LIMIT_RPS and RATE_LIMIT_BURST among the live
	// replicas, this one included: while a rollout changes them, the deployment keeps to the
	// strictest.
	CeilingRPS   float64
	Burst        int           // 0 when no live replica names one
	CurrentRPS   float64       // the deployment's rate now (at most CeilingRPS)
	Hold         time.Duration // nobody may call Knot for this long (a Retry-After)
	Others       int           // other live replicas
	OthersWeight float64       // the sum of their weights
}

// Beat renews the replica's row, raises the deployment's rate by the time elapsed since the
// last raise when no 429 came for a while, drops rows long dead, and returns what the replica
// needs to compute its share. It is one statement.
//
// The CTEs read the table as it was before this statement, so the replica's own ceiling and
// burst join the others' explicitly.
func (q *Queue) Beat(ctx context.Context, h Heartbeat) (Deployment, error) {
	const beatSQL = `
WITH me AS (
    INSERT INTO erasure_workers (id, busy, share_rps, expires_at, ceiling_rps, burst, takes_from_bucket, paused)
    VALUES ($1, $2, $3, now() + $7 * interval '1 millisecond', $4, nullif($9, 0), true, $10)
    ON CONFLICT (id) DO UPDATE
    SET heartbeat_at = now(), busy = excluded.busy, share_rps = excluded.share_rps, expires_at = excluded.expires_at,
        ceiling_rps = excluded.ceiling_rps, burst = excluded.burst, takes_from_bucket = true, paused = excluded.paused
),
gone AS (
    DELETE FROM erasure_workers WHERE expires_at < now() - interval '1 hour'
),
others AS (
    SELECT count(*) AS n,
           coalesce(sum(CASE WHEN busy THEN 1.0 ELSE $8 END), 0)::float8 AS weight,
           least($4, min(ceiling_rps)) AS ceiling,
           coalesce(least(nullif($9, 0), min(burst)), 0) AS burst
    FROM erasure_workers
    WHERE id <> $1 AND expires_at > now()
),
lim AS (
    INSERT INTO erasure_rate_limit AS l (ceiling_rps, current_rps, burst)
    SELECT ceiling, ceiling, nullif(burst, 0) FROM others
    ON CONFLICT (singleton) DO UPDATE
    SET ceiling_rps = excluded.ceiling_rps, burst = excluded.burst,
        current_rps = CASE
            WHEN l.decreased_at > now() - $6 * interval '1 millisecond' THEN least(l.current_rps, excluded.ceiling_rps)
            ELSE least(excluded.ceiling_rps, l.current_rps + $5 * extract(epoch FROM now() - l.increased_at))
        END,
        increased_at = now()
    RETURNING current_rps, ceiling_rps, greatest(extract(epoch FROM l.hold_until - now()), 0) AS hold
)
SELECT lim.ceiling_rps, others.burst, lim.current_rps, lim.hold::float8, others.n, others.weight
FROM lim, others`
	var d Deployment
	var holdSeconds float64
	err := q.pool.QueryRow(ctx, beatSQL, h.ID, h.Busy, h.ShareRPS, h.CeilingRPS, h.StepRPS,
		h.Quiet.Milliseconds(), h.TTL.Milliseconds(), h.IdleWeight, h.Burst, h.Paused).
		Scan(&d.CeilingRPS, &d.Burst, &d.CurrentRPS, &holdSeconds, &d.Others, &d.OthersWeight)
	if err != nil {
		return Deployment{}, fmt.Errorf("rate limit heartbeat: %w", err)
	}
	d.Hold = time.Duration(holdSeconds * float64(time.Second))
	return d, nil
}

// TakeRequest asks the deployment's bucket for sends.
type TakeRequest struct {
	Want       int           // sends wanted
	Within     time.Duration // only sends due within this long from now
	CeilingRPS float64       // this replica's RATE_LIMIT_RPS, in case its heartbeat has not lowered the table's yet
	Burst      int           // this replica's RATE_LIMIT_BURST, likewise
	FloorRPS   float64       // the rate never falls below this, whatever older replicas hold
	// Lateness is how long after its due time a send may at least reach Knot: the bucket runs
	// just slow enough that sends that late never put more than the limit plus the burst in any
	// second. Where the bucket is deep, half its depth, up to MaxLateness, is allowed instead:
	// it costs fewer sends at once after a lull, not rate.
	Lateness, MaxLateness time.Duration
	// Lead is how long the answer is expected to take to come back: no send is due before it,
	// so that the trip does not eat into a send's lateness.
	Lead time.Duration
}

// Grant is the sends the bucket gave: the k-th (from 0) is due First + k·Every after the
// database's clock read At (at once when that is negative). A replica adds these durations to
// its own clock when the answer arrives, which is later than At: it never sends early.
type Grant struct {
	N            int
	First, Every time.Duration
	Hold         time.Duration // a Retry-After holds every call this long; N is then 0
	At           time.Time     // the database's clock when it granted (for tests and status)
	Lateness     time.Duration // how long after its time each send may reach Knot
}

// Take takes up to r.Want sends from the deployment's bucket, all due within r.Within: one
// statement, the bucket's row locked only while it runs. It is a GCRA (the generic cell rate
// algorithm): tat, the theoretical arrival time, moves on by one emission interval per send
// granted, and sends may run up to the burst ahead of it.
//
// The rate is the deployment's current rate (at most the lowest live ceiling and this
// replica's), less what replicas of an older version, which do not take from the bucket,
// allowed themselves. Sends up to r.Lateness late must still keep any second within the limit
// plus the burst B: the sends granted are GCRA-conforming, so any span of 1s + lateness holds
// at most floor(r·(1s + lateness) + r·tau) + 1 of their due times, tau being how far ahead of
// the rate they may run. The lateness allowed is r.Lateness, or half the bucket's depth
// ((B-1)/limit) up to r.MaxLateness where that is more (the grant says which). It is paid
// first from the depth: a reserve of up to the lateness comes off tau, so fewer sends go at
// once after a lull. What the depth cannot pay (all of it at a burst of 1) the rate pays:
// r < (floor(limit) + 1) / (1s + lateness - reserve) makes the span hold at most limit + B. At
// 25ms that costs nothing below about 40/s or with a burst of a fortieth of the rate, and at
// most 2.5%.
//
// It returns ok false when no replica has beaten yet (the bucket has no row).
//
// The clock is read with clock_timestamp() once the row is locked, not now(), which is the
// start of a statement that may have waited for the lock: sends computed from a stale clock
// would go out late and bunch with the next replica's.
func (q *Queue) Take(ctx context.Context, r TakeRequest) (g Grant, ok bool, err error) {
	const takeSQL = `
WITH cur AS (
    SELECT tat, hold_until, least(current_rps, ceiling_rps, $1) AS rps, least(coalesce(burst, $2), $2) AS burst
    FROM erasure_rate_limit
    FOR UPDATE
),
older AS (
    SELECT coalesce(sum(share_rps), 0) AS rps
    FROM erasure_workers
    WHERE expires_at > now() AND NOT takes_from_bucket
),
c AS (
    SELECT cur.tat, cur.hold_until, cur.burst, clock_timestamp() AS ts,
           greatest(cur.rps - older.rps, $3) AS limit_rps
    FROM cur, older
),
m AS (
    SELECT c.*, greatest($4::float8, least((c.burst - 1) / c.limit_rps / 2, $8::float8)) AS lateness
    FROM c
),
l AS (
    SELECT m.*, least((m.burst - 1) / m.limit_rps, m.lateness) AS reserve
    FROM m
),
r AS (
    SELECT l.*, least(l.limit_rps, (floor(l.limit_rps) + 1) / (1 + l.lateness - l.reserve) * (1 - 1e-9)) AS rps
    FROM l
),
d AS (
    SELECT r.*, greatest(r.tat, r.ts + $7 * interval '1 second') AS t0, greatest((r.burst - 1) / r.rps - r.reserve, 0) AS tau
    FROM r
),
g AS (
    SELECT d.*,
           CASE WHEN d.hold_until > d.ts THEN 0
                ELSE greatest(0, least($5, floor((extract(epoch FROM d.ts - d.t0) + $6 + d.tau) * d.rps + 1e-9)::int + 1))
           END AS n
    FROM d
),
upd AS (
    UPDATE erasure_rate_limit SET tat = g.t0 + g.n / g.rps * interval '1 second' FROM g
)
SELECT n, (extract(epoch FROM t0 - ts) - tau)::float8, (1 / rps)::float8,
       greatest(extract(epoch FROM hold_until - ts), 0)::float8, ts, lateness
FROM g`
	var first, every, hold, lateness float64
	err = q.pool.QueryRow(ctx, takeSQL, r.CeilingRPS, max(r.Burst, 1), r.FloorRPS, r.Lateness.Seconds(),
		r.Want, r.Within.Seconds(), r.Lead.Seconds(), r.MaxLateness.Seconds()).Scan(&g.N, &first, &every, &hold, &g.At, &lateness)
	if errors.Is(err, pgx.ErrNoRows) {
		return Grant{}, false, nil
	}
	if err != nil {
		return Grant{}, false, fmt.Errorf("take sends from the rate limit: %w", err)
	}
	g.First, g.Every, g.Hold, g.Lateness = seconds(first), seconds(every), seconds(hold), seconds(lateness)
	return g, true, nil
}

func seconds(s float64) time.Duration { return time.Duration(s * float64(time.Second)) }

// SlowDown records that Knot answered 429: the deployment's rate is multiplied by factor (at
// most once a second, however many replicas were told at once, and never below floor) and no
// replica calls Knot for hold. It returns the deployment's rate after.
func (q *Queue) SlowDown(ctx context.Context, factor, floorRPS float64, hold time.Duration) (float64, error) {
	const slowSQL = `
UPDATE erasure_rate_limit
SET current_rps = CASE WHEN decreased_at < now() - interval '1 second'
                       THEN greatest($2, current_rps * $1) ELSE current_rps END,
    decreased_at = CASE WHEN decreased_at < now() - interval '1 second' THEN now() ELSE decreased_at END,
    hold_until = greatest(hold_until, now() + $3 * interval '1 millisecond')
RETURNING current_rps`
	var rps float64
	err := q.pool.QueryRow(ctx, slowSQL, factor, floorRPS, hold.Milliseconds()).Scan(&rps)
	if err != nil {
		return 0, fmt.Errorf("rate limit slow down: %w", err)
	}
	return rps, nil
}

// Leave ends the replica's row at a clean shutdown, so that the others take over its share at
// their next heartbeat instead of after its TTL. A replica that still holds claims (its last
// results could not be recorded) is marked gone rather than removed, so that any replica takes
// them back at once.
func (q *Queue) Leave(ctx context.Context, id string) error {
	_, err := q.pool.Exec(ctx, `
WITH held AS (
    SELECT EXISTS (SELECT 1 FROM erasure_requests WHERE status = 'running' AND lease_owner = $1) AS holding
),
removed AS (
    DELETE FROM erasure_workers WHERE id = $1 AND NOT (SELECT holding FROM held)
)
UPDATE erasure_workers SET expires_at = now() - interval '1 millisecond'
WHERE id = $1 AND (SELECT holding FROM held)`, id)
	return err
}

// Replica is one row of erasure_workers, for `status`.
type Replica struct {
	ID           string
	StartedAt    time.Time
	HeartbeatAge time.Duration
	Busy         bool
	ShareRPS     float64
	Alive        bool
	// Paused is whether the replica has paused on Knot's rejection of its credentials, as its
	// latest heartbeat said; PausedKnown is false for a replica of a release before 011, which
	// does not say.
	Paused, PausedKnown bool
}

// RateLimit is the shared rate limit and the replicas behind it, for `status` and the console.
type RateLimit struct {
	Found                  bool    // false before any replica has run: the row does not exist
	CeilingRPS, CurrentRPS float64 // zero when no replica has run yet
	Burst                  int     // 0: not recorded
	// HoldUntil is until when a 429's Retry-After holds every replica back, read against Now,
	// the database's clock.
	HoldUntil, Now time.Time
	Replicas       []Replica
}

// ReadRateLimit returns the shared rate limit and every replica seen in the last hour.
func (q *Queue) ReadRateLimit(ctx context.Context) (RateLimit, error) {
	var rl RateLimit
	var burst *int
	var hold *time.Time
	err := q.pool.QueryRow(ctx, `
SELECT l.singleton IS NOT NULL, coalesce(l.ceiling_rps, 0), coalesce(l.current_rps, 0), l.burst, l.hold_until, now()
FROM (SELECT) AS one LEFT JOIN erasure_rate_limit AS l ON true`).Scan(&rl.Found, &rl.CeilingRPS, &rl.CurrentRPS, &burst, &hold, &rl.Now)
	if err != nil {
		return RateLimit{}, fmt.Errorf("read rate limit: %w", err)
	}
	if burst != nil {
		rl.Burst = *burst
	}
	if hold != nil {
		rl.HoldUntil = *hold
	}
	rows, err := q.pool.Query(ctx, `
SELECT id, started_at, extract(epoch FROM now() - heartbeat_at)::float8, busy, share_rps, expires_at > now(),
       coalesce(paused, false), paused IS NOT NULL
FROM erasure_workers
ORDER BY started_at, id`)
	if err != nil {
		return RateLimit{}, fmt.Errorf("read replicas: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var r Replica
		var age float64
		if err := rows.Scan(&r.ID, &r.StartedAt, &age, &r.Busy, &r.ShareRPS, &r.Alive, &r.Paused, &r.PausedKnown); err != nil {
			return RateLimit{}, fmt.Errorf("read replicas: %w", err)
		}
		r.HeartbeatAge = time.Duration(age * float64(time.Second))
		rl.Replicas = append(rl.Replicas, r)
	}
	return rl, rows.Err()
}
