package policy

import (
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// yamlCorpus is YAML parsePlain reads (much of it) or must leave to the
// general path (the rest): every input must come out as the general path
// reads it.
var yamlCorpus = []string{
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

// plainCorpus adds to yamlCorpus what parsePlain must tell apart:
// valid shapes it reads, and problems it must leave to the general path.
var plainCorpus = []string{
	"containers:\n  web:\n    addresses: [10.0.0.1]\n",
	"containers:\n  web:\n    mode: netns\n    addresses: [10.78.0.1/24, fd78::1]\n",
	"containers:\n  web:\n    mode: 'netns'\n    loopback: \"isolated\"\n    addresses: ['10.0.0.1']\n",
	"containers:\n  web:\n    mode: bogus\n    addresses: [10.0.0.1]\n",
	"containers:\n  web:\n    mode: shared\n    loopback: host\n    addresses: [10.0.0.1, \"[fd77::9]:443/tcp\", 10.0.0.2:80-90/udp]\n    multicast: [239.1.1.0/24, ff15::1]\n",
	"containers:\n  web:\n    addresses: [10.0.0.1]\n    multicast: [10.0.0.1]\n",
	"containers:\n  web:\n    addresses: [10.0.0.1, bogus]\n",
	"containers:\n  web:\n    addresses: [10.0.0.1]\n    colour: blue\n",
	"containers:\n  web:\n    addresses: [10.0.0.1]\n    addresses: [10.0.0.2]\n",
	"containers:\n  web:\n    addresses: [10.0.0.1]\n  web:\n    addresses: [10.0.0.1]\n",
	"containers:\n  web:\n    addresses: [10.0.0.1]\n  db:\n    addresses: [10.0.0.1]\n",
	"containers:\n  Web:\n    addresses: [10.0.0.1]\n",
	"containers:\n  web:\n    addresses: ~\n",
	"containers:\n  web:\n    addresses: null\n",
	"containers:\n  web:\n    mode: ~\n",
	"containers:\n  web:\n    mode:\n    addresses: [10.0.0.1]\n",
	"containers:\n  web:\n    mode: [shared]\n",
	"containers:\n  web: ~\n",
	"containers:\n  web: x\n",
	"containers:\n  web: []\n",
	"containers: ~\n",
	"containers:\n  web:\n    addresses:\n      - 10.0.0.1\n      - \"fd77::1\"\n    loopback: host\n  db: {}\n  api:\n",
	"containers:\n  web:\n    addresses:\n      - 10.0.0.1\n    multicast:\n      - 239.1.1.1\n",
	"containers:\n  web:\n    addresses: [10.0.0.1/33]\n",
	"containers:\n  web:\n    addresses: [10.0.0.1:0/tcp]\n",
	"containers:\n  web:\n      addresses: [10.0.0.1]\n  db:\n    addresses: [10.0.0.2]\n",
	"containers:\n   web:\n     addresses: [10.0.0.1]\n  db:\n    addresses: [10.0.0.2]\n",
	"# head\ncontainers: # all of them\n  web: # the web server\n    addresses: [10.0.0.1] # its IP\n# tail\n",
	"containers:\n  web:\n    addresses: [" + strings.Repeat("10.0.0.1, ", 20) + "10.0.0.2]\n",
	"containers:\n  web:\n    addresses: [10.0.0.1]\n  web2:\n    addresses: [10.0.0.1:80/tcp]\n",
}

// checkPlain fails if parsePlain reads data and Parse through the general
// path says something else (another policy, other lines, another error);
// it returns whether parsePlain read it.
func checkPlain(t *testing.T, data []byte) bool {
	t.Helper()
	p, src, ok := parsePlain("f.yaml", string(data), true)
	if !ok {
		return false
	}
	err := validate(p, src)
	want, wantErr := parseGeneral("f.yaml", data)
	// And without lines, as Parse reads a file: the same policy, and an
	// error where there is one (Parse then asks the general path).
	p2, src2, ok2 := parsePlain("f.yaml", string(data), false)
	if err2 := validate(p2, src2); !ok2 || src2 != nil || (err2 == nil) != (err == nil) {
		t.Errorf("%q: without lines: ok %v, src %v, error %v (with lines: %v)", data, ok2, src2, err2, err)
	} else if err == nil && !reflect.DeepEqual(normal(p), normal(p2)) {
		t.Errorf("%q: without lines reads %+v, with %+v", data, p2, p)
	}
	if _, perr := Parse("f.yaml", data); fmt.Sprint(perr) != fmt.Sprint(wantErr) {
		t.Errorf("%q: Parse says %v, the general path %v", data, perr, wantErr)
	}
	if fmt.Sprint(err) != fmt.Sprint(wantErr) {
		t.Errorf("%q: plain path says %v, general path %v", data, err, wantErr)
		return true
	}
	if err == nil && !reflect.DeepEqual(normal(p), normal(want)) {
		t.Errorf("%q: plain path reads %+v, general path %+v", data, p, want)
	}
	return true
}

// normal makes empty and nil slices alike: DeepEqual tells them apart,
// nothing else does.
func normal(p *Policy) *Policy {
	out := &Policy{}
	for _, c := range p.Containers {
		if len(c.Addresses) == 0 {
			c.Addresses = nil
		}
		if len(c.Multicast) == 0 {
			c.Multicast = nil
		}
		out.Containers = append(out.Containers, c)
	}
	return out
}

func TestPlainParse(t *testing.T) {
	read := 0
	for _, s := range append(append([]string{}, yamlCorpus...), plainCorpus...) {
		if checkPlain(t, []byte(s)) {
			read++
		}
	}
	files, _ := filepath.Glob("../../examples/*.yaml")
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		checkPlain(t, data)
	}
	var big strings.Builder
	big.WriteString("# generated\ncontainers:\n")
	for i := 1; i <= 2000; i++ {
		fmt.Fprintf(&big, "  c%05d:\n    addresses: [10.80.%d.%d, \"fd80::%x\"]\n    loopback: isolated\n", i, i/256, i%256, i)
	}
	if !checkPlain(t, []byte(big.String())) {
		t.Error("the plain path does not read a generated policy")
	}
	if read < 40 {
		t.Errorf("the plain path read only %d inputs", read)
	}
	// Lines of validation errors come from the plain path's source.
	_, err := Parse("f.yaml", []byte("containers:\n  web:\n    addresses: [10.0.0.1]\n  db:\n    addresses:\n      - 10.0.0.1\n"))
	if err == nil || !strings.Contains(err.Error(), "f.yaml:6:") {
		t.Errorf("overlap error: %v, want it at line 6", err)
	}
}

// FuzzPlainParse: whatever the plain path reads, it reads as the general
// path does.
func FuzzPlainParse(f *testing.F) {
	for _, s := range append(append([]string{}, yamlCorpus...), plainCorpus...) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		checkPlain(t, []byte(s))
	})
}
