// Package events delivers the shim's task events to containerd.
//
// Its one job: take an event from the shim the moment it happens and hand it
// to containerd, in order, one at a time, over containerd's ttrpc events
// service or, without a ttrpc address, by running containerd's publish
// binary. It must never block or fail the caller of Publish (the shim's task
// service and process reapers), never reorder events, and never let the
// queue grow without bound while containerd is away.
//
// # What is kept while containerd is away
//
// Lifecycle events (create, start, exec-added, exec-started, exit, delete,
// checkpointed) are never dropped: containerd would otherwise wait forever
// for an exit, or keep a deleted task. Keeping all of them still bounds
// memory. They answer containerd's own requests (create, start, exec, delete,
// checkpoint) or report the exit of a process the shim runs; while containerd
// is away no request arrives, so the only new ones are the exits of processes
// that already exist, at most one per process.
//
// Notices (OOM, paused, resumed) carry no such bound: a supervisor in a
// container that restarts its OOM-killed child raises an OOM after OOM. So a
// notice that repeats one already waiting for the same container is
// coalesced into it, and when the queue is over its byte bound the oldest
// notices are dropped, never a lifecycle event. Both are logged with a count.
//
// # When containerd refuses an event
//
// Each event is retried, with a backoff from 50 ms doubling to 5 s, while
// containerd cannot be reached: that is a matter of time. An event that
// containerd itself answered with an error (a rejection: a bad namespace, an
// unknown topic) would be refused forever and hold up every event behind it,
// so after Config.MaxRejections rejections it is logged and skipped.
package events
