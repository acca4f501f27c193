package fakekit

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
)

// MaxPush bounds the requests one push of a fake sends.
const MaxPush = 100_000

// CheckPush checks what every fake's push takes: how many (1 to MaxPush) and the door's URL
// (absolute http or https), naming the JSON field at fault.
func CheckPush(count int, target string) error {
	u, err := url.Parse(target)
	switch {
	case count < 1 || count > MaxPush:
		return fmt.Errorf("count must be between 1 and %d, got %d", MaxPush, count)
	case err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "":
		return errors.New("target must be an absolute http or https URL")
	}
	return nil
}

// PushHandler is a fake's POST /_fake/push: it decodes the spec strictly, runs push, and answers
// its result; a spec that is wrong, or a push that sent nothing, is refused 400 with push's
// error, which names the field and never quotes a credential. sent reads how many went out.
func PushHandler[F Faults, S, R any](a *Admin[F], push func(context.Context, S) (R, error), sent func(R) int) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		var spec S
		if err := DecodeStrict(r.Body, &spec); err != nil {
			a.Refuse(w, http.StatusBadRequest, err.Error())
			return
		}
		res, err := push(r.Context(), spec)
		if err != nil && sent(res) == 0 {
			a.Refuse(w, http.StatusBadRequest, err.Error())
			return
		}
		WriteJSON(w, http.StatusOK, res)
	}
}
