//go:build chaos

package main

import (
	"context"
	"fmt"
	"net/url"
	"slices"
	"testing"
	"time"

	"github.com/erasure-worker/erasure-worker/connector/webhook/webhookfake"
	"github.com/erasure-worker/erasure-worker/queue/queuetest"
)

// The outbox's lanes (DESIGN.md): a receiver that hangs holds back only its own lane. Every
// Ketch callback hangs for a minute, with 20 requests' 40 callbacks filling the Ketch lane,
// while 60 requests come in through the HTTP API, whose webhook receiver is healthy: each of
// their outcomes reaches the receiver within 5s of the request's erasure. Measured on the
// reporter before lanes (one batch of 8 over every connector, waiting for its slowest), none
// of the 60 arrived within 20s.
func TestChaosLanes(t *testing.T) {
	t.Parallel()
	const (
		hungKetch = 20 // requests, 2 callbacks each: 40 reports for a lane of 8
		api       = 60
		hangFor   = time.Minute
		within    = 5 * time.Second
	)
	r := newReportsRig(t, 0)
	putFaults(t, r.doors.ketchURL, `{"hang_rate":1}`, nil)
	hungAt := time.Now()
	w := r.start(t, "worker")
	r.doors.waitAPI(t, 30*time.Second)
	r.doors.pushKetch(t, hungKetch)

	conn := r.db(t)
	queuetest.WaitFor(t, 30*time.Second, "the Ketch lane full of hung callbacks", func() bool {
		return chaosQueryInt(t, conn, `SELECT count(*) FROM erasure_reports WHERE connector = 'ketch' AND status = 'delivering'`) >= 8 &&
			r.doors.ketchStats(t).Faulted["hang"] >= 8
	})
	r.doors.submitAPI(t, api)
	queuetest.WaitFor(t, hangFor-time.Since(hungAt)-5*time.Second, "every API request's webhook at the receiver", func() bool {
		return r.doors.webhookStats(t).RequestRefs == api
	})
	if k := r.doors.ketchStats(t); k.Events != 0 {
		t.Fatalf("the Ketch fake took %d events while every callback hangs: the test proves nothing", k.Events)
	}
	if held := chaosQueryInt(t, conn, `SELECT count(*) FROM erasure_reports WHERE connector = 'ketch' AND status <> 'delivered'`); held != 2*hungKetch {
		t.Fatalf("%d Ketch reports undelivered while the webhooks arrived; want all %d held back by their hung receiver", held, 2*hungKetch)
	}

	// Per request: when its webhook arrived at the receiver, against when its erasure was done.
	delays := make([]time.Duration, 0, api)
	var late chaosRowErrors
	for i := range api {
		ref := fmt.Sprintf("api-%d", i)
		var completed time.Time
		if err := conn.QueryRow(context.Background(), `SELECT completed_at FROM erasure_requests WHERE request_ref = $1`, ref).Scan(&completed); err != nil {
			t.Fatalf("%s: %v", ref, err)
		}
		var got struct{ Events []webhookfake.Event }
		getJSON(t, r.doors.webhookURL+"/_fake/events?request_ref="+url.QueryEscape(ref), &got)
		if len(got.Events) == 0 {
			t.Fatalf("%s: the receiver holds no event", ref)
		}
		d := got.Events[0].ReceivedAt.Sub(completed)
		delays = append(delays, d)
		if d > within {
			late.add("%s: its webhook arrived %v after its erasure", ref, d.Round(time.Millisecond))
		}
	}
	late.report(t)
	slices.Sort(delays)
	t.Logf("beside %d hung Ketch reports: %d webhooks, from erasure to arrival: median %v, worst %v",
		2*hungKetch, api, delays[len(delays)/2].Round(time.Millisecond), delays[len(delays)-1].Round(time.Millisecond))

	// The hang lasts its minute, then the Ketch receiver answers again: its lane catches up,
	// and every report of both connectors is delivered once.
	time.Sleep(time.Until(hungAt.Add(hangFor)))
	putFaults(t, r.doors.ketchURL, `{}`, nil)
	r.waitDelivered(t, reportsWant{api: api, ketch: hungKetch}, 2*time.Minute)
	r.checkDelivered(t, reportsWant{api: api, ketch: hungKetch}, reportsAllow{})
	r.noLeaks(t, w)
}
