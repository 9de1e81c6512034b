package report

import (
	"encoding/json"
	"strings"
	"testing"
)

// TestFold feeds fold what test2json printed when a test binary hit its
// time limit with parallel tests in flight.
func TestFold(t *testing.T) {
	var stream strings.Builder
	ev := func(action, test, output string) {
		b, err := json.Marshal(map[string]string{"Action": action, "Package": "client", "Test": test, "Output": output})
		if err != nil {
			t.Fatal(err)
		}
		stream.Write(append(b, '\n'))
	}
	ev("output", "", "level=info msg=\"start to pull seed image\"\n")
	for _, test := range []string{"TestSerial", "TestPassed", "TestHung", "TestWaiting"} {
		ev("run", test, "")
		ev("output", test, "=== RUN   "+test+"\n")
	}
	ev("output", "TestSerial", "    client_test.go:42: no such thing\n")
	ev("output", "TestSerial", "--- FAIL: TestSerial (0.50s)\n")
	ev("fail", "TestSerial", "")
	for _, test := range []string{"TestPassed", "TestHung", "TestWaiting"} {
		ev("pause", test, "")
	}
	ev("cont", "TestPassed", "")
	ev("cont", "TestHung", "")
	// TestPassed's pass never comes as an event, and the timeout panic is
	// put down to it.
	ev("output", "TestPassed", "--- PASS: TestPassed (0.14s)\n")
	ev("output", "TestPassed", "panic: test timed out after 10m0s\n")
	ev("output", "TestPassed", "\trunning tests:\n")
	ev("output", "TestPassed", "\t\tTestHung/sub (9m59s)\n")
	ev("output", "TestPassed", "\n")
	ev("fail", "TestPassed", "")
	stream.WriteString("not an event\n")

	got := map[string]Result{}
	outside, err := Fold(strings.NewReader(stream.String()), func(r Result) {
		if _, dup := got[r.Test]; dup {
			t.Errorf("%s reported twice", r.Test)
		}
		got[r.Test] = r
	})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]struct{ status, reason string }{
		"TestSerial": {"FAIL", "client_test.go:42: no such thing"},
		"TestPassed": {"PASS", ""},
		"TestHung":   {"FAIL", "hung: still running after 9m59s when the test binary hit its time limit (panic: test timed out after 10m0s)"},
	}
	for test, w := range want {
		if r := got[test]; r.Status != w.status || r.Reason != w.reason {
			t.Errorf("%s: got %s %q, want %s %q", test, r.Status, r.Reason, w.status, w.reason)
		}
	}
	if r, ok := got["TestWaiting"]; ok {
		t.Errorf("TestWaiting never ran, but was reported: %v", r)
	}
	if len(outside) != 1 || !strings.Contains(outside[0], "seed image") {
		t.Errorf("output outside tests: %q", outside)
	}
}
