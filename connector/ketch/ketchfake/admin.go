package ketchfake

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"reflect"
	"slices"
	"strings"
)

// PushSpec is the body of POST /_fake/push.
type PushSpec struct {
	// Target is the forwarder's endpoint ("http://127.0.0.1:8090/v1/ketch").
	Target string `json:"target"`
	// AuthHeader and AuthValue are the header Ketch is configured to send; AuthHeader defaults
	// to "Authorization", an empty AuthValue sends none.
	AuthHeader string `json:"auth_header"`
	AuthValue  string `json:"auth_value"`
	// Count is how many requests to send.
	Count int `json:"count"`
	// Prefix starts every identity value; default "user-".
	Prefix string `json:"prefix"`
	// IdentitySpace puts the identity in this space instead of the configured one (a forwarder
	// configured for another space answers denied/insufficient_identification).
	IdentitySpace string `json:"identity_space"`
	// Kind replaces "DeleteRequest" (an unknown kind is answered with an Error).
	Kind string `json:"kind"`
}

// maxAdminBody bounds what the admin endpoints read.
const maxAdminBody = 64 << 10

// serveAdmin serves GET /_fake/stats, GET and PUT /_fake/faults, POST /_fake/reset,
// POST /_fake/push and GET /_fake/requests/{uid}.
func (s *Server) serveAdmin(w http.ResponseWriter, r *http.Request) {
	path := strings.TrimPrefix(r.URL.Path, adminPath)
	switch {
	case path == "stats" && r.Method == http.MethodGet:
		writeJSON(w, http.StatusOK, s.Stats())
	case path == "faults" && r.Method == http.MethodGet:
		writeJSON(w, http.StatusOK, s.Faults())
	case path == "faults" && r.Method == http.MethodPut:
		var f Faults
		if err := decodeStrict(r, &f); err != nil {
			writeJSON(w, http.StatusBadRequest, map[string]string{"error": err.Error()})
			return
		}
		if err := f.Validate(); err != nil {
			writeJSON(w, http.StatusBadRequest, map[string]string{"error": err.Error()})
			return
		}
		s.SetFaults(f)
		writeJSON(w, http.StatusOK, f)
	case path == "reset" && r.Method == http.MethodPost:
		s.Reset()
		w.WriteHeader(http.StatusNoContent)
	case path == "push" && r.Method == http.MethodPost:
		s.servePush(w, r)
	case strings.HasPrefix(path, "requests/") && r.Method == http.MethodGet:
		rec, ok := s.Request(strings.TrimPrefix(path, "requests/"))
		if !ok {
			writeJSON(w, http.StatusNotFound, map[string]string{"error": "no request with this uid"})
			return
		}
		writeJSON(w, http.StatusOK, rec)
	case path == "stats" || path == "faults" || path == "reset" || path == "push" || strings.HasPrefix(path, "requests/"):
		writeJSON(w, http.StatusMethodNotAllowed, map[string]string{"error": "method not allowed"})
	default:
		writeJSON(w, http.StatusNotFound, map[string]string{"error": "no such admin endpoint"})
	}
}

func (s *Server) servePush(w http.ResponseWriter, r *http.Request) {
	var p PushSpec
	if err := decodeStrict(r, &p); err != nil {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": err.Error()})
		return
	}
	if p.AuthHeader == "" {
		p.AuthHeader = "Authorization"
	}
	if p.Prefix == "" {
		p.Prefix = "user-"
	}
	var opts []RequestOption
	if p.IdentitySpace != "" {
		opts = append(opts, InSpace(p.IdentitySpace))
	}
	if p.Kind != "" {
		opts = append(opts, Kind(p.Kind))
	}
	res, err := s.Push(r.Context(), p.Target, p.AuthHeader, p.AuthValue, p.Count, p.Prefix, opts...)
	if err != nil && res.Sent == 0 {
		// Argument errors name the JSON field; none quotes auth_value.
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": err.Error()})
		return
	}
	writeJSON(w, http.StatusOK, res)
}

// decodeStrict reads one JSON object into v (a pointer to a struct), refusing unknown fields: a
// misspelt fault must not be silently ignored. Errors name the field at fault.
func decodeStrict(r *http.Request, v any) error {
	body, err := io.ReadAll(io.LimitReader(r.Body, maxAdminBody))
	if err != nil {
		return fmt.Errorf("body: %v", err)
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		// A value's own decoder (a Duration) cannot say which field it was: try them one by one.
		var fields map[string]json.RawMessage
		if json.Unmarshal(body, &fields) == nil {
			for _, k := range slices.Sorted(maps.Keys(fields)) {
				one, _ := json.Marshal(map[string]json.RawMessage{k: fields[k]})
				probe := reflect.New(reflect.TypeOf(v).Elem()).Interface()
				d := json.NewDecoder(bytes.NewReader(one))
				d.DisallowUnknownFields()
				if ferr := d.Decode(probe); ferr != nil {
					return fmt.Errorf("%s: %v", k, ferr)
				}
			}
		}
		return fmt.Errorf("body: %v", err)
	}
	return nil
}
