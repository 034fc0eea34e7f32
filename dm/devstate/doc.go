// Package devstate is the device-state format of xen-dm-go: the blob QMP
// xen-save-devices-state writes, libxl carries as the EMULATOR_CONTEXT
// record of its stream, and the destination's device model loads from
// -incoming fd:N. The format is documented in docs/device-state.md; this is
// the summary.
//
// The blob is a container of sections (container.go), the framing
// dm/migstream's transport also parses to replace the PAGEREFS section:
//
//	"XDMGSTAT" | container version u32 = 1 | flags u32 = 0
//	section*   id [8]byte | version u32 | flags u32 | length u64 | body | pad to 8
//	END        an empty section named "END"; nothing may follow
//
// Section flags: bit 0 optional (a reader that does not know the section
// skips it; otherwise it refuses the whole state), bit 1 CRC32C (the body
// ends with the CRC32C of the section's id, version, flags and payload).
// Every section the device model writes is checksummed.
//
// The sections, in the order they are written: HEAD (Header: format
// version, producer, time, domid, live, and the machine — type, platform
// device, ACPI, vCPUs, RAM, IDE positions, serial ports), then one per
// device — I440FX, PIIX3, PIIX4PM, XENPLAT, IDE, CMOS, I8042, SERIAL0…3 —
// whose payloads are the devices' State structs as JSON, and PAGEREFS, the
// elided pages with their disk blocks (binary; empty unless the transport
// filled it).
//
// Decode refuses, with an error wrapping one of the Err* classes, anything
// it cannot load exactly: garbage, truncation, a wrong checksum, a newer or
// older container, format or section version, an unknown mandatory
// section, a repeated or missing section, a payload that is not exactly the
// expected JSON. Header.Fits refuses a state from a different machine. The
// device model (package dm) applies a decoded State to its machine.
package devstate
