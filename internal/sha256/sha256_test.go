package sha256

import (
	stdsha256 "crypto/sha256"
	"strings"
	"testing"
)

// TestSum checks Sum against the standard library on every length around
// the padding's block boundaries, and on the FIPS 180-4 example.
func TestSum(t *testing.T) {
	for n := 0; n <= 300; n++ {
		msg := []byte(strings.Repeat("containerd/k8s.io/pod-", 20)[:n])
		if got, want := Sum(msg), stdsha256.Sum256(msg); got != want {
			t.Fatalf("length %d: got %x, want %x", n, got, want)
		}
	}
	const abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
	if got := Sum([]byte("abc")); string(hexOf(got[:])) != abc {
		t.Errorf("abc: got %x, want %s", got, abc)
	}
}

func hexOf(b []byte) []byte {
	const digits = "0123456789abcdef"
	out := make([]byte, 0, len(b)*2)
	for _, c := range b {
		out = append(out, digits[c>>4], digits[c&15])
	}
	return out
}
