package xentest

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"

	"github.com/xen-dm-go/xen-dm-go/dm/xen/xenstore"
)

// XenstoreServer is an in-memory xenstored speaking the real xs_wire protocol
// on a unix socket, for tests. Every connection is treated as dom0 (no
// permission checks); relative paths xsResolve against /local/domain/0.
//
// It implements READ, WRITE, MKDIR, DIRECTORY, DIRECTORY_PART, RM,
// GET_PERMS, SET_PERMS, TRANSACTION_START/END, WATCH, UNWATCH and
// GET_DOMAIN_PATH with xenstored's payload conventions and error names:
//   - WRITE and MKDIR create missing parents, which inherit their parent's
//     permissions; RM of a missing node is OK if its xsParent exists;
//   - DIRECTORY answers E2BIG when the listing does not fit a payload;
//   - a watch fires once at registration (after the OK reply), then for
//     every change at or below its path, and with the watched path itself
//     when an ancestor is removed;
//   - a transaction works on a copy of the store; its commit fails with
//     EAGAIN if any node it read or wrote (or whose child list it changed)
//     was changed by someone else after the transaction started;
//   - a request with more than 4096 payload bytes kills the connection, as
//     in xenstored.
//
// Code under test can reach it with xenstore.Dial(s.SocketPath()), or with
// xenstore.Open() after t.Setenv("XENSTORED_PATH", s.SocketPath()).
type XenstoreServer struct {
	dir  string
	sock string
	ln   net.Listener

	mu      sync.Mutex
	nodes   map[string]*xsNode // the live store, by absolute path
	gen     uint64
	conns   map[*xsConn]struct{}
	nextTx  uint32
	hook    func(XenstoreRequest) XenstoreAction
	changed chan struct{} // closed and replaced after every live change
	closed  bool

	wg sync.WaitGroup
}

// XenstoreRequest is a request as the server received it, shown to a hook.
type XenstoreRequest struct {
	Type    xenstore.MsgType
	ReqID   uint32
	TxID    uint32
	Payload []byte
}

// Path returns the request's first NUL-terminated string: the path for
// node and watch requests.
func (r XenstoreRequest) Path() string {
	if i := bytes.IndexByte(r.Payload, 0); i >= 0 {
		return string(r.Payload[:i])
	}
	return string(r.Payload)
}

// XenstoreAction is what a hook tells the server to do with a request.
type XenstoreAction int

const (
	// XenstoreServe handles the request normally.
	XenstoreServe XenstoreAction = iota
	// XenstoreIgnore swallows the request: no reply is ever sent.
	XenstoreIgnore
	// XenstoreDrop closes the connection without replying, like a
	// xenstored dying mid-request.
	XenstoreDrop
)

// xsNode is one node. Nodes are never modified in place: a change stores a
// new node with a new generation, so a transaction's copy of the map can
// share them.
type xsNode struct {
	value string
	perms []xenstore.Perm
	gen   uint64
}

type xsWatch struct {
	path  string // as the client sent it
	abs   string // resolved; equal to path for "@…" special watches
	token string
}

type xsConn struct {
	s       *XenstoreServer
	c       net.Conn
	watches []xsWatch        // under s.mu
	txs     map[uint32]*xsTx // under s.mu

	outMu sync.Mutex
	cond  *sync.Cond
	out   [][]byte
	dead  bool
}

// xsTx is an open transaction: a copy of the store, the generation of every
// node it accessed when it first did (0: absent), what it changed and the
// watch events to fire on commit.
type xsTx struct {
	nodes  map[string]*xsNode
	base   map[string]uint64
	dirty  map[string]bool
	events []xsFire
}

type xsFire struct {
	path      string
	recursive bool // a removal: also fire watches below path
}

const xsDom0Home = "/local/domain/0"

// NewXenstoreServer starts a server on a unix socket in a new temporary
// directory, with the nodes xen-init-dom0 would have made: /, /local,
// /local/domain and /local/domain/0, all with permissions "n0".
func NewXenstoreServer() (*XenstoreServer, error) {
	dir, err := os.MkdirTemp("", "xs")
	if err != nil {
		return nil, fmt.Errorf("xentest: xenstore server: %w", err)
	}
	sock := filepath.Join(dir, "socket")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("xentest: xenstore server: %w", err)
	}
	s := &XenstoreServer{
		dir:     dir,
		sock:    sock,
		ln:      ln,
		nodes:   map[string]*xsNode{},
		conns:   map[*xsConn]struct{}{},
		changed: make(chan struct{}),
	}
	for _, p := range []string{"/", "/local", "/local/domain", xsDom0Home} {
		s.gen++
		s.nodes[p] = &xsNode{perms: []xenstore.Perm{{Domid: 0, Access: xenstore.AccessNone}}, gen: s.gen}
	}
	s.wg.Add(1)
	go s.acceptLoop()
	return s, nil
}

// SocketPath returns the path of the server's unix socket.
func (s *XenstoreServer) SocketPath() string { return s.sock }

// Close stops the server: it stops listening, closes every connection
// (clients see EOF) and removes the socket. It is idempotent.
func (s *XenstoreServer) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.ln.Close()
	for cn := range s.conns {
		cn.close()
	}
	s.mu.Unlock()
	s.wg.Wait()
	os.RemoveAll(s.dir)
	return nil
}

// DropConnections closes every current connection without replying to
// anything in flight, like a xenstored that died; the server keeps
// listening, so new connections work.
func (s *XenstoreServer) DropConnections() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for cn := range s.conns {
		cn.close()
	}
}

// Conns returns the number of open connections.
func (s *XenstoreServer) Conns() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.conns)
}

// SetHook installs h (nil removes it). It sees every request before it is
// handled, on the connection's goroutine and without the server's lock
// held, so it may call the server's other methods.
func (s *XenstoreServer) SetHook(h func(XenstoreRequest) XenstoreAction) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.hook = h
}

// InjectRaw sends b, as it is, to every open connection (after anything
// already queued). b need not be a well-formed message.
func (s *XenstoreServer) InjectRaw(b []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for cn := range s.conns {
		cn.send(bytes.Clone(b))
	}
}

// InjectEvent sends an XS_WATCH_EVENT for path and token to every open
// connection, whether or not a watch with that token exists.
func (s *XenstoreServer) InjectEvent(path, token string) {
	s.InjectRaw(xsFrame(xenstore.TypeWatchEvent, 0, 0, xsStrings(path, token)))
}

// Read returns the value of path in the live store (relative paths xsResolve
// against /local/domain/0) and whether the node exists.
func (s *XenstoreServer) Read(path string) (string, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := s.nodes[xsResolve(path)]
	if n == nil {
		return "", false
	}
	return n.value, true
}

// Directory returns the sorted child names of path in the live store, or
// nil if path does not exist.
func (s *XenstoreServer) Directory(path string) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	p := xsResolve(path)
	if s.nodes[p] == nil {
		return nil
	}
	return xsChildren(s.nodes, p)
}

// Perms returns the permissions of path in the live store, or nil.
func (s *XenstoreServer) Perms(path string) []xenstore.Perm {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := s.nodes[xsResolve(path)]
	if n == nil {
		return nil
	}
	return append([]xenstore.Perm(nil), n.perms...)
}

// Write sets path to value in the live store, creating parents, and fires
// watches, as if another client had written it. It panics on an invalid
// path (a bug in the test).
func (s *XenstoreServer) Write(path, value string) {
	p := xsResolve(path)
	if !xsValidPath(p) {
		panic(fmt.Sprintf("xentest: XenstoreServer.Write: invalid path %q", path))
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	v := s.liveView()
	v.write(p, value)
	s.changedLocked()
}

// Rm removes path and its xsChildren from the live store and fires watches.
func (s *XenstoreServer) Rm(path string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	v := s.liveView()
	p := xsResolve(path)
	if v.nodes[p] != nil && p != "/" {
		v.rm(p)
		s.changedLocked()
	}
}

// Wait blocks until path holds want in the live store, or ctx ends.
func (s *XenstoreServer) Wait(ctx context.Context, path, want string) error {
	p := xsResolve(path)
	for {
		s.mu.Lock()
		n := s.nodes[p]
		ch := s.changed
		s.mu.Unlock()
		if n != nil && n.value == want {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			got := "<absent>"
			if n != nil {
				got = strconv.Quote(n.value)
			}
			return fmt.Errorf("xentest: waiting for %s = %q (now %s): %w", p, want, got, ctx.Err())
		}
	}
}

func (s *XenstoreServer) changedLocked() {
	close(s.changed)
	s.changed = make(chan struct{})
}

func (s *XenstoreServer) acceptLoop() {
	defer s.wg.Done()
	for {
		c, err := s.ln.Accept()
		if err != nil {
			return
		}
		cn := &xsConn{s: s, c: c, txs: map[uint32]*xsTx{}}
		cn.cond = sync.NewCond(&cn.outMu)
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			c.Close()
			return
		}
		s.conns[cn] = struct{}{}
		s.mu.Unlock()
		s.wg.Add(2)
		go cn.writeLoop()
		go cn.serve()
	}
}

// send queues one message; it never blocks, so it may be called with s.mu
// held.
func (cn *xsConn) send(b []byte) {
	cn.outMu.Lock()
	defer cn.outMu.Unlock()
	if cn.dead {
		return
	}
	cn.out = append(cn.out, b)
	cn.cond.Signal()
}

func (cn *xsConn) close() {
	cn.outMu.Lock()
	defer cn.outMu.Unlock()
	if !cn.dead {
		cn.dead = true
		cn.c.Close()
		cn.cond.Broadcast()
	}
}

func (cn *xsConn) writeLoop() {
	defer cn.s.wg.Done()
	for {
		cn.outMu.Lock()
		for len(cn.out) == 0 && !cn.dead {
			cn.cond.Wait()
		}
		if cn.dead {
			cn.outMu.Unlock()
			return
		}
		batch := cn.out
		cn.out = nil
		cn.outMu.Unlock()
		for _, m := range batch {
			if _, err := cn.c.Write(m); err != nil {
				cn.close()
				return
			}
		}
	}
}

func (cn *xsConn) serve() {
	s := cn.s
	defer s.wg.Done()
	defer func() {
		cn.close()
		s.mu.Lock()
		delete(s.conns, cn)
		s.mu.Unlock()
	}()
	br := bufio.NewReader(cn.c)
	var hb [16]byte
	for {
		if _, err := io.ReadFull(br, hb[:]); err != nil {
			return
		}
		req := XenstoreRequest{
			Type:  xenstore.MsgType(binary.LittleEndian.Uint32(hb[0:])),
			ReqID: binary.LittleEndian.Uint32(hb[4:]),
			TxID:  binary.LittleEndian.Uint32(hb[8:]),
		}
		n := binary.LittleEndian.Uint32(hb[12:])
		if n > xenstore.PayloadMax {
			return // xenstored kills a connection that exceeds the limit
		}
		req.Payload = make([]byte, n)
		if _, err := io.ReadFull(br, req.Payload); err != nil {
			return
		}
		s.mu.Lock()
		hook := s.hook
		s.mu.Unlock()
		if hook != nil {
			switch hook(req) {
			case XenstoreIgnore:
				continue
			case XenstoreDrop:
				return
			}
		}
		s.mu.Lock()
		typ, reply := s.handleLocked(cn, req)
		cn.send(xsFrame(typ, req.ReqID, req.TxID, reply))
		if req.Type == xenstore.TypeWatch && typ == xenstore.TypeWatch {
			// Fire once at registration, after the reply.
			f := xsSplit(req.Payload)
			cn.send(xsFrame(xenstore.TypeWatchEvent, 0, 0, xsStrings(f[0], f[1])))
		}
		s.mu.Unlock()
	}
}

// xsFrame frames a message. It deliberately does not use the client
// package's encoder, so that the two sides check each other.
func xsFrame(typ xenstore.MsgType, req, tx uint32, payload []byte) []byte {
	b := make([]byte, 16+len(payload))
	binary.LittleEndian.PutUint32(b[0:], uint32(typ))
	binary.LittleEndian.PutUint32(b[4:], req)
	binary.LittleEndian.PutUint32(b[8:], tx)
	binary.LittleEndian.PutUint32(b[12:], uint32(len(payload)))
	copy(b[16:], payload)
	return b
}

func xsStrings(parts ...string) []byte {
	var b []byte
	for _, p := range parts {
		b = append(b, p...)
		b = append(b, 0)
	}
	return b
}

// xsSplit splits a payload into its NUL-terminated strings; text after
// the last NUL is returned as a final element.
func xsSplit(p []byte) []string {
	var out []string
	for {
		i := bytes.IndexByte(p, 0)
		if i < 0 {
			if len(p) > 0 {
				out = append(out, string(p))
			}
			return out
		}
		out = append(out, string(p[:i]))
		p = p[i+1:]
	}
}

var xsOK = []byte("OK\x00")

type xsErrName string

func xsErrReply(e xsErrName) (xenstore.MsgType, []byte) {
	return xenstore.TypeError, xsStrings(string(e))
}

// xsOnePath parses a "<path>|" payload and resolves the path.
func xsOnePath(p []byte) (string, bool) {
	if len(p) == 0 || p[len(p)-1] != 0 || bytes.IndexByte(p, 0) != len(p)-1 {
		return "", false
	}
	return xsParsePath(string(p[:len(p)-1]))
}

// xsParsePath resolves a path from a request and checks it as xenstored
// would, including XENSTORE_REL_PATH_MAX for relative paths.
func xsParsePath(raw string) (string, bool) {
	if raw != "" && raw[0] != '/' && len(raw) > xenstore.RelPathMax {
		return "", false
	}
	p := xsResolve(raw)
	return p, xsValidPath(p)
}

func (s *XenstoreServer) handleLocked(cn *xsConn, req XenstoreRequest) (xenstore.MsgType, []byte) {
	switch req.Type {
	case xenstore.TypeTransactionStart:
		if req.TxID != 0 {
			return xsErrReply("EBUSY")
		}
		s.nextTx++
		if s.nextTx == 0 {
			s.nextTx++
		}
		cn.txs[s.nextTx] = &xsTx{
			nodes: xsCloneNodes(s.nodes),
			base:  map[string]uint64{},
			dirty: map[string]bool{},
		}
		return req.Type, xsStrings(strconv.FormatUint(uint64(s.nextTx), 10))
	case xenstore.TypeWatch, xenstore.TypeUnwatch:
		return s.watchLocked(cn, req)
	case xenstore.TypeGetDomainPath:
		f := xsSplit(req.Payload)
		if len(f) != 1 {
			return xsErrReply("EINVAL")
		}
		d, err := strconv.ParseUint(f[0], 10, 16)
		if err != nil {
			return xsErrReply("EINVAL")
		}
		return req.Type, xsStrings("/local/domain/" + strconv.FormatUint(d, 10))
	}

	v := s.liveView()
	var tx *xsTx
	if req.TxID != 0 {
		tx = cn.txs[req.TxID]
		if tx == nil {
			return xsErrReply("ENOENT")
		}
		v = &xsView{s: s, nodes: tx.nodes, tx: tx}
	}

	switch req.Type {
	case xenstore.TypeTransactionEnd:
		if tx == nil {
			return xsErrReply("ENOENT")
		}
		f := xsSplit(req.Payload)
		if len(f) != 1 || (f[0] != "T" && f[0] != "F") {
			return xsErrReply("EINVAL")
		}
		delete(cn.txs, req.TxID)
		if f[0] == "T" {
			if e := s.commitLocked(tx); e != "" {
				return xsErrReply(e)
			}
		}
		return req.Type, xsOK
	case xenstore.TypeRead:
		p, ok := xsOnePath(req.Payload)
		if !ok {
			return xsErrReply("EINVAL")
		}
		n := v.get(p)
		if n == nil {
			return xsErrReply("ENOENT")
		}
		return req.Type, []byte(n.value)
	case xenstore.TypeWrite:
		i := bytes.IndexByte(req.Payload, 0)
		if i < 0 {
			return xsErrReply("EINVAL")
		}
		p, ok := xsParsePath(string(req.Payload[:i]))
		if !ok {
			return xsErrReply("EINVAL")
		}
		v.write(p, string(req.Payload[i+1:]))
	case xenstore.TypeMkdir:
		p, ok := xsOnePath(req.Payload)
		if !ok {
			return xsErrReply("EINVAL")
		}
		if v.get(p) == nil {
			v.create(p)
			v.fire(p, false)
		}
	case xenstore.TypeRm:
		p, ok := xsOnePath(req.Payload)
		if !ok || p == "/" {
			return xsErrReply("EINVAL")
		}
		if v.get(p) == nil {
			if v.get(xsParent(p)) == nil {
				return xsErrReply("ENOENT")
			}
			return req.Type, xsOK
		}
		v.rm(p)
	case xenstore.TypeDirectory:
		p, ok := xsOnePath(req.Payload)
		if !ok {
			return xsErrReply("EINVAL")
		}
		if v.get(p) == nil {
			return xsErrReply("ENOENT")
		}
		out := xsStrings(xsChildren(v.nodes, p)...)
		if len(out) > xenstore.PayloadMax {
			return xsErrReply("E2BIG")
		}
		return req.Type, out
	case xenstore.TypeDirectoryPart:
		return v.directoryPart(req)
	case xenstore.TypeGetPerms:
		p, ok := xsOnePath(req.Payload)
		if !ok {
			return xsErrReply("EINVAL")
		}
		n := v.get(p)
		if n == nil {
			return xsErrReply("ENOENT")
		}
		var out []string
		for _, pm := range n.perms {
			out = append(out, pm.String())
		}
		return req.Type, xsStrings(out...)
	case xenstore.TypeSetPerms:
		f := xsSplit(req.Payload)
		if len(f) < 2 {
			return xsErrReply("EINVAL")
		}
		p, ok := xsParsePath(f[0])
		if !ok {
			return xsErrReply("EINVAL")
		}
		var perms []xenstore.Perm
		for _, ps := range f[1:] {
			pm, err := xenstore.ParsePerm(ps)
			if err != nil {
				return xsErrReply("EINVAL")
			}
			perms = append(perms, pm)
		}
		n := v.get(p)
		if n == nil {
			return xsErrReply("ENOENT")
		}
		v.put(p, &xsNode{value: n.value, perms: perms})
		v.fire(p, false)
	default:
		return xsErrReply("ENOSYS")
	}
	if tx == nil {
		s.changedLocked()
	}
	return req.Type, xsOK
}

func (s *XenstoreServer) watchLocked(cn *xsConn, req XenstoreRequest) (xenstore.MsgType, []byte) {
	f := xsSplit(req.Payload)
	if len(f) < 2 || f[0] == "" {
		return xsErrReply("EINVAL")
	}
	w := xsWatch{path: f[0], abs: f[0], token: f[1]}
	if !strings.HasPrefix(w.path, "@") {
		abs, ok := xsParsePath(w.path)
		if !ok {
			return xsErrReply("EINVAL")
		}
		w.abs = abs
	}
	for i, o := range cn.watches {
		if o.abs == w.abs && o.token == w.token {
			if req.Type == xenstore.TypeWatch {
				return xsErrReply("EEXIST")
			}
			cn.watches = append(cn.watches[:i:i], cn.watches[i+1:]...)
			return req.Type, xsOK
		}
	}
	if req.Type == xenstore.TypeUnwatch {
		return xsErrReply("ENOENT")
	}
	cn.watches = append(cn.watches, w)
	return req.Type, xsOK
}

// commitLocked applies tx to the live store, or returns "EAGAIN" if a node
// it accessed changed since the transaction started.
func (s *XenstoreServer) commitLocked(tx *xsTx) xsErrName {
	for p, g := range tx.base {
		var live uint64
		if n := s.nodes[p]; n != nil {
			live = n.gen
		}
		if live != g {
			return "EAGAIN"
		}
	}
	for p := range tx.dirty {
		if n := tx.nodes[p]; n != nil {
			s.gen++
			s.nodes[p] = &xsNode{value: n.value, perms: n.perms, gen: s.gen}
		} else {
			delete(s.nodes, p)
		}
	}
	for _, f := range tx.events {
		s.fireLocked(f.path, f.recursive)
	}
	if len(tx.dirty) > 0 {
		s.changedLocked()
	}
	return ""
}

// fireLocked sends watch events for a change at p to every connection.
func (s *XenstoreServer) fireLocked(p string, recursive bool) {
	for cn := range s.conns {
		for _, w := range cn.watches {
			if strings.HasPrefix(w.path, "@") {
				continue
			}
			switch {
			case xsIsChild(p, w.abs):
				cn.send(xsFrame(xenstore.TypeWatchEvent, 0, 0, xsStrings(xsRelTo(p, w), w.token)))
			case recursive && xsIsChild(w.abs, p):
				cn.send(xsFrame(xenstore.TypeWatchEvent, 0, 0, xsStrings(w.path, w.token)))
			}
		}
	}
}

// xsRelTo returns p as the watch's client expects it: relative to
// /local/domain/0 if the watch path was relative.
func xsRelTo(p string, w xsWatch) string {
	if strings.HasPrefix(w.path, "/") {
		return p
	}
	return strings.TrimPrefix(p, xsDom0Home+"/")
}

// xsView is the live store or a transaction's copy.
type xsView struct {
	s     *XenstoreServer
	nodes map[string]*xsNode
	tx    *xsTx // nil for the live store
}

func (s *XenstoreServer) liveView() *xsView { return &xsView{s: s, nodes: s.nodes} }

func (v *xsView) access(p string) {
	if v.tx == nil {
		return
	}
	if _, ok := v.tx.base[p]; ok {
		return
	}
	var g uint64
	if n := v.nodes[p]; n != nil {
		g = n.gen
	}
	v.tx.base[p] = g
}

func (v *xsView) get(p string) *xsNode {
	v.access(p)
	return v.nodes[p]
}

func (v *xsView) put(p string, n *xsNode) {
	v.access(p)
	v.s.gen++
	n.gen = v.s.gen
	v.nodes[p] = n
	if v.tx != nil {
		v.tx.dirty[p] = true
	}
}

func (v *xsView) del(p string) {
	v.access(p)
	delete(v.nodes, p)
	if v.tx != nil {
		v.tx.dirty[p] = true
	}
}

// touchParent gives p's xsParent a new generation: its child list changed.
func (v *xsView) touchParent(p string) {
	if p == "/" {
		return
	}
	q := xsParent(p)
	if n := v.get(q); n != nil {
		v.put(q, &xsNode{value: n.value, perms: n.perms})
	}
}

// create makes p and any missing ancestors, each with its parent's
// permissions and an empty value, and returns p's node.
func (v *xsView) create(p string) *xsNode {
	if n := v.get(p); n != nil {
		return n
	}
	par := v.create(xsParent(p))
	n := &xsNode{perms: par.perms}
	v.put(p, n)
	v.touchParent(p)
	return n
}

func (v *xsView) write(p, value string) {
	n := v.create(p)
	v.put(p, &xsNode{value: value, perms: n.perms})
	v.fire(p, false)
}

func (v *xsView) rm(p string) {
	prefix := p + "/"
	for q := range v.nodes {
		if strings.HasPrefix(q, prefix) {
			v.del(q)
		}
	}
	v.del(p)
	v.touchParent(p)
	v.fire(p, true)
}

func (v *xsView) fire(p string, recursive bool) {
	if v.tx != nil {
		v.tx.events = append(v.tx.events, xsFire{path: p, recursive: recursive})
		return
	}
	v.s.fireLocked(p, recursive)
}

// directoryPart answers XS_DIRECTORY_PART "<path>|<offset>|" with
// "<gencnt>|<child>|*", adding an empty string after the last child, as
// xenstored's send_directory_part does.
func (v *xsView) directoryPart(req XenstoreRequest) (xenstore.MsgType, []byte) {
	f := xsSplit(req.Payload)
	if len(f) != 2 {
		return xsErrReply("EINVAL")
	}
	p, ok := xsParsePath(f[0])
	off, err := strconv.Atoi(f[1])
	if !ok || err != nil || off < 0 {
		return xsErrReply("EINVAL")
	}
	n := v.get(p)
	if n == nil {
		return xsErrReply("ENOENT")
	}
	all := xsStrings(xsChildren(v.nodes, p)...)
	if off > len(all) {
		return xsErrReply("EINVAL")
	}
	out := xsStrings(strconv.FormatUint(n.gen, 10))
	room := xenstore.PayloadMax - len(out) - 1
	rest := all[off:]
	if len(rest) <= room {
		out = append(out, rest...)
		return req.Type, append(out, 0)
	}
	cut := bytes.LastIndexByte(rest[:room], 0)
	if cut < 0 {
		return xsErrReply("E2BIG")
	}
	return req.Type, append(out, rest[:cut+1]...)
}

func xsCloneNodes(m map[string]*xsNode) map[string]*xsNode {
	c := make(map[string]*xsNode, len(m))
	for k, v := range m {
		c[k] = v
	}
	return c
}

func xsChildren(nodes map[string]*xsNode, p string) []string {
	prefix := p + "/"
	if p == "/" {
		prefix = "/"
	}
	var out []string
	for q := range nodes {
		if q != "/" && strings.HasPrefix(q, prefix) && !strings.Contains(q[len(prefix):], "/") {
			out = append(out, q[len(prefix):])
		}
	}
	sort.Strings(out)
	return out
}

func xsResolve(p string) string {
	if strings.HasPrefix(p, "/") || strings.HasPrefix(p, "@") {
		return p
	}
	return xsDom0Home + "/" + p
}

func xsParent(p string) string {
	i := strings.LastIndexByte(p, '/')
	if i <= 0 {
		return "/"
	}
	return p[:i]
}

// xsIsChild reports whether c is p or below it (docs/misc/xenstore.txt).
func xsIsChild(c, p string) bool {
	return c == p || p == "/" || strings.HasPrefix(c, p+"/")
}

// xsValidPath applies xenstored's rules to an absolute path: characters
// [A-Za-z0-9-/_@], no empty element, no trailing slash except for the
// root, at most XENSTORE_ABS_PATH_MAX bytes.
func xsValidPath(p string) bool {
	if p == "" || p[0] != '/' || len(p) > xenstore.AbsPathMax {
		return false
	}
	if p == "/" {
		return true
	}
	if strings.HasSuffix(p, "/") || strings.Contains(p, "//") {
		return false
	}
	for i := 0; i < len(p); i++ {
		c := p[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case c == '-', c == '/', c == '_', c == '@':
		default:
			return false
		}
	}
	return true
}
