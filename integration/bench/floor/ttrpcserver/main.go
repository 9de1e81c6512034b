// Command ttrpcserver is the bench's memory floor for a shim: a ttrpc
// server with no service, idle on a unix socket, built as tether is
// (stripped, static). No Go ttrpc shim can cost less than it does idle.
package main

import (
	"context"
	"log"
	"net"
	"os"

	"github.com/containerd/ttrpc"
)

func main() {
	if len(os.Args) != 2 {
		log.Fatal("usage: ttrpcserver SOCKET")
	}
	l, err := net.Listen("unix", os.Args[1])
	if err != nil {
		log.Fatal(err)
	}
	s, err := ttrpc.NewServer()
	if err != nil {
		log.Fatal(err)
	}
	log.Fatal(s.Serve(context.Background(), l))
}
