package transcend_test

import (
	"strings"
	"sync"
	"testing"

	"github.com/erasure-worker/erasure-worker/connector/connectortest"
	"github.com/erasure-worker/erasure-worker/connector/transcend"
	"github.com/erasure-worker/erasure-worker/connector/transcend/transcendfake"
)

const (
	conformanceKey  = "transcend-api-key-conformance-9c1e"
	conformanceSilo = "9d5a7a41-f102-435c-b80d-38c2b378ecac"
)

func TestConformance(t *testing.T) {
	fake := transcendfake.New(transcendfake.Options{APIKey: conformanceKey, DataSiloID: conformanceSilo})
	connectortest.Run(t, transcend.Connector{}, &kit{Server: fake})
}

// kit is Transcend's side of the suite: pending erasures at a Sombra gateway, reported back
// with their nonces to transcendfake, which takes one report per item (a repeat is its 409).
type kit struct {
	*transcendfake.Server

	mu     sync.Mutex
	nonces []string
}

func (k *kit) Settings(url string) map[string]string {
	return map[string]string{"TRANSCEND_URL": url, "TRANSCEND_API_KEY": conformanceKey, "TRANSCEND_DATA_SILO_ID": conformanceSilo}
}

func (k *kit) SetFaults(f connectortest.Faults) {
	k.Server.SetFaults(transcendfake.Faults{Report: transcendfake.FaultSet{ErrorRate: f.ErrorRate, RateLimitRate: f.RateLimitRate,
		RetryAfter: transcendfake.Duration(f.RetryAfter), HangRate: f.HangRate, LostAnswerRate: f.LostAnswerRate}})
}

func (k *kit) Finals() map[string]int {
	out := map[string]int{}
	for id, reports := range k.Reports() {
		out[id] = len(reports)
	}
	return out
}

func (k *kit) Secrets() []string {
	k.mu.Lock()
	defer k.mu.Unlock()
	return append([]string{conformanceKey}, k.nonces...)
}

func (k *kit) add(it transcendfake.Item) {
	for _, got := range k.Add(it) {
		k.mu.Lock()
		k.nonces = append(k.nonces, got.Nonce)
		k.mu.Unlock()
	}
}

func (k *kit) AddPending(id, user string) {
	k.add(transcendfake.Item{RequestID: id, Identifier: user, DaysUntilOverdue: 20})
}

// StoredID is the id a pulled request is stored under: the data silo's and the request's.
func (k *kit) StoredID(id string) string { return conformanceSilo + ":" + id }

func (k *kit) BadPending() []connectortest.BadInput {
	bad := func(name, field string, it transcendfake.Item) connectortest.BadInput {
		return connectortest.BadInput{Name: name, Field: field, Add: func() { k.add(it) }}
	}
	return []connectortest.BadInput{
		bad("blank identifier", "identifier", transcendfake.Item{RequestID: "bad-1", Identifier: "   "}),
		bad("nonce that is no header value", "nonce", transcendfake.Item{RequestID: "bad-2", Identifier: "person-b2@example.com", Nonce: "two words"}),
		bad("request id too long for a request_ref", "requestId", transcendfake.Item{RequestID: strings.Repeat("r", 250), Identifier: "person-b3@example.com"}),
	}
}
