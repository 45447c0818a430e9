//go:build !unix

package channel

const noFollow = 0
