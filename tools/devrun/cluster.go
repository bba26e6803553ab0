package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/nats-io/nkeys"

	"github.com/spillway/spillway/pkg/config"
)

// natsNode is one node of the development JetStream cluster.
type natsNode struct {
	name                    string
	port, monitor, routePrt int
}

// ingestPorts are one ingest's listeners in the cluster setup.
type ingestPorts struct{ http, grpc, kafka, monitor int }

var (
	clusterNodes = []natsNode{
		{"nats-1", 4222, 8222, 6222},
		{"nats-2", 4223, 8223, 6223},
		{"nats-3", 4224, 8224, 6224},
	}
	clusterIngests = []ingestPorts{{18080, 18282, 19092, 28080}, {18180, 18382, 19192, 28180}}
)

// runCluster is `make run-cluster`: the development broker unless brokers
// are configured, three NATS nodes clustered with JetStream (stores under
// dataDir), two ingests on that cluster with a 3-replica stream, and the
// forwarder and resender. A NATS node or a drain that exits is started
// again (supervise); Ctrl-C stops everything, in reverse order.
func runCluster(ctx context.Context, cfg *config.Config, configPath, binDir, dataDir string, devPort, offset int, env []string, tracingNote string) int {
	nodes, ingests := shiftPorts(offset)
	var children []*child
	defer func() {
		for i := len(children) - 1; i >= 0; i-- {
			children[i].stop(40 * time.Second)
		}
	}()
	fail := func(format string, a ...any) int {
		fmt.Fprintf(os.Stderr, "devrun: "+format+"\n", a...)
		return 1
	}

	brokers := strings.Join(cfg.Kafka.Brokers, ",")
	if cfg.Kafka.UsingDevBroker {
		broker := fmt.Sprintf("127.0.0.1:%d", devPort)
		c, err := start("devkafka", filepath.Join(binDir, "devkafka"), env, "-port", fmt.Sprint(devPort))
		if err != nil {
			return fail("%v", err)
		}
		children = append(children, c)
		if err := waitFor(ctx, c, func() error { return dial(broker) }); err != nil {
			return fail("the development broker did not come up on %s: %v", broker, err)
		}
		brokers = broker
	}

	// The nodes admit one user; the services sign in with its seed
	// (producer.wal.nats.credentials), unless the configuration names one.
	creds := cfg.Producer.WAL.NATS.Credentials
	if creds == "" {
		creds = filepath.Join(dataDir, "nats-user.nk")
		if err := ensureSeed(creds); err != nil {
			return fail("NATS credentials: %v", err)
		}
	}
	var routes, urls []string
	for _, n := range nodes {
		routes = append(routes, fmt.Sprintf("nats://127.0.0.1:%d", n.routePrt))
		urls = append(urls, fmt.Sprintf("nats://127.0.0.1:%d", n.port))
	}
	// A node or a drain that exits is started again (supervise).
	restartable := map[string]bool{"forwarder": true, "resender": true}
	var nodeProcs []*child
	for _, n := range nodes {
		restartable[n.name] = true
		c, err := start(n.name, filepath.Join(binDir, "devnats"), env,
			"-name", n.name, "-port", fmt.Sprint(n.port), "-monitor", fmt.Sprint(n.monitor),
			"-route-port", fmt.Sprint(n.routePrt), "-routes", strings.Join(routes, ","),
			"-store", filepath.Join(dataDir, n.name), "-credentials", creds)
		if err != nil {
			return fail("%v", err)
		}
		children = append(children, c)
		nodeProcs = append(nodeProcs, c)
	}
	for i, n := range nodes {
		url := fmt.Sprintf("http://127.0.0.1:%d", n.monitor)
		if err := waitFor(ctx, nodeProcs[i], func() error { return nodeReady(url) }); err != nil {
			return fail("NATS node %s did not become ready: %v", n.name, err)
		}
	}

	var args []string
	if configPath != "" {
		args = append(args, "-config", configPath)
	}
	if cfg.Kafka.UsingDevBroker {
		args = append(args, "-dev-broker", brokers)
	}
	svcEnv := append(append([]string{}, env...),
		"SPILLWAY_PRODUCER_WAL_NATS_URLS="+strings.Join(urls, ","),
		"SPILLWAY_PRODUCER_WAL_NATS_CREDENTIALS="+creds,
		"SPILLWAY_PRODUCER_WAL_REPLICAS=3",
	)
	for i, p := range ingests {
		name := fmt.Sprintf("ingest-%d", i+1)
		c, err := start(name, filepath.Join(binDir, "spillway-ingest"), append(append([]string{}, svcEnv...),
			fmt.Sprintf("SPILLWAY_SERVER_HTTP_LISTEN=127.0.0.1:%d", p.http),
			fmt.Sprintf("SPILLWAY_SERVER_GRPC_LISTEN=127.0.0.1:%d", p.grpc),
			fmt.Sprintf("SPILLWAY_SERVER_KAFKA_LISTEN=127.0.0.1:%d", p.kafka),
			fmt.Sprintf("SPILLWAY_SERVER_MONITORING_LISTEN=127.0.0.1:%d", p.monitor),
		), args...)
		if err != nil {
			return fail("%v", err)
		}
		children = append(children, c)
		url := fmt.Sprintf("http://127.0.0.1:%d", p.monitor)
		if err := waitFor(ctx, c, func() error { return ready(url) }); err != nil {
			return fail("%s did not become ready: %v", name, err)
		}
	}
	for _, d := range []struct{ name, listen string }{
		{"forwarder", cfg.Forward.MonitoringListen},
		{"resender", cfg.Resend.MonitoringListen},
	} {
		c, err := start(d.name, filepath.Join(binDir, "spillway-"+d.name), svcEnv, args...)
		if err != nil {
			return fail("%v", err)
		}
		children = append(children, c)
		url := "http://" + loopback(d.listen)
		// A drain that exits before it is ready is started again, as
		// supervise does later: after a restart on the stores, its
		// consumer can still be without a leader when the drain asks for
		// it (seen once in eight restarts), and JetStream leaves the
		// request unanswered until the drain's deadline.
		for try := 1; ; try++ {
			err := waitFor(ctx, c, func() error { return ready(url) })
			if err == nil {
				break
			}
			if try == 3 || !c.exited() || ctx.Err() != nil {
				return fail("the %s did not become ready: %v", d.name, err)
			}
			fmt.Fprintf(os.Stderr, "devrun: the %s exited before it was ready; starting it again in %v\n", d.name, restartDelay)
			time.Sleep(restartDelay)
			if c, err = c.restart(); err != nil {
				return fail("%v", err)
			}
			children[len(children)-1] = c
		}
	}

	in1, in2 := ingests[0], ingests[1]
	fmt.Printf(`
Spillway is running: two ingests on a three-node JetStream cluster (stream %s, 3 replicas).
  HTTP API     http://127.0.0.1:%d  http://127.0.0.1:%d
  gRPC API     127.0.0.1:%d  127.0.0.1:%d
  Kafka API    127.0.0.1:%d  127.0.0.1:%d  (Kafka clients produce here)
  monitoring   http://127.0.0.1:%d/metrics  http://127.0.0.1:%d/metrics  (forwarder %s, resender %s)
  NATS         %s  (monitoring http://127.0.0.1:%d/jsz?streams=true and :%d, :%d; stores under %s)
  Kafka        %s%s
  traces       %s

Try:
  curl -X POST -H 'Content-Type: text/plain' -H 'X-Kafka-Key: k1' --data 'hello' http://127.0.0.1:%d/topics/demo/messages
  curl -X POST -H 'Content-Type: text/plain' -H 'X-Kafka-Key: k2' --data 'hello' http://127.0.0.1:%d/topics/demo/messages
  kcat -b %s -C -t demo -e -f 'key=%%k value=%%s partition=%%p offset=%%o\n'
  curl -s 'http://127.0.0.1:%d/jsz?streams=true'   # which node leads the stream

A NATS node or a drain that exits is started again after %v; Ctrl-C stops everything.
`, cfg.Producer.WAL.Stream, in1.http, in2.http, in1.grpc, in2.grpc, in1.kafka, in2.kafka, in1.monitor, in2.monitor,
		loopback(cfg.Forward.MonitoringListen), loopback(cfg.Resend.MonitoringListen),
		strings.Join(urls, ","), nodes[0].monitor, nodes[1].monitor, nodes[2].monitor, dataDir,
		brokers, devNote(cfg.Kafka.UsingDevBroker), tracingNote, in1.http, in2.http, brokers, nodes[0].monitor, restartDelay)

	return supervise(ctx, children, restartable)
}

// shiftPorts returns the nodes and ingests with offset added to each port.
func shiftPorts(offset int) ([]natsNode, []ingestPorts) {
	var nodes []natsNode
	for _, n := range clusterNodes {
		nodes = append(nodes, natsNode{n.name, n.port + offset, n.monitor + offset, n.routePrt + offset})
	}
	var ingests []ingestPorts
	for _, p := range clusterIngests {
		ingests = append(ingests, ingestPorts{p.http + offset, p.grpc + offset, p.kafka + offset, p.monitor + offset})
	}
	return nodes, ingests
}

// ensureSeed writes a new user nkey seed to file (mode 0600) unless it
// exists.
func ensureSeed(file string) error {
	if _, err := os.Stat(file); err == nil {
		return nil
	}
	kp, err := nkeys.CreateUser()
	if err != nil {
		return err
	}
	defer kp.Wipe()
	seed, err := kp.Seed()
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(file), 0o700); err != nil {
		return err
	}
	return os.WriteFile(file, append(seed, '\n'), 0o600)
}

// nodeReady checks a NATS node through its monitoring URL: every
// JetStream group the node is in has a leader (the meta layer, each stream
// and each consumer), then /healthz. /healthz alone is not enough when the
// cluster starts again on its stores: it passes once the meta layer has a
// leader, while each stream and consumer elects its own leader up to a few
// seconds later, and JetStream leaves a request about a stream without a
// leader unanswered (an update applied then is never answered), so the
// ingest's create-or-update of the stream would wait out its deadline.
func nodeReady(monitorURL string) error {
	type group struct{ Leader string }
	var jsz struct {
		Meta     *group `json:"meta_cluster"`
		Accounts []struct {
			Streams []struct {
				Name      string
				Cluster   *group
				Consumers []struct {
					Name    string
					Cluster *group
				} `json:"consumer_detail"`
			} `json:"stream_detail"`
		} `json:"account_details"`
	}
	resp, err := http.Get(monitorURL + "/jsz?streams=true&consumers=true")
	if err != nil {
		return err
	}
	err = json.NewDecoder(resp.Body).Decode(&jsz)
	resp.Body.Close()
	if err != nil {
		return fmt.Errorf("/jsz: %w", err)
	}
	led := func(g *group) bool { return g != nil && g.Leader != "" }
	if !led(jsz.Meta) {
		return errors.New("JetStream has no meta leader yet")
	}
	for _, a := range jsz.Accounts {
		for _, s := range a.Streams {
			if !led(s.Cluster) {
				return fmt.Errorf("stream %s has no leader yet", s.Name)
			}
			for _, c := range s.Consumers {
				if !led(c.Cluster) {
					return fmt.Errorf("consumer %s of stream %s has no leader yet", c.Name, s.Name)
				}
			}
		}
	}
	resp, err = http.Get(monitorURL + "/healthz")
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("/healthz answered %d", resp.StatusCode)
	}
	return nil
}

// restartDelay is how long devrun waits before it starts again a NATS node
// or a drain that exited, as a supervisor would.
const restartDelay = 2 * time.Second

// supervise keeps the cluster running until Ctrl-C (0). A child named in
// restartable (a NATS node, a drain) that exits is a fault to show, not a
// reason to stop: it is started again after restartDelay with the same
// arguments (a node on its own store), in its place in children, so that
// Ctrl-C still stops everything in reverse order. Any other child that
// exits (the development broker, an ingest) stops devrun (1).
func supervise(ctx context.Context, children []*child, restartable map[string]bool) int {
	exited := make(chan int, len(children)) // indexes into children
	due := make(chan int, len(children))
	watch := func(i int) {
		c := children[i]
		go func() {
			err := <-c.done
			c.done <- err // for stop, which waits on it again
			exited <- i
		}()
	}
	for i := range children {
		watch(i)
	}
	for {
		select {
		case <-ctx.Done():
			fmt.Println("\ndevrun: stopping")
			return 0
		case i := <-exited:
			c := children[i]
			err := <-c.done
			c.done <- err
			if !restartable[c.name] {
				fmt.Fprintf(os.Stderr, "devrun: %s exited unexpectedly: %v\n", c.name, err)
				return 1
			}
			fmt.Fprintf(os.Stderr, "devrun: %s exited unexpectedly: %v; starting it again in %v\n", c.name, err, restartDelay)
			time.AfterFunc(restartDelay, func() { due <- i })
		case i := <-due:
			c, err := children[i].restart()
			if err != nil {
				fmt.Fprintf(os.Stderr, "devrun: %v; trying again in %v\n", err, restartDelay)
				time.AfterFunc(restartDelay, func() { due <- i })
				continue
			}
			fmt.Fprintf(os.Stderr, "devrun: %s started again (pid %d)\n", c.name, c.cmd.Process.Pid)
			children[i] = c
			watch(i)
		}
	}
}
