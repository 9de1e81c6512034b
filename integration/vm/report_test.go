package main

import (
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestReporterCounts: the stream's events make a suite's counts; a known
// failure (knownFailures) neither counts as a failure nor fails the run; a
// test binary that exits non-zero with no failed test is a broken suite;
// a job that never says it is done fails the run.
func TestReporterCounts(t *testing.T) {
	out := t.TempDir()
	os.WriteFile(filepath.Join(out, "integration-1.6-systemd.json"), []byte(
		`{"Action":"output","Test":"TestOOMKill","Output":"no /tasks/oom event\n"}`+"\n"), 0o644)
	var printed strings.Builder
	known := map[[2]string]string{{"TestOOMKill", "systemd"}: "a reason"}
	r := newReporter(&printed, out, known)
	for _, l := range []string{
		"#ready 20.1 kernel=6.1",
		"#suite-start integration-1.6-systemd",
		`{"Action":"run","Test":"TestPauseResume"}`,
		`{"Action":"pass","Test":"TestPauseResume","Elapsed":3}`,
		`{"Action":"pass","Test":"TestPauseResume/sub","Elapsed":1}`,
		`{"Action":"fail","Test":"TestOOMKill","Elapsed":5}`,
		`{"Action":"skip","Test":"TestCRIPauselessPod","Elapsed":0}`,
		`{"Action":"fail","Elapsed":9}`,
		"#suite-end integration-1.6-systemd 1",
	} {
		r.line(l)
	}
	s := r.Suites[0]
	if s.Passed != 1 || s.Failed != 0 || s.Known != 1 || s.Skipped != 1 || s.Broken != "" || s.Driver != "systemd" || s.Containerd != "1.6" {
		t.Fatalf("suite %+v", s)
	}
	if !strings.Contains(printed.String(), "KNOWN FAIL TestOOMKill") || !strings.Contains(printed.String(), "no /tasks/oom event") {
		t.Fatalf("printed:\n%s", printed.String())
	}
	if !r.failed() {
		t.Fatal("a job that never said #done passed")
	}
	r.line("#done")
	if r.failed() {
		t.Fatal("a known failure failed the run")
	}

	r = newReporter(io.Discard, out, known)
	for _, l := range []string{"#suite-start integration-2.4.2-cgroupfs", `{"Action":"pass","Test":"TestMetrics","Elapsed":3}`,
		"#suite-end integration-2.4.2-cgroupfs 2", "#done"} {
		r.line(l)
	}
	if s := r.Suites[0]; s.Broken == "" || !r.failed() {
		t.Fatalf("a binary that exited 2 with no failed test: %+v, failed %v", s, r.failed())
	}

	r = newReporter(io.Discard, out, known)
	for _, l := range []string{"#suite-start integration-2.4.2-systemd", `{"Action":"fail","Test":"TestMetrics","Elapsed":3}`,
		"#suite-end integration-2.4.2-systemd 1", "#done"} {
		r.line(l)
	}
	if s := r.Suites[0]; s.Failed != 1 || !r.failed() {
		t.Fatalf("a failed test: %+v, failed %v", s, r.failed())
	}
}
