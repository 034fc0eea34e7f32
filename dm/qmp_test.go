package dm

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// sendWithFD sends a command with f attached to its first byte, as
// libxl__sendmsg_fds does.
func (q *qmpClient) sendWithFD(s string, f *os.File) map[string]json.RawMessage {
	q.t.Helper()
	msg := []byte(s + "\r\n")
	if _, _, err := q.c.WriteMsgUnix(msg[:1], unix.UnixRights(int(f.Fd())), nil); err != nil {
		q.t.Fatal(err)
	}
	time.Sleep(2 * time.Millisecond)
	if _, err := q.c.Write(msg[1:]); err != nil {
		q.t.Fatal(err)
	}
	return q.reply()
}

func errClass(m map[string]json.RawMessage) (class, desc string) {
	var e struct{ Class, Desc string }
	json.Unmarshal(m["error"], &e)
	return e.Class, e.Desc
}

// xl create: post-start queries, then cont on another connection.
func TestQMPCreateConversation(t *testing.T) {
	e := newEnv(t, envOpt{vcpus: 2, extra: "-serial null"})
	q := dialQMP(t, e.qmp)
	q.caps()
	var cds []struct{ Label, Filename string }
	json.Unmarshal(q.ok(`{"execute":"query-chardev","id":2020372736}`), &cds)
	if len(cds) != 3 || cds[0].Label != "libxl-cmd" || cds[2].Label != "serial0" || cds[2].Filename != "null" {
		t.Fatalf("query-chardev %+v", cds)
	}
	if r := string(q.ok(`{"execute":"query-vnc","id":3}`)); r != `{"enabled":false}` {
		t.Fatalf("query-vnc %s", r)
	}
	q.c.Close()
	q = dialQMP(t, e.qmp)
	q.caps()
	if r := string(q.ok(`{"execute":"cont","id":2020372736}`)); r != "{}" {
		t.Fatalf("cont %s", r)
	}
	// libxenstat's monitor answers queries only.
	s := dialQMP(t, e.stat)
	s.caps()
	if r := string(s.ok(`{"execute":"query-status","id":1}`)); !strings.Contains(r, `"running":true`) {
		t.Fatalf("xenstat query-status %s", r)
	}
	if c, _ := errClass(s.cmd(`{"execute":"stop","id":2}`)); c != "CommandNotFound" {
		t.Fatalf("stop on the libxenstat monitor: %s", c)
	}
	if c, _ := errClass(s.cmd(`{"execute":"query-blockstats","id":3}`)); c != "CommandNotFound" {
		t.Fatalf("query-blockstats: %s", c)
	}
}

// xl save: query-cpus-fast, dirty log on, stop, add-fd + save, dirty log off;
// then (failed save) cont.
func TestQMPSaveConversation(t *testing.T) {
	for _, withState := range []bool{false, true} {
		st := stateStub{loaded: make(chan string, 1), saved: make(chan string, 1)}
		e := newEnv(t, envOpt{vcpus: 3, opts: func(o *Options) {
			if withState {
				o.DeviceState = st
			}
		}})
		q := dialQMP(t, e.qmp)
		q.caps()
		var cpus []struct {
			Index int `json:"cpu-index"`
		}
		json.Unmarshal(q.ok(`{"execute":"query-cpus-fast","id":2020372736}`), &cpus)
		if len(cpus) != 3 || cpus[2].Index != 2 {
			t.Fatalf("query-cpus-fast %+v", cpus)
		}
		q.c.Close()

		q = dialQMP(t, e.qmp)
		q.caps()
		q.ok(`{"execute":"xen-set-global-dirty-log","id":2020372736,"arguments":{"enable":true}}`)
		if !e.c.dirty.enabled() {
			t.Fatal("dirty log not enabled")
		}
		q.c.Close()

		q = dialQMP(t, e.qmp)
		q.caps()
		q.c.Write([]byte(`{"execute":"stop","id":2020372736}` + "\r\n"))
		if ev := q.msg(); string(ev["event"]) != `"STOP"` {
			t.Fatalf("expected STOP event, got %v", ev)
		}
		if r := q.reply(); string(r["return"]) != "{}" {
			t.Fatalf("stop: %v", r)
		}
		if e.server().Enabled() {
			t.Fatal("ioreq server still enabled after stop")
		}
		path := filepath.Join(t.TempDir(), "qemu-save.7")
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE, 0o600)
		if err != nil {
			t.Fatal(err)
		}
		r := q.sendWithFD(`{"execute":"add-fd","id":2020372738}`, f)
		f.Close()
		if !strings.Contains(string(r["return"]), `"fdset-id":0`) {
			t.Fatalf("add-fd %v", r)
		}
		r = q.cmd(`{"execute":"xen-save-devices-state","id":2020372739,"arguments":{"live":false,"filename":"/dev/fdset/0"}}`)
		if withState {
			if _, bad := r["error"]; bad {
				t.Fatalf("save: %s", r["error"])
			}
			if got := <-st.saved; got != "nonlive" {
				t.Fatalf("saved %s", got)
			}
			if b, _ := os.ReadFile(path); string(b) != "XDMSTATE" {
				t.Fatalf("save file %q", b)
			}
		} else {
			class, desc := errClass(r)
			if class != "GenericError" || !strings.Contains(desc, "not supported yet") || string(r["id"]) != "2020372739" {
				t.Fatalf("save without DeviceState: %v", r)
			}
		}
		q.c.Close()

		q = dialQMP(t, e.qmp)
		q.caps()
		q.ok(`{"execute":"xen-set-global-dirty-log","id":2020372736,"arguments":{"enable":false}}`)
		if e.c.dirty.enabled() {
			t.Fatal("dirty log still on")
		}
		// A failed migration resumes the guest.
		q.ok(`{"execute":"cont","id":5}`)
		if !e.server().Enabled() || !e.c.RunState().Running {
			t.Fatal("cont did not resume")
		}
		e.c.Teardown()
	}
}
