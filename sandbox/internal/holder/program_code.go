//go:build amd64 || arm64

package holder

import (
	"errors"
	"fmt"
	"runtime"
	"unsafe"
)

// program is the holder program (program_GOARCH.s); it is never called,
// only copied into the holder's executable image.
func program()

// programStart is where program's code begins.
func programStart() unsafe.Pointer

var _ = program // its code is read, never called

// maxProgram bounds the program's code.
const maxProgram = 2048

// programCode returns the program's machine code and the ELF machine it is
// for. The code is read from this binary's own text: from the program's
// entry to the next function's (the padding between them included, never
// run).
func programCode() ([]byte, uint16, error) {
	start := programStart()
	f := runtime.FuncForPC(uintptr(start))
	if f == nil || f.Entry() != uintptr(start) {
		return nil, 0, errors.New("holder program: its code is not where the binary says")
	}
	n := uintptr(0)
	for ; n < maxProgram; n++ {
		if g := runtime.FuncForPC(uintptr(start) + n); g == nil || g.Entry() != f.Entry() {
			break
		}
	}
	if n == 0 || n == maxProgram {
		return nil, 0, fmt.Errorf("holder program: %d bytes of code", n)
	}
	return unsafe.Slice((*byte)(start), n), elfMachine, nil
}
