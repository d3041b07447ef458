package sockprobe

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"testing"

	"golang.org/x/sys/unix"
)

func TestWireErrorRoundTrip(t *testing.T) {
	tests := []struct {
		name      string
		in        error
		wantBare  bool       // decoded error is a bare unix.Errno
		wantErrno unix.Errno // errors.Is target, 0 for none
		wantEOF   bool
	}{
		{"nil", nil, false, 0, false},
		{"bare errno", unix.EADDRNOTAVAIL, true, unix.EADDRNOTAVAIL, false},
		{"wrapped errno", fmt.Errorf("dial tcp 127.0.0.1:1: connect: %w", unix.ECONNREFUSED), false, unix.ECONNREFUSED, false},
		{"deadline", fmt.Errorf("read: %w", os.ErrDeadlineExceeded), false, unix.ETIMEDOUT, false},
		{"eof", io.EOF, false, 0, true},
		{"plain", errors.New("echo mismatch"), false, 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, err := json.Marshal(&reply{Err: encodeErr(tt.in)})
			if err != nil {
				t.Fatal(err)
			}
			var rep reply
			if err := json.Unmarshal(b, &rep); err != nil {
				t.Fatal(err)
			}
			got := rep.Err.decode()
			if (got == nil) != (tt.in == nil) {
				t.Fatalf("decode = %v, want %v", got, tt.in)
			}
			if got == nil {
				return
			}
			if got.Error() != tt.in.Error() {
				t.Errorf("message = %q, want %q", got, tt.in)
			}
			if _, bare := got.(unix.Errno); bare != tt.wantBare {
				t.Errorf("decode = %#v: bare errno %v, want %v", got, bare, tt.wantBare)
			}
			if tt.wantErrno != 0 && !errors.Is(got, tt.wantErrno) {
				t.Errorf("errors.Is(%v, %v) = false", got, tt.wantErrno)
			}
			if errors.Is(got, io.EOF) != tt.wantEOF {
				t.Errorf("errors.Is(%v, io.EOF) = %v, want %v", got, !tt.wantEOF, tt.wantEOF)
			}
		})
	}
}

func TestAddressesKeepTheirForm(t *testing.T) {
	for _, s := range []string{"127.0.0.1:80", "[::ffff:127.0.0.1]:80", "[::1]:0", "0.0.0.0:0", "[::]:8080"} {
		ap := netip.MustParseAddrPort(s)
		sa, err := toSockaddr(ap)
		if err != nil {
			t.Fatal(err)
		}
		if got := fromSockaddr(sa); got != ap {
			t.Errorf("%s: round trip gave %v", s, got)
		}
		b, _ := json.Marshal(&request{Addr: ap})
		var req request
		if err := json.Unmarshal(b, &req); err != nil || req.Addr != ap {
			t.Errorf("%s: JSON round trip gave %v, %v", s, req.Addr, err)
		}
	}
	var req request
	if err := json.Unmarshal([]byte(`{"seq":1}`), &req); err != nil || req.Addr.IsValid() || req.Src.IsValid() {
		t.Errorf("missing addresses: %+v, %v", req, err)
	}
}
