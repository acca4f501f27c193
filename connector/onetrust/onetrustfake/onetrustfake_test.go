package onetrustfake_test

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	"github.com/erasure-worker/erasure-worker/connector/onetrust/onetrustfake"
)

func setup(t *testing.T, opts onetrustfake.Options) (*onetrustfake.Server, string, string) {
	t.Helper()
	fake := onetrustfake.New(opts)
	srv := httptest.NewServer(fake)
	t.Cleanup(srv.Close)
	resp, err := http.PostForm(srv.URL+"/api/access/v1/oauth/token", url.Values{"grant_type": {"client_credentials"},
		"client_id": {"onetrustfake-client"}, "client_secret": {"onetrustfake-secret"}})
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var tok struct {
		AccessToken string `json:"access_token"`
		ExpiresIn   int    `json:"expires_in"`
	}
	if json.NewDecoder(resp.Body).Decode(&tok); resp.StatusCode != 200 || tok.AccessToken == "" || tok.ExpiresIn != 3600 {
		t.Fatalf("token: %d %+v", resp.StatusCode, tok)
	}
	fake.AddSubtask("e2d0f59e-3df0-4b1f-965d-d57547ed44ad", "ZASHMHK2K7", "person@example.com")
	return fake, srv.URL, tok.AccessToken
}

func put(t *testing.T, base, token, id, body string) int {
	t.Helper()
	req, _ := http.NewRequest("PUT", base+"/api/datasubject/v2/subtasks/"+id+"/status", strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// Update Subtask Status answers as the definition says, and as the package doc chooses where it
// is silent.
func TestUpdateSubtaskStatus(t *testing.T) {
	t.Parallel()
	const id = "e2d0f59e-3df0-4b1f-965d-d57547ed44ad"
	fake, base, token := setup(t, onetrustfake.Options{})
	for _, tc := range []struct {
		name, token, id, body string
		want                  int
	}{
		{"no token", "", id, `{"status":"IN_PROGRESS"}`, 401},
		{"unknown token", "ot-unknown", id, `{"status":"IN_PROGRESS"}`, 401},
		{"unknown subtask", token, "3a60d96a-3514-4811-a8b8-d7b5df55435e", `{"status":"IN_PROGRESS"}`, 400},
		{"no status", token, id, `{"comment":"c"}`, 400},
		{"status outside the enum", token, id, `{"status":"DONE"}`, 400},
		{"resolutionId with IN_PROGRESS", token, id, `{"status":"IN_PROGRESS","resolutionId":"e2d0f59e-3df0-4b1f-965d-d57547ed44ad"}`, 400},
		{"in progress", token, id, `{"status":"IN_PROGRESS","comment":"queued"}`, 200},
		{"completed", token, id, `{"status":"COMPLETED","comment":"done"}`, 200},
		{"completed again, closed", token, id, `{"status":"COMPLETED","comment":"done"}`, 400},
		{"failed after completed", token, id, `{"status":"FAILED"}`, 400},
	} {
		if got := put(t, base, tc.token, tc.id, tc.body); got != tc.want {
			t.Errorf("%s: %d, want %d", tc.name, got, tc.want)
		}
	}
	rec, _ := fake.Subtask(id)
	if rec.Status != "COMPLETED" || rec.Finals != 2 || len(rec.Updates) != 4 || rec.Updates[0].Comment != "queued" {
		t.Errorf("record %+v: want COMPLETED, two distinct finals received (COMPLETED, FAILED), four updates", rec)
	}
	if st := fake.Stats(); st.Unauthorized != 2 || st.RefusedClosed != 2 || st.SubtasksMultipleFinals != 1 {
		t.Errorf("stats %+v", st)
	}
}

func TestAcceptRepeatFinalCountsTheRepeatOnce(t *testing.T) {
	t.Parallel()
	const id = "e2d0f59e-3df0-4b1f-965d-d57547ed44ad"
	fake, base, token := setup(t, onetrustfake.Options{AcceptRepeatFinal: true})
	for i, want := range []int{200, 200, 400} {
		body := `{"status":"COMPLETED"}`
		if i == 2 {
			body = `{"status":"FAILED"}`
		}
		if got := put(t, base, token, id, body); got != want {
			t.Errorf("update %d: %d, want %d", i, got, want)
		}
	}
	if got := fake.Finals()[id]; got != 2 {
		t.Errorf("finals %d, want 2: the repeat once, the different one again", got)
	}
}

func TestTheTokenEndpointRefusesABadClient(t *testing.T) {
	t.Parallel()
	_, base, _ := setup(t, onetrustfake.Options{})
	for _, form := range []url.Values{
		{"grant_type": {"client_credentials"}, "client_id": {"onetrustfake-client"}, "client_secret": {"wrong"}},
		{"grant_type": {"password"}, "client_id": {"onetrustfake-client"}, "client_secret": {"onetrustfake-secret"}},
	} {
		resp, err := http.PostForm(base+"/api/access/v1/oauth/token", form)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 401 && resp.StatusCode != 400 {
			t.Errorf("%v: %d, want 400 or 401", form["grant_type"], resp.StatusCode)
		}
	}
}
