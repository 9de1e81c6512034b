package main

import "github.com/tether-shim/tether/integration/conformance/internal/build"

// racyFor lists the tests of a containerd generation that race in
// upstream's own code (fixed upstream later), or that fail now and then
// for containerd's own runc shim too, each with the reason: a failure of
// one is run again alone, up to racyRetries times. The report says so
// ("on retry N"), with the first failure.
func racyFor(s *build.Suite) map[string]string {
	switch s.Kind {
	case build.KindCritest:
		return nil
	case build.KindCRI:
		return map[string]string{
			// The script sets its trap after the shell starts; the test
			// sends the stop signal as soon as StartContainer returns. On
			// a loaded machine the shell dies of the signal (exit 128+N)
			// before it traps it, for containerd's runc shim too.
			"TestContainerStopSignals": "stops the container before its shell has set the trap the test waits for (exit 128+N), runc's shim too",
		}
	}
	// (TestContainerExecLargeOutputWithTTY is not one: tether never cuts a
	// terminal exec's output short; containerd's runc shim loses the end of
	// one now and then, containerd/containerd#12289, which a comparison run
	// reports.)
	racy := map[string]string{}
	if s.Generation == "1.6" {
		// Expects sh to have forked sleep by the time Start returns; the
		// test retries for a second since containerd 1.7 ("The subcommand
		// may not have been started when the ...").
		racy["TestContainerPids"] = "expects the init's child to exist as Start returns; retried for 1 s upstream since 1.7"
	}
	return racy
}

// racyRetries is how many more times a racy test runs after a failure.
const racyRetries = 2

// skipsFor lists the tests of a containerd generation ("1.6" or "2.x.y")
// that cannot run offline here, each with the reason. Only such tests
// belong here: a test that fails for some shim is a finding, not a skip.
func skipsFor(s *build.Suite) map[string]string {
	switch s.Kind {
	case build.KindCRI:
		return criSkips()
	case build.KindCritest:
		return critestSkips()
	}
	if s.Generation != "1.6" {
		return nil // containerd 2.x: every test runs
	}
	// Both pull a schema-1 manifest from gcr.io pinned by digest: the
	// digest covers upstream's exact (signed) bytes, so the registry
	// stand-in cannot recreate them, and containerd 2.x dropped schema 1.
	const schema1 = "pulls a schema-1 image pinned by digest from gcr.io: cannot be recreated offline"
	return map[string]string{
		"TestImagePullSchema1":                schema1,
		"TestImagePullSchema1WithEmptyLayers": schema1,
	}
}

// criSkips lists the CRI integration suite's tests that cannot run
// offline here, each with the reason; TEST/SUBTEST skips the subtests of
// TEST whose names start with SUBTEST (one such entry per suite).
func criSkips() map[string]string {
	return map[string]string{
		"TestUpgrade": "downloads containerd 1.7 and 2.0 release tarballs and lists containerd's tags (git ls-remote) from github.com",
		// It skips itself where docker is not installed; where it is (as on
		// some of these machines), its pull needs docker's daemon and the
		// network.
		"TestIssue10467": "downloads containerd v1.7.20's release tarball from github.com",
		// The other four subtests run: the stand-in's volume-ownership has
		// a layer over 3 MB, as they need.
		"TestCRIImagePullTimeout/HoldingContentOpenWriter": "locks the manifests of upstream's ghcr.io/containerd/volume-ownership:2.1 by their digests: a digest covers upstream's exact bytes, which no stand-in can recreate",
		"TestImageLoad": "docker pull and docker save from the public registry (needs docker's daemon and the network)",
	}
}

// critestSkips lists critest's specs (full text) that cannot run offline
// here, each with the reason.
func critestSkips() map[string]string {
	return map[string]string{
		"[k8s.io] Image Manager public image with digest should be pulled and removed [Conformance]": "pulls gcr.io/k8s-staging-cri-tools/test-image-digest pinned by digest: a digest covers upstream's exact bytes, which no stand-in can recreate",
	}
}

// shimlessFor lists the tests of a suite that never reach the shim under
// test: the CRI suite's tests that start a containerd of their own, whose
// configuration runs containerd's runc shim whatever the column. They run
// in every full run (and come out the same in both columns); CI's
// selection (-ci) leaves them out.
func shimlessFor(s *build.Suite) map[string]string {
	if s.Kind != build.KindCRI {
		return nil
	}
	const own = "starts a containerd of its own that runs containerd's runc shim: the same in every column"
	return map[string]string{
		"TestContainerCgroupWritable":                own,
		"TestRunContainerWithVolatileOption":         own,
		"TestCRIImagePullTimeout":                    "pulls through a containerd client of its own, no shim",
		"TestIssue10244LoopbackV2":                   own,
		"TestOOMEventMonitor":                        own,
		"TestReload100Pods":                          own,
		"TestRuntimeHandlerUnpackWithSnapshotLabels": own,
	}
}
