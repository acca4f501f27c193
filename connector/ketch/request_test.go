package ketch

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"
)

// Markers planted in test bodies: none may reach an error text, a String or a log line.
const (
	testSpace    = "account_id"
	testUID      = "22880925-aac5-42f9-a653-cb6921d361ff"
	testUserID   = "user-7f3a9c5e1b"
	testCBSecret = "Bearer cb-9d0e4f6a2b8c"
	testCBToken  = "tok-5c1e8a7f3d"
	testEmail    = "subject-4e2a@example.org"
	testName     = "Ottilie-Quarterfield"
	testOtherID  = "other-id-61b0d2"
	testDue      = 1767225600 // 2026-01-01T00:00:00Z
)

var secrets = []string{testUserID, testCBSecret, testCBToken, testEmail, testName, testOtherID, "cb-path-8a1f", "q-token-3b7e"}

// delMD is the Delete.md example, with marker values, as a tree a test can change before encoding.
func delMD() map[string]any {
	return map[string]any{
		"apiVersion": "dsr/v1",
		"kind":       "DeleteRequest",
		"metadata":   map[string]any{"uid": testUID, "tenant": "axonic"},
		"request": map[string]any{
			"controller":   "axonic",
			"property":     "axonic.io",
			"environment":  "production",
			"regulation":   "gdpr",
			"jurisdiction": "eugdpr",
			"identities": []any{
				map[string]any{"identitySpace": "email", "identityFormat": "raw", "identityValue": testEmail},
				map[string]any{"identitySpace": testSpace, "identityFormat": "raw", "identityValue": testUserID},
				map[string]any{"identitySpace": "crm_id", "identityFormat": "raw", "identityValue": testOtherID},
			},
			"callbacks": []any{
				map[string]any{"url": "https://dsr.ketch.com/callback/cb-path-8a1f?t=q-token-3b7e",
					"headers": map[string]any{"Authorization": testCBSecret}},
				map[string]any{"url": "http://audit.example.com:8443/cb",
					"headers": map[string]any{"X-Ketch-Token": testCBToken, "X-Tenant": "axonic"}},
			},
			"subject": map[string]any{
				"email": testEmail, "firstName": testName, "lastName": "Subject",
				"addressLine1": "123 Main St", "city": "Anytown", "countryCode": "US",
				"description": "Delete my data",
			},
			"claims":             map[string]any{"account_id": testUserID},
			"submittedTimestamp": testDue - 86400,
			"dueTimestamp":       testDue,
		},
	}
}

func encode(t testing.TB, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func req(m map[string]any) map[string]any { return m["request"].(map[string]any) }

func identities(m map[string]any) []any { return req(m)["identities"].([]any) }

func callbacks(m map[string]any) []any { return req(m)["callbacks"].([]any) }

func TestParseDeleteRequestKeepsWhatTheErasureNeeds(t *testing.T) {
	got, err := ParseDeleteRequest(encode(t, delMD()), testSpace)
	if err != nil {
		t.Fatal(err)
	}
	want := Request{
		Metadata:       Metadata{UID: testUID, Tenant: "axonic"},
		ExternalUserID: testUserID,
		DueAt:          time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC),
		Callbacks: []Callback{
			{URL: "https://dsr.ketch.com/callback/cb-path-8a1f?t=q-token-3b7e", Headers: map[string]string{"Authorization": testCBSecret}},
			{URL: "http://audit.example.com:8443/cb", Headers: map[string]string{"X-Ketch-Token": testCBToken, "X-Tenant": "axonic"}},
		},
	}
	if fmt.Sprint(got.Metadata, got.ExternalUserID, got.DueAt, len(got.Callbacks)) !=
		fmt.Sprint(want.Metadata, want.ExternalUserID, want.DueAt, len(want.Callbacks)) {
		t.Errorf("got %+v %q %v, want %+v %q %v", got.Metadata, got.ExternalUserID, got.DueAt, want.Metadata, want.ExternalUserID, want.DueAt)
	}
	for i := range want.Callbacks {
		if got.Callbacks[i].URL != want.Callbacks[i].URL || fmt.Sprint(got.Callbacks[i].Headers) != fmt.Sprint(want.Callbacks[i].Headers) {
			t.Errorf("callback %d differs", i)
		}
	}
}

func TestParseDeleteRequestAccepts(t *testing.T) {
	tests := []struct {
		name   string
		change func(m map[string]any)
		check  func(t *testing.T, r Request)
	}{
		{"no callbacks", func(m map[string]any) { delete(req(m), "callbacks") },
			func(t *testing.T, r Request) {
				if len(r.Callbacks) != 0 {
					t.Errorf("callbacks = %d", len(r.Callbacks))
				}
			}},
		{"callbacks null and a callback without headers", func(m map[string]any) {
			req(m)["callbacks"] = []any{map[string]any{"url": "https://x.example/cb", "headers": nil}}
		}, func(t *testing.T, r Request) {
			if len(r.Callbacks) != 1 || len(r.Callbacks[0].Headers) != 0 {
				t.Errorf("callbacks = %v", r.Callbacks)
			}
		}},
		{"no dueTimestamp", func(m map[string]any) { delete(req(m), "dueTimestamp") },
			func(t *testing.T, r Request) {
				if !r.DueAt.IsZero() {
					t.Errorf("DueAt = %v, want zero", r.DueAt)
				}
			}},
		{"dueTimestamp 0", func(m map[string]any) { req(m)["dueTimestamp"] = 0 },
			func(t *testing.T, r Request) {
				if !r.DueAt.IsZero() {
					t.Errorf("DueAt = %v, want zero", r.DueAt)
				}
			}},
		{"dueTimestamp written as a float", func(m map[string]any) { req(m)["dueTimestamp"] = json.RawMessage("1.7672256e9") },
			func(t *testing.T, r Request) {
				if r.DueAt.Unix() != testDue {
					t.Errorf("DueAt = %v", r.DueAt)
				}
			}},
		{"no identityFormat means raw", func(m map[string]any) {
			delete(identities(m)[1].(map[string]any), "identityFormat")
		}, func(t *testing.T, r Request) {
			if r.ExternalUserID != testUserID {
				t.Errorf("ExternalUserID = %q", r.ExternalUserID)
			}
		}},
		{"the same identity twice", func(m map[string]any) {
			req(m)["identities"] = append(identities(m), map[string]any{"identitySpace": testSpace, "identityValue": testUserID})
		}, func(t *testing.T, r Request) {
			if r.ExternalUserID != testUserID {
				t.Errorf("ExternalUserID = %q", r.ExternalUserID)
			}
		}},
		{"a hashed identity beside the raw one", func(m map[string]any) {
			req(m)["identities"] = append([]any{map[string]any{"identitySpace": testSpace, "identityFormat": "sha256", "identityValue": "ab12"}}, identities(m)...)
		}, func(t *testing.T, r Request) {
			if r.ExternalUserID != testUserID {
				t.Errorf("ExternalUserID = %q", r.ExternalUserID)
			}
		}},
		{"unknown fields and no tenant", func(m map[string]any) {
			m["newTopLevel"] = map[string]any{"x": 1}
			req(m)["newField"] = []any{1, 2}
			delete(m["metadata"].(map[string]any), "tenant")
		}, func(t *testing.T, r Request) {
			if r.Metadata.Tenant != "" || r.ExternalUserID != testUserID {
				t.Errorf("got %v", r)
			}
		}},
		{"a uid that is not a UUID, 255 bytes long", func(m map[string]any) {
			m["metadata"].(map[string]any)["uid"] = strings.Repeat("u", 255)
		}, func(t *testing.T, r Request) {
			if len(r.Metadata.UID) != 255 {
				t.Errorf("uid = %q", r.Metadata.UID)
			}
		}},
		{"an id of 1024 bytes with spaces inside", func(m map[string]any) {
			identities(m)[1].(map[string]any)["identityValue"] = " " + strings.Repeat("é", 511) + " "
		}, func(t *testing.T, r Request) {
			if len(r.ExternalUserID) != 1024 {
				t.Errorf("len = %d", len(r.ExternalUserID))
			}
		}},
		{"no subject at all", func(m map[string]any) { delete(req(m), "subject") },
			func(t *testing.T, r Request) {
				if r.ExternalUserID != testUserID {
					t.Errorf("ExternalUserID = %q", r.ExternalUserID)
				}
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := delMD()
			tt.change(m)
			r, err := ParseDeleteRequest(encode(t, m), testSpace)
			if err != nil {
				t.Fatalf("refused: %v", err)
			}
			tt.check(t, r)
		})
	}
}

func TestParseDeleteRequestRefuses(t *testing.T) {
	tests := []struct {
		name   string
		body   func() []byte
		kind   RequestErrorKind
		field  string
		reason string
	}{
		{"empty body", raw(""), Invalid, "body", "not a JSON object"},
		{"not JSON", raw("apiVersion=dsr/v1"), Invalid, "body", "not a JSON object"},
		{"an array", raw(`[{"apiVersion":"dsr/v1"}]`), Invalid, "body", "not a JSON object"},
		{"JSON with trailing garbage", func() []byte { return append(encode(t, delMD()), '}') }, Invalid, "body", "not a JSON object"},
		{"invalid UTF-8", func() []byte {
			return []byte(strings.Replace(string(encode(t, delMD())), "Anytown", "Any\xfftown", 1))
		}, Invalid, "body", "not valid UTF-8"},
		{"too large", func() []byte {
			m := delMD()
			req(m)["subject"].(map[string]any)["description"] = strings.Repeat("x", MaxRequestBytes)
			return encode(t, m)
		}, Invalid, "body", "larger than 262144 bytes"},
		{"no apiVersion", change(func(m map[string]any) { delete(m, "apiVersion") }), Invalid, "apiVersion", "missing"},
		{"another apiVersion", change(func(m map[string]any) { m["apiVersion"] = "dsr/v2" }), Invalid, "apiVersion", `must be "dsr/v1"`},
		{"apiVersion a number", change(func(m map[string]any) { m["apiVersion"] = 1 }), Invalid, "apiVersion", `must be "dsr/v1"`},
		{"another kind", change(func(m map[string]any) { m["kind"] = "AccessRequest" }), Invalid, "kind", `must be "DeleteRequest"`},
		{"kind in another case", change(func(m map[string]any) { m["kind"] = "deleterequest" }), Invalid, "kind", `must be "DeleteRequest"`},
		{"the kind key in another case", change(func(m map[string]any) { m["Kind"] = m["kind"]; delete(m, "kind") }), Invalid, "kind", "missing"},
		{"no metadata", change(func(m map[string]any) { delete(m, "metadata") }), Invalid, "metadata", "missing"},
		{"metadata a string", change(func(m map[string]any) { m["metadata"] = testUID }), Invalid, "metadata", "not a JSON object"},
		{"no uid", change(func(m map[string]any) { delete(m["metadata"].(map[string]any), "uid") }), Invalid, "metadata.uid", "missing"},
		{"uid empty", change(func(m map[string]any) { m["metadata"].(map[string]any)["uid"] = "" }), Invalid, "metadata.uid", "missing"},
		{"uid blank", change(func(m map[string]any) { m["metadata"].(map[string]any)["uid"] = " \t" }), Invalid, "metadata.uid", "contains a control character"},
		{"uid spaces", change(func(m map[string]any) { m["metadata"].(map[string]any)["uid"] = "   " }), Invalid, "metadata.uid", "blank"},
		{"uid a number", change(func(m map[string]any) { m["metadata"].(map[string]any)["uid"] = 42 }), Invalid, "metadata.uid", "not a string"},
		{"uid with NUL", change(func(m map[string]any) { m["metadata"].(map[string]any)["uid"] = "a\x00b" }), Invalid, "metadata.uid", "contains a control character"},
		{"uid a lone surrogate", func() []byte {
			return []byte(strings.Replace(string(encode(t, delMD())), testUID, `\ud800`, 1))
		}, Invalid, "metadata.uid", "not valid Unicode"},
		{"tenant a number", change(func(m map[string]any) { m["metadata"].(map[string]any)["tenant"] = 7 }), Invalid, "metadata.tenant", "not a string"},
		{"no request", change(func(m map[string]any) { delete(m, "request") }), Invalid, "request", "missing"},
		{"request an array", change(func(m map[string]any) { m["request"] = []any{} }), Invalid, "request", "not a JSON object"},
		{"callbacks an object", change(func(m map[string]any) { req(m)["callbacks"] = map[string]any{} }), Invalid, "request.callbacks", "not an array"},
		{"too many callbacks", change(func(m map[string]any) {
			var cbs []any
			for range MaxCallbacks + 1 {
				cbs = append(cbs, map[string]any{"url": "https://x.example/cb"})
			}
			req(m)["callbacks"] = cbs
		}), Invalid, "request.callbacks", "more than 16 callbacks"},
		{"callback a string", change(func(m map[string]any) { req(m)["callbacks"] = []any{"https://x.example"} }), Invalid, "request.callbacks[0]", "not a JSON object"},
		{"callback without url", change(func(m map[string]any) { delete(callbacks(m)[1].(map[string]any), "url") }), Invalid, "request.callbacks[1].url", "missing"},
		{"callback url relative", change(func(m map[string]any) { callbacks(m)[1].(map[string]any)["url"] = "/callback" }), Invalid, "request.callbacks[1].url", "not an absolute http or https URL"},
		{"callback url ftp", change(func(m map[string]any) { callbacks(m)[0].(map[string]any)["url"] = "ftp://dsr.ketch.com/cb" }), Invalid, "request.callbacks[0].url", "not an absolute http or https URL"},
		{"callback url without host", change(func(m map[string]any) { callbacks(m)[0].(map[string]any)["url"] = "https:///cb" }), Invalid, "request.callbacks[0].url", "not an absolute http or https URL"},
		{"callback url unparseable", change(func(m map[string]any) { callbacks(m)[0].(map[string]any)["url"] = "https://dsr.ketch.com/%zz" }), Invalid, "request.callbacks[0].url", "not an absolute http or https URL"},
		{"callback url too long", change(func(m map[string]any) {
			callbacks(m)[0].(map[string]any)["url"] = "https://x.example/" + strings.Repeat("a", MaxCallbackURLBytes)
		}), Invalid, "request.callbacks[0].url", "longer than 2048 bytes"},
		{"headers an array", change(func(m map[string]any) { callbacks(m)[0].(map[string]any)["headers"] = []any{testCBSecret} }), Invalid, "request.callbacks[0].headers", "not a JSON object"},
		{"header value a number", change(func(m map[string]any) { callbacks(m)[0].(map[string]any)["headers"] = map[string]any{"X-N": 1} }), Invalid, "request.callbacks[0].headers", "a header value is not a string"},
		{"header value with CRLF", change(func(m map[string]any) {
			callbacks(m)[0].(map[string]any)["headers"] = map[string]any{"Authorization": testCBSecret + "\r\nX-Evil: 1"}
		}), Invalid, "request.callbacks[0].headers", "a header value is not a valid HTTP field value"},
		{"header name with a space", change(func(m map[string]any) {
			callbacks(m)[0].(map[string]any)["headers"] = map[string]any{"Bad Name": testCBSecret}
		}), Invalid, "request.callbacks[0].headers", "a header name is not a valid HTTP field name"},
		{"header named twice", change(func(m map[string]any) {
			callbacks(m)[1].(map[string]any)["headers"] = map[string]any{"authorization": testCBSecret, "Authorization": testCBToken}
		}), Invalid, "request.callbacks[1].headers", "two headers with the same name"},
		{"too many headers", change(func(m map[string]any) {
			h := map[string]any{}
			for i := range MaxCallbackHeaders + 1 {
				h[fmt.Sprintf("X-H%d", i)] = "v"
			}
			callbacks(m)[0].(map[string]any)["headers"] = h
		}), Invalid, "request.callbacks[0].headers", "more than 32 headers"},
		{"dueTimestamp negative", change(func(m map[string]any) { req(m)["dueTimestamp"] = -1 }), Invalid, "request.dueTimestamp", "negative"},
		{"dueTimestamp a string", change(func(m map[string]any) { req(m)["dueTimestamp"] = "1767225600" }), Invalid, "request.dueTimestamp", "not a whole number of Unix seconds"},
		{"dueTimestamp a fraction", change(func(m map[string]any) { req(m)["dueTimestamp"] = 1767225600.5 }), Invalid, "request.dueTimestamp", "not a whole number of Unix seconds"},
		{"dueTimestamp huge", change(func(m map[string]any) { req(m)["dueTimestamp"] = json.RawMessage("1e30") }), Invalid, "request.dueTimestamp", "after the year 9999"},
		{"dueTimestamp past int64", change(func(m map[string]any) { req(m)["dueTimestamp"] = json.RawMessage("99999999999999999999") }), Invalid, "request.dueTimestamp", "after the year 9999"},
		{"dueTimestamp in milliseconds far ahead", change(func(m map[string]any) { req(m)["dueTimestamp"] = int64(testDue) * 1000000 }), Invalid, "request.dueTimestamp", "after the year 9999"},
		{"identities an object", change(func(m map[string]any) { req(m)["identities"] = map[string]any{} }), Invalid, "request.identities", "not an array"},
		{"identity a string", change(func(m map[string]any) { req(m)["identities"] = []any{testUserID} }), Invalid, "request.identities[0]", "not a JSON object"},
		{"identityValue a number", change(func(m map[string]any) { identities(m)[1].(map[string]any)["identityValue"] = 123 }), Invalid, "request.identities[1].identityValue", "not a string"},
		{"identitySpace a number", change(func(m map[string]any) { identities(m)[0].(map[string]any)["identitySpace"] = 1 }), Invalid, "request.identities[0].identitySpace", "not a string"},
		{"malformed callback and no identity: answered as malformed", change(func(m map[string]any) {
			delete(req(m), "identities")
			callbacks(m)[0].(map[string]any)["url"] = "mailto:x@y"
		}), Invalid, "request.callbacks[0].url", "not an absolute http or https URL"},

		{"no identities", change(func(m map[string]any) { delete(req(m), "identities") }), Unidentified, "request.identities", `no identity in space "account_id"`},
		{"identities empty", change(func(m map[string]any) { req(m)["identities"] = []any{} }), Unidentified, "request.identities", `no identity in space "account_id"`},
		{"only other spaces", change(func(m map[string]any) { req(m)["identities"] = []any{identities(m)[0], identities(m)[2]} }), Unidentified, "request.identities", `no identity in space "account_id"`},
		{"space in another case", change(func(m map[string]any) { identities(m)[1].(map[string]any)["identitySpace"] = "Account_ID" }), Unidentified, "request.identities", `no identity in space "account_id"`},
		{"the value key in another case", change(func(m map[string]any) {
			id := identities(m)[1].(map[string]any)
			id["IdentityValue"] = id["identityValue"]
			delete(id, "identityValue")
		}), Unidentified, "request.identities[1].identityValue", "missing"},
		{"identityValue empty", change(func(m map[string]any) { identities(m)[1].(map[string]any)["identityValue"] = "" }), Unidentified, "request.identities[1].identityValue", "missing"},
		{"identityValue null", change(func(m map[string]any) { identities(m)[1].(map[string]any)["identityValue"] = nil }), Unidentified, "request.identities[1].identityValue", "missing"},
		{"identityValue blank", change(func(m map[string]any) { identities(m)[1].(map[string]any)["identityValue"] = "   " }), Unidentified, "request.identities[1].identityValue", "blank"},
		{"identityValue too long", change(func(m map[string]any) {
			identities(m)[1].(map[string]any)["identityValue"] = strings.Repeat("7", MaxExternalUserIDBytes+1)
		}), Unidentified, "request.identities[1].identityValue", "longer than 1024 bytes"},
		{"identityValue with a newline", change(func(m map[string]any) { identities(m)[1].(map[string]any)["identityValue"] = testUserID + "\n" }), Unidentified, "request.identities[1].identityValue", "contains a control character"},
		{"only a hashed identity", change(func(m map[string]any) { identities(m)[1].(map[string]any)["identityFormat"] = "md5" }), Unidentified, "request.identities", `the identity in space "account_id" is hashed; Knot needs the raw value`},
		{"two different identities in the space", change(func(m map[string]any) {
			req(m)["identities"] = append(identities(m), map[string]any{"identitySpace": testSpace, "identityValue": testOtherID})
		}), Unidentified, "request.identities", `more than one identity in space "account_id", with different values`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseDeleteRequest(tt.body(), testSpace)
			var re *RequestError
			if !errors.As(err, &re) {
				t.Fatalf("err = %v, want a *RequestError", err)
			}
			if re.Kind != tt.kind || re.Field != tt.field || re.Reason != tt.reason {
				t.Errorf("got %v %q %q, want %v %q %q", re.Kind, re.Field, re.Reason, tt.kind, tt.field, tt.reason)
			}
			if want := "ketch: " + tt.field + ": " + tt.reason; err.Error() != want {
				t.Errorf("Error() = %q, want %q", err.Error(), want)
			}
			for _, s := range secrets {
				if strings.Contains(err.Error(), s) {
					t.Errorf("error %q holds %q", err, s)
				}
			}
			metadataRead := !strings.HasPrefix(tt.field, "body") && tt.field != "apiVersion" && tt.field != "kind" && !strings.HasPrefix(tt.field, "metadata")
			if (re.Metadata != nil) != metadataRead {
				t.Errorf("Metadata = %v, want it set: %v", re.Metadata, metadataRead)
			}
		})
	}
}

func raw(s string) func() []byte { return func() []byte { return []byte(s) } }

func change(f func(m map[string]any)) func() []byte {
	return func() []byte {
		m := delMD()
		f(m)
		b, err := json.Marshal(m)
		if err != nil {
			panic(err)
		}
		return b
	}
}

func TestParseDeleteRequestWithoutSpaceMatchesNothing(t *testing.T) {
	m := delMD()
	identities(m)[1].(map[string]any)["identitySpace"] = ""
	_, err := ParseDeleteRequest(encode(t, m), "")
	var re *RequestError
	if !errors.As(err, &re) || re.Kind != Unidentified {
		t.Fatalf("err = %v, want Unidentified", err)
	}
}

func TestRequestErrorAnswer(t *testing.T) {
	now := time.Unix(1767225600, 0)
	t.Run("unidentified is a final DeleteResponse", func(t *testing.T) {
		m := delMD()
		delete(req(m), "identities")
		_, err := ParseDeleteRequest(encode(t, m), testSpace)
		var re *RequestError
		errors.As(err, &re)
		code, body := re.Answer(now)
		want := `{"apiVersion":"dsr/v1","kind":"DeleteResponse","metadata":{"uid":"` + testUID + `","tenant":"axonic"},` +
			`"response":{"status":"denied","reason":"insufficient_identification","expectedCompletionTimestamp":1767225600}}`
		if code != http.StatusOK || string(body) != want {
			t.Errorf("got %d %s\nwant 200 %s", code, body, want)
		}
	})
	t.Run("invalid after the metadata echoes it", func(t *testing.T) {
		m := delMD()
		req(m)["dueTimestamp"] = -5
		_, err := ParseDeleteRequest(encode(t, m), testSpace)
		var re *RequestError
		errors.As(err, &re)
		code, body := re.Answer(now)
		want := `{"apiVersion":"dsr/v1","kind":"Error","metadata":{"uid":"` + testUID + `","tenant":"axonic"},` +
			`"error":{"code":400,"status":"invalid","message":"request.dueTimestamp: negative"}}`
		if code != http.StatusBadRequest || string(body) != want {
			t.Errorf("got %d %s\nwant 400 %s", code, body, want)
		}
	})
	t.Run("unknown kind", func(t *testing.T) {
		m := delMD()
		m["kind"] = "AccessRequest"
		_, err := ParseDeleteRequest(encode(t, m), testSpace)
		var re *RequestError
		errors.As(err, &re)
		code, body := re.Answer(now)
		want := `{"apiVersion":"dsr/v1","kind":"Error","error":{"code":400,"status":"invalid","message":"kind: must be \"DeleteRequest\""}}`
		if code != http.StatusBadRequest || string(body) != want {
			t.Errorf("got %d %s\nwant 400 %s", code, body, want)
		}
	})
}

func TestRequestKeepsNoSubject(t *testing.T) {
	r, err := ParseDeleteRequest(encode(t, delMD()), testSpace)
	if err != nil {
		t.Fatal(err)
	}
	// Everything the Request holds, printed raw: the subject and the other identities are not
	// there to print.
	all := fmt.Sprintf("%s %s %v %v", r.Metadata, r.ExternalUserID, r.DueAt, r.Callbacks)
	for _, cb := range r.Callbacks {
		all += cb.URL + fmt.Sprint(cb.Headers)
	}
	for _, s := range []string{testEmail, testName, testOtherID, "Anytown", "Delete my data", "eugdpr"} {
		if strings.Contains(all, s) {
			t.Errorf("the request keeps %q", s)
		}
	}
}

func TestRequestPrintsNoSecret(t *testing.T) {
	r, err := ParseDeleteRequest(encode(t, delMD()), testSpace)
	if err != nil {
		t.Fatal(err)
	}
	var logs strings.Builder
	log := slog.New(slog.NewTextHandler(&logs, nil))
	log.Info("got", "request", r, "callback", r.Callbacks[0], "callbacks", r.Callbacks)
	printed := fmt.Sprintf("%v %+v %#v %s %v %+v %#v", r, r, r, r, r.Callbacks, r.Callbacks[1], r.Callbacks[0]) + logs.String()
	for _, s := range secrets {
		if strings.Contains(printed, s) {
			t.Errorf("printed request holds %q:\n%s", s, printed)
		}
	}
	for _, s := range []string{testUID, "dsr.ketch.com", "2 callbacks"} {
		if !strings.Contains(printed, s) {
			t.Errorf("printed request lacks %q:\n%s", s, printed)
		}
	}
}

func TestCallbacksRoundTrip(t *testing.T) {
	r, err := ParseDeleteRequest(encode(t, delMD()), testSpace)
	if err != nil {
		t.Fatal(err)
	}
	b, err := EncodeCallbacks(r.Callbacks)
	if err != nil {
		t.Fatal(err)
	}
	got, err := DecodeCallbacks(b)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].URL != r.Callbacks[0].URL || got[0].Headers["Authorization"] != testCBSecret ||
		got[1].Headers["X-Ketch-Token"] != testCBToken || got[1].Headers["X-Tenant"] != "axonic" {
		t.Errorf("round trip: %s", b)
	}

	if b, err := EncodeCallbacks(nil); err != nil || string(b) != "[]" {
		t.Errorf("EncodeCallbacks(nil) = %s, %v", b, err)
	}
	if _, err := EncodeCallbacks([]Callback{{URL: "ftp://x/" + testCBToken}}); err == nil || strings.Contains(err.Error(), testCBToken) {
		t.Errorf("EncodeCallbacks(ftp) err = %v", err)
	}
	for _, bad := range []string{`{`, `{"url":"https://x"}`, `[{"url":"relative/` + testCBToken + `"}]`,
		`[{"url":"https://x","headers":{"A":"` + testCBSecret + `\n"}}]`, `[{"url":"https://x","headers":{"A":1}}]`} {
		_, err := DecodeCallbacks([]byte(bad))
		if err == nil {
			t.Errorf("DecodeCallbacks(%s) accepted", bad)
			continue
		}
		for _, s := range secrets {
			if strings.Contains(err.Error(), s) {
				t.Errorf("DecodeCallbacks error %q holds %q", err, s)
			}
		}
	}
}
