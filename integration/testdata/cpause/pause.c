/* A pod's pause process as Kubernetes' pause image has one (a few lines of
 * C, statically linked): it holds the pod's namespaces, reaps what is
 * re-parented to it and exits on INT or TERM. The bench measures
 * containerd's runc shim with it, so that the pause container's cost is
 * that of the real thing, not of a Go program. */
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

static void quit(int sig) { (void)sig; _exit(0); }

static void reap(int sig) {
	(void)sig;
	while (waitpid(-1, NULL, WNOHANG) > 0) {
	}
}

int main(void) {
	struct sigaction end = {.sa_handler = quit}, child = {.sa_handler = reap, .sa_flags = SA_NOCLDSTOP};
	sigaction(SIGINT, &end, NULL);
	sigaction(SIGTERM, &end, NULL);
	sigaction(SIGCHLD, &child, NULL);
	for (;;)
		pause();
}
