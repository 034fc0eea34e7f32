package piix

import (
	"fmt"
	"sync"

	"github.com/xen-dm-go/xen-dm-go/dm/hw"
	"github.com/xen-dm-go/xen-dm-go/dm/pci"
)

// Fixed ACPI ports of the PIIX4 PM function as hvmloader's FADT and Xen's
// DSDT (tools/libacpi/static_tables.c, mk_dsdt.c) describe them. PM1a_EVT
// (0xb000) and the PM timer (0xb008) are emulated by Xen (hvm/pmtimer.c) and
// are deliberately not here.
const (
	PortPM1aCnt    = 0xb004 // PM1a_CNT, 2 bytes
	PortAPMCnt     = 0xb2   // APM control (SMI command), QEMU hw/isa/apm.c
	PortAPMSts     = 0xb3   // APM status
	PortGPE0       = 0xafe0 // GPE0_BLK: 2 status bytes, 2 enable bytes
	PortPCIHotplug = 0xae00 // PCIU, PCID, B0EJ, B0RM (QEMU hw/acpi/pcihp.c)
	PortCPUHotplug = 0xaf00 // online-CPU bitmap PRST (QEMU hw/acpi/cpu_hotplug.c)

	lenPM1aCnt    = 2
	lenAPM        = 2
	lenGPE0       = 4
	lenPCIHotplug = 16
	lenCPUHotplug = 32

	// MaxVCPUs is how many vCPUs the 32-byte PRST bitmap can describe.
	MaxVCPUs = lenCPUHotplug * 8
)

// PM1a_CNT bits (ACPI 6.x §4.8.3.2.1; QEMU hw/acpi/core.c).
const (
	PM1CntSCIEn   = 1 << 0
	PM1CntSlpTyp  = 7 << 10
	PM1CntSlpEn   = 1 << 13
	pm1SlpTypShft = 10

	// The sleep types Xen's ACPI tables give: _S5 and _S4 are 0, _S3 is 1
	// (tools/libacpi/dsdt.asl, ssdt_s3.asl, ssdt_s4.asl). QEMU also treats its
	// own PIIX4 s4_val (2) as S4.
	slpTypSoftOff = 0
	slpTypS3      = 1
	slpTypQEMUS4  = 2

	apmACPIEnable  = 0xf1 // ACPI_ENABLE written to the SMI command port
	apmACPIDisable = 0xf0

	// PIIX4 PM configuration registers.
	regPMBA      = 0x40 // PM I/O base address (bits 15:6), bit 0 reads 1
	regPMREGMISC = 0x80 // bit 0: PMIOSE, PM I/O space enable
	regDEVACTB   = 0x5b
	regSMBBA     = 0x90
	regSMBHSTCFG = 0xd2

	pmBase = 0xb000 // where hvmloader puts PMBA (ACPI_PM1A_EVT_BLK_ADDRESS_V1)
)

// PM is the PIIX4 ACPI power-management function at 00:01.3 (QEMU
// hw/acpi/piix4.c), reduced to what hvmloader, SeaBIOS and Linux use under
// Xen: PM1a_CNT for SCI_EN and soft-off, the APM control port hvmloader
// writes ACPI_ENABLE to, GPE0, and the hotplug registers the DSDT reads.
//
// The device raises no SCI: Xen raises it for PM1 events itself, and nothing
// here sets a GPE status bit (no hotplug). The ports do not follow PMBA: the
// FADT hard-codes them, so they are claimed once with ClaimPorts.
type PM struct {
	*pci.Config
	sd   hw.Shutdown
	cpus [lenCPUHotplug]byte
	warn hw.Warner

	mu     sync.Mutex
	cnt    uint16 // PM1a_CNT without SLP_EN
	apmc   uint8
	apms   uint8
	gpeSts [lenGPE0 / 2]uint8
	gpeEn  [lenGPE0 / 2]uint8
}

// PMState is the guest-visible state of the PM function.
type PMState struct {
	Config  [pci.ConfigSize]byte
	PM1aCnt uint16
	APMC    uint8
	APMS    uint8
	GPESts  [2]uint8
	GPEEn   [2]uint8
}

// NewPM returns the PM function of a guest with vcpus online vCPUs (shown in
// the CPU hotplug bitmap). sd receives the soft-off request.
func NewPM(io hw.IOSpace, sd hw.Shutdown, vcpus int) (*PM, error) {
	if vcpus < 1 || vcpus > MaxVCPUs {
		return nil, fmt.Errorf("piix4-pm: %d vCPUs, want 1–%d", vcpus, MaxVCPUs)
	}
	c := pci.NewConfig("piix4-pm", io, pci.ID{
		Vendor: 0x8086, Device: 0x7113, Revision: 0x03,
		Class:     0x068000, // PCI_CLASS_BRIDGE_OTHER
		SubVendor: subVendorQumranet, SubDevice: subDeviceQEMU,
		InterruptPin: 1,
	})
	for r := uint16(0x40); r < pci.ConfigSize; r += 4 {
		c.SetWritable(r, 4, 0xffffffff)
	}
	// piix4_pm_realize. SMM is off under Xen, so DEVACTB says "SMM done".
	c.Set(pci.RegStatus, 2, 0x0280)
	c.Set(regPMBA, 1, 0x01)
	c.Set(regDEVACTB, 1, 0x02)
	c.Set(regSMBBA, 2, 0xb100|1)
	c.Set(regSMBHSTCFG, 1, 0x09)
	pm := &PM{Config: c, sd: sd}
	for i := 0; i < vcpus; i++ {
		pm.cpus[i/8] |= 1 << (i % 8)
	}
	c.OnWrite = pm.configWritten
	return pm, nil
}

func (pm *PM) configWritten(reg uint16, size int, v uint32) {
	end := int(reg) + size
	if !(int(reg) < regPMBA+4 && end > regPMBA) && !(int(reg) <= regPMREGMISC && end > regPMREGMISC) {
		return
	}
	base := pm.Get(regPMBA, 4) & 0xffc0
	if pm.Get(regPMREGMISC, 1)&1 != 0 && base != pmBase {
		pm.warn.Warn("piix4-pm: guest moved PMBA; the ACPI ports stay where the FADT puts them",
			"pmba", fmt.Sprintf("%#x", base), "fixed", fmt.Sprintf("%#x", pmBase))
	}
}

type portRange struct{ base, n uint16 }

var pmPorts = []portRange{
	{PortAPMCnt, lenAPM},
	{PortPCIHotplug, lenPCIHotplug},
	{PortCPUHotplug, lenCPUHotplug},
	{PortGPE0, lenGPE0},
	{PortPM1aCnt, lenPM1aCnt},
}

// ClaimPorts claims the fixed ACPI ports in io: 0xb2–0xb3, 0xae00–0xae0f,
// 0xaf00–0xaf1f, 0xafe0–0xafe3 and 0xb004–0xb005. On failure it releases
// what it claimed.
func (pm *PM) ClaimPorts(io hw.IOSpace) error {
	for i, r := range pmPorts {
		if err := io.ClaimPorts(r.base, r.n, pm); err != nil {
			for _, c := range pmPorts[:i] {
				io.ReleasePorts(c.base, c.n)
			}
			return fmt.Errorf("piix4-pm: claim ports %#x+%d: %w", r.base, r.n, err)
		}
	}
	return nil
}

// SCIEnabled reports PM1a_CNT.SCI_EN.
func (pm *PM) SCIEnabled() bool {
	pm.mu.Lock()
	defer pm.mu.Unlock()
	return pm.cnt&PM1CntSCIEn != 0
}

func validSize(size int) bool { return size == 1 || size == 2 || size == 4 }

// within reports whether [port, port+size) lies inside the n ports at base.
func within(port uint16, size int, base, n uint16) bool {
	return port >= base && int(port-base)+size <= int(n)
}

// ReadPort implements hw.PortIO for the ports ClaimPorts claims.
func (pm *PM) ReadPort(port uint16, size int) uint32 {
	if !validSize(size) {
		pm.warn.Warn("piix4-pm: bad read size", "port", fmt.Sprintf("%#x", port), "size", size)
		return ones(size)
	}
	pm.mu.Lock()
	defer pm.mu.Unlock()
	switch {
	case within(port, size, PortPM1aCnt, lenPM1aCnt):
		return uint32(pm.cnt>>(8*(port-PortPM1aCnt))) & ones(size)
	case within(port, size, PortAPMCnt, lenAPM) && size == 1:
		if port == PortAPMCnt {
			return uint32(pm.apmc)
		}
		return uint32(pm.apms)
	case within(port, size, PortGPE0, lenGPE0):
		var v uint32
		for i := 0; i < size; i++ {
			off := int(port-PortGPE0) + i
			var b uint8
			if off < lenGPE0/2 {
				b = pm.gpeSts[off]
			} else {
				b = pm.gpeEn[off-lenGPE0/2]
			}
			v |= uint32(b) << (8 * i)
		}
		return v
	case within(port, size, PortPCIHotplug, lenPCIHotplug):
		// PCIU/PCID (no events), B0EJ, B0RM: no slot is removable.
		return 0
	case within(port, size, PortCPUHotplug, lenCPUHotplug):
		var v uint32
		for i := 0; i < size; i++ {
			v |= uint32(pm.cpus[int(port-PortCPUHotplug)+i]) << (8 * i)
		}
		return v
	}
	pm.warn.Warn("piix4-pm: read outside its registers", "port", fmt.Sprintf("%#x", port), "size", size)
	return ones(size)
}

// WritePort implements hw.PortIO for the ports ClaimPorts claims.
func (pm *PM) WritePort(port uint16, size int, v uint32) {
	if !validSize(size) {
		pm.warn.Warn("piix4-pm: bad write size", "port", fmt.Sprintf("%#x", port), "size", size)
		return
	}
	v &= ones(size)
	switch {
	case within(port, size, PortPM1aCnt, lenPM1aCnt):
		pm.mu.Lock()
		val := pm.cnt
		if size == 1 {
			sh := 8 * (port - PortPM1aCnt)
			val = val&^(0xff<<sh) | uint16(v)<<sh
		} else {
			val = uint16(v)
		}
		pm.cnt = val &^ PM1CntSlpEn
		pm.mu.Unlock()
		if val&PM1CntSlpEn != 0 {
			pm.sleep(val & PM1CntSlpTyp >> pm1SlpTypShft)
		}
	case within(port, size, PortAPMCnt, lenAPM) && size == 1:
		pm.mu.Lock()
		if port == PortAPMSts {
			pm.apms = uint8(v)
			pm.mu.Unlock()
			return
		}
		// apm_ioport_writeb → apm_ctrl_changed → acpi_pm1_cnt_update.
		pm.apmc = uint8(v)
		switch v {
		case apmACPIEnable:
			pm.cnt |= PM1CntSCIEn
		case apmACPIDisable:
			pm.cnt &^= PM1CntSCIEn
		}
		pm.mu.Unlock()
	case within(port, size, PortGPE0, lenGPE0):
		// acpi_gpe_ioport_writeb, byte by byte: status is write-1-to-clear.
		pm.mu.Lock()
		for i := 0; i < size; i++ {
			off := int(port-PortGPE0) + i
			b := uint8(v >> (8 * i))
			if off < lenGPE0/2 {
				pm.gpeSts[off] &^= b
			} else {
				pm.gpeEn[off-lenGPE0/2] = b
			}
		}
		pm.mu.Unlock()
	case within(port, size, PortPCIHotplug, lenPCIHotplug):
		pm.warn.Warn("piix4-pm: PCI hotplug write ignored (no hotplug, nothing to eject)",
			"port", fmt.Sprintf("%#x", port), "size", size, "value", fmt.Sprintf("%#x", v))
	case within(port, size, PortCPUHotplug, lenCPUHotplug):
		pm.warn.Warn("piix4-pm: write to the read-only CPU bitmap ignored",
			"port", fmt.Sprintf("%#x", port), "size", size)
	default:
		pm.warn.Warn("piix4-pm: write outside its registers", "port", fmt.Sprintf("%#x", port), "size", size)
	}
}

// sleep acts on SLP_EN as QEMU's acpi_pm1_cnt_write does.
func (pm *PM) sleep(typ uint16) {
	switch typ {
	case slpTypSoftOff, slpTypQEMUS4:
		if err := pm.sd.PowerOff(); err != nil {
			pm.warn.Warn("piix4-pm: power off failed", "err", err)
		}
	case slpTypS3:
		pm.warn.Warn("piix4-pm: S3 suspend requested but not supported; ignored")
	default:
		pm.warn.Warn("piix4-pm: sleep with an undefined SLP_TYP ignored", "slp_typ", typ)
	}
}

// State returns the PM function's state.
func (pm *PM) State() PMState {
	cfg := pm.Snapshot()
	pm.mu.Lock()
	defer pm.mu.Unlock()
	return PMState{Config: cfg, PM1aCnt: pm.cnt, APMC: pm.apmc, APMS: pm.apms, GPESts: pm.gpeSts, GPEEn: pm.gpeEn}
}

// SetState restores a state returned by State.
func (pm *PM) SetState(st PMState) error {
	if st.PM1aCnt&PM1CntSlpEn != 0 {
		return fmt.Errorf("piix4-pm: saved PM1a_CNT %#x has SLP_EN set", st.PM1aCnt)
	}
	if err := pm.Restore(st.Config); err != nil {
		return fmt.Errorf("piix4-pm: %w", err)
	}
	pm.mu.Lock()
	defer pm.mu.Unlock()
	pm.cnt, pm.apmc, pm.apms, pm.gpeSts, pm.gpeEn = st.PM1aCnt, st.APMC, st.APMS, st.GPESts, st.GPEEn
	return nil
}
