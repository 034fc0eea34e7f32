package lab

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"
)

// BuildGo builds a Go main package of this module for the lab's dom0 (CGO_ENABLED=0,
// GOOS=linux, GOARCH=amd64, build tags "xenlab" plus tags) and returns the host path of the
// binary, for Scenario.Files. pkg is a package path relative to the repository root
// ("./cmd/xen-dm-go") or a full import path.
func (l *Lab) BuildGo(t testing.TB, pkg string, tags ...string) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), binName(pkg))
	l.goCmd(t, "build", out, pkg, tags)
	return out
}

// BuildGoTest compiles the tests of pkg into a binary for the lab's dom0
// (go test -c -tags xenlab[,tags]; CGO_ENABLED=0, linux/amd64) and returns its host path.
// Run it in dom0 like `/xfer/bin/foo.test -test.v -test.run TestX`.
func (l *Lab) BuildGoTest(t testing.TB, pkg string, tags ...string) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), binName(pkg)+".test")
	l.goCmd(t, "test", out, pkg, tags)
	return out
}

func (l *Lab) goCmd(t testing.TB, mode, out, pkg string, tags []string) {
	t.Helper()
	args := []string{"build"}
	if mode == "test" {
		args = []string{"test", "-c"}
	}
	args = append(args, "-tags", strings.Join(append([]string{"xenlab"}, tags...), ","), "-o", out, pkg)
	cmd := exec.Command("go", args...)
	cmd.Dir = l.Root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64")
	b, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("go %s for the lab: %v\n%s", strings.Join(args, " "), err, b)
	}
	if _, err := os.Stat(out); err != nil {
		t.Fatalf("go %s produced no binary (no tests in %s?)\n%s", strings.Join(args, " "), pkg, b)
	}
}

func binName(pkg string) string {
	b := filepath.Base(strings.TrimRight(pkg, "/"))
	if b == "." || b == "" {
		b = "main"
	}
	return b
}

// PublishCaptured copies the files a run left in results/captured/ to $XENLAB_CACHE/captured/
// and to tests/testdata/captured/ (gitignored), replacing older copies atomically, and returns
// the repository copies' paths.
func (l *Lab) PublishCaptured(t testing.TB, res *Result) []string {
	t.Helper()
	src := globSorted(res.Dir, "captured/*")
	if len(src) == 0 {
		t.Fatalf("no files in %s", res.Path("captured"))
	}
	var out []string
	for _, dst := range []string{filepath.Join(l.Cache, "captured"), filepath.Join(l.Root, "tests", "testdata", "captured")} {
		if err := os.MkdirAll(dst, 0o755); err != nil {
			t.Fatal(err)
		}
		for _, f := range src {
			target := filepath.Join(dst, filepath.Base(f))
			if err := copyFile(f, target); err != nil {
				t.Fatalf("publishing %s: %v", f, err)
			}
			if strings.HasPrefix(dst, l.Root) {
				out = append(out, target)
			}
		}
	}
	return out
}

// copyFile copies src to dst (atomically: a temporary file renamed), keeping the mode.
func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	st, err := in.Stat()
	if err != nil {
		return err
	}
	if st.IsDir() {
		return fmt.Errorf("%s is a directory", src)
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(dst), "."+filepath.Base(dst)+".tmp*")
	if err != nil {
		return err
	}
	if _, err := io.Copy(tmp, in); err != nil {
		tmp.Close()
		os.Remove(tmp.Name())
		return err
	}
	if err := tmp.Chmod(st.Mode().Perm()); err != nil {
		tmp.Close()
		os.Remove(tmp.Name())
		return err
	}
	if err := tmp.Close(); err != nil {
		os.Remove(tmp.Name())
		return err
	}
	return os.Rename(tmp.Name(), dst)
}

// parseEnv reads KEY=VALUE lines (a later key wins; quotes around the value are removed).
func parseEnv(s string) map[string]string {
	m := map[string]string{}
	sc := bufio.NewScanner(strings.NewReader(s))
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		ln := strings.TrimSpace(sc.Text())
		if ln == "" || strings.HasPrefix(ln, "#") {
			continue
		}
		k, v, ok := strings.Cut(ln, "=")
		if !ok {
			continue
		}
		if len(v) >= 2 && (v[0] == '"' && v[len(v)-1] == '"' || v[0] == '\'' && v[len(v)-1] == '\'') {
			v = v[1 : len(v)-1]
		}
		m[strings.TrimSpace(k)] = v
	}
	return m
}

// shellQuote quotes s for a POSIX shell.
func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

func sanitize(s string) string {
	var b strings.Builder
	for _, r := range s {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '-', r == '_', r == '.':
			b.WriteRune(r)
		default:
			b.WriteByte('_')
		}
	}
	if b.Len() > 60 {
		return b.String()[:60]
	}
	return b.String()
}

// pruneRuns keeps the newest keep run directories, and any run touched in the last 3 hours
// (it may be waiting for the lab lock or running).
func pruneRuns(dir string, keep int) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	type run struct {
		path string
		mod  time.Time
	}
	var runs []run
	for _, e := range ents {
		if !e.IsDir() {
			continue
		}
		if fi, err := e.Info(); err == nil {
			runs = append(runs, run{filepath.Join(dir, e.Name()), fi.ModTime()})
		}
	}
	sort.Slice(runs, func(i, j int) bool { return runs[i].mod.After(runs[j].mod) })
	for i := keep; i < len(runs); i++ {
		recent := time.Since(runs[i].mod) < 3*time.Hour
		if fi, err := os.Stat(filepath.Join(runs[i].path, "serial.log")); err == nil && time.Since(fi.ModTime()) < 3*time.Hour {
			recent = true
		}
		if !recent {
			os.RemoveAll(runs[i].path)
		}
	}
}

func writeJSON(path string, v any) {
	b, err := json.MarshalIndent(v, "", "  ")
	if err == nil {
		os.WriteFile(path, append(b, '\n'), 0o644)
	}
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

func envDuration(name string, def time.Duration) time.Duration {
	if v := os.Getenv(name); v != "" {
		if d, err := time.ParseDuration(v); err == nil {
			return d
		}
	}
	return def
}

func envInt(name string, def int) int {
	if v := os.Getenv(name); v != "" {
		if n, err := strconv.Atoi(v); err == nil {
			return n
		}
	}
	return def
}
