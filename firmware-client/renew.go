package fwclient

import (
	"context"
	"fmt"
	"net/http"
	"strings"

	"github.com/gatehouse-dev/gatehouse/api"
)

// Renew re-attests with the enrolled AK and obtains a new certificate for
// the same TPM-resident device key, over mTLS with the current certificate.
// eventLog nil sends the firmware's log, if any. The returned identity
// keeps the key and AK blobs.
func (c *Client) Renew(ctx context.Context, dev Device, id *Identity, eventLog []byte) (*Identity, error) {
	cert, key, err := id.DeviceTLSCertificate(dev)
	if err != nil {
		return nil, err
	}
	defer key.Close()
	ak, err := dev.OpenAK(id.AKBlob)
	if err != nil {
		return nil, fmt.Errorf("load AK into the TPM: %w", err)
	}
	defer ak.Close()
	hc := newHTTPClient(c.root, &cert)
	defer hc.CloseIdleConnections()

	var ch api.RenewChallengeResponse
	if err := c.post(ctx, hc, api.PathRenewChallenge, struct{}{}, &ch); err != nil {
		return nil, fmt.Errorf("renew challenge: %w", err)
	}
	bank, err := pcrBank(dev)
	if err != nil {
		return nil, err
	}
	quote, err := ak.Quote(ch.Nonce, bank)
	if err != nil {
		return nil, fmt.Errorf("quote: %w", err)
	}
	pcrs, err := dev.PCRs(bank)
	if err != nil {
		return nil, fmt.Errorf("read PCRs: %w", err)
	}
	if eventLog == nil {
		if eventLog, err = dev.MeasurementLog(); err != nil {
			eventLog = nil
		}
	}
	csr, err := CSR(key)
	if err != nil {
		return nil, err
	}
	req := &api.RenewRequest{
		SessionToken: ch.SessionToken,
		AKPublic:     ak.AttestationParameters().Public,
		Quote:        api.Quote{Quote: quote.Quote, Signature: quote.Signature},
		EventLog:     eventLog,
		CSR:          csr,
	}
	bankName := strings.ToLower(bank.String())
	for _, p := range pcrs {
		req.PCRs = append(req.PCRs, api.PCR{Index: p.Index, Bank: bankName, Digest: p.Digest})
	}
	var done api.CompleteResponse
	if err := c.post(ctx, hc, api.PathRenew, req, &done); err != nil {
		return nil, fmt.Errorf("renew: %w", err)
	}
	next, err := c.identity(&done, key)
	if err != nil {
		return nil, err
	}
	next.KeyBlob, next.AKBlob = id.KeyBlob, id.AKBlob
	return next, nil
}

// Config fetches the device's effective configuration over mTLS.
func (c *Client) Config(ctx context.Context, dev Device, id *Identity) (*api.ConfigResponse, error) {
	var out api.ConfigResponse
	return &out, c.getMTLS(ctx, dev, id, api.PathConfig, &out)
}

func (c *Client) getMTLS(ctx context.Context, dev Device, id *Identity, path string, out any) error {
	cert, key, err := id.DeviceTLSCertificate(dev)
	if err != nil {
		return err
	}
	defer key.Close()
	hc := newHTTPClient(c.root, &cert)
	defer hc.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.server+path, nil)
	if err != nil {
		return err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	if err := decodeResponse(resp, out); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return nil
}
