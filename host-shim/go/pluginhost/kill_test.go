package pluginhost

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"executorplugins.example/hostshim/executor"
	"executorplugins.example/hostshim/models"
)

// The plugin killed with SIGKILL while three jobs run, their waits pend, a fourth job runs
// through Run and a log is followed:
// the supervisor starts a new plugin, which re-attaches to the jobs' monitors; the waits are
// re-issued and the follow resumes from the last position read. Every result and every byte
// arrives, nothing twice.
func TestPluginKilledWhileJobsRunAndALogIsFollowed(t *testing.T) {
	e := newEnv(t, nil)
	ctx := context.Background()
	const lines = 30
	script := func(id string, code int) string {
		return fmt.Sprintf(`i=1; while [ $i -le %d ]; do echo "%s out $i"; echo "%s err $i" >&2; i=$((i+1)); sleep 0.05; done; exit %d`, lines, id, id, code)
	}
	want := func(id, stream string) string {
		var b strings.Builder
		for i := 1; i <= lines; i++ {
			fmt.Fprintf(&b, "%s %s %d\n", id, stream, i)
		}
		return b.String()
	}
	ids := []string{"kill-a", "kill-b", "kill-c"}
	type waited struct {
		res <-chan *models.RunCommandResult
		err <-chan error
	}
	waits := map[string]waited{}
	for i, id := range ids {
		if err := e.exec.Start(ctx, e.request(id, script(id, 10+i))); err != nil {
			t.Fatalf("Start %s: %v", id, err)
		}
		r, errs := e.exec.Wait(ctx, id)
		waits[id] = waited{r, errs}
	}
	// A fourth job through Run: its single round trip is interrupted, and the wait it falls
	// back to is re-issued on the new plugin.
	type ran struct {
		res *models.RunCommandResult
		err error
	}
	runDone := make(chan ran, 1)
	go func() {
		res, err := e.exec.Run(ctx, e.request("kill-d", script("kill-d", 13)))
		runDone <- ran{res, err}
	}()
	stream, err := e.exec.GetLogStream(ctx, executor.LogStreamRequest{ExecutionID: "kill-b", Follow: true})
	if err != nil {
		t.Fatal(err)
	}
	defer stream.Close()
	logBytes := make(chan []byte, 1)
	counted := &countingReader{r: stream}
	go func() {
		b, _ := readAllLimited(counted, 60*time.Second)
		logBytes <- b
	}()

	// Killed once part of the log was read and well before the jobs end (each takes 1.5 s).
	time.Sleep(300 * time.Millisecond)
	for atomic.LoadInt64(&counted.n) == 0 {
		time.Sleep(10 * time.Millisecond)
	}
	before := atomic.LoadInt64(&counted.n)
	old := e.pid()
	if old == 0 {
		t.Fatal("no plugin running")
	}
	if err := syscall.Kill(old, syscall.SIGKILL); err != nil {
		t.Fatalf("kill: %v", err)
	}
	t.Logf("killed plugin %d mid-run, %d log bytes read", old, before)

	for i, id := range ids {
		select {
		case res := <-waits[id].res:
			if res.ExitCode != 10+i || res.ErrorMsg != "" || res.STDOUT != want(id, "out") || res.STDERR != want(id, "err") {
				t.Errorf("%s: unexpected result %+v", id, res)
			}
		case err := <-waits[id].err:
			t.Errorf("%s: Wait failed: %v", id, err)
		case <-time.After(60 * time.Second):
			t.Fatalf("%s: no result", id)
		}
	}
	select {
	case r := <-runDone:
		if r.err != nil || r.res.ExitCode != 13 || r.res.STDOUT != want("kill-d", "out") {
			t.Errorf("Run across the kill: %+v, %v", r.res, r.err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("Run gave no result")
	}
	all := <-logBytes
	if int64(len(all)) <= before {
		t.Fatalf("nothing was read after the kill (%d bytes before, %d in all)", before, len(all))
	}
	out, errs := demux(t, all)
	if out != want("kill-b", "out") || errs != want("kill-b", "err") {
		t.Fatalf("followed log differs:\nstdout %q\nstderr %q", out, errs)
	}
	now := e.pid()
	if now == 0 || now == old {
		t.Fatalf("no new plugin serves: pid %d (killed %d)", now, old)
	}
	if _, err := os.Stat(fmt.Sprintf("/proc/%d", old)); err == nil {
		if b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", old)); !strings.Contains(string(b), ") Z") {
			t.Fatalf("the killed plugin %d is still running", old)
		}
	}
}

type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(b []byte) (int, error) {
	n, err := c.r.Read(b)
	atomic.AddInt64(&c.n, int64(n))
	return n, err
}

// readAllLimited reads to the end, giving up after limit.
func readAllLimited(r interface{ Read([]byte) (int, error) }, limit time.Duration) ([]byte, error) {
	var out []byte
	buf := make([]byte, 32<<10)
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) {
		n, err := r.Read(buf)
		out = append(out, buf[:n]...)
		if err != nil {
			if err.Error() == "EOF" {
				return out, nil
			}
			return out, err
		}
	}
	return out, fmt.Errorf("no end within %v", limit)
}
