package engine

import (
	"fmt"
	"html"
	"io"
	"math"
	"net/netip"
	"slices"
	"strings"
)

func mustAddr(s string) netip.Addr { return netip.MustParseAddr(s) }

// chartColors per configuration, in Configs order.
var chartColors = []string{"#4d4d4d", "#8c6bb1", "#cbc9e2", "#e6550d", "#a63603", "#3182bd", "#31a354", "#a1d99b", "#969696"}

// WriteSVG draws the throughput workloads as grouped bars: the median of
// each configuration's per-round ratio to loopback, with whiskers at its
// 95 % bootstrap interval. When
// bcast_fanout was measured, a second panel below shows bcast_cpu_ns per
// configuration (it has no loopback to be relative to).
func (r *Report) WriteSVG(w io.Writer) error {
	groups := []string{UDPPPS, TCPRR, TCPCRR, TCPGbps}
	const (
		width, mainH           = 960, 440
		left, right, top, bott = 60, 20, 50, 90
	)
	var fan []string // configurations with a bcast_cpu_ns figure
	for _, c := range Configs {
		if len(r.m[r.main(c, BcastCPUNs)].valid()) > 0 {
			fan = append(fan, c)
		}
	}
	height := mainH
	if len(fan) > 0 {
		height += 70 + 30*len(fan)
	}
	plotW, plotH := float64(width-left-right), float64(mainH-top-bott)
	type bar struct{ med, lo, hi float64 }
	bars := make([][]bar, len(groups))
	ymax := 1.2
	for g, wl := range groups {
		for _, c := range Configs {
			x := r.ratio(Key{c, wl, 1}, Key{Loopback, wl, 1})
			b := bar{x.Median, x.Low, x.High}
			if math.IsNaN(b.lo) {
				b.lo, b.hi = b.med, b.med
			}
			if !math.IsNaN(b.hi) && b.hi > ymax {
				ymax = b.hi
			}
			bars[g] = append(bars[g], b)
		}
	}
	ymax = math.Ceil(ymax*4) / 4
	y := func(v float64) float64 { return float64(top) + plotH*(1-v/ymax) }

	var s strings.Builder
	fmt.Fprintf(&s, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="12">`+"\n", width, height, width, height)
	fmt.Fprintf(&s, `<rect width="%d" height="%d" fill="white"/>`+"\n", width, height)
	fmt.Fprintf(&s, `<text x="%d" y="22" font-size="15" font-weight="bold">l3iso-bench: throughput relative to loopback (median of %d per-round ratios; whiskers: 95 %% interval)</text>`+"\n", left, r.Rounds)
	fmt.Fprintf(&s, `<text x="%d" y="40" fill="#555">%s</text>`+"\n", left, html.EscapeString(r.Machine.String()))
	for v := 0.0; v <= ymax+1e-9; v += 0.25 {
		stroke := "#e0e0e0"
		if v == 1 {
			stroke = "#888"
		}
		fmt.Fprintf(&s, `<line x1="%d" x2="%d" y1="%.1f" y2="%.1f" stroke="%s"/>`+"\n", left, width-right, y(v), y(v), stroke)
		fmt.Fprintf(&s, `<text x="%d" y="%.1f" text-anchor="end" fill="#555">%.2f×</text>`+"\n", left-6, y(v)+4, v)
	}
	gw := plotW / float64(len(groups))
	bw := gw * 0.8 / float64(len(Configs))
	for g, wl := range groups {
		x0 := float64(left) + gw*float64(g) + gw*0.1
		for c, b := range bars[g] {
			x := x0 + bw*float64(c)
			if math.IsNaN(b.med) {
				fmt.Fprintf(&s, `<text x="%.1f" y="%.1f" text-anchor="middle" fill="#999" font-size="10">n/a</text>`+"\n", x+bw/2, y(0)-4)
				continue
			}
			fmt.Fprintf(&s, `<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="%s"><title>%s %s: %.3f× loopback [%.3f–%.3f]</title></rect>`+"\n",
				x+1, y(b.med), bw-2, y(0)-y(b.med), chartColors[c], Configs[c], wl, b.med, b.lo, b.hi)
			cx := x + bw/2
			fmt.Fprintf(&s, `<line x1="%.1f" x2="%.1f" y1="%.1f" y2="%.1f" stroke="black"/>`+"\n", cx, cx, y(b.lo), y(b.hi))
			for _, v := range []float64{b.lo, b.hi} {
				fmt.Fprintf(&s, `<line x1="%.1f" x2="%.1f" y1="%.1f" y2="%.1f" stroke="black"/>`+"\n", cx-bw/4, cx+bw/4, y(v), y(v))
			}
		}
		unit := units[wl]
		base := r.series(Loopback, wl, 1).Median()
		fmt.Fprintf(&s, `<text x="%.1f" y="%d" text-anchor="middle" font-weight="bold">%s</text>`+"\n", x0+gw*0.4, mainH-bott+18, wl)
		fmt.Fprintf(&s, `<text x="%.1f" y="%d" text-anchor="middle" fill="#555">loopback = %s %s</text>`+"\n", x0+gw*0.4, mainH-bott+34, fmtVal(base, unit), unit)
	}
	lx := float64(left)
	for c, name := range Configs {
		fmt.Fprintf(&s, `<rect x="%.1f" y="%d" width="12" height="12" fill="%s"/><text x="%.1f" y="%d">%s</text>`+"\n", lx, mainH-28, chartColors[c], lx+16, mainH-18, name)
		lx += 100
	}
	if len(fan) > 0 {
		r.fanoutPanel(&s, fan, mainH, width, left+60, right+170)
	}
	s.WriteString("</svg>\n")
	_, err := io.WriteString(w, s.String())
	return err
}

// fanoutPanel draws bcast_cpu_ns as horizontal bars (median, whiskers
// min–max, ns per broadcast datagram; lower is better) from y0 down, with
// each configuration's per-round ratio to bridge.
func (r *Report) fanoutPanel(s *strings.Builder, configs []string, y0, width, left, right int) {
	fmt.Fprintf(s, `<text x="%d" y="%d" font-size="14" font-weight="bold">bcast_cpu_ns — CPU per broadcast, %d containers, %d listening (median; whiskers: min–max; lower is better)</text>`+"\n",
		60, y0+22, r.fanoutN, fanoutListeners)
	xmax := 0.0
	for _, c := range configs {
		xmax = max(xmax, r.m[r.main(c, BcastCPUNs)].Max())
	}
	plotW := float64(width - left - right)
	x := func(v float64) float64 { return float64(left) + plotW*v/xmax }
	bridge := r.main(Bridge, BcastCPUNs)
	for i, c := range configs {
		k := r.main(c, BcastCPUNs)
		sr := r.m[k]
		y := float64(y0 + 40 + 30*i)
		col := chartColors[slices.Index(Configs, c)]
		fmt.Fprintf(s, `<text x="%d" y="%.1f" text-anchor="end">%s</text>`+"\n", left-6, y+14, c)
		fmt.Fprintf(s, `<rect x="%d" y="%.1f" width="%.1f" height="20" fill="%s"><title>%s bcast_cpu_ns: %.0f ns (%.0f–%.0f)</title></rect>`+"\n",
			left, y, x(sr.Median())-float64(left), col, c, sr.Median(), sr.Min(), sr.Max())
		fmt.Fprintf(s, `<line x1="%.1f" x2="%.1f" y1="%.1f" y2="%.1f" stroke="black"/>`+"\n", x(sr.Min()), x(sr.Max()), y+10, y+10)
		for _, v := range []float64{sr.Min(), sr.Max()} {
			fmt.Fprintf(s, `<line x1="%.1f" x2="%.1f" y1="%.1f" y2="%.1f" stroke="black"/>`+"\n", x(v), x(v), y+4, y+16)
		}
		label := fmt.Sprintf("%s ns", fmtVal(sr.Median(), "ns"))
		if c != Bridge {
			if v := Ratios(r.m[bridge], sr).Median(); !math.IsNaN(v) {
				label += fmt.Sprintf(" — %.1f× cheaper than bridge", v)
			}
		}
		fmt.Fprintf(s, `<text x="%.1f" y="%.1f" fill="#333">%s</text>`+"\n", x(sr.Max())+8, y+14, html.EscapeString(label))
	}
}
