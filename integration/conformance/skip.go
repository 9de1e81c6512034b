package main

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
