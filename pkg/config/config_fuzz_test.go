package config

import (
	"os"
	"testing"
)

// FuzzParse feeds arbitrary YAML to the loader: it must return a
// configuration or an error, never panic.
func FuzzParse(f *testing.F) {
	example, err := os.ReadFile("testdata/kafka-ambassador.yaml")
	if err != nil {
		f.Fatal(err)
	}
	f.Add(example)
	f.Add([]byte("kafka:\n  acks: 7\n"))
	f.Add([]byte("producer:\n  cb:\n    timeout: [1, 2]\n"))
	f.Add([]byte("server: {http: {listen: ':1'}}\n"))
	f.Fuzz(func(t *testing.T, yaml []byte) {
		c, err := Parse(yaml, nil)
		if err == nil && c == nil {
			t.Fatal("no configuration and no error")
		}
	})
}
