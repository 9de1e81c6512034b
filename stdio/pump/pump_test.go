package pump

import (
	"bytes"
	"crypto/rand"
	"io"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/containerd/console"
	"golang.org/x/sys/unix"
)

// pipePump wires a pump from a fresh pipe (the process side) to another
// (the client side) and starts it.
func pipePump(t *testing.T, splice bool) (proc *os.File, client *os.File, p *Pump) {
	t.Helper()
	srcR, srcW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	dstR, dstW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	p, err = New(srcR, dstW, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if !p.splice {
		t.Fatal("pipe to pipe should splice")
	}
	if !splice {
		p.splice = false
		p.buf = make([]byte, 4096)
	}
	go p.Run()
	t.Cleanup(func() { srcW.Close(); dstR.Close(); p.Stop() })
	return srcW, dstR, p
}

// pipePumpBlocking is pipePump whose pump reports on the returned channel
// each time the client's pipe is full; set before the pump runs.
func pipePumpBlocking(t *testing.T) (proc, client *os.File, p *Pump, full <-chan struct{}) {
	t.Helper()
	srcR, srcW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	dstR, dstW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	if p, err = New(srcR, dstW, Options{}); err != nil {
		t.Fatal(err)
	}
	ch := make(chan struct{}, 1)
	p.dstFull = func() {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
	go p.Run()
	t.Cleanup(func() { srcW.Close(); dstR.Close(); p.Stop() })
	return srcW, dstR, p, ch
}

func TestPumpMovesEverythingUntilEOF(t *testing.T) {
	for _, splice := range []bool{true, false} {
		proc, client, p := pipePump(t, splice)
		data := make([]byte, 8<<20)
		rand.Read(data)
		got := make(chan []byte)
		go func() { b, _ := io.ReadAll(client); got <- b }()
		if _, err := proc.Write(data); err != nil {
			t.Fatal(err)
		}
		proc.Close()
		<-p.done // EOF on src ends the pump, which closes dst
		if b := <-got; !bytes.Equal(b, data) {
			t.Fatalf("splice=%v: got %d bytes, want %d identical", splice, len(b), len(data))
		}
	}
}

// TestPumpDrainsOnExitWhileAWriterLingers: a child of the process keeps the
// pipe open, so EOF never comes; exited must still report drained once what
// was written before it has moved.
func TestPumpDrainsOnExitWhileAWriterLingers(t *testing.T) {
	for _, splice := range []bool{true, false} {
		proc, client, p := pipePump(t, splice)
		if _, err := proc.Write([]byte("last words\n")); err != nil {
			t.Fatal(err)
		}
		p.Exited()
		select {
		case <-p.drained:
		case <-time.After(5 * time.Second):
			t.Fatalf("splice=%v: not drained", splice)
		}
		buf := make([]byte, 64)
		n, _ := client.Read(buf)
		if string(buf[:n]) != "last words\n" {
			t.Fatalf("splice=%v: client read %q", splice, buf[:n])
		}
		// The pump keeps serving the lingering writer.
		proc.Write([]byte("after exit\n"))
		n, _ = client.Read(buf)
		if string(buf[:n]) != "after exit\n" {
			t.Fatalf("splice=%v: after exit read %q", splice, buf[:n])
		}
	}
}

// TestPumpDrainWaitsForASlowClient: with the client's pipe full, drained
// waits until the client has read, and waitDrained gives up at its timeout.
func TestPumpDrainWaitsForASlowClient(t *testing.T) {
	proc, client, p, full := pipePumpBlocking(t)
	size, _ := unix.FcntlInt(client.Fd(), unix.F_GETPIPE_SZ, 0)
	// Fill the client's pipe and leave more in the process's, then exit.
	// The write returns once both pipes are full: with the process's pipe
	// still empty, the pump would rightly report drained at once.
	written := make(chan struct{})
	go func() {
		proc.Write(make([]byte, 2*size))
		close(written)
	}()
	<-full
	<-written
	p.Exited()
	start := time.Now()
	p.WaitDrained(200 * time.Millisecond)
	if waited := time.Since(start); waited < 150*time.Millisecond {
		t.Fatalf("drained after %v while the client read nothing", waited)
	}
	go io.Copy(io.Discard, client)
	select {
	case <-p.drained:
	case <-time.After(5 * time.Second):
		t.Fatal("not drained once the client reads")
	}
}

// TestPumpStopUnblocksAFullDestination: stop ends a pump stuck on a client
// that never reads, and closes both ends.
func TestPumpStopUnblocksAFullDestination(t *testing.T) {
	proc, _, p, full := pipePumpBlocking(t)
	go proc.Write(make([]byte, 1<<20))
	<-full
	stopped := make(chan struct{})
	go func() { p.Stop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(5 * time.Second):
		t.Fatal("stop did not return")
	}
	if err := p.src.Close(); err == nil {
		t.Error("pump left its source open")
	}
}

// TestPumpDrainsAConsole: output written to a terminal right before the exit
// reaches the client before drained, though the terminal delivers it late.
func TestPumpDrainsAConsole(t *testing.T) {
	master, slavePath, err := console.NewPty()
	if err != nil {
		t.Fatal(err)
	}
	slave, err := os.OpenFile(slavePath, os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	// A pollable duplicate of the master, as the IO makes its own.
	fd, err := unix.FcntlInt(master.Fd(), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	master.Close()
	if err := unix.SetNonblock(fd, true); err != nil {
		t.Fatal(err)
	}
	src := os.NewFile(uintptr(fd), "console-master")
	dstR, dstW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer dstR.Close()
	p, err := New(src, dstW, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if p.splice || !p.tty {
		t.Fatalf("console pump: splice=%v tty=%v", p.splice, p.tty)
	}
	go p.Run()
	defer p.Stop()
	msg := strings.Repeat("terminal output ", 200) + "the end\n"
	if _, err := slave.Write([]byte(msg)); err != nil {
		t.Fatal(err)
	}
	slave.Close()
	p.Exited()
	select {
	case <-p.drained:
	case <-p.done:
	case <-time.After(5 * time.Second):
		t.Fatal("console not drained")
	}
	got := make(chan []byte) // EOF once stop has the pump close dstW
	go func() { b, _ := io.ReadAll(dstR); got <- b }()
	p.Stop()
	b := <-got
	// The terminal turns \n into \r\n.
	if want := strings.ReplaceAll(msg, "\n", "\r\n"); string(b) != want {
		t.Fatalf("client got %d bytes, want %d", len(b), len(want))
	}
}
