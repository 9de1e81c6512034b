package main

import (
	"net"
	"path/filepath"
	"time"

	"github.com/tether-shim/tether/internal/atomicfile"
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

// writeAddressFile writes the shim's address into the bundle's address file.
func writeAddressFile(path, address string) error {
	abs, err := filepath.Abs(path)
	if err != nil {
		return err
	}
	return atomicfile.Write(abs, []byte(address))
}
