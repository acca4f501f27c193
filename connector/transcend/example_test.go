package transcend_test

import (
	"context"
	"fmt"
	"net/http/httptest"
	"time"

	"github.com/erasure-worker/erasure-worker/connector/transcend"
	"github.com/erasure-worker/erasure-worker/connector/transcend/transcendfake"
)

// One poll of the cron integration: pull every page of pending erasures, then report each
// item's outcome with its own nonce.
func Example() {
	fake := transcendfake.New(transcendfake.Options{APIKey: "key", DataSiloID: "silo"})
	fake.Add(transcendfake.Item{RequestID: "req-1", Identifier: "user-1", DaysUntilOverdue: 30},
		transcendfake.Item{RequestID: "req-2", Identifier: "user-2", DaysUntilOverdue: 30})
	srv := httptest.NewServer(fake)
	defer srv.Close()

	c, err := transcend.New(transcend.Config{BaseURL: srv.URL, APIKey: "key", DataSiloID: "silo"})
	if err != nil {
		fmt.Println(err)
		return
	}
	ctx := context.Background()
	pulled := time.Now()
	var items []transcend.Item
	for offset := 0; ; offset += transcend.MaxPageSize {
		page, err := c.PendingPage(ctx, transcend.MaxPageSize, offset)
		if err != nil {
			fmt.Println(err) // a *PullError: its Result says whether to pause, wait or retry
			return
		}
		for _, bad := range page.Invalid {
			fmt.Println("left out:", bad) // names the request and the field, never the identifier
		}
		items = append(items, page.Items...)
		if page.Len() < transcend.MaxPageSize {
			break
		}
	}
	for _, it := range items {
		due := transcend.DueAt(pulled, it.DaysUntilOverdue)
		fmt.Println(it, "due in", due.Sub(pulled).Round(24*time.Hour))
	}

	// ... the worker erases each user at Knot, then:
	fmt.Println(c.Report(ctx, items[0].Nonce, items[0].Identifier, "deleted", "").Result)
	fmt.Println(c.Report(ctx, items[1].Nonce, items[1].Identifier, "not_found", "USER_NOT_FOUND").Result)
	fmt.Println(c.Report(ctx, items[1].Nonce, items[1].Identifier, "not_found", "USER_NOT_FOUND").Result)
	// Output:
	// transcend item (request req-1, data silo silo) due in 720h0m0s
	// transcend item (request req-2, data silo silo) due in 720h0m0s
	// delivered
	// delivered
	// closed
}
