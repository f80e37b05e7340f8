// Command gatehouse runs and administers a Gatehouse appliance node.
package main

import (
	"os"

	"github.com/gatehouse-dev/gatehouse/cmd/gatehouse/cli"
)

func main() { os.Exit(cli.Run(os.Args[1:])) }
