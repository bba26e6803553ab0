package kafkatest

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
)

// recorder is a testing.TB that keeps the errors instead of reporting
// them, so that a test can check that Consume fails; a Fatalf still fails
// the test.
type recorder struct {
	testing.TB
	mu     sync.Mutex
	errors []string
}

func (r *recorder) Helper() {}

func (r *recorder) Errorf(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.errors = append(r.errors, fmt.Sprintf(format, args...))
}

func produce(t *testing.T, addr, topic string, values ...string) {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(addr), kgo.DefaultProduceTopic(topic), kgo.AllowAutoTopicCreation())
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, v := range values {
		// Spread over the partitions, as keyed records are.
		if err := cl.ProduceSync(ctx, &kgo.Record{Key: []byte(v), Value: []byte(v)}).FirstErr(); err != nil {
			t.Fatal(err)
		}
	}
}

func TestConsume(t *testing.T) {
	_, addr := NewCluster(t)
	produce(t, addr, "three", "a", "b", "c", "d", "e", "f")

	t.Run("exactly what is there", func(t *testing.T) {
		rec := &recorder{TB: t}
		got := Consume(rec, addr, "three", 6, 10*time.Second)
		if len(got) != 6 || len(rec.errors) != 0 {
			t.Fatalf("read %d records, failures %q; want 6 and none", len(got), rec.errors)
		}
	})
	t.Run("fewer than there are", func(t *testing.T) {
		rec := &recorder{TB: t}
		got := Consume(rec, addr, "three", 4, 10*time.Second)
		if len(got) != 6 {
			t.Errorf("read %d records, want all 6", len(got))
		}
		if len(rec.errors) == 0 || !strings.Contains(rec.errors[0], "topic three holds 6 records, want 4: 2 extra or duplicate") {
			t.Fatalf("failures %q; want one naming the 2 extra records", rec.errors)
		}
	})
	t.Run("more than there are", func(t *testing.T) {
		rec := &recorder{TB: t}
		got := Consume(rec, addr, "three", 7, time.Second)
		if len(got) != 6 || len(rec.errors) != 0 {
			t.Fatalf("read %d records, failures %q; want 6 and none (the caller checks the length)", len(got), rec.errors)
		}
	})
}
