package ketch

import (
	"encoding/json"
	"errors"
	"regexp"
	"testing"
)

// fieldPath is what RequestError.Field may look like: JSON keys we chose and array indexes, never
// a key or value from the body.
var fieldPath = regexp.MustCompile(`^(body|apiVersion|kind|metadata(\.(uid|tenant))?|request(\.(dueTimestamp|identities(\[\d+\](\.(identitySpace|identityFormat|identityValue))?)?|callbacks(\[\d+\](\.(url|headers))?)?))?)$`)

// allowedReasons are all the reasons a RequestError may give: none quotes the body.
func allowedReasons(space string) map[string]bool {
	m := map[string]bool{reasonNoIdentity(space): true, reasonHashed(space): true, reasonAmbiguous(space): true}
	for _, r := range []string{reasonTooLarge, reasonNotUTF8, reasonNotObject, reasonMissing, reasonNotString,
		reasonNotArray, reasonBlank, reasonControl, reasonNotUnicode, reasonAPIVersion, reasonKind,
		reasonTenantTooLong, reasonIDTooLong, reasonNotWhole, reasonNegative, reasonTooLate,
		reasonTooMany, reasonURLTooLong, reasonURLNotHTTP, reasonTooManyHdrs, reasonHeaderName,
		reasonHeaderValue, reasonHeaderTwice, reasonHeaderNotStr} {
		m[r] = true
	}
	return m
}

func FuzzParseDeleteRequest(f *testing.F) {
	f.Add(encode(f, delMD()))
	f.Add([]byte(`{"apiVersion":"dsr/v1","kind":"DeleteRequest","metadata":{"uid":"u","tenant":"t"},"request":{"identities":[{"identitySpace":"account_id","identityValue":"1"}]}}`))
	f.Add([]byte(`{"apiVersion":"dsr/v1","kind":"DeleteRequest","metadata":{"uid":"u"},"request":{"identities":[{"identitySpace":"account_id","identityValue":"1"},{"identitySpace":"account_id","identityValue":"2"}]}}`))
	f.Add([]byte(`{"apiVersion":"dsr/v1","kind":"DeleteRequest","metadata":{"uid":"u"},"request":{"identities":[{"identitySpace":"account_id","identityFormat":"md5","identityValue":"1"}],"dueTimestamp":1.5}}`))
	f.Add([]byte(`{"apiVersion":"dsr/v1","kind":"DeleteRequest","metadata":{"uid":"u"},"request":{"callbacks":[{"url":"https://k/cb","headers":{"Authorization":"Bearer x","authorization":"y"}}],"identities":[]}}`))
	f.Add([]byte(`{"apiVersion":"dsr/v1","kind":"DeleteRequest","metadata":{"uid":"\ud800"},"request":{}}`))
	f.Add([]byte(`{"apiVersion":"dsr/v1","kind":"AccessRequest","metadata":{"uid":"u"},"request":{}}`))
	f.Add([]byte(`{"apiVersion":"dsr/v1","kind":"DeleteRequest","metadata":{"uid":"u"},"request":{"dueTimestamp":-1e400}}`))
	f.Add([]byte(`{"apiVersion":"dsr/v1","Kind":"DeleteRequest","metadata":null,"request":null}`))
	f.Add([]byte(`{"apiVersion":"dsr/v1","kind":"DeleteRequest","metadata":{"uid":"u"},"request":{"identities":[{"identitySpace":"account_id","identityValue":" \u0000"}]}}`))
	f.Add([]byte(`[]`))
	f.Add([]byte(`{`))
	f.Add([]byte("\xff"))
	f.Add([]byte{})

	allowed := allowedReasons(testSpace)
	f.Fuzz(func(t *testing.T, body []byte) {
		r, err := ParseDeleteRequest(body, testSpace)
		if err != nil {
			var re *RequestError
			if !errors.As(err, &re) {
				t.Fatalf("error %T %v is not a *RequestError", err, err)
			}
			if re.Kind != Invalid && re.Kind != Unidentified {
				t.Errorf("kind %v", re.Kind)
			}
			if !fieldPath.MatchString(re.Field) {
				t.Errorf("field %q is not one of ours", re.Field)
			}
			if !allowed[re.Reason] {
				t.Errorf("reason %q is not one of ours (a reason must not quote the body)", re.Reason)
			}
			if re.Kind == Unidentified && re.Metadata == nil {
				t.Error("an Unidentified error without the metadata to answer it")
			}
			if err.Error() != "ketch: "+re.Field+": "+re.Reason {
				t.Errorf("Error() = %q", err.Error())
			}
			return
		}

		// Accepted: everything kept is what the contract and our table allow.
		if reason := checkText(r.Metadata.UID, 0, ""); reason != "" {
			t.Errorf("accepted uid %q: %s", r.Metadata.UID, reason)
		}
		if reason := checkText(r.ExternalUserID, MaxExternalUserIDBytes, reasonIDTooLong); reason != "" {
			t.Errorf("accepted id %q: %s", r.ExternalUserID, reason)
		}
		if hasControl(r.Metadata.Tenant) || len(r.Metadata.Tenant) > maxTenantBytes {
			t.Errorf("accepted tenant %q", r.Metadata.Tenant)
		}
		if len(r.Callbacks) > MaxCallbacks {
			t.Errorf("%d callbacks", len(r.Callbacks))
		}
		for i, cb := range r.Callbacks {
			if field, reason := checkCallback(cb); reason != "" {
				t.Errorf("accepted callback %d: %s %s", i, field, reason)
			}
		}
		if !r.DueAt.IsZero() && (r.DueAt.Unix() <= 0 || r.DueAt.Unix() > maxDueUnix) {
			t.Errorf("DueAt %v", r.DueAt)
		}
		// The id is the raw identityValue of an identity in the space, read independently (a
		// map keeps keys exactly as written, as the parser does).
		var doc map[string]any
		if err := json.Unmarshal(body, &doc); err != nil {
			t.Fatalf("accepted a body encoding/json cannot read: %v", err)
		}
		request, _ := doc["request"].(map[string]any)
		ids, _ := request["identities"].([]any)
		found := false
		for _, item := range ids {
			id, _ := item.(map[string]any)
			format, _ := id["identityFormat"].(string)
			if id["identitySpace"] == testSpace && id["identityValue"] == r.ExternalUserID && (format == "" || format == "raw") {
				found = true
			}
		}
		if !found {
			t.Errorf("ExternalUserID %q is not the raw identity in space %q of %s", r.ExternalUserID, testSpace, body)
		}
	})
}
