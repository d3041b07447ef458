package loader

import "github.com/cilium/ebpf"

// SetSocketSpec makes Up install f's programs until restore is called.
func SetSocketSpec(f func() (*ebpf.CollectionSpec, error)) (restore func()) {
	old := socketSpec
	socketSpec = f
	return func() { socketSpec = old }
}

// SetTCSpec makes Up install f's TC programs until restore is called.
func SetTCSpec(f func() (*ebpf.CollectionSpec, error)) (restore func()) {
	old := tcSpec
	tcSpec = f
	return func() { tcSpec = old }
}
