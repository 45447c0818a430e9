// Command tvd is the single binary of Trusted Virtual Domains: the domain
// controller, the node agent, the policy tools and the admin CLI. It is the
// one place that wires the daemons (controller, agent) to their drivers;
// every other command lives in package cli.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/tvd-dev/tvd/cli"
	"github.com/tvd-dev/tvd/ee/linux"
)

func main() {
	// A strong EE's first process is this binary re-executed as the EE's
	// supervisor; Init takes over in that case and never returns.
	linux.Init()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := cli.Main(ctx, os.Args[1:], os.Stdout, os.Stderr, newControllerCmd(), newAgentCmd(), newBenchCmd())
	stop()
	os.Exit(code)
}
