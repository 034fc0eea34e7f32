package xenstore_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/xen-dm-go/xen-dm-go/dm/xen/xenstore"
	"github.com/xen-dm-go/xen-dm-go/dm/xen/xentest"
)

// logBuf collects the client's log output so tests can check what it
// dropped.
type logBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func newServer(t *testing.T) *xentest.XenstoreServer {
	t.Helper()
	s, err := xentest.NewXenstoreServer()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func dial(t *testing.T, s *xentest.XenstoreServer, opts ...xenstore.Option) (*xenstore.Client, *logBuf) {
	t.Helper()
	lb := &logBuf{}
	opts = append([]xenstore.Option{xenstore.WithLogger(slog.New(slog.NewTextHandler(lb, nil)))}, opts...)
	c, err := xenstore.Dial(s.SocketPath(), opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c, lb
}

func setup(t *testing.T, opts ...xenstore.Option) (*xentest.XenstoreServer, *xenstore.Client, *logBuf) {
	s := newServer(t)
	c, lb := dial(t, s, opts...)
	return s, c, lb
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// next returns the next event or fails after a while.
func next(t *testing.T, w *xenstore.Watch) xenstore.Event {
	t.Helper()
	select {
	case ev, ok := <-w.Events():
		if !ok {
			t.Fatalf("watch %s: channel closed", w.Path())
		}
		return ev
	case <-time.After(5 * time.Second):
		t.Fatalf("watch %s: no event", w.Path())
	}
	panic("unreachable")
}

// none checks that no event is queued (after a round trip that orders
// everything the server sent before it).
func none(t *testing.T, c *xenstore.Client, w *xenstore.Watch) {
	t.Helper()
	if _, err := c.GetDomainPath(ctxT(t), 0); err != nil {
		t.Fatal(err)
	}
	select {
	case ev, ok := <-w.Events():
		if ok {
			t.Fatalf("unexpected event %+v", ev)
		}
	default:
	}
}

func waitClosed(t *testing.T, w *xenstore.Watch) {
	t.Helper()
	timeout := time.After(5 * time.Second)
	for {
		select {
		case _, ok := <-w.Events():
			if !ok {
				return
			}
		case <-timeout:
			t.Fatalf("watch %s: channel not closed", w.Path())
		}
	}
}

func TestReadWriteMkdirRmDirectory(t *testing.T) {
	s, c, _ := setup(t)
	ctx := ctxT(t)
	base := "/local/domain/0/xen-dm-go-test"

	must(t, c.Write(ctx, base+"/a/b", "hello"))
	if v, err := c.Read(ctx, base+"/a/b"); err != nil || v != "hello" {
		t.Fatalf("Read = %q, %v", v, err)
	}
	// Write created the parent with an empty value.
	if v, err := c.Read(ctx, base+"/a"); err != nil || v != "" {
		t.Fatalf("parent: Read = %q, %v", v, err)
	}
	// Values are octet strings.
	bin := "x\x00y\xff"
	must(t, c.Write(ctx, base+"/bin", bin))
	if v, err := c.Read(ctx, base+"/bin"); err != nil || v != bin {
		t.Fatalf("binary: Read = %q, %v", v, err)
	}
	must(t, c.Write(ctx, base+"/empty", ""))
	if v, err := c.Read(ctx, base+"/empty"); err != nil || v != "" {
		t.Fatalf("empty: Read = %q, %v", v, err)
	}

	// Relative paths resolve against /local/domain/0: the DM's handshake.
	must(t, c.Write(ctx, "device-model/5/state", "running"))
	if v, ok := s.Read("/local/domain/0/device-model/5/state"); !ok || v != "running" {
		t.Fatalf("server sees %q %v", v, ok)
	}

	must(t, c.Mkdir(ctx, base+"/d/e"))
	must(t, c.Mkdir(ctx, base+"/a")) // existing: value kept
	if v, _ := c.Read(ctx, base+"/a/b"); v != "hello" {
		t.Fatalf("mkdir clobbered a child: %q", v)
	}
	names, err := c.Directory(ctx, base)
	must(t, err)
	slices.Sort(names)
	if want := []string{"a", "bin", "d", "empty"}; !slices.Equal(names, want) {
		t.Fatalf("Directory = %q, want %q", names, want)
	}
	if names, err := c.Directory(ctx, base+"/d/e"); err != nil || names == nil || len(names) != 0 {
		t.Fatalf("empty Directory = %#v, %v", names, err)
	}

	must(t, c.Rm(ctx, base+"/a"))
	_, err = c.Read(ctx, base+"/a/b")
	if !errors.Is(err, xenstore.ErrNotFound) || !errors.Is(err, fs.ErrNotExist) || !errors.Is(err, syscall.ENOENT) {
		t.Fatalf("read after rm: %v", err)
	}
	var xe *xenstore.Error
	if !errors.As(err, &xe) || xe.Op != "read" || xe.Path != base+"/a/b" {
		t.Fatalf("error %#v does not name op and path", err)
	}
	if want := "xenstore read " + base + "/a/b: ENOENT"; err.Error() != want {
		t.Fatalf("error text %q, want %q", err, want)
	}
	must(t, c.Rm(ctx, base+"/a"))              // missing node, parent exists: fine
	err = c.Rm(ctx, base+"/nonexistent/child") // missing parent
	if !errors.Is(err, xenstore.ErrNotFound) {
		t.Fatalf("rm with missing parent: %v", err)
	}
	if _, err := c.Directory(ctx, base+"/nope"); !errors.Is(err, xenstore.ErrNotFound) {
		t.Fatalf("directory of missing node: %v", err)
	}
	// The server rejects what xenstored rejects.
	if err := c.Write(ctx, base+"/bad path!", "x"); !errors.Is(err, xenstore.ErrInvalid) {
		t.Fatalf("invalid characters: %v", err)
	}
}

func TestGetDomainPath(t *testing.T) {
	_, c, _ := setup(t)
	for _, d := range []uint16{0, 7, 32752} {
		p, err := c.GetDomainPath(ctxT(t), d)
		if want := fmt.Sprintf("/local/domain/%d", d); err != nil || p != want {
			t.Fatalf("GetDomainPath(%d) = %q, %v", d, p, err)
		}
	}
}

func TestPermissions(t *testing.T) {
	s, c, _ := setup(t)
	ctx := ctxT(t)
	p := "/local/domain/0/perm-test/node"
	must(t, c.Write(ctx, p, "v"))
	got, err := c.GetPermissions(ctx, p)
	must(t, err)
	if want := []xenstore.Perm{{Domid: 0, Access: xenstore.AccessNone}}; !slices.Equal(got, want) {
		t.Fatalf("inherited perms %v, want %v", got, want)
	}
	set := []xenstore.Perm{{Domid: 0, Access: xenstore.AccessNone}, {Domid: 5, Access: xenstore.AccessRead}, {Domid: 65535, Access: xenstore.AccessBoth}, {Domid: 7, Access: xenstore.AccessWrite}}
	must(t, c.SetPermissions(ctx, p, set))
	got, err = c.GetPermissions(ctx, p)
	must(t, err)
	if !slices.Equal(got, set) {
		t.Fatalf("round trip: got %v, want %v", got, set)
	}
	if sv := s.Perms(p); !slices.Equal(sv, set) {
		t.Fatalf("server has %v", sv)
	}
	if xenstore.FormatPerms(got) != "n0,r5,b65535,w7" {
		t.Fatalf("FormatPerms = %q", xenstore.FormatPerms(got))
	}
	// A child created later inherits them.
	must(t, c.Write(ctx, p+"/child", "x"))
	if got, _ := c.GetPermissions(ctx, p+"/child"); !slices.Equal(got, set) {
		t.Fatalf("child perms %v", got)
	}
	// Refused before sending.
	if err := c.SetPermissions(ctx, p, nil); !errors.Is(err, xenstore.ErrInvalid) {
		t.Fatalf("empty perms: %v", err)
	}
	if err := c.SetPermissions(ctx, p, []xenstore.Perm{{Access: 'x'}}); !errors.Is(err, xenstore.ErrInvalid) {
		t.Fatalf("bad access: %v", err)
	}
	if _, err := c.GetPermissions(ctx, p+"/missing"); !errors.Is(err, xenstore.ErrNotFound) {
		t.Fatalf("missing: %v", err)
	}
}

func TestParsePerm(t *testing.T) {
	good := map[string]xenstore.Perm{
		"n0":     {0, xenstore.AccessNone},
		"r5":     {5, xenstore.AccessRead},
		"w12":    {12, xenstore.AccessWrite},
		"b65535": {65535, xenstore.AccessBoth},
	}
	for s, want := range good {
		got, err := xenstore.ParsePerm(s)
		if err != nil || got != want || got.String() != s {
			t.Errorf("ParsePerm(%q) = %v, %v", s, got, err)
		}
	}
	for _, s := range []string{"", "r", "x1", "r-1", "r65536", "rx", "R1", "r 1"} {
		if _, err := xenstore.ParsePerm(s); !errors.Is(err, xenstore.ErrInvalid) {
			t.Errorf("ParsePerm(%q) = %v, want ErrInvalid", s, err)
		}
	}
	if !xenstore.AccessBoth.CanRead() || !xenstore.AccessBoth.CanWrite() || xenstore.AccessRead.CanWrite() ||
		xenstore.AccessWrite.CanRead() || xenstore.AccessNone.CanRead() {
		t.Error("Access predicates wrong")
	}
}

func TestWatch(t *testing.T) {
	s, c, lb := setup(t)
	ctx := ctxT(t)
	base := "/local/domain/0/wt/watched"

	w, err := c.Watch(ctx, base)
	must(t, err)
	// Fires once at registration, with the watched path.
	if ev := next(t, w); ev.Path != base || ev.Token != w.Token() {
		t.Fatalf("initial event %+v", ev)
	}
	none(t, c, w)

	s.Write(base+"/x/y", "1") // another writer
	if ev := next(t, w); ev.Path != base+"/x/y" {
		t.Fatalf("event %+v", ev)
	}
	must(t, c.Write(ctx, base, "2")) // our own write, to the path itself
	if ev := next(t, w); ev.Path != base {
		t.Fatalf("event %+v", ev)
	}
	must(t, c.Write(ctx, "/local/domain/0/wt/watchedx", "no")) // a sibling that shares the prefix
	none(t, c, w)
	must(t, c.Rm(ctx, "/local/domain/0/wt")) // removing an ancestor reports the watched path
	if ev := next(t, w); ev.Path != base {
		t.Fatalf("event on ancestor removal %+v", ev)
	}

	// A relative watch gets relative paths.
	rw, err := c.Watch(ctx, "device-model/3")
	must(t, err)
	if ev := next(t, rw); ev.Path != "device-model/3" {
		t.Fatalf("initial relative event %+v", ev)
	}
	must(t, c.Write(ctx, "/local/domain/0/device-model/3/state", "running"))
	if ev := next(t, rw); ev.Path != "device-model/3/state" {
		t.Fatalf("relative event %+v", ev)
	}

	// Special watches fire at registration only.
	sw, err := c.Watch(ctx, "@releaseDomain")
	must(t, err)
	if ev := next(t, sw); ev.Path != "@releaseDomain" {
		t.Fatalf("special %+v", ev)
	}

	// Unwatch stops events and closes the channel.
	must(t, c.Unwatch(ctx, w))
	waitClosed(t, w)
	s.Write(base+"/after", "x")
	if _, err := c.GetDomainPath(ctx, 0); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(lb.String(), "unknown token") {
		t.Fatalf("server still sent events after unwatch:\n%s", lb)
	}
	must(t, c.Unwatch(ctx, w)) // second time: nil
	if w.Dropped() != 0 {
		t.Fatalf("dropped %d", w.Dropped())
	}
	if err := c.Unwatch(ctx, nil); !errors.Is(err, xenstore.ErrInvalid) {
		t.Fatalf("Unwatch(nil): %v", err)
	}
	// Two watches on one path are independent.
	w1, err := c.Watch(ctx, base)
	must(t, err)
	w2, err := c.Watch(ctx, base)
	must(t, err)
	next(t, w1)
	next(t, w2)
	s.Write(base, "z")
	next(t, w1)
	next(t, w2)
}

func TestWatchOverflowKeepsNewest(t *testing.T) {
	s, c, lb := setup(t, xenstore.WithEventBuffer(2))
	ctx := ctxT(t)
	w, err := c.Watch(ctx, "/local/domain/0/flood")
	must(t, err)
	for i := range 10 {
		s.Write(fmt.Sprintf("/local/domain/0/flood/%d", i), "x")
	}
	// Replies are not held up by the full channel.
	if _, err := c.Read(ctx, "/local/domain/0/flood/9"); err != nil {
		t.Fatal(err)
	}
	if got := w.Dropped(); got != 9 { // 1 initial + 10 events, 2 kept
		t.Fatalf("Dropped = %d, want 9", got)
	}
	if ev := next(t, w); ev.Path != "/local/domain/0/flood/8" {
		t.Fatalf("kept %+v", ev)
	}
	if ev := next(t, w); ev.Path != "/local/domain/0/flood/9" {
		t.Fatalf("kept %+v", ev)
	}
	none(t, c, w)
	if lb.String() != "" {
		t.Fatalf("unexpected log: %s", lb)
	}
}

func TestTransactions(t *testing.T) {
	s, c, _ := setup(t)
	ctx := ctxT(t)
	p := "/local/domain/0/tx/key"
	must(t, c.Write(ctx, p, "0"))
	w, err := c.Watch(ctx, "/local/domain/0/tx")
	must(t, err)
	next(t, w)

	// Changes are private until commit, and fire watches only then.
	tx, err := c.Start(ctx)
	must(t, err)
	if tx.ID() == 0 {
		t.Fatal("tx id 0")
	}
	must(t, tx.Write(ctx, p, "1"))
	must(t, tx.Write(ctx, "/local/domain/0/tx/new/deep", "n"))
	if v, err := tx.Read(ctx, p); err != nil || v != "1" {
		t.Fatalf("tx read %q %v", v, err)
	}
	if v, _ := c.Read(ctx, p); v != "0" {
		t.Fatalf("uncommitted write visible: %q", v)
	}
	names, err := tx.Directory(ctx, "/local/domain/0/tx")
	must(t, err)
	slices.Sort(names)
	if !slices.Equal(names, []string{"key", "new"}) {
		t.Fatalf("tx directory %q", names)
	}
	none(t, c, w)
	must(t, tx.Commit(ctx))
	if v, _ := s.Read(p); v != "1" {
		t.Fatalf("after commit %q", v)
	}
	if v, _ := s.Read("/local/domain/0/tx/new/deep"); v != "n" {
		t.Fatalf("after commit deep %q", v)
	}
	if ev := next(t, w); ev.Path != p {
		t.Fatalf("commit event %+v", ev)
	}
	next(t, w)
	if err := tx.Write(ctx, p, "x"); !errors.Is(err, xenstore.ErrTxDone) {
		t.Fatalf("use after commit: %v", err)
	}
	if err := tx.Commit(ctx); !errors.Is(err, xenstore.ErrTxDone) {
		t.Fatalf("second commit: %v", err)
	}

	// Abort discards.
	tx, err = c.Start(ctx)
	must(t, err)
	must(t, tx.Rm(ctx, p))
	must(t, tx.Mkdir(ctx, "/local/domain/0/tx/m"))
	must(t, tx.SetPermissions(ctx, "/local/domain/0/tx", []xenstore.Perm{{Domid: 3, Access: xenstore.AccessRead}}))
	if perms, err := tx.GetPermissions(ctx, "/local/domain/0/tx"); err != nil || perms[0].Domid != 3 {
		t.Fatalf("tx perms %v %v", perms, err)
	}
	must(t, tx.Abort(ctx))
	if v, ok := s.Read(p); !ok || v != "1" {
		t.Fatalf("after abort %q %v", v, ok)
	}
	if _, ok := s.Read("/local/domain/0/tx/m"); ok {
		t.Fatal("aborted mkdir applied")
	}
	none(t, c, w)

	// Conflict: a key read in the transaction changes before commit.
	tx, err = c.Start(ctx)
	must(t, err)
	v, err := tx.Read(ctx, p)
	must(t, err)
	s.Write(p, "other")
	next(t, w)
	must(t, tx.Write(ctx, p, v+"+1"))
	err = tx.Commit(ctx)
	if !errors.Is(err, xenstore.ErrAgain) || !errors.Is(err, syscall.EAGAIN) {
		t.Fatalf("conflicting commit: %v", err)
	}
	if !strings.Contains(err.Error(), fmt.Sprintf("tx %d", tx.ID())) {
		t.Fatalf("error does not name the transaction: %v", err)
	}
	if v, _ := s.Read(p); v != "other" {
		t.Fatalf("conflicting commit applied: %q", v)
	}
	none(t, c, w)

	// A concurrent second client conflicts the same way.
	c2, _ := dial(t, s)
	tx, err = c.Start(ctx)
	must(t, err)
	_, err = tx.Read(ctx, p)
	must(t, err)
	must(t, c2.Write(ctx, p, "c2"))
	next(t, w)
	must(t, tx.Write(ctx, p, "c1"))
	if err := tx.Commit(ctx); !errors.Is(err, xenstore.ErrAgain) {
		t.Fatalf("conflicting commit: %v", err)
	}

	// Transact retries.
	attempts := 0
	err = c.Transact(ctx, func(tx *xenstore.Tx) error {
		attempts++
		v, err := tx.Read(ctx, p)
		if err != nil {
			return err
		}
		if attempts == 1 {
			s.Write(p, "interfering")
		}
		return tx.Write(ctx, p, v+"!")
	})
	must(t, err)
	if attempts != 2 {
		t.Fatalf("attempts = %d", attempts)
	}
	if v, _ := s.Read(p); v != "interfering!" {
		t.Fatalf("Transact result %q", v)
	}
	// fn's own error aborts.
	boom := errors.New("boom")
	if err := c.Transact(ctx, func(tx *xenstore.Tx) error {
		must(t, tx.Write(ctx, p, "never"))
		return boom
	}); err != boom {
		t.Fatalf("Transact = %v", err)
	}
	if v, _ := s.Read(p); v != "interfering!" {
		t.Fatalf("aborted Transact applied %q", v)
	}
}

func TestConcurrentRequests(t *testing.T) {
	s, c, _ := setup(t)
	ctx := ctxT(t)
	w, err := c.Watch(ctx, "/local/domain/0/conc")
	must(t, err)
	var wg sync.WaitGroup
	stop := make(chan struct{})
	wg.Add(1)
	go func() { // a consumer, slower than the writers
		defer wg.Done()
		for {
			select {
			case <-w.Events():
				time.Sleep(50 * time.Microsecond)
			case <-stop:
				return
			}
		}
	}()
	const workers, ops = 16, 40
	errs := make(chan error, workers)
	var wwg sync.WaitGroup
	for g := range workers {
		wwg.Add(1)
		go func() {
			defer wwg.Done()
			for i := range ops {
				p := fmt.Sprintf("/local/domain/0/conc/%d/%d", g, i)
				want := fmt.Sprintf("v%d-%d", g, i)
				if err := c.Write(ctx, p, want); err != nil {
					errs <- err
					return
				}
				got, err := c.Read(ctx, p)
				if err != nil || got != want {
					errs <- fmt.Errorf("read %s = %q, %v", p, got, err)
					return
				}
				if i%10 == 0 {
					if _, err := c.Directory(ctx, "/local/domain/0/conc"); err != nil {
						errs <- err
						return
					}
				}
			}
		}()
	}
	wwg.Wait()
	close(stop)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if n := len(s.Directory("/local/domain/0/conc")); n != workers {
		t.Fatalf("%d worker dirs", n)
	}
}

func TestRefusedBeforeSending(t *testing.T) {
	s, c, _ := setup(t)
	ctx := ctxT(t)
	big := strings.Repeat("x", xenstore.PayloadMax)
	err := c.Write(ctx, "/local/domain/0/big", big) // path + NUL + 4096 > 4096
	if !errors.Is(err, xenstore.ErrPayloadTooBig) || !strings.Contains(err.Error(), "/local/domain/0/big") {
		t.Fatalf("big write: %v", err)
	}
	// The largest value that fits is accepted.
	p := "/local/domain/0/big"
	fit := strings.Repeat("y", xenstore.PayloadMax-len(p)-1)
	must(t, c.Write(ctx, p, fit))
	if v, err := c.Read(ctx, p); err != nil || v != fit {
		t.Fatalf("read back %d bytes, %v", len(v), err)
	}
	for _, bad := range []string{
		"",
		"/local/domain/0/a\x00b",
		"/" + strings.Repeat("a", xenstore.AbsPathMax),
		strings.Repeat("a", xenstore.RelPathMax+1),
	} {
		if _, err := c.Read(ctx, bad); !errors.Is(err, xenstore.ErrInvalid) {
			t.Errorf("Read(%.20q…): %v", bad, err)
		}
		if _, err := c.Watch(ctx, bad); !errors.Is(err, xenstore.ErrInvalid) {
			t.Errorf("Watch(%.20q…): %v", bad, err)
		}
	}
	// The connection survived all of that.
	if s.Conns() != 1 {
		t.Fatalf("%d connections", s.Conns())
	}
	if _, err := c.GetDomainPath(ctx, 0); err != nil {
		t.Fatal(err)
	}
}

func TestUnknownWatchToken(t *testing.T) {
	s, c, lb := setup(t)
	ctx := ctxT(t)
	w, err := c.Watch(ctx, "/local/domain/0/k")
	must(t, err)
	next(t, w)
	s.InjectEvent("/local/domain/0/k", "no-such-token")
	s.InjectRaw([]byte("\x0f\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x03\x00\x00\x00abc")) // event without NULs
	none(t, c, w)
	log := lb.String()
	if !strings.Contains(log, "unknown token") || !strings.Contains(log, "no-such-token") || !strings.Contains(log, "malformed watch event") {
		t.Fatalf("log:\n%s", log)
	}
}

func TestBogusReqID(t *testing.T) {
	s, c, lb := setup(t)
	ctx := ctxT(t)
	must(t, c.Write(ctx, "/local/domain/0/r", "real"))
	s.SetHook(func(r xentest.XenstoreRequest) xentest.XenstoreAction {
		if r.Type == xenstore.TypeRead {
			bogus := xenstore.AppendMessage(nil, xenstore.Header{Type: xenstore.TypeRead, ReqID: r.ReqID + 1000}, []byte("fake"))
			s.InjectRaw(bogus)
		}
		return xentest.XenstoreServe
	})
	if v, err := c.Read(ctx, "/local/domain/0/r"); err != nil || v != "real" {
		t.Fatalf("Read = %q, %v", v, err)
	}
	if !strings.Contains(lb.String(), "unknown req_id") {
		t.Fatalf("log:\n%s", lb)
	}
}

func TestServerClosesMidRequest(t *testing.T) {
	s, c, _ := setup(t)
	ctx := ctxT(t)
	w, err := c.Watch(ctx, "/local/domain/0/w")
	must(t, err)
	next(t, w)
	dying := "/local/domain/0/dying"
	s.SetHook(func(r xentest.XenstoreRequest) xentest.XenstoreAction {
		if r.Type == xenstore.TypeRead && r.Path() == dying {
			return xentest.XenstoreDrop
		}
		return xentest.XenstoreServe
	})
	_, err = c.Read(ctx, dying)
	if !errors.Is(err, io.EOF) || !errors.Is(err, xenstore.ErrConnClosed) {
		t.Fatalf("Read: %v", err)
	}
	if msg := err.Error(); !strings.Contains(msg, dying) || !strings.Contains(msg, s.SocketPath()) {
		t.Fatalf("error does not name the path and socket: %v", err)
	}
	waitClosed(t, w)
	select {
	case <-c.Done():
	default:
		t.Fatal("Done not closed")
	}
	if !errors.Is(c.Err(), io.EOF) {
		t.Fatalf("Err() = %v", c.Err())
	}
	// Future calls fail at once.
	err = c.Write(ctx, "/local/domain/0/later", "x")
	if !errors.Is(err, io.EOF) || !strings.Contains(err.Error(), "/local/domain/0/later") {
		t.Fatalf("Write after loss: %v", err)
	}
	if _, err := c.Watch(ctx, "/x"); !errors.Is(err, xenstore.ErrConnClosed) {
		t.Fatalf("Watch after loss: %v", err)
	}
	if _, err := c.Start(ctx); !errors.Is(err, xenstore.ErrConnClosed) {
		t.Fatalf("Start after loss: %v", err)
	}
	must(t, c.Close())
	must(t, c.Close())
	if !errors.Is(c.Err(), io.EOF) { // the first cause stays
		t.Fatalf("Err() after Close = %v", c.Err())
	}
}

func TestPendingCallsFailWhenServerDies(t *testing.T) {
	s, c, _ := setup(t)
	ctx := ctxT(t)
	var stuck sync.WaitGroup
	stuck.Add(8)
	s.SetHook(func(r xentest.XenstoreRequest) xentest.XenstoreAction {
		if r.Type == xenstore.TypeRead {
			stuck.Done()
			return xentest.XenstoreIgnore
		}
		return xentest.XenstoreServe
	})
	errs := make([]error, 8)
	var wg sync.WaitGroup
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = c.Read(ctx, fmt.Sprintf("/local/domain/0/p%d", i))
		}()
	}
	stuck.Wait()
	s.Close()
	wg.Wait()
	for i, err := range errs {
		if !errors.Is(err, xenstore.ErrConnClosed) || !strings.Contains(err.Error(), fmt.Sprintf("/local/domain/0/p%d", i)) {
			t.Errorf("call %d: %v", i, err)
		}
	}
}

func TestCloseUnblocks(t *testing.T) {
	s, c, lb := setup(t)
	ctx := ctxT(t)
	w, err := c.Watch(ctx, "/local/domain/0/w")
	must(t, err)
	arrived := make(chan struct{})
	s.SetHook(func(r xentest.XenstoreRequest) xentest.XenstoreAction {
		if r.Type == xenstore.TypeRead {
			close(arrived)
			return xentest.XenstoreIgnore
		}
		return xentest.XenstoreServe
	})
	done := make(chan error)
	go func() {
		_, err := c.Read(ctx, "/local/domain/0/hang")
		done <- err
	}()
	<-arrived
	must(t, c.Close())
	err = <-done
	if !errors.Is(err, net.ErrClosed) || !errors.Is(err, xenstore.ErrConnClosed) || !strings.Contains(err.Error(), "/local/domain/0/hang") {
		t.Fatalf("pending call after Close: %v", err)
	}
	waitClosed(t, w)
	must(t, c.Close())
	if _, err := c.Read(ctx, "/a"); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("call after Close: %v", err)
	}
	must(t, c.Unwatch(ctx, w)) // already closed: nil
	if strings.Contains(lb.String(), "connection lost") {
		t.Fatalf("Close logged as a loss:\n%s", lb)
	}
}

func TestContextBoundsTheWait(t *testing.T) {
	s, c, _ := setup(t)
	s.SetHook(func(r xentest.XenstoreRequest) xentest.XenstoreAction {
		if r.Type == xenstore.TypeRead {
			return xentest.XenstoreIgnore
		}
		return xentest.XenstoreServe
	})
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	_, err := c.Read(ctx, "/local/domain/0/slow")
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "/local/domain/0/slow") {
		t.Fatalf("Read: %v", err)
	}
	s.SetHook(nil)
	must(t, c.Write(ctxT(t), "/local/domain/0/after", "ok"))
	if _, err := c.Read(ctx, "/local/domain/0/after"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("expired ctx: %v", err)
	}
}

func TestDirectoryPart(t *testing.T) {
	s, c, _ := setup(t)
	ctx := ctxT(t)
	base := "/local/domain/0/many"
	var want []string
	for i := range 400 { // ~400*21 bytes: more than one payload
		n := fmt.Sprintf("child-with-long-name-%03d", i)
		want = append(want, n)
		s.Write(base+"/"+n, "")
	}
	got, err := c.Directory(ctx, base)
	must(t, err)
	slices.Sort(got)
	if !slices.Equal(got, want) {
		t.Fatalf("got %d names, want %d", len(got), len(want))
	}
	tx, err := c.Start(ctx)
	must(t, err)
	must(t, tx.Write(ctx, base+"/zzz-in-tx", "x"))
	got, err = tx.Directory(ctx, base)
	must(t, err)
	if len(got) != len(want)+1 || !slices.Contains(got, "zzz-in-tx") {
		t.Fatalf("tx listing: %d names", len(got))
	}
	must(t, tx.Abort(ctx))
}

func TestOpenHonoursEnvironment(t *testing.T) {
	s := newServer(t)
	t.Setenv("XENSTORED_PATH", s.SocketPath())
	if got := xenstore.SocketPath(); got != s.SocketPath() {
		t.Fatalf("SocketPath = %q", got)
	}
	if got := xenstore.DevicePaths(); !slices.Equal(got, []string{s.SocketPath()}) {
		t.Fatalf("DevicePaths = %q", got)
	}
	c, err := xenstore.Open(xenstore.WithLogger(slog.New(slog.DiscardHandler)))
	must(t, err)
	defer c.Close()
	if c.Name() != s.SocketPath() {
		t.Fatalf("Name = %q", c.Name())
	}
	must(t, c.Write(ctxT(t), "device-model/9/state", "running"))
	must(t, s.Wait(ctxT(t), "/local/domain/0/device-model/9/state", "running"))

	t.Setenv("XENSTORED_PATH", "")
	t.Setenv("XENSTORED_RUNDIR", "/run/elsewhere")
	if got := xenstore.SocketPath(); got != "/run/elsewhere/socket" {
		t.Fatalf("SocketPath with RUNDIR = %q", got)
	}
	t.Setenv("XENSTORED_RUNDIR", "")
	if got := xenstore.SocketPath(); got != xenstore.DefaultSocketPath {
		t.Fatalf("default SocketPath = %q", got)
	}

	missing := t.TempDir() + "/no-socket"
	t.Setenv("XENSTORED_PATH", missing)
	if _, err := xenstore.Open(); err == nil || !strings.Contains(err.Error(), missing) || !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("Open with missing socket: %v", err)
	}
}
