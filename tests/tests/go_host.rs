//! The Go host adapter (`host-shim/go`): `gofmt`, `go vet ./...` and `go test ./...` against
//! the real `executor-native` this workspace built, so that `cargo test --workspace` (the
//! README's test command, which CI runs) covers it. Skips with the reason when `go` is not
//! installed; CI installs it (`.ci/run`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use executor_tests::bin_path;

fn module_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../host-shim/go")
}

/// `go` with an environment that never downloads anything (the module is stdlib only).
fn go(args: &[&str]) -> Option<Command> {
    let found = Command::new("go")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        return None;
    }
    let mut c = Command::new("go");
    c.args(args)
        .current_dir(module_dir())
        .env("GOTOOLCHAIN", "local")
        .env("GOPROXY", "off")
        .env("GOFLAGS", "-mod=mod")
        .env("EXECUTOR_NATIVE", bin_path("executor-native"));
    // Without a home the go tool has no default build cache: keep one beside our binaries.
    if std::env::var_os("GOCACHE").is_none()
        && std::env::var_os("HOME").is_none()
        && std::env::var_os("XDG_CACHE_HOME").is_none()
    {
        let cache = bin_path("executor-native")
            .parent()
            .map(|d| d.join("go-build-cache"));
        if let Some(cache) = cache {
            c.env("GOCACHE", cache);
        }
    }
    Some(c)
}

fn run(mut cmd: Command, what: &str) -> String {
    let started = Instant::now();
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{text}",
        out.status
    );
    eprintln!("{what}: ok in {:.1?}", started.elapsed());
    text
}

#[test]
fn go_host_adapter_vets_and_passes_its_tests() {
    let Some(version) = go(&["version"]) else {
        // CI sets this: there the tests must run, not skip.
        assert!(
            std::env::var_os("EXECUTOR_REQUIRE_GO").is_none(),
            "`go` is not installed, and EXECUTOR_REQUIRE_GO is set"
        );
        eprintln!("skipped: `go` is not installed (apt-get install golang-go; CI installs it)");
        return;
    };
    eprintln!("{}", run(version, "go version").trim());
    let goroot = run(go(&["env", "GOROOT"]).expect("go"), "go env GOROOT");
    let mut gofmt = Command::new(Path::new(goroot.trim()).join("bin/gofmt"));
    gofmt.args(["-l", "."]).current_dir(module_dir());
    let unformatted = run(gofmt, "gofmt -l");
    assert!(
        unformatted.trim().is_empty(),
        "gofmt would change: {unformatted}"
    );
    run(go(&["vet", "./..."]).expect("go"), "go vet ./...");
    let tests = run(
        go(&["test", "-count=1", "./..."]).expect("go"),
        "go test ./...",
    );
    eprintln!("{tests}");
}
