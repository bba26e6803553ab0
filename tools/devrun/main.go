// Command devrun is `make run`: it starts the Spillway services from bin/
// (the ingest with its embedded JetStream, the forwarder and the resender)
// and, when no Kafka brokers are configured, the development broker; it
// prints the endpoints and a curl line to try, and stops everything on
// Ctrl-C, in reverse order. With -cluster (make run-cluster) it runs two
// ingests on a three-node JetStream cluster instead (cluster.go).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/spillway/spillway/pkg/config"
)

// jaegerOTLP is where make jaeger-run takes OTLP over HTTP.
const jaegerOTLP = "127.0.0.1:4318"

func main() { os.Exit(run()) }

// child is a process devrun started.
type child struct {
	name string
	cmd  *exec.Cmd
	done chan error
}

func start(name, path string, env []string, args ...string) (*child, error) {
	cmd := exec.Command(path, args...)
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	cmd.Env = env
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true} // Ctrl-C reaches devrun only; it stops the children in order
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	c := &child{name: name, cmd: cmd, done: make(chan error, 1)}
	go func() { c.done <- cmd.Wait() }()
	return c, nil
}

// restart starts c's program again, with the same arguments and
// environment, as a new child.
func (c *child) restart() (*child, error) {
	return start(c.name, c.cmd.Path, c.cmd.Env, c.cmd.Args[1:]...)
}

// exited tells whether c's process has ended.
func (c *child) exited() bool {
	select {
	case err := <-c.done:
		c.done <- err // for the others who wait on it
		return true
	default:
		return false
	}
}

// stop sends SIGTERM and waits; SIGKILL after the grace period.
func (c *child) stop(grace time.Duration) {
	_ = c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.done:
	case <-time.After(grace):
		fmt.Fprintf(os.Stderr, "devrun: %s did not stop within %v; killing it\n", c.name, grace)
		_ = c.cmd.Process.Kill()
		<-c.done
	}
}

func run() int {
	configPath := flag.String("config", "", "configuration file for the services")
	binDir := flag.String("bin", "bin", "folder with the built binaries")
	devPort := flag.Int("dev-broker-port", 9092, "port of the development broker, when one is started")
	clustered := flag.Bool("cluster", false, "make run-cluster: two ingests on a three-node JetStream cluster (NATS client ports 4222-4224)")
	dataDir := flag.String("data", "data/cluster", "with -cluster: the folder of the NATS nodes' stores and credentials")
	portOffset := flag.Int("port-offset", 0, "with -cluster: added to every port of the NATS nodes and ingests (for tests)")
	flag.Parse()

	cfg, err := config.Load(*configPath, os.Environ())
	if err != nil {
		fmt.Fprintf(os.Stderr, "devrun: invalid configuration:\n%v\n", err)
		return 2
	}
	ctx, stopSignals := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stopSignals()

	env := os.Environ()
	tracingNote := "off (start Jaeger with make jaeger-run to see traces)"
	if os.Getenv("OTEL_EXPORTER_OTLP_ENDPOINT") == "" && dial(jaegerOTLP) == nil {
		env = append(env, "OTEL_EXPORTER_OTLP_ENDPOINT=http://"+jaegerOTLP, "OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf")
		tracingNote = "to Jaeger: http://127.0.0.1:16686/api/traces?service=spillway-ingest"
	} else if e := os.Getenv("OTEL_EXPORTER_OTLP_ENDPOINT"); e != "" {
		tracingNote = "to " + e
	}
	if *clustered {
		return runCluster(ctx, cfg, *configPath, *binDir, *dataDir, *devPort, *portOffset, env, tracingNote)
	}
	var children []*child
	defer func() {
		for i := len(children) - 1; i >= 0; i-- {
			children[i].stop(40 * time.Second)
		}
	}()

	brokers := strings.Join(cfg.Kafka.Brokers, ",")
	if cfg.Kafka.UsingDevBroker {
		broker := fmt.Sprintf("127.0.0.1:%d", *devPort)
		c, err := start("devkafka", filepath.Join(*binDir, "devkafka"), env, "-port", fmt.Sprint(*devPort))
		if err != nil {
			fmt.Fprintln(os.Stderr, "devrun:", err)
			return 1
		}
		children = append(children, c)
		if err := waitFor(ctx, c, func() error { return dial(broker) }); err != nil {
			fmt.Fprintf(os.Stderr, "devrun: the development broker did not come up on %s: %v\n", broker, err)
			return 1
		}
		brokers = broker
	}

	// The three services take the same flags: the configuration, and the
	// development broker's address when no brokers are configured.
	var args []string
	if *configPath != "" {
		args = append(args, "-config", *configPath)
	}
	if cfg.Kafka.UsingDevBroker {
		args = append(args, "-dev-broker", brokers)
	}
	// The Kafka-protocol listener listens on every interface by default;
	// make run keeps it on loopback, as the development broker.
	kafkaListen := cfg.Server.Kafka.Listen
	ingestEnv := env
	if kafkaListen == ":19092" {
		kafkaListen = "127.0.0.1:19092"
		ingestEnv = append(slices.Clip(env), "SPILLWAY_SERVER_KAFKA_LISTEN="+kafkaListen)
	}
	kafkaNote := loopback(kafkaListen) + "  (Kafka producers: bootstrap.servers)"
	if kafkaListen == "" {
		kafkaNote = "off (server.kafka.listen)"
	}
	ingest, err := start("ingest", filepath.Join(*binDir, "spillway-ingest"), ingestEnv, args...)
	if err != nil {
		fmt.Fprintln(os.Stderr, "devrun:", err)
		return 1
	}
	children = append(children, ingest)
	monitorURL := "http://" + loopback(cfg.Server.Monitoring.Listen)
	if err := waitFor(ctx, ingest, func() error { return ready(monitorURL) }); err != nil {
		fmt.Fprintf(os.Stderr, "devrun: the ingest did not become ready: %v\n", err)
		return 1
	}

	// The forwarder and resender drain the ingest's buffer: its embedded
	// JetStream when no external one is configured. A mirror's spills need
	// the resender even when no topic is buffered.
	if cfg.NeedsBuffer() {
		for _, d := range []struct{ name, listen string }{
			{"forwarder", cfg.Forward.MonitoringListen},
			{"resender", cfg.Resend.MonitoringListen},
		} {
			c, err := start(d.name, filepath.Join(*binDir, "spillway-"+d.name), env, args...)
			if err != nil {
				fmt.Fprintln(os.Stderr, "devrun:", err)
				return 1
			}
			children = append(children, c)
			url := "http://" + loopback(d.listen)
			if err := waitFor(ctx, c, func() error { return ready(url) }); err != nil {
				fmt.Fprintf(os.Stderr, "devrun: the %s did not become ready: %v\n", d.name, err)
				return 1
			}
		}
	}

	httpURL := "http://" + loopback(cfg.Server.HTTP.Listen)
	fmt.Printf(`
Spillway is running.
  HTTP API     %s
  gRPC API     %s
  Kafka API    %s
  monitoring   %s/metrics  %s/readyz  (forwarder %s, resender %s)
  Kafka        %s%s
  traces       %s

Try:
  curl -X POST -H 'Content-Type: text/plain' -H 'X-Kafka-Key: k1' --data 'hello' %s/topics/demo/messages
  kcat -b %s -C -t demo -e -f 'key=%%k value=%%s partition=%%p offset=%%o\n'

Ctrl-C stops everything.
`, httpURL, loopback(cfg.Server.GRPC.Listen), kafkaNote, monitorURL, monitorURL, loopback(cfg.Forward.MonitoringListen), loopback(cfg.Resend.MonitoringListen),
		brokers, devNote(cfg.Kafka.UsingDevBroker), tracingNote, httpURL, brokers)

	return waitExit(ctx, children)
}

func devNote(dev bool) string {
	if dev {
		return "  (development broker, in memory)"
	}
	return ""
}

// loopback turns a listen address into one to connect to.
func loopback(listen string) string {
	host, port, err := net.SplitHostPort(listen)
	if err != nil || host == "" || host == "0.0.0.0" || host == "::" {
		return "127.0.0.1:" + port
	}
	return net.JoinHostPort(host, port)
}

func dial(addr string) error {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return err
	}
	return c.Close()
}

func ready(monitorURL string) error {
	resp, err := http.Get(monitorURL + "/readyz")
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("/readyz answered %d", resp.StatusCode)
	}
	return nil
}

// waitFor polls check until it passes, for at most 30 seconds, and fails
// early when c exits or ctx ends.
func waitFor(ctx context.Context, c *child, check func() error) error {
	deadline := time.Now().Add(30 * time.Second)
	for {
		err := check()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return err
		}
		select {
		case werr := <-c.done:
			c.done <- werr
			return errors.Join(fmt.Errorf("%s exited", c.name), werr)
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// waitExit is make run's wait: for Ctrl-C (0), or for a child to exit on
// its own (1), after which devrun stops the others.
func waitExit(ctx context.Context, children []*child) int {
	exited := make(chan *child, len(children))
	for _, c := range children {
		go func() {
			err := <-c.done
			c.done <- err // for stop, which waits on it again
			exited <- c
		}()
	}
	select {
	case <-ctx.Done():
		fmt.Println("\ndevrun: stopping")
		return 0
	case c := <-exited:
		err := <-c.done
		c.done <- err
		fmt.Fprintf(os.Stderr, "devrun: %s exited unexpectedly: %v\n", c.name, err)
		return 1
	}
}
