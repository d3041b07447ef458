package policy

import (
	"bytes"
	"strings"

	"gopkg.in/yaml.v3"
)

// fastDecode reads the plain kind of YAML policy files are written in — and
// generated as, 10,000 containers at a time — about twenty times faster than
// yaml.v3, into the very nodes yaml.v3 would make (kind, tag, style, value,
// line, column; comments are dropped: nothing reads them). ok is false for
// anything else, and decodeYAML then asks yaml.v3, which also words every
// syntax error. What it reads, in block context, each construct on one line:
//
//	# comments, blank lines
//	key: value           plain keys ([A-Za-z0-9_][A-Za-z0-9_.-]*)
//	key:                 a nested mapping or "- " list, indented deeper; else empty
//	key: [a, "b", 'c']   a list on one line (or "[]"), also alone on the next line
//	key: {}              an empty mapping, also alone on the next line
//	- value              list items
//
// with plain values made of [A-Za-z0-9._/:+-] (starting with a letter or a
// digit, no ':' before a space, a ',' or a ']') and quoted values without
// escapes or embedded quotes. Tabs, CRs, non-ASCII bytes, anchors, tags,
// documents markers, multi-line values and everything else fall back.
// TestFastYAML checks it against yaml.v3.
func fastDecode(data []byte) (root *yaml.Node, ok bool) {
	p := &fastParser{}
	if !p.split(data) {
		return nil, false
	}
	if len(p.lines) == 0 {
		return nil, true // only comments and blank lines: an empty document
	}
	root, ok = p.mapping(p.lines[0].indent)
	if !ok || p.i != len(p.lines) {
		return nil, false
	}
	return root, true
}

// fastLine is one line with content: its number, indentation and text
// without the indentation and without a trailing comment.
type fastLine struct {
	num    int // 1-based
	indent int
	text   []byte
}

type fastParser struct {
	lines []fastLine
	i     int         // next line
	slab  []yaml.Node // nodes are cut from it: one allocation per 1,024
}

// node returns a new zeroed node.
func (p *fastParser) node() *yaml.Node {
	if len(p.slab) == 0 {
		p.slab = make([]yaml.Node, 1024)
	}
	n := &p.slab[0]
	p.slab = p.slab[1:]
	return n
}

// split cuts data into content lines, refusing bytes the fast path does not
// handle anywhere.
func (p *fastParser) split(data []byte) bool {
	p.lines = make([]fastLine, 0, bytes.Count(data, []byte{'\n'})+1)
	num := 0
	for len(data) > 0 {
		num++
		line := data
		if j := bytes.IndexByte(data, '\n'); j >= 0 {
			line, data = data[:j], data[j+1:]
		} else {
			data = nil
		}
		indent := 0
		for indent < len(line) && line[indent] == ' ' {
			indent++
		}
		for _, ch := range line {
			if ch < 0x20 || ch > 0x7e { // tabs, CRs, control and non-ASCII bytes
				return false
			}
		}
		text := line[indent:]
		if len(text) == 0 || text[0] == '#' {
			continue
		}
		p.lines = append(p.lines, fastLine{num: num, indent: indent, text: text})
	}
	return true
}

func isKeyChar(ch byte) bool {
	return ch >= 'a' && ch <= 'z' || ch >= 'A' && ch <= 'Z' || ch >= '0' && ch <= '9' || ch == '_' || ch == '-' || ch == '.'
}

func isAlnum(ch byte) bool {
	return ch >= 'a' && ch <= 'z' || ch >= 'A' && ch <= 'Z' || ch >= '0' && ch <= '9'
}

func isPlainChar(ch byte) bool {
	return isAlnum(ch) || ch == '.' || ch == '_' || ch == '/' || ch == ':' || ch == '+' || ch == '-'
}

// rest checks that only spaces and a comment follow position j of text.
func rest(text []byte, j int) bool {
	k := j
	for k < len(text) && text[k] == ' ' {
		k++
	}
	return k == len(text) || (text[k] == '#' && k > j)
}

func (p *fastParser) scalarNode(value string, line, col int) *yaml.Node {
	n := p.node()
	*n = yaml.Node{Kind: yaml.ScalarNode, Value: value, Line: line, Column: col}
	n.Tag = plainTag(n)
	return n
}

// plainTag is what yaml.v3 resolves plain scalar n to (n.ShortTag()), with
// a shortcut for addresses: yaml.v3 tries a value starting with a digit as
// a timestamp, an integer and a float (a regexp), which costs more than the
// rest of the parse. A value made of [A-Za-z0-9._/:+-] with a '/' or a ':'
// is none of them (a timestamp has a ':' only after "YYYY-"), nor is one
// with two dots; every other value gets yaml.v3's answer.
func plainTag(n *yaml.Node) string {
	v := n.Value
	if v == "" || v[0] < '0' || v[0] > '9' {
		if v != "" && isAlnum(v[0]) && !strings.ContainsRune("yYnNtTfFoO", rune(v[0])) {
			return "!!str" // yaml.v3 looks no further than such a first letter
		}
		return n.ShortTag() // one map lookup
	}
	if len(v) >= 5 && v[4] == '-' && isDigits(v[:4]) {
		return n.ShortTag() // perhaps a timestamp
	}
	dots := 0
	for i := 0; i < len(v); i++ {
		switch v[i] {
		case '/', ':':
			return "!!str"
		case '.':
			dots++
		}
	}
	if dots >= 2 {
		return "!!str"
	}
	return n.ShortTag()
}

// mapping reads a block mapping whose keys are at column indent.
func (p *fastParser) mapping(indent int) (*yaml.Node, bool) {
	first := p.lines[p.i]
	m := p.node()
	*m = yaml.Node{Kind: yaml.MappingNode, Tag: "!!map", Line: first.num, Column: indent + 1}
	for p.i < len(p.lines) {
		l := p.lines[p.i]
		if l.indent < indent {
			break
		}
		if l.indent > indent {
			return nil, false
		}
		t := l.text
		if !isAlnum(t[0]) && t[0] != '_' {
			return nil, false
		}
		j := 0
		for j < len(t) && isKeyChar(t[j]) {
			j++
		}
		// (yaml.v3 refuses implicit keys longer than 1024 characters.)
		if j > 128 || j == len(t) || t[j] != ':' || (j+1 < len(t) && t[j+1] != ' ') {
			return nil, false
		}
		key := p.scalarNode(string(t[:j]), l.num, indent+1)
		p.i++
		var val *yaml.Node
		ok := true
		v := j + 1
		for v < len(t) && t[v] == ' ' {
			v++
		}
		switch {
		case v < len(t) && t[v] != '#':
			// The value on the key's line; nothing may continue it.
			val, ok = p.inline(t, v, l.num, indent)
			if ok && p.i < len(p.lines) && p.lines[p.i].indent > indent {
				return nil, false
			}
		case p.i < len(p.lines) && p.lines[p.i].indent > indent:
			val, ok = p.nested()
		default:
			// Nothing: yaml.v3's empty value sits right after the colon.
			val = p.scalarNode("", l.num, indent+j+2)
		}
		if !ok {
			return nil, false
		}
		m.Content = append(m.Content, key, val)
	}
	return m, true
}

// nested reads the value that starts on the next line, indented deeper than
// its key.
func (p *fastParser) nested() (*yaml.Node, bool) {
	l := p.lines[p.i]
	switch t := l.text; {
	case t[0] == '-' && (len(t) == 1 || t[1] == ' '):
		return p.sequence(l.indent)
	case t[0] == '[' || t[0] == '{':
		p.i++
		val, ok := p.flow(t, 0, l.num, l.indent)
		if !ok || (p.i < len(p.lines) && p.lines[p.i].indent >= l.indent) {
			return nil, false
		}
		return val, true
	}
	return p.mapping(l.indent)
}

// sequence reads a block list whose dashes are at column indent.
func (p *fastParser) sequence(indent int) (*yaml.Node, bool) {
	first := p.lines[p.i]
	s := p.node()
	*s = yaml.Node{Kind: yaml.SequenceNode, Tag: "!!seq", Line: first.num, Column: indent + 1}
	for p.i < len(p.lines) {
		l := p.lines[p.i]
		if l.indent < indent {
			break
		}
		t := l.text
		if l.indent > indent || t[0] != '-' || len(t) < 3 || t[1] != ' ' {
			return nil, false
		}
		v := 2
		for v < len(t) && t[v] == ' ' {
			v++
		}
		if v == len(t) || t[v] == '#' || t[v] == '[' || t[v] == '{' {
			return nil, false // an empty entry, or a nested collection
		}
		p.i++
		item, ok := p.inline(t, v, l.num, indent)
		if !ok || (p.i < len(p.lines) && p.lines[p.i].indent > indent) {
			return nil, false
		}
		s.Content = append(s.Content, item)
	}
	return s, true
}

// inline reads the value at t[v:] (column indent+v+1 counts from the line's
// start, as t is the line without its indentation: callers pass the
// indentation they stripped).
func (p *fastParser) inline(t []byte, v, num, indent int) (*yaml.Node, bool) {
	if t[v] == '[' || t[v] == '{' {
		return p.flow(t, v, num, indent)
	}
	n, end, ok := p.scalar(t, v, num, indent, false)
	if !ok || !rest(t, end) {
		return nil, false
	}
	return n, true
}

// flow reads "[...]" or "{}" at t[v:], which must end the line.
func (p *fastParser) flow(t []byte, v, num, indent int) (*yaml.Node, bool) {
	if t[v] == '{' {
		if v+1 < len(t) && t[v+1] == '}' && rest(t, v+2) {
			m := p.node()
			*m = yaml.Node{Kind: yaml.MappingNode, Tag: "!!map", Style: yaml.FlowStyle, Line: num, Column: indent + v + 1}
			return m, true
		}
		return nil, false
	}
	s := p.node()
	*s = yaml.Node{Kind: yaml.SequenceNode, Tag: "!!seq", Style: yaml.FlowStyle, Line: num, Column: indent + v + 1}
	j := v + 1
	skip := func() {
		for j < len(t) && t[j] == ' ' {
			j++
		}
	}
	skip()
	if j < len(t) && t[j] == ']' {
		return s, rest(t, j+1)
	}
	for {
		skip()
		if j == len(t) {
			return nil, false
		}
		item, end, ok := p.scalar(t, j, num, indent, true)
		if !ok {
			return nil, false
		}
		s.Content = append(s.Content, item)
		j = end
		skip()
		if j == len(t) {
			return nil, false
		}
		switch t[j] {
		case ']':
			return s, rest(t, j+1)
		case ',':
			j++
			skip()
			if j < len(t) && t[j] == ']' {
				return nil, false // a trailing comma
			}
		default:
			return nil, false
		}
	}
}

// scalar reads a plain or quoted value at t[j:] and returns the position
// after it. In a flow list a plain value also ends at ',' and ']'.
func (p *fastParser) scalar(t []byte, j, num, indent int, inFlow bool) (*yaml.Node, int, bool) {
	col := indent + j + 1
	switch q := t[j]; q {
	case '"', '\'':
		k := j + 1
		for k < len(t) && t[k] != q {
			if t[k] == '\\' {
				return nil, 0, false
			}
			k++
		}
		if k == len(t) {
			return nil, 0, false
		}
		n := p.node()
		*n = yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: string(t[j+1 : k]), Line: num, Column: col}
		n.Style = yaml.DoubleQuotedStyle
		if q == '\'' {
			n.Style = yaml.SingleQuotedStyle
		}
		return n, k + 1, true
	}
	if !isAlnum(t[j]) {
		return nil, 0, false
	}
	k := j
	for k < len(t) && isPlainChar(t[k]) {
		if t[k] == ':' && (k+1 == len(t) || t[k+1] == ' ' || t[k+1] == ',' || t[k+1] == ']') {
			return nil, 0, false
		}
		k++
	}
	if k < len(t) && t[k] != ' ' && !(inFlow && (t[k] == ',' || t[k] == ']')) {
		return nil, 0, false
	}
	return p.scalarNode(string(t[j:k]), num, col), k, true
}
