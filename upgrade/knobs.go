package upgrade

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
)

// Test knobs, set at link time (-X) by the upgrade tests to build binaries
// that fail or look in chosen ways; empty in every real build. (Steps that
// fail on demand are internal/failpoint's.)
var (
	// testCrashOnRestore makes the binary crash after reading the state.
	testCrashOnRestore string
	// testRefuseState makes the binary refuse every state version.
	testRefuseState string
	// testReplaceAfterProbe makes this binary, as the old one, rename the
	// file beside the new binary named as it with ".replacement" added
	// over it, right after probing it.
	testReplaceAfterProbe string
	// testForkAfterTakeBack is a program and its arguments, separated by
	// commas, that this binary, as the new one, starts right after its
	// take-back, where a publish binary or a runtime call could be the
	// first child: it shows what a child inherits.
	testForkAfterTakeBack string
)

// answerProbeRefused is the test knob testRefuseState for the probe.
func answerProbeRefused(v string) error {
	if testRefuseState != "" {
		return fmt.Errorf("state version %s refused (test build)", v)
	}
	return nil
}

// testAfterProbe is the test knob testReplaceAfterProbe.
func testAfterProbe(binary string) {
	if testReplaceAfterProbe != "" {
		os.Rename(binary+".replacement", binary)
	}
}

// testAfterTakeBack is the test knob testForkAfterTakeBack. Its exit is
// left to the shim's reaper, as unowned.
func testAfterTakeBack() {
	if testForkAfterTakeBack != "" {
		argv := strings.Split(testForkAfterTakeBack, ",")
		if cmd := exec.Command(argv[0], argv[1:]...); cmd.Start() == nil {
			cmd.Process.Release()
		}
	}
}
