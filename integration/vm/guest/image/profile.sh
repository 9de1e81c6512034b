# /etc/profile.d/tether.sh: a login shell in the VM (make vm-shell) gets the
# suites' environment and `it`, which runs integration tests by hand
# (job.sh, shared by the host at /mnt/job).
if [ -r /mnt/job/job.sh ]; then
	. /mnt/job/job.sh
	echo "tether VM: the source tree is at /mnt/tree, results go to /mnt/out;"
	echo "  it -c 2.4.2 -d systemd -test.run TestOOMKill -test.v   runs a test (-c 1.6|2.4.2, -d cgroupfs|systemd)"
fi
