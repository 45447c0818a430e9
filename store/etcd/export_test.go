package etcd

// SetListChunk makes List fetch n keys per Range and run between after
// every Range but the last, so tests can write between the chunks of one
// List.
func SetListChunk(s *Store, n int, between func()) {
	s.chunk = n
	s.betweenChunks = between
}
