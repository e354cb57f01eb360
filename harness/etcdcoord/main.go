// Command etcdcoord measures etcd's locks and watch fan-out for harness/coord_bench.py,
// the same two measurements that module makes of raftkv.
//
//	-mode lock:  one client takes and releases one lock (clientv3/concurrency.Mutex on
//	             a session of -ttl seconds) -n times, and prints each acquire's and each
//	             release's latency in ms.
//	-mode watch: -watchers watch streams (each its own Watch on the prefix, over
//	             -conns clients) from the revision after a marker put; one writer then
//	             puts -events keys under the prefix, -in-flight at a time. It prints how
//	             long from the first put until every watcher had every event, and the
//	             events delivered in all.
//
// Built against the clientv3 sources in Debian's golang-etcd-server-dev (GOPATH mode),
// as harness/etcdload is.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/clientv3"
	"go.etcd.io/etcd/clientv3/concurrency"
)

func main() {
	endpoints := flag.String("endpoints", "", "client URLs, comma-separated")
	mode := flag.String("mode", "lock", "lock or watch")
	n := flag.Int("n", 200, "lock: acquire/release rounds")
	ttl := flag.Int("ttl", 10, "lock: the session's TTL in seconds")
	watchers := flag.Int("watchers", 100, "watch: watch streams")
	conns := flag.Int("conns", 10, "watch: clients the watch streams spread over")
	events := flag.Int("events", 2000, "watch: puts the writer makes")
	inFlight := flag.Int("in-flight", 16, "watch: puts outstanding at once")
	flag.Parse()
	if *endpoints == "" {
		fail(errors.New("need -endpoints"))
	}
	eps := strings.Split(*endpoints, ",")
	var out any
	var err error
	switch *mode {
	case "lock":
		out, err = lockLatency(eps, *n, *ttl)
	case "watch":
		out, err = watchFanout(eps, *watchers, *conns, *events, *inFlight)
	default:
		err = fmt.Errorf("unknown -mode %q", *mode)
	}
	if err != nil {
		fail(err)
	}
	if err := json.NewEncoder(os.Stdout).Encode(out); err != nil {
		fail(err)
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "etcdcoord:", err)
	os.Exit(1)
}

func newClient(eps []string) (*clientv3.Client, error) {
	return clientv3.New(clientv3.Config{Endpoints: eps, DialTimeout: 5 * time.Second})
}

type lockResult struct {
	AcquireMs []float64 `json:"acquire_ms"`
	ReleaseMs []float64 `json:"release_ms"`
}

func lockLatency(eps []string, n, ttl int) (*lockResult, error) {
	cli, err := newClient(eps)
	if err != nil {
		return nil, err
	}
	defer cli.Close()
	session, err := concurrency.NewSession(cli, concurrency.WithTTL(ttl))
	if err != nil {
		return nil, err
	}
	defer session.Close()
	res := &lockResult{}
	ctx := context.Background()
	for i := 0; i < n; i++ {
		m := concurrency.NewMutex(session, "/bench-lock/")
		t0 := time.Now()
		if err := m.Lock(ctx); err != nil {
			return nil, err
		}
		t1 := time.Now()
		if err := m.Unlock(ctx); err != nil {
			return nil, err
		}
		t2 := time.Now()
		res.AcquireMs = append(res.AcquireMs, float64(t1.Sub(t0).Microseconds())/1000)
		res.ReleaseMs = append(res.ReleaseMs, float64(t2.Sub(t1).Microseconds())/1000)
	}
	return res, nil
}

type watchResult struct {
	Seconds   float64 `json:"seconds"`
	Delivered int     `json:"delivered"`
}

func watchFanout(eps []string, watchers, conns, events, inFlight int) (*watchResult, error) {
	clients := make([]*clientv3.Client, conns)
	for i := range clients {
		c, err := newClient(eps)
		if err != nil {
			return nil, err
		}
		defer c.Close()
		clients[i] = c
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	prefix := fmt.Sprintf("fanout-%d/", time.Now().UnixNano())
	marker, err := clients[0].Put(ctx, prefix+"start", "")
	if err != nil {
		return nil, err
	}
	from := marker.Header.Revision + 1
	var done sync.WaitGroup
	var mu sync.Mutex
	delivered := 0
	var last time.Time
	ready := make(chan struct{}, watchers)
	for w := 0; w < watchers; w++ {
		done.Add(1)
		ch := clients[w%conns].Watch(ctx, prefix, clientv3.WithPrefix(), clientv3.WithRev(from),
			clientv3.WithCreatedNotify())
		go func() {
			defer done.Done()
			seen := 0
			for resp := range ch {
				if resp.Created {
					ready <- struct{}{}
					continue
				}
				seen += len(resp.Events)
				if seen >= events {
					mu.Lock()
					delivered += seen
					last = time.Now()
					mu.Unlock()
					return
				}
			}
		}()
	}
	for w := 0; w < watchers; w++ {
		<-ready
	}
	start := time.Now()
	sem := make(chan struct{}, inFlight)
	var puts sync.WaitGroup
	var putErr error
	for i := 0; i < events; i++ {
		sem <- struct{}{}
		puts.Add(1)
		go func(i int) {
			defer puts.Done()
			defer func() { <-sem }()
			if _, err := clients[i%conns].Put(ctx, fmt.Sprintf("%sk%07d", prefix, i), "v"); err != nil {
				mu.Lock()
				putErr = err
				mu.Unlock()
			}
		}(i)
	}
	puts.Wait()
	if putErr != nil {
		return nil, putErr
	}
	done.Wait()
	return &watchResult{Seconds: last.Sub(start).Seconds(), Delivered: delivered}, nil
}
