// Package carry lets a request wait in a way a live upgrade can carry
// across: the upgrade writes the request down for the next process, which
// serves it, instead of waiting for it to be answered. A request marks
// such a wait with Wait while it has done nothing that the next process
// could not do again from the start, and with Hold while it waits for
// work in flight (a runtime call) that the next process can finish and
// answer. The ttrpc edge gives each request its Point (package handover's,
// through the request's context). Without one, Wait and Hold just wait. It
// keeps no state of its own.
package carry

import "context"

// Point is where one request may be carried over while it waits.
type Point interface {
	// Park says the request waits now; token is handed to Unpark. keep,
	// if not nil, is asked when an upgrade would carry the request over
	// (its conn settles): ok false means it cannot be now, and the
	// upgrade waits for it as for any request being served; release, once
	// the upgrade is abandoned, undoes what keep did.
	Park(keep func() (release func(), ok bool)) (token uint64)
	// Unpark says the request goes on. It blocks while an upgrade has
	// the request written down (the process then re-executes, or the
	// upgrade is abandoned); again reports that an upgrade began since
	// Park: what the request waited for may have been cut short by it
	// (an upgrade parks stdio), and is to be waited for again.
	Unpark(token uint64) (again bool)
	// Ready says what keep answers may have changed: an upgrade waiting
	// for the request asks again.
	Ready()
}

type pointKey struct{}

// With returns ctx carrying p, the point of the request ctx belongs to.
func With(ctx context.Context, p Point) context.Context {
	if p == nil {
		return ctx
	}
	return context.WithValue(ctx, pointKey{}, p)
}

// Wait runs wait, a wait of the request ctx belongs to during which the
// request has done nothing the next process could not do again: a live
// upgrade may carry the request over instead of waiting for it. A wait an
// upgrade cut short and abandoned is waited again.
func Wait(ctx context.Context, wait func() error) error {
	p, _ := ctx.Value(pointKey{}).(Point)
	if p == nil {
		return wait()
	}
	for {
		token := p.Park(nil)
		err := wait()
		if !p.Unpark(token) {
			return err
		}
	}
}

// Hold runs wait, which waits for work in flight of the request ctx
// belongs to: an upgrade may carry the request over instead of waiting
// for it if keep says it can be (keep makes the work's end the next
// process's: it finishes it and answers the request). wait calls ready
// when keep may say yes now. Whether or not an upgrade began meanwhile,
// the work went on, and is not waited for again.
func Hold(ctx context.Context, keep func() (release func(), ok bool), wait func(ready func()) error) error {
	p, _ := ctx.Value(pointKey{}).(Point)
	if p == nil {
		return wait(func() {})
	}
	token := p.Park(keep)
	err := wait(p.Ready)
	p.Unpark(token)
	return err
}
