package pluginhost

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"time"
)

const (
	cookieKey   = "EXECUTOR_PLUGIN_COOKIE"
	cookieValue = "executor-plugin"
	// pluginPATH is fixed, whatever the host's is (a host's PATH may name directories its
	// user can write).
	pluginPATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	// maxStderrLine is the longest plugin stderr line kept; the rest is counted and dropped.
	maxStderrLine = 16 << 10
	// stderrKeep is how many last stderr lines travel in errors.
	stderrKeep = 20
	// subscriptionBudget is how many bytes of log events a subscription holds for a slow
	// reader; past it the subscription is dropped and resumed from the last position read.
	subscriptionBudget = 8 << 20
	// maxAbandoned bounds the ids of calls given up on that are remembered.
	maxAbandoned = 1 << 16
)

// pluginEnvPassed: what a plugin's environment takes from the host's, when set. Nothing else
// passes (no LD_PRELOAD, LD_LIBRARY_PATH, credentials): see PROTOCOL.md section 3.
var pluginEnvPassed = []string{"EXECUTOR_PLUGIN_LOG", "EXECUTOR_PLUGIN_TIMING_LOG", "RUST_BACKTRACE", "HOME", "XDG_STATE_HOME", "TMPDIR"}

// errLost is what a call gets when the plugin's protocol output closed.
type errLost struct {
	detail string
	tail   []string
}

func (e *errLost) Error() string {
	if len(e.tail) == 0 {
		return e.detail
	}
	return e.detail + "; last stderr lines:\n" + strings.Join(e.tail, "\n")
}

type response struct {
	result json.RawMessage
	err    *rpcError
	lost   error
}

type pendingCall struct {
	ch chan response
	// onResult runs on the reader goroutine before any later line is read: a subscription is
	// registered before its first notification can arrive.
	onResult func(json.RawMessage)
}

// conn is one plugin process and the JSON-RPC session over its stdin/stdout.
type conn struct {
	name       string
	generation uint64
	cmd        *exec.Cmd
	pid        int
	logf       func(format string, args ...interface{})

	wmu   sync.Mutex
	stdin *os.File

	mu      sync.Mutex
	nextID  uint64
	pending map[uint64]*pendingCall
	// abandoned: calls given up on (a cancelled ctx); their late answers are dropped quietly.
	abandoned map[uint64]struct{}
	subs      map[uint64]*logSub
	lostErr   error

	done       chan struct{} // the protocol output closed; every call failed
	exited     chan struct{} // the process was reaped
	exitStatus string
	stderr     *stderrTail
	init       InitializeResult
}

// spawn starts program (argv[0] = name) with a clean environment and wires its pipes.
func spawn(name, program string, logf func(string, ...interface{})) (*conn, error) {
	env := []string{"PATH=" + pluginPATH}
	for _, k := range pluginEnvPassed {
		if v, ok := os.LookupEnv(k); ok {
			env = append(env, k+"="+v)
		}
	}
	env = append(env, cookieKey+"="+cookieValue)
	inR, inW, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("cannot start plugin %s: %w", name, err)
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		inR.Close()
		inW.Close()
		return nil, fmt.Errorf("cannot start plugin %s: %w", name, err)
	}
	errR, errW, err := os.Pipe()
	if err != nil {
		inR.Close()
		inW.Close()
		outR.Close()
		outW.Close()
		return nil, fmt.Errorf("cannot start plugin %s: %w", name, err)
	}
	cmd := &exec.Cmd{Path: program, Args: []string{name}, Env: env, Stdin: inR, Stdout: outW, Stderr: errW}
	startErr := cmd.Start()
	inR.Close()
	outW.Close()
	errW.Close()
	if startErr != nil {
		inW.Close()
		outR.Close()
		errR.Close()
		return nil, fmt.Errorf("cannot start plugin %s: %w", name, startErr)
	}
	c := &conn{
		name: name, cmd: cmd, pid: cmd.Process.Pid, logf: logf, stdin: inW,
		pending: map[uint64]*pendingCall{}, abandoned: map[uint64]struct{}{}, subs: map[uint64]*logSub{},
		done: make(chan struct{}), exited: make(chan struct{}), stderr: &stderrTail{},
	}
	go func() {
		err := cmd.Wait()
		status := "exit status 0"
		if err != nil {
			status = err.Error()
		}
		c.mu.Lock()
		c.exitStatus = status
		c.mu.Unlock()
		close(c.exited)
	}()
	stderrDone := make(chan struct{})
	go func() {
		c.drainStderr(errR)
		close(stderrDone)
	}()
	go c.readLoop(outR, stderrDone)
	return c, nil
}

func (c *conn) alive() bool {
	select {
	case <-c.done:
		return false
	case <-c.exited:
		return false
	default:
		return true
	}
}

// kill sends SIGKILL unless the process was already reaped (so a reused pid is never hit).
func (c *conn) kill() {
	select {
	case <-c.exited:
	default:
		_ = c.cmd.Process.Kill()
	}
}

// waitExit waits up to limit for the process to be reaped; its status, or "" if it was not.
func (c *conn) waitExit(limit time.Duration) string {
	t := time.NewTimer(limit)
	defer t.Stop()
	select {
	case <-c.exited:
		c.mu.Lock()
		defer c.mu.Unlock()
		return c.exitStatus
	case <-t.C:
		return ""
	}
}

// call sends one request and waits for its answer. limit > 0 bounds the whole call (the write
// included): past it the plugin is killed and errTimeout returned. A cancelled ctx abandons
// the call (a late answer is skipped as one to an id no longer asked).
func (c *conn) call(ctx context.Context, method string, params interface{}, limit time.Duration, onResult func(json.RawMessage)) (json.RawMessage, error) {
	p, err := json.Marshal(params)
	if err != nil {
		return nil, fmt.Errorf("encoding %s params: %w", method, err)
	}
	pc := &pendingCall{ch: make(chan response, 1), onResult: onResult}
	c.mu.Lock()
	if c.lostErr != nil {
		err := c.lostErr
		c.mu.Unlock()
		return nil, err
	}
	c.nextID++
	id := c.nextID
	c.pending[id] = pc
	c.mu.Unlock()
	forget := func() {
		c.mu.Lock()
		if _, ok := c.pending[id]; ok {
			delete(c.pending, id)
			if len(c.abandoned) >= maxAbandoned {
				c.abandoned = map[uint64]struct{}{}
			}
			c.abandoned[id] = struct{}{}
		}
		c.mu.Unlock()
	}
	var timedOut chan struct{}
	if limit > 0 {
		timedOut = make(chan struct{})
		t := time.AfterFunc(limit, func() {
			close(timedOut)
			c.kill()
		})
		defer t.Stop()
	}
	line := fmt.Sprintf(`{"jsonrpc":"2.0","id":%d,"method":%q,"params":%s}`+"\n", id, method, p)
	if len(line) > maxMessage+1 {
		forget()
		return nil, fmt.Errorf("the %s request is %d bytes, over the protocol's limit of %d", method, len(line)-1, maxMessage)
	}
	c.wmu.Lock()
	_, werr := c.stdin.Write([]byte(line))
	c.wmu.Unlock()
	if werr != nil {
		forget()
		select {
		case <-timedOut:
			return nil, errTimeout
		default:
		}
		return nil, &errLost{detail: fmt.Sprintf("writing to plugin %s failed: %v", c.name, werr)}
	}
	select {
	case r := <-pc.ch:
		if r.lost != nil {
			select {
			case <-timedOut:
				return nil, errTimeout
			default:
			}
			return nil, r.lost
		}
		if r.err != nil {
			return nil, r.err
		}
		return r.result, nil
	case <-timedOut:
		forget()
		return nil, errTimeout
	case <-ctx.Done():
		forget()
		return nil, ctx.Err()
	}
}

var errTimeout = errors.New("call timed out")

// notify sends a request whose answer nobody waits for (an unsubscribe).
func (c *conn) notifyCall(method string, params interface{}) {
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, _ = c.call(ctx, method, params, 0, nil)
	}()
}

// readLoop reads the plugin's protocol output until it closes. Lines that are no message for
// this host (not JSON, no JSON-RPC message, a request, a response to an id never asked or
// already answered, an oversized line) are logged and skipped, as PROTOCOL.md section 2 says.
func (c *conn) readLoop(out *os.File, stderrDone chan struct{}) {
	r := bufio.NewReaderSize(out, 1<<20)
	var line []byte
	for {
		chunk, err := r.ReadSlice('\n')
		if len(line)+len(chunk) > maxMessage+2 {
			// Discard up to the newline without keeping it.
			n := len(line) + len(chunk)
			line = line[:0]
			for err == bufio.ErrBufferFull {
				chunk, err = r.ReadSlice('\n')
				n += len(chunk)
			}
			c.logf("plugin %s: skipped an oversized message of %d bytes on its protocol output", c.name, n)
			if err != nil {
				break
			}
			continue
		}
		if err == bufio.ErrBufferFull {
			line = append(line, chunk...)
			continue
		}
		if len(line) > 0 {
			line = append(line, chunk...)
			chunk = line
		}
		if len(chunk) > 0 && err == nil {
			c.handle(bytes.TrimRight(chunk, "\r\n"))
		}
		line = line[:0]
		if err != nil {
			break
		}
	}
	out.Close()
	// The pipe usually closes a moment before the exit status is known.
	status := c.waitExit(2 * time.Second)
	if status == "" {
		status = "still running"
	}
	select {
	case <-stderrDone:
	case <-time.After(200 * time.Millisecond):
	}
	lost := &errLost{detail: fmt.Sprintf("plugin %s closed its protocol output (%s)", c.name, status), tail: c.stderr.lines()}
	c.mu.Lock()
	c.lostErr = lost
	pending := c.pending
	c.pending = map[uint64]*pendingCall{}
	subs := c.subs
	c.subs = map[uint64]*logSub{}
	c.mu.Unlock()
	for _, pc := range pending {
		pc.ch <- response{lost: lost}
	}
	for _, s := range subs {
		s.finish(subLost, "")
	}
	close(c.done)
}

func (c *conn) skip(line []byte, why string) {
	shown := line
	if len(shown) > 200 {
		shown = shown[:200]
	}
	c.logf("plugin %s: skipped a line on its protocol output (%s): %s", c.name, why, strconv.Quote(string(shown)))
}

func (c *conn) handle(line []byte) {
	trimmed := bytes.TrimSpace(line)
	if len(trimmed) == 0 {
		return
	}
	if trimmed[0] != '{' {
		c.skip(line, "not a JSON-RPC message object")
		return
	}
	var msg incoming
	if err := json.Unmarshal(trimmed, &msg); err != nil {
		c.skip(line, "not JSON: "+err.Error())
		return
	}
	hasID := len(msg.ID) > 0 && string(msg.ID) != "null"
	switch {
	case msg.Method != nil && hasID:
		c.skip(line, "a request; a plugin never sends requests")
	case msg.Method != nil:
		if *msg.Method == "executor_logs" {
			c.handleLog(msg.Params, line)
		}
	case (len(msg.Result) > 0) == (msg.Error != nil):
		c.skip(line, "neither a notification nor a response with exactly one of result or error")
	case !hasID:
		c.skip(line, "a response to no request")
	default:
		id, err := strconv.ParseUint(string(msg.ID), 10, 64)
		c.mu.Lock()
		pc, ok := c.pending[id]
		if ok && err == nil {
			delete(c.pending, id)
		}
		_, late := c.abandoned[id]
		delete(c.abandoned, id)
		c.mu.Unlock()
		if late && err == nil {
			return
		}
		if err != nil || !ok {
			c.skip(line, "a response to an id that was never asked or is answered")
			return
		}
		if msg.Error != nil {
			pc.ch <- response{err: msg.Error}
			return
		}
		if pc.onResult != nil {
			pc.onResult(msg.Result)
		}
		pc.ch <- response{result: msg.Result}
	}
}

func (c *conn) handleLog(params json.RawMessage, line []byte) {
	var n logNotification
	if err := json.Unmarshal(params, &n); err != nil {
		c.skip(line, "an undecodable log notification: "+err.Error())
		return
	}
	id, err := strconv.ParseUint(n.Subscription.String(), 10, 64)
	if err != nil {
		c.skip(line, "a log notification for no subscription")
		return
	}
	c.mu.Lock()
	s := c.subs[id]
	c.mu.Unlock()
	if s == nil {
		// Unsubscribed, or already ended: nobody reads it.
		return
	}
	var state subState
	var detail string
	switch {
	case n.Result != nil && n.Result.Type == "data":
		state = s.push(*n.Result)
	case n.Result != nil && n.Result.Type == "end":
		state = s.finish(subEnded, "")
	case len(n.Error) > 0:
		var text string
		if json.Unmarshal(n.Error, &text) != nil {
			text = string(n.Error)
		}
		detail = text
		state = s.finish(subFailed, text)
	default:
		c.skip(line, "a log notification without result or error")
		return
	}
	if state != subOpen {
		c.mu.Lock()
		delete(c.subs, id)
		c.mu.Unlock()
		if state == subLagged {
			// The reader resumes from its last position on a new subscription.
			c.notifyCall("executor_unsubscribeLogs", []uint64{id})
		}
		if detail != "" {
			c.logf("plugin %s: log subscription %d ended with an error: %s", c.name, id, detail)
		}
	}
}

// register makes a subscription the reader loop delivers to.
func (c *conn) register(id uint64, s *logSub) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.lostErr != nil {
		s.finish(subLost, "")
		return
	}
	c.subs[id] = s
}

// unsubscribe stops delivery and tells the plugin.
func (c *conn) unsubscribe(id uint64) {
	c.mu.Lock()
	_, open := c.subs[id]
	delete(c.subs, id)
	c.mu.Unlock()
	if open && c.alive() {
		c.notifyCall("executor_unsubscribeLogs", []uint64{id})
	}
}

// subState is where a subscription stands.
type subState int

const (
	subOpen   subState = iota
	subEnded           // the end event arrived
	subLagged          // the reader fell behind by more than the budget; resume
	subLost            // the plugin went away; resume on the next one
	subFailed          // the plugin ended it with an error
)

// logSub queues a subscription's events for its reader, bounded in bytes.
type logSub struct {
	mu     sync.Mutex
	events []logEvent
	bytes  int
	peak   int // the most bytes queued at once
	state  subState
	detail string
	notify chan struct{}
}

func newLogSub() *logSub { return &logSub{notify: make(chan struct{}, 1)} }

func (s *logSub) wake() {
	select {
	case s.notify <- struct{}{}:
	default:
	}
}

func (s *logSub) push(ev logEvent) subState {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.state != subOpen {
		return s.state
	}
	size := len(ev.Data) + len(ev.Timestamp)
	if len(s.events) > 0 && s.bytes+size > subscriptionBudget {
		s.state = subLagged
	} else {
		s.events = append(s.events, ev)
		s.bytes += size
		if s.bytes > s.peak {
			s.peak = s.bytes
		}
	}
	s.wake()
	return s.state
}

func (s *logSub) finish(state subState, detail string) subState {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.state == subOpen {
		s.state, s.detail = state, detail
	}
	s.wake()
	return s.state
}

// take returns the next event, or the state once the queue is empty.
func (s *logSub) take() (logEvent, bool, subState, string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.events) > 0 {
		ev := s.events[0]
		s.events[0] = logEvent{}
		s.events = s.events[1:]
		s.bytes -= len(ev.Data) + len(ev.Timestamp)
		return ev, true, s.state, ""
	}
	return logEvent{}, false, s.state, s.detail
}

// stderrTail keeps the plugin's last stderr lines for error messages.
type stderrTail struct {
	mu sync.Mutex
	q  []string
}

func (t *stderrTail) push(line string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.q) == stderrKeep {
		t.q = t.q[1:]
	}
	t.q = append(t.q, line)
}

func (t *stderrTail) lines() []string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return append([]string(nil), t.q...)
}

// drainStderr re-emits the plugin's diagnostics in the host's log, read as bytes in bounded
// lines: a line without end, or bytes that are not UTF-8, cost no more memory than one line
// and never stop the drain (the plugin would block on a full pipe).
func (c *conn) drainStderr(r io.ReadCloser) {
	defer r.Close()
	buf := make([]byte, 64<<10)
	var kept []byte
	dropped := 0
	emit := func() {
		if len(kept) > 0 && kept[len(kept)-1] == '\r' && dropped == 0 {
			kept = kept[:len(kept)-1]
		}
		text := strings.ToValidUTF8(string(kept), "\uFFFD")
		if dropped > 0 {
			text += fmt.Sprintf(" [line truncated: %d more bytes dropped]", dropped)
		}
		c.stderr.push(text)
		c.logf("plugin %s: %s", c.name, describeStderr(text))
		kept, dropped = kept[:0], 0
	}
	add := func(b []byte) {
		room := maxStderrLine - len(kept)
		if room < 0 {
			room = 0
		}
		if len(b) > room {
			dropped += len(b) - room
			b = b[:room]
		}
		kept = append(kept, b...)
	}
	for {
		n, err := r.Read(buf)
		chunk := buf[:n]
		for {
			i := bytes.IndexByte(chunk, '\n')
			if i < 0 {
				break
			}
			add(chunk[:i])
			emit()
			chunk = chunk[i+1:]
		}
		add(chunk)
		if err != nil {
			break
		}
	}
	if len(kept) > 0 || dropped > 0 {
		emit()
	}
}

// describeStderr renders one of the plugin's JSON log lines as "LEVEL message k=v ...";
// anything else as it is. Control characters are escaped either way.
func describeStderr(line string) string {
	var obj struct {
		Level  string                     `json:"level"`
		Fields map[string]json.RawMessage `json:"fields"`
	}
	if json.Unmarshal([]byte(line), &obj) != nil || obj.Fields == nil {
		return escape(line)
	}
	var msg string
	_ = json.Unmarshal(obj.Fields["message"], &msg)
	parts := []string{obj.Level, msg}
	for k, v := range obj.Fields {
		if k != "message" {
			parts = append(parts, k+"="+string(v))
		}
	}
	return escape(strings.Join(parts, " "))
}

func escape(s string) string {
	q := strconv.Quote(s)
	return q[1 : len(q)-1]
}
