package handover

import "encoding/binary"

// The ttrpc wire format (github.com/containerd/ttrpc channel.go): every
// message is a 10-byte header — length of the data (big endian uint32),
// stream id (uint32), type (uint8), flags (uint8) — and the data.
const (
	headerLen = 10
	// maxData is ttrpc's largest message; a longer frame is passed through
	// unbuffered (ttrpc refuses it) rather than held whole.
	maxData = 4 << 20

	typeRequest  = 0x1
	typeResponse = 0x2
	typeData     = 0x3

	flagRemoteClosed = 0x1
)

// header is a parsed frame header.
type header struct {
	length   uint32
	stream   uint32
	kind     uint8
	flags    uint8
	complete bool // the 10 bytes were there
}

func parseHeader(b []byte) header {
	if len(b) < headerLen {
		return header{}
	}
	return header{
		length:   binary.BigEndian.Uint32(b[0:4]),
		stream:   binary.BigEndian.Uint32(b[4:8]),
		kind:     b[8],
		flags:    b[9],
		complete: true,
	}
}

// frameLen is the whole frame's length, header included.
func (h header) frameLen() int { return headerLen + int(h.length) }

// ends reports whether a frame with this header, written by the server,
// ends its stream: a response, or data that closes the stream.
func (h header) ends() bool {
	return h.kind == typeResponse || (h.kind == typeData && h.flags&flagRemoteClosed != 0)
}

// outputParser follows the frames the server writes, across writes of any
// size, and reports the streams that end.
type outputParser struct {
	head [headerLen]byte
	have int // bytes of head collected
	body int // bytes of the current frame's data still to come
	h    header
}

// feed consumes written bytes and calls ended for each stream whose last
// frame completed.
func (o *outputParser) feed(b []byte, ended func(stream uint32)) {
	for len(b) > 0 {
		if o.have < headerLen {
			n := copy(o.head[o.have:], b)
			o.have += n
			b = b[n:]
			if o.have < headerLen {
				return
			}
			o.h = parseHeader(o.head[:])
			o.body = int(o.h.length)
		}
		n := min(o.body, len(b))
		o.body -= n
		b = b[n:]
		if o.body == 0 {
			if o.h.ends() {
				ended(o.h.stream)
			}
			o.have = 0
		}
	}
}

// atBoundary reports whether no frame is partly written.
func (o *outputParser) atBoundary() bool { return o.have == 0 }

// appendFrame appends a frame with the header fields and data to b.
func appendFrame(b []byte, stream uint32, kind, flags uint8, data []byte) []byte {
	var h [headerLen]byte
	binary.BigEndian.PutUint32(h[0:4], uint32(len(data)))
	binary.BigEndian.PutUint32(h[4:8], stream)
	h[8], h[9] = kind, flags
	return append(append(b, h[:]...), data...)
}
