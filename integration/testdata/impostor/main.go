// Command impostor looks like a serving tether shim to whoever believes a
// process's command line and sockets, but is not tether: the upgrade tests
// start it beside real shims, and the upgrade command must neither ask it
// anything nor be slowed by it. It is started with a shim's command line
// (which it ignores); its environment says what it does:
//
//	IMPOSTOR_ROOT    chroot there first: a container's process, to the host
//	IMPOSTOR_SOCKET  listen there (a path in its root)
//	IMPOSTOR_MODE    "stall": accept and never answer; else close at once
//
// It writes "ready" on descriptor 3 once it listens.
package main

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"syscall"
)

func main() {
	report := os.NewFile(3, "report")
	if root := os.Getenv("IMPOSTOR_ROOT"); root != "" {
		if err := syscall.Chroot(root); err != nil {
			fmt.Fprintln(report, err)
			os.Exit(1)
		}
		os.Chdir("/")
	}
	path := os.Getenv("IMPOSTOR_SOCKET")
	os.MkdirAll(filepath.Dir(path), 0o700)
	l, err := net.Listen("unix", path)
	if err != nil {
		fmt.Fprintln(report, err)
		os.Exit(1)
	}
	fmt.Fprintln(report, "ready")
	held := make(chan net.Conn, 1024) // stalled connections, kept open
	for {
		c, err := l.Accept()
		if err != nil {
			os.Exit(1)
		}
		if os.Getenv("IMPOSTOR_MODE") == "stall" {
			held <- c
			continue
		}
		c.Close()
	}
}
