package control

import (
	"fmt"
	"os"
	"time"
)

// tracing: L3ISO_TRACE=1 prints how long each step of a command took, on
// stderr (for benchmarking the control plane; like L3ISO_CPUPROFILE).
var traceOn = os.Getenv("L3ISO_TRACE") != ""

type tracer struct {
	what string
	last time.Time
}

func trace(what string) *tracer {
	if !traceOn {
		return nil
	}
	return &tracer{what: what, last: time.Now()}
}

// step reports the time since the previous step.
func (t *tracer) step(name string) {
	if t == nil {
		return
	}
	now := time.Now()
	fmt.Fprintf(os.Stderr, "l3iso trace: %s: %-28s %8.3f ms\n", t.what, name, float64(now.Sub(t.last).Microseconds())/1000)
	t.last = now
}

// Tracer reports how long each step of a command took (L3ISO_TRACE), for
// the steps outside this package (loading a policy file, opening the
// installation). It does nothing unless tracing is on.
type Tracer = tracer

// Trace starts a tracer for command what.
func Trace(what string) *Tracer { return trace(what) }

// Step reports the time since the previous step.
func (t *tracer) Step(name string) { t.step(name) }
