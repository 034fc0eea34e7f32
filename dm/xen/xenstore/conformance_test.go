package xenstore_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/xen-dm-go/xen-dm-go/dm/xen/xenstore"
)

const labBase = "/local/domain/0/xen-dm-go-test"

func TestConformanceAgainstFake(t *testing.T) {
	s := newServer(t)
	runConformance(t, func(t *testing.T) *xenstore.Client {
		c, _ := dial(t, s)
		return c
	}, false)
}

func labCtx(t *testing.T) context.Context {
	// Generous: dom0 runs under TCG in the lab.
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func labNext(t *testing.T, w *xenstore.Watch) xenstore.Event {
	t.Helper()
	select {
	case ev, ok := <-w.Events():
		if !ok {
			t.Fatalf("watch %s closed", w.Path())
		}
		return ev
	case <-time.After(30 * time.Second):
		t.Fatalf("watch %s: no event", w.Path())
	}
	panic("unreachable")
}

// labExpect reads events until one for path arrives (xenstored may send
// spurious ones, e.g. for implicitly created parents).
func labExpect(t *testing.T, w *xenstore.Watch, path string) {
	t.Helper()
	for {
		if ev := labNext(t, w); ev.Path == path {
			return
		}
	}
}

// runConformance runs the same checks against any xenstored: the real one
// in the lab (TestRealXenstore, build tag xenlab) and the fake
// (TestConformanceAgainstFake), which keeps the fake honest. open returns a
// new connection each time it is called; xenbus adds checks through the
// xenbus device of the same store (dom0 only).
func runConformance(t *testing.T, open func(t *testing.T) *xenstore.Client, xenbus bool) {
	c := open(t)
	ctx := labCtx(t)
	t.Logf("connected to xenstored at %s", c.Name())
	if err := c.Rm(ctx, labBase); err != nil {
		t.Fatalf("cleaning %s: %v", labBase, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := c.Rm(ctx, labBase); err != nil && !errors.Is(err, xenstore.ErrConnClosed) {
			t.Errorf("cleanup: %v", err)
		}
	})

	t.Run("ReadWriteDirRm", func(t *testing.T) {
		p := labBase + "/rw"
		must(t, c.Write(ctx, p+"/a", "hello"))
		must(t, c.Write(ctx, p+"/bin", "x\x00y"))
		must(t, c.Mkdir(ctx, p+"/dir"))
		if v, err := c.Read(ctx, p+"/a"); err != nil || v != "hello" {
			t.Fatalf("Read = %q, %v", v, err)
		}
		if v, err := c.Read(ctx, p+"/bin"); err != nil || v != "x\x00y" {
			t.Fatalf("binary Read = %q, %v", v, err)
		}
		if v, err := c.Read(ctx, p+"/dir"); err != nil || v != "" {
			t.Fatalf("mkdir'ed node = %q, %v", v, err)
		}
		names, err := c.Directory(ctx, p)
		must(t, err)
		slices.Sort(names)
		if !slices.Equal(names, []string{"a", "bin", "dir"}) {
			t.Fatalf("Directory = %q", names)
		}
		must(t, c.Rm(ctx, p+"/a"))
		if _, err := c.Read(ctx, p+"/a"); !errors.Is(err, xenstore.ErrNotFound) {
			t.Fatalf("read after rm: %v", err)
		}
		must(t, c.Rm(ctx, p+"/a")) // missing node: OK
		if err := c.Rm(ctx, p+"/missing/child"); !errors.Is(err, xenstore.ErrNotFound) {
			t.Fatalf("rm below missing parent: %v", err)
		}
		if err := c.Write(ctx, p+"/bad path", "x"); !errors.Is(err, xenstore.ErrInvalid) {
			t.Fatalf("invalid path: %v", err)
		}
	})

	t.Run("RelativePathAndDomainPath", func(t *testing.T) {
		must(t, c.Write(ctx, "xen-dm-go-test/rel/state", "running"))
		if v, err := c.Read(ctx, labBase+"/rel/state"); err != nil || v != "running" {
			t.Fatalf("relative write landed as %q, %v", v, err)
		}
		if p, err := c.GetDomainPath(ctx, 0); err != nil || p != "/local/domain/0" {
			t.Fatalf("GetDomainPath(0) = %q, %v", p, err)
		}
	})

	t.Run("Watch", func(t *testing.T) {
		c2 := open(t)
		p := labBase + "/watch"
		w, err := c.Watch(ctx, p)
		must(t, err)
		if ev := labNext(t, w); ev.Path != p {
			t.Fatalf("initial event %+v", ev)
		}
		must(t, c2.Write(ctx, p+"/x", "1"))
		labExpect(t, w, p+"/x")
		must(t, c.Write(ctx, p, "2"))
		labExpect(t, w, p)
		must(t, c2.Rm(ctx, p))
		labExpect(t, w, p)
		rw, err := c.Watch(ctx, "xen-dm-go-test/watch")
		must(t, err)
		if ev := labNext(t, rw); ev.Path != "xen-dm-go-test/watch" {
			t.Fatalf("relative initial event %+v", ev)
		}
		must(t, c2.Write(ctx, p+"/y", "3"))
		labExpect(t, rw, "xen-dm-go-test/watch/y")
		must(t, c.Unwatch(ctx, w))
		must(t, c.Unwatch(ctx, rw))
		for range w.Events() {
		}
		if _, err := c.Watch(ctx, "@releaseDomain"); err != nil {
			t.Fatalf("special watch: %v", err)
		}
	})

	t.Run("Transaction", func(t *testing.T) {
		c2 := open(t)
		p := labBase + "/tx/key"
		must(t, c.Write(ctx, p, "0"))

		tx, err := c.Start(ctx)
		must(t, err)
		must(t, tx.Write(ctx, p, "1"))
		if v, _ := c2.Read(ctx, p); v != "0" {
			t.Fatalf("uncommitted write visible: %q", v)
		}
		must(t, tx.Commit(ctx))
		if v, _ := c2.Read(ctx, p); v != "1" {
			t.Fatalf("committed value %q", v)
		}

		tx, err = c.Start(ctx)
		must(t, err)
		must(t, tx.Write(ctx, p, "aborted"))
		must(t, tx.Abort(ctx))
		if v, _ := c2.Read(ctx, p); v != "1" {
			t.Fatalf("aborted write applied: %q", v)
		}

		tx, err = c.Start(ctx)
		must(t, err)
		_, err = tx.Read(ctx, p)
		must(t, err)
		must(t, c2.Write(ctx, p, "other"))
		must(t, tx.Write(ctx, p, "mine"))
		if err := tx.Commit(ctx); !errors.Is(err, xenstore.ErrAgain) {
			t.Fatalf("conflicting commit: %v", err)
		}
		if v, _ := c2.Read(ctx, p); v != "other" {
			t.Fatalf("conflicting commit applied: %q", v)
		}

		n := 0
		must(t, c.Transact(ctx, func(tx *xenstore.Tx) error {
			n++
			v, err := tx.Read(ctx, p)
			if err != nil {
				return err
			}
			if n == 1 {
				must(t, c2.Write(ctx, p, "meddled"))
			}
			return tx.Write(ctx, p, v+"+1")
		}))
		if v, _ := c2.Read(ctx, p); n < 2 || v != "meddled+1" {
			t.Fatalf("Transact: %d attempts, value %q", n, v)
		}
	})

	t.Run("Permissions", func(t *testing.T) {
		p := labBase + "/perms"
		must(t, c.Write(ctx, p, "v"))
		set := []xenstore.Perm{{Domid: 0, Access: xenstore.AccessNone}, {Domid: 5, Access: xenstore.AccessRead}}
		must(t, c.SetPermissions(ctx, p, set))
		got, err := c.GetPermissions(ctx, p)
		must(t, err)
		if !slices.Equal(got, set) {
			t.Fatalf("GetPermissions = %v, want %v", got, set)
		}
		set = []xenstore.Perm{{Domid: 0, Access: xenstore.AccessBoth}}
		must(t, c.SetPermissions(ctx, p, set))
		if got, err := c.GetPermissions(ctx, p); err != nil || !slices.Equal(got, set) {
			t.Fatalf("GetPermissions = %v, %v", got, err)
		}
	})

	t.Run("LongDirectory", func(t *testing.T) {
		// More than XENSTORE_PAYLOAD_MAX of names: XS_DIRECTORY says E2BIG
		// and the client must page with XS_DIRECTORY_PART.
		p := labBase + "/long"
		var want []string
		must(t, c.Transact(ctx, func(tx *xenstore.Tx) error {
			want = want[:0]
			for i := range 300 {
				n := fmt.Sprintf("a-rather-long-child-name-%03d", i)
				want = append(want, n)
				if err := tx.Write(ctx, p+"/"+n, ""); err != nil {
					return err
				}
			}
			return nil
		}))
		got, err := c.Directory(ctx, p)
		must(t, err)
		slices.Sort(got)
		if !slices.Equal(got, want) {
			t.Fatalf("got %d names, want %d", len(got), len(want))
		}
	})

	t.Run("Concurrent", func(t *testing.T) {
		var wg sync.WaitGroup
		errs := make(chan error, 8)
		for g := range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range 20 {
					p := fmt.Sprintf("%s/conc/%d/%d", labBase, g, i)
					if err := c.Write(ctx, p, p); err != nil {
						errs <- err
						return
					}
					if v, err := c.Read(ctx, p); err != nil || v != p {
						errs <- fmt.Errorf("read %s: %q %v", p, v, err)
						return
					}
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
	})

	t.Run("PayloadTooBig", func(t *testing.T) {
		big := make([]byte, xenstore.PayloadMax)
		if err := c.Write(ctx, labBase+"/big", string(big)); !errors.Is(err, xenstore.ErrPayloadTooBig) {
			t.Fatalf("big write: %v", err)
		}
		if _, err := c.GetDomainPath(ctx, 0); err != nil {
			t.Fatalf("connection hurt: %v", err)
		}
	})

	t.Run("XenbusDevice", func(t *testing.T) {
		if !xenbus {
			t.Skip("not a dom0 store")
		}
		if _, err := os.Stat(xenstore.XenbusDevicePath); err != nil {
			t.Skipf("no %s: %v", xenstore.XenbusDevicePath, err)
		}
		d, err := xenstore.Dial(xenstore.XenbusDevicePath)
		if err != nil {
			t.Fatal(err)
		}
		defer d.Close()
		p := labBase + "/xenbus"
		must(t, d.Write(ctx, p, "via-device"))
		if v, err := c.Read(ctx, p); err != nil || v != "via-device" {
			t.Fatalf("socket sees %q, %v", v, err)
		}
		w, err := d.Watch(ctx, p)
		must(t, err)
		labExpect(t, w, p)
		must(t, c.Write(ctx, p, "again"))
		labExpect(t, w, p)
		tx, err := d.Start(ctx)
		must(t, err)
		must(t, tx.Write(ctx, p, "tx"))
		must(t, tx.Commit(ctx))
		if v, _ := c.Read(ctx, p); v != "tx" {
			t.Fatalf("after device transaction: %q", v)
		}
		must(t, d.Unwatch(ctx, w))
	})
}
