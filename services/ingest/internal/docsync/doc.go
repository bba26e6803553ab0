// Package docsync holds the tests that keep the docs in step with what
// they describe: the metric reference (docs/operations.md) with the
// metrics the three services register (the ingest, the forwarder and the
// resender), the capacity model (docs/scaling.md) with the table
// `make bench` writes into docs/benchmarks.md, and the layout table
// (docs/development.md) with the folders that hold Go code. It has no code
// of its own;
// it lives in the ingest's module so that its test can boot the ingest
// from its internal packages.
package docsync
