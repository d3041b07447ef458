package bench

import (
	"fmt"
	"slices"
	"time"
)

// series is one figure measured once per round (or per operation).
type series []float64

func (s series) sorted() []float64 { c := slices.Clone(s); slices.Sort(c); return c }

func (s series) median() float64 {
	c := s.sorted()
	if len(c) == 0 {
		return 0
	}
	if len(c)%2 == 1 {
		return c[len(c)/2]
	}
	return (c[len(c)/2-1] + c[len(c)/2]) / 2
}

// quantile is the q-quantile (0 ≤ q ≤ 1), interpolated between ranks.
func (s series) quantile(q float64) float64 {
	c := s.sorted()
	if len(c) == 0 {
		return 0
	}
	pos := q * float64(len(c)-1)
	i := int(pos)
	if i+1 >= len(c) {
		return c[len(c)-1]
	}
	return c[i] + (pos-float64(i))*(c[i+1]-c[i])
}

func (s series) min() float64 { return slices.Min(s) }
func (s series) max() float64 { return slices.Max(s) }

// ratios returns a[i]/b[i]: paired per round, so a slow round (the 2-vCPU
// machine's noise) moves numerator and denominator together.
func ratios(a, b series) series {
	out := make(series, len(a))
	for i := range a {
		out[i] = a[i] / b[i]
	}
	return out
}

// fmtRange is "median (min–max)" with the given format.
func (s series) fmtRange(format string) string {
	return fmt.Sprintf(format+" ("+format+"–"+format+")", s.median(), s.min(), s.max())
}

// fmtSpread is "median [p25–p75] (min–max)" with the given format.
func (s series) fmtSpread(format string) string {
	return fmt.Sprintf(format+" ["+format+"–"+format+"] ("+format+"–"+format+")",
		s.median(), s.quantile(0.25), s.quantile(0.75), s.min(), s.max())
}

// ms converts durations to a series of milliseconds.
func ms(ds ...time.Duration) series {
	out := make(series, len(ds))
	for i, d := range ds {
		out[i] = float64(d) / float64(time.Millisecond)
	}
	return out
}

func nsToMs(ns []int64) series {
	out := make(series, len(ns))
	for i, n := range ns {
		out[i] = float64(n) / 1e6
	}
	return out
}
