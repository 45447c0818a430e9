//go:build unix

package channel

import "syscall"

const noFollow = syscall.O_NOFOLLOW
