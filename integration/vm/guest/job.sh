# job.sh: the VM guest's side of the VM lane, sourced by the job's run.sh
# (which the host writes: one run_suite line per suite) and by a login shell
# in make vm-shell (/etc/profile.d/tether.sh), where `it` runs tests by hand.
#
# The host shares /mnt/job (read-only: this file, run.sh, a script) and
# /mnt/out (the results); the binaries (the test binary, the prebuilt
# programs, containerd 2.x, runc, criu) come on a disk of their own, at
# /opt/tether.

OUT=/mnt/out
LOCAL=/opt/tether

export TETHER_INTEGRATION=require
export TETHER_PREBUILT=$LOCAL/prebuilt
export TETHER_RUNC=$LOCAL/runc
export TETHER_CRIU=$LOCAL/criu
# The hang guards of the suite, stretched: under TCG a step takes ten times
# what it takes on the host, more on a loaded machine.
export TETHER_TIMEOUT_SCALE=5

# stream writes a line to the host's report stream (fd 3: job_start opens
# the second serial port, ttyS1).
stream() {
	echo "$*" >&3
}

# job_start opens the report stream and says the guest is up.
job_start() {
	stty -F /dev/ttyS1 raw -echo 115200
	exec 3>/dev/ttyS1
	stream "#ready $(cut -d' ' -f1 /proc/uptime) kernel=$(uname -r) systemd=$(systemctl --version | head -n1 | cut -d' ' -f2) cgroup=$(stat -fc %T /sys/fs/cgroup) state=$(systemctl is-system-running)"
}

# containerd_dir names the directory of containerd generation $1 ("" for
# Debian's 1.6 on PATH).
containerd_dir() {
	case "$1" in
	1.6) echo "" ;;
	*) echo "$LOCAL/containerd-v$1" ;;
	esac
}

# run_suite NAME CONTAINERD DRIVER RUN SKIP: runs the integration test
# binary on containerd generation CONTAINERD (1.6 or 2.x.y) with cgroup
# driver DRIVER (cgroupfs or systemd), the tests matching RUN but not SKIP:
# its test2json events go to /mnt/out/NAME-CONTAINERD-DRIVER.json, all but
# the output lines to the stream as well (the host reads a failed test's
# output from the file once the suite has ended).
run_suite() {
	local label="$1-$2-$3" work status
	work=$(mktemp -d /var/tmp/suite-XXXX)
	stream "#suite-start $label"
	(
		cd "$work" || exit 2
		export TETHER_CGROUP_DRIVER="$3"
		TETHER_CONTAINERD_DIR=$(containerd_dir "$2")
		export TETHER_CONTAINERD_DIR
		exec $LOCAL/integration.test -test.v=test2json -test.count=1 -test.timeout=30m \
			-test.run "$4" ${5:+-test.skip "$5"} 2>&1
	) | $LOCAL/test2json -t -p "$label" | tee "$OUT/$label.json" | grep --line-buffered -v '"Action":"output"' >&3
	status=${PIPESTATUS[0]}
	stream "#suite-end $label $status"
	rm -rf "$work"
	return 0
}

# run_script SCRIPT: runs an ad-hoc script (vm run), its output to the
# stream and to /mnt/out/script.log, its status to /mnt/out/script.status.
run_script() {
	local status
	stream "#suite-start script"
	(cd /var/tmp && bash "$1") 2>&1 | tee "$OUT/script.log" >&3
	status=${PIPESTATUS[0]}
	echo "$status" >"$OUT/script.status"
	stream "#suite-end script $status"
}

# job_end says the job is over and saves the journal.
job_end() {
	journalctl -b --no-pager >"$OUT/journal.txt" 2>&1
	stream "#done"
}

# it [-c CONTAINERD] [-d DRIVER] [test binary flags]: runs integration tests
# by hand, e.g. `it -c 2.4.2 -d systemd -test.run TestOOMKill -test.v`.
it() {
	local ctd=1.6 driver=cgroupfs
	while [ $# -gt 0 ]; do
		case "$1" in
		-c) ctd=$2; shift 2 ;;
		-d) driver=$2; shift 2 ;;
		*) break ;;
		esac
	done
	(
		cd /var/tmp || exit 2
		TETHER_CGROUP_DRIVER=$driver TETHER_CONTAINERD_DIR=$(containerd_dir "$ctd") \
			$LOCAL/integration.test -test.count=1 "$@"
	)
}
