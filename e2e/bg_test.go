package e2e

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/l3iso/l3iso/pkg/veth"
)

// bgProc is a long-running process a test started in its env's netns
// (l3iso metrics, l3iso monitor, prometheus); Cleanup stops it.
type bgProc struct {
	t     *testing.T
	cmd   *exec.Cmd
	lines chan string // stdout, line by line
	mu    sync.Mutex
	errb  bytes.Buffer // stderr
	done  chan struct{}
}

// start starts name with args in the env's netns, with the env's
// environment. ready, if not "", is a fragment of the stderr or stdout
// line the process prints once it is ready; start waits for it (10 s).
func (e *env) start(ready, name string, args ...string) *bgProc {
	e.t.Helper()
	cmd := exec.Command("nsenter", append([]string{"--net=" + e.netns, name}, args...)...)
	cmd.Env = append(os.Environ(), e.environ()...)
	p := &bgProc{t: e.t, cmd: cmd, lines: make(chan string, 4096), done: make(chan struct{})}
	out, err := cmd.StdoutPipe()
	if err != nil {
		e.t.Fatal(err)
	}
	errPipe, err := cmd.StderrPipe()
	if err != nil {
		e.t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		e.t.Fatalf("start %s: %v", name, err)
	}
	readyCh := make(chan struct{})
	var once sync.Once
	isReady := func(l string) {
		if ready != "" && strings.Contains(l, ready) {
			once.Do(func() { close(readyCh) })
		}
	}
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		s := bufio.NewScanner(errPipe)
		for s.Scan() {
			p.mu.Lock()
			p.errb.WriteString(s.Text() + "\n")
			p.mu.Unlock()
			isReady(s.Text())
		}
	}()
	go func() {
		defer wg.Done()
		s := bufio.NewScanner(out)
		s.Buffer(make([]byte, 64<<10), 1<<20)
		for s.Scan() {
			isReady(s.Text())
			p.lines <- s.Text()
		}
	}()
	go func() {
		wg.Wait()
		cmd.Wait()
		close(p.lines)
		close(p.done)
	}()
	e.t.Cleanup(p.stop)
	if ready != "" {
		select {
		case <-readyCh:
		case <-p.done:
			e.t.Fatalf("%s %v exited before it was ready: %s", name, args, p.stderr())
		case <-time.After(10 * time.Second):
			e.t.Fatalf("%s %v did not say %q within 10 s: %s", name, args, ready, p.stderr())
		}
	}
	return p
}

func (p *bgProc) stderr() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.errb.String()
}

// waitStderr waits until the process said fragment on stderr (which
// arrives apart from stdout).
func (p *bgProc) waitStderr(fragment string, timeout time.Duration) bool {
	for deadline := time.Now().Add(timeout); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if strings.Contains(p.stderr(), fragment) {
			return true
		}
	}
	return false
}

// stop sends SIGTERM (SIGKILL after 5 s) and waits for the process.
func (p *bgProc) stop() {
	select {
	case <-p.done:
		return
	default:
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(5 * time.Second):
		p.cmd.Process.Kill()
		<-p.done
	}
}

// next is the next stdout line, or fails the test after timeout.
func (p *bgProc) next(timeout time.Duration) string {
	p.t.Helper()
	select {
	case l, ok := <-p.lines:
		if !ok {
			p.t.Fatalf("%v exited: %s", p.cmd.Args, p.stderr())
		}
		return l
	case <-time.After(timeout):
		p.t.Fatalf("%v printed nothing for %s; stderr: %s", p.cmd.Args, timeout, p.stderr())
	}
	return ""
}

// httpIn is an HTTP client whose connections are made in network
// namespace ns (a socket belongs to the namespace it was created in: the
// dial runs on a locked thread switched into ns).
func httpIn(ns string) *http.Client {
	dial := func(ctx context.Context, network, addr string) (c net.Conn, err error) {
		err = veth.DoAt(ns, func() error {
			c, err = (&net.Dialer{}).DialContext(ctx, network, addr)
			return err
		})
		return c, err
	}
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DialContext: dial, DisableKeepAlives: true}}
}

// get fetches url through c; a status other than 200 is an error.
func get(c *http.Client, url string) ([]byte, error) {
	resp, err := c.Get(url)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err == nil && resp.StatusCode != http.StatusOK {
		err = fmt.Errorf("GET %s: %s: %s", url, resp.Status, b)
	}
	return b, err
}
