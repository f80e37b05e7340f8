package attest

import (
	_ "embed"
	"slices"
)

// manufacturersPEM is the TPM manufacturer CA bundle Gatehouse ships: public
// vendor CAs (Infineon, STMicro, Nuvoton, Intel, Nationz, Alibaba, Google
// GCE, and the tpm-ca-certificates collection), each with its source and
// licence. testvectors/mkroots regenerates it.
//
//go:embed roots/manufacturers.pem
var manufacturersPEM []byte

// ManufacturerRootsPEM returns the shipped bundle. Operators add their own
// CAs to it, or replace it, at init.
func ManufacturerRootsPEM() []byte { return slices.Clone(manufacturersPEM) }
