// Command etcdload keeps puts in flight against an etcd cluster for harness/bench_compare.py.
//
// It finds the leader among -endpoints (the member whose status names itself leader), then
// runs -in-flight goroutines over -conns gRPC connections to it, each a closed loop of one
// Put at a time: random hex values of -value-size bytes on keys "bench-key-%07d" drawn
// uniformly from -key-space, as raftkv's load generator writes. A put answered from
// -warmup on and before -warmup + -duration counts: its latency if OK, its error kind if
// not; one that timed out after the window is "unanswered". On exit it prints one JSON
// object: the leader's URL, the counted latencies in ms, the error counts, the unanswered.
//
// Built against the clientv3 sources in Debian's golang-etcd-server-dev (GOPATH mode).
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"math/rand"
	"os"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/clientv3"
	"google.golang.org/grpc/status"
)

type result struct {
	Leader     string         `json:"leader"`
	LatencyMs  []float64      `json:"latencies_ms"`
	Errors     map[string]int `json:"errors"`
	Unanswered int            `json:"unanswered"`
}

func main() {
	endpoints := flag.String("endpoints", "", "client URLs, comma-separated")
	inFlight := flag.Int("in-flight", 1, "puts outstanding at once")
	conns := flag.Int("conns", 1, "gRPC connections to the leader, the puts spread over them")
	warmup := flag.Duration("warmup", time.Second, "uncounted time before the window")
	duration := flag.Duration("duration", 5*time.Second, "the counted window")
	valueSize := flag.Int("value-size", 100, "bytes per value")
	keySpace := flag.Int("key-space", 10000, "distinct keys")
	timeout := flag.Duration("timeout", 5*time.Second, "a put unanswered this long fails")
	flag.Parse()
	if *endpoints == "" || *inFlight < 1 || *conns < 1 {
		fail(errors.New("need -endpoints, -in-flight >= 1, -conns >= 1"))
	}

	leader, err := findLeader(strings.Split(*endpoints, ","), 20*time.Second)
	if err != nil {
		fail(err)
	}
	clients := make([]*clientv3.Client, *conns)
	for i := range clients {
		c, err := clientv3.New(clientv3.Config{Endpoints: []string{leader}, DialTimeout: 5 * time.Second})
		if err != nil {
			fail(err)
		}
		defer c.Close()
		clients[i] = c
	}

	keys := make([]string, *keySpace)
	for i := range keys {
		keys[i] = fmt.Sprintf("bench-key-%07d", i)
	}
	value := make([]byte, *valueSize)
	for i := range value {
		value[i] = "0123456789abcdef"[rand.Intn(16)] // hex, as raftkv's load writes
	}
	start := time.Now().Add(*warmup)
	end := start.Add(*duration)

	// Each goroutine owns its slot of these until wg.Wait: no locks on the put path.
	latencies := make([][]float64, *inFlight)
	errs := make([]map[string]int, *inFlight)
	unanswered := make([]int, *inFlight)
	var wg sync.WaitGroup
	for g := 0; g < *inFlight; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			cli := clients[g%len(clients)]
			rng := rand.New(rand.NewSource(int64(g) + time.Now().UnixNano()))
			errs[g] = map[string]int{}
			for time.Now().Before(end) {
				sent := time.Now()
				ctx, cancel := context.WithTimeout(context.Background(), *timeout)
				_, err := cli.Put(ctx, keys[rng.Intn(len(keys))], string(value))
				cancel()
				got := time.Now()
				if got.Before(start) {
					continue
				}
				if !got.Before(end) {
					if err != nil && errors.Is(err, context.DeadlineExceeded) {
						unanswered[g]++
					}
					break
				}
				if err == nil {
					latencies[g] = append(latencies[g], float64(got.Sub(sent).Nanoseconds())/1e6)
				} else {
					errs[g][errorKind(err)]++
				}
			}
		}(g)
	}
	wg.Wait()

	out := result{Leader: leader, LatencyMs: []float64{}, Errors: map[string]int{}}
	for g := range latencies {
		out.LatencyMs = append(out.LatencyMs, latencies[g]...)
		for k, n := range errs[g] {
			out.Errors[k] += n
		}
		out.Unanswered += unanswered[g]
	}
	if err := json.NewEncoder(os.Stdout).Encode(out); err != nil {
		fail(err)
	}
}

// findLeader returns the endpoint whose member leads, polling until one does or `within` passes.
func findLeader(endpoints []string, within time.Duration) (string, error) {
	cli, err := clientv3.New(clientv3.Config{Endpoints: endpoints, DialTimeout: 5 * time.Second})
	if err != nil {
		return "", err
	}
	defer cli.Close()
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		for _, ep := range endpoints {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			st, err := cli.Status(ctx, ep)
			cancel()
			if err == nil && st.Leader != 0 && st.Leader == st.Header.MemberId {
				return ep, nil
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	return "", fmt.Errorf("no leader among %v within %v", endpoints, within)
}

func errorKind(err error) string {
	if errors.Is(err, context.DeadlineExceeded) {
		return "timeout"
	}
	return status.Code(err).String()
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "etcdload:", err)
	os.Exit(1)
}
