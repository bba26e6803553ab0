package deploy

import (
	"bufio"
	"encoding/json"
	"io/fs"
	"maps"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/moby/patternmatcher"
	"github.com/moby/patternmatcher/ignorefile"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The container image is checked without a container engine: the build
// stage of the Dockerfile is read, the files its COPY lines take from the
// build context (the repository less .dockerignore) are copied into a
// temporary folder that stands for the image's file system, and its RUN
// lines run there, with the stage's ARG and ENV values, the go command of
// this machine and its caches in place of the cache mounts.

// instruction is one Dockerfile instruction, its continuation lines joined.
type instruction struct {
	line int    // where it starts, for messages
	cmd  string // upper case: FROM, COPY, RUN...
	args string // the rest of the line
}

// readDockerfile returns the instructions of a Dockerfile. It knows what
// Spillway's uses: comments, blank lines and lines continued with a
// backslash (the default escape character; a parser directive that
// changes it is refused).
func readDockerfile(t *testing.T, file string) []instruction {
	t.Helper()
	f, err := os.Open(file)
	require.NoError(t, err)
	defer f.Close()
	var out []instruction
	var cur *instruction
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if strings.HasPrefix(line, "#") {
			require.False(t, out == nil && cur == nil && strings.HasPrefix(strings.ToLower(strings.ReplaceAll(line, " ", "")), "#escape="),
				"%s:%d: an escape directive is not understood by this test", file, n)
			continue // a comment, also inside a continued instruction
		}
		if line == "" {
			continue
		}
		cont := strings.HasSuffix(line, `\`)
		line = strings.TrimSuffix(line, `\`)
		if cur == nil {
			cmd, args, _ := strings.Cut(line, " ")
			cur = &instruction{line: n, cmd: strings.ToUpper(cmd), args: strings.TrimSpace(args)}
		} else {
			cur.args += " " + line
		}
		if !cont {
			out = append(out, *cur)
			cur = nil
		}
	}
	require.NoError(t, sc.Err())
	require.Nil(t, cur, "%s ends inside a continued instruction", file)
	return out
}

// flagsAndArgs splits an instruction's arguments into its --flags and the
// rest; the rest in JSON form (["a", "b"]) is decoded.
func flagsAndArgs(t *testing.T, in instruction) (flags []string, args []string) {
	t.Helper()
	rest := in.args
	for strings.HasPrefix(rest, "--") {
		f, r, _ := strings.Cut(rest, " ")
		flags = append(flags, f)
		rest = strings.TrimSpace(r)
	}
	if strings.HasPrefix(rest, "[") {
		require.NoError(t, json.Unmarshal([]byte(rest), &args), "line %d: %s", in.line, in.args)
		return flags, args
	}
	return flags, strings.Fields(rest)
}

// stage is one build stage of a Dockerfile.
type stage struct {
	name         string
	instructions []instruction
}

func stages(t *testing.T, ins []instruction) []stage {
	t.Helper()
	var out []stage
	for _, in := range ins {
		if in.cmd == "FROM" {
			_, args := flagsAndArgs(t, in)
			s := stage{}
			if len(args) == 3 && strings.EqualFold(args[1], "AS") {
				s.name = args[2]
			}
			out = append(out, s)
			continue
		}
		require.NotEmpty(t, out, "line %d: %s before FROM", in.line, in.cmd)
		out[len(out)-1].instructions = append(out[len(out)-1].instructions, in)
	}
	return out
}

// imageBuild is what the Dockerfile says about the stage that builds the
// binaries: the final stage copies outputs (absolute paths) from it.
type imageBuild struct {
	build      stage
	outputs    []string // in the build stage's file system
	entrypoint string
}

func readImageBuild(t *testing.T, file string) imageBuild {
	t.Helper()
	ss := stages(t, readDockerfile(t, file))
	require.GreaterOrEqual(t, len(ss), 2, "a build stage and the final stage")
	final := ss[len(ss)-1]
	var ib imageBuild
	for _, in := range final.instructions {
		switch in.cmd {
		case "COPY":
			flags, args := flagsAndArgs(t, in)
			i := slices.IndexFunc(flags, func(f string) bool { return strings.HasPrefix(f, "--from=") })
			require.GreaterOrEqual(t, i, 0, "line %d: the final stage copies only from the build stage: %s", in.line, in.args)
			from := strings.TrimPrefix(flags[i], "--from=")
			j := slices.IndexFunc(ss, func(s stage) bool { return s.name == from })
			require.GreaterOrEqual(t, j, 0, "line %d: no stage is named %s", in.line, from)
			require.True(t, ib.build.name == "" || ib.build.name == from, "line %d: the final stage copies from one build stage", in.line)
			ib.build = ss[j]
			ib.outputs = append(ib.outputs, args[:len(args)-1]...)
		case "ENTRYPOINT":
			_, args := flagsAndArgs(t, in)
			require.NotEmpty(t, args)
			ib.entrypoint = args[0]
		}
	}
	require.NotEmpty(t, ib.outputs, "the final stage copies the binaries from a build stage")
	return ib
}

// buildContext is the folder `docker build .` sends, less what
// .dockerignore excludes.
type buildContext struct {
	dir    string
	ignore *patternmatcher.PatternMatcher
}

func readBuildContext(t *testing.T, dir string) buildContext {
	t.Helper()
	bc := buildContext{dir: dir}
	var patterns []string
	if f, err := os.Open(filepath.Join(dir, ".dockerignore")); err == nil {
		patterns, err = ignorefile.ReadAll(f)
		f.Close()
		require.NoError(t, err)
	}
	pm, err := patternmatcher.New(patterns)
	require.NoError(t, err)
	bc.ignore = pm
	return bc
}

func (bc buildContext) ignored(t *testing.T, rel string) bool {
	t.Helper()
	ig, err := bc.ignore.MatchesOrParentMatches(filepath.ToSlash(rel))
	require.NoError(t, err)
	return ig
}

// copyInto does what COPY src... dest does: src relative to the context
// (wildcards allowed), dest in root's file system, relative to workdir.
func (bc buildContext) copyInto(t *testing.T, root, workdir string, in instruction) {
	t.Helper()
	flags, args := flagsAndArgs(t, in)
	for _, f := range flags {
		require.False(t, strings.HasPrefix(f, "--from="), "line %d: the build stage copies from another stage; this test does not follow that", in.line)
	}
	require.GreaterOrEqual(t, len(args), 2, "line %d: COPY %s", in.line, in.args)
	dest := args[len(args)-1]
	toDir := strings.HasSuffix(dest, "/") || dest == "." || len(args) > 2
	if !path.IsAbs(dest) {
		dest = path.Join(workdir, dest)
	}
	var sources []string
	for _, src := range args[:len(args)-1] {
		matches, err := filepath.Glob(filepath.Join(bc.dir, filepath.FromSlash(src)))
		require.NoError(t, err)
		var kept []string
		for _, m := range matches {
			rel, err := filepath.Rel(bc.dir, m)
			require.NoError(t, err)
			if !bc.ignored(t, rel) {
				kept = append(kept, rel)
			}
		}
		require.NotEmpty(t, kept, "line %d: COPY %s: %s is not in the build context", in.line, in.args, src)
		sources = append(sources, kept...)
	}
	toDir = toDir || len(sources) > 1
	for _, rel := range sources {
		st, err := os.Stat(filepath.Join(bc.dir, rel))
		require.NoError(t, err)
		target := filepath.Join(root, filepath.FromSlash(dest))
		if !st.IsDir() && toDir {
			target = filepath.Join(target, filepath.Base(rel))
		}
		bc.copyTree(t, rel, target)
	}
}

// copyTree copies the context's rel (a file, or a folder's contents) to
// target, leaving out what .dockerignore excludes.
func (bc buildContext) copyTree(t *testing.T, rel, target string) {
	t.Helper()
	src := filepath.Join(bc.dir, rel)
	err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		r, err := filepath.Rel(bc.dir, p)
		if err != nil {
			return err
		}
		if bc.ignored(t, r) {
			if d.IsDir() && !bc.ignore.Exclusions() {
				return filepath.SkipDir
			}
			return nil
		}
		sub, err := filepath.Rel(src, p)
		if err != nil {
			return err
		}
		to := filepath.Join(target, sub)
		switch {
		case d.IsDir():
			return os.MkdirAll(to, 0o755)
		case d.Type()&fs.ModeSymlink != 0:
			link, err := os.Readlink(p)
			if err != nil {
				return err
			}
			return os.Symlink(link, to)
		default:
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			info, err := d.Info()
			if err != nil {
				return err
			}
			if err := os.MkdirAll(filepath.Dir(to), 0o755); err != nil {
				return err
			}
			return os.WriteFile(to, b, info.Mode().Perm())
		}
	})
	require.NoError(t, err)
}

// imageTree is the build stage's file system after its COPY lines, in a
// temporary folder, with the stage's working directory and environment.
type imageTree struct {
	root, workdir string
	env           []string
}

func buildImageTree(t *testing.T, ib imageBuild, bc buildContext) imageTree {
	t.Helper()
	it := imageTree{root: t.TempDir(), workdir: "/"}
	for _, in := range ib.build.instructions {
		switch in.cmd {
		case "WORKDIR":
			it.workdir = path.Join(it.workdir, in.args)
			require.NoError(t, os.MkdirAll(filepath.Join(it.root, it.workdir), 0o755))
		case "COPY", "ADD":
			bc.copyInto(t, it.root, it.workdir, in)
		case "ARG", "ENV":
			_, args := flagsAndArgs(t, in)
			for _, a := range args {
				if in.cmd == "ENV" {
					require.Contains(t, a, "=", "line %d: ENV KEY=VALUE", in.line)
				}
				if strings.Contains(a, "=") { // an ARG without a default is unset
					it.env = append(it.env, a)
				}
			}
		}
	}
	return it
}

// modulesOfWork returns the folders a go.work names, as the go command
// reads them.
func modulesOfWork(t *testing.T, gowork string) []string {
	t.Helper()
	out, err := exec.Command("go", "work", "edit", "-json", gowork).Output()
	var stderr []byte
	if ee, ok := err.(*exec.ExitError); ok {
		stderr = ee.Stderr
	}
	require.NoError(t, err, "go work edit -json %s: %s", gowork, stderr)
	var w struct{ Use []struct{ DiskPath string } }
	require.NoError(t, json.Unmarshal(out, &w))
	var dirs []string
	for _, u := range w.Use {
		dirs = append(dirs, u.DiskPath)
	}
	require.NotEmpty(t, dirs, "%s names no module", gowork)
	return dirs
}

// TestImageContext checks that the image's build stage holds the
// workspace: go.work and the go.mod of every module it names, as the
// Dockerfile's COPY lines take them from the context less .dockerignore.
// Without one, the go command stops with "cannot load module ... listed
// in go.work file".
func TestImageContext(t *testing.T) {
	ib := readImageBuild(t, "../Dockerfile")
	it := buildImageTree(t, ib, readBuildContext(t, ".."))
	src := filepath.Join(it.root, it.workdir)
	gowork := filepath.Join(src, "go.work")
	require.FileExists(t, gowork, "the Dockerfile copies go.work into %s", it.workdir)
	assert.Equal(t, modulesOfWork(t, "../go.work"), modulesOfWork(t, gowork), "the image's go.work is the repository's")
	for _, m := range modulesOfWork(t, gowork) {
		m = path.Clean(m)
		assert.FileExists(t, filepath.Join(src, m, "go.mod"),
			"go.work names %s, but the image's %s has no %s/go.mod: the Dockerfile does not COPY it or .dockerignore excludes it", m, it.workdir, m)
	}
}

// goEnv is the go command's setting name on this machine.
func goEnv(t *testing.T, name string) string {
	t.Helper()
	out, err := exec.Command("go", "env", name).Output()
	require.NoError(t, err)
	return strings.TrimSpace(string(out))
}

// TestImageBuild runs the build stage's RUN lines in a copy of what the
// Dockerfile copies, and checks that the binaries the final stage takes
// are there and run. The paths the final stage copies from are moved
// under the temporary folder; the cache mounts are this machine's module
// and build caches (so a warm run takes seconds).
func TestImageBuild(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the three services")
	}
	ib := readImageBuild(t, "../Dockerfile")
	it := buildImageTree(t, ib, readBuildContext(t, ".."))

	// The golang image's environment: no GOFLAGS, GOWORK or go env file
	// of this machine's; the proxy settings and caches are taken over.
	env := []string{"GOTOOLCHAIN=local", "GOENV=off", "GOFLAGS="}
	for _, name := range []string{"GOPROXY", "GONOPROXY", "GOPRIVATE", "GONOSUMDB", "GOSUMDB", "GOINSECURE", "GOMODCACHE", "GOCACHE"} {
		env = append(env, name+"="+goEnv(t, name))
	}
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "GO") && !strings.HasPrefix(kv, "CGO_") {
			env = append(env, kv)
		}
	}
	env = append(env, it.env...)

	var outputs []*regexp.Regexp
	for _, o := range ib.outputs {
		outputs = append(outputs, regexp.MustCompile(`(^|[\s"'=])(`+regexp.QuoteMeta(strings.TrimSuffix(o, "/"))+`)\b`))
	}
	ran := 0
	for _, in := range ib.build.instructions {
		if in.cmd != "RUN" {
			continue
		}
		_, args := flagsAndArgs(t, in) // the flags are cache mounts
		script := strings.Join(args, " ")
		for _, re := range outputs {
			script = re.ReplaceAllString(script, "${1}"+it.root+"${2}")
		}
		cmd := exec.Command("/bin/sh", "-c", script)
		cmd.Dir = filepath.Join(it.root, it.workdir)
		cmd.Env = env
		out, err := cmd.CombinedOutput()
		require.NoError(t, err, "Dockerfile line %d: RUN %s\n%s", in.line, script, out)
		ran++
	}
	require.Positive(t, ran, "the build stage runs the build")

	binaries := map[string]string{} // name: path
	for _, o := range ib.outputs {
		_ = filepath.WalkDir(filepath.Join(it.root, o), func(p string, d fs.DirEntry, err error) error {
			if err == nil && d.Type().IsRegular() {
				binaries[filepath.Base(p)] = p
			}
			return nil
		})
	}
	names := slices.Sorted(maps.Keys(binaries))
	assert.Equal(t, []string{"spillway-forwarder", "spillway-ingest", "spillway-resender"}, names, "the binaries the image holds")
	assert.Contains(t, names, path.Base(ib.entrypoint), "the entrypoint is one of them")
	for _, name := range names {
		out, err := exec.Command(binaries[name], "-version").CombinedOutput()
		require.NoError(t, err, "%s -version: %s", name, out)
		assert.Equal(t, name+" dev\n", string(out), "the build argument VERSION's default is stamped in")
	}
	// What `go version -m` lists is what the binary links.
	for _, name := range []string{"spillway-forwarder", "spillway-resender"} {
		out, err := exec.Command("go", "version", "-m", binaries[name]).Output()
		require.NoError(t, err)
		assert.NotContains(t, string(out), natsServer, "%s links the NATS server", name)
	}
}

// natsServer is the module of the NATS server, which only the ingest runs
// (embedded, when no external JetStream is configured).
const natsServer = "github.com/nats-io/nats-server/v2"

// linkedModules returns the modules whose packages the binary built from
// the package in dir links, as go list reports them.
func linkedModules(t *testing.T, dir string) []string {
	t.Helper()
	out, err := exec.Command("go", "list", "-deps", "-f", "{{with .Module}}{{.Path}}{{end}}", dir).Output()
	var stderr []byte
	if ee, ok := err.(*exec.ExitError); ok {
		stderr = ee.Stderr
	}
	require.NoError(t, err, "go list -deps %s: %s", dir, stderr)
	mods := strings.Fields(string(out))
	slices.Sort(mods)
	return slices.Compact(mods)
}

// TestDrainsLinkNoNATSServer checks that the forwarder and resender, which
// connect to JetStream as clients, do not carry the NATS server (it made
// each of them 9 MB larger, stripped) while the ingest, which embeds it, does.
func TestDrainsLinkNoNATSServer(t *testing.T) {
	assert.Contains(t, linkedModules(t, "../services/ingest"), natsServer, "the ingest embeds the NATS server")
	for _, s := range []string{"forwarder", "resender"} {
		assert.NotContains(t, linkedModules(t, "../services/"+s), natsServer,
			"spillway-%s links the NATS server: a package it imports imports %s (the embedded server belongs in pkg/spill/embeddednats)", s, natsServer)
	}
}
