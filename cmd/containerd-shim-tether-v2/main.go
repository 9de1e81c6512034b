// Command containerd-shim-tether-v2 is tether, a containerd shim v2
// (runtime io.containerd.tether.v2). containerd runs it with "start" to get a
// shim's address, with "delete" to clean up after a lost shim and with
// -info for the runtime's features (package manager); started with no
// action it serves the task API (and the sandbox API) on the socket it
// inherits as fd 3 (package daemon). "upgrade" moves running shims onto a
// new binary in place (package upgrade).
package main

import (
	"flag"
	"fmt"
	"log/slog"
	"os"

	"github.com/tether-shim/tether/daemon"
	"github.com/tether-shim/tether/manager"
	"github.com/tether-shim/tether/upgrade"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

// options are the shim v2 command line, as containerd passes it.
type options struct {
	namespace     string
	id            string
	address       string // containerd's GRPC address
	publishBinary string // containerd binary, to publish events without ttrpc
	bundle        string // delete: the bundle (else the working directory)
	debug         bool
	action        string // start, delete, or empty to serve
	// restoreFD is the state a live upgrade left (-1: none): the shim takes
	// it back instead of starting fresh. oldBinaryFD is the binary to roll
	// back to, rollback why this binary carries on again after a failed one.
	restoreFD, oldBinaryFD int
	rollback               string
	// probe is the state version an upgrade asks this binary about.
	probe string
}

func parseFlags(args []string) (options, error) {
	var o options
	fs := flag.NewFlagSet("containerd-shim-tether-v2", flag.ContinueOnError)
	fs.StringVar(&o.namespace, "namespace", "", "namespace that owns the shim")
	fs.StringVar(&o.id, "id", "", "id of the task")
	fs.StringVar(&o.address, "address", "", "GRPC address of containerd")
	fs.StringVar(&o.publishBinary, "publish-binary", "containerd", "binary used to publish events when TTRPC_ADDRESS is unset")
	fs.StringVar(&o.bundle, "bundle", "", "path to the bundle if not the working directory")
	fs.BoolVar(&o.debug, "debug", false, "log at debug level")
	showVersion := fs.Bool("v", false, "print the version and exit")
	showInfo := fs.Bool("info", false, "read runtime options on stdin, print a RuntimeInfo protobuf on stdout and exit")
	fs.IntVar(&o.restoreFD, "restore-fd", -1, "live upgrade: the state to take back (internal)")
	fs.IntVar(&o.oldBinaryFD, "old-binary-fd", -1, "live upgrade: the binary to roll back to (internal)")
	fs.StringVar(&o.rollback, "rollback", "", "live upgrade: why the old binary carries on (internal)")
	fs.StringVar(&o.probe, "upgrade-probe", "", "live upgrade: can this binary take back a state of this version (internal)")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	switch {
	case *showVersion:
		o.action = "version"
		return o, nil
	case *showInfo:
		// containerd 2.x runs -info with no other flag.
		o.action = "info"
		return o, nil
	case o.probe != "":
		o.action = "probe"
		return o, nil
	}
	o.action = fs.Arg(0)
	if o.namespace == "" {
		return o, fmt.Errorf("-namespace is required")
	}
	return o, nil
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == "upgrade" {
		if err := runUpgrade(os.Args[2:], os.Stdout); err != nil {
			fmt.Fprintf(os.Stderr, "containerd-shim-tether-v2: upgrade: %v\n", err)
			os.Exit(1)
		}
		return
	}
	o, err := parseFlags(os.Args[1:])
	if err != nil {
		fmt.Fprintf(os.Stderr, "containerd-shim-tether-v2: %v\n", err)
		os.Exit(2)
	}
	level := slog.LevelInfo
	if o.debug {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level})).With("runtime", manager.RuntimeName)

	switch o.action {
	case "version":
		fmt.Printf("containerd-shim-tether-v2 %s\n", version)
	case "info":
		if err := manager.Info(os.Stdin, os.Stdout, os.Stderr, version); err != nil {
			fmt.Fprintf(os.Stderr, "containerd-shim-tether-v2: -info: %v\n", err)
			os.Exit(1)
		}
	case "probe":
		err = upgrade.AnswerProbe(o.probe, version)
	case "start":
		err = manager.Start(o.manager())
	case "delete":
		err = manager.Delete(o.manager(), log.With("namespace", o.namespace, "id", o.id))
	case "":
		d := daemon.Options{
			Namespace: o.namespace, ID: o.id, Address: o.address, PublishBinary: o.publishBinary, Debug: o.debug,
			Version: version, Log: log, RestoreFD: o.restoreFD, OldBinaryFD: o.oldBinaryFD, Rollback: o.rollback,
		}
		if o.restoreFD >= 0 {
			err = daemon.Restore(d)
		} else {
			err = daemon.Serve(d)
		}
	default:
		err = fmt.Errorf("unknown action %q", o.action)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "containerd-shim-tether-v2: %s: %v\n", o.action, err)
		os.Exit(1)
	}
}

func (o options) manager() manager.Options {
	return manager.Options{
		Namespace: o.namespace, ID: o.id, Address: o.address, PublishBinary: o.publishBinary,
		Bundle: o.bundle, Debug: o.debug,
	}
}
