package migstream

import (
	"fmt"
	"io"
)

// FilterOptions configure Filter.
type FilterOptions struct {
	ElideOptions
	// Check applies the verifier's rules (Checker) to every item read.
	Check bool
	// Layer is where the input starts (LayerDetect by default).
	Layer Layer
	// OnItem, if set, sees every item after it was written (for logging the
	// handshake, say). It must not keep the item.
	OnItem func(it *Item)
}

// Filter copies the stream from src to dst, eliding pages as configured, one
// write per item (so nothing waits in a buffer while the sender waits for the
// receiver). It returns the Elider (for its set and counters) and the first
// error. Without a tracker and zero-page elision (ElideOptions.Zero) it is
// the identity on valid streams.
func Filter(dst io.Writer, src io.Reader, opt FilterOptions) (*Elider, error) {
	el := NewElider(opt.ElideOptions)
	st := el.Stats()
	d := NewDecoderAt(src, opt.Layer)
	var chk Checker
	for {
		it, err := d.Next()
		st.BytesIn.Store(d.Offset())
		if err == io.EOF {
			return el, nil
		}
		if err != nil {
			return el, err
		}
		if opt.Check {
			if err := chk.Check(it); err != nil {
				return el, err
			}
		}
		out, err := el.Process(it)
		if err != nil {
			return el, err
		}
		n, err := dst.Write(out)
		st.BytesOut.Add(int64(n))
		if err != nil {
			return el, fmt.Errorf("migstream: writing %s (offset %d): %w", it.Name(), it.Offset, err)
		}
		if opt.OnItem != nil {
			opt.OnItem(it)
		}
	}
}
