package worker

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestIdentifierKeysPseudonymiseWithTheNewestAndMatchUnderEvery(t *testing.T) {
	dir := t.TempDir()
	old := strings.Repeat("o", 40)
	newest := strings.Repeat("n", 40)
	path := filepath.Join(dir, "keys")
	if err := os.WriteFile(path, []byte("# rotated 2026-12-01\n"+newest+"\n\n"+old+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	k, err := ReadIdentifierKeys(path)
	if err != nil {
		t.Fatal(err)
	}
	underOld := NewIdentifierKeys([]byte(old)).Pseudonym("acct-1")
	p := k.Pseudonym("acct-1")
	if !strings.HasPrefix(p, PseudonymPrefix) || len(p) != len(PseudonymPrefix)+64 || strings.Contains(p, "acct-1") {
		t.Fatalf("pseudonym %q", p)
	}
	if p == underOld || p != k.Pseudonyms("acct-1")[0] || k.Pseudonyms("acct-1")[1] != underOld {
		t.Fatalf("the newest key must pseudonymise and every key must match: %q %v %q", p, k.Pseudonyms("acct-1"), underOld)
	}
	if k.Pseudonym("acct-2") == p {
		t.Fatal("two ids share a pseudonym")
	}
	if s := k.String() + k.GoString(); strings.Contains(s, old) || strings.Contains(s, newest) {
		t.Fatalf("printing the keys shows one: %s", s)
	}
}

func TestIdentifierKeyFileErrorsNameTheLineNotTheKey(t *testing.T) {
	dir := t.TempDir()
	for name, body := range map[string]string{
		"short": strings.Repeat("k", 40) + "\nshort-key-secret\n",
		"empty": "# nothing\n\n",
	} {
		path := filepath.Join(dir, name)
		_ = os.WriteFile(path, []byte(body), 0o600)
		_, err := ReadIdentifierKeys(path)
		if err == nil || strings.Contains(err.Error(), "short-key-secret") {
			t.Errorf("%s: %v", name, err)
		}
		if name == "short" && !strings.Contains(err.Error(), "line 2") {
			t.Errorf("short: %v does not name line 2", err)
		}
	}
	if _, err := ReadIdentifierKeys(filepath.Join(dir, "missing")); err == nil {
		t.Error("a missing file is accepted")
	}
}
