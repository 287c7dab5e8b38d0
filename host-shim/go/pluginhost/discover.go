package pluginhost

import (
	"context"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"executorplugins.example/hostshim/executor"
)

// Options say where plugins are and how they run.
type Options struct {
	// Dirs are searched for plugins: executable files named executor-<something> (not
	// executor-host, no dot in the name). Each directory must be writable only by root or the
	// user running the host. Empty: the directory of the running program.
	Dirs []string
	// StateRoot, when set, gives each engine the state directory StateRoot/<engine> (unless its
	// Config sets stateDir). Unset, a plugin uses its own default (PROTOCOL.md section 5.2).
	StateRoot string
	// Pins are sha256 digests (hex) by plugin path. With any pin set, only pinned plugins are
	// executed, and a pin naming no plugin found is an error. A pinned plugin runs from a
	// sealed in-memory copy of the bytes that were hashed.
	Pins map[string]string
	// Disabled engines are never executed nor offered (Bacalhau's Engines.Disabled).
	Disabled []string
	// Config is each engine's initialize.config by engine name: a map[string]any of the keys
	// in PROTOCOL.md section 5.2 (stateDir, allowListedLocalPaths, jobUidRange, ...).
	Config map[string]any
	// CallTimeout bounds the calls a plugin answers at once (bids, start, cancel, a log
	// subscription's acknowledgement); a plugin that misses it is killed and restarted on next
	// use. Zero: 30 seconds. Waits, runs and log follows last as long as their job.
	CallTimeout time.Duration
	// Logger receives the plugins' stderr lines and the supervisor's notes; nil: log's
	// standard logger.
	Logger *log.Logger
}

// DiscoveredPlugin is one candidate file and what probing it found.
type DiscoveredPlugin struct {
	Path string
	// Engine is what it declared in initialize; empty when it was not started or failed.
	Engine string
	// Info is its initialize answer.
	Info *InitializeResult
	// Error says why it is not used.
	Error    string
	Disabled bool
}

// Provider is Bacalhau's ExecutorProvider over the discovered plugins: one plugin process per
// engine, started on first use, restarted when it dies.
type Provider struct {
	mu           sync.Mutex
	entries      map[string]*entry
	disabled     map[string]bool
	plugins      []DiscoveredPlugin
	reprobeAfter time.Duration
}

type entry struct {
	executor  *pluginExecutor
	checked   bool
	installed bool
	at        time.Time
}

var _ executor.ExecutorProvider = (*Provider)(nil)

func logfOf(opts *Options) func(string, ...interface{}) {
	if opts.Logger != nil {
		return opts.Logger.Printf
	}
	return log.Printf
}

func isCandidateName(name string) bool {
	return strings.HasPrefix(name, "executor-") && name != "executor-host" && !strings.Contains(name, ".")
}

// engineFromName is the engine a file's name promises: executor-<engine>.
func engineFromName(path string) string {
	return sanitizeKey(strings.TrimPrefix(filepath.Base(path), "executor-"))
}

func canonical(path string) string {
	abs, err := filepath.Abs(path)
	if err != nil {
		return path
	}
	if real, err := filepath.EvalSymlinks(abs); err == nil {
		return real
	}
	return abs
}

func candidates(opts *Options) ([]string, error) {
	dirs := opts.Dirs
	if len(dirs) == 0 {
		exe, err := os.Executable()
		if err != nil {
			return nil, fmt.Errorf("cannot find the directory of this program to look for plugins next to it: %w; pass a plugin directory", err)
		}
		dirs = []string{filepath.Dir(exe)}
	}
	var found []string
	seen := map[string]bool{}
	for _, dir := range dirs {
		if err := checkTrustedDir(dir); err != nil {
			return nil, err
		}
		entries, err := os.ReadDir(dir)
		if err != nil {
			return nil, fmt.Errorf("cannot read plugin directory %s: %w", dir, err)
		}
		for _, e := range entries {
			if !isCandidateName(e.Name()) {
				continue
			}
			path := filepath.Join(dir, e.Name())
			st, err := os.Stat(path)
			if err != nil || !st.Mode().IsRegular() || st.Mode().Perm()&0o111 == 0 {
				continue
			}
			if c := canonical(path); !seen[c] {
				seen[c] = true
				found = append(found, path)
			}
		}
	}
	return found, nil
}

func pinFor(opts *Options, path string) string {
	if pin, ok := opts.Pins[path]; ok {
		return pin
	}
	c := canonical(path)
	for p, pin := range opts.Pins {
		if canonical(p) == c {
			return pin
		}
	}
	return ""
}

func isDisabled(opts *Options, engine string) bool {
	for _, d := range opts.Disabled {
		if sanitizeKey(d) == sanitizeKey(engine) {
			return true
		}
	}
	return false
}

// probe starts one candidate with a scratch state directory, asks its engine and stops it; or
// leaves it alone when the configuration says it must not run.
func probe(opts *Options, sup supervision, path string) DiscoveredPlugin {
	d := DiscoveredPlugin{Path: path}
	if isDisabled(opts, engineFromName(path)) {
		d.Error, d.Disabled = "its engine is disabled; not started", true
		return d
	}
	pin := pinFor(opts, path)
	if len(opts.Pins) > 0 && pin == "" {
		d.Error = "not pinned; with pins configured, only pinned plugins are started"
		return d
	}
	scratch, err := os.MkdirTemp("", "executor-host-probe")
	if err != nil {
		d.Error = fmt.Sprintf("cannot create a scratch state directory: %v", err)
		return d
	}
	defer os.RemoveAll(scratch)
	// A plugin that hangs in its handshake may delay discovery only as long as any prompt call.
	if sup.handshake > sup.callTimeout {
		sup.handshake = sup.callTimeout
	}
	p := &plugin{path: path, pin: pin, config: map[string]interface{}{"stateDir": scratch}, sup: sup, logf: logfOf(opts)}
	c, err := p.launch(1)
	if err != nil {
		d.Error = err.Error()
		return d
	}
	p.cur = c
	info := c.init
	p.shutdown()
	d.Engine, d.Info = info.Engine, &info
	d.Disabled = isDisabled(opts, info.Engine)
	return d
}

// Discover finds the plugins in opts.Dirs, probes each for its engine (a short start with a
// scratch state directory, then shutdown) and returns the provider that serves them. Of two
// files declaring one engine, the one a pin, then root's ownership, then its name
// (executor-<engine>) vouch for serves it, else the first found.
func Discover(ctx context.Context, opts Options) (*Provider, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	sup := defaultSupervision(opts.CallTimeout)
	paths, err := candidates(&opts)
	if err != nil {
		return nil, err
	}
	for pinned, pin := range opts.Pins {
		if _, err := parsePin(pinned, pin); err != nil {
			return nil, err
		}
		c := canonical(pinned)
		matched := false
		for _, p := range paths {
			if p == pinned || canonical(p) == c {
				matched = true
			}
		}
		if !matched {
			return nil, fmt.Errorf("the pin for %s names no plugin found in the plugin directories; add its directory or remove the pin", pinned)
		}
	}
	configs := map[string]map[string]interface{}{}
	for engine, v := range opts.Config {
		m, ok := v.(map[string]interface{})
		if v != nil && !ok {
			return nil, fmt.Errorf("the configuration of engine %s must be a map[string]any of initialize.config keys, not %T", engine, v)
		}
		configs[sanitizeKey(engine)] = m
	}
	found := make([]DiscoveredPlugin, len(paths))
	var wg sync.WaitGroup
	for i, path := range paths {
		wg.Add(1)
		go func(i int, path string) {
			defer wg.Done()
			found[i] = probe(&opts, sup, path)
		}(i, path)
	}
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	byEngine := map[string][]int{}
	for i, d := range found {
		if d.Engine != "" {
			k := sanitizeKey(d.Engine)
			byEngine[k] = append(byEngine[k], i)
		}
	}
	for engine, claimants := range byEngine {
		if len(claimants) < 2 {
			continue
		}
		chosen := claimants[0]
		for _, i := range claimants[1:] {
			if preference(&opts, found[i].Path, engine) > preference(&opts, found[chosen].Path, engine) {
				chosen = i
			}
		}
		for _, i := range claimants {
			if i != chosen {
				found[i].Engine, found[i].Info = "", nil
				found[i].Error = fmt.Sprintf("it also declares engine %s, which %s serves (preferred: pinned, then owned by root, then named executor-%s, then found first)", engine, found[chosen].Path, engine)
			}
		}
	}
	prov := &Provider{entries: map[string]*entry{}, disabled: map[string]bool{}, plugins: found, reprobeAfter: 30 * time.Second}
	for _, d := range opts.Disabled {
		prov.disabled[sanitizeKey(d)] = true
	}
	for _, d := range found {
		if d.Engine == "" {
			logfOf(&opts)("plugin %s left out: %s", d.Path, d.Error)
			continue
		}
		if d.Disabled {
			continue
		}
		key := sanitizeKey(d.Engine)
		config := map[string]interface{}{}
		for k, v := range configs[key] {
			config[k] = v
		}
		if _, ok := config["stateDir"]; !ok && opts.StateRoot != "" {
			config["stateDir"] = filepath.Join(opts.StateRoot, key)
		}
		p := &plugin{engine: d.Engine, path: d.Path, pin: pinFor(&opts, d.Path), config: config, sup: sup, logf: logfOf(&opts)}
		prov.entries[key] = &entry{executor: &pluginExecutor{p: p}}
	}
	return prov, nil
}

// preference: a pin, then root owning the file, then its name.
func preference(opts *Options, path, engine string) int {
	score := 0
	if pinFor(opts, path) != "" {
		score += 4
	}
	var st syscall.Stat_t
	if syscall.Stat(path, &st) == nil && st.Uid == 0 {
		score += 2
	}
	if engineFromName(path) == engine {
		score++
	}
	return score
}

// Get returns the executor of engine key, with Bacalhau's MappedProvider errors. Its plugin is
// started here, on first use, to ask whether it is installed; a "no" is asked again after a
// while (Bacalhau caches it for the life of the process).
func (p *Provider) Get(ctx context.Context, key string) (executor.Executor, error) {
	key = sanitizeKey(key)
	if p.disabled[key] {
		return nil, fmt.Errorf("string is disabled: %s", key)
	}
	p.mu.Lock()
	e, ok := p.entries[key]
	if !ok {
		keys := make([]string, 0, len(p.entries))
		for k := range p.entries {
			if !p.disabled[k] {
				keys = append(keys, k)
			}
		}
		p.mu.Unlock()
		sort.Strings(keys)
		return nil, fmt.Errorf("no matching key found on this server: %s. Only supports %v", key, keys)
	}
	checked, installed, at := e.checked, e.installed, e.at
	p.mu.Unlock()
	if checked && installed {
		return e.executor, nil
	}
	if checked && time.Since(at) < p.reprobeAfter {
		return nil, fmt.Errorf("key is not installed: %s", key)
	}
	// Asked without holding the lock: starting a plugin can take a while.
	installed, err := e.executor.IsInstalled(ctx)
	if err != nil {
		return nil, fmt.Errorf("checking whether %s is installed: %w", key, err)
	}
	p.mu.Lock()
	e.checked, e.installed, e.at = true, installed, time.Now()
	p.mu.Unlock()
	if !installed {
		return nil, fmt.Errorf("key is not installed: %s", key)
	}
	return e.executor, nil
}

// Has is whether Get succeeds.
func (p *Provider) Has(ctx context.Context, key string) bool {
	_, err := p.Get(ctx, key)
	return err == nil
}

// Keys are the installed, enabled engines, sorted.
func (p *Provider) Keys(ctx context.Context) []string {
	p.mu.Lock()
	all := make([]string, 0, len(p.entries))
	for k := range p.entries {
		all = append(all, k)
	}
	p.mu.Unlock()
	sort.Strings(all)
	var keys []string
	for _, k := range all {
		if p.Has(ctx, k) {
			keys = append(keys, k)
		}
	}
	return keys
}

// Plugins lists every candidate found and what became of it.
func (p *Provider) Plugins() []DiscoveredPlugin {
	return append([]DiscoveredPlugin(nil), p.plugins...)
}

// Close shuts every started plugin down. Executions keep running under their monitors; a
// later Discover with the same state directories re-attaches to them.
func (p *Provider) Close() error {
	p.mu.Lock()
	var all []*plugin
	for _, e := range p.entries {
		all = append(all, e.executor.p)
	}
	p.mu.Unlock()
	var wg sync.WaitGroup
	for _, pl := range all {
		wg.Add(1)
		go func(pl *plugin) {
			defer wg.Done()
			pl.shutdown()
		}(pl)
	}
	wg.Wait()
	return nil
}
