package pluginhost

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// hostVersion is what this host tells plugins in initialize.
const hostVersion = "0.1.0"

// supervision is how a plugin is restarted and stopped (the Rust host's Supervision).
type supervision struct {
	backoffInitial time.Duration
	backoffMax     time.Duration
	// This many crashes within window mark the plugin unhealthy for unhealthyFor.
	maxCrashes   int
	window       time.Duration
	unhealthyFor time.Duration
	handshake    time.Duration
	grace        time.Duration
	// callTimeout bounds the calls a plugin answers promptly; one that misses it is killed
	// and restarted on next use. Waits, runs and log follows last as long as the job.
	callTimeout time.Duration
}

func defaultSupervision(callTimeout time.Duration) supervision {
	if callTimeout <= 0 {
		callTimeout = 30 * time.Second
	}
	return supervision{
		backoffInitial: 100 * time.Millisecond, backoffMax: 5 * time.Second,
		maxCrashes: 5, window: time.Minute, unhealthyFor: 30 * time.Second,
		handshake: 30 * time.Second, grace: 2 * time.Second, callTimeout: callTimeout,
	}
}

func isPrompt(method string) bool {
	switch method {
	case "executor_isInstalled", "executor_shouldBid", "executor_shouldBidBasedOnUsage",
		"executor_start", "executor_cancel", "executor_list", "executor_stats", "executor_subscribeLogs":
		return true
	}
	return false
}

type retry int

const (
	// retryNever: the call may have had an effect; never repeat it.
	retryNever retry = iota
	// retryLimited: safe to repeat; a few tries.
	retryLimited
	// retryUntilUnhealthy: safe to repeat for as long as the plugin can be restarted (waits).
	retryUntilUnhealthy
)

// plugin is one engine's plugin binary, started on first use and restarted when it dies.
type plugin struct {
	engine string // the engine it must declare; "" while probing
	path   string
	pin    string
	config map[string]interface{}
	sup    supervision
	logf   func(string, ...interface{})

	mu             sync.Mutex // held while a plugin is launched
	cur            *conn
	generation     uint64
	crashes        []time.Time
	lastFailure    string
	lastStderr     []string
	unhealthySince time.Time
	closed         bool
}

func (p *plugin) name() string {
	if p.engine != "" {
		return p.engine
	}
	return p.path
}

// connection returns the live connection, starting (or restarting) the plugin when needed.
func (p *plugin) connection() (*conn, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for {
		if p.closed {
			return nil, ErrShuttingDown
		}
		if p.cur != nil {
			if p.cur.alive() {
				return p.cur, nil
			}
			p.recordDeath(p.cur, "exited")
		}
		now := time.Now()
		for len(p.crashes) > 0 && now.Sub(p.crashes[0]) > p.sup.window {
			p.crashes = p.crashes[1:]
		}
		if !p.unhealthySince.IsZero() {
			if now.Sub(p.unhealthySince) < p.sup.unhealthyFor {
				return nil, p.unhealthy()
			}
			p.unhealthySince = time.Time{}
			p.crashes = nil
		}
		if len(p.crashes) >= p.sup.maxCrashes {
			p.unhealthySince = now
			p.logf("plugin for engine %s marked unhealthy after %d crashes", p.name(), len(p.crashes))
			return nil, p.unhealthy()
		}
		if n := len(p.crashes); n > 0 {
			backoff := p.sup.backoffInitial << uint(minInt(n-1, 16))
			if backoff > p.sup.backoffMax || backoff <= 0 {
				backoff = p.sup.backoffMax
			}
			time.Sleep(backoff)
		}
		c, err := p.launch(p.generation + 1)
		if err == nil {
			p.generation = c.generation
			p.cur = c
			return c, nil
		}
		var down *DownError
		if errors.As(err, &down) && down.Kind == "launch" {
			// It may start next time; counted as a crash.
			p.logf("plugin for engine %s failed to start: %s", p.name(), down.Detail)
			p.crashes = append(p.crashes, time.Now())
			p.lastFailure = "failed to start: " + down.Detail
			p.lastStderr = down.Stderr
			continue
		}
		// A binary that fails its pin or its trust check, that cannot be executed, or that
		// refuses its configuration will not get better.
		return nil, err
	}
}

func minInt(a, b int) int {
	if a < b {
		return a
	}
	return b
}

func (p *plugin) unhealthy() error {
	return &DownError{Engine: p.name(), Kind: "unhealthy", Stderr: p.lastStderr,
		Detail: fmt.Sprintf("crashed %d times within %v (last: %s); it is retried after %v", len(p.crashes), p.sup.window, p.lastFailure, p.sup.unhealthyFor)}
}

// recordDeath forgets a dead connection; p.mu is held.
func (p *plugin) recordDeath(c *conn, how string) {
	p.cur = nil
	// The exit status arrives a moment after the pipes close.
	status := c.waitExit(time.Second)
	if status == "" {
		status = "still running; killed"
	}
	c.kill()
	p.crashes = append(p.crashes, time.Now())
	p.lastFailure = how + ": " + status
	p.lastStderr = c.stderr.lines()
	p.logf("plugin for engine %s (pid %d) died (%s); it will be restarted on next use", p.name(), c.pid, status)
}

// markDead: a call on connection generation found the plugin gone.
func (p *plugin) markDead(generation uint64, how string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cur != nil && p.cur.generation == generation {
		p.recordDeath(p.cur, how)
	}
}

func (p *plugin) launch(generation uint64) (*conn, error) {
	program, err := filepath.Abs(p.path)
	if err != nil {
		return nil, &TrustError{Path: p.path, Why: fmt.Sprintf("cannot open plugin %s: %v", p.path, err)}
	}
	exe := program
	var memfd *os.File
	if p.pin != "" {
		f, _, err := sealedCopy(program, p.pin)
		if err != nil {
			return nil, err
		}
		memfd = f
		exe = fmt.Sprintf("/proc/self/fd/%d", f.Fd())
	} else {
		// Unpinned, the file runs from its path; it must at least be one nobody but root or
		// this user can change.
		f, err := openTrusted(program)
		if err != nil {
			return nil, err
		}
		f.Close()
	}
	c, err := spawn(program, exe, p.logf)
	if memfd != nil {
		// The child holds the image now; the descriptor is close-on-exec.
		memfd.Close()
	}
	if err != nil {
		return nil, err
	}
	c.generation = generation
	failed := func(detail string) error {
		c.kill()
		c.waitExit(time.Second)
		return &DownError{Engine: p.path, Kind: "launch", Detail: detail, Stderr: c.stderr.lines()}
	}
	params := initializeParams{
		ProtocolVersions: []string{protocolVersion},
		Host:             hostInfo{Name: "executor-host-go", Version: hostVersion},
		Config:           p.config,
	}
	raw, err := c.call(context.Background(), "initialize", params, p.sup.handshake, nil)
	if err != nil {
		var rerr *rpcError
		var lost *errLost
		switch {
		case errors.As(err, &rerr):
			// The plugin refuses this configuration; starting it again would be refused the
			// same way.
			c.kill()
			c.waitExit(time.Second)
			return nil, &DownError{Engine: p.path, Kind: "refused", Detail: rerr.Message}
		case errors.Is(err, errTimeout):
			return nil, failed(fmt.Sprintf("initialize did not answer within %v", p.sup.handshake))
		case errors.As(err, &lost):
			return nil, failed("initialize failed: " + lost.detail)
		default:
			return nil, failed("initialize failed: " + err.Error())
		}
	}
	if err := json.Unmarshal(raw, &c.init); err != nil {
		return nil, failed(fmt.Sprintf("undecodable initialize answer: %v", err))
	}
	if p.engine != "" && sanitizeKey(c.init.Engine) != sanitizeKey(p.engine) {
		return nil, failed(fmt.Sprintf("it declares engine %q, but it is configured for engine %q", c.init.Engine, p.engine))
	}
	return c, nil
}

// call makes one call on the live plugin, restarting it and re-issuing the call as r allows.
// onResult, when set, gives a hook that runs on the reader goroutine with the result.
func (p *plugin) call(ctx context.Context, method string, params interface{}, r retry, onResult func(*conn) func(json.RawMessage)) (json.RawMessage, *conn, error) {
	for tries := 1; ; tries++ {
		if err := ctx.Err(); err != nil {
			return nil, nil, err
		}
		c, err := p.connection()
		if err != nil {
			return nil, nil, err
		}
		var limit time.Duration
		if isPrompt(method) {
			limit = p.sup.callTimeout
		}
		var hook func(json.RawMessage)
		if onResult != nil {
			hook = onResult(c)
		}
		raw, err := c.call(ctx, method, params, limit, hook)
		if err == nil {
			return raw, c, nil
		}
		var rerr *rpcError
		var lost *errLost
		switch {
		case errors.As(err, &rerr):
			return nil, c, rerr.toError(p.name(), method)
		case errors.Is(err, errTimeout):
			p.logf("plugin for engine %s did not answer %s within %v; restarting it", p.name(), method, limit)
			p.markDead(c.generation, "did not answer "+method)
			return nil, c, &DownError{Engine: p.name(), Kind: "timeout", Method: method, Limit: limit}
		case errors.As(err, &lost):
			p.markDead(c.generation, "died during "+method)
			again := r == retryUntilUnhealthy || (r == retryLimited && tries < 3)
			if !again {
				return nil, c, &DownError{Engine: p.name(), Kind: "interrupted", Method: method, Detail: lost.Error()}
			}
			p.logf("plugin for engine %s died during %s; re-issuing it on a new plugin", p.name(), method)
		default:
			return nil, c, err
		}
	}
}

// shutdown asks the plugin to exit (executions keep running under their monitors), waits a
// little, then kills it. Later calls fail with ErrShuttingDown.
func (p *plugin) shutdown() {
	p.mu.Lock()
	p.closed = true
	c := p.cur
	p.cur = nil
	p.mu.Unlock()
	if c == nil {
		return
	}
	// Bounded, the write included: a plugin that stops reading is killed.
	_, _ = c.call(context.Background(), "shutdown", map[string]bool{"cancelRunning": false}, p.sup.grace, nil)
	if c.waitExit(p.sup.grace) == "" {
		p.logf("plugin for engine %s did not exit after shutdown; killing it", p.name())
		c.kill()
		c.waitExit(p.sup.grace)
	}
}

// sanitizeKey is Bacalhau's: trimmed and lower-cased.
func sanitizeKey(key string) string {
	return strings.ToLower(strings.TrimSpace(key))
}
