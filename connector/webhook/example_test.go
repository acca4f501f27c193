package webhook_test

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"time"

	"github.com/erasure-worker/erasure-worker/connector/webhook"
)

// A receiver of erasure-worker's outcome webhooks: verify the raw body before parsing it, refuse
// a bad signature or a stale timestamp with 401, and use webhook-id to drop repeats.
func ExampleVerify() {
	const secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"     // REPORT_WEBHOOK_SECRET, shared with the worker
	now := func() time.Time { return time.Unix(1614265330, 0) } // time.Now in a real receiver

	receiver := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(io.LimitReader(r.Body, 64<<10))
		if err != nil {
			http.Error(w, "unreadable body", http.StatusBadRequest)
			return
		}
		if err := webhook.Verify(secret, r.Header, body, now(), webhook.DefaultTolerance); err != nil {
			status := http.StatusUnauthorized
			if errors.Is(err, webhook.ErrBadSecret) {
				status = http.StatusInternalServerError // our configuration, not the sender's fault
			}
			http.Error(w, "not verified", status)
			return
		}
		fmt.Printf("verified %s: %s\n", r.Header.Get(webhook.HeaderID), body)
		w.WriteHeader(http.StatusNoContent)
	})

	post := func(signature string) int {
		req := httptest.NewRequest("POST", "/hooks", strings.NewReader(`{"test": 2432232314}`))
		req.Header.Set(webhook.HeaderID, "msg_p5jXN8AQM9LWM0D4loKWxJek")
		req.Header.Set(webhook.HeaderTimestamp, "1614265330")
		req.Header.Set(webhook.HeaderSignature, signature)
		w := httptest.NewRecorder()
		receiver.ServeHTTP(w, req)
		return w.Code
	}
	fmt.Println(post("v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="))
	fmt.Println(post("v1,AAAA9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="))
	// Output:
	// verified msg_p5jXN8AQM9LWM0D4loKWxJek: {"test": 2432232314}
	// 204
	// 401
}
