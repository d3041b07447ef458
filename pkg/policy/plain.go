package policy

import (
	"net/netip"
	"strings"
)

// parsePlain reads the one shape policy files are generated in — and most
// are written in — straight into containers, without the YAML node tree
// the general path builds (yaml.v3, then the builder): for 10,000
// containers that tree is ~75,000 nodes of 150 bytes, most of what parsing
// a file cost, and a fresh page of memory costs as much as the rest of the
// work on it. What it reads, each construct on one line (comments and blank
// lines anywhere):
//
//	containers:            or  containers: {}
//	  NAME:                or  NAME: {}, or NAME: alone
//	    mode: shared|netns
//	    loopback: isolated|host
//	    addresses: [A, "B", 'C']    or  addresses: []  or  addresses: alone,
//	    multicast: [G, ...]             or a block list, "- A" lines deeper
//
// — exactly the containers and lines the general path would make of the
// same text. Anything else, and anything the general path would report
// (an unknown or repeated field, an address or group that does not parse,
// a value it would call empty or not a list), makes ok false with nothing
// done: the general path then reads the file and words the problem.
// Validation (duplicate names, ownership, limits) is left to validate, as
// for the general path. TestPlainParse checks it against the general path.
//
// The containers' names are slices of text. With lines, src has the line
// of every part (for validation errors); without, src is nil.
func parsePlain(filename, text string, lines bool) (p *Policy, src *source, ok bool) {
	for i := 0; i < len(text); i++ {
		if ch := text[i]; (ch < 0x20 && ch != '\n') || ch > 0x7e { // tabs, CRs, control and non-ASCII bytes
			return nil, nil, false
		}
	}
	pp := &plainParser{text: text, lines: lines}
	p, src = &Policy{}, &source{file: filename}
	if !pp.document(p, src) {
		return nil, nil, false
	}
	if !lines {
		src = nil
	}
	return p, src, true
}

// plainParser walks the content lines of a policy file.
type plainParser struct {
	text string
	pos  int // start of the next line in text
	num  int // number of the last line read (1-based)

	// The current content line: its number, indentation and text without
	// the indentation; ok is false at the end of the file.
	line   int
	indent int
	t      string
	ok     bool

	// Slices of addresses, groups and lines are cut from these, so that
	// 10,000 containers do not cost 10,000 allocations each.
	addrs []Address
	ints  []int
	// Scratch for the items of one list and their lines.
	items     []string
	itemLines []int
	lines     bool // record the lines (src)
}

// next moves to the next content line (skipping blank and comment lines).
func (pp *plainParser) next() {
	for pp.pos < len(pp.text) {
		end := pp.pos
		for end < len(pp.text) && pp.text[end] != '\n' {
			end++
		}
		l := pp.text[pp.pos:end]
		pp.pos = min(end+1, len(pp.text))
		pp.num++
		indent := 0
		for indent < len(l) && l[indent] == ' ' {
			indent++
		}
		if indent == len(l) || l[indent] == '#' {
			continue
		}
		pp.line, pp.indent, pp.t, pp.ok = pp.num, indent, l[indent:], true
		return
	}
	pp.ok = false
}

// key splits the current line into a plain key and what follows its colon
// (spaces skipped); ok is false if it is not "key:" or "key: value".
func (pp *plainParser) key() (key, val string, ok bool) {
	t := pp.t
	if !isAlnum(t[0]) && t[0] != '_' {
		return "", "", false
	}
	j := 0
	for j < len(t) && isKeyChar(t[j]) {
		j++
	}
	if j > 128 || j == len(t) || t[j] != ':' || (j+1 < len(t) && t[j+1] != ' ') {
		return "", "", false
	}
	v := j + 1
	for v < len(t) && t[v] == ' ' {
		v++
	}
	if v < len(t) && t[v] == '#' {
		v = len(t) // a comment: no value
	}
	return t[:j], t[v:], true
}

// restOK reports whether only spaces and a comment follow s[j:].
func restOK(s string, j int) bool {
	k := j
	for k < len(s) && s[k] == ' ' {
		k++
	}
	return k == len(s) || (s[k] == '#' && k > j)
}

// emptyMap reports whether val is "{}" (and a comment).
func emptyMap(val string) bool {
	return len(val) >= 2 && val[0] == '{' && val[1] == '}' && restOK(val, 2)
}

// scalar reads a plain or quoted value at s[j:], as fastParser.scalar does,
// and returns its text and the position after it. Plain values that YAML
// could read as something else than a string (null, true, 12, …) are
// refused where the caller needs a string: the caller checks the text.
func scalar(s string, j int, inFlow bool) (string, int, bool) {
	switch q := s[j]; q {
	case '"', '\'':
		k := j + 1
		for k < len(s) && s[k] != q {
			if s[k] == '\\' {
				return "", 0, false
			}
			k++
		}
		if k == len(s) {
			return "", 0, false
		}
		return s[j+1 : k], k + 1, true
	}
	if !isAlnum(s[j]) {
		return "", 0, false
	}
	k := j
	for k < len(s) && isPlainChar(s[k]) {
		if s[k] == ':' && (k+1 == len(s) || s[k+1] == ' ' || s[k+1] == ',' || s[k+1] == ']') {
			return "", 0, false
		}
		k++
	}
	if k < len(s) && s[k] != ' ' && !(inFlow && (s[k] == ',' || s[k] == ']')) {
		return "", 0, false
	}
	return s[j:k], k, true
}

// document reads the whole file: nothing, or one containers key.
func (pp *plainParser) document(p *Policy, src *source) bool {
	pp.next()
	if !pp.ok {
		return true // only comments and blank lines: an empty policy
	}
	top := pp.indent
	key, val, ok := pp.key()
	if !ok || key != "containers" {
		return false
	}
	pp.next()
	switch {
	case emptyMap(val):
	case val != "":
		return false
	case pp.ok && pp.indent > top:
		if !pp.containers(p, src) {
			return false
		}
	}
	return !pp.ok // nothing may follow (a second top-level key)
}

// containers reads the block mapping of container names.
func (pp *plainParser) containers(p *Policy, src *source) bool {
	indent := pp.indent
	// Sized once: growing slices of 10,000 containers step by step would
	// cost twice their memory.
	n := 1 + countKeys(pp.text[pp.pos:], indent)
	p.Containers = make([]Container, 0, n)
	if pp.lines {
		src.containers = make([]containerLines, 0, n)
	}
	for pp.ok && pp.indent >= indent {
		if pp.indent != indent {
			return false
		}
		name, val, ok := pp.key()
		if !ok {
			return false
		}
		c := Container{Name: name}
		ln := containerLines{name: pp.line}
		pp.next()
		switch {
		case emptyMap(val):
		case val != "":
			return false
		case pp.ok && pp.indent > indent:
			if !pp.fields(&c, &ln) {
				return false
			}
		}
		// Duplicate names are kept: validate reports them with both lines.
		p.Containers = append(p.Containers, c)
		if pp.lines {
			src.containers = append(src.containers, ln)
		}
	}
	return true
}

// countKeys counts the lines of text that start a key at column indent.
func countKeys(text string, indent int) int {
	n := 0
	for {
		i := strings.IndexByte(text, '\n')
		if i < 0 {
			return n
		}
		text = text[i+1:]
		j := 0
		for j < len(text) && j < indent && text[j] == ' ' {
			j++
		}
		if j == indent && j < len(text) && (isAlnum(text[j]) || text[j] == '_') {
			n++
		}
	}
}

// fields reads one container's block mapping of settings.
func (pp *plainParser) fields(c *Container, ln *containerLines) bool {
	indent := pp.indent
	var seen [4]bool // mode, loopback, addresses, multicast
	for pp.ok && pp.indent >= indent {
		if pp.indent != indent {
			return false
		}
		key, val, ok := pp.key()
		if !ok {
			return false
		}
		line := pp.line
		var field int
		switch key {
		case "mode":
			field = 0
		case "loopback":
			field = 1
		case "addresses":
			field = 2
		case "multicast":
			field = 3
		default:
			return false // unknown: the general path suggests a name
		}
		if seen[field] {
			return false // set twice: the general path says where first
		}
		seen[field] = true
		pp.next()
		if field < 2 {
			// One value on the key's line, one of two words.
			if val == "" || (pp.ok && pp.indent > indent) {
				return false
			}
			s, end, ok := scalar(val, 0, false)
			if !ok || !restOK(val, end) {
				return false
			}
			if field == 0 {
				if s != string(ModeShared) && s != string(ModeNetns) {
					return false
				}
				c.Mode, ln.mode = Mode(s), line
			} else {
				if s != string(LoopbackIsolated) && s != string(LoopbackHost) {
					return false
				}
				c.Loopback, ln.loopback = Loopback(s), line
			}
			continue
		}
		items, lines := pp.items[:0], pp.itemLines[:0]
		switch {
		case val != "":
			if pp.ok && pp.indent > indent {
				return false // nothing may continue a value on the key's line
			}
			if items, ok = flowList(val, items); !ok {
				return false
			}
			for range items {
				lines = append(lines, line)
			}
		case pp.ok && pp.indent > indent:
			if items, lines, ok = pp.blockList(items, lines); !ok {
				return false
			}
		}
		pp.items, pp.itemLines = items, lines // keep the grown scratch
		if field == 2 {
			ln.addresses = line
			if len(items) == 0 {
				continue
			}
			as := pp.takeAddrs(len(items))
			for i, s := range items {
				a, err := parseAddress(s)
				if err != nil {
					return false
				}
				as[i] = a
			}
			c.Addresses = as
			if pp.lines {
				ln.addr = pp.takeInts(lines)
			}
		} else {
			ln.multicast = line
			if len(items) == 0 {
				continue
			}
			gs := make([]netip.Prefix, len(items))
			for i, s := range items {
				g, err := parseMulticast(s)
				if err != nil {
					return false
				}
				gs[i] = g
			}
			c.Multicast = gs
			if pp.lines {
				ln.mcast = pp.takeInts(lines)
			}
		}
	}
	return true
}

// flowList appends the items of "[a, b]" (or "[]"), which must end its
// line, to items.
func flowList(val string, items []string) ([]string, bool) {
	if val[0] != '[' {
		return nil, false
	}
	j := 1
	skip := func() {
		for j < len(val) && val[j] == ' ' {
			j++
		}
	}
	skip()
	if j < len(val) && val[j] == ']' {
		return items, restOK(val, j+1)
	}
	for {
		skip()
		if j == len(val) {
			return nil, false
		}
		s, end, ok := scalar(val, j, true)
		if !ok {
			return nil, false
		}
		items = append(items, s)
		j = end
		skip()
		if j == len(val) {
			return nil, false
		}
		switch val[j] {
		case ']':
			return items, restOK(val, j+1)
		case ',':
			j++
			skip()
			if j < len(val) && val[j] == ']' {
				return nil, false // a trailing comma
			}
		default:
			return nil, false
		}
	}
}

// blockList appends the values of "- value" lines, all at the indentation
// of the first, and their lines.
func (pp *plainParser) blockList(items []string, lines []int) ([]string, []int, bool) {
	indent := pp.indent
	for pp.ok && pp.indent >= indent {
		t := pp.t
		if pp.indent != indent || t[0] != '-' || len(t) < 3 || t[1] != ' ' {
			return nil, nil, false
		}
		v := 2
		for v < len(t) && t[v] == ' ' {
			v++
		}
		if v == len(t) || t[v] == '#' || t[v] == '[' || t[v] == '{' {
			return nil, nil, false // an empty entry, or a nested collection
		}
		s, end, ok := scalar(t, v, false)
		if !ok || !restOK(t, end) {
			return nil, nil, false
		}
		items, lines = append(items, s), append(lines, pp.line)
		pp.next()
		if pp.ok && pp.indent > indent {
			return nil, nil, false // a multi-line value
		}
	}
	return items, lines, true
}

// takeAddrs cuts n addresses from the shared backing array; their capacity
// is n, so an append by a caller copies instead of overwriting a neighbour.
func (pp *plainParser) takeAddrs(n int) []Address {
	if len(pp.addrs) < n {
		pp.addrs = make([]Address, max(n, 1024))
	}
	s := pp.addrs[:n:n]
	pp.addrs = pp.addrs[n:]
	return s
}

// takeInts copies lines into a slice cut from the shared backing array.
func (pp *plainParser) takeInts(lines []int) []int {
	n := len(lines)
	if len(pp.ints) < n {
		pp.ints = make([]int, max(n, 2048))
	}
	s := pp.ints[:n:n]
	pp.ints = pp.ints[n:]
	copy(s, lines)
	return s
}

// The characters of the plain keys and values parsePlain reads: a key is
// [A-Za-z0-9_][A-Za-z0-9_.-]*, a plain value starts with a letter or a
// digit and goes on with [A-Za-z0-9._/:+-].
func isKeyChar(ch byte) bool {
	return isAlnum(ch) || ch == '_' || ch == '-' || ch == '.'
}

func isAlnum(ch byte) bool {
	return ch >= 'a' && ch <= 'z' || ch >= 'A' && ch <= 'Z' || ch >= '0' && ch <= '9'
}

func isPlainChar(ch byte) bool {
	return isAlnum(ch) || ch == '.' || ch == '_' || ch == '/' || ch == ':' || ch == '+' || ch == '-'
}
