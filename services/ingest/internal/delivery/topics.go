package delivery

import (
	"context"

	"github.com/spillway/spillway/services/ingest/internal/identity"
)

// TopicLister lists Kafka's topics.
type TopicLister interface {
	Topics(ctx context.Context) ([]string, error)
}

// Writable lists the topics of all that the client in ctx may produce to
// under their own names (its ACL, security.allow_topics and
// security.deny_topics, for the topic and what topic_mapping maps it to):
// a client learns no topic it may not write, and never the internal ones.
func (d *Delivery) Writable(all TopicLister) TopicLister {
	return writable{d: d, all: all}
}

type writable struct {
	d   *Delivery
	all TopicLister
}

func (w writable) Topics(ctx context.Context) ([]string, error) {
	topics, err := w.all.Topics(ctx)
	if err != nil {
		return nil, err
	}
	pol, c := w.d.opts.Policy.Load(), identity.From(ctx)
	out := make([]string, 0, len(topics))
	for _, t := range topics {
		if pol.Authorize(c, t) == nil {
			out = append(out, t)
		}
	}
	return out, nil
}
