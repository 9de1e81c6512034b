package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"
)

// event is one test2json event.
type event struct {
	Action  string
	Package string // the suite's label: integration-CONTAINERD-DRIVER
	Test    string
	Elapsed float64
	Output  string
}

// suiteResult is what one suite run in the VM came to.
type suiteResult struct {
	Label                   string
	Containerd, Driver      string
	Passed, Failed, Skipped int
	Known                   int // failures listed in knownFailures
	Wall                    time.Duration
	Status                  string // the test binary's exit status
	// Broken says why the suite failed besides its tests (the binary
	// crashed, timed out, or printed no result).
	Broken string

	started  time.Time
	failures []string // failed tests, known failures too
	skips    []string
}

func (s *suiteResult) failed() bool { return s.Failed > 0 || s.Broken != "" }

// reporter turns the guest's report stream into lines here, test by test,
// and a table at the end.
type reporter struct {
	w      io.Writer
	out    string    // the results directory: a suite's events in LABEL.json
	start  time.Time // the VM's start
	Boot   time.Duration
	Ready  string        // the guest's "#ready" line
	CPU    time.Duration // qemu's CPU time: what the run costs an idle machine
	Suites []*suiteResult
	Done   bool
	cur    *suiteResult
	known  map[[2]string]string // knownFailures
}

func newReporter(w io.Writer, out string, known map[[2]string]string) *reporter {
	return &reporter{w: w, out: out, start: time.Now(), known: known}
}

// line takes one line of the stream.
func (r *reporter) line(l string) {
	switch {
	case strings.HasPrefix(l, "{"):
		var e event
		if err := json.Unmarshal([]byte(l), &e); err != nil {
			fmt.Fprintln(r.w, l)
			return
		}
		r.event(e)
	case strings.HasPrefix(l, "#ready "):
		r.Boot, r.Ready = time.Since(r.start), strings.TrimPrefix(l, "#ready ")
		fmt.Fprintf(r.w, "VM up after %v (guest: %s)\n", r.Boot.Round(100*time.Millisecond), r.Ready)
	case strings.HasPrefix(l, "#suite-start "):
		label := strings.TrimPrefix(l, "#suite-start ")
		s := &suiteResult{Label: label, started: time.Now()}
		if f := strings.Split(label, "-"); len(f) == 3 {
			s.Containerd, s.Driver = f[1], f[2]
		}
		r.Suites = append(r.Suites, s)
		r.cur = s
		fmt.Fprintf(r.w, "== %s\n", r.describe(s))
	case strings.HasPrefix(l, "#suite-end "):
		f := strings.Fields(l)
		if r.cur == nil || len(f) < 3 {
			return
		}
		r.endSuite(r.cur, f[2])
		r.cur = nil
	case l == "#done":
		r.Done = true
	default:
		fmt.Fprintln(r.w, l)
	}
}

func (r *reporter) describe(s *suiteResult) string {
	if s.Containerd == "" {
		return s.Label
	}
	return fmt.Sprintf("integration suite on containerd %s, cgroup driver %s", s.Containerd, s.Driver)
}

func (r *reporter) event(e event) {
	s := r.cur
	if s == nil {
		return
	}
	switch e.Action {
	case "pass", "fail", "skip":
		if e.Test == "" || strings.Contains(e.Test, "/") {
			return // the package's end, or a subtest (its parent reports)
		}
		d := time.Duration(e.Elapsed * float64(time.Second)).Round(100 * time.Millisecond)
		switch e.Action {
		case "pass":
			s.Passed++
			fmt.Fprintf(r.w, "  PASS %s (%v)\n", e.Test, d)
			if why, ok := knownFailure(r.known, e.Test, s.Driver); ok {
				fmt.Fprintf(r.w, "       (a known failure that passed this time: %s)\n", why)
			}
		case "skip":
			s.Skipped++
			s.skips = append(s.skips, e.Test)
			fmt.Fprintf(r.w, "  SKIP %s\n", e.Test)
		case "fail":
			s.failures = append(s.failures, e.Test)
			if why, ok := knownFailure(r.known, e.Test, s.Driver); ok {
				s.Known++
				fmt.Fprintf(r.w, "  KNOWN FAIL %s (%v): %s\n", e.Test, d, why)
			} else {
				s.Failed++
				fmt.Fprintf(r.w, "  FAIL %s (%v)\n", e.Test, d)
			}
		}
	}
}

// endSuite closes a suite with the test binary's exit status.
func (r *reporter) endSuite(s *suiteResult, status string) {
	s.Wall, s.Status = time.Since(s.started), status
	if status != "0" && s.Failed == 0 && s.Known == 0 {
		s.Broken = "the test binary exited with status " + status + " and no failed test"
	}
	if s.Passed+s.Failed+s.Known == 0 && s.Broken == "" && s.Containerd != "" {
		s.Broken = "no test ran"
	}
	output := r.outputs(s)
	for _, t := range s.skips {
		fmt.Fprintf(r.w, "  skipped %s: %s\n", t, skipReason(output[t]))
	}
	for _, t := range s.failures {
		fmt.Fprintf(r.w, "  --- output of %s:\n", t)
		printTail(r.w, output[t], 200)
	}
	if s.Broken != "" {
		fmt.Fprintf(r.w, "  BROKEN: %s; its last words:\n", s.Broken)
		printTail(r.w, output[""], 60)
	}
	fmt.Fprintln(r.w, r.summary(s))
}

// outputs reads a suite's output lines, per test ("" for the package's),
// from its events file (the guest has written it all by the suite's end).
func (r *reporter) outputs(s *suiteResult) map[string][]string {
	out := map[string][]string{}
	data, err := os.ReadFile(filepath.Join(r.out, s.Label+".json"))
	if err != nil {
		out[""] = []string{fmt.Sprintf("(no events: %v)", err)}
		return out
	}
	for _, line := range strings.Split(string(data), "\n") {
		var e event
		if json.Unmarshal([]byte(line), &e) == nil && e.Action == "output" {
			out[e.Test] = append(out[e.Test], strings.TrimRight(e.Output, "\n"))
		}
	}
	return out
}

func (r *reporter) summary(s *suiteResult) string {
	known := ""
	if s.Known > 0 {
		known = fmt.Sprintf(", %d known failures", s.Known)
	}
	verdict := "ok"
	if s.failed() {
		verdict = "FAILED"
	}
	return fmt.Sprintf("%s %s: %d passed, %d failed, %d skipped%s in %v", verdict, r.describe(s),
		s.Passed, s.Failed, s.Skipped, known, s.Wall.Round(time.Second))
}

// failed says whether anything failed, or the job did not finish.
func (r *reporter) failed() bool {
	if !r.Done {
		return true
	}
	for _, s := range r.Suites {
		if s.failed() {
			return true
		}
	}
	return false
}

// table writes the closing table: every suite, with its counts and time.
func (r *reporter) table(w io.Writer, total time.Duration) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "suite\tcontainerd\tcgroup driver\tpassed\tfailed\tknown\tskipped\twall\t")
	for _, s := range r.Suites {
		name, _, _ := strings.Cut(s.Label, "-")
		failed := fmt.Sprint(s.Failed)
		if s.Broken != "" {
			failed += " (broken)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%d\t%d\t%v\t\n", name, s.Containerd, s.Driver, s.Passed, failed, s.Known, s.Skipped, s.Wall.Round(time.Second))
	}
	tw.Flush()
	fmt.Fprintf(w, "VM boot to job: %v; whole run: %v (qemu used %v of CPU, %s)\n", r.Boot.Round(100*time.Millisecond),
		total.Round(time.Second), r.CPU.Round(time.Second), loadAverage())
	if !r.Done {
		fmt.Fprintln(w, "the job did not finish (see the console log)")
	}
}

// loadAverage is the host's load as /proc/loadavg says it (the VM's times
// depend on it: the machine may be shared).
func loadAverage() string {
	data, _ := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(data))
	if len(f) < 3 {
		return "load unknown"
	}
	return "host load " + strings.Join(f[:3], " ")
}

// skipReason is the last line a skipped test printed.
func skipReason(lines []string) string {
	for i := len(lines) - 1; i >= 0; i-- {
		if l := strings.TrimSpace(lines[i]); l != "" && !strings.HasPrefix(l, "--- SKIP") && !strings.HasPrefix(l, "=== RUN") {
			return l
		}
	}
	return "(no reason printed)"
}

func printTail(w io.Writer, lines []string, n int) {
	if len(lines) > n {
		fmt.Fprintf(w, "       ... %d lines before\n", len(lines)-n)
		lines = lines[len(lines)-n:]
	}
	for _, l := range lines {
		fmt.Fprintln(w, "       "+l)
	}
}
