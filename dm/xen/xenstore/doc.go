// Package xenstore is a pure-Go client for xenstored, speaking the xs_wire
// protocol (xen/include/public/io/xs_wire.h, docs/misc/xenstore.txt) over the
// daemon's unix socket or the xenbus character device.
//
// The device model needs xenstore for one thing on Xen 4.17 (see
// shared/reference/xen-dm-interface.md §3): after start-up it writes
// "running" to /local/domain/0/device-model/<domid>/state, which libxl
// watches. The client is nevertheless complete enough for PV-backend work:
// READ, WRITE, MKDIR, DIRECTORY (falling back to DIRECTORY_PART for long
// listings), RM, GET_PERMS/SET_PERMS, transactions, watches and
// GET_DOMAIN_PATH.
//
// # Transport
//
// [Open] connects like libxenstore's xs_open(0): first the unix socket named
// by [SocketPath] ($XENSTORED_PATH, else $XENSTORED_RUNDIR/socket, else
// /var/run/xenstored/socket), then the xenbus device ([DevicePaths]:
// /dev/xen/xenbus, else /proc/xen/xenbus). Open it before dropping
// privileges. [Dial] connects to one given path; [New] runs the protocol on
// any established connection (tests use net.Pipe). Every message, header and
// payload, is sent with a single Write, as the xenbus device requires.
//
// # Concurrency
//
// A Client is safe for concurrent use. Requests from many goroutines are
// multiplexed on the one connection: each gets its own req_id, and one
// reader goroutine hands replies back by req_id and routes XS_WATCH_EVENT
// messages to watches by token. Replies never wait for a slow watch
// consumer: each [Watch] has a bounded event channel and, when it is full,
// the oldest pending event is discarded (and counted, see [Watch.Dropped]) so
// that the newest one is always delivered. A watch event only says "look
// again", so a consumer that re-reads what it watches after every event
// never misses the final state.
//
// # Errors
//
// Every operation returns an [*Error] naming the operation, the path (and
// watch token or transaction id where there is one) and wrapping the cause:
//   - an XS_ERROR reply is an [Errno] such as [ErrNotFound] ("ENOENT"),
//     which also unwraps to the matching syscall.Errno, so
//     errors.Is(err, fs.ErrNotExist) works;
//   - a transaction commit that lost a race is [ErrAgain]: start a new
//     transaction and redo it (or use [Client.Transact]);
//   - a request refused before sending wraps [ErrPayloadTooBig] or
//     [ErrInvalid];
//   - a reply that breaks the protocol wraps [ErrProtocol];
//   - once the connection is gone (xenstored closed it, a read or write
//     failed, the byte stream became unparseable, or [Client.Close] was
//     called) every pending and later call fails with an error wrapping
//     [ErrConnClosed] and the cause (io.EOF, net.ErrClosed, …), and every
//     watch channel is closed.
//
// No input from the daemon can make the client panic: malformed messages
// are either dropped with a log line (unknown req_id, unknown watch token,
// malformed watch event) or end the connection (bad framing).
package xenstore
