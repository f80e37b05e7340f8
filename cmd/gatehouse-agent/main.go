// Command gatehouse-agent enrolls a device with a Gatehouse appliance using
// its TPM.
package main

import (
	"os"

	"github.com/gatehouse-dev/gatehouse/firmware-client/agent"
)

func main() { os.Exit(agent.Run(os.Args[1:])) }
