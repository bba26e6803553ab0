package deadletter

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"text/tabwriter"
	"time"
	"unicode/utf8"

	"github.com/spillway/spillway/pkg/config"
	"github.com/spillway/spillway/pkg/spill"
)

// CommandName is the resender's subcommand that runs Command.
const CommandName = "dead-letters"

const usage = `usage: %[1]s %[2]s list|show|move [flags]

  list   count the dead letters by topic, mirror and reason
  show   print the first -n dead letters: sequence, time, topic, reason, id, key, value
  move   put dead letters back into the buffer, for the resender to deliver
         (needs -topic, -reason or -all; -n limits how many)

A dead letter is deleted only after JetStream stored its copy in the buffer:
a failure or crash mid-move loses nothing. A move run again within 2 minutes
of a crash stores no duplicate; later, a record may reach Kafka twice (same
spillway-id).

flags:
`

// Command is "spillway-resender dead-letters ...": args are the arguments
// after "dead-letters". It returns the exit code: 0, 1 when it failed, 2
// for bad arguments or configuration.
func Command(binary string, args, environ []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet(binary+" "+CommandName, flag.ContinueOnError)
	fs.SetOutput(stderr)
	configPath := fs.String("config", "", "YAML configuration file, the one the services read; SPILLWAY_* variables apply")
	topic := fs.String("topic", "", "only the dead letters of this Kafka topic")
	reason := fs.String("reason", "", "only the dead letters with this reason code (too_large, invalid, unknown_topic, not_authorized, ...)")
	mirror := fs.String("mirror", "", `only the dead letters of this mirror cluster; "-" only the primary cluster's`)
	all := fs.Bool("all", false, "move: every dead letter the other flags select, with no -topic or -reason")
	n := fs.Int("n", 0, "show: how many (default 10); move: at most how many (default all)")
	asJSON := fs.Bool("json", false, "print JSON instead of a table")
	fs.Usage = func() {
		fmt.Fprintf(stderr, usage, binary, CommandName)
		fs.PrintDefaults()
	}
	if len(args) == 0 || (args[0] != "list" && args[0] != "show" && args[0] != "move") {
		fs.Usage()
		return 2
	}
	action := args[0]
	if err := fs.Parse(args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "%s %s %s: unexpected arguments %q\n", binary, CommandName, action, fs.Args())
		return 2
	}
	f := Filter{Topic: *topic, Reason: *reason, Mirror: *mirror}
	if action == "move" && !*all && f.Topic == "" && f.Reason == "" {
		fmt.Fprintf(stderr, "%s %s move: say which dead letters: -topic, -reason, or -all\n", binary, CommandName)
		return 2
	}
	if action == "show" && *n <= 0 {
		*n = 10
	}
	cfg, err := config.Load(*configPath, environ)
	if err != nil {
		fmt.Fprintf(stderr, "%s: invalid configuration:\n%v\n", binary, err)
		return 2
	}
	logger := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelError}))

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	nc, js, err := spill.Dial(cfg.Producer.WAL, nil, "spillway-"+CommandName, logger)
	if err != nil {
		fmt.Fprintf(stderr, "%s %s: %v\n", binary, CommandName, err)
		return 1
	}
	defer nc.Close()
	s, err := Open(cctx, js, cfg.Producer.WAL)
	if err != nil {
		fmt.Fprintf(stderr, "%s %s: %v\n", binary, CommandName, err)
		return 1
	}
	switch action {
	case "list":
		err = runList(ctx, s, f, stdout, *asJSON)
	case "show":
		err = runShow(ctx, s, f, *n, stdout, *asJSON)
	case "move":
		err = runMove(ctx, s, f, *n, stdout, *asJSON)
	}
	if err != nil {
		fmt.Fprintf(stderr, "%s %s %s: %v\n", binary, CommandName, action, err)
		return 1
	}
	return 0
}

func runList(ctx context.Context, s *Store, f Filter, w io.Writer, asJSON bool) error {
	counts, err := s.Summary(ctx, f)
	if err != nil {
		return err
	}
	if asJSON {
		if counts == nil {
			counts = []Count{}
		}
		return json.NewEncoder(w).Encode(counts)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "TOPIC\tMIRROR\tREASON\tCOUNT")
	total := 0
	for _, c := range counts {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\n", c.Topic, dash(c.Mirror), c.Reason, c.Count)
		total += c.Count
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	_, err = fmt.Fprintf(w, "%d dead letters\n", total)
	return err
}

// shown is a dead letter as show prints it in JSON.
type shown struct {
	Seq        uint64    `json:"seq"`
	Time       time.Time `json:"time"`
	Topic      string    `json:"topic"`
	Mirror     string    `json:"mirror,omitempty"`
	Reason     string    `json:"reason"`
	Detail     string    `json:"detail"`
	ID         string    `json:"id"`
	Key        *string   `json:"key"` // null for a null key
	Value      string    `json:"value_preview"`
	ValueBytes int       `json:"value_bytes"`
	Error      string    `json:"error,omitempty"`
}

// previewBytes is how much of a key or value show prints.
const previewBytes = 40

func runShow(ctx context.Context, s *Store, f Filter, n int, w io.Writer, asJSON bool) error {
	letters, err := s.List(ctx, f, n)
	if err != nil {
		return err
	}
	out := make([]shown, 0, len(letters))
	for _, l := range letters {
		sh := shown{Seq: l.Seq, Time: l.Time.UTC(), Topic: l.Topic, Mirror: l.Mirror, Reason: l.Reason, Detail: l.Detail,
			ID: l.Record.ID, Value: preview(l.Record.Value), ValueBytes: len(l.Record.Value)}
		if l.Record.Key != nil {
			k := preview(l.Record.Key)
			sh.Key = &k
		}
		if l.Err != nil {
			sh.Error = l.Err.Error()
		}
		out = append(out, sh)
	}
	if asJSON {
		return json.NewEncoder(w).Encode(out)
	}
	for i, sh := range out {
		if i > 0 {
			fmt.Fprintln(w)
		}
		key := "(null)"
		if sh.Key != nil {
			key = strconv.Quote(*sh.Key)
		}
		fmt.Fprintf(w, "seq %d  %s  topic %s%s  reason %s\n", sh.Seq, sh.Time.Format(time.RFC3339), sh.Topic, mirrorNote(sh.Mirror), sh.Reason)
		fmt.Fprintf(w, "  id:     %s\n", sh.ID)
		fmt.Fprintf(w, "  why:    %s\n", sh.Detail)
		fmt.Fprintf(w, "  key:    %s\n", key)
		fmt.Fprintf(w, "  value:  %s (%d bytes)\n", strconv.Quote(sh.Value), sh.ValueBytes)
		if sh.Error != "" {
			fmt.Fprintf(w, "  error:  %s (it cannot be moved back)\n", sh.Error)
		}
	}
	if len(out) == 0 {
		_, err = fmt.Fprintln(w, "no dead letters")
	}
	return err
}

func runMove(ctx context.Context, s *Store, f Filter, n int, w io.Writer, asJSON bool) error {
	res, err := s.Move(ctx, f, n)
	if asJSON {
		if jerr := json.NewEncoder(w).Encode(res); jerr != nil {
			return errors.Join(err, jerr)
		}
		return err
	}
	fmt.Fprintf(w, "%d dead letters moved back into the buffer; the resender delivers them\n", res.Moved)
	if res.Skipped > 0 {
		fmt.Fprintf(w, "%d skipped: their record cannot be read or has no topic (see show)\n", res.Skipped)
	}
	return err
}

// preview is the start of b as text: invalid UTF-8 is escaped by the
// quoting that prints it, and a long one ends with "…".
func preview(b []byte) string {
	if len(b) <= previewBytes {
		return string(b)
	}
	cut := previewBytes
	for cut > 0 && !utf8.RuneStart(b[cut]) {
		cut--
	}
	return string(b[:cut]) + "…"
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func mirrorNote(m string) string {
	if m == "" {
		return ""
	}
	return " (mirror " + m + ")"
}
