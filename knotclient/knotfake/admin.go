package knotfake

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"time"
)

// serveAdmin serves the control endpoints. They are deliberately
// unauthenticated: the fake runs on loopback or a test network, and the
// people driving a load test must be able to flip faults with curl.
//
//	GET  /_fake/stats     Stats as JSON
//	GET  /_fake/arrivals  each call's arrival time, in order, as a JSON array
//	GET  /_fake/faults    Faults as JSON
//	PUT  /_fake/faults    replace all faults; "outage_for":"30s" sets outage_until = now+30s
//	POST /_fake/reset     clear stats and deleted users, keep faults
func (s *Server) serveAdmin(w http.ResponseWriter, r *http.Request) {
	route := map[string]string{
		"/_fake/stats":    http.MethodGet,
		"/_fake/arrivals": http.MethodGet,
		"/_fake/faults":   http.MethodGet + ", " + http.MethodPut,
		"/_fake/reset":    http.MethodPost,
	}
	allowed, ok := route[r.URL.Path]
	if !ok {
		writeJSON(w, http.StatusNotFound, map[string]string{"message": "Not Found"})
		return
	}
	switch r.Method + " " + r.URL.Path {
	case "GET /_fake/stats":
		writeJSON(w, http.StatusOK, s.Stats())
	case "GET /_fake/arrivals":
		writeJSON(w, http.StatusOK, s.Arrivals())
	case "GET /_fake/faults":
		writeJSON(w, http.StatusOK, s.Faults())
	case "PUT /_fake/faults":
		f, err := s.decodeFaults(r.Body)
		if err != nil {
			writeJSON(w, http.StatusBadRequest, map[string]string{"message": err.Error()})
			return
		}
		s.SetFaults(f)
		writeJSON(w, http.StatusOK, f)
	case "POST /_fake/reset":
		s.Reset()
		writeJSON(w, http.StatusOK, map[string]string{"message": "reset"})
	default:
		w.Header().Set("Allow", allowed)
		writeJSON(w, http.StatusMethodNotAllowed, map[string]string{"message": "Method Not Allowed"})
	}
}

// decodeFaults reads a PUT body strictly: a misspelt field would otherwise
// silently leave a fault off in the middle of a load test.
func (s *Server) decodeFaults(body io.Reader) (Faults, error) {
	var in struct {
		Faults
		OutageFor *Duration `json:"outage_for"`
	}
	b, err := io.ReadAll(io.LimitReader(body, 1<<16))
	if err != nil {
		return Faults{}, err
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&in); err != nil {
		return Faults{}, fmt.Errorf("faults: %v", err)
	}
	if dec.More() {
		return Faults{}, fmt.Errorf("faults: trailing data after the JSON object")
	}
	if in.OutageFor != nil {
		if *in.OutageFor < 0 {
			return Faults{}, fmt.Errorf("faults: outage_for must not be negative")
		}
		in.OutageUntil = s.now().Add(time.Duration(*in.OutageFor))
	}
	if err := in.Validate(); err != nil {
		return Faults{}, fmt.Errorf("faults: %v", err)
	}
	return in.Faults, nil
}
