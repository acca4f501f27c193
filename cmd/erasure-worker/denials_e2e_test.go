package main

import (
	"bytes"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/erasure-worker/erasure-worker/connector/ketch/ketchfake"
)

// A KETCH_IDENTITY_SPACE that names no identity Ketch sends denies every request, finally for
// Ketch. Each denial is kept as a record without personal data, which `evidence --ref` shows,
// and deleted EVIDENCE_RETENTION after its last repeat.
func TestADeniedRequestLeavesARecordThatEvidenceShows(t *testing.T) {
	t.Parallel()
	r := newRig(t, withDoors(0, nil))
	w := r.startWorker(t, "worker", "KETCH_IDENTITY_SPACE=acount_id") // sic: the fake sends account_id
	r.waitAPI(t, 30*time.Second)

	body, _ := json.Marshal(map[string]any{
		"target": "http://" + r.apiAddr + "/v1/ketch", "auth_header": "Authorization", "auth_value": rigKetchValue,
		"count": 3, "prefix": "ketch-person-", "identity_space": rigKetchSpace,
	})
	resp, err := http.Post(r.ketchURL+"/_fake/push", "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	var res ketchfake.PushResult
	err = json.NewDecoder(resp.Body).Decode(&res)
	resp.Body.Close()
	if err != nil || res.Answers["denied/insufficient_identification"] != 3 {
		t.Fatalf("push: %+v (%v); want 3 denied", res, err)
	}

	ref := "ketch:" + res.UIDs[0]
	out, errOut, code := r.cli(t, "", "evidence", "--ref", ref)
	if code != 0 || !strings.Contains(out, "denied at the ketch door, not carried out: unidentified (request.identities)") {
		t.Fatalf("evidence --ref %s: exit %d\n%s%s", ref, code, out, errOut)
	}
	out, _, code = r.cli(t, "", "evidence", "--ref", ref, "--json")
	var rec map[string]any
	if code != 0 || json.Unmarshal([]byte(out), &rec) != nil || rec["status"] != "denied" || rec["reason"] != "unidentified" || rec["times"] != 1.0 {
		t.Fatalf("evidence --json: exit %d %s", code, out)
	}
	if strings.Contains(out, "ketch-person-") || strings.Contains(w.out.String(), "ketch-person-") {
		t.Error("the record or the log holds the person's id")
	}
	if c := r.counts(t); c["pending"]+c["running"]+c["succeeded/deleted"] != 0 {
		t.Errorf("a denied request was stored as a request: %v", c)
	}

	// EVIDENCE_RETENTION after the last repeat, the record goes with the rest of the evidence.
	w.stop(t, 30*time.Second)
	conn := r.db(t)
	if _, err := conn.Exec(t.Context(), `UPDATE erasure_denials SET last_at = now() - interval '731 days'`); err != nil {
		t.Fatal(err)
	}
	r.startWorker(t, "purger", "RETENTION_INTERVAL=1s")
	deadline := time.Now().Add(30 * time.Second)
	for {
		var left int
		if err := conn.QueryRow(t.Context(), `SELECT count(*) FROM erasure_denials`).Scan(&left); err != nil {
			t.Fatal(err)
		}
		if left == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d denials kept past EVIDENCE_RETENTION", left)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
