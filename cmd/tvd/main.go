// Command tvd is the single binary of Trusted Virtual Domains: the domain
// controller, the node agent, the policy tools and the admin CLI.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/tvd-dev/tvd/cli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := cli.Main(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
