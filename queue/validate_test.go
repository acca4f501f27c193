package queue

import "testing"

// What status, evidence and a terminal print, and what is taken for a pseudonym, are refused at
// intake, naming the field.
func TestValidateIDsRefusesControlCharactersInARefAndPseudonymShapedIDs(t *testing.T) {
	t.Parallel()
	for _, c := range []struct{ ref, id, want string }{
		{"ref-\x1b[2J", "person-1", "request_ref: contains the control character U+001B at byte 4"},
		{"ref-\u009b31m", "person-1", "request_ref: contains the control character U+009B at byte 4"},
		{"ref-\n", "person-1", "request_ref: contains the control character U+000A at byte 4"},
		{"ref-1", "hmac-sha256:0123abcd", "external_user_id: starts with hmac-sha256:, which marks an id already pseudonymised"},
	} {
		err := ValidateIDs(c.ref, c.id)
		if err == nil || err.Error() != c.want {
			t.Errorf("ValidateIDs(%q, %q) = %v, want %q", c.ref, c.id, err, c.want)
		}
	}
	if err := ValidateIDs("ref-ünïcode 1", "person\t1"); err != nil {
		t.Errorf("a printable ref: %v", err)
	}
}
