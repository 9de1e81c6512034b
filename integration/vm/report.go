package main

import (
	"encoding/json"
	"fmt"
	"io"
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

	started time.Time
	output  map[string][]string // per test, and "" for the package
}

func (s *suiteResult) failed() bool { return s.Failed > 0 || s.Broken != "" }

// reporter turns the guest's report stream into lines here, test by test,
// and a table at the end.
type reporter struct {
	w      io.Writer
	start  time.Time // the VM's start
	Boot   time.Duration
	Ready  string // the guest's "#ready" line
	Suites []*suiteResult
	Done   bool
	cur    *suiteResult
}

func newReporter(w io.Writer) *reporter { return &reporter{w: w, start: time.Now()} }

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
		s := &suiteResult{Label: label, started: time.Now(), output: map[string][]string{}}
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
	case "output":
		s.output[e.Test] = append(s.output[e.Test], strings.TrimRight(e.Output, "\n"))
	case "pass", "fail", "skip":
		if e.Test == "" || strings.Contains(e.Test, "/") {
			return // the package's end, or a subtest (its parent reports)
		}
		d := time.Duration(e.Elapsed * float64(time.Second)).Round(100 * time.Millisecond)
		switch e.Action {
		case "pass":
			s.Passed++
			fmt.Fprintf(r.w, "  PASS %s (%v)\n", e.Test, d)
			if why, ok := isKnownFailure(e.Test, s.Driver); ok {
				fmt.Fprintf(r.w, "       (a known failure that passed this time: %s)\n", why)
			}
		case "skip":
			s.Skipped++
			fmt.Fprintf(r.w, "  SKIP %s: %s\n", e.Test, skipReason(s.output[e.Test]))
		case "fail":
			if why, ok := isKnownFailure(e.Test, s.Driver); ok {
				s.Known++
				fmt.Fprintf(r.w, "  KNOWN FAIL %s (%v): %s\n", e.Test, d, why)
			} else {
				s.Failed++
				fmt.Fprintf(r.w, "  FAIL %s (%v)\n", e.Test, d)
			}
			printTail(r.w, s.output[e.Test], 200)
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
	if s.Broken != "" {
		fmt.Fprintf(r.w, "  BROKEN: %s; its last words:\n", s.Broken)
		printTail(r.w, s.output[""], 60)
	}
	fmt.Fprintln(r.w, r.summary(s))
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
	fmt.Fprintf(w, "VM boot to job: %v; whole run: %v\n", r.Boot.Round(100*time.Millisecond), total.Round(time.Second))
	if !r.Done {
		fmt.Fprintln(w, "the job did not finish (see the console log)")
	}
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
