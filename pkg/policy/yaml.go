package policy

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"unsafe"

	"gopkg.in/yaml.v3"
)

// Load reads the policy file at path and parses it with Parse.
func Load(path string) (*Policy, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read policy: %w", err)
	}
	// data is ours and never changes: the policy may point into it.
	return parse(path, data, unsafe.String(unsafe.SliceData(data), len(data)))
}

// Parse parses and validates a policy file; filename is only used in error
// messages ("<input>" when empty). Empty input, or "containers: {}", is a
// valid empty policy.
//
// Parsing is strict: unknown fields, duplicate keys, duplicate container
// names, values of the wrong type and more than one YAML document are
// errors. Every error has the form "FILE:LINE: problem"; when there are
// several they are joined with errors.Join, one per line, in line order. Each
// is an *Error.
func Parse(filename string, data []byte) (*Policy, error) {
	return parse(filename, data, string(data))
}

// parse is Parse of data, which text holds too (the policy's names may
// point into it).
func parse(filename string, data []byte, text string) (*Policy, error) {
	if filename == "" {
		filename = "<input>"
	}
	if p, _, ok := parsePlain(filename, text, false); ok {
		err := validate(p, nil)
		if err == nil {
			return p, nil
		}
		// A problem: the general path reads the file again, with the line
		// of every part, and says where it is (a valid file, the common
		// case, is not read twice, nor its lines kept).
		if _, err2 := parseGeneral(filename, data); err2 != nil {
			return nil, err2
		}
		return nil, err
	}
	return parseGeneral(filename, data)
}

// parseGeneral is Parse for any YAML: the document's nodes (yaml.v3), then
// the builder, which words every problem.
func parseGeneral(filename string, data []byte) (*Policy, error) {
	root, err := decodeYAML(data)
	if err != nil {
		return nil, yamlSyntaxError(filename, data, err)
	}
	src := &source{file: filename}
	b := &builder{p: &Policy{}, src: src, r: &reporter{src: src}}
	b.document(root)
	if err := b.r.err(); err != nil {
		return nil, err
	}
	if err := validate(b.p, src); err != nil {
		return nil, err
	}
	return b.p, nil
}

// extraDocumentError is returned by decodeYAML for a second document.
type extraDocumentError struct{ line int }

func (e *extraDocumentError) Error() string {
	return "a policy file holds one YAML document: remove the second one (the \"---\" line and what follows)"
}

// decodeYAML returns the root node of data's only document, or nil for an
// empty document.
func decodeYAML(data []byte) (*yaml.Node, error) {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, nil
		}
		return nil, err
	}
	var extra yaml.Node
	switch err := dec.Decode(&extra); {
	case errors.Is(err, io.EOF):
	case err != nil:
		return nil, err
	default:
		line := extra.Line
		if len(extra.Content) > 0 {
			line = extra.Content[0].Line
		}
		return nil, &extraDocumentError{line: line}
	}
	if len(doc.Content) == 0 {
		return nil, nil
	}
	return doc.Content[0], nil
}

// yamlError is a yaml.v3 syntax error, reworded.
type yamlError struct {
	msg string
	err error
}

func (e *yamlError) Error() string { return e.msg }
func (e *yamlError) Unwrap() error { return e.err }

// The expressions below are compiled when an error needs them, not when
// the program starts: every l3iso command would pay for them otherwise.
var (
	yamlLineRE = lazyRE(`^line (\d+): (.*)$`)
	// bracketPortRE finds an unquoted IPv6 address with a port, which YAML
	// reads as the start of a list.
	bracketPortRE = lazyRE(`\[[0-9A-Fa-f:.]*\]:[0-9]`)
	// flowColonsRE finds an unquoted address starting with "::" inside
	// [...], which YAML cannot read as a plain value.
	flowColonsRE = lazyRE(`[\[,]\s*::`)
)

// lazyRE compiles expr on first use.
func lazyRE(expr string) func() *regexp.Regexp {
	return sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(expr) })
}

// locateBudget bounds how many bytes locateSyntaxError may re-parse.
const locateBudget = 64 << 20

// healLines is how far locateSyntaxError looks for the end of a multi-line
// construct that merely looked like an error.
const healLines = 16

// yamlSyntaxError turns a yaml.v3 error into a positioned *Error.
func yamlSyntaxError(filename string, data []byte, err error) error {
	var extra *extraDocumentError
	if errors.As(err, &extra) {
		return &Error{File: filename, Line: extra.line, Err: err}
	}
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	reported := 0
	if m := yamlLineRE().FindStringSubmatch(msg); m != nil {
		reported, _ = strconv.Atoi(m[1])
		msg = m[2]
	}
	line := locateSyntaxError(data, reported)
	text := lineText(data, line)
	switch {
	case bracketPortRE().MatchString(text):
		msg += `: quote an IPv6 address with a port, e.g. "[fd77::1]:8080/tcp"`
	case flowColonsRE().MatchString(text):
		msg += `: quote an address that starts with "::" inside [...], e.g. ["::5"]`
	case strings.HasPrefix(strings.TrimLeft(text, " "), "\t"):
		msg += ": indent with spaces, not tabs"
	}
	return &Error{File: filename, Line: line, Err: &yamlError{msg: "invalid YAML: " + msg, err: err}}
}

// locateSyntaxError finds the line of a syntax error in data. yaml.v3
// reports the line where the enclosing block began (sometimes counted from
// 0), or no line at all, so its line is only a lower bound.
//
// The error is on the first line at which the text read so far stops being
// valid YAML, and stays invalid however it goes on. Every prefix of the file
// that ends at a line end either parses or fails; past the error all fail.
// Before it, a prefix fails only while a multi-line construct is open (a
// flow list or mapping, a quoted string), and parses again once the
// construct is closed. So: binary-search for a line where the prefix starts
// failing, then parse a few more lines to see whether it heals; if it does,
// search again after that point. A construct longer than healLines, or a
// file so big that the search would parse more than locateBudget bytes, makes
// the answer the line where the construct opens or the lower bound.
func locateSyntaxError(data []byte, reported int) int {
	ends := []int{0} // ends[n] is the length of the prefix of n lines
	for off := 0; off < len(data); {
		next := bytes.IndexByte(data[off:], '\n')
		if next < 0 {
			off = len(data)
		} else {
			off += next + 1
		}
		ends = append(ends, off)
	}
	last := len(ends) - 1
	if last == 0 {
		return 1
	}
	spent := 0
	fails := func(n int) bool {
		spent += ends[n]
		_, err := decodeYAML(data[:ends[n]])
		return err != nil
	}

	lo := min(max(reported, 1), last) - 1 // a prefix that parses
	if lo > 0 && fails(lo) {
		lo = 0
	}
	hi := last // a prefix that fails: the whole file
	for spent <= locateBudget {
		for hi-lo > 1 && spent <= locateBudget {
			mid := lo + (hi-lo)/2
			if fails(mid) {
				hi = mid
			} else {
				lo = mid
			}
		}
		healed := 0
		for n := hi + 1; n <= min(hi+healLines, last) && spent <= locateBudget; n++ {
			if !fails(n) {
				healed = n
				break
			}
		}
		if healed == 0 {
			return hi
		}
		lo, hi = healed, last
	}
	return max(reported, 1)
}

// lineText returns line n (1-based) of data.
func lineText(data []byte, n int) string {
	for i := 1; i < n; i++ {
		j := bytes.IndexByte(data, '\n')
		if j < 0 {
			return ""
		}
		data = data[j+1:]
	}
	if j := bytes.IndexByte(data, '\n'); j >= 0 {
		data = data[:j]
	}
	return string(data)
}

var containerFields = []string{"mode", "addresses", "loopback", "multicast"}

// builder turns YAML nodes into a Policy, recording the line of every part
// in src and problems in r.
type builder struct {
	p   *Policy
	src *source
	r   *reporter
}

func (b *builder) document(root *yaml.Node) {
	root = resolve(root)
	if root == nil || isNull(root) {
		return
	}
	if root.Kind != yaml.MappingNode {
		b.r.addf(root.Line, "a policy is a mapping with a containers key, not %s", describe(root))
		return
	}
	b.fields(root, "", []string{"containers", "pods"}, func(k, v *yaml.Node) {
		if k.Value == "pods" {
			b.pods(v)
			return
		}
		b.containers(v)
	})
}

func (b *builder) containers(v *yaml.Node) {
	if isNull(v) {
		return
	}
	if v.Kind != yaml.MappingNode {
		b.r.addf(v.Line, "containers must map each container name to its settings, not %s", describe(v))
		return
	}
	b.p.Containers = slices.Grow(b.p.Containers, len(v.Content)/2)
	b.src.containers = slices.Grow(b.src.containers, len(v.Content)/2)
	for i := 0; i+1 < len(v.Content); i += 2 {
		k, val := resolve(v.Content[i]), resolve(v.Content[i+1])
		if k.Kind != yaml.ScalarNode {
			b.r.addf(k.Line, "a container name must be a plain name, not %s", describe(k))
			continue
		}
		c := Container{Name: k.Value}
		ln := containerLines{name: k.Line}
		b.container(&c, &ln, val)
		// Duplicate names are kept: validate reports them with both lines.
		b.p.Containers = append(b.p.Containers, c)
		b.src.containers = append(b.src.containers, ln)
	}
}

func (b *builder) container(c *Container, ln *containerLines, v *yaml.Node) {
	where := "container " + strconv.Quote(c.Name) + ": " // = fmt.Sprintf("container %q: "), cheaper
	if isNull(v) {
		return
	}
	if v.Kind != yaml.MappingNode {
		b.r.addf(v.Line, "container %q must be a mapping of its settings (%s), not %s",
			c.Name, strings.Join(containerFields, ", "), describe(v))
		return
	}
	b.fields(v, where, containerFields, func(k, val *yaml.Node) {
		switch k.Value {
		case "mode":
			ln.mode = val.Line
			if s, ok := b.scalar(val, where, "mode", "shared or netns"); ok {
				c.Mode = Mode(s)
			}
		case "loopback":
			ln.loopback = val.Line
			if s, ok := b.scalar(val, where, "loopback", "isolated or host"); ok {
				c.Loopback = Loopback(s)
			}
		case "addresses":
			ln.addresses = k.Line
			for _, item := range b.list(val, where, "addresses", "[10.77.0.1/24, fd77::1]") {
				a, err := ParseAddress(item.Value)
				if err != nil {
					b.r.addf(item.Line, "%s%w", where, err)
					continue
				}
				c.Addresses = append(c.Addresses, a)
				ln.addr = append(ln.addr, item.Line)
			}
		case "multicast":
			ln.multicast = k.Line
			for _, item := range b.list(val, where, "multicast", "[239.1.1.0/24]") {
				g, err := ParseMulticast(item.Value)
				if err != nil {
					b.r.addf(item.Line, "%s%w", where, err)
					continue
				}
				c.Multicast = append(c.Multicast, g)
				ln.mcast = append(ln.mcast, item.Line)
			}
		}
	})
}

// fields calls f for each key and value of mapping m, rejecting keys that
// are not plain names, keys set twice and keys not in known.
func (b *builder) fields(m *yaml.Node, where string, known []string, f func(k, v *yaml.Node)) {
	// The keys seen, with their lines: a few, so a slice (a map per
	// container costs more than the rest of its checks).
	type keyLine struct {
		key  string
		line int
	}
	var seenBuf [8]keyLine
	seen := seenBuf[:0]
	firstLine := func(key string) (int, bool) {
		for _, s := range seen {
			if s.key == key {
				return s.line, true
			}
		}
		return 0, false
	}
	var seenMap map[string]int // for mappings with many keys
	if len(m.Content) > 2*len(seenBuf) {
		seenMap = make(map[string]int, len(m.Content)/2)
		firstLine = func(key string) (int, bool) {
			l, ok := seenMap[key]
			return l, ok
		}
	}
	for i := 0; i+1 < len(m.Content); i += 2 {
		k, v := resolve(m.Content[i]), resolve(m.Content[i+1])
		if k.Kind != yaml.ScalarNode {
			b.r.addf(k.Line, "%sa key must be a plain name, not %s", where, describe(k))
			continue
		}
		if first, ok := firstLine(k.Value); ok {
			b.r.addf(k.Line, "%sfield %q is set twice (first at line %d): keep one", where, k.Value, first)
			continue
		}
		if seenMap != nil {
			seenMap[k.Value] = k.Line
		} else {
			seen = append(seen, keyLine{k.Value, k.Line})
		}
		if !slices.Contains(known, k.Value) {
			b.r.addf(k.Line, "%sunknown field %q: %s", where, k.Value, suggestField(k.Value, known))
			continue
		}
		f(k, v)
	}
}

// scalar returns the text of a field that must be a single value.
func (b *builder) scalar(v *yaml.Node, where, field, choices string) (string, bool) {
	if isNull(v) {
		b.r.addf(v.Line, "%s%s is empty: write %s, or leave the field out for the default", where, field, choices)
		return "", false
	}
	if v.Kind != yaml.ScalarNode {
		b.r.addf(v.Line, "%s%s must be %s, not %s", where, field, choices, describe(v))
		return "", false
	}
	return v.Value, true
}

// list returns the items of a field that must be a list of single values.
func (b *builder) list(v *yaml.Node, where, field, example string) []*yaml.Node {
	if isNull(v) {
		return nil
	}
	if v.Kind != yaml.SequenceNode {
		b.r.addf(v.Line, "%s%s must be a list, e.g. %s, not %s", where, field, example, describe(v))
		return nil
	}
	var items []*yaml.Node
	for _, item := range v.Content {
		item = resolve(item)
		switch {
		case isNull(item):
			b.r.addf(item.Line, "%s%s has an empty entry: remove it", where, field)
		case item.Kind == yaml.MappingNode && len(item.Content) > 0 && resolve(item.Content[0]).Kind == yaml.SequenceNode:
			// An unquoted [fd77::1]:8080/tcp inside [...] reads as a mapping.
			b.r.addf(item.Line, `%s%s entry is a mapping, not an address: quote an IPv6 address with a port, e.g. "[fd77::1]:8080/tcp"`, where, field)
		case item.Kind != yaml.ScalarNode:
			b.r.addf(item.Line, "%s%s entries must be single values, not %s", where, field, describe(item))
		default:
			items = append(items, item)
		}
	}
	return items
}

func resolve(n *yaml.Node) *yaml.Node {
	for n != nil && n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	return n
}

func isNull(n *yaml.Node) bool {
	return n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null"
}

// describe names what a node is, for "must be X, not Y" messages.
func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		if isNull(n) {
			return "an empty value"
		}
		return strconv.Quote(n.Value)
	}
	return "an alias"
}

// suggestField says what to write instead of an unknown field name.
func suggestField(name string, known []string) string {
	if name == "<<" {
		return "YAML merge keys are not supported: write the fields out"
	}
	best, bestDist := "", 3
	for _, k := range known {
		if d := editDistance(name, k); d < bestDist {
			best, bestDist = k, d
		}
	}
	if best != "" {
		return fmt.Sprintf("did you mean %q?", best)
	}
	return "the fields are " + strings.Join(known, ", ")
}

// editDistance is the Levenshtein distance of two short strings.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
