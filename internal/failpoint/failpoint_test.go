package failpoint

import (
	"strings"
	"testing"
)

func TestEvaluate(t *testing.T) {
	s, err := FromAnnotations(map[string]string{
		AnnotationPrefix + "Start":     "1*error(no hard feelings)",
		AnnotationPrefix + "Kill":      "2*off->1*error(please retry)",
		AnnotationPrefix + "Create":    "1*delay(1)",
		"io.kubernetes.cri.sandbox-id": "not a failpoint",
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Evaluate("Start"); err == nil || err.Error() != "no hard feelings" {
		t.Errorf("first Start: %v, want no hard feelings", err)
	}
	if err := s.Evaluate("Start"); err != nil {
		t.Errorf("second Start: %v, want it to go through", err)
	}
	for i, want := range []string{"", "", "please retry", ""} {
		err := s.Evaluate("Kill")
		if (want == "" && err != nil) || (want != "" && (err == nil || err.Error() != want)) {
			t.Errorf("Kill %d: %v, want %q", i, err, want)
		}
	}
	if err := s.Evaluate("Create"); err != nil {
		t.Errorf("Create: %v", err)
	}
	if err := s.Evaluate("Delete"); err != nil {
		t.Errorf("Delete has no failpoint: %v", err)
	}
	var none *Set
	if err := none.Evaluate("Start"); err != nil {
		t.Errorf("nil set: %v", err)
	}
}

func TestPanic(t *testing.T) {
	s, err := FromAnnotations(map[string]string{AnnotationPrefix + "Wait": "1*panic(boom)"})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if r := recover(); r != "boom" {
			t.Errorf("recovered %v, want boom", r)
		}
	}()
	s.Evaluate("Wait")
	t.Error("no panic")
}

func TestBadTerms(t *testing.T) {
	for _, bad := range []string{"x*error(a)", "1*error", "1*delay(soon)", "1*explode(a)", "1*error(a", "1*off->"} {
		if _, err := FromAnnotations(map[string]string{AnnotationPrefix + "Start": bad}); err == nil {
			t.Errorf("%q: no error", bad)
		} else if !strings.Contains(err.Error(), "Start") {
			t.Errorf("%q: error %q does not name the method", bad, err)
		}
	}
	if s, err := FromAnnotations(map[string]string{"other": "x"}); s != nil || err != nil {
		t.Errorf("no failpoint annotations: %v %v, want nil nil", s, err)
	}
}
