package migstream

import (
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync"
	"time"
)

// RateWriter limits the bytes per second written through it (a link of that
// speed, for benchmarks). It sleeps before each chunk of at most 64 KiB until
// the chunk fits the budget since the first write.
type RateWriter struct {
	W     io.Writer
	BPS   float64 // bytes per second; ≤ 0 means unlimited
	start time.Time
	total float64
	sleep func(time.Duration)
}

const rateChunk = 64 << 10

func (r *RateWriter) Write(p []byte) (int, error) {
	if r.BPS <= 0 {
		return r.W.Write(p)
	}
	if r.start.IsZero() {
		r.start = time.Now()
	}
	if r.sleep == nil {
		r.sleep = time.Sleep
	}
	done := 0
	for done < len(p) {
		n := min(len(p)-done, rateChunk)
		r.total += float64(n)
		due := r.start.Add(time.Duration(r.total / r.BPS * float64(time.Second)))
		if d := time.Until(due); d > 0 {
			r.sleep(d)
		}
		m, err := r.W.Write(p[done : done+n])
		done += m
		if err != nil {
			return done, err
		}
	}
	return done, nil
}

// ParseRate parses a rate: a number with an optional SI (k, M, G, T) or
// binary (Ki, Mi, Gi, Ti) prefix and an optional unit: B (bytes, the
// default) or bit/b (bits); "/s" may follow. "125M", "1Gbit", "10MiB/s".
func ParseRate(s string) (float64, error) {
	t := strings.TrimSuffix(strings.TrimSpace(s), "/s")
	if t == "" || t == "0" {
		return 0, nil
	}
	unit := 1.0
	switch {
	case strings.HasSuffix(t, "bit"):
		unit, t = 1.0/8, strings.TrimSuffix(t, "bit")
	case strings.HasSuffix(t, "b"):
		unit, t = 1.0/8, strings.TrimSuffix(t, "b")
	case strings.HasSuffix(t, "B"):
		t = strings.TrimSuffix(t, "B")
	}
	mult := 1.0
	for _, p := range []struct {
		s string
		m float64
	}{{"Ki", 1 << 10}, {"Mi", 1 << 20}, {"Gi", 1 << 30}, {"Ti", 1 << 40}, {"k", 1e3}, {"K", 1e3}, {"M", 1e6}, {"G", 1e9}, {"T", 1e12}} {
		if strings.HasSuffix(t, p.s) {
			mult, t = p.m, strings.TrimSuffix(t, p.s)
			break
		}
	}
	v, err := strconv.ParseFloat(t, 64)
	if err != nil || v < 0 {
		return 0, fmt.Errorf("bad rate %q (want e.g. 125M, 1Gbit, 10MiB/s)", s)
	}
	return v * mult * unit, nil
}

// countWriter counts bytes written.
type countWriter struct {
	w io.Writer
	n *int64
}

func (c countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	*c.n += int64(n)
	return n, err
}

// handshake follows the migrate messages on one direction of the link
// without holding bytes back, and reports each one recognised.
type handshake struct {
	tokens []string // expected in order; "\x00status" stands for one status byte
	pos    int      // bytes of tokens[0] matched
	lost   bool
	report func(msg string)
}

const statusToken = "\x00status"

// Back channel (receiver → sender): banner, ready, report + status, and on
// failure the receiver's permission for the sender to resume.
func newBackHandshake(report func(string)) *handshake {
	return &handshake{tokens: []string{MsgBanner, MsgReady, MsgReport, statusToken, MsgGo}, report: report}
}

// Feed consumes bytes seen on the link.
func (h *handshake) Feed(p []byte) {
	for len(p) > 0 && !h.lost && len(h.tokens) > 0 {
		tok := h.tokens[0]
		if tok == statusToken {
			h.report(fmt.Sprintf("status %d", int8(p[0])))
			p = p[1:]
			h.tokens = h.tokens[1:]
			continue
		}
		n := min(len(p), len(tok)-h.pos)
		if string(p[:n]) != tok[h.pos:h.pos+n] {
			h.lost = true
			h.report("unrecognised data; no longer following the handshake")
			return
		}
		p = p[n:]
		h.pos += n
		if h.pos == len(tok) {
			h.report(MessageName(tok))
			h.tokens, h.pos = h.tokens[1:], 0
		}
	}
}

// MessageName describes a handshake message for logs.
func MessageName(msg string) string {
	switch msg {
	case MsgBanner:
		return "banner (receiver ready)"
	case MsgReady:
		return "domain received, ready to unpause"
	case MsgGo:
		return "domain is yours, cleared to unpause"
	case MsgReport:
		return "unpause report"
	}
	return fmt.Sprintf("%q", msg)
}

// StatsLine is the final JSON line on stderr.
type StatsLine struct {
	Cmd         string  `json:"cmd"`
	OK          bool    `json:"ok"`
	Error       string  `json:"error,omitempty"`
	Seconds     float64 `json:"seconds"`
	BytesIn     int64   `json:"bytes_in"`
	BytesOut    int64   `json:"bytes_out"`
	Records     int64   `json:"records"`
	PageRecords int64   `json:"page_records"`
	Pages       int64   `json:"pages"`
	DataPages   int64   `json:"data_pages"`
	// Elided counts every entry rewritten to XALLOC: disk copies plus
	// all-zero pages (ElidedDisk + ElidedZero).
	Elided     int64 `json:"pages_elided"`
	ElidedDisk int64 `json:"pages_elided_disk"`
	ElidedZero int64 `json:"pages_elided_zero"`
	// ElidedFinal is the size of the elided set at the end (the page
	// references carried): disk plus zero references.
	ElidedFinal     int64   `json:"elided_final"`
	ElidedFinalDisk int64   `json:"elided_final_disk"`
	ElidedFinalZero int64   `json:"elided_final_zero"`
	LookedUp        int64   `json:"looked_up"`
	Hits            int64   `json:"tracker_hits"`
	HashMismatch    int64   `json:"hash_mismatch"`
	InMBps          float64 `json:"in_MBps"`
	OutMBps         float64 `json:"out_MBps"`
	Tracker         string  `json:"tracker,omitempty"`
	TrackerError    string  `json:"tracker_error,omitempty"`
	ExitCode        int     `json:"exit_code"`
}

func statsLine(cmd string, st *Stats, d time.Duration) StatsLine {
	s := StatsLine{
		Cmd: cmd, Seconds: d.Seconds(),
		BytesIn: st.BytesIn.Load(), BytesOut: st.BytesOut.Load(),
		Records: st.Records.Load(), PageRecords: st.PageRecords.Load(),
		Pages: st.Pages.Load(), DataPages: st.DataPages.Load(),
		Elided: st.Elided.Load(), ElidedDisk: st.ElidedDisk.Load(), ElidedZero: st.ElidedZero.Load(),
		ElidedFinal: st.ElidedFinal.Load(), ElidedFinalDisk: st.ElidedFinalDisk.Load(), ElidedFinalZero: st.ElidedFinalZero.Load(),
		LookedUp: st.Looked.Load(), Hits: st.Hits.Load(), HashMismatch: st.HashMismatch.Load(),
	}
	if sec := d.Seconds(); sec > 0 {
		s.InMBps = float64(s.BytesIn) / sec / 1e6
		s.OutMBps = float64(s.BytesOut) / sec / 1e6
	}
	return s
}

func (s StatsLine) write(w io.Writer) {
	b, _ := json.Marshal(s)
	fmt.Fprintf(w, "%s\n", b)
}

// finish records the outcome of a transport command (the child's exit code,
// forward, back-channel and wait errors), writes the line and returns the
// command's exit status: the child's, or 1 if it succeeded but we did not.
func (s StatsLine) finish(w io.Writer, code int, fwd, back, wait error) int {
	s.ExitCode = code
	switch {
	case fwd != nil:
		s.Error = fwd.Error()
	case back != nil:
		s.Error = "back channel: " + back.Error()
	case wait != nil:
		s.Error = wait.Error()
	}
	s.OK = s.Error == "" && code == 0
	s.write(w)
	if s.Error != "" && code == 0 {
		return 1
	}
	return code
}

// logger serialises lines to stderr.
type logger struct {
	mu     sync.Mutex
	w      io.Writer
	prefix string
}

func (l *logger) Printf(format string, args ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	fmt.Fprintf(l.w, l.prefix+format+"\n", args...)
}

// progress prints a line every interval until stop is closed.
func progress(l *logger, st *Stats, every time.Duration, stop <-chan struct{}, done chan<- struct{}) {
	defer close(done)
	if every <= 0 {
		<-stop
		return
	}
	t := time.NewTicker(every)
	defer t.Stop()
	start := time.Now()
	lastT, lastIn := start, int64(0)
	for {
		select {
		case <-stop:
			return
		case now := <-t.C:
			in, out := st.BytesIn.Load(), st.BytesOut.Load()
			rate := float64(in-lastIn) / now.Sub(lastT).Seconds()
			lastT, lastIn = now, in
			pages, el := st.Pages.Load(), st.Elided.Load()
			l.Printf("%.1fs in %s out %s (%.1f%%) pages %d elided %d (%.1f%%: disk %d, zero %d) %s/s",
				now.Sub(start).Seconds(), human(in), human(out), pct(out, in), pages, el, pct(el, pages),
				st.ElidedDisk.Load(), st.ElidedZero.Load(), human(int64(rate)))
		}
	}
}

func pct(a, b int64) float64 {
	if b == 0 {
		return 0
	}
	return 100 * float64(a) / float64(b)
}

func human(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	f, i := float64(n), 0
	for f >= unit && i < 4 {
		f /= unit
		i++
	}
	return fmt.Sprintf("%.2f %ciB", f, "KMGT"[i-1])
}
