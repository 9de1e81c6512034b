package main

import (
	"sort"
	"strings"
)

// What make vm-check runs in the VM, and why. Every test of the integration
// suite (integration/*_test.go) is in exactly one of the two lists below
// (plan_test.go checks it): a new test must be placed.
//
// The VM is slow (TCG: a busybox `ctr run` takes 2.5-5 s, a test 10-20
// times what it takes on the host) and the budget is about 20 minutes for
// all of it, on 2 containerd generations x 2 cgroup drivers. So the VM runs
// every case whose outcome depends on cgroups (v2, and who manages them:
// runc itself or systemd) or on systemd being init, once: where two tests
// take the same cgroup path, one of them runs in the VM (the host-only
// reason names it). Cases about the protocol, stdio, bad input, signals to
// the shim or storms, which cgroups do not change, run on the host only
// (make test-integration, both generations).

// vmTests are the integration tests that run in the VM, on both drivers
// and both containerd generations, with why each depends on the node.
func vmTests() map[string]string {
	return map[string]string{
		// lifecycle and exec: each container's cgroup (a scope with systemd)
		// is made, found for stats and OOM, and removed; the resources
		"TestTaskPsListsInitPid":                   "ps: runc ps reads the cgroup; the shim falls back to cgroup.procs",
		"TestKillAllReachesExecs":                  "kill --all: runc finds the processes through the cgroup",
		"TestRemoveLeavesNothingBehind":            "lifecycle: create, exec, kill, delete; the cgroup (scope) where the driver puts it, gone after delete",
		"TestPauseResume":                          "pause/resume: cgroup v2's cgroup.freeze, through systemd's unit with the systemd driver",
		"TestUpdateResources":                      "update: memory.max, cpu.weight, cpu.max, pids.max on v2 (systemd unit properties)",
		"TestMetrics":                              "stats: cgroup v2 memory, cpu, pids, io",
		"TestOOMKillsInARow":                       "OOM: memory.events of a v2 cgroup or scope, each kill one /tasks/oom before the exit, the scope removed as it empties (100 kills and runc-v2's count under TETHER_STRESS)",
		"TestOOMOfACgroupRemovedRightAfterTheKill": "OOM: the cgroup removed the moment the kill empties it, before the shim reads it (the kernel's log reports the kill)",
		"TestCRIOOMKilled":                         "OOM through the CRI, in the pod's slice: OOMKilled the first time the status says EXITED",
		"TestOOMAfterASiblingWasReplaced":          "OOM: watches of a pod's shim on v2",
		"TestShimLossRunningContainer":             "cleanup after a lost shim: runc delete of a scope",
		"TestCrunThroughRuntimeOptions":            "crun on cgroup v2 (the host needs a v1 workaround)",
		"TestIoOwnerAndShimCgroupOptions":          "ShimCgroup: the shim joins a v2 cgroup",
		"TestSystemdCgroupOptionReachesRuntime":    "SystemdCgroup = true with systemd as init: a scope",
		"TestCheckpointLeaveRunningAndRestore":     "CRIU restores into the driver's cgroup",
		"TestCheckpointExitAndRestore":             "CRIU restores into the driver's cgroup",
		// CRI pods: the kubelet's cgroup parents, a slice with systemd
		"TestCRIPodThroughTether":       "CRI pod under kubepods-besteffort-pod<uid>.slice (systemd) or /kubepods/besteffort/pod<uid>",
		"TestCRIUserNamespacedPod":      "user-namespaced pods: the cgroup of a userns container",
		"TestCRIPauselessPod":           "pause-less pod: holder and containers in the pod's slice, pod stats from it",
		"TestCRIPauselessPodShimKilled": "pause-less pod after a lost shim: nothing left in the pod's cgroup",
		// live upgrade: cgroups and OOM watches handed over
		"TestLiveUpgradeKeepsEverything": "live upgrade of paused, OOM-limited, pod containers on v2",
		"TestCRIPauselessPodUpgrade":     "live upgrade of a pause-less pod's shim and holder",
	}
}

// hostOnlyTests run on the host only, each with why the VM adds nothing.
func hostOnlyTests() map[string]string {
	return map[string]string{
		"TestHostileRequests":                            "bad input at the ttrpc edge: no cgroup involved",
		"TestNoInfoQueryOnCreate":                        "the shim's start protocol",
		"TestStdinPiped":                                 "stdio",
		"TestStderrSeparateFromStdout":                   "stdio",
		"TestStdout64MiBIntact":                          "stdio throughput (minutes under TCG)",
		"TestTerminal":                                   "terminal stdio",
		"TestExecTerminalAndKill":                        "terminal stdio",
		"TestSignalStormWithASlowRuntime":                "signals to the shim, a storm: the shim's own loop",
		"TestHungRuntimeCallHasADeadline":                "runtime call deadlines",
		"TestGroupsNeverCrossNamespaces":                 "shim group names: input validation",
		"TestLogURIs":                                    "log drivers (stdio)",
		"TestUnknownOptionsAreRefused":                   "option parsing",
		"TestRuntimeFailuresAreReportedAndLeaveNothing":  "runtime error reporting",
		"TestSocketOnlyForRoot":                          "the socket's permissions",
		"TestContainerdRestartMidExecStorm":              "an exec storm across a containerd restart (minutes under TCG)",
		"TestShimLossReportsRecordedExit":                "the delete action's exit file",
		"TestShimSignals":                                "signals to the shim",
		"TestExecStorm":                                  "a storm of execs (minutes under TCG)",
		"TestChurnLeavesNothing":                         "100 create/delete cycles (5+ minutes under TCG); each cycle's cgroup is what TestRemoveLeavesNothingBehind checks",
		"TestUpgradeRollsBack":                           "upgrade failure handling: the state format, no cgroup change",
		"TestUpgradeWhileContainerdIsDown":               "upgrade protocol with containerd away",
		"TestUpgradeDuringExecStorm":                     "upgrade under an exec storm (minutes under TCG)",
		"TestEchoExitsZero":                              "lifecycle: TestRemoveLeavesNothingBehind runs it in the VM (create, exec, kill, delete; the cgroup or scope made and removed)",
		"TestExitCode42":                                 "exit status: the same path as any exit, TestRemoveLeavesNothingBehind and the OOM tests run it in the VM",
		"TestExecIntoDetachedContainer":                  "exec: TestKillAllReachesExecs and TestRemoveLeavesNothingBehind run execs in the VM",
		"TestKillSIGTERMStops":                           "a stop: TestRemoveLeavesNothingBehind and TestKillAllReachesExecs stop containers in the VM",
		"TestPodGroupSharesOneShim":                      "shim groups: TestOOMAfterASiblingWasReplaced runs a group's containers and cgroups in the VM",
		"TestCRIShimSandboxerOnTheNodesNetwork":          "the pod's network: TestCRIPodThroughTether and TestCRIPauselessPod run pods in their slices in the VM",
		"TestCRIPauselessPodOutlivesContainerd":          "a containerd restart under a pod: no cgroup change (TestCRIPauselessPodShimKilled checks the pod's cgroup after a loss in the VM)",
		"TestUpgradeSmoke":                               "TestLiveUpgradeKeepsEverything upgrades containers of every kind in the VM",
		"TestStartOverWhenQuiet":                         "a live upgrade onto the shim's own binary, off by default: the live upgrade tests cover the VM",
		"TestNerdctlLogs":                                "nerdctl is not in the VM image; logs are stdio",
		"TestNerdctlRestartPolicy":                       "nerdctl is not in the VM image; restart policy is containerd's",
		"TestNerdctlLoggerWaitAnswered":                  "nerdctl is not in the VM image; logging pipes are stdio",
		"TestNerdctlStdinReadLate":                       "nerdctl is not in the VM image; stdin is stdio",
		"TestNerdctlStats":                               "nerdctl is not in the VM image; TestMetrics takes the same stats path there",
		"TestNerdctlTerminal":                            "nerdctl is not in the VM image; terminals are stdio",
		"TestNerdctlPublishedPort":                       "nerdctl is not in the VM image; ports are CNI's",
		"TestNerdctlOOM":                                 "nerdctl is not in the VM image; TestOOMKill takes the same OOM path there",
		"TestCRIPauselessPodWithoutAProcess":             "a pod with no process of its own: its namespaces are bind mounts, its containers' cgroups those TestCRIPauselessPodShimKilled checks in the VM",
		"TestDebianPackageUpgradesALiveNode":             "the Debian package (apt, dpkg): TestLiveUpgradeKeepsEverything upgrades in the VM",
		"TestLoggingBinaryPipesHeldUntilDelete":          "logging binaries (stdio)",
		"TestLoggingBinaryV2":                            "logging binaries (stdio)",
		"TestDocs":                                       "the documents' snippets",
		"TestCRIStopsOutputFloods":                       "output floods stopped as the kubelet stops them (stdio; minutes under TCG)",
		"TestCRIPauselessHolderRootWithPtrace":           "the holder's root and cwd closed to a ptrace-capable container: no cgroup involved",
		"TestNerdctlDetachedTerminalLogs":                "nerdctl is not in the VM image; terminal logs are stdio",
		"TestCRIPauselessPodDebugTarget":                 "a debugging container joining another's pid namespace: namespaces, no cgroup change",
		"TestHundredUpgrades":                            "100 upgrades in a row (minutes under TCG)",
		"TestUpgradeRollsBackFromEveryStep":              "upgrade failure handling at each take-back step: the state and its descriptors, no cgroup change",
		"TestUpgradeWithoutRollbackServesWhatItTookBack": "a take-back that cannot roll back: the state and its descriptors, no cgroup change",
		"TestNoDescriptorLeaksIntoChildrenAfterTakeBack": "descriptors across a live upgrade: no cgroup change",
		"TestUpgradeRunsTheProbedBinary":                 "which binary a live upgrade runs: no cgroup change",
		"TestUpgradeCarriesDeletesWaitingForClients":     "requests carried across a live upgrade (stdio): no cgroup change",
		"TestUpgradeCarriesAnExecStartInFlight":          "an exec's start carried across a live upgrade (a runtime call in flight): no cgroup change",
		"TestTerminalExecStorm":                          "a storm of terminal execs (stdio; minutes under TCG)",
		"TestUpgradeByContainerdAddress":                 "which shims an upgrade moves (by containerd address): no cgroup change",
		"TestUpgradeTrustsOnlyRealShims":                 "which processes the upgrade command trusts: no cgroup change",
		"TestOOMKill":                                    "an OOM kill: TestOOMKillsInARow kills three in the VM, and checks more",
	}
}

// testPattern is a -test.run pattern matching exactly the named tests.
func testPattern(tests map[string]string) string {
	names := make([]string, 0, len(tests))
	for name := range tests {
		names = append(names, name)
	}
	sort.Strings(names)
	return "^(" + strings.Join(names, "|") + ")$"
}

// containerdGenerations are the containerd generations the VM runs: Debian's
// 1.6 in the image, and 2.x from the host's cache (make containerd2).
func containerdGenerations(v2 string) []string { return []string{"1.6", v2} }

// knownFailures are VM cases that fail for a known reason being fixed
// elsewhere, by test name and driver ("" for any): a failure of one is
// reported as KNOWN, not as a failure; a pass is reported too. Keep it
// empty but for issues that are open.
func knownFailures() map[[2]string]string {
	return map[[2]string]string{}
}

// knownFailure returns the reason test fails with driver, if known.
func knownFailure(known map[[2]string]string, test, driver string) (string, bool) {
	if why, ok := known[[2]string{test, driver}]; ok {
		return why, true
	}
	why, ok := known[[2]string{test, ""}]
	return why, ok
}
