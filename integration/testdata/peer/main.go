// Command peer connects to a shim socket and calls Connect, printing what
// happened; the socket security test runs it as an unprivileged user.
package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"time"

	"github.com/containerd/ttrpc"

	"github.com/tether-shim/tether/proto/task"
)

func main() {
	conn, err := net.DialTimeout("unix", os.Args[1], 3*time.Second)
	if err != nil {
		fmt.Println("dial:", err)
		os.Exit(1)
	}
	client := ttrpc.NewClient(conn)
	defer client.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	resp, err := task.NewTaskClient(client).Connect(ctx, &task.ConnectRequest{})
	if err != nil {
		fmt.Println("connect:", err)
		os.Exit(1)
	}
	fmt.Println("connected to shim", resp.GetShimPid())
}
