package pluginhost

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"
)

func sha256File(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

func TestAWrongPinRefusesToStartThePlugin(t *testing.T) {
	var path string
	e := newEnv(t, func(o *Options) {
		path = filepath.Join(o.Dirs[0], "executor-native")
		o.Pins = map[string]string{path: strings.Repeat("0", 64)}
	})
	_, err := e.prov.Get(context.Background(), "native")
	if err == nil || err.Error() != "no matching key found on this server: native. Only supports []" {
		t.Fatalf("Get with a wrong pin: %v", err)
	}
	found := e.prov.Plugins()
	if len(found) != 1 || found[0].Engine != "" || !strings.Contains(found[0].Error, "but the configuration pins "+strings.Repeat("0", 64)+"; it was not started") {
		t.Fatalf("plugins: %+v", found)
	}
}

func TestAPinnedPluginRunsFromASealedCopyOfTheBytesHashed(t *testing.T) {
	dir := t.TempDir()
	native := place(t, nativeBinary(t), dir, "executor-native")
	e := newEnv(t, func(o *Options) {
		o.Dirs = []string{dir}
		o.Pins = map[string]string{native: strings.ToUpper(sha256File(t, native))}
	})
	ex, err := e.prov.Get(context.Background(), "native")
	if err != nil {
		t.Fatalf("Get with the right pin: %v", err)
	}
	e.exec = ex
	res, err := ex.Run(context.Background(), e.request("pinned-1", "echo pinned"))
	if err != nil || res.STDOUT != "pinned\n" {
		t.Fatalf("Run: %+v, %v", res, err)
	}
	exe, err := os.Readlink("/proc/" + strconv.Itoa(e.pid()) + "/exe")
	if err != nil || !strings.HasPrefix(exe, "/memfd:") {
		t.Fatalf("the pinned plugin runs from %q (%v), not a memfd", exe, err)
	}
}

func TestPinsBindEnginesAndAPinMatchingNothingIsAnError(t *testing.T) {
	dir := t.TempDir()
	native := place(t, nativeBinary(t), dir, "executor-native")
	secondPlugin(t, dir)
	opts := Options{Dirs: []string{dir}, StateRoot: t.TempDir(), Logger: quietLogger(t),
		Pins: map[string]string{native: sha256File(t, native)}}
	prov, err := Discover(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	defer prov.Close()
	if keys := prov.Keys(context.Background()); !reflect.DeepEqual(keys, []string{"native"}) {
		t.Fatalf("keys %v: the unpinned plugin was admitted", keys)
	}
	for _, d := range prov.Plugins() {
		if filepath.Base(d.Path) == "executor-second" && !strings.Contains(d.Error, "only pinned plugins are started") {
			t.Fatalf("unpinned plugin: %+v", d)
		}
	}

	opts.Pins = map[string]string{native: sha256File(t, native), filepath.Join(dir, "executor-gone"): strings.Repeat("a", 64)}
	if _, err := Discover(context.Background(), opts); err == nil || !strings.Contains(err.Error(), "names no plugin found") {
		t.Fatalf("a pin matching nothing: %v", err)
	}
	opts.Pins = map[string]string{native: "abc"}
	if _, err := Discover(context.Background(), opts); err == nil || !strings.Contains(err.Error(), "not 64 hex digits") {
		t.Fatalf("a malformed pin: %v", err)
	}
}

func TestPluginsOthersCanWriteAreRefused(t *testing.T) {
	dir := t.TempDir()
	second := secondPlugin(t, dir)
	if err := os.Chmod(second, 0o777); err != nil {
		t.Fatal(err)
	}
	prov, err := Discover(context.Background(), Options{Dirs: []string{dir}, Logger: quietLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer prov.Close()
	if found := prov.Plugins(); len(found) != 1 || found[0].Engine != "" || !strings.Contains(found[0].Error, "writable by group or others (mode 777)") {
		t.Fatalf("a world-writable plugin: %+v", found)
	}
	if err := os.Chmod(second, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	_, err = Discover(context.Background(), Options{Dirs: []string{dir}, Logger: quietLogger(t)})
	var te *TrustError
	if !errors.As(err, &te) || !strings.Contains(err.Error(), "plugin directory refused") {
		t.Fatalf("a world-writable plugin directory: %v", err)
	}
}

func TestTwoEnginesInOneDirectory(t *testing.T) {
	dir := t.TempDir()
	place(t, nativeBinary(t), dir, "executor-native")
	secondPlugin(t, dir)
	ctx := context.Background()
	prov, err := Discover(ctx, Options{Dirs: []string{dir}, StateRoot: t.TempDir(), Logger: quietLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer prov.Close()
	if keys := prov.Keys(ctx); !reflect.DeepEqual(keys, []string{"native", "second"}) {
		t.Fatalf("keys %v", keys)
	}
	if !prov.Has(ctx, " Native ") || !prov.Has(ctx, "SECOND") {
		t.Fatal("keys are not compared trimmed and lower-cased")
	}
	if _, err := prov.Get(ctx, "docker"); err == nil || err.Error() != "no matching key found on this server: docker. Only supports [native second]" {
		t.Fatalf("unknown engine: %v", err)
	}

	disabled, err := Discover(ctx, Options{Dirs: []string{dir}, StateRoot: t.TempDir(), Disabled: []string{"Second"}, Logger: quietLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer disabled.Close()
	if _, err := disabled.Get(ctx, "second"); err == nil || err.Error() != "string is disabled: second" {
		t.Fatalf("disabled engine: %v", err)
	}
	if keys := disabled.Keys(ctx); !reflect.DeepEqual(keys, []string{"native"}) {
		t.Fatalf("keys with second disabled: %v", keys)
	}
	for _, d := range disabled.Plugins() {
		if filepath.Base(d.Path) == "executor-second" && (d.Info != nil || !d.Disabled) {
			t.Fatalf("a disabled engine's plugin was started: %+v", d)
		}
	}
}

func TestASilentPluginIsStoppedAfterTheCallTimeout(t *testing.T) {
	dir := t.TempDir()
	secondPlugin(t, dir)
	ctx := context.Background()
	prov, err := Discover(ctx, Options{Dirs: []string{dir}, CallTimeout: 1500 * time.Millisecond, Logger: quietLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer prov.Close()
	ex, err := prov.Get(ctx, "second")
	if err != nil {
		t.Fatal(err)
	}
	p := ex.(*pluginExecutor).p
	first := p.cur.pid
	begin := time.Now()
	err = ex.Cancel(ctx, "x")
	var down *DownError
	if !errors.As(err, &down) || down.Kind != "timeout" || time.Since(begin) > 5*time.Second {
		t.Fatalf("Cancel on a silent plugin: %v after %v", err, time.Since(begin))
	}
	// Its stderr was read in bounded lines.
	var long string
	for _, l := range p.lastStderr {
		if strings.HasPrefix(l, "xxx") {
			long = l
		}
	}
	if len(long) > maxStderrLine+100 || !strings.HasSuffix(long, " [line truncated: "+strconv.Itoa(100<<10-maxStderrLine)+" more bytes dropped]") {
		t.Fatalf("the long stderr line was kept as %d bytes: ...%q", len(long), long[len(long)-60:])
	}
	// Restarted on next use; the lines it had to skip did not break the session.
	if ok, err := ex.IsInstalled(ctx); err != nil || !ok {
		t.Fatalf("after the timeout: %v, %v", ok, err)
	}
	if p.cur.pid == first {
		t.Fatal("the silent plugin was not replaced")
	}
}

// The pin is checked on the bytes of each launch, not once at discovery: a file rewritten in
// place after Discover is refused when its plugin is first started.
func TestAPinnedFileRewrittenAfterDiscoveryIsRefused(t *testing.T) {
	dir := t.TempDir()
	native := filepath.Join(dir, "executor-native")
	src, err := os.ReadFile(nativeBinary(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(native, src, 0o755); err != nil {
		t.Fatal(err)
	}
	pin := sha256File(t, native)
	prov, err := Discover(context.Background(), Options{Dirs: []string{dir}, StateRoot: t.TempDir(),
		Pins: map[string]string{native: pin}, Logger: quietLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer prov.Close()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	other, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(native, os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(other); err != nil {
		t.Fatal(err)
	}
	f.Close()
	_, err = prov.Get(context.Background(), "native")
	var te *TrustError
	if !errors.As(err, &te) || !strings.Contains(err.Error(), "but the configuration pins "+pin) {
		t.Fatalf("Get after the rewrite: %v", err)
	}
}
