package engine

import (
	"encoding/json"
	"math"
	"math/rand/v2"
	"strings"
	"testing"
)

// A hand-computable case: resampling {1, 2, 3} three times, the median is
// 1 with probability 7/27 (at least two draws of 1), so both 2.5 % and
// 97.5 % quantiles of the medians are the extremes.
func TestMedianCIByHand(t *testing.T) {
	lo, hi := Series{3, 1, 2}.MedianCI()
	if lo != 1 || hi != 3 {
		t.Errorf("MedianCI{3, 1, 2} = [%v, %v], want [1, 3]", lo, hi)
	}
	lo, hi = Series{5, 5, 5, 5}.MedianCI()
	if lo != 5 || hi != 5 {
		t.Errorf("MedianCI of a constant = [%v, %v], want [5, 5]", lo, hi)
	}
}

// The interval is a function of the data alone (fixed seed): a report is
// reproducible from its JSON. Missing rounds are left out; too few rounds
// give no interval.
func TestMedianCIReproducible(t *testing.T) {
	s := Series{1.02, 0.97, 1.05, 0.99, 1.01, 0.95, 1.03, 1.00, 0.98, 1.04}
	lo1, hi1 := s.MedianCI()
	lo2, hi2 := s.MedianCI()
	if lo1 != lo2 || hi1 != hi2 {
		t.Errorf("two intervals of the same data: [%v, %v] and [%v, %v]", lo1, hi1, lo2, hi2)
	}
	if m := s.Median(); !(lo1 <= m && m <= hi1) || lo1 < s.Min() || hi1 > s.Max() {
		t.Errorf("interval [%v, %v] does not hold the median %v inside the range %v–%v", lo1, hi1, m, s.Min(), s.Max())
	}
	withGaps := append(Series{math.NaN()}, s...)
	withGaps = append(withGaps, math.NaN())
	if lo, hi := withGaps.MedianCI(); lo != lo1 || hi != hi1 {
		t.Errorf("missing rounds changed the interval: [%v, %v], want [%v, %v]", lo, hi, lo1, hi1)
	}
	if lo, hi := (Series{1, 2, math.NaN()}).MedianCI(); !math.IsNaN(lo) || !math.IsNaN(hi) {
		t.Errorf("interval of 2 rounds = [%v, %v], want none (NaN)", lo, hi)
	}
}

// The interval does what it claims: for data drawn from a distribution
// with a known median, about 95 % of the intervals hold it, and more
// rounds give narrower intervals.
func TestMedianCICoverage(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2)) // the data's generator, not the bootstrap's
	const trials = 300
	width := map[int]float64{}
	for _, n := range []int{15, 60} {
		covered := 0
		for range trials {
			s := make(Series, n)
			for i := range s {
				s[i] = math.Exp(0.05 * rng.NormFloat64()) // median 1, ~5 % spread: a per-round ratio
			}
			lo, hi := s.MedianCI()
			if lo <= 1 && 1 <= hi {
				covered++
			}
			width[n] += (hi - lo) / trials
		}
		// The percentile bootstrap of a median is a little conservative at
		// these sizes; well outside 88–99.5 % would be a bug.
		if f := float64(covered) / trials; f < 0.88 || f > 0.995 {
			t.Errorf("n=%d: %.1f %% of the intervals hold the true median, want about 95 %%", n, 100*f)
		}
	}
	// The median's spread falls as 1/√n: 4× the rounds, about half the width.
	if r := width[60] / width[15]; r < 0.35 || r > 0.65 {
		t.Errorf("mean width with 60 rounds / with 15 = %.2f, want about 0.5", r)
	}
}

// Ratios pair rounds: a slow round moves both sides, and a round either
// side missed is left out of both.
func TestPairedRatio(t *testing.T) {
	// b is 10 % faster than a in every round, though the rounds swing 2×:
	// the ranges of a and b overlap, the paired ratio does not move.
	a := Series{90, 180, 45, 90, 135, math.NaN(), 99}
	b := Series{100, 200, 50, 100, 150, 120, 110}
	r := PairedRatio(a, b)
	if r.Rounds != 6 {
		t.Errorf("rounds = %d, want 6 (one missing)", r.Rounds)
	}
	if math.Abs(r.Median-0.9) > 1e-9 || math.Abs(r.Low-0.9) > 1e-9 || math.Abs(r.High-0.9) > 1e-9 {
		t.Errorf("ratio = %v, want 0.900 [0.900–0.900]", r)
	}
	if !r.Shown() {
		t.Error("a constant 10 % difference is not shown")
	}
	if got := r.String(); got != "0.900 [0.900–0.900]" {
		t.Errorf("String = %q", got)
	}
	if hw := r.HalfWidth(); hw != 0 {
		t.Errorf("half width = %v, want 0", hw)
	}
	// The median of the ratios, not the ratio of the medians.
	r = PairedRatio(Series{10, 20, 30}, Series{10, 40, 10})
	if r.Median != 1 {
		t.Errorf("median of per-round ratios = %v, want 1", r.Median)
	}
	if r = PairedRatio(Series{1, 2}, Series{math.NaN(), 0}); r.Measured() || r.Rounds != 0 {
		t.Errorf("no round measured both: %+v, want not measured", r)
	}
	// NaN is null in JSON, not an error.
	b2, err := json.Marshal(PairedRatio(Series{1, math.NaN()}, Series{1, 1}))
	if err != nil || !strings.Contains(string(b2), `"per_round":[1,null]`) || !strings.Contains(string(b2), `"ci_low":null`) {
		t.Errorf("JSON: %s, %v", b2, err)
	}
}

func TestShown(t *testing.T) {
	for _, tt := range []struct {
		lo, hi float64
		want   bool
	}{
		{1.01, 1.05, true},
		{0.90, 0.99, true},
		{0.98, 1.02, false},
		{1.00, 1.05, false}, // touching 1: not excluded
		{math.NaN(), math.NaN(), false},
	} {
		if got := (Ratio{Median: (tt.lo + tt.hi) / 2, Low: tt.lo, High: tt.hi}).Shown(); got != tt.want {
			t.Errorf("[%v, %v]: Shown = %v, want %v", tt.lo, tt.hi, got, tt.want)
		}
	}
}

// The verdict's words: "shown" only when the interval lies wholly on one
// side of the target value.
func TestVerdict(t *testing.T) {
	atLeast, atMost := Goal{AtLeast: true, Value: 0.97}, Goal{Value: 1.03}
	r := func(med, lo, hi float64) Ratio { return Ratio{Median: med, Low: lo, High: hi} }
	for _, tt := range []struct {
		r    Ratio
		g    Goal
		want string
	}{
		{r(0.99, 0.975, 1.01), atLeast, "met, shown"},
		{r(0.98, 0.96, 1.00), atLeast, "met by the median, not shown"},
		{r(0.96, 0.94, 0.98), atLeast, "missed by the median, not shown"},
		{r(0.92, 0.90, 0.95), atLeast, "missed, shown"},
		{r(0.97, 0.97, 0.99), atLeast, "met, shown"}, // on the line counts as met
		{r(1.01, 1.00, 1.02), atMost, "met, shown"},
		{r(1.02, 1.00, 1.05), atMost, "met by the median, not shown"},
		{r(1.13, 1.10, 1.16), atMost, "missed, shown"},
		{r(1.05, 1.02, 1.08), atMost, "missed by the median, not shown"},
		{r(0.99, math.NaN(), math.NaN()), atLeast, "met by the median, not shown"}, // too few rounds: never shown
		{r(math.NaN(), math.NaN(), math.NaN()), atLeast, "not measured"},
	} {
		if got := Verdict(tt.r, tt.g); got != tt.want {
			t.Errorf("Verdict(%v, %v) = %q, want %q", tt.r, tt.g, got, tt.want)
		}
	}
	if got := (Goal{AtLeast: true, Value: 1.25}).String(); got != "≥ 1.25" {
		t.Errorf("goal = %q", got)
	}
}

// countedMedian is the median of the resample its counts stand for.
func TestCountedMedian(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for _, n := range []int{1, 2, 3, 4, 7, 40} {
		sorted := make([]float64, n)
		for i := range sorted {
			sorted[i] = float64(i*i) + 0.5
		}
		for range 200 {
			counts := make([]int, n)
			var expanded Series
			for range n {
				i := rng.IntN(n)
				counts[i]++
				expanded = append(expanded, sorted[i])
			}
			if got, want := countedMedian(sorted, counts), expanded.Median(); got != want {
				t.Fatalf("n=%d counts %v: countedMedian = %v, median of the resample = %v", n, counts, got, want)
			}
		}
	}
}

// The run-queue wait of a run counts only threads seen before and after
// it: a thread that appeared brings its whole past with it.
func TestWaitedMs(t *testing.T) {
	before := map[string]int64{"a": 1e6, "b": 5e6, "gone": 9e6}
	after := map[string]int64{"a": 3e6, "b": 5e6, "new": 50e9}
	if got := waitedMs(before, after); got != 2 {
		t.Errorf("waitedMs = %v, want 2 (thread a's 2 ms)", got)
	}
}
