// Package docsync holds the tests that keep the metric reference
// (docs/operations.md) in step with the metrics the three services
// register: the ingest, the forwarder and the resender. It has no code of
// its own; it lives in the ingest's module so that its test can boot the
// ingest from its internal packages.
package docsync
