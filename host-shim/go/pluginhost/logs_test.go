package pluginhost

import (
	"context"
	"errors"
	"io"
	"strconv"
	"strings"
	"testing"
	"time"

	"executorplugins.example/hostshim/executor"
)

func TestLogHistoryIsByteExactThroughStdcopy(t *testing.T) {
	e := newEnv(t, nil)
	ctx := context.Background()
	// Bytes that are not text, a NUL, no final newline, interleaved streams.
	script := `printf 'one\n'; printf 'err\001\n' >&2; printf '\000\377\376 two'; printf 'tail' >&2`
	if _, err := e.exec.Run(ctx, e.request("hist-1", script)); err != nil {
		t.Fatal(err)
	}
	r, err := e.exec.GetLogStream(ctx, executor.LogStreamRequest{ExecutionID: "hist-1"})
	if err != nil {
		t.Fatalf("GetLogStream: %v", err)
	}
	defer r.Close()
	out, errs := demux(t, readAll(t, r, 20*time.Second))
	if out != "one\n\x00\xff\xfe two" || errs != "err\x01\ntail" {
		t.Fatalf("stdout %q, stderr %q", out, errs)
	}
	// Tail on a finished execution: no history, just the end.
	r2, err := e.exec.GetLogStream(ctx, executor.LogStreamRequest{ExecutionID: "hist-1", Tail: true})
	if err != nil {
		t.Fatal(err)
	}
	defer r2.Close()
	if b := readAll(t, r2, 20*time.Second); len(b) != 0 {
		t.Fatalf("tail of a finished execution gave %q", b)
	}
}

func TestLogFollowIsByteExactAndCloseUnsubscribes(t *testing.T) {
	e := newEnv(t, nil)
	ctx := context.Background()
	script := `for i in 1 2 3 4 5; do echo "line $i"; echo "err $i" >&2; sleep 0.1; done`
	if err := e.exec.Start(ctx, e.request("follow-1", script)); err != nil {
		t.Fatal(err)
	}
	r, err := e.exec.GetLogStream(ctx, executor.LogStreamRequest{ExecutionID: "follow-1", Follow: true})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	out, errs := demux(t, readAll(t, r, 20*time.Second))
	var wantOut, wantErr strings.Builder
	for i := 1; i <= 5; i++ {
		wantOut.WriteString("line " + string(rune('0'+i)) + "\n")
		wantErr.WriteString("err " + string(rune('0'+i)) + "\n")
	}
	if out != wantOut.String() || errs != wantErr.String() {
		t.Fatalf("stdout %q, stderr %q", out, errs)
	}

	// Closing a follow of a running job unsubscribes and ends a pending Read.
	if err := e.exec.Start(ctx, e.request("follow-2", "echo first; sleep 30")); err != nil {
		t.Fatal(err)
	}
	r3, err := e.exec.GetLogStream(ctx, executor.LogStreamRequest{ExecutionID: "follow-2", Follow: true})
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64)
	n, err := io.ReadAtLeast(r3, buf, 8+len("first\n"))
	if err != nil || string(buf[8:n]) != "first\n" {
		t.Fatalf("first frame: %q, %v", buf[:n], err)
	}
	readErr := make(chan error, 1)
	go func() {
		_, err := r3.Read(buf)
		readErr <- err
	}()
	time.Sleep(100 * time.Millisecond)
	r3.Close()
	select {
	case err := <-readErr:
		if !errors.Is(err, errStreamClosed) {
			t.Fatalf("Read after Close: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not end a pending Read")
	}
	c := e.plugin().cur
	deadline := time.Now().Add(5 * time.Second)
	for {
		c.mu.Lock()
		open := len(c.subs)
		c.mu.Unlock()
		if open == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d subscriptions still open after Close", open)
		}
		time.Sleep(20 * time.Millisecond)
	}
	// A cancelled context ends a follow the same way.
	cctx, cancel := context.WithCancel(ctx)
	r4, err := e.exec.GetLogStream(cctx, executor.LogStreamRequest{ExecutionID: "follow-2", Follow: true})
	if err != nil {
		t.Fatal(err)
	}
	defer r4.Close()
	if _, err := io.ReadAtLeast(r4, buf, 14); err != nil {
		t.Fatal(err)
	}
	cancel()
	if _, err := r4.Read(buf); !errors.Is(err, context.Canceled) {
		t.Fatalf("Read after the context ended: %v", err)
	}
	if err := e.exec.Cancel(ctx, "follow-2"); err != nil {
		t.Fatal(err)
	}
	// Ended before the test's directories go.
	e.wait("follow-2", 20*time.Second)
}

// A reader that falls behind by more than a subscription's budget costs the host no more than
// the budget: the subscription is dropped and resumed at the last position read, and the
// stream stays byte-exact.
func TestASlowReaderResumesWithoutLoss(t *testing.T) {
	e := newEnv(t, nil)
	ctx := context.Background()
	const size = 3 * subscriptionBudget
	if err := e.exec.Start(ctx, e.request("slow-1", "sleep 0.3; yes 0123456789abcdef | head -c "+strconv.Itoa(size))); err != nil {
		t.Fatal(err)
	}
	r, err := e.exec.GetLogStream(ctx, executor.LogStreamRequest{ExecutionID: "slow-1", Follow: true})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	// Not read until the subscription has given up on this reader.
	e.wait("slow-1", 60*time.Second)
	ls := r.(*logStream)
	deadline := time.Now().Add(60 * time.Second)
	for {
		ls.mu.Lock()
		sub := ls.sub
		ls.mu.Unlock()
		sub.mu.Lock()
		state := sub.state
		sub.mu.Unlock()
		if state == subLagged {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the subscription never lagged (state %v)", state)
		}
		time.Sleep(20 * time.Millisecond)
	}
	out, errs := demux(t, readAll(t, r, 60*time.Second))
	want := strings.Repeat("0123456789abcdef\n", size/17+1)[:size]
	if len(out) != size || out != want || errs != "" {
		t.Fatalf("got %d stdout bytes (want %d), equal %v, stderr %q", len(out), size, out == want, errs)
	}
	if ls.resumes < 1 {
		t.Fatalf("the reader never fell behind (resumes %d): the test proves nothing", ls.resumes)
	}
	// At most the budget, and never more than one event over it (the first one always goes).
	if ls.peak > subscriptionBudget {
		t.Fatalf("a subscription held %d bytes, over the budget of %d", ls.peak, subscriptionBudget)
	}
	t.Logf("%d bytes followed byte-exact through %d resumes; backlog peak %d bytes", size, ls.resumes, ls.peak)
}
