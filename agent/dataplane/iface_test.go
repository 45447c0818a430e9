package dataplane

import "github.com/tvd-dev/tvd/agent"

// DataPlane is what the agent programs its node through.
var _ agent.DataPlane = (*DataPlane)(nil)
