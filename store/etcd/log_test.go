package etcd

import (
	"bytes"
	"encoding/json"
	"errors"
	"log/slog"
	"strings"
	"testing"

	"go.uber.org/zap"
)

func TestSlogCore(t *testing.T) {
	var buf bytes.Buffer
	log := zap.New(newSlogCore(slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: slog.LevelInfo})))).
		Named("retry").With(zap.String("target", "etcd-endpoints://x"))
	log.Info("chatter", zap.Int("n", 1)) // client info is slog debug: dropped
	log.Warn("retrying of unary invoker failed", zap.Error(errors.New("connection reset")), zap.Uint("attempt", 0))
	log.Error("gave up", zap.Duration("after", 0))

	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 2 {
		t.Fatalf("logged %d lines, want the warning and the error:\n%s", len(lines), buf.String())
	}
	var warn, fail map[string]any
	if err := json.Unmarshal([]byte(lines[0]), &warn); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal([]byte(lines[1]), &fail); err != nil {
		t.Fatal(err)
	}
	for k, want := range map[string]any{
		"level": "WARN", "msg": "retrying of unary invoker failed", "logger": "retry",
		"target": "etcd-endpoints://x", "error": "connection reset", "attempt": float64(0),
	} {
		if warn[k] != want {
			t.Errorf("warning %s = %v, want %v (line %s)", k, warn[k], want, lines[0])
		}
	}
	if fail["level"] != "ERROR" || fail["msg"] != "gave up" || fail["target"] != "etcd-endpoints://x" {
		t.Errorf("error line %s", lines[1])
	}
}
