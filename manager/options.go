// Package manager is what containerd runs the shim binary for, besides
// serving: "start" finds or spawns the shim of a container's group and
// prints its address, "delete" cleans up after a shim that was lost, and
// -info reports the runtime's features. Each runs once and exits; none
// serves anything or keeps a container's state.
package manager

// Options are the shim v2 command line as containerd passes it.
type Options struct {
	Namespace     string
	ID            string
	Address       string // containerd's GRPC address
	PublishBinary string // containerd binary, to publish events without ttrpc
	Bundle        string // delete: the bundle (else the working directory)
	Debug         bool
}
