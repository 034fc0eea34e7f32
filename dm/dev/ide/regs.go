package ide

// ATA registers and codes (ATA/ATAPI-6; names as in QEMU include/hw/ide/internal.h).

// Status register bits.
const (
	statERR  = 0x01
	statDRQ  = 0x08
	statDSC  = 0x10 // SEEK_STAT
	statDF   = 0x20
	statDRDY = 0x40 // READY_STAT
	statBSY  = 0x80
)

// Error register bits.
const (
	errAMNF = 0x01
	errABRT = 0x04
	errMC   = 0x20
	errIDNF = 0x10
	errUNC  = 0x40
)

// Device control register (0x3f6/0x376) bits.
const (
	ctlNIEN = 0x02 // IDE_CTRL_DISABLE_IRQ
	ctlSRST = 0x04 // IDE_CTRL_RESET
	ctlHOB  = 0x80 // IDE_CTRL_HOB
)

// Device/head register bits.
const (
	selHS       = 0x0f // head / LBA 27:24
	selDEV      = 0x10
	selLBA      = 0x40
	selAlwaysOn = 0xa0
)

// Command-block register offsets.
const (
	regData    = 0
	regError   = 1 // read; write: features
	regNSector = 2
	regSector  = 3
	regLCyl    = 4
	regHCyl    = 5
	regSelect  = 6
	regStatus  = 7 // read; write: command
)

// ATA commands.
const (
	cmdNOP                 = 0x00
	cmdDSM                 = 0x06
	cmdDeviceReset         = 0x08
	cmdRecalibrate         = 0x10
	cmdReadSectors         = 0x20
	cmdReadSectorsNoRetry  = 0x21
	cmdReadSectorsExt      = 0x24
	cmdReadDMAExt          = 0x25
	cmdReadNativeMaxExt    = 0x27
	cmdReadMultipleExt     = 0x29
	cmdWriteSectors        = 0x30
	cmdWriteSectorsNoRetry = 0x31
	cmdWriteSectorsExt     = 0x34
	cmdWriteDMAExt         = 0x35
	cmdWriteMultipleExt    = 0x39
	cmdWriteVerify         = 0x3c
	cmdReadVerify          = 0x40
	cmdReadVerifyNoRetry   = 0x41
	cmdReadVerifyExt       = 0x42
	cmdSeek                = 0x70
	cmdDiagnose            = 0x90
	cmdInitDevParams       = 0x91 // INITIALIZE DEVICE PARAMETERS (WIN_SPECIFY)
	cmdStandbyNow2         = 0x94
	cmdIdleImmediate2      = 0x95
	cmdStandby2            = 0x96
	cmdSetIdle2            = 0x97
	cmdCheckPowerMode2     = 0x98
	cmdSleepNow2           = 0x99
	cmdPacket              = 0xa0
	cmdIdentifyPacket      = 0xa1
	cmdReadMultiple        = 0xc4
	cmdWriteMultiple       = 0xc5
	cmdSetMultiple         = 0xc6
	cmdReadDMA             = 0xc8
	cmdReadDMANoRetry      = 0xc9
	cmdWriteDMA            = 0xca
	cmdWriteDMANoRetry     = 0xcb
	cmdStandbyNow1         = 0xe0
	cmdIdleImmediate       = 0xe1
	cmdStandby             = 0xe2
	cmdSetIdle1            = 0xe3
	cmdCheckPowerMode1     = 0xe5
	cmdSleepNow1           = 0xe6
	cmdFlushCache          = 0xe7
	cmdFlushCacheExt       = 0xea
	cmdIdentify            = 0xec
	cmdSetFeatures         = 0xef
	cmdSecurityFreezeLock  = 0xf5
	cmdReadNativeMax       = 0xf8
)

// maxMultSectors is the READ/WRITE MULTIPLE block limit (QEMU MAX_MULT_SECTORS).
const maxMultSectors = 16

// Bus-master IDE (SFF-8038i) registers, per channel at BAR4 + 8·channel.
const (
	bmCmd    = 0 // command: start, direction
	bmStatus = 2
	bmAddr   = 4 // PRD table address, 32 bits, dword aligned

	bmCmdStart = 0x01
	bmCmdWrite = 0x08 // direction: 1 = the controller writes guest memory (a disk read)

	bmStActive = 0x01
	bmStError  = 0x02
	bmStIRQ    = 0x04
	bmStDrive0 = 0x20 // drive 0 DMA capable (software-set)
	bmStDrive1 = 0x40

	bmBARSize = 16
)

// PRD (physical region descriptor) entries.
const (
	prdSize = 8
	prdEOT  = 1 << 31 // in the second dword
	// MaxPRDEntries bounds a PRD table: one without an end-of-table entry
	// within this many entries (32 KiB) is refused. Linux uses at most 128
	// entries (LIBATA_MAX_PRD), SeaBIOS 16.
	MaxPRDEntries = 4096
)

// ATAPI: interrupt reason bits (in the sector count register).
const (
	atapiIntCoD = 0x01 // command or data: 1 = command / status
	atapiIntIO  = 0x02 // 1 = to the host
)

// ATAPI: SCSI sense keys and additional sense codes.
const (
	senseNone           = 0x00
	senseNotReady       = 0x02
	senseMediumError    = 0x03
	senseIllegalRequest = 0x05
	senseUnitAttention  = 0x06
	senseAbortedCommand = 0x0b

	ascUnrecoveredRead     = 0x11
	ascIllegalOpcode       = 0x20
	ascLBAOutOfRange       = 0x21
	ascInvalidField        = 0x24
	ascMediumMayHaveChange = 0x28
	ascSavingParamsNotSupp = 0x39
	ascMediumNotPresent    = 0x3a
	ascRemovalPrevented    = 0x53
)

// ATAPI packet commands (SCSI MMC opcodes).
const (
	scsiTestUnitReady  = 0x00
	scsiRequestSense   = 0x03
	scsiInquiry        = 0x12
	scsiStartStopUnit  = 0x1b
	scsiPreventAllow   = 0x1e
	scsiReadCapacity   = 0x25
	scsiRead10         = 0x28
	scsiSeek10         = 0x2b
	scsiReadTOC        = 0x43
	scsiGetConfig      = 0x46
	scsiGetEventStatus = 0x4a
	scsiModeSense10    = 0x5a
	scsiRead12         = 0xa8
	scsiSetSpeed       = 0xbb
	scsiMechStatus     = 0xbd

	atapiPacketSize = 12
	cdSectorSize    = 2048
	// cdMaxSectors512 is the largest medium still reported as a CD rather
	// than a DVD, in 512-byte sectors (QEMU CD_MAX_SECTORS).
	cdMaxSectors512 = 80 * 60 * 75 * 2048 / 512
)

// sectorSize is the ATA logical sector.
const sectorSize = 512
