package server

// RoutesForTest lists the HTTPS port's route patterns ("METHOD /path"), for
// the contract test (openapi_test.go).
func (a *Appliance) RoutesForTest() []string { return a.routes() }
