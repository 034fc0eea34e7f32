package dm

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/xen-dm-go/xen-dm-go/dm/blk"
	"github.com/xen-dm-go/xen-dm-go/dm/devstate"
	"github.com/xen-dm-go/xen-dm-go/dm/paging"
	"github.com/xen-dm-go/xen-dm-go/dm/xen/xentest"
)

func withEagerPager(t *testing.T, path string) func(*Options) {
	return func(o *Options) {
		o.DeviceState = &DevState{Log: o.Log, PageRefs: EagerPageRefs(o.Log)}
		o.IncomingFile = incomingFrom(t, path)
	}
}

// stateWithRefs saves a's state and writes it again with refs in its
// PAGEREFS section, as the transport leaves it in qemu-resume.<domid>.
func stateWithRefs(t *testing.T, a *env, refs []blk.Entry) string {
	t.Helper()
	b, err := os.ReadFile(saveTo(t, a, true))
	if err != nil {
		t.Fatal(err)
	}
	st, err := devstate.Decode(b)
	if err != nil {
		t.Fatal(err)
	}
	st.PageRefs = refs
	enc, err := devstate.Encode(st)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "qemu-resume.7")
	if err := os.WriteFile(p, enc, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func diskRef(data []byte, pfn, block uint64) blk.Entry {
	return blk.Entry{PFN: pfn, Ref: blk.Ref{Disk: 0, Sector: 8 * block, Hash: blk.HashPage(data[block*4096 : (block+1)*4096])}}
}

// A state whose PAGEREFS names pages the transport elided loads with the
// eager filler: each page holds its disk block before the ioreq server is
// enabled, the tracker knows them again, and nothing is reported dirty.
func TestIncomingPageRefsFilled(t *testing.T) {
	img, data := diskImage(t)
	a := newEnv(t, envOpt{extra: stateArgv(img), opts: withDevState})
	driveDevices(t, a)
	var refs []blk.Entry
	for i := uint64(0); i < 16; i++ {
		refs = append(refs, diskRef(data, 0x100+i, 10+i))
	}
	refs = append(refs, diskRef(data, 0x200, 3), diskRef(data, 0x201, 3), diskRef(data, 0x3000, 255))
	path := stateWithRefs(t, a, refs)

	var enabledAtFill bool
	b := newEnv(t, envOpt{extra: stateArgv(img) + " -incoming fd:15", opts: func(o *Options) {
		withEagerPager(t, path)(o)
		fill := o.DeviceState.(*DevState).PageRefs
		p := o.Platform.(*testPlatform)
		o.DeviceState.(*DevState).PageRefs = func(ctx context.Context, m *Machine, r []blk.Entry) error {
			for _, c := range p.dm.CallsOf(xentest.OpSetIoreqServerState) {
				enabledAtFill = enabledAtFill || c.Args[1] == 1
			}
			return fill(ctx, m, r)
		}
	}})
	if enabledAtFill {
		t.Fatal("ioreq server enabled before the pages were filled")
	}
	ram := b.p.ram.Bytes()
	for _, r := range refs {
		blockNo := r.Sector / 8
		if !bytes.Equal(ram[r.PFN*4096:(r.PFN+1)*4096], data[blockNo*4096:(blockNo+1)*4096]) {
			t.Fatalf("pfn %#x does not hold block %d", r.PFN, blockNo)
		}
	}
	if !bytes.Equal(ram[0x110*4096:0x111*4096], make([]byte, 4096)) {
		t.Fatal("a page next to the references was written")
	}
	pfns := make([]uint64, len(refs))
	for i, r := range refs {
		pfns[i] = r.PFN
	}
	out, ok := make([]blk.Ref, len(refs)), make([]bool, len(refs))
	if n := b.c.Machine().Tracker.Lookup(pfns, out, ok); n != len(refs) {
		t.Fatalf("tracker knows %d of the %d filled pages", n, len(refs))
	}
	for i, r := range refs {
		if out[i].Disk != r.Disk || out[i].Sector != r.Sector || out[i].Hash != r.Hash {
			t.Fatalf("tracker entry of pfn %#x: %+v, want %+v", r.PFN, out[i], r.Ref)
		}
	}
	if m := b.p.dm.Modified(); len(m) != 0 {
		t.Fatalf("filled pages reported with modified_memory: %v", m)
	}
	if st := b.c.RunState(); st.Status != "running" || !b.server().Enabled() {
		t.Fatalf("restored: %+v, ioreq server enabled %v", st, b.server().Enabled())
	}
	diffStates(t, "restored", capture(b.c.Machine()), capture(a.c.Machine()))
}

// A reference the filler cannot satisfy exactly fails start-up before the
// ioreq server is enabled or readiness is announced.
func TestIncomingPageRefsRefused(t *testing.T) {
	img, data := diskImage(t)
	a := newEnv(t, envOpt{extra: stateArgv(img), opts: withDevState})
	good := diskRef(data, 0x100, 1)
	wrongHash := diskRef(data, 0x101, 2)
	wrongHash.Hash ^= 1
	for _, c := range []struct {
		name  string
		refs  []blk.Entry
		class error
		msg   string
	}{
		{"hash", []blk.Entry{good, wrongHash}, paging.ErrHashMismatch, "domid 7 pfn 0x101 disk 0 sector 16"},
		// The test domain has 64 MiB: pfn 0x8000 is 128 MiB in.
		{"pfn", []blk.Entry{good, diskRef(data, 0x8000, 3)}, paging.ErrBadPFN, "domid 7 pfn 0x8000 disk 0 sector 24"},
	} {
		t.Run(c.name, func(t *testing.T) {
			p := stateWithRefs(t, a, c.refs)
			if err := a.c.Cont(context.Background()); err != nil {
				t.Fatal(err)
			}
			e := newEnv(t, envOpt{noRun: true, extra: stateArgv(img) + " -incoming fd:15", opts: withEagerPager(t, p)})
			err := e.c.Start(context.Background())
			e.c.Teardown()
			if !errors.Is(err, c.class) || !strings.Contains(err.Error(), c.msg) || !strings.Contains(err.Error(), "-incoming fd:15") {
				t.Fatalf("Start: %v", err)
			}
			for _, call := range e.p.dm.CallsOf(xentest.OpSetIoreqServerState) {
				if call.Args[1] == 1 {
					t.Fatal("ioreq server enabled although the pages could not be filled")
				}
			}
			if _, ok := e.p.xs.Read(StatePath(testDom)); ok {
				t.Fatal("xenstore state written although the pages could not be filled")
			}
		})
	}
}

// Zero references (all-zero pages the transport elided) travel in the same
// state: the filler writes zeros over whatever the XALLOC page held, reads
// no disk for them, and does not seed them into the tracker.
func TestIncomingPageRefsZero(t *testing.T) {
	img, data := diskImage(t)
	a := newEnv(t, envOpt{extra: stateArgv(img), opts: withDevState})
	driveDevices(t, a)
	zero := func(pfn uint64) blk.Entry { return blk.Entry{PFN: pfn, Ref: blk.ZeroRef()} }
	refs := []blk.Entry{zero(0x80), zero(0x81), zero(0x82), diskRef(data, 0x100, 10), zero(0x101), diskRef(data, 0x102, 11), zero(0x3000)}
	path := stateWithRefs(t, a, refs)
	st, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if secs, err := devstate.Parse(st); err != nil || secs[len(secs)-1].ID != devstate.IDPageRefs || secs[len(secs)-1].Version != 2 {
		t.Fatalf("PAGEREFS with zero references: %v", err)
	}
	garbage := bytes.Repeat([]byte{0x5a}, 4096)
	b := newEnv(t, envOpt{extra: stateArgv(img) + " -incoming fd:15", opts: func(o *Options) {
		withEagerPager(t, path)(o)
		fill := o.DeviceState.(*DevState).PageRefs
		p := o.Platform.(*testPlatform)
		o.DeviceState.(*DevState).PageRefs = func(ctx context.Context, m *Machine, r []blk.Entry) error {
			// XALLOC pages hold whatever Xen's allocator returned.
			for _, ref := range r {
				copy(p.ram.Bytes()[ref.PFN*4096:], garbage)
			}
			copy(p.ram.Bytes()[0x83*4096:], garbage)
			return fill(ctx, m, r)
		}
	}})
	ram := b.p.ram.Bytes()
	for _, r := range refs {
		want := make([]byte, 4096)
		if !r.IsZeroPage() {
			want = data[r.Sector*512 : r.Sector*512+4096]
		}
		if !bytes.Equal(ram[r.PFN*4096:(r.PFN+1)*4096], want) {
			t.Fatalf("pfn %#x (%+v) not filled", r.PFN, r.Ref)
		}
	}
	if !bytes.Equal(ram[0x83*4096:0x84*4096], garbage) {
		t.Fatal("a page next to the zero references was written")
	}
	pfns := make([]uint64, len(refs))
	for i, r := range refs {
		pfns[i] = r.PFN
	}
	out, ok := make([]blk.Ref, len(refs)), make([]bool, len(refs))
	b.c.Machine().Tracker.Lookup(pfns, out, ok)
	for i, r := range refs {
		if ok[i] != !r.IsZeroPage() {
			t.Fatalf("pfn %#x tracked %v after the fill (%+v)", r.PFN, ok[i], r.Ref)
		}
	}
	if st := b.c.RunState(); st.Status != "running" || !b.server().Enabled() {
		t.Fatalf("restored: %+v, ioreq server enabled %v", st, b.server().Enabled())
	}
}
