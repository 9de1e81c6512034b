// Package report turns a suite's output into one result per test (go
// test's events through test2json, or a ginkgo JSON report) and prints
// runs side by side.
package report

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"regexp"
	"strconv"
	"strings"
)

// A Result is one top-level test's outcome in one run.
type Result struct {
	Test    string
	Status  string // PASS, FAIL or SKIP
	Elapsed float64
	Reason  string   // a failure's or skip's gist, one line
	Output  []string // everything the test printed
}

// event is one line of `go tool test2json`.
type event struct {
	Action string
	Test   string
	Output string
}

var (
	// noise is output that says nothing about why a test failed.
	noise = regexp.MustCompile(`^(=== (RUN|PAUSE|CONT|NAME)|--- (PASS|FAIL|SKIP)|\s*$)`)
	// testLine is the testing package's prefix of t.Error and t.Log lines.
	testLine = regexp.MustCompile(`^\s+\S+_test\.go:\d+:`)
	// verdict is the line a test ends with.
	verdict = regexp.MustCompile(`^--- (PASS|FAIL|SKIP): (\S+) \(([\d.]+)s\)`)
	// runningTest is a test named in a timeout panic's "running tests:" list.
	runningTest = regexp.MustCompile(`^\t\t(Test[^/\s]*)\S* \((\S+)\)$`)
)

// fold reads one test-binary process's events and reports each top-level
// test that finished, as it finishes. A test that started but never finished
// (the binary panicked, or hit -test.timeout) fails; tests that never
// started, or were parallel tests still waiting to, are left for another
// process.
//
// A test's verdict is its own "--- PASS: TestX (1.23s)" line, not
// test2json's pass or fail: test2json can leave a parallel test's pass
// pending, and when the binary dies it fails the test that last printed,
// which may be one that had passed.
//
// fold returns the last lines printed outside any test (TestMain's).
func Fold(r io.Reader, report func(Result)) ([]string, error) {
	running := map[string][]string{} // test -> output so far
	var order []string
	var panicked string         // the first panic line, whichever test it went to
	hung := map[string]string{} // tests a timeout panic lists, and for how long they ran
	paused := map[string]bool{} // parallel tests waiting for their turn
	inList := false
	var outside []string
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		var ev event
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			continue // not an event: test2json's own complaints
		}
		top, _, _ := strings.Cut(ev.Test, "/")
		if ev.Action == "run" && ev.Test == top {
			running[top] = []string{}
			order = append(order, top)
		}
		if ev.Test == top && (ev.Action == "pause" || ev.Action == "cont") {
			paused[top] = ev.Action == "pause"
		}
		if ev.Action != "output" {
			continue
		}
		out := strings.TrimRight(ev.Output, "\n")
		if strings.HasPrefix(out, "panic:") && panicked == "" {
			panicked = out
		}
		if strings.TrimSpace(out) == "running tests:" {
			inList = true
		} else if m := runningTest.FindStringSubmatch(out); inList && m != nil {
			hung[m[1]] = m[2]
		} else {
			inList = false
		}
		if _, ok := running[top]; ok {
			running[top] = append(running[top], out)
		} else if ev.Test == "" {
			outside = append(outside[max(0, len(outside)-19):], out)
		}
		if m := verdict.FindStringSubmatch(out); m != nil && m[2] == top && running[top] != nil {
			elapsed, _ := strconv.ParseFloat(m[3], 64)
			report(newResult(top, m[1], elapsed, running[top]))
			delete(running, top)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	for _, t := range order {
		output, ok := running[t]
		if !ok || paused[t] {
			continue
		}
		why := "interrupted: the test binary exited before the test finished"
		if took, ok := hung[t]; ok {
			why = fmt.Sprintf("hung: still running after %s when the test binary hit its time limit (%s)", took, panicked)
		} else if panicked != "" {
			why = "interrupted: " + panicked
		}
		res := newResult(t, "FAIL", 0, append(output, why))
		res.Reason = why
		report(res)
	}
	return outside, nil
}

func newResult(test, status string, elapsed float64, output []string) Result {
	r := Result{Test: test, Status: status, Elapsed: elapsed, Output: output}
	if status == "PASS" {
		return r
	}
	var msgs, errs []string
	for _, l := range output {
		if noise.MatchString(l) {
			continue
		}
		msgs = append(msgs, strings.TrimSpace(l))
		if testLine.MatchString(l) || strings.Contains(l, "panic") {
			errs = append(errs, strings.TrimSpace(l))
		}
	}
	if status == "FAIL" && len(errs) > 0 {
		msgs = errs
	}
	if status == "SKIP" && len(msgs) > 0 {
		msgs = msgs[len(msgs)-1:]
	}
	r.Reason = strings.Join(msgs[:min(3, len(msgs))], " | ")
	if len(r.Reason) > 300 {
		r.Reason = r.Reason[:300] + "..."
	}
	return r
}

// String is the Result's line in a run's report.
func (r Result) String() string {
	s := fmt.Sprintf("%s %s (%.2fs)", r.Status, r.Test, r.Elapsed)
	if r.Reason != "" {
		s += ": " + r.Reason
	}
	return s
}

// Counts are a run's totals.
type Counts struct{ Passed, Failed, Skipped int }

func Count(rs []Result) Counts {
	var c Counts
	for _, r := range rs {
		switch r.Status {
		case "PASS":
			c.Passed++
		case "FAIL":
			c.Failed++
		default:
			c.Skipped++
		}
	}
	return c
}

func (c Counts) String() string {
	return fmt.Sprintf("%d passed, %d failed, %d skipped", c.Passed, c.Failed, c.Skipped)
}

// table writes a Markdown table of several runs of the same tests side by
// side, with totals.
func Table(w io.Writer, names []string, runs [][]Result) {
	rows := [][]string{append([]string{"test"}, names...)}
	status := make([]map[string]string, len(runs))
	for i, rs := range runs {
		status[i] = map[string]string{}
		for _, r := range rs {
			status[i][r.Test] = r.Status
		}
	}
	for _, r := range runs[0] {
		// A ginkgo spec's text may hold a '|', which would end the cell.
		row := []string{strings.ReplaceAll(r.Test, "|", `\|`)}
		for i := range runs {
			row = append(row, status[i][r.Test])
		}
		rows = append(rows, row)
	}
	for _, total := range []struct {
		name string
		n    func(Counts) int
	}{{"passed", func(c Counts) int { return c.Passed }}, {"failed", func(c Counts) int { return c.Failed }},
		{"skipped", func(c Counts) int { return c.Skipped }}} {
		row := []string{"**" + total.name + "**"}
		for _, rs := range runs {
			row = append(row, fmt.Sprint(total.n(Count(rs))))
		}
		rows = append(rows, row)
	}
	width := make([]int, len(rows[0]))
	for _, row := range rows {
		for i, c := range row {
			width[i] = max(width[i], len(c))
		}
	}
	for n, row := range rows {
		for i, c := range row {
			fmt.Fprintf(w, "| %-*s ", width[i], c)
		}
		fmt.Fprintln(w, "|")
		if n == 0 {
			for i := range row {
				fmt.Fprintf(w, "|%s", strings.Repeat("-", width[i]+2))
			}
			fmt.Fprintln(w, "|")
		}
	}
}
