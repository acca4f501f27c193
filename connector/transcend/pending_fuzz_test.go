package transcend

import (
	"encoding/json"
	"math"
	"strings"
	"testing"
	"unicode/utf8"
)

// FuzzPendingPage feeds arbitrary answers to the page decoder. Whatever Sombra, a proxy or a
// wrong URL sends, the puller gets either an error or a page in which every item can be
// enqueued and reported as it stands, every element is accounted for, and no text shows an
// identifier or a nonce.
func FuzzPendingPage(f *testing.F) {
	f.Add([]byte(docExample))
	f.Add([]byte(`{"items":[]}`))
	f.Add([]byte(`{"items":[{"identifier":"SECRETUSER-1","dataSiloId":"` + testSilo + `","requestId":"r1","nonce":"SECRETNONCE-1","daysUntilOverdue":30},` +
		`{"identifier":"","dataSiloId":"` + testSilo + `","requestId":"r2","nonce":"SECRETNONCE-2"},` +
		`{"identifier":"SECRETUSER-3","dataSiloId":"other","requestId":"r3","nonce":"SECRETNONCE-3"},` +
		`{"identifier":"SECRETUSER-4","dataSiloId":"` + testSilo + `","requestId":"r4","nonce":"SECRET NONCE\r\n"},` +
		`{"identifier":"SECRETUSER\udc00","dataSiloId":"` + testSilo + `","requestId":"r5","nonce":"SECRETNONCE-5"},` +
		`{"identifier":"SECRETUSER-6","dataSiloId":"` + testSilo + `","requestId":"r6","nonce":"SECRETNONCE-6","daysUntilOverdue":"soon"},` +
		`null, 7, "x", []]}`))
	f.Add([]byte(`{"items":[{"identifier":"SECRETUSER","dataSiloId":"` + testSilo + `","requestId":"r","nonce":"SECRETNONCE","daysUntilOverdue":1e400}]}`))
	f.Add([]byte(`{"items":[{"identifier":"SECRETUSER","dataSiloId":"` + testSilo + `","requestId":"r","nonce":"SECRETNONCE","daysUntilOverdue":-36500.5}]}`))
	f.Add([]byte(`{"items":[{"identifier":"SECRETUSER","type":"email","type":7,"dataSiloId":"` + testSilo + `","requestId":"r","nonce":"SECRETNONCE"}]}`))
	f.Add([]byte(`{"items":[{"identifier":"SECRET`))
	f.Add([]byte(`{"items":null}`))
	f.Add([]byte(`{"items":{"identifier":"SECRETUSER"}}`))
	f.Add([]byte(`["SECRETUSER"]`))
	f.Add([]byte(`<html>SECRETUSER</html>`))
	f.Add([]byte(``))
	f.Add([]byte("{\"items\":[]}\xff"))

	fields := map[string]bool{"": true, "requestId": true, "identifier": true, "nonce": true, "dataSiloId": true, "type": true, "daysUntilOverdue": true}
	reasons := map[string]bool{reasonNotObject: true, reasonMissing: true, reasonBlank: true, reasonNotString: true, reasonNotNumber: true,
		reasonTooLong: true, reasonControl: true, reasonNotHeader: true, reasonOtherSilo: true, reasonOutOfRange: true, reasonUnsupported: true, reasonBadUTF8: true}

	f.Fuzz(func(t *testing.T, body []byte) {
		page, err := decodePage(body, testSilo)
		if err != nil {
			if page.Len() != 0 {
				t.Fatalf("both a page and an error %v", err)
			}
			if msg := err.Error(); msg == "" || strings.Contains(msg, "SECRET") {
				t.Fatalf("error %q is empty or shows a secret", msg)
			}
			return
		}
		// Every element of the answer is either an item or a problem, in order.
		var top map[string]json.RawMessage
		var elems []json.RawMessage
		if json.Unmarshal(body, &top) != nil || json.Unmarshal(top["items"], &elems) != nil {
			t.Fatalf("a page from an answer that is not {\"items\":[…]}")
		}
		if len(elems) != page.Len() {
			t.Fatalf("%d elements, %d items and %d problems", len(elems), len(page.Items), len(page.Invalid))
		}
		last := -1
		for _, ie := range page.Invalid {
			if ie.Index <= last || ie.Index >= page.Len() {
				t.Fatalf("problem index %d out of order or range", ie.Index)
			}
			last = ie.Index
			if !fields[ie.Field] || !reasons[ie.Reason] {
				t.Fatalf("problem %+v names an unknown field or reason", ie)
			}
			if ie.Field == "requestId" && ie.RequestID != "" {
				t.Fatalf("problem %+v names a request id it refused", ie)
			}
		}
		for _, it := range page.Items {
			switch {
			case strings.TrimSpace(it.RequestID) == "" || hasControl(it.RequestID):
				t.Fatalf("accepted request id %q", it.RequestID)
			case strings.TrimSpace(it.Identifier) == "" || hasControl(it.Identifier) || !utf8.ValidString(it.Identifier) || strings.ContainsRune(it.Identifier, utf8.RuneError):
				t.Fatalf("accepted identifier %q", it.Identifier)
			case strings.TrimSpace(it.Nonce) == "" || !validHeaderValue(it.Nonce) || strings.ContainsAny(it.Nonce, " \t"):
				t.Fatalf("accepted nonce %q", it.Nonce)
			case it.DataSiloID != testSilo:
				t.Fatalf("accepted another silo's item %q", it.DataSiloID)
			case it.HasDeadline && (math.IsNaN(it.DaysUntilOverdue) || math.Abs(it.DaysUntilOverdue) > maxDaysUntilOverdue):
				t.Fatalf("accepted a deadline of %v days", it.DaysUntilOverdue)
			case !it.HasDeadline && it.DaysUntilOverdue != 0:
				t.Fatalf("days %v without a deadline", it.DaysUntilOverdue)
			}
			// String is built from the request and silo ids alone, so it cannot show the rest.
			if s, want := it.String(), "transcend item (request "+it.RequestID+", data silo "+it.DataSiloID+")"; s != want {
				t.Fatalf("String = %q, want %q", s, want)
			}
		}
	})
}
