package control

import (
	"errors"
	"slices"
	"testing"

	"github.com/l3iso/l3iso/pkg/maps"
)

// fakeSteps replaces the executor's step table for the test: each step
// records that it ran and fails as fail says; a step has an undo exactly
// when the real one has one, which records that it ran and fails as
// failUndo says.
func fakeSteps(t *testing.T, fail, failUndo map[stepKind]error) (done, undone *[]stepKind) {
	t.Helper()
	real := steps
	t.Cleanup(func() { steps = real })
	done, undone = new([]stepKind), new([]stepKind)
	for k := stepNone + 1; k < numSteps; k++ {
		steps[k].do = func(_ *Control, s *script) error {
			*done = append(*done, k)
			if k == stepStop && fail[k] == nil {
				s.ended = true // the processes are dead
			}
			return fail[k]
		}
		if real[k].undo != nil {
			steps[k].undo = func(*Control, *script) error {
				*undone = append(*undone, k)
				return failUndo[k]
			}
		}
	}
	return done, undone
}

// wantError checks that err reads want and wraps each of is.
func wantError(t *testing.T, err error, want string, is ...error) {
	t.Helper()
	if err == nil || err.Error() != want {
		t.Errorf("error %v, want %q", err, want)
		return
	}
	for _, e := range is {
		if !errors.Is(err, e) {
			t.Errorf("error %q does not wrap %q", err, e)
		}
	}
}

// TestRunUndo: a failure before the commit undoes, the failing step first,
// then those before it, the last first; the undos' failures are joined to
// the error; a del that fails after it stopped the processes says so and
// what to run; after the commit nothing is undone.
func TestRunUndo(t *testing.T) {
	web := ct(t, 1, "web/netns 10.77.0.1")
	del := func() *script {
		s, err := planDel(web, 0, delFacts{})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	if got, want := stepList(del()), "begin, stop removed, netns before, maps, stale sockets, counters, listeners, index, end"; got != want {
		t.Fatalf("del steps %s, want %s", got, want)
	}
	boom, undoBoom, undoBoom2 := errors.New("boom"), errors.New("undo boom"), errors.New("undo boom 2")
	add := func() *script {
		spec := ct(t, 0, "api/netns 10.77.0.2").Spec
		s, err := planAdd(spec, AddOptions{}, addFacts{all: []maps.Container{}, free: 2})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	if got, want := stepList(add()), "begin, cgroups, counters, index, maps, netns, end"; got != want {
		t.Fatalf("add steps %s, want %s", got, want)
	}

	t.Run("del, before the commit", func(t *testing.T) {
		done, undone := fakeSteps(t, map[stepKind]error{stepUnplumb: boom}, nil)
		err := (&Control{}).run(del(), nil)
		wantError(t, err, "processes of container \"web\" stopped, but boom: run `l3iso container del web` again", boom)
		if want := []stepKind{stepBegin, stepStop, stepUnplumb}; !slices.Equal(*done, want) {
			t.Errorf("ran %v, want %v", *done, want)
		}
		if want := []stepKind{stepUnplumb}; !slices.Equal(*undone, want) {
			t.Errorf("undid %v, want %v", *undone, want)
		}
	})

	t.Run("del, the stop fails", func(t *testing.T) {
		_, undone := fakeSteps(t, map[stepKind]error{stepStop: boom}, nil)
		err := (&Control{}).run(del(), nil)
		wantError(t, err, "boom: run `l3iso container del web` again", boom)
		if len(*undone) != 0 {
			t.Errorf("undid %v: nothing before the stop has an undo", *undone)
		}
	})

	t.Run("add, undos fail", func(t *testing.T) {
		_, undone := fakeSteps(t, map[stepKind]error{stepPlumb: boom}, map[stepKind]error{stepInsert: undoBoom, stepCgroups: undoBoom2})
		err := (&Control{}).run(add(), nil)
		wantError(t, err, "boom\n"+
			"undoing step \"maps\" failed too (the next l3iso command repairs): undo boom\n"+
			"undoing step \"cgroups\" failed too (the next l3iso command repairs): undo boom 2", boom, undoBoom, undoBoom2)
		if want := []stepKind{stepInsert, stepIndex, stepCgroups}; !slices.Equal(*undone, want) {
			t.Errorf("undid %v, want %v: an undo that fails does not stop the others", *undone, want)
		}
	})

	t.Run("del, after the commit", func(t *testing.T) {
		done, undone := fakeSteps(t, map[stepKind]error{stepForget: boom}, nil)
		err := (&Control{}).run(del(), nil)
		wantError(t, err, `container "web" deleted, but boom (the next l3iso command retries)`, boom)
		if len(*undone) != 0 {
			t.Errorf("undid %v after the commit", *undone)
		}
		if slices.Contains(*done, stepEnd) {
			t.Error("the dirty bit was cleared after a failure")
		}
	})

	// An apply that adds a container and removes another: every undo of
	// what ran, the last first, and the step's error as it is.
	apply := &script{what: "apply", commit: stepSwitch, done: "policy switched", come: []maps.Container{web}}
	apply.with(stepBegin, stepCgroups, stepCounters, stepIndex, stepWriteNext, stepStop, stepUnconfigure, stepUnplumb,
		stepSwitch, stepConfigure, stepPlumb, stepFilter, stepCountStale, stepForget, stepEnd)
	t.Run("apply, before the commit", func(t *testing.T) {
		_, undone := fakeSteps(t, map[stepKind]error{stepUnplumb: boom}, nil)
		if err := (&Control{}).run(apply, nil); err != boom {
			t.Errorf("error %v, want the step's as it is", err)
		}
		if want := []stepKind{stepUnplumb, stepUnconfigure, stepWriteNext, stepIndex, stepCgroups}; !slices.Equal(*undone, want) {
			t.Errorf("undid %v, want %v", *undone, want)
		}
	})
	// A planned apply that removes two netns containers, with --prune:
	// once their processes are ended, a failure before the switch says
	// so, and what to run.
	installed := []maps.Container{ct(t, 1, "api/netns 10.77.0.2"), web, ct(t, 3, "db 10.77.0.3")}
	pruning, _, err := planApply(applyFacts{sv: surveyOf(t, specs(installed[2]), installed), fileConts: 1}, ApplyOptions{Prune: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Run("apply, after the stop, before the commit", func(t *testing.T) {
		_, undone := fakeSteps(t, map[stepKind]error{stepUnplumb: boom}, nil)
		err := (&Control{}).run(pruning, nil)
		wantError(t, err, "processes of containers \"api\", \"web\" (removed by the policy) stopped, but boom: "+
			"the policy is not switched: run the same `l3iso apply --prune` again", boom)
		if !slices.Contains(*undone, stepUnplumb) {
			t.Errorf("undid %v, want the unplumbing's undo among them", *undone)
		}
	})
	t.Run("apply, the stop fails", func(t *testing.T) {
		fakeSteps(t, map[stepKind]error{stepStop: boom}, nil)
		pruning.ended = false // (a script runs once; this one ran above)
		wantError(t, (&Control{}).run(pruning, nil), "boom: the policy is not switched: run the same `l3iso apply --prune` again", boom)
		pruning.prune = false // without --prune the stop's refusal says what to do
		defer func() { pruning.prune = true }()
		wantError(t, (&Control{}).run(pruning, nil), "boom", boom)
	})

	t.Run("apply, after the commit", func(t *testing.T) {
		_, undone := fakeSteps(t, map[stepKind]error{stepPlumb: boom}, nil)
		err := (&Control{}).run(apply, nil)
		wantError(t, err, "policy switched, but boom (the next l3iso command retries)", boom)
		if len(*undone) != 0 {
			t.Errorf("undid %v after the switch", *undone)
		}
	})
}
