package fleet

import (
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// findAll is Find, failing the test on error.
func findAll(t *testing.T) []Shim {
	t.Helper()
	shims, err := Find()
	if err != nil {
		t.Fatal(err)
	}
	return shims
}

// TestAStalledShimDelaysNothing: a shim that accepts a connection and
// never answers holds up no other shim's upgrade, however long its bound
// (an hour here: the other's result must come while it still waits).
func TestAStalledShimDelaysNothing(t *testing.T) {
	ns := testNamespace(t)
	stalled := startFake(t, fakeOpts{mode: "stall", namespace: ns, socket: filepath.Join(t.TempDir(), "tether", "s.sock")})
	good := startFake(t, fakeOpts{mode: "serve", namespace: ns, socket: filepath.Join(t.TempDir(), "tether", "g.sock")})
	var shims []Shim
	for _, s := range findAll(t) { // the stalled one first: a loop would wait for it
		if s.Pid == stalled.pid() {
			shims = append([]Shim{s}, shims...)
		} else if s.Pid == good.pid() {
			shims = append(shims, s)
		}
	}
	if len(shims) != 2 {
		t.Fatalf("found %v", shims)
	}
	results := make(chan Result, 2)
	done := make(chan struct{})
	go func() {
		defer close(done)
		Upgrade(shims, Scope{Namespace: ns}, "/new", Bounds{Info: time.Hour, Upgrade: time.Hour, Parallel: 1}, func(r Result) { results <- r })
	}()
	select {
	case r := <-results:
		if r.Shim.Pid != good.pid() || r.Err != nil || r.Response.GetNewVersion() != "new" {
			t.Fatalf("first result: %+v", r)
		}
	case <-time.After(hangGuard):
		t.Fatal("the stalled shim held up the other's upgrade")
	}
	// The stalled one goes: its Info fails at once, and Upgrade returns.
	stalled.cmd.Process.Kill()
	select {
	case <-done:
	case <-time.After(hangGuard):
		t.Fatal("Upgrade did not return once the stalled shim was gone")
	}
	if r := <-results; r.Shim.Pid != stalled.pid() || r.Err == nil {
		t.Fatalf("the stalled shim's result: %+v", r)
	}
}

// TestScopeByAddress: with an address, only the shims started with the
// same containerd socket are asked (by path, or by another path to that
// socket); the others are not even connected to.
func TestScopeByAddress(t *testing.T) {
	ns := testNamespace(t)
	dir := t.TempDir()
	var sockets []string
	for _, name := range []string{"one.sock", "two.sock"} {
		path := filepath.Join(dir, name)
		l, err := net.Listen("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		sockets = append(sockets, path)
	}
	one := startFake(t, fakeOpts{mode: "serve", namespace: ns, address: sockets[0], socket: filepath.Join(t.TempDir(), "tether", "1.sock")})
	two := startFake(t, fakeOpts{mode: "stall", namespace: ns, address: sockets[1], socket: filepath.Join(t.TempDir(), "tether", "2.sock")})
	link := filepath.Join(dir, "link.sock")
	if err := os.Symlink(sockets[0], link); err != nil {
		t.Fatal(err)
	}
	shims := findAll(t)
	for _, address := range []string{sockets[0], link, "unix://" + sockets[0]} {
		got := make(chan []Result, 1)
		go func() {
			var rs []Result
			Upgrade(shims, Scope{Address: address}, "", Bounds{Info: time.Hour, Upgrade: time.Hour, Parallel: 4}, func(r Result) { rs = append(rs, r) })
			got <- rs
		}()
		var rs []Result
		select {
		case rs = <-got:
		case <-time.After(hangGuard):
			t.Fatalf("-address %s: the other containerd's (stalling) shim was connected to", address)
		}
		var ours []Result
		for _, r := range rs {
			if r.Shim.Pid == one.pid() || r.Shim.Pid == two.pid() {
				ours = append(ours, r)
			}
		}
		if len(ours) != 1 || ours[0].Shim.Pid != one.pid() || ours[0].Err != nil {
			t.Errorf("-address %s: %+v", address, ours)
		}
		select {
		case line := <-one.lines:
			if line != "upgrade " {
				t.Errorf("-address %s: the shim was asked %q", address, line)
			}
		case <-time.After(hangGuard):
			t.Fatalf("-address %s: the shim was not asked to upgrade", address)
		}
	}
}
