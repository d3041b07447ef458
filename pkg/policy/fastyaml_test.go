package policy

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

// fastYAMLCorpus is YAML the fast path reads (most of it) or must leave to
// yaml.v3 (the rest): every such input must come out as yaml.v3 reads it.
var fastYAMLCorpus = []string{
	"",
	"\n\n",
	"# nothing yet\n",
	"~\n",
	"containers: {}\n",
	"containers:\n",
	"containers:   \n",
	"containers: # none\n",
	"containers:\n  {}\n",
	"containers:\n  []\n",
	"containers:\n  [a, b]\n",
	"containers:\n  {}\nextra: 1\n",
	"containers:\n  {} # c\n",
	"containers: []\n",
	"containers: [ ]\n",
	"containers: [a,b , c]\n",
	"containers: [a, b,]\n",
	"containers: [a,, b]\n",
	"containers: [a\n",
	"containers: {a: b}\n",
	"containers: x\n",
	"containers: x y\n",
	"containers: 'x'\n",
	"containers: \"x\"\n",
	"containers: 'x' # c\n",
	"containers: 'x'y\n",
	"containers: \"a\\\"b\"\n",
	"containers: 'a''b'\n",
	"containers: null\n",
	"containers: Null\n",
	"containers: true\n",
	"containers: 12\n",
	"containers: 0x1F\n",
	"containers: 1e3\n",
	"containers: .inf\n",
	"containers: 10.80.0.1\n",
	"containers: 10.80.0.1/24\n",
	"containers: 1..2\n",
	"containers: 1.5\n",
	"containers: 1.5.\n",
	"containers: 1_000\n",
	"containers: 1_0.5.5\n",
	"containers: 0b101\n",
	"containers: 0o17\n",
	"containers: 0x1F.1.1\n",
	"containers: 12:30\n",
	"containers: 2001-12-14\n",
	"containers: 2001-12-14t21:59:43.10-05:00\n",
	"containers: 2001-12-14 21:59:43.10\n",
	"containers: 2001-12-14T21:59:43.1.1Z\n",
	"containers: 1e3.4.5\n",
	"containers: 1:2:3\n",
	"containers: ~\n",
	"containers:x\n",
	"containers :\n",
	"containers:\n  web:\n",
	"containers:\n  web:\n  db:\n",
	"containers:\n  web: {}\n",
	"containers:\n  web:\n    addresses: [10.77.0.1/24, fd77::1, \"10.77.0.9:5432/tcp\"]\n",
	"containers:\n  web:\n    addresses: [10.77.0.1/24, fd77::1, 10.77.0.9:5432/tcp, \"[fd77::9]:80-81/udp\"]\n",
	"containers:\n  web:\n    addresses: [::1]\n",
	"containers:\n  web:\n    addresses: [fd77::]\n",
	"containers:\n  web:\n    addresses: [a:, b]\n",
	"containers:\n  web:\n    addresses: [a:b]\n",
	"containers:\n  web:\n    addresses: [[fd77::9]:80/tcp]\n",
	"containers:\n  web:\n    addresses: [fd77::9]:80/tcp\n",
	"containers:\n  web:\n    addresses: 10.0.0.1:\n",
	"containers:\n  web:\n    addresses: a: b\n",
	"containers:\n  web:\n    addresses:\n      - 10.77.1.1\n      - fd77::2 # two\n",
	"containers:\n  web:\n    addresses:\n    - 10.77.1.1\n",
	"containers:\n  web:\n    addresses:\n      - 10.77.1.1\n     - 10.77.1.2\n",
	"containers:\n  web:\n    addresses:\n      - 10.77.1.1\n        more\n",
	"containers:\n  web:\n    addresses:\n      -\n",
	"containers:\n  web:\n    addresses:\n      - [a]\n",
	"containers:\n  web:\n    addresses:\n      - - a\n",
	"containers:\n  web:\n    addresses:\n      - \"x\"\n      - 'y'\n",
	"containers:\n  web:\n    mode: shared\n      more\n",
	"containers:\n  web:\n    mode:\n      shared\n",
	"containers:\n  web:\n    mode: shared\n   loopback: host\n",
	"containers:\n  web:\n    mode: shared\n  loopback: host\n",
	"containers:\n  web:\n    mode: shared\n    mode: netns\n",
	"containers:\n  web:\n    mode: shared\n\n\n    loopback: host\n# end\n",
	"containers:\n  web:\n    mode: shared # the default\n    loopback: isolated\n    multicast: [239.1.1.0/24, ff15::1]\n",
	"containers:\n  web:\n    addresses: &shared [10.77.0.9:80/tcp]\n    loopback: &lo host\n  api:\n    addresses: [10.77.0.9:81/tcp]\n    loopback: *lo\n",
	"containers:\n  web:\n    <<: {mode: netns}\n",
	"containers:\n  web:\n\taddresses: [10.0.0.1]\n",
	"containers:\r\n  web: {}\r\n",
	"containers:\n  wéb: {}\n",
	"---\ncontainers: {}\n",
	"containers: {}\n---\ncontainers: {}\n",
	"containers: {}\n...\n",
	"%YAML 1.2\n---\ncontainers: {}\n",
	"  containers:\n    web:\n      addresses: [10.0.0.1]\n",
	"containers:\n  web:\n    addresses: [10.0.0.1]\n  db:\n    addresses: [10.0.0.2]\nother: x\n",
	"containers:\n  123:\n    addresses: [10.0.0.1]\n",
	"containers:\n  true:\n    addresses: [10.0.0.1]\n",
	"containers:\n  web-1.a_b:\n    addresses: [10.0.0.1]\n",
	"containers:\n  -web:\n",
	"containers:\n  - web\n",
	"- a\n- b\n",
	"just a scalar\n",
	"containers:\n  web:\n    addresses: [10.0.0.1]    # spaces, then a comment\n",
	"containers:\n  web:\n    addresses: [10.0.0.1]# no space\n",
	"containers:\n  web:\n    addresses: [10.0.0.1 ]\n",
	"containers:\n  web:\n    addresses: [ 10.0.0.1 , 10.0.0.2 ]\n",
	"containers:\n  web:\n    addresses: [10.0.0.1,10.0.0.2]\n",
	"containers:\n  web:\n    addresses: [10.0.0.1] x\n",
	"containers:\n  web:\n    addresses: [\"a\" \"b\"]\n",
	"containers:\n  web:\n    addresses: [a b]\n",
	"containers:\n  web:\n    addresses: [a#b]\n",
	"containers:\n  web:\n    addresses: [a #b]\n",
	"containers:\n  web:\n    addresses: a#b\n",
	"containers:\n  web:\n    addresses: a #b\n",
	"containers:\n  web:\n    name: " + strings.Repeat("x", 200) + "\n",
	"containers:\n  " + strings.Repeat("x", 200) + ":\n    addresses: [10.0.0.1]\n",
	"containers:\n  " + strings.Repeat("x", 1100) + ":\n    addresses: [10.0.0.1]\n",
	"containers:\n  web:\n    addresses: [10.0.0.1]\n  web:\n    addresses: [10.0.0.2]\n",
	"containers:\n  web:\n    addresses: []\n    multicast: []\n",
	"containers:\n  web:\n    addresses: [\"\"]\n",
	"containers:\n  web:\n    addresses: ''\n",
	"containers:\n  web:\n    addresses:\n",
	"containers:\n  web:\n    addresses:\n  db:\n",
	"containers:\n  web:\n    addresses:\n# comment\n      - 10.0.0.1\n",
	"containers:\n  web:\n    addresses:\n      # comment\n      - 10.0.0.1\n",
	"containers:\n  web:\n    addresses:\n      - 10.0.0.1\n    # comment\n    loopback: host\n",
}

// compareNodes reports how got differs from want, "" if not at all (in what
// the policy builder reads, plus column and style).
func compareNodes(path string, got, want *yaml.Node) string {
	if got == nil || want == nil {
		if got != want {
			return fmt.Sprintf("%s: got %v, want %v", path, got, want)
		}
		return ""
	}
	if got.Kind != want.Kind || got.Tag != want.Tag || got.ShortTag() != want.ShortTag() || got.Value != want.Value ||
		got.Line != want.Line || got.Column != want.Column || got.Style != want.Style || len(got.Content) != len(want.Content) {
		return fmt.Sprintf("%s: got {kind %v tag %q value %q line %d col %d style %v, %d children}, want {kind %v tag %q value %q line %d col %d style %v, %d children}",
			path, got.Kind, got.Tag, got.Value, got.Line, got.Column, got.Style, len(got.Content),
			want.Kind, want.Tag, want.Value, want.Line, want.Column, want.Style, len(want.Content))
	}
	for i := range got.Content {
		if d := compareNodes(fmt.Sprintf("%s/%d", path, i), got.Content[i], want.Content[i]); d != "" {
			return d
		}
	}
	return ""
}

// checkFast fails if the fast path reads data differently from yaml.v3;
// it returns whether the fast path read it.
func checkFast(t *testing.T, data []byte) bool {
	t.Helper()
	got, ok := fastDecode(data)
	if !ok {
		return false
	}
	want, err := decodeYAMLv3(data)
	if err != nil {
		t.Errorf("%q: the fast path reads it, yaml.v3 says %v", data, err)
		return true
	}
	if d := compareNodes("root", got, want); d != "" {
		t.Errorf("%q: %s", data, d)
	}
	return true
}

func TestFastYAML(t *testing.T) {
	fast := 0
	for _, s := range fastYAMLCorpus {
		if checkFast(t, []byte(s)) {
			fast++
		}
	}
	// And the way real files are written.
	files, _ := filepath.Glob("../../examples/*.yaml")
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if !checkFast(t, data) && !strings.Contains(f, "bad") {
			t.Errorf("%s: the fast path does not read it", f)
		}
	}
	var big strings.Builder
	big.WriteString("# generated\ncontainers:\n")
	for i := 1; i <= 2000; i++ {
		fmt.Fprintf(&big, "  c%05d:\n    addresses: [10.80.%d.%d, \"fd80::%x\"]\n    loopback: isolated\n", i, i/256, i%256, i)
	}
	if !checkFast(t, []byte(big.String())) {
		t.Error("the fast path does not read a generated policy")
	}
	if fast < len(fastYAMLCorpus)/3 {
		t.Errorf("the fast path read only %d of %d inputs", fast, len(fastYAMLCorpus))
	}
}

// FuzzFastYAML: whatever the fast path reads, it reads as yaml.v3 does.
func FuzzFastYAML(f *testing.F) {
	for _, s := range fastYAMLCorpus {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		checkFast(t, []byte(s))
	})
}
