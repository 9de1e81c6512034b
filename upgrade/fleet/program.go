package fleet

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strings"
)

// A process is a tether shim if it runs tether's program: the executable
// it was started from (or re-executed, in a live upgrade) carries Go's
// build information, which names the program's main package. The file is
// read through /proc/PID/exe, which reaches the very file the process
// runs, even one deleted or replaced on disk since (a package upgrade), so
// neither a path nor a command line can pass for it. Only the ELF section
// headers and the small .go.buildinfo section are read (debug/elf would add
// a third of a megabyte to every shim's binary).

// buildInfoMagic starts Go's .go.buildinfo section.
var buildInfoMagic = []byte("\xff Go buildinf:")

// maxBuildInfo bounds what is read of a section or of the section headers.
const maxBuildInfo = 1 << 20

// programOf is the import path of the main package of the Go program in
// the ELF file r.
func programOf(r io.ReaderAt) (string, error) {
	section, err := elfSection(r, ".go.buildinfo")
	if err != nil {
		return "", err
	}
	return buildInfoPath(section)
}

// elfSection reads the section called name of the ELF file r.
func elfSection(r io.ReaderAt, name string) ([]byte, error) {
	var ident [64]byte
	if _, err := r.ReadAt(ident[:], 0); err != nil {
		return nil, fmt.Errorf("not an ELF file: %w", err)
	}
	if !bytes.Equal(ident[:4], []byte("\x7fELF")) {
		return nil, errors.New("not an ELF file")
	}
	var order binary.ByteOrder = binary.LittleEndian
	if ident[5] == 2 {
		order = binary.BigEndian
	}
	// The header's fields, by class (32 or 64 bits): where the section
	// headers are, their size and number, and which holds their names.
	var shoff uint64
	var shentsize, shnum, shstrndx uint16
	switch ident[4] {
	case 1:
		shoff = uint64(order.Uint32(ident[0x20:]))
		shentsize, shnum, shstrndx = order.Uint16(ident[0x2e:]), order.Uint16(ident[0x30:]), order.Uint16(ident[0x32:])
	case 2:
		shoff = order.Uint64(ident[0x28:])
		shentsize, shnum, shstrndx = order.Uint16(ident[0x3a:]), order.Uint16(ident[0x3c:]), order.Uint16(ident[0x3e:])
	default:
		return nil, errors.New("ELF file of an unknown class")
	}
	if shstrndx >= shnum {
		return nil, errors.New("ELF file without section names")
	}
	headers, err := readAt(r, shoff, uint64(shentsize)*uint64(shnum))
	if err != nil {
		return nil, fmt.Errorf("ELF section headers: %w", err)
	}
	// A section header: its name's offset, then (32/64 bits) its file
	// offset and size.
	section := func(i int) (nameOff uint32, off, size uint64) {
		h := headers[i*int(shentsize):]
		if ident[4] == 1 {
			return order.Uint32(h), uint64(order.Uint32(h[0x10:])), uint64(order.Uint32(h[0x14:]))
		}
		return order.Uint32(h), order.Uint64(h[0x18:]), order.Uint64(h[0x20:])
	}
	if (ident[4] == 1 && shentsize < 0x28) || (ident[4] == 2 && shentsize < 0x40) {
		return nil, errors.New("ELF section headers too small")
	}
	_, namesOff, namesSize := section(int(shstrndx))
	names, err := readAt(r, namesOff, namesSize)
	if err != nil {
		return nil, fmt.Errorf("ELF section names: %w", err)
	}
	for i := range int(shnum) {
		nameOff, off, size := section(i)
		if int(nameOff) >= len(names) {
			continue
		}
		if n, _, _ := bytes.Cut(names[nameOff:], []byte{0}); string(n) == name {
			return readAt(r, off, size)
		}
	}
	return nil, fmt.Errorf("no %s section: not a Go program", name)
}

// readAt reads size bytes at off, up to maxBuildInfo.
func readAt(r io.ReaderAt, off, size uint64) ([]byte, error) {
	if size > maxBuildInfo {
		return nil, fmt.Errorf("%d bytes is too big", size)
	}
	b := make([]byte, size)
	if _, err := r.ReadAt(b, int64(off)); err != nil {
		return nil, err
	}
	return b, nil
}

// buildInfoPath reads the main package's path out of a .go.buildinfo
// section as Go 1.18 and later write it: a 32-byte header (the magic, the
// pointer size, flags; flag 2 says the strings follow inline), then the Go
// version and the module information, each a uvarint length and the bytes;
// the module information (as debug/buildinfo reads it) has a
// "path\t<main package>" line.
func buildInfoPath(b []byte) (string, error) {
	if len(b) < 32 || !bytes.HasPrefix(b, buildInfoMagic) {
		return "", errors.New("no build information of a Go program")
	}
	if b[15]&2 == 0 {
		return "", errors.New("build information of a Go older than 1.18")
	}
	rest := b[32:]
	var modinfo string
	for range 2 { // the version, then the module information
		n, used := binary.Uvarint(rest)
		if used <= 0 || n > uint64(len(rest)-used) {
			return "", errors.New("build information cut short")
		}
		modinfo, rest = string(rest[used:used+int(n)]), rest[used+int(n):]
	}
	// The module information sits between two 16-byte sentinels.
	if len(modinfo) < 33 || modinfo[len(modinfo)-17] != '\n' {
		return "", errors.New("build information without module information")
	}
	modinfo = modinfo[16 : len(modinfo)-16]
	for line := range strings.SplitSeq(modinfo, "\n") {
		if path, ok := strings.CutPrefix(line, "path\t"); ok {
			return path, nil
		}
	}
	return "", errors.New("build information names no main package")
}
