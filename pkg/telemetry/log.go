// Package telemetry builds the logger (and, later, the tracer) a service
// passes to its parts.
package telemetry

import (
	"io"
	"log/slog"

	"github.com/spillway/spillway/pkg/config"
)

// NewLogger returns a logger writing to w at the configured level, as JSON
// or as text for a console.
func NewLogger(w io.Writer, c config.Log) *slog.Logger {
	var level slog.Level
	_ = level.UnmarshalText([]byte(c.Level))
	opts := &slog.HandlerOptions{Level: level}
	if c.Encoding == "console" {
		return slog.New(slog.NewTextHandler(w, opts))
	}
	return slog.New(slog.NewJSONHandler(w, opts))
}
