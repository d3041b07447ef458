package engine

import (
	"math"
	"slices"
)

// Series is one figure measured once per round, in round order. Ratios
// between two configurations are taken round by round (index by index), so
// a slow stretch of the shared 2-vCPU machine moves numerator and
// denominator together.
type Series []float64

// Median is the middle value (the mean of the two middle values for an
// even count); NaN for an empty series.
func (s Series) Median() float64 {
	c := s.valid()
	if len(c) == 0 {
		return math.NaN()
	}
	slices.Sort(c)
	if len(c)%2 == 1 {
		return c[len(c)/2]
	}
	return (c[len(c)/2-1] + c[len(c)/2]) / 2
}

// Min is the smallest value; NaN for an empty series.
func (s Series) Min() float64 {
	c := s.valid()
	if len(c) == 0 {
		return math.NaN()
	}
	return slices.Min(c)
}

// Max is the largest value; NaN for an empty series.
func (s Series) Max() float64 {
	c := s.valid()
	if len(c) == 0 {
		return math.NaN()
	}
	return slices.Max(c)
}

// valid is a copy of s without NaNs (a round whose run failed).
func (s Series) valid() []float64 {
	out := make([]float64, 0, len(s))
	for _, v := range s {
		if !math.IsNaN(v) {
			out = append(out, v)
		}
	}
	return out
}

// Ratios returns a[i]/b[i] for every round i both measured (NaN where
// either is missing or b[i] is 0).
func Ratios(a, b Series) Series {
	n := min(len(a), len(b))
	out := make(Series, n)
	for i := range n {
		if math.IsNaN(a[i]) || math.IsNaN(b[i]) || b[i] == 0 {
			out[i] = math.NaN()
			continue
		}
		out[i] = a[i] / b[i]
	}
	return out
}

// Overlap reports whether the min–max ranges of a and b overlap. When they
// do, the run does not show a difference between the two, whatever the
// medians say: the report prints "no difference shown".
func Overlap(a, b Series) bool {
	if len(a.valid()) == 0 || len(b.valid()) == 0 {
		return true
	}
	return a.Min() <= b.Max() && b.Min() <= a.Max()
}
