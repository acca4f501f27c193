package knotclient_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"net/http/httptest"

	"github.com/erasure-worker/erasure-worker/knotclient"
	"github.com/erasure-worker/erasure-worker/knotclient/knotfake"
)

// A worker deletes a user and branches on the outcome or the error's Class.
// Here the fake stands in for https://development.knotapi.com.
func Example() {
	fake := knotfake.New(knotfake.Options{
		ClientID: "my-client-id",
		Secret:   "my-secret",
		Exists:   func(id string) bool { return id != "never-signed-up" },
	})
	srv := httptest.NewServer(fake)
	defer srv.Close()

	client, err := knotclient.New(knotclient.Config{
		BaseURL:  srv.URL,
		ClientID: "my-client-id",
		Secret:   "my-secret",
		Version:  "2.0",
	})
	if err != nil {
		log.Fatal(err)
	}

	for _, id := range []string{"abc123", "abc123", "never-signed-up", "bad\x00id"} {
		res, err := client.DeleteUser(context.Background(), id)
		var kerr *knotclient.Error
		switch {
		case err == nil:
			fmt.Printf("%q: succeeded, %v (HTTP %d)\n", id, res.Outcome, res.StatusCode)
		case errors.As(err, &kerr) && kerr.Class == knotclient.Permanent:
			fmt.Printf("%q: failed for good: %v\n", id, err)
		case errors.As(err, &kerr):
			fmt.Printf("%q: %v, try again later: %v\n", id, kerr.Class, err)
		}
	}
	// Output:
	// "abc123": succeeded, deleted (HTTP 200)
	// "abc123": succeeded, not_found (HTTP 400)
	// "never-signed-up": succeeded, not_found (HTTP 400)
	// "bad\x00id": failed for good: knot: invalid external_user_id: control character U+0000 at byte 3
}
