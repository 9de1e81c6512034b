package report

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"time"
)

// ginkgoSuite is the part of a ginkgo JSON report (--ginkgo.json-report)
// read here: one entry per suite, one spec report per node that ran.
type ginkgoSuite struct {
	SpecReports []struct {
		ContainerHierarchyTexts []string
		LeafNodeText            string
		LeafNodeType            string
		State                   string
		RunTime                 time.Duration
		Failure                 struct {
			Message  string
			Location struct {
				FileName   string
				LineNumber int
			}
		}
		CapturedGinkgoWriterOutput string
		CapturedStdOutErr          string
	}
}

// SpecName is how a ginkgo spec is named in results and skip lists: its
// containers' texts and its own, space-separated (ginkgo's full text).
func SpecName(containers []string, leaf string) string {
	return strings.Join(append(append([]string{}, containers...), leaf), " ")
}

// Ginkgo reads a ginkgo JSON report and returns a result per spec (It),
// in the report's order. A failure in a suite-level node (BeforeSuite and
// the like) fails with the spec that was next, as ginkgo reports it.
func Ginkgo(r io.Reader) ([]Result, error) {
	var suites []ginkgoSuite
	if err := json.NewDecoder(r).Decode(&suites); err != nil {
		return nil, fmt.Errorf("read the ginkgo report: %w", err)
	}
	var results []Result
	for _, s := range suites {
		for _, sp := range s.SpecReports {
			if sp.LeafNodeType != "It" {
				if sp.State != "passed" && sp.State != "skipped" {
					results = append(results, Result{Test: sp.LeafNodeType, Status: "FAIL",
						Reason: oneLine(sp.Failure.Message)})
				}
				continue
			}
			res := Result{Test: SpecName(sp.ContainerHierarchyTexts, sp.LeafNodeText), Elapsed: sp.RunTime.Seconds()}
			switch sp.State {
			case "passed":
				res.Status = "PASS"
			case "skipped", "pending":
				res.Status = "SKIP"
				res.Reason = oneLine(sp.Failure.Message)
			default: // failed, panicked, timedout, interrupted, aborted
				res.Status = "FAIL"
				res.Reason = fmt.Sprintf("%s: %s:%d: %s", sp.State, baseName(sp.Failure.Location.FileName),
					sp.Failure.Location.LineNumber, oneLine(sp.Failure.Message))
				res.Output = strings.Split(sp.CapturedGinkgoWriterOutput+sp.CapturedStdOutErr+"\n"+sp.Failure.Message, "\n")
			}
			results = append(results, res)
		}
	}
	return results, nil
}

// oneLine is a message's gist: its lines joined, at most 300 bytes.
func oneLine(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > 300 {
		s = s[:300] + "..."
	}
	return s
}

func baseName(path string) string {
	return path[strings.LastIndex(path, "/")+1:]
}
