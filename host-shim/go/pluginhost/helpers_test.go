package pluginhost

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"executorplugins.example/hostshim/executor"
	"executorplugins.example/hostshim/models"
)

// The test binary doubles as a second plugin: copied as executor-second and started with the
// cookie, it serves engine "second" (executor-native's engine is fixed).
func TestMain(m *testing.M) {
	if filepath.Base(os.Args[0]) == "executor-second" && os.Getenv(cookieKey) == cookieValue {
		os.Exit(fakePlugin())
	}
	os.Exit(m.Run())
}

func fakePlugin() int {
	in := bufio.NewScanner(os.Stdin)
	in.Buffer(make([]byte, 1<<20), maxMessage)
	for in.Scan() {
		var req struct {
			ID     json.RawMessage `json:"id"`
			Method string          `json:"method"`
		}
		if json.Unmarshal(in.Bytes(), &req) != nil || len(req.ID) == 0 {
			continue
		}
		var result interface{}
		switch req.Method {
		case "initialize":
			// Lines a host must skip, not fail on; and a stderr line far over the bound.
			fmt.Println("not json at all")
			fmt.Println(`{"foo":1}`)
			fmt.Println(`[{"jsonrpc":"2.0","id":1,"result":true}]`)
			fmt.Println(`{"jsonrpc":"2.0","id":77,"method":"host_doSomething","params":[]}`)
			fmt.Println(`{"jsonrpc":"2.0","id":9999,"result":true}`)
			fmt.Println(`{"jsonrpc":"2.0","id":1,"result":"` + strings.Repeat("y", maxMessage) + `"}`)
			fmt.Fprintln(os.Stderr, strings.Repeat("x", 100<<10))
			result = map[string]interface{}{"protocolVersion": "1", "engine": "second",
				"plugin": map[string]string{"name": "executor-second", "version": "0"}, "capabilities": map[string]interface{}{}}
		case "executor_isInstalled":
			result = true
		case "executor_cancel":
			// Never answered: the host's call timeout must fire.
			continue
		case "shutdown":
			fmt.Printf(`{"jsonrpc":"2.0","id":%s,"result":null}`+"\n", req.ID)
			return 0
		default:
			fmt.Printf(`{"jsonrpc":"2.0","id":%s,"error":{"code":-32601,"message":"Method not found: %s"}}`+"\n", req.ID, req.Method)
			continue
		}
		out, _ := json.Marshal(map[string]interface{}{"jsonrpc": "2.0", "id": req.ID, "result": result})
		fmt.Printf("%s\n", out)
	}
	return 0
}

// nativeBinary is the executor-native cargo built: $EXECUTOR_NATIVE, else target/debug of the
// workspace this module sits in.
// secondPlugin copies the test binary into dir as executor-second.
func secondPlugin(t *testing.T, dir string) string {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(dir, "executor-second")
	in, err := os.Open(self)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_EXCL, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
	return dst
}

func nativeBinary(t *testing.T) string {
	t.Helper()
	path := os.Getenv("EXECUTOR_NATIVE")
	if path == "" {
		abs, err := filepath.Abs("../../../target/debug/executor-native")
		if err != nil {
			t.Fatal(err)
		}
		path = abs
	}
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("executor-native not found at %s (run cargo build --workspace first, or set EXECUTOR_NATIVE): %v", path, err)
	}
	return path
}

// place puts a file into dir under name: a hard link where possible, else a copy.
func place(t *testing.T, src, dir, name string) string {
	t.Helper()
	dst := filepath.Join(dir, name)
	if os.Link(src, dst) == nil {
		return dst
	}
	in, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_EXCL, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
	return dst
}

type env struct {
	t       *testing.T
	dir     string // the plugin directory
	native  string // executor-native in it
	state   string
	scratch string
	prov    *Provider
	exec    executor.Executor
}

// newEnv discovers executor-native in a directory of its own, with a state root of its own.
func newEnv(t *testing.T, tweak func(*Options)) *env {
	t.Helper()
	e := &env{t: t, dir: t.TempDir(), state: t.TempDir(), scratch: t.TempDir()}
	e.native = place(t, nativeBinary(t), e.dir, "executor-native")
	opts := Options{Dirs: []string{e.dir}, StateRoot: e.state, Logger: quietLogger(t)}
	if tweak != nil {
		tweak(&opts)
	}
	prov, err := Discover(context.Background(), opts)
	if err != nil {
		t.Fatalf("Discover: %v", err)
	}
	e.prov = prov
	t.Cleanup(func() { prov.Close() })
	if tweak == nil {
		ex, err := prov.Get(context.Background(), "native")
		if err != nil {
			t.Fatalf("Get(native): %v", err)
		}
		e.exec = ex
	}
	return e
}

// request is a native job running sh -c script on the host's network.
func (e *env) request(id, script string) *executor.RunCommandRequest {
	results := filepath.Join(e.scratch, id)
	return &executor.RunCommandRequest{
		JobID:       "j-" + id,
		ExecutionID: id,
		Network:     &models.NetworkConfig{Type: models.NetworkHost},
		ResultsDir:  results,
		EngineParams: &models.SpecConfig{Type: "native", Params: map[string]interface{}{
			"Entrypoint": []string{"/bin/sh", "-c", script},
		}},
		OutputLimits: executor.OutputLimits{
			MaxStdoutFileLength: executor.GB, MaxStdoutReturnLength: 2 * executor.KB,
			MaxStderrFileLength: executor.GB, MaxStderrReturnLength: 2 * executor.KB,
		},
	}
}

// plugin is the supervised plugin behind the native executor.
func (e *env) plugin() *plugin {
	return e.exec.(*pluginExecutor).p
}

func (e *env) pid() int {
	p := e.plugin()
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cur == nil {
		return 0
	}
	return p.cur.pid
}

func (e *env) wait(id string, limit time.Duration) *models.RunCommandResult {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	res, errs := e.exec.Wait(ctx, id)
	select {
	case r := <-res:
		return r
	case err := <-errs:
		e.t.Fatalf("Wait(%s): %v", id, err)
	}
	return nil
}

// demux splits Docker stdcopy frames into stdout and stderr, failing on a cut frame.
func demux(t *testing.T, b []byte) (string, string) {
	t.Helper()
	var out, errs bytes.Buffer
	for len(b) > 0 {
		if len(b) < 8 {
			t.Fatalf("stdcopy stream ends inside a header: %q", b)
		}
		size := int(binary.BigEndian.Uint32(b[4:8]))
		if b[1] != 0 || b[2] != 0 || b[3] != 0 || len(b) < 8+size {
			t.Fatalf("bad stdcopy frame: % x", b[:8])
		}
		switch b[0] {
		case 1:
			out.Write(b[8 : 8+size])
		case 2:
			errs.Write(b[8 : 8+size])
		default:
			t.Fatalf("unknown stdcopy stream %d", b[0])
		}
		b = b[8+size:]
	}
	return out.String(), errs.String()
}

// readAll reads a log stream to its end within limit.
func readAll(t *testing.T, r io.Reader, limit time.Duration) []byte {
	t.Helper()
	done := make(chan struct{})
	var b []byte
	var err error
	go func() {
		b, err = io.ReadAll(r)
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(limit):
		t.Fatalf("log stream did not end within %v", limit)
	}
	if err != nil {
		t.Fatalf("reading the log stream: %v", err)
	}
	return b
}

// testWriter forwards the host's log to the test's until the test ends (plugins' stderr
// drains may still write a moment after).
type testWriter struct {
	mu   *sync.Mutex
	t    *testing.T
	done *bool
}

func (w testWriter) Write(b []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !*w.done {
		w.t.Log(strings.TrimRight(string(b), "\n"))
	}
	return len(b), nil
}

func quietLogger(t *testing.T) *log.Logger {
	w := testWriter{mu: &sync.Mutex{}, t: t, done: new(bool)}
	t.Cleanup(func() {
		w.mu.Lock()
		*w.done = true
		w.mu.Unlock()
	})
	return log.New(w, "", log.Lmicroseconds)
}
