package report

import (
	"strings"
	"testing"
)

// TestGinkgo reads a ginkgo JSON report as critest writes it: specs that
// passed, failed, were skipped, and a suite-level node that failed.
func TestGinkgo(t *testing.T) {
	const js = `[{"SuiteDescription":"CRI validation","SpecReports":[
	{"ContainerHierarchyTexts":null,"LeafNodeType":"SynchronizedBeforeSuite","State":"passed"},
	{"ContainerHierarchyTexts":["[k8s.io] Networking","runtime should support networking"],"LeafNodeText":"runtime should support DNS config [Conformance]","LeafNodeType":"It","State":"passed","RunTime":2500000000},
	{"ContainerHierarchyTexts":["[k8s.io] Security Context","NoNewPrivs"],"LeafNodeText":"should not allow privilege escalation when true","LeafNodeType":"It","State":"failed","RunTime":1000000000,
	 "Failure":{"Message":"Expected\n    <string>: Effective uid: 0\nto equal\n    <string>: Effective uid: 1000","Location":{"FileName":"/src/pkg/validate/security_context_linux.go","LineNumber":1039}},
	 "CapturedGinkgoWriterOutput":"STEP: create container\n"},
	{"ContainerHierarchyTexts":["[k8s.io] Image Manager"],"LeafNodeText":"public image with digest should be pulled and removed [Conformance]","LeafNodeType":"It","State":"skipped"},
	{"LeafNodeType":"AfterSuite","State":"failed","Failure":{"Message":"cleanup failed"}}
	]}]`
	got, err := Ginkgo(strings.NewReader(js))
	if err != nil {
		t.Fatal(err)
	}
	want := []struct{ test, status, reason string }{
		{"[k8s.io] Networking runtime should support networking runtime should support DNS config [Conformance]", "PASS", ""},
		{"[k8s.io] Security Context NoNewPrivs should not allow privilege escalation when true", "FAIL",
			"failed: security_context_linux.go:1039: Expected <string>: Effective uid: 0 to equal <string>: Effective uid: 1000"},
		{"[k8s.io] Image Manager public image with digest should be pulled and removed [Conformance]", "SKIP", ""},
		{"AfterSuite", "FAIL", "cleanup failed"},
	}
	if len(got) != len(want) {
		t.Fatalf("got %d results, want %d: %+v", len(got), len(want), got)
	}
	for i, w := range want {
		if g := got[i]; g.Test != w.test || g.Status != w.status || g.Reason != w.reason {
			t.Errorf("result %d: got %s %s %q, want %s %s %q", i, g.Test, g.Status, g.Reason, w.test, w.status, w.reason)
		}
	}
	if got[0].Elapsed != 2.5 {
		t.Errorf("elapsed: got %v, want 2.5", got[0].Elapsed)
	}
}
