module github.com/xen-dm-go/xen-dm-go

go 1.26.0

require (
	github.com/u-root/uio v0.0.0-20240224005618-d2acac8f3701
	github.com/zeebo/xxh3 v1.1.0
	golang.org/x/sys v0.50.0
)

require (
	github.com/klauspost/cpuid/v2 v2.2.10 // indirect
	github.com/pierrec/lz4/v4 v4.1.14 // indirect
)
