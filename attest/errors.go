package attest

import "errors"

// Sentinel errors. Every verification failure wraps exactly one of them, so
// callers map failures to stable codes with errors.Is.
var (
	ErrEKInvalid        = errors.New("EK unusable")
	ErrEKUntrusted      = errors.New("EK certificate does not chain to a trusted manufacturer root")
	ErrAKInvalid        = errors.New("attestation key rejected")
	ErrActivationFailed = errors.New("credential activation failed")
	ErrQuoteNonce       = errors.New("quote nonce does not match the session")
	ErrPCRMismatch      = errors.New("PCR values do not match the quote")
	ErrPCRNotQuoted     = errors.New("PCR value outside the quote's bank and selection")
	ErrQuoteInvalid     = errors.New("quote rejected")
	ErrEventLogInvalid  = errors.New("event log rejected")
	ErrCertifyInvalid   = errors.New("device key certification rejected")
	ErrCertifyBinding   = errors.New("device key certification is not bound to this session")
	ErrCSRInvalid       = errors.New("CSR rejected")
	ErrCSRKeyMismatch   = errors.New("CSR key is not the certified device key")
)
