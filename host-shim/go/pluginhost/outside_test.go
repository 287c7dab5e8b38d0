package pluginhost

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// A Go program in a module of its own builds against this one (a replace directive, no
// download) and runs a job through the exported API alone.
func TestAProgramOutsideTheModuleRunsAJob(t *testing.T) {
	goTool, err := exec.LookPath("go")
	if err != nil {
		goTool = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	mod := t.TempDir()
	gomod := "module example.com/node\n\ngo 1.19\n\nrequire executorplugins.example/hostshim v0.0.0\n\nreplace executorplugins.example/hostshim => " + root + "\n"
	src, err := os.ReadFile("testdata/node/main.go")
	if err != nil {
		t.Fatal(err)
	}
	for name, body := range map[string][]byte{"go.mod": []byte(gomod), "main.go": src} {
		if err := os.WriteFile(filepath.Join(mod, name), body, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	bin := filepath.Join(mod, "node")
	build := exec.Command(goTool, "build", "-o", bin, ".")
	build.Dir = mod
	build.Env = append(os.Environ(), "GOFLAGS=-mod=mod", "GOPROXY=off", "GOTOOLCHAIN=local")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building the outside program: %v\n%s", err, out)
	}
	dir := t.TempDir()
	place(t, nativeBinary(t), dir, "executor-native")
	out, err := exec.Command(bin, dir, t.TempDir()).CombinedOutput()
	if err != nil {
		t.Fatalf("the outside program failed: %v\n%s", err, out)
	}
	text := string(out)
	for _, want := range []string{
		"engines: [native]\n",
		`exit 4 stdout "hello from the job\n" stderr "to stderr\n" error ""` + "\n",
		`log 1 "hello from the job\n"` + "\n",
		`log 2 "to stderr\n"` + "\n",
	} {
		if !strings.Contains(text, want) {
			t.Fatalf("output lacks %q:\n%s", want, text)
		}
	}
}
