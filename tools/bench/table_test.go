package main

import (
	"strings"
	"testing"
)

// TestRenderFitsAScreen renders a table with the longest rows bench
// writes, each ratio filled in, and checks what docs/benchmarks.md gets:
// every table line within 120 bytes (the docs' TestTableWidth), and each
// row's key in the list under the table with its measurement.
func TestRenderFitsAScreen(t *testing.T) {
	limit := &measured{rps: 843430, p99ms: 18.6, moverUs: 1.43, brokerUs: 0.55}
	tb := &table{rows: []*row{
		{name: "kafka-go Writer straight into the broker, batches of 500, 8 callers", key: "kafka-go", m: *limit},
		{name: "ingest, kafka-ambassador gRPC stream, 200,000 records on 1 stream, sent without waiting", key: "ambassador",
			m: measured{rps: 212691, p99ms: 158.7, moverUs: 15.05, brokerUs: 10.6}, against: "the answer-only gRPC server", limit: limit, cpuRatio: true, rssMB: 1030},
		{name: "bare pipe: JetStream pull consumer, fetches of 500, one kafka-go WriteMessages each (acks all), then the acks", key: "pipe",
			m: measured{rps: 51387, moverUs: 11.1, brokerUs: 1.19}},
		{name: "ingest, HTTP single records, 256 connections (wrk)", key: "single-256",
			m: measured{rps: 26943, p99ms: 23.5, moverUs: 53.6, brokerUs: 3.57}, against: "the answer-only server", limit: limit, cpuRatio: true, rssMB: 96},
	}}
	doc := string(tb.render())
	for i, line := range strings.Split(doc, "\n") {
		if strings.HasPrefix(line, "|") && len(line) > 120 {
			t.Errorf("line %d of the table is %d bytes, over 120: %s", i+1, len(line), line)
		}
	}
	for _, r := range tb.rows {
		if !strings.Contains(doc, "\n| `"+r.key+"` | ") {
			t.Errorf("no table row for %s in\n%s", r.key, doc)
		}
		if !strings.Contains(doc, "\n- `"+r.key+"`: "+r.name+"\n") {
			t.Errorf("no measurement for %s under the table in\n%s", r.key, doc)
		}
	}
}

// TestTargetsOfTheListener: the listener's three targets are computed
// against the kgo row of the same run, and kafka-ambassador's stream
// against NDJSON and the answer-only server of the same run.
func TestTargetsOfTheListener(t *testing.T) {
	kgo := &measured{rps: 1000000, moverUs: 1.0, brokerUs: 0.4}
	tb := &table{rows: []*row{
		{name: "kgo straight into the broker", key: "kgo", m: *kgo},
		{name: "ingest, Kafka listener", key: "listener", m: measured{rps: 300000, moverUs: 2.1, brokerUs: 0.6}, limit: kgo},
		{name: "ingest, HTTP NDJSON", key: "ndjson", m: measured{rps: 400000, moverUs: 2.5, brokerUs: 0.3}},
		{name: "answer-only kafka-ambassador gRPC server", key: "ambassador-answer", m: measured{rps: 250000, moverUs: 2.5}},
		{name: "ingest, kafka-ambassador gRPC stream", key: "ambassador", m: measured{rps: 200000, moverUs: 6, brokerUs: 0.5}},
	}}
	doc := string(tb.render())
	for _, want := range []string{
		"- Kafka listener: 0.30 of kgo's records/s straight into the broker (target at least 0.35); the ingest's CPU per record 2.10 µs (target at most 1.5); the broker's 0.60 µs against 0.40 straight from kgo, 1.5× (target at most 2×).",
		"and at least 0.6 of NDJSON's: 0.50 here); 0.80 of the answer-only server's 250000 (itself 0.62 of NDJSON's).",
	} {
		if !strings.Contains(doc, want) {
			t.Errorf("no %q in\n%s", want, doc)
		}
	}
}
