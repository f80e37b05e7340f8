package fwclient

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/google/go-attestation/attest"
	"github.com/google/go-tpm/legacy/tpm2"
	"github.com/google/go-tpm/tpmutil"
)

// ErrNoEventLog means the TPM's platform has no firmware event log (swtpm,
// or a kernel that does not expose one).
var ErrNoEventLog = errors.New("no firmware event log")

// eventLogPath is where Linux exposes the firmware's TCG event log.
const eventLogPath = "/sys/kernel/security/tpm0/binary_bios_measurements"

// OpenTPM opens a TPM 2.0 by URI:
//   - a device path such as /dev/tpmrm0 (the kernel resource manager);
//   - swtpm://HOST:PORT, a swtpm data port.
func OpenTPM(uri string) (*TPM, error) {
	ch, err := openChannel(uri)
	if err != nil {
		return nil, err
	}
	tpm, err := attest.OpenTPM(&attest.OpenConfig{CommandChannel: ch})
	if err != nil {
		ch.Close()
		return nil, fmt.Errorf("open TPM %q: %w", uri, err)
	}
	return &TPM{TPM: tpm, raw: ch}, nil
}

// TPM is go-attestation's TPM plus raw access to the same command channel,
// for what go-attestation does not do (the P-384 EK). A TPM is used by one
// goroutine at a time.
type TPM struct {
	*attest.TPM
	raw io.ReadWriter
}

// OpenTransport opens a raw TPM command transport by the same URIs as
// OpenTPM, for commands go-attestation does not offer.
func OpenTransport(uri string) (io.ReadWriteCloser, error) { return openChannel(uri) }

func openChannel(uri string) (*framedChannel, error) {
	switch {
	case strings.HasPrefix(uri, "swtpm://"):
		addr := strings.TrimPrefix(uri, "swtpm://")
		conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			return nil, fmt.Errorf("open TPM %q: %w", uri, err)
		}
		return &framedChannel{rw: conn, log: func() ([]byte, error) { return nil, ErrNoEventLog }}, nil
	case strings.HasPrefix(uri, "/"):
		f, err := os.OpenFile(uri, os.O_RDWR, 0)
		if err != nil {
			return nil, fmt.Errorf("open TPM %q: %w", uri, err)
		}
		return &framedChannel{rw: f, log: readEventLog}, nil
	}
	return nil, fmt.Errorf("open TPM %q: want a device path (/dev/tpmrm0) or swtpm://HOST:PORT", uri)
}

func readEventLog() ([]byte, error) {
	b, err := os.ReadFile(eventLogPath)
	if errors.Is(err, os.ErrNotExist) {
		return nil, ErrNoEventLog
	}
	return b, err
}

// framedChannel returns exactly one TPM response per Read: go-tpm's legacy
// transport issues a single Read and treats a short response as final, so a
// stream transport (TCP) must not split or merge responses.
type framedChannel struct {
	mu  sync.Mutex
	rw  io.ReadWriteCloser
	buf []byte // unread rest of the current response
	log func() ([]byte, error)
}

const tpmHeaderSize = 10 // tag(2) size(4) code(4)

func (c *framedChannel) Write(b []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.rw.Write(b)
}

func (c *framedChannel) Read(b []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.buf) == 0 {
		hdr := make([]byte, tpmHeaderSize)
		if _, err := io.ReadFull(c.rw, hdr); err != nil {
			return 0, fmt.Errorf("read TPM response header: %w", err)
		}
		size := binary.BigEndian.Uint32(hdr[2:6])
		if size < tpmHeaderSize || size > 1<<20 {
			return 0, fmt.Errorf("TPM response declares size %d", size)
		}
		resp := make([]byte, size)
		copy(resp, hdr)
		if _, err := io.ReadFull(c.rw, resp[tpmHeaderSize:]); err != nil {
			return 0, fmt.Errorf("read TPM response body: %w", err)
		}
		c.buf = resp
	}
	n := copy(b, c.buf)
	c.buf = c.buf[n:]
	return n, nil
}

func (c *framedChannel) Close() error { return c.rw.Close() }

func (c *framedChannel) MeasurementLog() ([]byte, error) { return c.log() }

// ExtendPCR extends a SHA-256 PCR with digest, as a boot component measures
// the next one. Agents that measure their own payload use it; tests use it
// to change a device's boot state.
func (t *TPM) ExtendPCR(index int, digest []byte) error {
	if len(digest) != 32 {
		return fmt.Errorf("extend PCR %d: want a 32-byte SHA-256 digest, got %d bytes", index, len(digest))
	}
	return tpm2.PCRExtend(t.raw, tpmutil.Handle(index), tpm2.AlgSHA256, digest, "")
}
