package webhook

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The cross-language test vector of the Standard Webhooks libraries (Go and C#: TestWebhookSign).
const (
	vectorSecret    = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
	vectorID        = "msg_p5jXN8AQM9LWM0D4loKWxJek"
	vectorTimestamp = 1614265330
	vectorBody      = `{"test": 2432232314}`
	vectorSignature = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
)

// otherSecret is a second valid secret: 32 random-looking bytes.
var otherSecret = "whsec_" + base64.StdEncoding.EncodeToString([]byte("0123456789abcdef0123456789ABCDEF"))

// hmacV1 computes a v1 signature from the spec's words alone, without the library.
func hmacV1(t *testing.T, secret, id string, ts int64, body string) string {
	t.Helper()
	key, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(secret, "whsec_"))
	if err != nil {
		t.Fatal(err)
	}
	m := hmac.New(sha256.New, key)
	m.Write([]byte(id + "." + strconv.FormatInt(ts, 10) + "." + body))
	return "v1," + base64.StdEncoding.EncodeToString(m.Sum(nil))
}

func vectorHeader(sig string) http.Header {
	h := http.Header{}
	h.Set(HeaderID, vectorID)
	h.Set(HeaderTimestamp, strconv.Itoa(vectorTimestamp))
	h.Set(HeaderSignature, sig)
	return h
}

func TestSignMatchesTheSpecVector(t *testing.T) {
	t.Parallel()
	key, err := parseSecret("secret", vectorSecret)
	if err != nil {
		t.Fatal(err)
	}
	if got := newSigner(key).sign(vectorID, time.Unix(vectorTimestamp, 0), []byte(vectorBody)); got != vectorSignature {
		t.Errorf("sign = %s, want the libraries' %s", got, vectorSignature)
	}
	if got := hmacV1(t, vectorSecret, vectorID, vectorTimestamp, vectorBody); got != vectorSignature {
		t.Errorf("the test's own HMAC = %s, want %s", got, vectorSignature)
	}
}

func TestVerify(t *testing.T) {
	t.Parallel()
	at := time.Unix(vectorTimestamp, 0)
	good := vectorSignature
	wrong := hmacV1(t, otherSecret, vectorID, vectorTimestamp, vectorBody)
	tests := []struct {
		name      string
		secret    string
		header    http.Header
		body      string
		now       time.Time
		tolerance time.Duration
		want      error // nil: accepted
	}{
		{"the vector", vectorSecret, vectorHeader(good), vectorBody, at, 0, nil},
		{"one of several signatures (key rotation)", vectorSecret, vectorHeader(wrong + " " + good), vectorBody, at, 0, nil},
		{"an asymmetric signature beside it is skipped", vectorSecret, vectorHeader("v1a,bm90IGEgc2lnbmF0dXJl " + good), vectorBody, at, 0, nil},
		{"4m59s old", vectorSecret, vectorHeader(good), vectorBody, at.Add(4*time.Minute + 59*time.Second), 0, nil},
		{"4m59s ahead", vectorSecret, vectorHeader(good), vectorBody, at.Add(-4*time.Minute - 59*time.Second), 0, nil},
		{"5m01s old", vectorSecret, vectorHeader(good), vectorBody, at.Add(5*time.Minute + time.Second), 0, ErrStaleTimestamp},
		{"5m01s ahead", vectorSecret, vectorHeader(good), vectorBody, at.Add(-5*time.Minute - time.Second), 0, ErrStaleTimestamp},
		{"an hour old within a 2h tolerance", vectorSecret, vectorHeader(good), vectorBody, at.Add(time.Hour), 2 * time.Hour, nil},
		{"a minute old beyond a 30s tolerance", vectorSecret, vectorHeader(good), vectorBody, at.Add(time.Minute), 30 * time.Second, ErrStaleTimestamp},
		{"body changed by a space", vectorSecret, vectorHeader(good), `{"test":2432232314}`, at, 0, ErrNoMatchingSignature},
		{"another secret", otherSecret, vectorHeader(good), vectorBody, at, 0, ErrNoMatchingSignature},
		{"only the wrong signature", vectorSecret, vectorHeader(wrong), vectorBody, at, 0, ErrNoMatchingSignature},
		{"right bytes under v1a", vectorSecret, vectorHeader(strings.Replace(good, "v1,", "v1a,", 1)), vectorBody, at, 0, ErrNoMatchingSignature},
		{"signature without version", vectorSecret, vectorHeader(strings.TrimPrefix(good, "v1,")), vectorBody, at, 0, ErrNoMatchingSignature},
		{"no id", vectorSecret, without(vectorHeader(good), HeaderID), vectorBody, at, 0, ErrMissingHeader},
		{"no timestamp", vectorSecret, without(vectorHeader(good), HeaderTimestamp), vectorBody, at, 0, ErrMissingHeader},
		{"no signature", vectorSecret, without(vectorHeader(good), HeaderSignature), vectorBody, at, 0, ErrMissingHeader},
		{"timestamp with a sign", vectorSecret, with(vectorHeader(good), HeaderTimestamp, "+1614265330"), vectorBody, at, 0, ErrBadTimestamp},
		{"timestamp in milliseconds far ahead", vectorSecret, with(vectorHeader(good), HeaderTimestamp, "1614265330000"), vectorBody, at, 0, ErrStaleTimestamp},
		{"timestamp as a date", vectorSecret, with(vectorHeader(good), HeaderTimestamp, "2021-02-25T15:02:10Z"), vectorBody, at, 0, ErrBadTimestamp},
		{"secret without prefix", strings.TrimPrefix(vectorSecret, "whsec_"), vectorHeader(good), vectorBody, at, 0, ErrBadSecret},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := Verify(tt.secret, tt.header, []byte(tt.body), tt.now, tt.tolerance)
			if !errors.Is(err, tt.want) || (tt.want == nil) != (err == nil) {
				t.Fatalf("Verify = %v, want %v", err, tt.want)
			}
			if err != nil {
				msg := err.Error()
				for _, s := range []string{"MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "g0hM9SsE", vectorBody} {
					if strings.Contains(msg, s) {
						t.Errorf("the error %q shows %q", msg, s)
					}
				}
			}
		})
	}
}

func with(h http.Header, k, v string) http.Header { h.Set(k, v); return h }
func without(h http.Header, k string) http.Header { h.Del(k); return h }

func TestSecretsAreCheckedWithoutBeingShown(t *testing.T) {
	t.Parallel()
	b64 := func(n int) string { return base64.StdEncoding.EncodeToString([]byte(strings.Repeat("k", n))) }
	tests := []struct {
		name, secret, want string
	}{
		{"no prefix", b64(32), "must start with whsec_"},
		{"other prefix", "whsk_" + b64(32), "must start with whsec_"},
		{"bad base64", "whsec_kkkk$kkkkkkkkkkkkkkkkkkkkkkkkkkk", "not standard base64"},
		{"URL alphabet", "whsec_" + base64.URLEncoding.EncodeToString([]byte(strings.Repeat("\xfb", 30))), "not standard base64"},
		{"missing padding", "whsec_" + strings.TrimRight(b64(25), "="), "not standard base64"},
		{"23 bytes", "whsec_" + b64(23), "decodes to 23 bytes"},
		{"65 bytes", "whsec_" + b64(65), "decodes to 65 bytes"},
		{"empty", "", "must start with whsec_"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := parseSecret("REPORT_WEBHOOK_SECRET", tt.secret)
			if !errors.Is(err, ErrBadSecret) || !strings.Contains(err.Error(), tt.want) || !strings.HasPrefix(err.Error(), "REPORT_WEBHOOK_SECRET: ") {
				t.Fatalf("parseSecret = %v, want REPORT_WEBHOOK_SECRET: ... %q", err, tt.want)
			}
			if body := strings.TrimPrefix(tt.secret, "whsec_"); len(body) > 3 && strings.Contains(err.Error(), body[:4]) {
				t.Errorf("the error %q shows part of the secret", err)
			}
		})
	}
	for _, n := range []int{24, 32, 64} {
		if _, err := parseSecret("s", "whsec_"+b64(n)); err != nil {
			t.Errorf("a %d-byte secret: %v", n, err)
		}
	}
}
