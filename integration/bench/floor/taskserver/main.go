// Command taskserver is the bench's memory floor for a shim that serves
// containerd's task API: the idle ttrpc server of ../ttrpcserver with
// tether's generated task service (proto/task, v2 and v3) registered, built
// as tether is (stripped, static). It answers no request: every method is
// the nil interface's, and the bench never calls one.
package main

import (
	"context"
	"log"
	"net"
	"os"

	"github.com/containerd/ttrpc"

	"github.com/tether-shim/tether/proto/task"
	taskv3 "github.com/tether-shim/tether/proto/task/v3"
)

// service links the task API's types and registration, not an implementation.
type service struct{ task.TaskService }

func main() {
	if len(os.Args) != 2 {
		log.Fatal("usage: taskserver SOCKET")
	}
	l, err := net.Listen("unix", os.Args[1])
	if err != nil {
		log.Fatal(err)
	}
	s, err := ttrpc.NewServer()
	if err != nil {
		log.Fatal(err)
	}
	task.RegisterTaskService(s, service{})
	taskv3.RegisterTaskService(s, service{})
	log.Fatal(s.Serve(context.Background(), l))
}
