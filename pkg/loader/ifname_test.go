package loader

import "testing"

// TestIfName checks the one-link lookup that names TCX links' interfaces.
func TestIfName(t *testing.T) {
	if got := IfName(1); got != "lo" {
		t.Errorf("IfName(1) = %q, want lo (index 1 in every netns)", got)
	}
	for _, i := range []int{0, -1, 1 << 30} {
		if got := IfName(i); got != "" {
			t.Errorf("IfName(%d) = %q, want \"\" (no such interface)", i, got)
		}
	}
}
