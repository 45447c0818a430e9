//go:build cgo

package linux

const cgoBinary = true
