package holder

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// The holder program is a few hundred bytes of machine code, written in
// assembly in this package (program_amd64.s, program_arm64.s) and built
// into the shim by the Go toolchain: no compiler, no file to install. To
// start a holder the shim copies those bytes into a minimal static ELF
// executable in a sealed memfd and executes that. A holder costs what a
// process costs the kernel, two or three pages (its code, its stack),
// where the shim's own binary re-executed cost a Go runtime (1.3 MB PSS)
// and a static pause 0.1 MB.
//
// What the program does, in order: it ignores SIGCHLD (the kernel then
// reaps the pod's orphans, whose init it is), SIGTERM and SIGINT; makes
// the empty directory it was started in its root and working directory;
// names itself (comm) tether-holder; sets no_new_privs; makes itself
// non-dumpable; drops every capability; writes "ok" on fd 4 and closes it;
// then reads fd 3, its lifeline, until EOF and exits 0. A step that fails
// writes "E", the step's number and the errno on fd 4 and exits with the
// step's number. Everything else (the namespaces, the hostname, the
// sysctls) the shim did before the fork, on the thread the holder is
// forked from.

// programSteps name the program's steps, for a failed one's report.
var programSteps = [...]string{1: "ignore SIGCHLD", 2: "ignore SIGTERM", 3: "ignore SIGINT", 4: "take an empty root",
	5: "set its name", 6: "set no_new_privs", 7: "make itself non-dumpable", 8: "drop its capabilities", 9: "report ready"}

const (
	loadAddr = 0x400000 // above any vm.mmap_min_addr
	ehdrSize = 64
	phdrSize = 56
	headers  = ehdrSize + 2*phdrSize
)

// image is a static ELF executable whose code is code: one read-only,
// executable segment holding the file itself, entered at the code, and a
// non-executable stack.
func image(code []byte, machine uint16) []byte {
	b := make([]byte, headers+len(code))
	le := binary.LittleEndian
	copy(b, "\x7fELF")
	b[4], b[5], b[6] = 2, 1, 1 // 64-bit, little-endian, ELF version 1
	le.PutUint16(b[16:], 2)    // ET_EXEC
	le.PutUint16(b[18:], machine)
	le.PutUint32(b[20:], 1)
	le.PutUint64(b[24:], loadAddr+headers) // entry
	le.PutUint64(b[32:], ehdrSize)         // program headers
	le.PutUint16(b[52:], ehdrSize)
	le.PutUint16(b[54:], phdrSize)
	le.PutUint16(b[56:], 2)
	load := b[ehdrSize:]
	le.PutUint32(load[0:], 1)               // PT_LOAD
	le.PutUint32(load[4:], 5)               // PF_R|PF_X
	le.PutUint64(load[16:], loadAddr)       // vaddr
	le.PutUint64(load[24:], loadAddr)       // paddr
	le.PutUint64(load[32:], uint64(len(b))) // filesz
	le.PutUint64(load[40:], uint64(len(b))) // memsz
	le.PutUint64(load[48:], 0x1000)         // align
	stack := b[ehdrSize+phdrSize:]
	le.PutUint32(stack[0:], 0x6474e551) // PT_GNU_STACK
	le.PutUint32(stack[4:], 6)          // PF_R|PF_W
	copy(b[headers:], code)
	return b
}

// programFile is the holder's executable in a sealed memfd (close-on-exec:
// a holder is executed through /proc/<shim>/fd/<fd>, which its fork opens
// before its exec closes it).
func programFile() (*os.File, error) {
	code, machine, err := programCode()
	if err != nil {
		return nil, err
	}
	fd, err := unix.MemfdCreate("tether-holder", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING|unix.MFD_EXEC)
	if errors.Is(err, unix.EINVAL) { // a kernel before 6.3 knows no MFD_EXEC
		fd, err = unix.MemfdCreate("tether-holder", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	}
	if errors.Is(err, unix.EACCES) {
		return nil, fmt.Errorf("holder program: the kernel allows no executable memfd (vm.memfd_noexec = 2): %w", err)
	}
	if err != nil {
		return nil, fmt.Errorf("holder program: %w", err)
	}
	f := os.NewFile(uintptr(fd), "tether-holder")
	if _, err := f.Write(image(code, machine)); err != nil {
		f.Close()
		return nil, fmt.Errorf("holder program: %w", err)
	}
	// Nothing changes it from here on, whoever else gets the descriptor.
	seals := unix.F_SEAL_SEAL | unix.F_SEAL_SHRINK | unix.F_SEAL_GROW | unix.F_SEAL_WRITE
	if _, err := unix.FcntlInt(f.Fd(), unix.F_ADD_SEALS, seals); err != nil {
		f.Close()
		return nil, fmt.Errorf("holder program: seal: %w", err)
	}
	return f, nil
}
