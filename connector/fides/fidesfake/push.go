package fidesfake

import (
	"cmp"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strconv"

	"github.com/erasure-worker/erasure-worker/internal/fakekit"
)

// PushSpec is the body of POST /_fake/push.
type PushSpec struct {
	// Target is the door's URL ("http://127.0.0.1:8090/v1/fides/erasures").
	Target string `json:"target"`
	// AuthToken is the bearer token the SaaS connector is configured with (FIDES_AUTH_TOKEN);
	// empty sends none.
	AuthToken string `json:"auth_token"`
	// Count is how many erasure requests to send.
	Count int `json:"count"`
	// IDPrefix starts every privacy request id, followed by a new UUID; default "pri_".
	IDPrefix string `json:"id_prefix"`
	// UserPrefix starts every external_user_id, followed by 1..count; default "user-".
	UserPrefix string `json:"user_prefix"`
	// Polling sends no reply-to headers, as a SaaS config with the polling strategy.
	Polling bool `json:"polling"`
}

// PushResult is what one Push did.
type PushResult struct {
	Sent int `json:"sent"`
	// Answers counts the door's answers as Stats.Answers does.
	Answers map[string]int `json:"answers"`
	// PrivacyRequestIDs are the pushed requests' ids, in order.
	PrivacyRequestIDs []string `json:"privacy_request_ids"`
}

// Push sends p.Count erasure requests to p.Target as Fides' SaaS connector does, each for a new
// privacy request, and records each answer. It returns when all are answered or ctx is done;
// the error is ctx's, or says which field of p is wrong.
func (s *Server) Push(ctx context.Context, p PushSpec) (PushResult, error) {
	res := PushResult{Answers: map[string]int{}}
	if err := fakekit.CheckPush(p.Count, p.Target); err != nil {
		return res, err
	}
	idPrefix, userPrefix := cmp.Or(p.IDPrefix, "pri_"), cmp.Or(p.UserPrefix, "user-")
	var opts []RequestOption
	if p.Polling {
		opts = append(opts, Polling())
	}
	// One at a time, as one Fides worker sends its tasks' requests: demos push tens or
	// thousands, and a door's answer takes milliseconds.
	for i := 1; i <= p.Count && ctx.Err() == nil; i++ {
		id := idPrefix + fakekit.NewUUID()
		res.Answers[s.send(ctx, p.Target, p.AuthToken, id, userPrefix+strconv.Itoa(i), opts)]++
		res.Sent++
		res.PrivacyRequestIDs = append(res.PrivacyRequestIDs, id)
	}
	if res.Sent < p.Count {
		return res, ctx.Err()
	}
	return res, nil
}

// send sends one erasure request and records the answer; it returns the answer's key.
func (s *Server) send(ctx context.Context, target, bearer, id, user string, opts []RequestOption) string {
	key, status, malformed := "no_answer", 0, false
	req, err := s.ErasureRequest(target, bearer, id, user, opts...)
	if err == nil {
		var resp *http.Response
		if resp, err = s.client.Do(req.WithContext(ctx)); err == nil {
			status = resp.StatusCode
			key = "http_" + strconv.Itoa(status)
			var a struct {
				CorrelationID string `json:"correlation_id"`
			}
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
			resp.Body.Close()
			malformed = status >= 200 && status <= 299 && (json.Unmarshal(body, &a) != nil || a.CorrelationID != id)
		}
	}
	s.answered(id, status)
	s.mu.Lock()
	s.st.Pushed++
	s.st.Answers[key]++
	if malformed {
		s.st.MalformedAnswers++
	}
	s.mu.Unlock()
	return key
}
