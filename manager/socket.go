package manager

import (
	"net"
	"time"
)

// socketAnswers reports whether a shim answers on the socket at path; a
// socket file nobody answers on is stale.
func socketAnswers(path string) bool {
	conn, err := net.DialTimeout("unix", path, time.Second)
	if err != nil {
		return false
	}
	conn.Close()
	return true
}
