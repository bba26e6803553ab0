package kafkaapi

import (
	"context"
	"errors"
	"maps"
	"net"
	"slices"
	"strconv"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/spillway/spillway/services/ingest/internal/identity"
)

// nodeID is Spillway's broker id: the only broker, leader of everything.
const nodeID = 0

// metadata names Spillway as the only broker, at the address the client
// reached it on, and as the leader of every partition of the topics the
// client may produce to, with the real cluster's partition counts. A
// client whose principal cannot be established may produce to none: it
// is shown no topic, and none is created for it.
func (c *conn) metadata(req *kmsg.MetadataRequest, clientID string) *kmsg.MetadataResponse {
	resp := req.ResponseKind().(*kmsg.MetadataResponse)
	host, port := c.advertised()
	b := kmsg.NewMetadataResponseBroker()
	b.NodeID, b.Host, b.Port = nodeID, host, port
	resp.Brokers = append(resp.Brokers, b)
	resp.ControllerID = nodeID
	resp.ClusterID = ptr("spillway")

	cl, authErr := c.client(clientID)
	if authErr != nil {
		// Not signed in: handle closes such a connection before it gets
		// here; should another path call this, still nothing is listed
		// and nothing created.
		for _, rt := range req.Topics {
			if rt.Topic != nil {
				t := kmsg.NewMetadataResponseTopic()
				t.Topic, t.ErrorCode = rt.Topic, kerr.TopicAuthorizationFailed.Code
				resp.Topics = append(resp.Topics, t)
			}
		}
		return resp
	}
	// The whole answer is bounded by the smallest client budget.
	ctx, cancel := context.WithTimeout(identity.With(c.context(), cl), firstLayoutWait)
	defer cancel()
	counts, err := c.s.partitions(ctx)
	writable := map[string]bool{}
	if err == nil {
		// A topic the client names that topic_mapping maps to one of the
		// cluster's has that topic's partitions.
		counts = maps.Clone(counts)
		for _, rt := range req.Topics {
			if rt.Topic == nil || c.s.o.Map == nil {
				continue
			}
			if _, ok := counts[*rt.Topic]; !ok {
				if n, ok := counts[c.s.o.Map(*rt.Topic)]; ok {
					counts[*rt.Topic] = n
				}
			}
		}
		names := make([]string, 0, len(counts))
		for t := range counts {
			names = append(names, t)
		}
		list := names
		if c.s.o.Writable != nil {
			list, err = c.s.o.Writable(staticTopics(names)).Topics(ctx)
		}
		for _, t := range list {
			writable[t] = true
		}
	}
	// codes holds, for a topic the client asked about that Kafka does not
	// have, what Kafka answered when asked to create it.
	var codes map[string]int16
	if err == nil {
		codes = c.unknownTopics(ctx, req.Topics, req.Version < 4 || req.AllowAutoTopicCreation, counts, writable)
	}
	topic := func(name string) kmsg.MetadataResponseTopic {
		t := kmsg.NewMetadataResponseTopic()
		t.Topic = ptr(name)
		switch n, ok := counts[name]; {
		case err != nil:
			t.ErrorCode = kerr.LeaderNotAvailable.Code // retriable: Kafka did not answer
		case !ok && codes[name] != 0:
			t.ErrorCode = codes[name]
		case !ok:
			t.ErrorCode = kerr.UnknownTopicOrPartition.Code
		case !writable[name]:
			t.ErrorCode = kerr.TopicAuthorizationFailed.Code
		default:
			for i := range n {
				p := kmsg.NewMetadataResponseTopicPartition()
				p.Partition = int32(i)
				p.Leader = nodeID
				p.Replicas, p.ISR = []int32{nodeID}, []int32{nodeID}
				t.Partitions = append(t.Partitions, p)
			}
		}
		return t
	}
	if req.Topics == nil || (req.Version == 0 && len(req.Topics) == 0) {
		all := make([]string, 0, len(writable))
		for t := range writable {
			all = append(all, t)
		}
		slices.Sort(all)
		for _, t := range all {
			resp.Topics = append(resp.Topics, topic(t))
		}
		return resp
	}
	for _, rt := range req.Topics {
		if rt.Topic != nil {
			resp.Topics = append(resp.Topics, topic(*rt.Topic))
		}
	}
	return resp
}

// unknownTopics answers for the topics the client named that Kafka does
// not have. One the client may not write is TOPIC_AUTHORIZATION_FAILED,
// as Kafka answers, whether it exists or not. The others, when the
// client allows it (create), Kafka is asked to create as a produce to
// them would: under the names topic_mapping gives them, and only as
// Kafka's configuration allows (the ingest's allow.auto.create.topics and
// the broker's auto.create.topics.enable). Each one created joins counts
// and writable; for each other one, the result holds Kafka's answer
// (UNKNOWN_TOPIC_OR_PARTITION where creation is not allowed,
// LEADER_NOT_AVAILABLE while it is under way or Kafka did not answer).
func (c *conn) unknownTopics(ctx context.Context, asked []kmsg.MetadataRequestTopic, create bool, counts map[string]int, writable map[string]bool) map[string]int16 {
	var unknown []string
	for _, rt := range asked {
		if rt.Topic != nil && counts[*rt.Topic] == 0 && !slices.Contains(unknown, *rt.Topic) {
			unknown = append(unknown, *rt.Topic)
		}
	}
	if len(unknown) == 0 {
		return nil
	}
	codes := make(map[string]int16, len(unknown))
	if c.s.o.Writable != nil {
		allowed, err := c.s.o.Writable(staticTopics(unknown)).Topics(ctx)
		if err != nil {
			return nil
		}
		for _, t := range unknown {
			if !slices.Contains(allowed, t) {
				codes[t] = kerr.TopicAuthorizationFailed.Code
			}
		}
		unknown = allowed
	}
	if !create || len(unknown) == 0 {
		return codes
	}
	kafkaName := func(t string) string {
		if c.s.o.Map != nil {
			return c.s.o.Map(t)
		}
		return t
	}
	names := make([]string, 0, len(unknown))
	for _, t := range unknown {
		names = append(names, kafkaName(t))
	}
	states, err := c.s.o.Partitions.CreateTopics(ctx, names) // within metadata's bound
	for _, t := range unknown {
		st, ok := states[kafkaName(t)]
		switch {
		case err != nil || !ok:
			codes[t] = kerr.LeaderNotAvailable.Code
		case st.ErrorCode != 0:
			codes[t] = st.ErrorCode
		case st.Partitions == 0:
			codes[t] = kerr.LeaderNotAvailable.Code
		default:
			counts[t] = st.Partitions
			writable[t] = true
		}
	}
	if err != nil {
		c.s.o.Logger.Debug("kafka did not answer a request to create topics", "topics", names, "error", err)
	}
	return codes
}

// A Metadata request waits for Kafka's layout at most metadataTimeout
// when the listener has one from an earlier reading: past it, that one is
// answered, and the reading goes on apart from the client. Without one it
// waits up to firstLayoutWait, within the smallest budget a client gives
// a Metadata request (kgo's RequestTimeoutOverhead, 10 s; sarama's and
// the Java client's are 30 s): answering LEADER_NOT_AVAILABLE before
// Kafka could answer would leave a client without a leader for as long
// as Kafka is slower than the wait. A reading is given layoutReadTimeout.
const (
	metadataTimeout   = 2 * time.Second
	firstLayoutWait   = 8 * time.Second
	layoutReadTimeout = 30 * time.Second
)

// errNoLayout is the answer while Kafka's first layout is still awaited.
var errNoLayout = errors.New("kafka has not answered for its topics yet")

// partitions is Kafka's topic layout, or the last one it gave. One
// reading at a time runs, apart from the requests that wait for it, so
// that a slow Kafka is not asked again by each and a reading is not cut
// short when the client's wait ends.
func (s *Server) partitions(ctx context.Context) (map[string]int, error) {
	s.mu.Lock()
	done := s.layoutRead
	if done == nil {
		done = make(chan struct{})
		s.layoutRead = done
		go s.readLayout(done)
	}
	last := s.lastCounts
	s.mu.Unlock()
	wait := firstLayoutWait
	if last != nil {
		wait = metadataTimeout
	}
	timer := time.NewTimer(wait)
	defer timer.Stop()
	select {
	case <-done:
	case <-timer.C:
	case <-ctx.Done():
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.lastCounts != nil:
		return s.lastCounts, nil
	case s.layoutErr != nil:
		return nil, s.layoutErr
	}
	return nil, errNoLayout
}

// readLayout reads Kafka's topic layout, keeps it, and closes done.
func (s *Server) readLayout(done chan struct{}) {
	ctx, cancel := context.WithTimeout(s.bg, layoutReadTimeout)
	defer cancel()
	counts, err := s.o.Partitions.Partitions(ctx)
	s.mu.Lock()
	if err == nil {
		s.lastCounts = counts
	} else {
		s.o.Logger.Debug("kafka metadata failed; answering with the last known topics, if any", "error", err, "known", s.lastCounts != nil)
	}
	s.layoutErr, s.layoutRead = err, nil
	s.mu.Unlock()
	close(done)
}

// advertised is the configured address, else the one the client
// connected to: Spillway names itself as it was reached. A configured
// address without a host takes the one the client reached.
func (c *conn) advertised() (string, int32) {
	local, localPort, _ := net.SplitHostPort(c.nc.LocalAddr().String())
	host, port := local, localPort
	if a := c.s.o.Advertised; a != "" {
		if h, p, err := net.SplitHostPort(a); err == nil {
			host, port = h, p
			if host == "" {
				host = local
			}
		}
	}
	p, err := strconv.Atoi(port)
	if err != nil {
		return "127.0.0.1", 19092
	}
	return host, int32(p)
}

// staticTopics lists topics already known.
type staticTopics []string

func (s staticTopics) Topics(context.Context) ([]string, error) { return s, nil }
