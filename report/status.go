package report

import (
	"fmt"

	"github.com/tvd-dev/tvd"
)

// Status is a [tvd.Status] that reads and writes as its word
// ("verified", "violated", "unknown") in JSON.
type Status tvd.Status

// The statuses.
const (
	StatusUnknown  = Status(tvd.StatusUnknown)
	StatusVerified = Status(tvd.StatusVerified)
	StatusViolated = Status(tvd.StatusViolated)
)

func (s Status) String() string { return tvd.Status(s).String() }

// MarshalText writes the status's word.
func (s Status) MarshalText() ([]byte, error) {
	switch s {
	case StatusUnknown, StatusVerified, StatusViolated:
		return []byte(s.String()), nil
	}
	return nil, fmt.Errorf("status %d: want unknown, verified or violated", int(s))
}

// UnmarshalText reads a status's word.
func (s *Status) UnmarshalText(b []byte) error {
	switch string(b) {
	case "unknown":
		*s = StatusUnknown
	case "verified":
		*s = StatusVerified
	case "violated":
		*s = StatusViolated
	default:
		return fmt.Errorf("status %q: want unknown, verified or violated", b)
	}
	return nil
}
