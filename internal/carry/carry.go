// Package carry lets a request wait in a way a live upgrade can carry
// across: while the request waits, having done nothing that the next
// process could not do again from the start, the upgrade writes the
// request down for the next process (which serves it from the start)
// instead of waiting for it to be answered. A request handler marks such a
// wait with Wait; the ttrpc edge gives each request its Point (package
// handover's, through the request's context). Without one, Wait just
// waits. It keeps no state of its own.
package carry

import "context"

// Point is where one request may be carried over while it waits.
type Point interface {
	// Park says the request waits now with nothing done; token is handed
	// to Unpark.
	Park() (token uint64)
	// Unpark says the request goes on. It blocks while an upgrade has
	// the request written down (the process then re-executes, or the
	// upgrade is abandoned); again reports that an upgrade began since
	// Park: what the request waited for may have been cut short by it
	// (an upgrade parks stdio), and is to be waited for again.
	Unpark(token uint64) (again bool)
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
		token := p.Park()
		err := wait()
		if !p.Unpark(token) {
			return err
		}
	}
}
