package main

import (
	"encoding/hex"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/spillway/spillway/pkg/securitytest"
)

func write(t *testing.T, path, content string) {
	t.Helper()
	require.NoError(t, os.MkdirAll(filepath.Dir(path), 0o755))
	require.NoError(t, os.WriteFile(path, []byte(content), 0o600))
}

func TestScan(t *testing.T) {
	dir := t.TempDir()
	write(t, filepath.Join(dir, securitytest.SecretsDir, "1.txt"), hex.EncodeToString([]byte("sk-live-abcdef"))+"\n")
	write(t, filepath.Join(dir, "TestA-ingest-1.log"), `{"msg":"http request","status":401}`+"\n")

	report, err := scan(dir)
	require.NoError(t, err)
	assert.Equal(t, "1 secrets, 1 log files, 1 lines: no secret in any log", report)

	goTest := filepath.Join(t.TempDir(), "go-test.log")
	write(t, goTest, "ok\n")
	report, err = scan(dir, goTest)
	require.NoError(t, err)
	assert.Equal(t, "1 secrets, 1 log files, 1 lines, and 1 other files, 1 lines: no secret in any log", report)

	write(t, goTest, "ok\n"+`{"msg":"auth","header":"Bearer sk-live-abcdef"}`+"\n")
	_, err = scan(dir, goTest)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "go-test.log:2: holds secret #1 (14 bytes)")
	assert.NotContains(t, err.Error(), "sk-live-abcdef", "the report never shows the secret")

	write(t, filepath.Join(dir, "TestB-resender-2.log"), "x\nsk-live-abcdef\n")
	_, err = scan(dir)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "TestB-resender-2.log:2: holds secret #1 (14 bytes)")

	_, err = scan(dir, filepath.Join(t.TempDir(), "absent.log"))
	assert.ErrorContains(t, err, "absent.log", "a file named to check must exist")
}

func TestScanNeedsSecretsAndLogs(t *testing.T) {
	dir := t.TempDir()
	write(t, filepath.Join(dir, "a.log"), "line\n")
	_, err := scan(dir)
	assert.ErrorContains(t, err, "no secret registered")

	write(t, filepath.Join(dir, securitytest.SecretsDir, "1.txt"), hex.EncodeToString([]byte("short"))+"\n")
	_, err = scan(dir)
	assert.ErrorContains(t, err, "too short to scan for")

	empty := t.TempDir()
	write(t, filepath.Join(empty, securitytest.SecretsDir, "1.txt"), hex.EncodeToString([]byte("long enough secret"))+"\n")
	_, err = scan(empty)
	assert.ErrorContains(t, err, "no log captured")

	// The output of go test is always there: it does not count as a
	// captured service log.
	goTest := filepath.Join(t.TempDir(), "go-test.log")
	write(t, goTest, "ok  \tgithub.com/spillway/spillway/tools/e2e\t60s\n")
	_, err = scan(empty, goTest)
	assert.ErrorContains(t, err, "no log captured")

	// Nor does an empty log.
	write(t, filepath.Join(empty, "TestA-ingest-1.log"), "")
	_, err = scan(empty, goTest)
	assert.ErrorContains(t, err, "no log captured")
}
