//go:build !unix

package fleet

// EnsureOpenFiles does nothing on this platform.
func EnsureOpenFiles(need int) error { return nil }
