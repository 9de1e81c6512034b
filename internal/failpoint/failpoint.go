// Package failpoint injects failures into a shim's requests for
// containerd's CRI integration suite: a shim built with the failpoint tag
// (cmd/containerd-shim-tether-v2) reads, from its first bundle's OCI
// annotations io.containerd.runtime.v2.shim.failpoint.METHOD, what to do
// to each request of a task API method, in the notation of containerd's
// failpoint shim (containerd-shim-runc-fp-v1), which the suite's failpoint
// tests write:
//
//	TERM[->TERM...]   TERM = [COUNT*]ACTION[(ARG)]
//
// ACTION is off (nothing), error (the request fails with ARG as its
// message), panic (the shim panics with ARG) or delay (the request waits
// ARG milliseconds first). Each request takes the first term whose count is
// not used up (no count: once), and uses one; once all are used up,
// requests go through.
//
// It also fails steps of the shim's own in a build for tether's upgrade
// tests (Hit, step.go). It changes nothing but the outcome of what it is
// asked about, and a build for neither does nothing.
package failpoint

import (
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"
)

// AnnotationPrefix starts the annotations that set failpoints, followed by
// a task API method's name (Create, Start, Kill, Delete, Shutdown, ...).
const AnnotationPrefix = "io.containerd.runtime.v2.shim.failpoint."

// Set is the failpoints of a shim's methods.
type Set struct {
	mu      sync.Mutex
	methods map[string][]*term
}

type term struct {
	action string // off, error, panic, delay
	arg    string
	delay  time.Duration
	count  int64
}

// FromAnnotations reads the failpoints that annotations set; it returns
// nil if they set none.
func FromAnnotations(annotations map[string]string) (*Set, error) {
	var s *Set
	for k, v := range annotations {
		method, ok := strings.CutPrefix(k, AnnotationPrefix)
		if !ok {
			continue
		}
		terms, err := parse(v)
		if err != nil {
			return nil, fmt.Errorf("failpoint for %s %q: %w", method, v, err)
		}
		if s == nil {
			s = &Set{methods: map[string][]*term{}}
		}
		s.methods[method] = terms
	}
	return s, nil
}

// Evaluate applies method's next failpoint term: it returns the error to
// fail the request with, waits, or panics. A nil Set does nothing.
func (s *Set) Evaluate(method string) error {
	if s == nil {
		return nil
	}
	s.mu.Lock()
	var t *term
	for _, c := range s.methods[method] {
		if c.count > 0 {
			c.count--
			t = c
			break
		}
	}
	s.mu.Unlock()
	if t == nil {
		return nil
	}
	switch t.action {
	case "error":
		return fmt.Errorf("%s", t.arg)
	case "panic":
		panic(t.arg)
	case "delay":
		time.Sleep(t.delay) // the injected failure is the wait itself
	}
	return nil
}

func parse(s string) ([]*term, error) {
	var terms []*term
	for _, part := range strings.Split(s, "->") {
		t, err := parseTerm(part)
		if err != nil {
			return nil, err
		}
		terms = append(terms, t)
	}
	return terms, nil
}

func parseTerm(s string) (*term, error) {
	t := &term{count: 1}
	if n, rest, ok := strings.Cut(s, "*"); ok && !strings.Contains(n, "(") {
		c, err := strconv.ParseInt(n, 10, 64)
		if err != nil || c < 0 {
			return nil, fmt.Errorf("count %q: want a number", n)
		}
		t.count, s = c, rest
	}
	t.action = s
	if i := strings.IndexByte(s, '('); i >= 0 {
		if !strings.HasSuffix(s, ")") {
			return nil, fmt.Errorf("term %q: no closing parenthesis", s)
		}
		t.action, t.arg = s[:i], s[i+1:len(s)-1]
	}
	switch t.action {
	case "off":
	case "error", "panic":
		if t.arg == "" {
			return nil, fmt.Errorf("%s needs a message", t.action)
		}
	case "delay":
		ms, err := strconv.ParseInt(t.arg, 10, 64)
		if err != nil || ms < 0 {
			return nil, fmt.Errorf("delay %q: want milliseconds", t.arg)
		}
		t.delay = time.Duration(ms) * time.Millisecond
	default:
		return nil, fmt.Errorf("action %q: want off, error, panic or delay", t.action)
	}
	return t, nil
}
