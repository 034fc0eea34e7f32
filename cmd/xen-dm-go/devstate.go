package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"

	"github.com/xen-dm-go/xen-dm-go/dm/devstate"
)

func init() {
	subcommands["devstate"] = subcommand{"check and describe a saved device state (qemu-save.<domid>)", runDevstate}
}

// runDevstate is `xen-dm-go devstate FILE`: it decodes a device state as
// -incoming would (without a machine to compare with), prints its sections
// and header, and exits 1 if it would be refused.
func runDevstate(args []string, _ io.Reader, stdout, stderr io.Writer) int {
	if len(args) != 1 || args[0] == "-h" || args[0] == "--help" {
		fmt.Fprintln(stderr, "usage: xen-dm-go devstate FILE   (e.g. /var/lib/xen/qemu-save.<domid>)")
		return 2
	}
	b, err := os.ReadFile(args[0])
	if err != nil {
		fmt.Fprintf(stderr, "xen-dm-go devstate: %v\n", err)
		return 1
	}
	secs, perr := devstate.Parse(b)
	fmt.Fprintf(stdout, "%s: %d bytes\n", args[0], len(b))
	for _, s := range secs {
		fmt.Fprintf(stdout, "  %-8s v%d flags %#x  %6d bytes at offset %d\n", s.ID, s.Version, s.Flags, len(s.Payload), s.Offset)
	}
	if perr != nil {
		fmt.Fprintf(stderr, "xen-dm-go devstate: %v\n", perr)
		return 1
	}
	st, err := devstate.Decode(b)
	if err != nil {
		fmt.Fprintf(stderr, "xen-dm-go devstate: %v\n", err)
		return 1
	}
	h, _ := json.MarshalIndent(st.Header, "", "  ")
	zero := 0
	for _, r := range st.PageRefs {
		if r.IsZeroPage() {
			zero++
		}
	}
	fmt.Fprintf(stdout, "header: %s\npage references: %d (disk %d, zero %d)\n", h, len(st.PageRefs), len(st.PageRefs)-zero, zero)
	for _, s := range st.Skipped {
		fmt.Fprintf(stdout, "skipped optional section %s v%d\n", s.ID, s.Version)
	}
	return 0
}
