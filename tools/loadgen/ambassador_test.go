package main

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/spillway/spillway/proto/gen/kafkaambassador"
)

// ambassadorPeer is a KafkaAmbassador server that acknowledges what it
// receives in order, or misbehaves as told: to see that the load
// generator counts what a real server would get wrong. A misbehaving peer
// first reads every record (until the client's CloseSend), so that the
// client has sent them all before the first acknowledgement.
type ambassadorPeer struct {
	kafkaambassador.UnimplementedKafkaAmbassadorServer
	skip   int // the record (by arrival, from 0) whose ack is left out; -1: none
	failAt int // the stream ends with Unavailable instead of this record's ack; -1: never
	got    chan int
	topics chan string
}

func (p *ambassadorPeer) Produce(st grpc.BidiStreamingServer[kafkaambassador.ProdRq, kafkaambassador.ProdRs]) error {
	var held []uint64
	defer func() { p.got <- len(held) }()
	misbehave := p.skip >= 0 || p.failAt >= 0
	for {
		rq, err := st.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return err
		}
		held = append(held, rq.GetStreamOffset())
		select {
		case p.topics <- rq.GetTopic():
		default:
		}
		if !misbehave {
			if err := st.Send(&kafkaambassador.ProdRs{StreamOffset: rq.GetStreamOffset()}); err != nil {
				return err
			}
		}
	}
	if !misbehave {
		return nil
	}
	for i, offset := range held {
		if i == p.failAt {
			return status.Errorf(codes.Unavailable, "streamOffset %d: Kafka is not available", offset)
		}
		if i == p.skip {
			continue
		}
		if err := st.Send(&kafkaambassador.ProdRs{StreamOffset: offset}); err != nil {
			return err
		}
	}
	return nil
}

func startPeer(t *testing.T, p *ambassadorPeer) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer()
	kafkaambassador.RegisterKafkaAmbassadorServer(s, p)
	go func() { _ = s.Serve(ln) }()
	t.Cleanup(s.Stop)
	return ln.Addr().String()
}

func TestAmbassadorStream(t *testing.T) {
	for _, tc := range []struct {
		name           string
		skip, failAt   int
		streams        int
		wantDelivered  int64
		wantErrorClass string // "": no failure
	}{
		{name: "every record acknowledged", skip: -1, failAt: -1, streams: 2, wantDelivered: 3000},
		// A missing ack puts the next one out of order: the client cannot
		// tell which records the server has, so every record from the
		// missing one on is failed.
		{name: "an acknowledgement left out", skip: 500, failAt: -1, streams: 1, wantDelivered: 500, wantErrorClass: "grpc ambassador acknowledgement out of order"},
		{name: "the stream ends with an error", skip: -1, failAt: 1000, streams: 1, wantDelivered: 1000, wantErrorClass: "grpc ambassador Unavailable"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := &ambassadorPeer{skip: tc.skip, failAt: tc.failAt, got: make(chan int, tc.streams), topics: make(chan string, 1)}
			addr := startPeer(t, p)
			ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
			defer cancel()
			devNull, err := os.Open(os.DevNull)
			if err != nil {
				t.Fatal(err)
			}
			defer devNull.Close()
			o := Options{Target: "ambassador-stream", Addr: addr, Topic: "amb", Topics: 1, Size: 100, Concurrency: tc.streams, Count: 3000, Duration: time.Minute}
			rep, err := runAmbassador(ctx, o, devNull)
			if err != nil {
				t.Fatal(err)
			}
			// Every record sent is counted: acknowledged in order, or failed.
			if rep.Records != 3000 || rep.Delivered != tc.wantDelivered || rep.Failed != 3000-tc.wantDelivered {
				t.Fatalf("records %d, delivered %d, failed %d; want 3000, %d, %d (errors %v)", rep.Records, rep.Delivered, rep.Failed, tc.wantDelivered, 3000-tc.wantDelivered, rep.Errors)
			}
			if tc.wantErrorClass == "" && len(rep.Errors) != 0 {
				t.Fatalf("errors %v, want none", rep.Errors)
			}
			if tc.wantErrorClass != "" && rep.Errors[tc.wantErrorClass] == 0 {
				t.Fatalf("errors %v, want %q among them", rep.Errors, tc.wantErrorClass)
			}
			if len(rep.Acknowledged()) != int(tc.wantDelivered) {
				t.Fatalf("%d sequence numbers acknowledged, want %d", len(rep.Acknowledged()), tc.wantDelivered)
			}
			if topic := <-p.topics; topic != "amb" {
				t.Fatalf("topic %q, want amb", topic)
			}
			received := 0
			for range tc.streams {
				received += <-p.got
			}
			if received != 3000 {
				t.Fatalf("the server received %d records on %d streams, want 3000", received, tc.streams)
			}
		})
	}
}
