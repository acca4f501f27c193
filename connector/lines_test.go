package connector

import (
	"strings"
	"testing"
)

// A file's JSON line is read as strictly as the HTTP API's body: a repeated field would
// otherwise silently name the last of two people.
func TestALineIsAsStrictAsTheAPIsBody(t *testing.T) {
	t.Parallel()
	for _, c := range []struct{ line, want string }{
		{`{"request_ref":"r1","external_user_id":"anna","external_user_id":"bert"}`, "external_user_id: given more than once"},
		{`{"request_ref":"r1","request_ref":"r2","external_user_id":"anna"}`, "request_ref: given more than once"},
		{`{"request_ref":"r1","external_user_id":"\ud800"}`, "external_user_id holds a lone UTF-16 surrogate escape"},
		{`{"request_ref":"r1","external_user_id":"anna"} {}`, "trailing data"},
	} {
		var p LineParser
		if _, _, err := p.Parse([]byte(c.line)); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: err %v, want %q", c.line, err, c.want)
		}
	}
}
