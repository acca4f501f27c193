package onetrustfake

import (
	"bytes"
	"cmp"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/erasure-worker/erasure-worker/internal/fakekit"
)

// Body is the body the workflow's HTTP action sends for a subtask, as the customer templates it
// from the subtask's and the request's fields; a zero due leaves due_at out.
func Body(id, refID, user string, due time.Time) []byte {
	m := map[string]string{"subtask_id": id, "request_queue_ref_id": refID, "external_user_id": user}
	if !due.IsZero() {
		m["due_at"] = due.UTC().Format(time.RFC3339)
	}
	b, _ := json.Marshal(m)
	return b
}

// NewRefID returns a request reference id as OneTrust's are: ten upper-case letters and digits.
func NewRefID() string {
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
	var b [10]byte
	rand.Read(b[:])
	for i := range b {
		b[i] = alphabet[int(b[i])%len(alphabet)]
	}
	return string(b[:])
}

// PushSpec is the body of POST /_fake/push.
type PushSpec struct {
	// Target is the door ("http://127.0.0.1:8090/v1/onetrust/subtasks").
	Target string `json:"target"`
	// Bearer is the token the workflow sends as "Authorization: Bearer …" (the worker's
	// ONETRUST_INBOUND_TOKEN); empty sends none.
	Bearer string `json:"bearer"`
	// Count is how many subtasks to create and push.
	Count int `json:"count"`
	// IDPrefix starts every subtask id, followed by its number; empty: the ids are UUIDs, as
	// OneTrust's are.
	IDPrefix string `json:"id_prefix"`
	// UserPrefix starts every external_user_id, followed by its number; default "user-".
	UserPrefix string `json:"user_prefix"`
	// DueIn sets due_at this long after now ("720h"); empty leaves due_at out.
	DueIn Duration `json:"due_in"`
}

// PushResult is what one Push did.
type PushResult struct {
	Sent int `json:"sent"`
	// Answers counts the door's answers as Stats.PushAnswers does.
	Answers map[string]int `json:"answers"`
	// SubtaskIDs are the pushed subtasks' ids, in order.
	SubtaskIDs []string `json:"subtask_ids"`
}

// pushWorkers is how many pushes are in flight at once.
const pushWorkers = 4

// Push creates p.Count subtasks and pushes each to the door as the workflow would: POST, JSON
// (Body), "Authorization: Bearer p.Bearer". It records each answer and returns once all are
// answered or ctx is done; the error is ctx's, or says which field of p is wrong.
func (s *Server) Push(ctx context.Context, p PushSpec) (PushResult, error) {
	res := PushResult{Answers: map[string]int{}}
	if err := fakekit.CheckPush(p.Count, p.Target); err != nil {
		return res, err
	}
	switch {
	case p.DueIn < 0:
		return res, errors.New("due_in must not be negative")
	}
	userPrefix := cmp.Or(p.UserPrefix, "user-")
	var due time.Time
	if p.DueIn > 0 {
		due = s.now().Add(time.Duration(p.DueIn))
	}
	res.SubtaskIDs = make([]string, p.Count)
	for i := range res.SubtaskIDs {
		res.SubtaskIDs[i] = fakekit.NewUUID()
		if p.IDPrefix != "" {
			res.SubtaskIDs[i] = p.IDPrefix + strconv.Itoa(i+1)
		}
	}
	answers := make([]string, p.Count)
	slots := make(chan struct{}, pushWorkers)
	var wg sync.WaitGroup
	for i := 0; i < p.Count && ctx.Err() == nil; i++ {
		select {
		case slots <- struct{}{}:
		case <-ctx.Done():
			continue
		}
		wg.Go(func() {
			defer func() { <-slots }()
			id, ref, user := res.SubtaskIDs[i], NewRefID(), userPrefix+strconv.Itoa(i+1)
			s.AddSubtask(id, ref, user)
			answers[i] = s.send(ctx, p.Target, p.Bearer, id, Body(id, ref, user, due))
		})
	}
	wg.Wait()
	for _, a := range answers {
		if a != "" {
			res.Sent++
			res.Answers[a]++
		}
	}
	res.SubtaskIDs = res.SubtaskIDs[:res.Sent]
	if res.Sent < p.Count {
		return res, ctx.Err()
	}
	return res, nil
}

// send pushes one subtask and returns the answer's key in Stats.PushAnswers.
func (s *Server) send(ctx context.Context, target, bearer, id string, body []byte) string {
	answer, code := "no_answer", 0
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, target, bytes.NewReader(body))
	if err == nil {
		req.Header.Set("Content-Type", "application/json")
		if bearer != "" {
			req.Header.Set("Authorization", "Bearer "+bearer)
		}
		if resp, err := s.opts.Client.Do(req); err == nil {
			io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
			resp.Body.Close()
			code, answer = resp.StatusCode, strconv.Itoa(resp.StatusCode)
		}
	}
	s.mu.Lock()
	s.st.Pushed++
	s.st.PushAnswers[answer]++
	if st := s.subtasks[id]; st != nil {
		st.answer = code
	}
	s.mu.Unlock()
	return answer
}
