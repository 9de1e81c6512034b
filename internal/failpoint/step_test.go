package failpoint

import (
	"os"
	"path/filepath"
	"testing"
)

// TestHit: a build without a failpoint file never fails; with one, the
// named steps fail as it says, the others go on.
func TestHitSteps(t *testing.T) {
	if err := Hit("step"); err != nil {
		t.Fatalf("a build without failpoints failed: %v", err)
	}
	file = filepath.Join(t.TempDir(), "failpoints")
	t.Cleanup(func() { file = "" })
	os.WriteFile(file, []byte("a=error\nb=panic\n"), 0o644)
	if err := Hit("a"); err == nil {
		t.Error("failpoint a did not fail")
	}
	if err := Hit("c"); err != nil {
		t.Errorf("step c failed: %v", err)
	}
	func() {
		defer func() {
			if recover() == nil {
				t.Error("failpoint b did not panic")
			}
		}()
		Hit("b")
	}()
}
