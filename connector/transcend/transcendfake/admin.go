package transcendfake

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"
)

// maxGenerated bounds one POST /_fake/items.
const maxGenerated = 1_000_000

// serveAdmin serves the control endpoints. They are deliberately unauthenticated: the fake runs
// on loopback or a test network, and whoever drives a demo must be able to use curl.
//
//	GET  /_fake/stats   Stats as JSON
//	GET  /_fake/faults  Faults as JSON
//	PUT  /_fake/faults  replace all faults; "outage_for":"30s" in a door sets its outage_until
//	POST /_fake/reset   forget every item, clear stats, keep faults
//	POST /_fake/items   {"count":N,"prefix":"p","days_until_overdue":30}: add N pending items
//	                    p-000001, …; answers {"added":N,"pending":M}
//	GET  /_fake/items   every item with its state and reports
func (s *Server) serveAdmin(w http.ResponseWriter, r *http.Request) {
	route := map[string]string{
		"/_fake/stats":  http.MethodGet,
		"/_fake/faults": http.MethodGet + ", " + http.MethodPut,
		"/_fake/reset":  http.MethodPost,
		"/_fake/items":  http.MethodGet + ", " + http.MethodPost,
	}
	allowed, ok := route[r.URL.Path]
	if !ok {
		writeJSON(w, http.StatusNotFound, message("Not Found"))
		return
	}
	switch r.Method + " " + r.URL.Path {
	case "GET /_fake/stats":
		writeJSON(w, http.StatusOK, s.Stats())
	case "GET /_fake/faults":
		writeJSON(w, http.StatusOK, s.Faults())
	case "PUT /_fake/faults":
		f, err := s.decodeFaults(r.Body)
		if err != nil {
			writeJSON(w, http.StatusBadRequest, message(err.Error()))
			return
		}
		s.SetFaults(f)
		writeJSON(w, http.StatusOK, f)
	case "POST /_fake/reset":
		s.Reset()
		writeJSON(w, http.StatusOK, message("reset"))
	case "POST /_fake/items":
		req, err := decodeGenerate(r.Body)
		if err != nil {
			writeJSON(w, http.StatusBadRequest, message(err.Error()))
			return
		}
		added := s.Generate(req.Count, req.Prefix, *req.DaysUntilOverdue)
		writeJSON(w, http.StatusOK, map[string]int64{"added": int64(len(added)), "pending": s.Stats().ItemsPending})
	case "GET /_fake/items":
		writeJSON(w, http.StatusOK, s.itemViews())
	default:
		w.Header().Set("Allow", allowed)
		writeJSON(w, http.StatusMethodNotAllowed, message("Method Not Allowed"))
	}
}

// decodeStrict reads one JSON object into v, refusing unknown fields and trailing data: a
// misspelt field would otherwise silently leave a fault off in the middle of a test.
func decodeStrict(body io.Reader, v any) error {
	b, err := io.ReadAll(io.LimitReader(body, 1<<16))
	if err != nil {
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if dec.More() {
		return errors.New("trailing data after the JSON object")
	}
	return nil
}

type faultSetIn struct {
	FaultSet
	OutageFor *Duration `json:"outage_for"`
}

func (s *Server) decodeFaults(body io.Reader) (Faults, error) {
	var in struct {
		Pull   faultSetIn `json:"pull"`
		Report faultSetIn `json:"report"`
	}
	if err := decodeStrict(body, &in); err != nil {
		return Faults{}, fmt.Errorf("faults: %v", err)
	}
	now := s.now()
	for _, d := range []struct {
		name string
		in   *faultSetIn
	}{{"pull", &in.Pull}, {"report", &in.Report}} {
		if d.in.OutageFor == nil {
			continue
		}
		if *d.in.OutageFor < 0 {
			return Faults{}, fmt.Errorf("faults: %s.outage_for must not be negative", d.name)
		}
		d.in.OutageUntil = now.Add(time.Duration(*d.in.OutageFor))
	}
	f := Faults{Pull: in.Pull.FaultSet, Report: in.Report.FaultSet}
	if err := f.Validate(); err != nil {
		return Faults{}, fmt.Errorf("faults: %v", err)
	}
	return f, nil
}

type generateRequest struct {
	Count            int      `json:"count"`
	Prefix           string   `json:"prefix"`
	DaysUntilOverdue *float64 `json:"days_until_overdue"`
}

func decodeGenerate(body io.Reader) (generateRequest, error) {
	var req generateRequest
	if err := decodeStrict(body, &req); err != nil {
		return req, fmt.Errorf("items: %v", err)
	}
	if req.Prefix == "" {
		req.Prefix = "user"
	}
	if req.DaysUntilOverdue == nil {
		thirty := 30.0
		req.DaysUntilOverdue = &thirty
	}
	switch {
	case req.Count < 1 || req.Count > maxGenerated:
		return req, fmt.Errorf("items: count must be between 1 and %d, got %d", maxGenerated, req.Count)
	case len(req.Prefix) > 64 || strings.ContainsFunc(req.Prefix, isControl):
		return req, errors.New("items: prefix must be at most 64 bytes without control characters")
	case *req.DaysUntilOverdue < -36500 || *req.DaysUntilOverdue > 36500:
		return req, errors.New("items: days_until_overdue must be within 36500 days either way")
	}
	return req, nil
}

func isControl(r rune) bool { return r < 0x20 || r == 0x7f }
