package worker

import (
	"context"
	"errors"
	"log/slog"
	"strconv"
	"time"

	"github.com/erasure-worker/erasure-worker/knotclient"
	"github.com/erasure-worker/erasure-worker/queue"
)

// carryOut makes the calls for one claimed request and hands the result to the recorder.
// probe marks the one request a paused worker sends to test the credentials.
func (w *Worker) carryOut(sendCtx, callCtx context.Context, job queue.Job, probe bool) {
	w.results <- w.attempt(sendCtx, callCtx, job, probe)
	w.slotFreed()
}

// attempt turns one claim into a queue transition, following the request's life in DESIGN.md.
func (w *Worker) attempt(sendCtx, callCtx context.Context, job queue.Job, probe bool) queue.Result {
	res := job.Result()
	log := w.log.With("request_id", job.ID, "request_ref", job.RequestRef, "attempt", job.Attempt)

	// A row that can never be sent fails alone, before it costs a call.
	if err := knotclient.ValidateExternalUserID(job.ExternalUserID); err != nil {
		code := asKnotError(err).ErrorCode
		log.Warn("request cannot be sent to Knot: failed", "reason", err.Error())
		res.Transition, res.Outcome = queue.Fail, queue.OutcomeInvalid
		res.ErrorCode, res.Error = code, err.Error()
		res.Calls = []queue.Call{{StartedAt: time.Now(), ErrorCode: code, Result: "invalid"}}
		return res
	}

	quick := w.cfg.newQuickBackoff()
	by := job.LeaseExpiresAt.Add(-w.cfg.sendMargin())
	for try := 1; ; try++ {
		if reason := w.whyNotSend(sendCtx, by, probe); reason != "" {
			return w.unsent(res, reason, 0, log)
		}
		if err := w.pacer.wait(sendCtx, by); err != nil {
			if tl, ok := asTooLate(err); ok {
				// Back unspent, and not claimable again before the hold ends: no replica may
				// call Knot until then.
				return w.unsent(res, tl.why, tl.hold, log)
			}
			return w.unsent(res, "shutting down", 0, log)
		}
		if reason := w.whyNotSend(sendCtx, by, probe); reason != "" {
			return w.unsent(res, reason, 0, log)
		}

		w.markStarted()
		start := time.Now()
		out, err := w.knot.DeleteUser(callCtx, job.ExternalUserID)
		elapsed := time.Since(start)
		w.metrics.KnotDuration.Observe(elapsed.Seconds())
		w.latency.observe(elapsed)
		call := queue.Call{StartedAt: start, Duration: elapsed}

		if err == nil {
			call.HTTPStatus, call.Result = out.StatusCode, out.Outcome.String()
			w.metrics.KnotRequests.WithLabelValues(strconv.Itoa(out.StatusCode)).Inc()
			res.Calls = append(res.Calls, call)
			res.Transition, res.Outcome = queue.Succeed, out.Outcome.String()
			log.Debug("erasure done", "outcome", res.Outcome)
			w.resume()
			return res
		}

		kerr := asKnotError(err)
		call.HTTPStatus, call.ErrorCode, call.Result = kerr.StatusCode, kerr.ErrorCode, kerr.Class.String()
		res.Calls = append(res.Calls, call)
		res.ErrorCode, res.Error = kerr.ErrorCode, kerr.Error()
		w.metrics.KnotRequests.WithLabelValues(codeLabel(kerr)).Inc()

		switch kerr.Class {
		case knotclient.Permanent:
			log.Warn("Knot refused the request for good: failed", "status", kerr.StatusCode, "error_code", kerr.ErrorCode)
			res.Transition, res.Outcome = queue.Fail, queue.OutcomeRejected
			w.resume() // the credentials were accepted
			return res

		case knotclient.Unauthorized:
			w.pause(kerr)
			res.Transition = queue.Release
			return res

		case knotclient.RateLimited:
			wait := min(max(kerr.RetryAfter, time.Second), w.cfg.MaxRetryAfter)
			w.pacer.slowDown(wait)
			log.Info("Knot answered 429: slowing down and retrying later", "retry_after", wait)
			res.Transition, res.Delay = queue.Release, wait
			return res
		}

		// Retryable: a few quick tries in process, then back to the table with a longer wait.
		if try < w.cfg.QuickRetries && sendCtx.Err() == nil {
			log.Debug("retryable Knot error: trying again shortly", "status", kerr.StatusCode, "error_code", kerr.ErrorCode)
			sleep(sendCtx, quick.NextBackOff())
			continue
		}
		if sendCtx.Err() != nil {
			res.Transition = queue.Retry
			return res
		}
		if job.Attempt >= w.cfg.MaxAttempts {
			log.Error("retryable Knot errors on every attempt: failed as exhausted",
				"attempts", job.Attempt, "status", kerr.StatusCode, "error_code", kerr.ErrorCode)
			res.Transition, res.Outcome = queue.Fail, queue.OutcomeExhausted
			return res
		}
		res.Transition, res.Delay = queue.Retry, w.cfg.retryDelay(job.Attempt)
		log.Info("retryable Knot error: retrying later", "status", kerr.StatusCode, "error_code", kerr.ErrorCode,
			"retry_in", res.Delay.Round(time.Second))
		return res
	}
}

// whyNotSend says why a claimed request that must go by by (its lease less the send margin)
// must not be sent now, or "" when it may be.
func (w *Worker) whyNotSend(sendCtx context.Context, by time.Time, probe bool) string {
	switch {
	case sendCtx.Err() != nil:
		return "shutting down"
	case w.paused.Load() && !probe:
		return "paused: credentials rejected"
	case w.cfg.clock().After(by):
		// Sending now could outlive the lease and race the replica that takes it back.
		return "lease about to expire"
	}
	return ""
}

// unsent puts a claim back that was not (or not again) sent, claimable again after delay:
// released, its attempt given back, when no call went out; else retried, since the calls made
// count.
func (w *Worker) unsent(res queue.Result, reason string, delay time.Duration, log *slog.Logger) queue.Result {
	log.Debug("putting the claim back unsent", "reason", reason, "calls_made", len(res.Calls), "claimable_in", delay)
	res.Transition = queue.Release
	if len(res.Calls) > 0 {
		res.Transition = queue.Retry
	}
	res.Delay = delay
	return res
}

func (w *Worker) pause(kerr *knotclient.Error) {
	w.pauseMu.Lock()
	defer w.pauseMu.Unlock()
	if w.paused.Swap(true) {
		return
	}
	w.metrics.Paused.Set(1)
	w.log.Error("Knot rejected the credentials (401): all claiming is paused and no request spends an attempt. "+
		"Check KNOT_CLIENT_ID and KNOT_SECRET; the worker tries one request every probe interval and resumes by itself once they work",
		"error_code", kerr.ErrorCode, "probe_interval", w.cfg.PauseProbeInterval)
}

func (w *Worker) resume() {
	if !w.paused.Load() {
		return
	}
	w.pauseMu.Lock()
	defer w.pauseMu.Unlock()
	if !w.paused.Swap(false) {
		return
	}
	w.metrics.Paused.Set(0)
	w.log.Info("Knot accepted the credentials again: resuming")
	w.nudge()
}

// asKnotError returns err as a *knotclient.Error; anything else is treated as retryable.
func asKnotError(err error) *knotclient.Error {
	var kerr *knotclient.Error
	if errors.As(err, &kerr) {
		return kerr
	}
	return &knotclient.Error{Class: knotclient.Retryable, ErrorCode: "connection", Err: err}
}

// codeLabel is the code label of erasure_knot_requests_total: the HTTP status, or why there was
// none (timeout, connection). A 2xx that is no success (a 200 whose body is not Knot's answer)
// counts by what it was, invalid_response, so that code="200" stays the count of deletions.
func codeLabel(kerr *knotclient.Error) string {
	if kerr.StatusCode != 0 && (kerr.StatusCode < 200 || kerr.StatusCode > 299 || kerr.ErrorCode == "") {
		return strconv.Itoa(kerr.StatusCode)
	}
	if kerr.ErrorCode != "" {
		return kerr.ErrorCode
	}
	return "error"
}
