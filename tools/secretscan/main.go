// Command secretscan checks the logs of a test suite for its secrets:
// make test runs the suite with SPILLWAY_TEST_LOGS set, so that every
// secret a test uses is registered (pkg/securitytest) and every service
// log is copied there, then runs secretscan on that folder. It names the
// file and line of each leak, never the secret, and fails when there is
// nothing to check: no secret registered or no service log captured.
//
// Other files to check, such as the output of go test, are named with
// -also: they are scanned too, but do not count as captured logs, so that
// a suite that captured no service log still fails.
package main

import (
	"bufio"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/spillway/spillway/pkg/securitytest"
)

// minSecretLen is the shortest secret worth scanning for: a shorter one
// would match ordinary text.
const minSecretLen = 8

func main() {
	var also []string
	flag.Func("also", "another `FILE` to check (repeatable); it must exist, and does not count as a captured log", func(f string) error {
		also = append(also, f)
		return nil
	})
	flag.Usage = func() {
		fmt.Fprintln(flag.CommandLine.Output(), "usage: secretscan [-also FILE]... FOLDER\nchecks every log under FOLDER, and each FILE, for the secrets registered under FOLDER/"+securitytest.SecretsDir)
		flag.PrintDefaults()
	}
	flag.Parse()
	if flag.NArg() != 1 {
		flag.Usage()
		os.Exit(2)
	}
	report, err := scan(flag.Arg(0), also...)
	if err != nil {
		fmt.Fprintln(os.Stderr, "secretscan:", err)
		os.Exit(1)
	}
	fmt.Println("secretscan:", report)
}

// scan checks dir and the files also, and returns a one-line summary, or
// an error naming every leak.
func scan(dir string, also ...string) (string, error) {
	secrets, err := readSecrets(filepath.Join(dir, securitytest.SecretsDir))
	if err != nil {
		return "", err
	}
	if len(secrets) == 0 {
		return "", fmt.Errorf("no secret registered under %s: the check would prove nothing", dir)
	}
	var leaks []string
	files, lines := 0, 0
	err = filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if d.Name() == securitytest.SecretsDir {
				return filepath.SkipDir
			}
			return nil
		}
		files++
		n, found, err := scanFile(path, secrets)
		lines += n
		leaks = append(leaks, found...)
		return err
	})
	if err != nil {
		return "", err
	}
	if files == 0 || lines == 0 {
		return "", fmt.Errorf("no log captured under %s: the check would prove nothing", dir)
	}
	alsoLines := 0
	for _, path := range also {
		n, found, err := scanFile(path, secrets)
		if err != nil {
			return "", err
		}
		alsoLines += n
		leaks = append(leaks, found...)
	}
	if len(leaks) > 0 {
		return "", fmt.Errorf("%d test secrets found in logs:\n%s", len(leaks), strings.Join(leaks, "\n"))
	}
	report := fmt.Sprintf("%d secrets, %d log files, %d lines", len(secrets), files, lines)
	if len(also) > 0 {
		report += fmt.Sprintf(", and %d other files, %d lines", len(also), alsoLines)
	}
	return report + ": no secret in any log", nil
}

// readSecrets reads every registered secret: one hex-encoded per line.
func readSecrets(dir string) ([]string, error) {
	entries, err := os.ReadDir(dir)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	seen := map[string]bool{}
	var out []string
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			return nil, err
		}
		for _, line := range strings.Fields(string(b)) {
			s, err := hex.DecodeString(line)
			if err != nil {
				return nil, fmt.Errorf("%s: a line is not hex: %w", e.Name(), err)
			}
			if len(s) < minSecretLen {
				return nil, fmt.Errorf("%s: a secret of %d bytes is too short to scan for; use at least %d", e.Name(), len(s), minSecretLen)
			}
			if !seen[string(s)] {
				seen[string(s)] = true
				out = append(out, string(s))
			}
		}
	}
	return out, nil
}

// scanFile returns the file's line count and a description of each line
// holding a secret.
func scanFile(path string, secrets []string) (int, []string, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, nil, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 64*1024), 16<<20)
	var leaks []string
	n := 0
	for sc.Scan() {
		n++
		line := sc.Text()
		for i, s := range secrets {
			if strings.Contains(line, s) {
				leaks = append(leaks, fmt.Sprintf("%s:%d: holds secret #%d (%d bytes)", path, n, i+1, len(s)))
			}
		}
	}
	return n, leaks, sc.Err()
}
