package ketch_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"time"

	"github.com/erasure-worker/erasure-worker/connector/ketch"
)

// A Ketch door reads the request, answers it, and later reports the outcome to every callback.
func Example() {
	callback := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Println("callback got", r.Header.Get("Authorization") != "", r.Header.Get("Content-Type"))
		w.WriteHeader(http.StatusNoContent)
	}))
	defer callback.Close()

	body := []byte(`{"apiVersion":"dsr/v1","kind":"DeleteRequest",
		"metadata":{"uid":"22880925-aac5-42f9-a653-cb6921d361ff","tenant":"axonic"},
		"request":{"identities":[{"identitySpace":"account_id","identityFormat":"raw","identityValue":"123"}],
			"callbacks":[{"url":"` + callback.URL + `/callback","headers":{"Authorization":"Bearer cb-secret"}}],
			"subject":{"email":"test@subject.com"},"dueTimestamp":1767225600}}`)

	req, err := ketch.ParseDeleteRequest(body, "account_id")
	var re *ketch.RequestError
	if errors.As(err, &re) {
		code, answer := re.Answer(time.Now())
		fmt.Println(code, string(answer))
		return
	}
	// Store req.Metadata.UID as request_ref, req.ExternalUserID, req.DueAt, and
	// ketch.EncodeCallbacks(req.Callbacks) until the report is delivered; then answer:
	fmt.Println(string(ketch.DeleteResponseBody(req.Metadata, ketch.StatusInProgress, "", "1042", req.DueAt)))

	// Later, once the erasure is done:
	status, reason := ketch.FinalEvent("deleted")
	for _, cb := range req.Callbacks {
		d := ketch.Notify(context.Background(), nil, cb, req.Metadata, ketch.Event{Status: status, Reason: reason, RequestID: "1042"})
		fmt.Println(d.Result, d.HTTPStatus)
	}
	// Output:
	// {"apiVersion":"dsr/v1","kind":"DeleteResponse","metadata":{"uid":"22880925-aac5-42f9-a653-cb6921d361ff","tenant":"axonic"},"response":{"status":"in_progress","expectedCompletionTimestamp":1767225600,"requestID":"1042"}}
	// callback got true application/json
	// delivered 204
}
