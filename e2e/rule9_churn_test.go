package e2e

import (
	"fmt"
	"net/netip"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestChurnUnderLoad: while containers come and go (add, del, apply), the
// ones that stay keep their rules on every connection — source address
// right, foreign binds refused — with traffic running concurrently.
func TestChurnUnderLoad(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.mustRun("container", "add", "web", "--addr", "10.77.0.1/24", "--addr", "fd77::1")
	e.mustRun("container", "add", "db", "--addr", "10.77.0.2/24", "--addr", "fd77::2")
	web, db := e.agent("web"), e.agent("db")
	l4 := listen(t, db, tcp4, "10.77.0.2:7400")
	l6 := listen(t, db, tcp6, "[fd77::2]:7401")
	// db accepts in the background (each Accept is one request to its agent).
	stopAccept := make(chan struct{})
	var acceptWG sync.WaitGroup
	for _, lid := range []int{l4, l6} {
		acceptWG.Add(1)
		go func(lid int) {
			defer acceptWG.Done()
			for {
				select {
				case <-stopAccept:
					return
				default:
				}
				if id, _, err := db.Accept(lid, 100*time.Millisecond); err == nil {
					db.Close(id)
				}
			}
		}(lid)
	}

	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	var conns, binds int
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			for _, c := range []struct {
				fam      int
				dst, src string
			}{{unix.AF_INET, "10.77.0.2:7400", "10.77.0.1"}, {unix.AF_INET6, "[fd77::2]:7401", "fd77::1"}} {
				id := web.Socket(c.fam, unix.SOCK_STREAM, 0)
				if err := web.Connect(id, ap(c.dst)); err != nil {
					t.Errorf("connect %s during churn: %v", c.dst, err)
				} else if got, _ := web.SockName(id); got.Addr() != netip.MustParseAddr(c.src) {
					t.Errorf("connect %s during churn left from %s, want %s", c.dst, got, c.src)
				}
				web.Close(id)
				conns++
			}
			id := web.Socket(unix.AF_INET, unix.SOCK_DGRAM, 0)
			if err := web.Bind(id, ap("10.77.0.2:0")); err == nil {
				t.Error("web bound db's address during churn")
			}
			web.Close(id)
			binds++
		}
	}()

	for round := 0; round < 5; round++ {
		for i := 0; i < 10; i++ {
			e.mustRun("container", "add", fmt.Sprintf("c%d", i), "--addr", fmt.Sprintf("10.78.%d.%d/24", round, i+1))
		}
		e.apply(fmt.Sprintf("containers:\n  web:\n    addresses: [10.77.0.1/24, fd77::1]\n  db:\n    addresses: [10.77.0.2/24, fd77::2]\n  x%d:\n    addresses: [10.79.0.%d]\n", round, round+1))
	}
	close(stop)
	wg.Wait()
	close(stopAccept)
	acceptWG.Wait()
	t.Logf("%d connections and %d foreign binds checked during churn", conns, binds)
	if conns == 0 {
		t.Fatal("no traffic ran during the churn")
	}
}
