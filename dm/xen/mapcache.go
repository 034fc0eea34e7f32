package xen

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/xen-dm-go/xen-dm-go/dm/hw"
)

// Map-cache geometry: QEMU's MCACHE_BUCKET_SHIFT on 64-bit hosts.
const (
	BucketShift = 20                             // 1 MiB buckets
	BucketPages = 1 << (BucketShift - PageShift) // 256 pages
	bucketSize  = 1 << BucketShift
)

// MapCacheOptions tune a MapCache. The zero value gives the defaults.
type MapCacheOptions struct {
	// MaxBuckets bounds how many buckets stay mapped; past it, the least
	// recently used unreferenced bucket is unmapped. 0 means 32768 (32 GiB,
	// QEMU's MCACHE_MAX_SIZE).
	MaxBuckets int
	// PagedOutRetries is how many times an access to a paged-out frame
	// (ENOENT) maps it again before failing with ErrPagedOut; each retry
	// waits PagedOutDelay, doubling. 0 means 4; negative means no retry.
	// Paging in needs a pager to answer, so a pager's own goroutine should
	// not use a cache with retries.
	PagedOutRetries int
	// PagedOutDelay is the first retry delay. 0 means 100µs.
	PagedOutDelay time.Duration
	// Dirty, if set, is told about every frame WriteGPA wrote and every
	// frame a Pin was released as written (for XEN_DMOP_modified_memory
	// during live migration).
	Dirty hw.DirtyReporter
}

// MapCache is guest RAM of one domain mapped on demand in 1 MiB buckets of
// 256 pages, like QEMU's xen-mapcache. Each bucket is one MMAPBATCH_V2
// mapping with a per-page validity bitmap taken from its err[] array; a page
// that is not valid is never touched (it would SIGBUS), the access fails with
// a *PageError naming the pfn. Accesses hold a reference on their buckets
// while they copy; Pin holds one until Release, for long-lived DMA mappings;
// Invalidate unmaps every bucket with no reference. It implements
// hw.GuestMemory and is safe for concurrent use.
type MapCache struct {
	fm   ForeignMapper
	dom  Domid
	opts MapCacheOptions

	mu      sync.Mutex
	buckets map[uint64]*bucket // by gpa >> BucketShift
	tick    uint64
	closed  bool
}

type bucket struct {
	idx     uint64
	m       *ForeignMapping
	refs    atomic.Int32
	lastUse uint64 // mu
	dead    bool   // mu: removed from the map while referenced; unmap on last unref
}

var _ hw.GuestMemory = (*MapCache)(nil)

// NewMapCache returns an empty map cache of domain dom over fm (a *Privcmd,
// or a fake).
func NewMapCache(fm ForeignMapper, dom Domid, opts MapCacheOptions) *MapCache {
	if opts.MaxBuckets <= 0 {
		opts.MaxBuckets = 32768
	}
	if opts.PagedOutRetries == 0 {
		opts.PagedOutRetries = 4
	} else if opts.PagedOutRetries < 0 {
		opts.PagedOutRetries = 0
	}
	if opts.PagedOutDelay <= 0 {
		opts.PagedOutDelay = 100 * time.Microsecond
	}
	return &MapCache{fm: fm, dom: dom, opts: opts, buckets: map[uint64]*bucket{}}
}

// Domid is the domain whose memory this is.
func (c *MapCache) Domid() Domid { return c.dom }

// Buckets is the number of buckets currently mapped.
func (c *MapCache) Buckets() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.buckets)
}

// span is one bucket-contained piece of an access.
type span struct {
	b   *bucket
	off int // byte offset in the bucket
	n   int
}

// acquire references the buckets covering [gpa, gpa+n) after checking that
// every page in it is valid (mapping, retrying holes once and paged-out
// frames boundedly). On error nothing stays referenced.
func (c *MapCache) acquire(gpa, n uint64) ([]span, error) {
	if n == 0 {
		return nil, nil
	}
	if gpa+n < gpa {
		return nil, &PageError{Dom: c.dom, PFN: gpa >> PageShift, Err: unix.EFAULT}
	}
	if nb := (gpa+n-1)>>BucketShift - gpa>>BucketShift + 1; nb > uint64(c.opts.MaxBuckets) {
		return nil, &PageError{Dom: c.dom, PFN: gpa >> PageShift,
			Err: fmt.Errorf("access of %#x bytes spans %d buckets, more than the cache holds (%d): %w", n, nb, c.opts.MaxBuckets, unix.E2BIG)}
	}
	var spans []span
	c.mu.Lock()
	defer c.mu.Unlock()
	release := func() {
		for _, s := range spans {
			c.unrefLocked(s.b)
		}
	}
	if c.closed {
		return nil, &PageError{Dom: c.dom, PFN: gpa >> PageShift, Err: ErrClosed}
	}
	for cur, end := gpa, gpa+n; cur < end; {
		idx := cur >> BucketShift
		off := cur & (bucketSize - 1)
		ln := min(end-cur, bucketSize-off)
		b, fresh, err := c.bucketLocked(idx)
		if err != nil {
			release()
			return nil, err
		}
		b.refs.Add(1) // held across validateLocked, which may drop mu
		first := int(off >> PageShift)
		last := int((off + ln - 1) >> PageShift)
		if err := c.validateLocked(b, first, last-first+1, fresh); err != nil {
			c.unrefLocked(b)
			release()
			return nil, err
		}
		c.tick++
		b.lastUse = c.tick
		spans = append(spans, span{b: b, off: int(off), n: int(ln)})
		cur += ln
	}
	return spans, nil
}

// bucketLocked finds or maps bucket idx; fresh reports a new mapping.
func (c *MapCache) bucketLocked(idx uint64) (b *bucket, fresh bool, err error) {
	if b, ok := c.buckets[idx]; ok {
		return b, false, nil
	}
	if len(c.buckets) >= c.opts.MaxBuckets {
		c.evictLocked()
	}
	gfns := make([]uint64, BucketPages)
	for i := range gfns {
		gfns[i] = idx<<(BucketShift-PageShift) + uint64(i)
	}
	m, err := c.fm.MapForeign(c.dom, gfns, true)
	if err != nil {
		return nil, false, &PageError{Dom: c.dom, PFN: gfns[0], Err: err}
	}
	b = &bucket{idx: idx, m: m}
	c.buckets[idx] = b
	return b, true, nil
}

// validateLocked makes sure pages [first, first+n) of b are mapped. A
// bucket mapped earlier gets one retry of its failed pages (a hole may have
// been populated since); then, while a page is paged out (ENOENT), up to
// PagedOutRetries more, with growing delays. It never loops unboundedly.
func (c *MapCache) validateLocked(b *bucket, first, n int, fresh bool) error {
	bad := func() int {
		for i := first; i < first+n; i++ {
			if !b.m.Valid(i) {
				return i
			}
		}
		return -1
	}
	retry := func() (int, error) {
		if err := c.fm.RetryForeign(b.m, first, n); err != nil {
			return -1, err
		}
		return bad(), nil
	}
	i := bad()
	if i >= 0 && !fresh {
		var err error
		if i, err = retry(); err != nil {
			return &PageError{Dom: c.dom, PFN: b.m.GFNs[first], Err: err}
		}
	}
	delay := c.opts.PagedOutDelay
	for try := 0; i >= 0; try++ {
		if b.m.Errs[i] != unix.ENOENT || try >= c.opts.PagedOutRetries {
			return &PageError{Dom: c.dom, PFN: b.m.GFNs[i], Err: b.m.Errs[i]}
		}
		c.mu.Unlock() // let others work while the pager pages the frame in
		time.Sleep(delay)
		c.mu.Lock()
		delay *= 2
		if c.closed {
			return &PageError{Dom: c.dom, PFN: b.m.GFNs[i], Err: ErrClosed}
		}
		var err error
		if i, err = retry(); err != nil {
			return &PageError{Dom: c.dom, PFN: b.m.GFNs[first], Err: err}
		}
	}
	return nil
}

// evictLocked unmaps the least recently used unreferenced bucket.
func (c *MapCache) evictLocked() {
	var victim *bucket
	for _, b := range c.buckets {
		if b.refs.Load() == 0 && (victim == nil || b.lastUse < victim.lastUse) {
			victim = b
		}
	}
	if victim != nil {
		delete(c.buckets, victim.idx)
		c.fm.UnmapForeign(victim.m)
	}
}

func (c *MapCache) unrefLocked(b *bucket) {
	if b.refs.Add(-1) == 0 && b.dead {
		c.fm.UnmapForeign(b.m)
	}
}

func (c *MapCache) release(spans []span) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, s := range spans {
		c.unrefLocked(s.b)
	}
}

func (s span) bytes() []byte {
	return s.b.m.Mem[s.off : s.off+s.n : s.off+s.n]
}

// ReadGPA implements hw.GuestMemory. It crosses page and bucket boundaries;
// if any page is not accessible, nothing is read and the error is a
// *PageError (wrapping hw.ErrBadGPA) naming the first such pfn.
func (c *MapCache) ReadGPA(gpa uint64, p []byte) error {
	spans, err := c.acquire(gpa, uint64(len(p)))
	if err != nil {
		return err
	}
	o := 0
	for _, s := range spans {
		o += copy(p[o:], s.bytes())
	}
	c.release(spans)
	return nil
}

// WriteGPA implements hw.GuestMemory, like ReadGPA; nothing is written unless
// every page is accessible. Written frames are reported to Options.Dirty.
func (c *MapCache) WriteGPA(gpa uint64, p []byte) error {
	spans, err := c.acquire(gpa, uint64(len(p)))
	if err != nil {
		return err
	}
	o := 0
	for _, s := range spans {
		o += copy(s.bytes(), p[o:])
	}
	c.release(spans)
	c.markDirty(gpa, uint64(len(p)))
	return nil
}

func (c *MapCache) markDirty(gpa, n uint64) {
	if c.opts.Dirty == nil || n == 0 {
		return
	}
	first := gpa >> PageShift
	last := (gpa + n - 1) >> PageShift
	c.opts.Dirty.MarkDirty(first, last-first+1)
}

// Pin is a long-lived mapping of a guest range (for DMA), holding references
// on its buckets so Invalidate keeps them. Release it when done.
type Pin struct {
	c        *MapCache
	gpa, n   uint64
	spans    []span
	released atomic.Bool
}

// Pin maps [gpa, gpa+n) and keeps it mapped until Release. Like ReadGPA it
// fails with a *PageError if any page is not accessible.
func (c *MapCache) Pin(gpa, n uint64) (*Pin, error) {
	spans, err := c.acquire(gpa, n)
	if err != nil {
		return nil, err
	}
	return &Pin{c: c, gpa: gpa, n: n, spans: spans}, nil
}

// GPA is the first guest-physical address of the pin.
func (p *Pin) GPA() uint64 { return p.gpa }

// Len is the pinned length in bytes.
func (p *Pin) Len() uint64 { return p.n }

// Segments are the host views of the range, in order, split at bucket
// boundaries. They are valid until Release.
func (p *Pin) Segments() [][]byte {
	segs := make([][]byte, len(p.spans))
	for i, s := range p.spans {
		segs[i] = s.bytes()
	}
	return segs
}

// Release drops the pin. written is how many bytes from the start were
// written through it (as QEMU's address_space_unmap access_len); those frames
// are reported to Options.Dirty. Release is idempotent.
func (p *Pin) Release(written uint64) {
	if p.released.Swap(true) {
		return
	}
	p.c.release(p.spans)
	p.c.markDirty(p.gpa, min(written, p.n))
}

// Invalidate unmaps every bucket that no access or Pin references (what
// IOREQ_TYPE_INVALIDATE asks for after the guest gave memory back). It
// returns how many buckets stayed mapped because they are referenced; those
// are unmapped at their last release.
func (c *MapCache) Invalidate() (kept int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for idx, b := range c.buckets {
		if b.refs.Load() > 0 {
			kept++
			continue
		}
		delete(c.buckets, idx)
		c.fm.UnmapForeign(b.m)
	}
	return kept
}

// Close unmaps everything unreferenced and refuses further accesses; buckets
// still referenced by a Pin are unmapped when it is released. It returns an
// error if pins were outstanding.
func (c *MapCache) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil
	}
	c.closed = true
	pinned := 0
	var errs []error
	for idx, b := range c.buckets {
		delete(c.buckets, idx)
		if b.refs.Load() > 0 {
			b.dead = true
			pinned++
			continue
		}
		if err := c.fm.UnmapForeign(b.m); err != nil {
			errs = append(errs, err)
		}
	}
	if pinned > 0 {
		errs = append(errs, fmt.Errorf("xen: map cache of dom %d closed with %d pinned buckets", c.dom, pinned))
	}
	return errors.Join(errs...)
}
