// Package proto holds Spillway's protocol buffer definitions and the Go
// code generated from them.
package proto
