// Package tests holds the lab tests (TestLab…): they boot real Xen 4.17 with a Debian dom0 inside
// qemu-system-x86_64 (TCG) through the harness in tests/lab, and fail, not skip, when the lab
// cannot run, unless XENLAB_SKIP=1 is set. They run sequentially (no t.Parallel): the lab is one
// machine-wide resource. See docs/lab.md.
package tests
