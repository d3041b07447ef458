package e2e

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/l3iso/l3iso/internal/sockprobe"
	"github.com/l3iso/l3iso/pkg/maps"
)

// TestPrometheusExamples: examples/prometheus.yml and l3iso-rules.yml are
// what promtool accepts, and the alerts fire as their unit tests say
// (examples/l3iso-rules.test.yml).
func TestPrometheusExamples(t *testing.T) {
	t.Parallel()
	requireTool(t, "promtool")
	for _, args := range [][]string{
		{"check", "config", "prometheus.yml"},
		{"check", "rules", "l3iso-rules.yml"},
		{"test", "rules", "l3iso-rules.test.yml"},
	} {
		cmd := exec.Command("promtool", args...)
		cmd.Dir = filepath.Join("..", "examples")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
}

// promQuery is the vector a Prometheus instant query returns: each
// series' labels (without __name__, instance and job) rendered as
// "name{k=v,...}" → its value.
type promQuery map[string]float64

func queryProm(c *http.Client, base, q string) (promQuery, error) {
	b, err := get(c, base+"/api/v1/query?query="+url.QueryEscape(q))
	if err != nil {
		return nil, err
	}
	var resp struct {
		Status string `json:"status"`
		Data   struct {
			Result []struct {
				Metric map[string]string `json:"metric"`
				Value  [2]any            `json:"value"`
			} `json:"result"`
		} `json:"data"`
	}
	if err := json.Unmarshal(b, &resp); err != nil || resp.Status != "success" {
		return nil, fmt.Errorf("query %s: %s (%v)", q, b, err)
	}
	out := promQuery{}
	for _, r := range resp.Data.Result {
		v, err := strconv.ParseFloat(fmt.Sprint(r.Value[1]), 64)
		if err != nil {
			return nil, err
		}
		out[seriesKey(r.Metric)] = v
	}
	return out, nil
}

func seriesKey(m map[string]string) string {
	var parts []string
	for _, k := range []string{"container", "reason", "map", "object"} {
		if v, ok := m[k]; ok {
			parts = append(parts, k+"="+v)
		}
	}
	return m["__name__"] + "{" + strings.Join(parts, ",") + "}"
}

// TestMetricsPrometheus: a real Prometheus server scrapes `l3iso
// metrics`, and what its query API returns is what `l3iso stats -o json`
// and the installation say: every verdict counter of every container and
// of the host, the containers, the programs, the apply generation; an
// unpinned link shows as isolation not intact until `up` repairs it. The
// exposition passes `promtool check metrics`.
func TestMetricsPrometheus(t *testing.T) {
	t.Parallel()
	requireTool(t, "prometheus", "promtool")
	e := newEnv(t)
	start := time.Now()
	e.apply("containers:\n  web:\n    addresses: [10.77.0.1/24, fd77::1, \"10.77.0.9:80/tcp\"]\n  db:\n    addresses: [\"10.77.0.9:5432/tcp\"]\n  api:\n    mode: netns\n    addresses: [10.78.0.1]\n")
	// Denials to count: a port db owns, an address nobody owns, the
	// host binding a container's address.
	web, host := e.agent("web"), e.agent("")
	for _, c := range []struct {
		a    *sockprobe.Agent
		addr string
		want unix.Errno
	}{
		{web, "10.77.0.9:5432", unix.EACCES},
		{web, "10.77.0.50:80", unix.EADDRNOTAVAIL},
		{web, "10.77.0.51:80", unix.EADDRNOTAVAIL},
		{host, "10.77.0.1:80", unix.EADDRNOTAVAIL},
	} {
		s := c.a.Socket(unix.AF_INET, unix.SOCK_STREAM, 0)
		if err := c.a.Bind(s, netip.MustParseAddrPort(c.addr)); err != c.want {
			t.Fatalf("bind %s: %v, want %v", c.addr, err, c.want)
		}
		c.a.Close(s)
	}

	// The exposition is what promtool accepts.
	lint := exec.Command("promtool", "check", "metrics")
	lint.Stdin = strings.NewReader(e.mustRun("metrics", "--once"))
	if out, err := lint.CombinedOutput(); err != nil {
		t.Errorf("promtool check metrics: %v\n%s", err, out)
	}

	e.start("serving metrics", binary, "--bpffs", e.bpffs, "metrics", "--listen", "127.0.0.1:9377")
	dir := t.TempDir()
	rules, _ := filepath.Abs(filepath.Join("..", "examples", "l3iso-rules.yml"))
	cfg := filepath.Join(dir, "prometheus.yml")
	err := os.WriteFile(cfg, []byte(fmt.Sprintf(`global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files: [%q]
scrape_configs:
  - job_name: l3iso
    scrape_timeout: 1s
    static_configs:
      - targets: ["127.0.0.1:9377"]
`, rules)), 0o644)
	if err != nil {
		t.Fatal(err)
	}
	e.start("", "prometheus", "--config.file="+cfg, "--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address=127.0.0.1:9090", "--log.level=warn")
	c := httpIn(e.netns)
	const prom = "http://127.0.0.1:9090"

	// poll queries q until check accepts the result (30 s).
	poll := func(q string, check func(promQuery) string) promQuery {
		t.Helper()
		var (
			got promQuery
			why string
			err error
		)
		for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(250 * time.Millisecond) {
			if got, err = queryProm(c, prom, q); err != nil {
				why = err.Error()
				continue
			}
			if why = check(got); why == "" {
				return got
			}
		}
		t.Fatalf("Prometheus query %s: %s", q, why)
		return nil
	}

	// A netns container's own stack sends now and then (router and
	// neighbour solicitations: tc_to_host), so a counter that changed
	// between the first stats and the one after a query may be anywhere
	// between the two; every other must be exactly what stats says.
	counterSeries := func(stats map[string]map[string]uint64) promQuery {
		out := promQuery{}
		for ctr, cnt := range stats {
			for name, v := range cnt {
				if name == "events_lost" {
					out[fmt.Sprintf("l3iso_events_lost_total{container=%s}", ctr)] = float64(v)
					continue
				}
				out[fmt.Sprintf("l3iso_verdicts_total{container=%s,reason=%s}", ctr, name)] = float64(v)
			}
		}
		return out
	}
	stats := e.counters()
	if len(stats) != 4 || stats["web"]["bind_denied_port"] != 1 || stats["web"]["bind_denied_foreign"] != 2 || stats["(host)"]["host_bind_denied"] != 1 {
		t.Fatalf("stats -o json does not count the denials: %v", stats)
	}
	if _, ok := stats["web"]["events_lost"]; !ok {
		t.Fatalf("stats -o json has no events_lost counter: %v", stats["web"])
	}
	first := counterSeries(stats)
	exact := 0
	poll(`{__name__=~"l3iso_verdicts_total|l3iso_events_lost_total"}`, func(got promQuery) string {
		after := counterSeries(e.counters())
		if len(got) != len(after) {
			return fmt.Sprintf("%d series, want %d (stats -o json)", len(got), len(after))
		}
		exact = 0
		for k, hi := range after {
			g, ok := got[k]
			lo := first[k]
			switch {
			case !ok:
				return fmt.Sprintf("no series %s", k)
			case lo == hi && g != hi:
				return fmt.Sprintf("%s = %v, stats -o json says %v", k, g, hi)
			case g < lo || g > hi:
				return fmt.Sprintf("%s = %v, stats -o json said %v, then %v", k, g, lo, hi)
			case lo == hi:
				exact++
			}
		}
		return ""
	})
	if exact < len(first)-3 {
		t.Errorf("only %d of %d counters were stable enough to compare exactly", exact, len(first))
	}

	chk := func(name string, ok func(float64) bool, what string) {
		t.Helper()
		poll(name, func(got promQuery) string {
			if len(got) != 1 {
				return fmt.Sprintf("%d series: %v", len(got), got)
			}
			for _, v := range got {
				if !ok(v) {
					return fmt.Sprintf("%v, want %s", v, what)
				}
			}
			return ""
		})
	}
	is := func(w float64) func(float64) bool { return func(v float64) bool { return v == w } }
	chk("l3iso_installed", is(1), "1")
	chk("l3iso_isolation_intact", is(1), "1")
	chk("l3iso_problems", is(0), "0")
	chk("l3iso_containers", is(3), "3")
	chk("l3iso_containers_max", is(float64(maps.MaxContainers)), "MaxContainers")
	chk("l3iso_socket_quota_limit", is(float64(maps.SocketQuota)), "SocketQuota")
	chk("l3iso_apply_generation", is(1), "1 (one apply)")
	chk("l3iso_changes_total", is(2), "2 (up, apply)")
	within := func(v float64) bool {
		return v >= float64(start.Unix()-1) && v <= float64(time.Now().Unix()+1)
	}
	chk("l3iso_last_apply_timestamp_seconds", within, "the time of the apply")
	chk("l3iso_last_change_timestamp_seconds", within, "the time of the apply")
	chk("l3iso_programs_expected - l3iso_programs_attached", is(0), "every program attached")
	chk("l3iso_programs_expected", func(v float64) bool { return v >= 3 }, "at least 3")
	chk(`l3iso_map_entries{map="l3_owners"}`, func(v float64) bool { return v >= 5 }, "the 5 addresses' ownership entries")
	chk(`l3iso_map_max_entries{map="l3_owners"}`, is(1<<20), "l3_owners' max_entries")
	poll("l3iso_socket_quota_used", func(got promQuery) string {
		if len(got) != 3 {
			return fmt.Sprintf("%d containers, want 3: %v", len(got), got)
		}
		return ""
	})
	// Prometheus loaded the example rules.
	b, err := get(c, prom+"/api/v1/rules")
	if err != nil || !strings.Contains(string(b), "L3isoIsolationNotIntact") || !strings.Contains(string(b), "L3isoDenialsRising") || strings.Contains(string(b), `"health":"err"`) {
		t.Errorf("Prometheus rules: %v %s", err, b)
	}

	// Something unpins a socket program's link: it detaches.
	if err := os.Remove(filepath.Join(e.bpffs, "links", "l3_bind4")); err != nil {
		t.Fatal(err)
	}
	chk("l3iso_isolation_intact", is(0), "0 once a link is unpinned")
	chk("l3iso_programs_expected - l3iso_programs_attached", is(1), "one program missing")
	poll("l3iso_problem_info", func(got promQuery) string {
		if _, ok := got["l3iso_problem_info{object=links/l3_bind4}"]; !ok {
			return fmt.Sprintf("no problem with links/l3_bind4: %v", got)
		}
		return ""
	})
	e.mustRun("up")
	chk("l3iso_isolation_intact", is(1), "1 once up repaired it")
	chk("l3iso_changes_total", is(3), "3 (up, apply, the repairing up)")
}
