package migstream

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os/exec"
	"regexp"
	"strings"
	"sync/atomic"
	"time"

	"github.com/xen-dm-go/xen-dm-go/dm/blk"
)

// DefaultRunDir is where the device model serves its tracker socket
// (blk.TrackerSocketPath).
const DefaultRunDir = "/var/run/xen"

// Preamble of the TCP link: one line, then the stream. The tokens are the
// arguments for xl on the receiving side, from the whitelist in receiveArgOK.
const preambleMagic = "XEN-DM-GO-MIGRATE 1"

const sendUsage = `usage: xen-dm-go migrate-send [flags] [--] [ARGS...]

Carries an xl migration stream from stdin to a receiver, rewriting pages that
are exact copies of tracked disk blocks, and all-zero pages, into data-less
XALLOC entries (the destination's xen-dm-go fills them before the guest runs),
and passes the receiver's replies (the back channel) to stdout unchanged.
Both need the domain's device model to be xen-dm-go (only it can fill the
pages): without a reachable tracker at the start the stream passes unchanged
(--require-tracker makes that an error); --no-elide always sends it unchanged.

As xl's transport (xl runs "exec <-s value> <host> xl … migrate-receive …",
so ARGS are the host and the receiver's xl command line):
  xl migrate -s "xen-dm-go migrate-send --domid D --ssh ssh --" dom host
  xl migrate -s "xen-dm-go migrate-send --domid D --connect 7000 --" dom host
  xl migrate -s "xen-dm-go migrate-send --domid D --local --" dom localhost
As a pipeline (xl migrate -s "" runs the "host" argument as the command):
  xl migrate -s "" dom "xen-dm-go migrate-send --domid D -- ssh host xl migrate-receive"
  xl migrate -s "" dom "xen-dm-go migrate-send --domid D --connect host:7000"
  xl migrate -s "" dom "xen-dm-go migrate-send --domid D -- xl migrate-receive"

Link modes: --connect [HOST:]PORT (TCP to "xen-dm-go migrate-receive --listen";
HOST defaults to the first ARG), --ssh CMD (runs CMD ARGS...), --local (drops
the first ARG, the host, and runs the rest here), otherwise ARGS is the command.
`

// What a TCP sender may ask the receiving xl to run: xl's global flags,
// migrate-receive, its flags (xl_migrate.c main_migrate's rune).
var (
	xlGlobalArgOK  = regexp.MustCompile(`^(-t|-T|-v+)$`)
	receiveArgOK   = regexp.MustCompile(`^(-e|-d|-p|-F)$`)
	receiveCommand = "migrate-receive"
)

// checkReceiverArgs validates xl arguments: [global flags] migrate-receive [flags].
func checkReceiverArgs(tokens []string) error {
	i := 0
	for i < len(tokens) && xlGlobalArgOK.MatchString(tokens[i]) {
		i++
	}
	if i == len(tokens) || tokens[i] != receiveCommand {
		return fmt.Errorf("xl arguments %q: want [-t] [-T] [-v…] migrate-receive [-e] [-d] [-p] [-F]", tokens)
	}
	for _, t := range tokens[i+1:] {
		if !receiveArgOK.MatchString(t) {
			return fmt.Errorf("xl arguments %q: %q not allowed", tokens, t)
		}
	}
	return nil
}

// SendMain is `xen-dm-go migrate-send`. It returns the exit status.
func SendMain(args []string, stdin io.Reader, stdout io.Writer, stderr io.Writer) int {
	lg := &logger{w: stderr, prefix: "xen-dm-go migrate-send: "}
	fs := flag.NewFlagSet("migrate-send", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, sendUsage, "\nflags:\n"); fs.PrintDefaults() }
	domid := fs.Int("domid", -1, "domain id: the tracker socket is `D`'s in --run-dir")
	runDir := fs.String("run-dir", DefaultRunDir, "directory of the device model's tracker socket")
	trackerPath := fs.String("tracker", "", "tracker socket `path` (overrides --domid)")
	requireTracker := fs.Bool("require-tracker", false, "fail instead of sending the stream unchanged when the tracker is unreachable")
	noElide := fs.Bool("no-elide", false, "send the stream unchanged (still parsed): no disk copies, no zero pages elided")
	raw := fs.Bool("raw", false, "copy bytes without parsing (baseline)")
	debug := fs.Bool("debug", false, "pass pages unchanged after VERIFY (xl migrate --debug; implied by -d in ARGS)")
	connect := fs.String("connect", "", "TCP link to `[HOST:]PORT`")
	sshCmd := fs.String("ssh", "", "run `CMD` ARGS... (e.g. \"ssh\" or \"ssh -p 2222\")")
	local := fs.Bool("local", false, "drop the first ARG (the host) and run the rest locally")
	rateS := fs.String("rate", "", "limit the link to `RATE` (e.g. 125M, 1Gbit, 10MiB/s)")
	every := fs.Duration("progress", time.Second, "progress line interval on stderr (0: none)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	rest := fs.Args()
	rate, err := ParseRate(*rateS)
	if err != nil {
		lg.Printf("%v", err)
		return 2
	}
	xlArgs, rxDebug := receiverArgs(rest)
	if rxDebug && !*debug {
		*debug = true
		lg.Printf("debug mode (migrate-receive -d): pages after VERIFY pass unchanged")
	}

	// The tracker.
	var tr Tracker
	var trackerDesc, trackerErr string
	if !*noElide && !*raw {
		path := *trackerPath
		if path == "" && *domid >= 0 {
			path = blk.TrackerSocketPath(*runDir, uint32(*domid))
		}
		if path == "" {
			trackerErr = "no --domid or --tracker"
		} else if c, err := blk.DialTracker(path); err != nil {
			trackerErr = err.Error()
		} else {
			defer c.Close()
			tr, trackerDesc = c, path
		}
		if tr == nil {
			if *requireTracker {
				lg.Printf("tracker: %s (--require-tracker)", trackerErr)
				closeIfCloser(stdout)
				return 1
			}
			lg.Printf("tracker: %s; sending pages unchanged (no xen-dm-go device model to fill them)", trackerErr)
		}
	}

	// The link.
	var ln *link
	switch {
	case *connect != "":
		addr := *connect
		if !strings.Contains(addr, ":") {
			if len(rest) == 0 {
				lg.Printf("--connect %s: no host (give HOST:PORT or the host as first argument)", addr)
				return 2
			}
			addr = net.JoinHostPort(rest[0], addr)
		}
		tokens := xlArgs
		if len(tokens) == 0 {
			tokens = []string{receiveCommand}
		}
		if err = checkReceiverArgs(tokens); err == nil {
			ln, err = dialLink(addr, tokens)
		}
	case *sshCmd != "":
		if len(rest) == 0 {
			lg.Printf("--ssh needs the host and command as arguments")
			return 2
		}
		ln, err = execLink(append(strings.Fields(*sshCmd), rest...), stderr)
	case *local:
		if len(rest) < 2 {
			lg.Printf("--local needs the host and the command as arguments")
			return 2
		}
		ln, err = execLink(rest[1:], stderr)
	default:
		if len(rest) == 0 {
			fs.Usage()
			return 2
		}
		ln, err = execLink(rest, stderr)
	}
	if err != nil {
		lg.Printf("%v", err)
		closeIfCloser(stdout)
		return 1
	}

	st := new(Stats)
	start := time.Now()
	stop, pdone := make(chan struct{}), make(chan struct{})
	go progress(lg, st, *every, stop, pdone)

	backDone := make(chan error, 1)
	go func() {
		hs := newBackHandshake(func(m string) { lg.Printf("receiver: %s", m) })
		err := pump(stdout, ln.r, hs.Feed)
		closeIfCloser(stdout) // xl must see the receiver go away
		backDone <- err
	}()

	var fw io.Writer = ln.w
	if rate > 0 {
		fw = &RateWriter{W: ln.w, BPS: rate}
	}
	var ferr error
	var el *Elider
	if *raw {
		ferr = rawCopy(fw, stdin, st)
	} else {
		el, ferr = Filter(fw, stdin, FilterOptions{
			// Zero pages too only when the tracker answered: its presence is what
			// says the destination's device model is xen-dm-go, which fills them.
			ElideOptions: ElideOptions{Tracker: tr, Zero: tr != nil, Debug: *debug, Stats: st, Logf: lg.Printf},
			OnItem: func(it *Item) {
				switch {
				case it.Kind == KindMessage:
					lg.Printf("sender: %s", MessageName(it.Msg))
				case it.IsLibxl(LibxlEnd):
					lg.Printf("stream complete: %s in, %s out, %d of %d pages elided (disk %d, zero %d), %d references carried (disk %d, zero %d)",
						human(st.BytesIn.Load()), human(st.BytesOut.Load()), st.Elided.Load(), st.Pages.Load(),
						st.ElidedDisk.Load(), st.ElidedZero.Load(), st.ElidedFinal.Load(), st.ElidedFinalDisk.Load(), st.ElidedFinalZero.Load())
				}
			},
		})
	}
	ln.w.Close()
	if ferr != nil {
		lg.Printf("%v", ferr)
		t := time.AfterFunc(5*time.Second, ln.abort)
		defer t.Stop()
	}
	berr := <-backDone
	code, werr := ln.wait()
	close(stop)
	<-pdone

	sl := statsLine("migrate-send", st, time.Since(start))
	sl.Tracker, sl.TrackerError = trackerDesc, trackerErr
	if el != nil && el.TrackerErr() != nil {
		sl.TrackerError = el.TrackerErr().Error()
	}
	return sl.finish(stderr, code, ferr, berr, werr)
}

// receiverArgs finds the receiver's xl arguments in ARGS (xl's rune: "host
// xl [-t] [-T] [-v…] migrate-receive [-e] [-d] [-p]") and whether -d (xl
// migrate --debug) is among them.
func receiverArgs(args []string) (xlArgs []string, debug bool) {
	mr := -1
	for i, a := range args {
		if a == receiveCommand {
			mr = i
			break
		}
	}
	if mr < 0 {
		return nil, false
	}
	lo := mr
	for lo > 0 && xlGlobalArgOK.MatchString(args[lo-1]) {
		lo--
	}
	hi := mr + 1
	for hi < len(args) && receiveArgOK.MatchString(args[hi]) {
		if args[hi] == "-d" {
			debug = true
		}
		hi++
	}
	return args[lo:hi], debug
}

// link is the sender's or receiver's connection to the other side.
type link struct {
	w     io.WriteCloser // forward; Close half-closes
	r     io.Reader      // back channel
	wait  func() (int, error)
	abort func()
}

func execLink(argv []string, stderr io.Writer) (*link, error) {
	if len(argv) == 0 {
		return nil, errors.New("no command to run")
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stderr = stderr
	w, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	r, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %q: %w", argv, err)
	}
	return &link{w: w, r: r,
		wait: func() (int, error) {
			err := cmd.Wait()
			var ee *exec.ExitError
			if errors.As(err, &ee) {
				return max(ee.ExitCode(), 1), nil
			}
			return 0, err
		},
		abort: func() { cmd.Process.Kill() },
	}, nil
}

type halfCloser struct{ *net.TCPConn }

func (h halfCloser) Close() error { return h.CloseWrite() }

func dialLink(addr string, tokens []string) (*link, error) {
	c, err := net.DialTimeout("tcp", addr, 30*time.Second)
	if err != nil {
		return nil, err
	}
	tc := c.(*net.TCPConn)
	if _, err := fmt.Fprintf(tc, "%s %s\n", preambleMagic, strings.Join(tokens, " ")); err != nil {
		tc.Close()
		return nil, err
	}
	return &link{w: halfCloser{tc}, r: tc,
		wait:  func() (int, error) { return 0, tc.Close() },
		abort: func() { tc.Close() },
	}, nil
}

// pump copies r to w until EOF, showing each chunk to see after writing it.
func pump(w io.Writer, r io.Reader, see func([]byte)) error {
	buf := make([]byte, 4096)
	for {
		n, err := r.Read(buf)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				return werr
			}
			if see != nil {
				see(buf[:n])
			}
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

func rawCopy(w io.Writer, r io.Reader, st *Stats) error {
	buf := make([]byte, 1<<20)
	for {
		n, err := r.Read(buf)
		if n > 0 {
			st.BytesIn.Add(int64(n))
			m, werr := w.Write(buf[:n])
			st.BytesOut.Add(int64(m))
			if werr != nil {
				return werr
			}
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

func closeIfCloser(w io.Writer) {
	if c, ok := w.(io.Closer); ok {
		c.Close()
	}
}

const receiveUsage = `usage: xen-dm-go migrate-receive --listen [HOST]:PORT [flags]
       xen-dm-go migrate-receive [flags] [--] [COMMAND ARGS...]

With --listen, accepts one connection from "xen-dm-go migrate-send --connect",
runs "<--xl> <the sender's xl arguments>" (by default "xl migrate-receive")
with the stream as its stdin and its stdout as the back channel, and exits
with its status. Without --listen, the link is stdin/stdout and COMMAND
(default "xl migrate-receive") is run. The link is not authenticated: use it
on a trusted migration network, or use --ssh on the sending side.
`

// ReceiveMain is `xen-dm-go migrate-receive`. It returns the exit status.
func ReceiveMain(args []string, stdin io.Reader, stdout io.Writer, stderr io.Writer) int {
	lg := &logger{w: stderr, prefix: "xen-dm-go migrate-receive: "}
	fs := flag.NewFlagSet("migrate-receive", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, receiveUsage, "\nflags:\n"); fs.PrintDefaults() }
	listen := fs.String("listen", "", "accept one TCP connection on `[HOST]:PORT`")
	xlCmd := fs.String("xl", "xl", "`command` run as xl (split at spaces)")
	check := fs.Bool("check", false, "also apply verify-stream-v2's rules; abort the receive on a violation")
	raw := fs.Bool("raw", false, "copy bytes without parsing")
	every := fs.Duration("progress", 0, "progress line interval on stderr (0: none)")
	timeout := fs.Duration("accept-timeout", 0, "give up if no sender connects in `D` (0: wait forever)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	rest := fs.Args()

	var src io.Reader = stdin
	var back io.Writer = stdout
	var argv []string
	var conn *net.TCPConn
	if *listen != "" {
		if len(rest) != 0 {
			lg.Printf("--listen takes no command (the sender names xl's arguments)")
			return 2
		}
		l, err := net.Listen("tcp", *listen)
		if err != nil {
			lg.Printf("%v", err)
			return 1
		}
		lg.Printf("listening on %s", l.Addr())
		if *timeout > 0 {
			l.(*net.TCPListener).SetDeadline(time.Now().Add(*timeout))
		}
		c, err := l.Accept()
		l.Close()
		if err != nil {
			lg.Printf("%v", err)
			return 1
		}
		conn = c.(*net.TCPConn)
		defer conn.Close()
		lg.Printf("connection from %s", conn.RemoteAddr())
		br := bufio.NewReaderSize(conn, 64<<10)
		tokens, err := readPreamble(conn, br)
		if err != nil {
			lg.Printf("%v", err)
			return 1
		}
		argv = append(strings.Fields(*xlCmd), tokens...)
		src, back = br, conn
	} else {
		argv = rest
		if len(argv) == 0 {
			argv = append(strings.Fields(*xlCmd), "migrate-receive")
		}
	}
	ln, err := execLink(argv, stderr)
	if err != nil {
		lg.Printf("%v", err)
		return 1
	}
	lg.Printf("running %q", argv)

	st := new(Stats)
	start := time.Now()
	stop, pdone := make(chan struct{}), make(chan struct{})
	go progress(lg, st, *every, stop, pdone)

	var closing atomic.Bool
	fwdDone := make(chan error, 1)
	go func() {
		var err error
		if *raw {
			err = rawCopy(ln.w, src, st)
		} else {
			_, err = Filter(ln.w, src, FilterOptions{Check: *check, ElideOptions: ElideOptions{Stats: st},
				OnItem: func(it *Item) {
					if it.Kind == KindMessage {
						lg.Printf("sender: %s", MessageName(it.Msg))
					}
				}})
		}
		ln.w.Close()
		if err != nil && !closing.Load() {
			lg.Printf("%v", err)
		} else {
			err = nil
		}
		fwdDone <- err
	}()
	hs := newBackHandshake(func(m string) { lg.Printf("xl: %s", m) })
	berr := pump(back, ln.r, hs.Feed)
	if conn != nil {
		conn.CloseWrite()
	} else {
		closeIfCloser(stdout)
	}
	code, werr := ln.wait()
	// The sender closes its side once its xl is done; give it a moment.
	var ferr error
	select {
	case ferr = <-fwdDone:
	case <-time.After(5 * time.Second):
		closing.Store(true)
		if conn != nil {
			conn.Close()
		}
		select {
		case ferr = <-fwdDone:
		case <-time.After(time.Second):
		}
	}
	close(stop)
	<-pdone
	sl := statsLine("migrate-receive", st, time.Since(start))
	return sl.finish(stderr, code, ferr, berr, werr)
}

func readPreamble(conn net.Conn, br *bufio.Reader) ([]string, error) {
	conn.SetReadDeadline(time.Now().Add(30 * time.Second))
	defer conn.SetReadDeadline(time.Time{})
	var line []byte
	for {
		frag, isPrefix, err := br.ReadLine()
		if err != nil {
			return nil, fmt.Errorf("reading the sender's preamble: %w", err)
		}
		line = append(line, frag...)
		if len(line) > 1024 {
			return nil, errors.New("sender's preamble too long")
		}
		if !isPrefix {
			break
		}
	}
	s, ok := strings.CutPrefix(string(line), preambleMagic+" ")
	if !ok {
		return nil, fmt.Errorf("not a migrate-send preamble: %q", line)
	}
	tokens := strings.Fields(s)
	if err := checkReceiverArgs(tokens); err != nil {
		return nil, fmt.Errorf("sender's preamble: %w", err)
	}
	return tokens, nil
}
