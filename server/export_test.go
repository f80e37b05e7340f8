package server

// SetRevokeHook makes RevokeDevice call fn between its two steps (tests:
// a commit racing the revocation).
func SetRevokeHook(a *Appliance, fn func(deviceID string)) { a.revokeHook = fn }
