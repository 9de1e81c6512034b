package main

// racyFor lists the tests of a containerd generation that race in
// upstream's own code (fixed upstream later), or that fail now and then
// for containerd's own runc shim too, each with the reason: a failure of
// one is run again alone, up to racyRetries times. The report says so
// ("on retry N"), with the first failure.
func racyFor(generation string) map[string]string {
	// (TestContainerExecLargeOutputWithTTY is not one: a terminal exec's
	// output is never cut short by tether; containerd's runc shim loses the
	// end of one now and then, containerd/containerd#12289, which a
	// comparison run reports.)
	racy := map[string]string{}
	if generation == "1.6" {
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
func skipsFor(generation string) map[string]string {
	if generation != "1.6" {
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
