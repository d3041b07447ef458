package engine

import (
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
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
	return median(c)
}

// median of sorted, which is not empty.
func median(sorted []float64) float64 {
	n := len(sorted)
	if n%2 == 1 {
		return sorted[n/2]
	}
	return (sorted[n/2-1] + sorted[n/2]) / 2
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

// The bootstrap (bench/README.md, "Statistics"). A report's intervals can
// be recomputed from its JSON: the per-round ratios are in it, and every
// interval is drawn with a generator seeded the same way.
const (
	// Confidence of the intervals.
	Confidence = 0.95
	// Resamples is the number of bootstrap resamples per interval.
	Resamples = 10_000
	// Seed seeds the generator of every interval: PCG (math/rand/v2)
	// with the seed pair (Seed, Seed), started afresh for each interval.
	Seed = 17
	// minRounds is the fewest valid rounds that get an interval; with
	// fewer there is none (NaN) and no difference is shown.
	minRounds = 3
)

// MedianCI is the percentile bootstrap interval of s's median at
// Confidence: Resamples times, draw as many values as s has valid ones,
// with replacement (index ⌊(x>>32)·n / 2³²⌋ into the valid values sorted
// ascending, x the generator's next 64-bit output), and take their median; the interval is the
// (1−Confidence)/2 and (1+Confidence)/2 quantiles of those medians
// (linear between order statistics, as Quantile). NaNs are left out
// first; with fewer than minRounds values both ends are NaN.
func (s Series) MedianCI() (lo, hi float64) {
	v := s.valid()
	n := len(v)
	if n < minRounds {
		return math.NaN(), math.NaN()
	}
	slices.Sort(v) // the draws are indices into v; sorted, a resample's median is found by counting
	rng := rand.New(rand.NewPCG(Seed, Seed))
	meds := make([]float64, Resamples)
	counts := make([]int, n)
	for r := range meds {
		clear(counts)
		for range n {
			counts[(rng.Uint64()>>32)*uint64(n)>>32]++
		}
		meds[r] = countedMedian(v, counts)
	}
	slices.Sort(meds)
	return quantile(meds, (1-Confidence)/2), quantile(meds, (1+Confidence)/2)
}

// countedMedian is the median of a resample of sorted that holds
// counts[i] copies of sorted[i]: the mean of its order statistics
// ⌊(n−1)/2⌋ and ⌊n/2⌋.
func countedMedian(sorted []float64, counts []int) float64 {
	n := len(sorted)
	lo, hi := (n-1)/2, n/2
	var a float64
	seen := 0
	for i, c := range counts {
		if c == 0 {
			continue
		}
		if seen <= lo && lo < seen+c {
			a = sorted[i]
		}
		if seen <= hi && hi < seen+c {
			return (a + sorted[i]) / 2
		}
		seen += c
	}
	return math.NaN() // not reached: the counts sum to n
}

// Quantile is the q-quantile (0 ≤ q ≤ 1) of s's valid values, linear
// between order statistics (R's type 7); NaN for an empty series.
func (s Series) Quantile(q float64) float64 {
	c := s.valid()
	if len(c) == 0 {
		return math.NaN()
	}
	slices.Sort(c)
	return quantile(c, q)
}

func quantile(sorted []float64, q float64) float64 {
	pos := q * float64(len(sorted)-1)
	i := int(pos)
	if i+1 >= len(sorted) {
		return sorted[len(sorted)-1]
	}
	return sorted[i] + (pos-float64(i))*(sorted[i+1]-sorted[i])
}

// Ratio is what the report says about a / b: the median of the per-round
// paired ratios with its bootstrap interval, and their range.
type Ratio struct {
	PerRound Series  `json:"per_round"` // a[i]/b[i]; null where a round is missing
	Rounds   int     `json:"rounds"`    // rounds both were measured in
	Median   float64 `json:"median"`
	Low      float64 `json:"ci_low"`
	High     float64 `json:"ci_high"`
	Min      float64 `json:"min"`
	Max      float64 `json:"max"`
}

// MarshalJSON writes NaN (a missing figure) as null.
func (r Ratio) MarshalJSON() ([]byte, error) {
	return json.Marshal(struct {
		PerRound Series   `json:"per_round"`
		Rounds   int      `json:"rounds"`
		Median   *float64 `json:"median"`
		Low      *float64 `json:"ci_low"`
		High     *float64 `json:"ci_high"`
		Min      *float64 `json:"min"`
		Max      *float64 `json:"max"`
	}{r.PerRound, r.Rounds, num(r.Median), num(r.Low), num(r.High), num(r.Min), num(r.Max)})
}

// MarshalJSON writes a missing round (NaN) as null.
func (s Series) MarshalJSON() ([]byte, error) {
	out := make([]*float64, len(s))
	for i, v := range s {
		out[i] = num(v)
	}
	return json.Marshal(out)
}

// PairedRatio computes the Ratio of a to b, round by round.
func PairedRatio(a, b Series) Ratio {
	pr := Ratios(a, b)
	lo, hi := pr.MedianCI()
	return Ratio{PerRound: pr, Rounds: len(pr.valid()), Median: pr.Median(), Low: lo, High: hi, Min: pr.Min(), Max: pr.Max()}
}

// Measured is false when no round measured both.
func (r Ratio) Measured() bool { return !math.IsNaN(r.Median) }

// Shown reports whether the interval excludes 1: the run shows a
// difference between the two.
func (r Ratio) Shown() bool { return r.Low > 1 || r.High < 1 }

// HalfWidth is half the interval's width relative to the median (0.03:
// ±3 %); NaN without an interval.
func (r Ratio) HalfWidth() float64 { return (r.High - r.Low) / 2 / r.Median }

// String is "0.953 [0.941–0.966]": the median and the interval.
func (r Ratio) String() string {
	if !r.Measured() {
		return "–"
	}
	if math.IsNaN(r.Low) {
		return fmt.Sprintf("%.3f [too few rounds]", r.Median)
	}
	return fmt.Sprintf("%.3f [%.3f–%.3f]", r.Median, r.Low, r.High)
}

// Goal is a target for a ratio: at least (AtLeast) or at most Value.
type Goal struct {
	AtLeast bool
	Value   float64
}

func (g Goal) String() string {
	if g.AtLeast {
		return fmt.Sprintf("≥ %.2f", g.Value)
	}
	return fmt.Sprintf("≤ %.2f", g.Value)
}

// The verdicts on a target, from the ratio's median and interval.
const (
	MetShown       = "met, shown"                      // the whole interval is on the target's side
	MetNotShown    = "met by the median, not shown"    // the median is, the interval reaches past the target
	MissedNotShown = "missed by the median, not shown" // the median is not, the interval reaches the target's side
	MissedShown    = "missed, shown"                   // the whole interval is on the wrong side
	NotMeasured    = "not measured"
	Reference      = "reference" // a figure with no target
)

// Verdict judges r against g: "shown" when the interval lies wholly on
// one side of the target value.
func Verdict(r Ratio, g Goal) string {
	if !r.Measured() {
		return NotMeasured
	}
	ok := func(v float64) bool {
		if g.AtLeast {
			return v >= g.Value
		}
		return v <= g.Value
	}
	lo, hi := r.Low, r.High
	if math.IsNaN(lo) { // too few rounds: the median alone, never shown
		lo, hi = math.Inf(-1), math.Inf(1)
	}
	switch {
	case ok(lo) && ok(hi):
		return MetShown
	case !ok(lo) && !ok(hi):
		return MissedShown
	case ok(r.Median):
		return MetNotShown
	}
	return MissedNotShown
}
