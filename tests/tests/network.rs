//! Issue 13: networks as Bacalhau's jobs ask for them. A `Bridge` job reaches a "remote" server
//! (in a network namespace the test makes, joined to the host by a veth) through the plugin's
//! NAT, and nothing of the host; its published ports are reachable from the host and from the
//! "remote"; nothing the plugin added (veths, nftables tables) is left after the job, nor after
//! a kill -9 of plugin and monitor followed by a plugin restart.
//!
//! Never any address outside namespaces the test made: the outside network is not used.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::time::Duration;

use executor_tests::harness::{self, Env};
use serde_json::{json, Value};

/// The plugin's bridge subnet (its default) and what carries a job's index there.
const BRIDGE_GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 213, 0, 1);

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Why these tests cannot run here, if they cannot.
fn cannot_run() -> Option<String> {
    if !harness::is_root() {
        return Some("needs root for network namespaces".into());
    }
    for tool in ["ip", "nft", "python3"] {
        let found = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
            .iter()
            .any(|d| std::path::Path::new(d).join(tool).is_file());
        if !found {
            return Some(format!("needs `{tool}`"));
        }
    }
    None
}

/// A "remote" host: a named network namespace with `10.214.<n>.2/24` on a veth whose host end
/// (`exnth<n>`) has `10.214.<n>.1/24`.
struct Remote {
    ns: String,
    host_if: String,
    host_ip: Ipv4Addr,
    ip: Ipv4Addr,
}

impl Remote {
    fn new(n: u8) -> Remote {
        let ns = format!("exnt-remote-{n}-{}", std::process::id());
        let host_if = format!("exnth{n}");
        // A run killed midway may have left them.
        let _ = ip(&["link", "del", &host_if]);
        let r = Remote {
            ns,
            host_if,
            host_ip: Ipv4Addr::new(10, 214, n, 1),
            ip: Ipv4Addr::new(10, 214, n, 2),
        };
        let host_cidr = format!("{}/24", r.host_ip);
        let cidr = format!("{}/24", r.ip);
        let steps: [&[&str]; 7] = [
            &["netns", "add", &r.ns],
            &[
                "link", "add", &r.host_if, "type", "veth", "peer", "name", "eth0", "netns", &r.ns,
            ],
            &["addr", "add", &host_cidr, "dev", &r.host_if],
            &["link", "set", &r.host_if, "up"],
            &["-n", &r.ns, "addr", "add", &cidr, "dev", "eth0"],
            &["-n", &r.ns, "link", "set", "eth0", "up"],
            &["-n", &r.ns, "link", "set", "lo", "up"],
        ];
        for s in steps {
            ip(s).unwrap_or_else(|e| panic!("ip {s:?}: {e}"));
        }
        r
    }

    /// Also answer at a link-local address (like a cloud's metadata service at 169.254.169.254),
    /// routed from the host through this namespace. Not the real metadata address: the host
    /// may need its own.
    fn with_link_local(self, addr: Ipv4Addr) -> Remote {
        let cidr = format!("{addr}/32");
        let host = format!("{addr}/32");
        let via = self.ip.to_string();
        let steps: [&[&str]; 2] = [
            &["-n", &self.ns, "addr", "add", &cidr, "dev", "lo"],
            &["route", "replace", &host, "via", &via],
        ];
        for s in steps {
            ip(s).unwrap_or_else(|e| panic!("ip {s:?}: {e}"));
        }
        self
    }

    /// Run `f` on a thread inside the remote namespace (sockets it makes stay there).
    fn inside<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.ns);
        std::thread::spawn(move || {
            let ns = File::open(&path).expect("remote netns");
            nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            f()
        })
        .join()
        .expect("thread in the remote namespace")
    }
}

impl Drop for Remote {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.ns]);
        let _ = ip(&["link", "del", &self.host_if]);
    }
}

/// Answers every connection with `tag` and closes it.
fn serve(listener: TcpListener, tag: &'static str) {
    std::thread::spawn(move || {
        for mut s in listener.incoming().flatten() {
            let _ = s.write_all(tag.as_bytes());
        }
    });
}

/// The plugin's leftovers on the host: job veths and job DNAT tables.
fn leftovers() -> Vec<String> {
    let mut found: Vec<String> = std::fs::read_dir("/sys/class/net")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| n.starts_with("exv"))
                .collect()
        })
        .unwrap_or_default();
    let tables = Command::new("nft")
        .args(["list", "tables"])
        .output()
        .expect("nft list tables");
    found.extend(
        String::from_utf8_lossy(&tables.stdout)
            .lines()
            .filter(|l| l.contains(" exj_"))
            .map(str::to_owned),
    );
    found
}

fn probe_script(targets: &[SocketAddr]) -> String {
    let list: Vec<String> = targets
        .iter()
        .map(|a| format!("('{}', {})", a.ip(), a.port()))
        .collect();
    format!(
        "import socket\nfor t in [{}]:\n    try:\n        s = socket.create_connection(t, 3)\n        print(t[0], s.recv(16).decode() or 'reached')\n        s.close()\n    except OSError as e:\n        print(t[0], 'unreachable', e)\n",
        list.join(", ")
    )
}

/// `executor_start`, which must succeed.
fn start(env: &mut Env, exec: &str, script: &str, extra: Value) {
    let req = env.request(exec, script, extra);
    let msg = env.call("executor_start", json!([req]));
    assert!(msg.get("error").is_none(), "start {exec}: {msg}");
}

fn python(script: &str) -> String {
    format!("exec python3 - <<'EOF'\n{script}\nEOF\n")
}

/// A Bridge job reaches a server in another namespace through the NAT, and reaches no service
/// of the host: not on its loopback, not on the bridge address, not on another host address;
/// nor a link-local address the host itself reaches (where cloud metadata lives).
#[test]
fn a_bridge_job_reaches_a_remote_server_and_nothing_of_the_host() {
    if let Some(why) = cannot_run() {
        eprintln!("skipped: {why}");
        return;
    }
    let _serial = harness::serial();
    let metadata = Ipv4Addr::new(169, 254, 77, 77);
    let remote = Remote::new(41).with_link_local(metadata);
    let far = remote.inside(|| TcpListener::bind("0.0.0.0:0").expect("remote server"));
    let far_port = far.local_addr().unwrap().port();
    serve(far, "remote");
    // The host itself reaches the link-local server: only the job must not.
    let mut s = TcpStream::connect_timeout(&(metadata, far_port).into(), Duration::from_secs(5))
        .expect("the host reaches the link-local server");
    let mut got = String::new();
    s.read_to_string(&mut got).unwrap();
    assert_eq!(got, "remote");
    let host = TcpListener::bind("0.0.0.0:0").expect("host server");
    let host_port = host.local_addr().unwrap().port();
    serve(host, "host");

    let mut env = Env::new();
    let targets = [
        SocketAddr::from((remote.ip, far_port)),
        SocketAddr::from((Ipv4Addr::LOCALHOST, host_port)),
        SocketAddr::from((BRIDGE_GATEWAY, host_port)),
        SocketAddr::from((remote.host_ip, host_port)),
        SocketAddr::from((metadata, far_port)),
    ];
    let script = probe_script(&targets);
    let req = json!({"Network": {"Type": "Bridge"}});
    // The second time after the firewall table is gone (as a firewall reload leaves it): a
    // start makes it again before the job runs, so nothing of the host opens up.
    for exec in ["net-bridge-reach", "net-bridge-reach-2"] {
        if exec.ends_with("-2") {
            let nft = std::process::Command::new("nft")
                .args(["delete", "table", "inet", "executor_plugins"])
                .status()
                .expect("nft");
            assert!(nft.success(), "deleting the shared table");
        }
        let r = env.run(exec, &python(&script), req.clone());
        assert_eq!(r["ErrorMsg"], "", "{r}");
        if let Some(monitor) = env.monitor_pid(exec) {
            assert!(harness::survivors(&[monitor], Duration::from_secs(20)).is_empty());
        }
        let out = String::from_utf8_lossy(&env.file(exec, "stdout")).into_owned();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 5, "{exec}: {out} / {r}");
        assert_eq!(lines[0], format!("{} remote", remote.ip), "{exec}: {out}");
        for (line, t) in lines[1..].iter().zip(&targets[1..]) {
            assert!(
                line.starts_with(&format!("{} unreachable", t.ip())),
                "{exec}: the job reached {t}: {out}"
            );
        }
    }
    assert_eq!(leftovers(), Vec::<String>::new(), "after the job");
}

/// `Ports` are published: `Static` on every host address goes to `Target` in the job, from the
/// host itself and from the "remote"; the job is told both numbers; nothing is left after.
#[test]
fn a_bridge_jobs_published_port_is_reachable_and_removed_after() {
    if let Some(why) = cannot_run() {
        eprintln!("skipped: {why}");
        return;
    }
    let _serial = harness::serial();
    let remote = Remote::new(42);
    let static_port = {
        let l = TcpListener::bind("0.0.0.0:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut env = Env::new();
    let exec = "net-bridge-publish";
    let ready = env.scratch(exec).join("ready");
    let server = format!(
        "import os, socket\ns = socket.socket()\ns.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\ns.bind(('0.0.0.0', 8080))\ns.listen(4)\nopen('{}', 'w').close()\nfor _ in range(2):\n    c, _ = s.accept()\n    c.sendall((os.environ.get('BACALHAU_HOST_PORT_web', '-') + ' ' + os.environ.get('BACALHAU_PORT_web', '-') + '\\n').encode())\n    c.close()\n",
        ready.display()
    );
    start(
        &mut env,
        exec,
        &python(&server),
        json!({"Network": {"Type": "Bridge", "Ports": [
            {"Name": "web", "Static": static_port, "Target": 8080}
        ]}}),
    );
    harness::wait_until(Duration::from_secs(30), "the job's server", || {
        ready.exists()
    });
    let during = leftovers();
    assert!(
        during.iter().any(|l| l.starts_with("exv")) && during.iter().any(|l| l.contains("exj_")),
        "the job's veth and DNAT table while it runs: {during:?}"
    );
    // The job's bridge port is isolated: jobs do not reach each other.
    let veth = during.iter().find(|l| l.starts_with("exv")).unwrap();
    let isolated = std::fs::read_to_string(format!("/sys/class/net/{veth}/brport/isolated"));
    assert_eq!(isolated.ok().as_deref().map(str::trim), Some("1"), "{veth}");
    let expect = format!("{static_port} 8080\n");
    let to = SocketAddr::from((remote.host_ip, static_port));
    let read = |to: SocketAddr| -> String {
        let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("connecting to {to}: {e}"));
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut line = String::new();
        BufReader::new(&mut s).read_line(&mut line).unwrap();
        line
    };
    assert_eq!(read(to), expect, "from the host");
    let from_remote = remote.inside(move || {
        let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("connecting to {to} from the remote: {e}"));
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut got = String::new();
        s.read_to_string(&mut got).unwrap();
        got
    });
    assert_eq!(from_remote, expect, "from the remote");
    let monitor = env.monitor_pid(exec).expect("monitor pid");
    let r = env.wait(exec);
    assert_eq!(r["ExitCode"], 0, "{r}");
    // The monitor removes them after it has reported, before it exits.
    assert!(harness::survivors(&[monitor], Duration::from_secs(20)).is_empty());
    assert_eq!(leftovers(), Vec::<String>::new(), "after the job");
    assert!(
        TcpStream::connect_timeout(&to, Duration::from_secs(2)).is_err(),
        "the port is still published after the job"
    );
}

/// A kill -9 of the plugin and the monitor leaves the job's veth and DNAT table; the next
/// plugin's start removes them (their index lock is free).
#[test]
fn a_killed_monitors_network_is_removed_by_the_next_plugin() {
    if let Some(why) = cannot_run() {
        eprintln!("skipped: {why}");
        return;
    }
    let _serial = harness::serial();
    let mut env = Env::new();
    let exec = "net-bridge-killed";
    let static_port = {
        let l = TcpListener::bind("0.0.0.0:0").unwrap();
        l.local_addr().unwrap().port()
    };
    start(
        &mut env,
        exec,
        "sleep 600",
        json!({"Network": {"Type": "Bridge", "Ports": [
            {"Name": "p", "Static": static_port, "Target": 80}
        ]}}),
    );
    harness::wait_until(Duration::from_secs(30), "the job", || {
        env.job_pid(exec).is_some()
    });
    let monitor = env.monitor_pid(exec).expect("monitor pid");
    let job = env.job_pid(exec).expect("job pid");
    let during = leftovers();
    assert!(
        during.iter().any(|l| l.starts_with("exv")) && during.iter().any(|l| l.contains("exj_")),
        "the job's veth and DNAT table while it runs: {during:?}"
    );
    harness::kill_all(&[monitor]);
    assert!(harness::survivors(&[monitor], Duration::from_secs(10)).is_empty());
    env.replace_plugin();
    // The job itself was ended by the restarted plugin or goes now; either way its namespace
    // (and the veth pair in it) goes with its last process.
    harness::kill_all(&[job]);
    harness::wait_until(Duration::from_secs(20), "no leftovers", || {
        leftovers().is_empty()
    });
    let leftover: Value = json!(leftovers());
    assert_eq!(leftover, json!([]));
}

/// Answers every HTTP request (read up to the end of its head) with `200` and `tag`.
fn serve_http(listener: TcpListener, tag: &'static str) {
    std::thread::spawn(move || {
        for mut s in listener.incoming().flatten() {
            let mut head = Vec::new();
            let mut b = [0u8; 512];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut b) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&b[..n]),
                }
            }
            let _ = write!(
                s,
                "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{tag}",
                tag.len()
            );
        }
    });
}

/// An HTTP job reaches an allowed domain's server through the proxy (plain HTTP, and CONNECT
/// for a name under a `.domain` wildcard), and is refused for a domain not listed, for a listed
/// one that resolves to the host's loopback, and for the server's address directly.
#[test]
fn an_http_job_reaches_allowed_domains_through_the_proxy_only() {
    if let Some(why) = cannot_run() {
        eprintln!("skipped: {why}");
        return;
    }
    let _serial = harness::serial();
    let remote = Remote::new(43);
    let far = remote.inside(|| TcpListener::bind("0.0.0.0:0").expect("remote server"));
    let port = far.local_addr().unwrap().port();
    serve_http(far, "remote");
    let loopback = TcpListener::bind("127.0.0.1:0").expect("loopback server");
    let loop_port = loopback.local_addr().unwrap().port();
    serve_http(loopback, "host");

    let state = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let hosts = work.path().join("hosts");
    std::fs::write(
        &hosts,
        format!(
            "{ip} allowed.test sub.wild.test denied.test\n127.0.0.1 loop.test\n",
            ip = remote.ip
        ),
    )
    .unwrap();
    let mut p = executor_tests::RawPlugin::spawn();
    let init = p.call(
        0,
        "initialize",
        json!({"protocolVersions": ["1"], "config": {"stateDir": state.path(), "httpHostsFile": hosts}}),
    );
    assert!(init.get("result").is_some(), "{init}");
    let script = format!(
        r#"import os, socket, urllib.request, urllib.error
print('env', os.environ.get('HTTP_PROXY'), os.environ.get('https_proxy'))
def get(url):
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return '%d %s' % (r.status, r.read().decode())
    except urllib.error.HTTPError as e:
        return 'refused %d' % e.code
    except Exception as e:
        return 'error %s' % e
def connect(host):
    s = socket.create_connection(('127.0.0.1', 3128), 5)
    s.sendall(('CONNECT %s:{port} HTTP/1.1\r\nHost: x\r\n\r\n' % host).encode())
    head = s.recv(1024).decode()
    if not head.startswith('HTTP/1.1 200'):
        return 'refused ' + head.split()[1]
    s.sendall(b'GET / HTTP/1.0\r\n\r\n')
    data = b''
    while True:
        c = s.recv(1024)
        if not c:
            break
        data += c
    return 'tunnel ' + data.decode().split('\r\n\r\n', 1)[1]
print('allowed', get('http://allowed.test:{port}/'))
print('denied', get('http://denied.test:{port}/'))
print('loop', get('http://loop.test:{loop_port}/'))
print('wild', connect('sub.wild.test'))
print('connect-denied', connect('denied.test'))
try:
    socket.create_connection(('{ip}', {port}), 3)
    print('direct reached')
except OSError:
    print('direct unreachable')
"#,
        ip = remote.ip
    );
    let results = work.path().join("net-http");
    let req = json!({
        "JobID": "j-net", "ExecutionID": "net-http", "ResultsDir": results,
        "EngineParams": {"Type": "native", "Params": {"Entrypoint": ["python3", "-c", script]}},
        "Network": {"Type": "HTTP", "Domains": ["allowed.test", ".wild.test", "loop.test"]},
    });
    let r = p.call(1, "executor_run", json!([req]));
    assert_eq!(r["result"]["ExitCode"], 0, "{r}");
    let out = std::fs::read_to_string(results.join("stdout")).unwrap();
    assert_eq!(
        out,
        "env http://127.0.0.1:3128 http://127.0.0.1:3128\n\
         allowed 200 remote\n\
         denied refused 403\n\
         loop refused 403\n\
         wild tunnel remote\n\
         connect-denied refused 403\n\
         direct unreachable\n",
        "{r}"
    );
    p.call(2, "shutdown", json!([]));
}

/// Where Bridge works, `Default` (and a request without a `Network`) is Bridge: the job
/// reaches a "remote" server through the NAT and still nothing of the host; `capabilities`
/// lists the network types.
#[test]
fn the_default_network_is_bridge_where_bridge_works() {
    if let Some(why) = cannot_run() {
        eprintln!("skipped: {why}");
        return;
    }
    let _serial = harness::serial();
    let remote = Remote::new(44);
    let far = remote.inside(|| TcpListener::bind("0.0.0.0:0").expect("remote server"));
    let far_port = far.local_addr().unwrap().port();
    serve(far, "remote");
    let host = TcpListener::bind("127.0.0.1:0").expect("host server");
    let host_port = host.local_addr().unwrap().port();
    serve(host, "host");

    let mut env = Env::new();
    assert_eq!(
        env.capabilities["networks"],
        json!(["Host", "Full", "None", "HTTP", "Bridge", "Default"]),
        "{}",
        env.capabilities
    );
    let targets = [
        SocketAddr::from((remote.ip, far_port)),
        SocketAddr::from((Ipv4Addr::LOCALHOST, host_port)),
    ];
    let script = probe_script(&targets);
    for (exec, network) in [
        ("net-default-missing", Value::Null),
        ("net-default-named", json!({"Type": "Default"})),
    ] {
        let r = env.run(exec, &python(&script), json!({"Network": network}));
        assert_eq!(r["ErrorMsg"], "", "{r}");
        let out = String::from_utf8_lossy(&env.file(exec, "stdout")).into_owned();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines.first().copied(),
            Some(format!("{} remote", remote.ip).as_str()),
            "{exec}: {out}"
        );
        assert!(
            lines
                .get(1)
                .is_some_and(|l| l.starts_with("127.0.0.1 unreachable")),
            "{exec}: {out}"
        );
    }
}

/// A cancelled Bridge job's veth and DNAT table are gone once its monitor has exited.
#[test]
fn a_cancelled_bridge_job_leaves_nothing() {
    if let Some(why) = cannot_run() {
        eprintln!("skipped: {why}");
        return;
    }
    let _serial = harness::serial();
    let mut env = Env::new();
    let exec = "net-bridge-cancel";
    let static_port = {
        let l = TcpListener::bind("0.0.0.0:0").unwrap();
        l.local_addr().unwrap().port()
    };
    start(
        &mut env,
        exec,
        "sleep 600",
        json!({"Network": {"Type": "Bridge", "Ports": [
            {"Name": "p", "Static": static_port, "Target": 80}
        ]}}),
    );
    harness::wait_until(Duration::from_secs(30), "the job", || {
        env.job_pid(exec).is_some()
    });
    let monitor = env.monitor_pid(exec).expect("monitor pid");
    let during = leftovers();
    assert!(
        during.iter().any(|l| l.starts_with("exv")) && during.iter().any(|l| l.contains("exj_")),
        "the job's veth and DNAT table while it runs: {during:?}"
    );
    let msg = env.call("executor_cancel", json!([exec]));
    assert!(msg.get("error").is_none(), "{msg}");
    env.wait(exec);
    assert!(harness::survivors(&[monitor], Duration::from_secs(20)).is_empty());
    assert_eq!(leftovers(), Vec::<String>::new(), "after the cancel");
}

/// The proxy lives in the job's monitor: an HTTP job keeps its way out through a kill -9 of the
/// plugin, and the next plugin reports what it fetched.
#[test]
fn an_http_jobs_proxy_survives_a_plugin_restart() {
    if let Some(why) = cannot_run() {
        eprintln!("skipped: {why}");
        return;
    }
    let _serial = harness::serial();
    let remote = Remote::new(45);
    let far = remote.inside(|| TcpListener::bind("0.0.0.0:0").expect("remote server"));
    let port = far.local_addr().unwrap().port();
    serve_http(far, "remote");
    let state = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let hosts = work.path().join("hosts");
    std::fs::write(&hosts, format!("{} allowed.test\n", remote.ip)).unwrap();
    let init = |p: &mut executor_tests::RawPlugin| {
        let msg = p.call(
            0,
            "initialize",
            json!({"protocolVersions": ["1"], "config": {"stateDir": state.path(), "httpHostsFile": hosts}}),
        );
        assert!(msg.get("result").is_some(), "{msg}");
    };
    let results = work.path().join("net-http-restart");
    let scratch = results.join("scratch");
    let go = scratch.join("go");
    let script = format!(
        "import os, time, urllib.request\nwhile not os.path.exists('{go}'):\n    time.sleep(0.05)\nprint(urllib.request.urlopen('http://allowed.test:{port}/', timeout=5).read().decode())\n",
        go = go.display()
    );
    let req = json!({
        "JobID": "j-net", "ExecutionID": "net-http-restart", "ResultsDir": results,
        "EngineParams": {"Type": "native", "Params": {"Entrypoint": ["python3", "-c", script]}},
        "Network": {"Type": "HTTP", "Domains": ["allowed.test"]},
        "Outputs": [{"Name": "scratch", "Path": scratch}],
    });
    let mut p = executor_tests::RawPlugin::spawn();
    init(&mut p);
    let msg = p.call(1, "executor_start", json!([req]));
    assert!(msg.get("error").is_none(), "{msg}");
    let _ = p.child.kill();
    let _ = p.child.wait();
    let mut p = executor_tests::RawPlugin::spawn();
    init(&mut p);
    std::fs::write(&go, "").unwrap();
    let r = p.call(2, "executor_wait", json!(["net-http-restart"]));
    assert_eq!(r["result"]["ExitCode"], 0, "{r}");
    assert_eq!(r["result"]["Stdout"], "remote\n", "{r}");
    p.call(3, "shutdown", json!([]));
}
