package pump

import (
	"bytes"
	"crypto/rand"
	"io"
	"os"
	"testing"
)

// TestParkedPumpLosesNothing: a buffered pump parked while it holds bytes
// it read but could not write (its client's pipe is full) hands them on;
// the pump taken back writes them first. Every byte arrives once, in order.
func TestParkedPumpLosesNothing(t *testing.T) {
	srcR, proc, _ := os.Pipe()
	client, dstW, _ := os.Pipe()
	p, err := New(srcR, dstW, Options{})
	if err != nil {
		t.Fatal(err)
	}
	p.splice, p.buf = false, make([]byte, 32<<10) // buffered: the pump holds what it read
	full := make(chan struct{}, 1)
	p.dstFull = func() {
		select {
		case full <- struct{}{}:
		default:
		}
	}
	go p.Run()
	data := make([]byte, 1<<20)
	rand.Read(data)
	written := make(chan error, 1)
	go func() { _, err := proc.Write(data); proc.Close(); written <- err }()
	<-full
	st, ok := p.Park()
	if !ok {
		t.Fatal("the pump had ended")
	}
	if len(st.Pending) == 0 {
		t.Fatal("the parked pump held nothing: the test did not park it mid-copy")
	}
	t.Logf("parked holding %d bytes", len(st.Pending))
	np, err := p.Resumed()
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan []byte)
	go func() { b, _ := io.ReadAll(client); got <- b }()
	if err := <-written; err != nil {
		t.Fatal(err)
	}
	if b := <-got; !bytes.Equal(b, data) {
		t.Fatalf("client got %d bytes, want %d identical", len(b), len(data))
	}
	<-np.done
}
