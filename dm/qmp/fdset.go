package qmp

import (
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

// FDSets holds file descriptors passed with add-fd (QEMU monitor/fds.c).
// A name "/dev/fdset/N" given to a later command (xen-save-devices-state's
// filename) resolves to a duplicate of an fd of set N whose access mode
// allows the requested access. Sets are shared by all monitors of the
// process, as in QEMU; the fds a client added are closed when that client
// disconnects (QEMU's monitor_fdset_cleanup with no monitor left), so ids
// are reused and libxl's repeated saves see fdset 0 each time.
type FDSets struct {
	mu   sync.Mutex
	sets map[int64][]fdEntry
}

type fdEntry struct {
	f      *os.File
	fd     int
	opaque string
	owner  any // the connection that added it
}

// NewFDSets returns an empty table.
func NewFDSets() *FDSets { return &FDSets{sets: map[int64][]fdEntry{}} }

// Add puts f into set id (a new set with the lowest free id when id < 0)
// and returns the set id and the fd number.
func (s *FDSets) Add(id int64, f *os.File, opaque string, owner any) (int64, int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if id < 0 {
		for id = 0; ; id++ {
			if _, used := s.sets[id]; !used {
				break
			}
		}
	}
	fd := int(f.Fd())
	s.sets[id] = append(s.sets[id], fdEntry{f: f, fd: fd, opaque: opaque, owner: owner})
	return id, fd
}

// Remove closes fd (or the whole set when fd < 0).
func (s *FDSets) Remove(id int64, fd int) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	set, ok := s.sets[id]
	if !ok {
		return fmt.Errorf("File descriptor named 'fdset-id:%d' not found", id)
	}
	keep := set[:0]
	found := false
	for _, e := range set {
		if fd < 0 || e.fd == fd {
			e.f.Close()
			found = true
			continue
		}
		keep = append(keep, e)
	}
	if !found {
		return fmt.Errorf("File descriptor named 'fdset-id:%d, fd:%d' not found", id, fd)
	}
	if len(keep) == 0 {
		delete(s.sets, id)
	} else {
		s.sets[id] = keep
	}
	return nil
}

// releaseOwner closes every fd added by owner.
func (s *FDSets) releaseOwner(owner any) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for id, set := range s.sets {
		keep := set[:0]
		for _, e := range set {
			if e.owner == owner {
				e.f.Close()
				continue
			}
			keep = append(keep, e)
		}
		if len(keep) == 0 {
			delete(s.sets, id)
		} else {
			s.sets[id] = keep
		}
	}
}

// CloseAll closes every fd.
func (s *FDSets) CloseAll() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for id, set := range s.sets {
		for _, e := range set {
			e.f.Close()
		}
		delete(s.sets, id)
	}
}

// FDSetInfo is one set in query-fdsets.
type FDSetInfo struct {
	ID  int64       `json:"fdset-id"`
	FDs []FDSetFile `json:"fds"`
}

// FDSetFile is one fd in query-fdsets.
type FDSetFile struct {
	FD     int    `json:"fd"`
	Opaque string `json:"opaque,omitempty"`
}

// Query lists the sets (query-fdsets).
func (s *FDSets) Query() []FDSetInfo {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := []FDSetInfo{}
	for id, set := range s.sets {
		info := FDSetInfo{ID: id, FDs: []FDSetFile{}}
		for _, e := range set {
			info.FDs = append(info.FDs, FDSetFile{FD: e.fd, Opaque: e.opaque})
		}
		out = append(out, info)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// FDSetPrefix starts a filename that names an fd set.
const FDSetPrefix = "/dev/fdset/"

// OpenFile opens name like QEMU's qemu_open: "/dev/fdset/N" yields a
// duplicate of an fd in set N that allows the access mode of flag
// (O_RDONLY/O_WRONLY/O_RDWR); any other name is opened with os.OpenFile.
// The caller closes the result.
func (s *FDSets) OpenFile(name string, flag int, perm os.FileMode) (*os.File, error) {
	rest, ok := strings.CutPrefix(name, FDSetPrefix)
	if !ok {
		return os.OpenFile(name, flag|unix.O_CLOEXEC, perm)
	}
	id, err := strconv.ParseInt(rest, 10, 64)
	if err != nil || id < 0 {
		return nil, fmt.Errorf("%s: not a valid fdset name", name)
	}
	want := flag & unix.O_ACCMODE
	s.mu.Lock()
	defer s.mu.Unlock()
	set, ok := s.sets[id]
	if !ok {
		return nil, fmt.Errorf("%s: fdset %d does not exist (add it with add-fd first)", name, id)
	}
	for _, e := range set {
		fl, err := unix.FcntlInt(uintptr(e.fd), unix.F_GETFL, 0)
		if err != nil {
			continue
		}
		have := fl & unix.O_ACCMODE
		if have != want && have != unix.O_RDWR {
			continue
		}
		nfd, err := unix.FcntlInt(uintptr(e.fd), unix.F_DUPFD_CLOEXEC, 0)
		if err != nil {
			return nil, fmt.Errorf("%s: dup fd %d: %w", name, e.fd, err)
		}
		return os.NewFile(uintptr(nfd), name), nil
	}
	return nil, fmt.Errorf("%s: no fd in fdset %d has the required access mode", name, id)
}
