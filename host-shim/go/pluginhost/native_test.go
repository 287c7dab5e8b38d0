package pluginhost

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"executorplugins.example/hostshim/bidstrategy"
	"executorplugins.example/hostshim/executor"
	"executorplugins.example/hostshim/models"
)

func TestRunGivesExitCodeAndBothStreams(t *testing.T) {
	e := newEnv(t, nil)
	req := e.request("run-1", "echo hello; echo oops >&2; exit 3")
	res, err := e.exec.Run(context.Background(), req)
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	if res.STDOUT != "hello\n" || res.STDERR != "oops\n" || res.ExitCode != 3 || res.ErrorMsg != "" || res.StdoutTruncated || res.StderrTruncated {
		t.Fatalf("unexpected result: %+v", res)
	}
	for name, want := range map[string]string{"stdout": "hello\n", "stderr": "oops\n", "exitCode": "3"} {
		got, err := os.ReadFile(filepath.Join(req.ResultsDir, name))
		if err != nil || string(got) != want {
			t.Fatalf("results file %s: %q, %v; want %q", name, got, err, want)
		}
	}
	// The plugin was started with a clean environment: none of ours reached it.
	os.Setenv("EXECUTOR_GO_TEST_SECRET", "x")
	defer os.Unsetenv("EXECUTOR_GO_TEST_SECRET")
	environ, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(e.pid()), "environ"))
	if err != nil {
		t.Fatalf("reading the plugin's environment: %v", err)
	}
	for _, kv := range strings.Split(string(environ), "\x00") {
		if kv == "" {
			continue
		}
		k := strings.SplitN(kv, "=", 2)[0]
		allowed := k == "PATH" || k == cookieKey
		for _, p := range pluginEnvPassed {
			allowed = allowed || k == p
		}
		if !allowed {
			t.Errorf("the plugin's environment has %s", k)
		}
	}
}

func TestOutputLimitsTruncateResultAndFiles(t *testing.T) {
	e := newEnv(t, nil)
	req := e.request("limits-1", "printf 0123456789abcdef; printf ABCDEFGHIJ >&2")
	req.OutputLimits = executor.OutputLimits{
		MaxStdoutFileLength: 10, MaxStdoutReturnLength: 4,
		MaxStderrFileLength: executor.KB, MaxStderrReturnLength: 3,
	}
	res, err := e.exec.Run(context.Background(), req)
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	if res.STDOUT != "0123" || !res.StdoutTruncated || res.STDERR != "ABC" || !res.StderrTruncated {
		t.Fatalf("unexpected result: %+v", res)
	}
	got, _ := os.ReadFile(filepath.Join(req.ResultsDir, "stdout"))
	if string(got) != "0123456789" {
		t.Fatalf("stdout file %q, want the first 10 bytes", got)
	}
	got, _ = os.ReadFile(filepath.Join(req.ResultsDir, "stderr"))
	if string(got) != "ABCDEFGHIJ" {
		t.Fatalf("stderr file %q", got)
	}
}

func TestCancelStopsAJob(t *testing.T) {
	e := newEnv(t, nil)
	ctx := context.Background()
	if err := e.exec.Start(ctx, e.request("cancel-1", "echo started; sleep 30")); err != nil {
		t.Fatalf("Start: %v", err)
	}
	begin := time.Now()
	if err := e.exec.Cancel(ctx, "cancel-1"); err != nil {
		t.Fatalf("Cancel: %v", err)
	}
	res := e.wait("cancel-1", 20*time.Second)
	if res.ErrorMsg != "execution already cancelled" || res.ExitCode != -1 {
		t.Fatalf("unexpected result: %+v", res)
	}
	if time.Since(begin) > 15*time.Second {
		t.Fatalf("cancel took %v", time.Since(begin))
	}
	if err := e.exec.Cancel(ctx, "no-such-execution"); !errors.Is(err, executor.ErrNotFound) {
		t.Fatalf("Cancel of an unknown id: %v, want ErrNotFound", err)
	}
}

func TestDeadlineFromContextBecomesExecutionTimeout(t *testing.T) {
	e := newEnv(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 700*time.Millisecond)
	defer cancel()
	if err := e.exec.Start(ctx, e.request("deadline-1", "sleep 30")); err != nil {
		t.Fatalf("Start: %v", err)
	}
	// Waited for without a deadline: the plugin itself stops the job at ctx's deadline.
	res := e.wait("deadline-1", 20*time.Second)
	if !strings.Contains(res.ErrorMsg, "context deadline exceeded") || res.ExitCode != -1 {
		t.Fatalf("unexpected result: %+v", res)
	}

	// Run returns ctx.Err() when the deadline passes, as Bacalhau's executors do.
	ctx2, cancel2 := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel2()
	_, err := e.exec.Run(ctx2, e.request("deadline-2", "sleep 30"))
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Run past its deadline: %v", err)
	}
	res = e.wait("deadline-2", 20*time.Second)
	if !strings.Contains(res.ErrorMsg, "context deadline exceeded") {
		t.Fatalf("unexpected result: %+v", res)
	}

	// A deadline already passed starts nothing.
	past, cancel3 := context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
	defer cancel3()
	if err := e.exec.Start(past, e.request("deadline-3", "true")); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Start with a passed deadline: %v", err)
	}
	_, errs := e.exec.Wait(context.Background(), "deadline-3")
	if err := <-errs; !errors.Is(err, executor.ErrNotFound) {
		t.Fatalf("the execution exists after all: %v", err)
	}
}

func TestWaitOnAnUnknownIdAndACancelledWait(t *testing.T) {
	e := newEnv(t, nil)
	res, errs := e.exec.Wait(context.Background(), "never-started")
	select {
	case err := <-errs:
		if !errors.Is(err, executor.ErrNotFound) || err.Error() != "execution not found" {
			t.Fatalf("Wait on an unknown id: %v", err)
		}
		var pe *PluginError
		if !errors.As(err, &pe) || pe.ExecutionID != "never-started" {
			t.Fatalf("error carries no execution id: %#v", err)
		}
	case r := <-res:
		t.Fatalf("a result for an unknown id: %+v", r)
	case <-time.After(20 * time.Second):
		t.Fatal("no answer")
	}

	// A cancelled Wait reports ctx.Err() and leaves the execution running.
	if err := e.exec.Start(context.Background(), e.request("w-1", "sleep 1; echo done")); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	res, errs = e.exec.Wait(ctx, "w-1")
	cancel()
	select {
	case err := <-errs:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("cancelled Wait: %v", err)
		}
	case r := <-res:
		t.Fatalf("a result before the job ended: %+v", r)
	}
	if r := e.wait("w-1", 20*time.Second); r.STDOUT != "done\n" || r.ExitCode != 0 {
		t.Fatalf("the execution did not run on: %+v", r)
	}
}

func TestRefusedRequestsMatchTheSentinels(t *testing.T) {
	e := newEnv(t, nil)
	ctx := context.Background()
	if err := e.exec.Start(ctx, e.request("twice", "sleep 1")); err != nil {
		t.Fatal(err)
	}
	err := e.exec.Start(ctx, e.request("twice", "true"))
	if !errors.Is(err, executor.ErrAlreadyStarted) || errors.Is(err, executor.ErrAlreadyComplete) {
		t.Fatalf("second start: %v", err)
	}
	e.wait("twice", 20*time.Second)
	if err := e.exec.Start(ctx, e.request("twice", "true")); !errors.Is(err, executor.ErrAlreadyComplete) {
		t.Fatalf("start of a finished id: %v", err)
	}
	if _, err := e.exec.Run(ctx, e.request("twice", "true")); !errors.Is(err, executor.ErrAlreadyComplete) {
		t.Fatalf("run of a finished id: %v", err)
	}

	bad := e.request("bad-1", "true")
	bad.ResultsDir = "relative"
	bad.EngineParams.Params["WorkingDirectory"] = "x"
	err = e.exec.Start(ctx, bad)
	var pe *PluginError
	if !errors.As(err, &pe) || pe.Name != "InvalidParams" || len(pe.Problems) != 2 {
		t.Fatalf("invalid request: %#v", err)
	}
	if pe.Problems[0].Field != "ResultsDir" || !strings.Contains(err.Error(), "must be an absolute path") {
		t.Fatalf("problems: %+v / %v", pe.Problems, err)
	}
	if errors.Is(err, executor.ErrNotFound) || errors.Is(err, executor.ErrAlreadyStarted) {
		t.Fatalf("an invalid request matches a state sentinel: %v", err)
	}
	if _, err := e.exec.GetLogStream(ctx, executor.LogStreamRequest{ExecutionID: "nope"}); !errors.Is(err, executor.ErrNotFound) {
		t.Fatalf("logs of an unknown id: %v", err)
	}
	if err := e.exec.Start(ctx, nil); err == nil {
		t.Fatal("a nil request was accepted")
	}
}

func TestBidsComeFromThePlugin(t *testing.T) {
	e := newEnv(t, nil)
	ctx := context.Background()
	job := func(engine string) bidstrategy.BidStrategyRequest {
		return bidstrategy.BidStrategyRequest{Job: models.Job{ID: "j", Type: "batch", Count: 1, Tasks: []*models.Task{{
			Name:   "main",
			Engine: &models.SpecConfig{Type: engine, Params: map[string]interface{}{"Entrypoint": []string{"/bin/true"}}},
		}}}}
	}
	yes, err := e.exec.ShouldBid(ctx, job("native"))
	if err != nil || !yes.ShouldBid || !strings.HasPrefix(yes.Reason, "this node does ") {
		t.Fatalf("ShouldBid native: %+v, %v", yes, err)
	}
	no, err := e.exec.ShouldBid(ctx, job("docker"))
	if err != nil || no.ShouldBid || !strings.Contains(no.Reason, `"docker"`) {
		t.Fatalf("ShouldBid docker: %+v, %v", no, err)
	}
	fits, err := e.exec.ShouldBidBasedOnUsage(ctx, job("native"), models.Resources{CPU: 0.1, Memory: 1 << 20})
	if err != nil || !fits.ShouldBid {
		t.Fatalf("ShouldBidBasedOnUsage small: %+v, %v", fits, err)
	}
	huge, err := e.exec.ShouldBidBasedOnUsage(ctx, job("native"), models.Resources{CPU: 100000})
	if err != nil || huge.ShouldBid || !strings.Contains(huge.Reason, "not have enough CPU") {
		t.Fatalf("ShouldBidBasedOnUsage huge: %+v, %v", huge, err)
	}
	if ok, err := e.exec.IsInstalled(ctx); !ok || err != nil {
		t.Fatalf("IsInstalled: %v %v", ok, err)
	}
}
