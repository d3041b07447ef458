package confine

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/l3iso/l3iso/pkg/maps"
)

func TestHostIDs(t *testing.T) {
	if maps.MaxContainers > MaxContainerID {
		t.Fatalf("container ids go up to %d, host id ranges to %d", maps.MaxContainers, MaxContainerID)
	}
	for id, want := range map[uint32]uint32{1: 1 << 30, 2: 1<<30 + 1<<16, MaxContainerID: 1<<31 - 1<<16} {
		if got, err := HostIDs(id); err != nil || got != want {
			t.Errorf("HostIDs(%d) = %d, %v; want %d", id, got, err, want)
		}
	}
	for _, id := range []uint32{0, MaxContainerID + 1} {
		if _, err := HostIDs(id); err == nil {
			t.Errorf("HostIDs(%d) has a range", id)
		}
	}
}

func TestBuildEnv(t *testing.T) {
	t.Setenv("TERM", "vt100")
	t.Setenv("FROM_CALLER", "c")
	os.Unsetenv("LANG")
	f := filepath.Join(t.TempDir(), "env")
	os.WriteFile(f, []byte("  # comment\n\nA=1\nB=x=y\nFROM_CALLER\nNOT_SET\n"), 0o644)
	env, err := buildEnv("/home/u", []string{f}, []string{"A=2", "PATH=/bin"})
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(env)
	want := []string{"A=2", "B=x=y", "FROM_CALLER=c", "HOME=/home/u", "PATH=/bin", "TERM=vt100"}
	if !slices.Equal(env, want) {
		t.Errorf("buildEnv = %q, want %q", env, want)
	}
	for _, bad := range []string{"=x", "A B=1", "A\x00=1"} {
		if _, err := buildEnv("/", nil, []string{bad}); err == nil || !strings.Contains(err.Error(), "--env") {
			t.Errorf("buildEnv(%q): %v, want an --env error", bad, err)
		}
	}
	os.WriteFile(f, []byte("OK=1\n=bad\n"), 0o644)
	if _, err := buildEnv("/", []string{f}, nil); err == nil || !strings.Contains(err.Error(), f+":2") {
		t.Errorf("bad env file line: %v, want %s:2", err, f)
	}
}

func TestLookupUser(t *testing.T) {
	for spec, want := range map[string]User{
		"":       {UID: 0, GID: 0, Home: "/root"},
		"root":   {UID: 0, GID: 0, Home: "/root"},
		"4242":   {UID: 4242, GID: 0, Home: "/"},
		"4242:7": {UID: 4242, GID: 7, Home: "/"},
		"0:4242": {UID: 0, GID: 4242, Home: "/root"},
	} {
		got, err := lookupUser(spec)
		got.Groups = nil
		if err != nil || got.UID != want.UID || got.GID != want.GID || got.Home != want.Home {
			t.Errorf("lookupUser(%q) = %+v, %v; want %+v", spec, got, err, want)
		}
	}
	for _, bad := range []string{"no-such-user-here", "65536", "1:65536", "1:no-such-group-here"} {
		if _, err := lookupUser(bad); err == nil || !strings.Contains(err.Error(), "--user "+bad) {
			t.Errorf("lookupUser(%q): %v, want an error naming it", bad, err)
		}
	}
}
