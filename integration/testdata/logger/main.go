// Command logger is a containerd logging binary for the tests, written to
// the protocol of containerd's runtime/v2/logging package (read there, not
// imported): the process's stdout on fd 3, stderr on fd 4, and fd 5
// (CONTAINER_WAIT) to say it is ready. Its arguments come from the log
// URI's query as key value pairs:
//
//	out PATH    write PATH.stdout, PATH.stderr and PATH.env (CONTAINER_NAMESPACE/CONTAINER_ID)
//	ready HOW   byte: write one byte on fd 5, then close it (binary-v2's ready);
//	            close: close fd 5 without a byte (binary://'s ready);
//	            exit: exit 3 without either (a logger that crashed)
//
// It copies until EOF and ignores SIGTERM, so nothing it was given is cut.
package main

import (
	"fmt"
	"io"
	"os"
	"os/signal"
	"sync"
	"syscall"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "logger:", err)
		os.Exit(1)
	}
}

func run() error {
	args := map[string]string{}
	for i := 1; i+1 < len(os.Args); i += 2 {
		args[os.Args[i]] = os.Args[i+1]
	}
	signal.Ignore(syscall.SIGTERM)
	out := args["out"]
	env := os.Getenv("CONTAINER_NAMESPACE") + "/" + os.Getenv("CONTAINER_ID") + "\n"
	if err := os.WriteFile(out+".env", []byte(env), 0o644); err != nil {
		return err
	}
	wait := os.NewFile(5, "CONTAINER_WAIT")
	switch args["ready"] {
	case "byte":
		if _, err := wait.Write([]byte{0}); err != nil {
			return err
		}
		wait.Close()
	case "close":
		wait.Close()
	case "exit":
		os.Exit(3)
	default:
		return fmt.Errorf("ready %q: not byte, close or exit", args["ready"])
	}
	var wg sync.WaitGroup
	errs := make(chan error, 2)
	for fd, name := range map[uintptr]string{3: ".stdout", 4: ".stderr"} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			f, err := os.Create(out + name)
			if err != nil {
				errs <- err
				return
			}
			defer f.Close()
			if _, err := io.Copy(f, os.NewFile(fd, name)); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	return <-errs
}
