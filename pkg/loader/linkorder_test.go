package loader

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// An upgrade attaches the programs that have no link yet before it
// replaces those that have one.
func TestLinkOrder(t *testing.T) {
	dir := t.TempDir()
	for _, n := range []string{"l3_bind4", "l3_sendmsg4"} {
		if err := os.WriteFile(filepath.Join(dir, n), nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	got := linkOrder(dir, []string{"l3_sendmsg4", "l3_post_bind6", "l3_bind4", "l3_post_bind4"})
	want := []string{"l3_post_bind4", "l3_post_bind6", "l3_bind4", "l3_sendmsg4"}
	if !slices.Equal(got, want) {
		t.Errorf("linkOrder = %v, want %v", got, want)
	}
	// A fresh up: no links yet, sorted.
	if got := linkOrder(t.TempDir(), []string{"b", "a"}); !slices.Equal(got, []string{"a", "b"}) {
		t.Errorf("linkOrder on a fresh up = %v, want [a b]", got)
	}
}
