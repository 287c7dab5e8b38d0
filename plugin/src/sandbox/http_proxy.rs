//! `Network: HTTP`: Bacalhau's domain allow-list. The job gets a network namespace of its own
//! with only `lo`, as for `None`: it has no route anywhere. Its one way out is a proxy the
//! monitor runs (plain HTTP with absolute URIs, and `CONNECT` for HTTPS), listening on
//! `127.0.0.1:3128` *inside* the job's namespace: a thread of the monitor makes the namespace
//! and the listening socket in it, and the proxy's outgoing connections are made from the
//! monitor's own (the host's) namespace. So no veth, no address and no firewall rule is needed,
//! nothing is left after a crash (the namespace goes with its last process), and the proxy
//! lives exactly as long as the job's monitor, through plugin restarts.
//!
//! A request is served when its host is in `Domains` (`example.com` that name, `.example.com`
//! that name and every name below it; case and a trailing dot ignored) and every address it
//! resolves to is a public one: never the host's own addresses, loopback, link-local (cloud
//! metadata), multicast, unspecified or the bridge subnet, whatever a domain resolves to.
//! Names are looked up in `httpHostsFile` first (hosts(5) format), then by the system resolver.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Where the proxy listens in the job's namespace (`HTTP_PROXY` and the others name it).
pub const PROXY_PORT: u16 = 3128;
/// The proxy's address as the job's environment names it.
pub const PROXY_URL: &str = "http://127.0.0.1:3128";

/// Connections served at once; more wait in the listen backlog.
const MAX_CONNECTIONS: usize = 64;
/// A request head larger than this is refused.
const MAX_HEAD: usize = 16 * 1024;
/// Each connection's threads are small: they only copy bytes.
const STACK: usize = 64 * 1024;
const HEAD_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// What the monitor makes for an HTTP job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpPlan {
    /// The request's `Domains`, as given (validated by the schema).
    pub domains: Vec<String>,
    /// `PluginConfig.httpHostsFile`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hosts_file: Option<PathBuf>,
    /// `PluginConfig.bridgeSubnet` (never a destination), as configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bridge_subnet: Option<String>,
}

/// The environment that points the job's HTTP clients at the proxy.
pub fn proxy_env() -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = ["HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"]
        .into_iter()
        .map(|k| (k.to_owned(), PROXY_URL.to_owned()))
        .collect();
    for k in ["NO_PROXY", "no_proxy"] {
        env.push((k.to_owned(), "localhost,127.0.0.1".to_owned()));
    }
    env
}

/// The allow-list: exact names and suffixes (from `.name`).
#[derive(Debug, Clone, Default)]
pub struct Domains {
    exact: Vec<String>,
    below: Vec<String>,
}

fn normalize(name: &str) -> String {
    name.trim().trim_end_matches('.').to_ascii_lowercase()
}

impl Domains {
    pub fn new(list: &[String]) -> Domains {
        let mut d = Domains::default();
        for entry in list {
            let n = normalize(entry);
            match n.strip_prefix('.') {
                Some(base) if !base.is_empty() => d.below.push(base.to_owned()),
                Some(_) => {}
                None if !n.is_empty() => d.exact.push(n),
                None => {}
            }
        }
        d
    }

    pub fn allows(&self, host: &str) -> bool {
        let h = normalize(host);
        let h = h
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(&h);
        if h.is_empty() {
            return false;
        }
        self.exact.iter().any(|e| e == h)
            || self.below.iter().any(|b| {
                h == b
                    || (h.len() > b.len()
                        && h.ends_with(b.as_str())
                        && h.as_bytes()[h.len() - b.len() - 1] == b'.')
            })
    }
}

/// Why a destination address is never served, or `None`.
fn forbidden(ip: IpAddr, local: &[IpAddr], bridge: Option<(u32, u8)>) -> Option<&'static str> {
    let ip = match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    };
    if local.contains(&ip) {
        return Some("an address of this host");
    }
    match ip {
        IpAddr::V4(v4) => {
            if v4.is_loopback() {
                Some("loopback")
            } else if v4.is_link_local() {
                Some("link-local (cloud metadata)")
            } else if v4.is_unspecified() || v4.is_broadcast() || v4.is_multicast() {
                Some("not a host")
            } else if bridge.is_some_and(|(net, len)| {
                let mask = u32::MAX << (32 - len);
                u32::from(v4) & mask == net
            }) {
                Some("the job bridge")
            } else {
                None
            }
        }
        IpAddr::V6(v6) => {
            let seg0 = v6.segments()[0];
            if v6.is_loopback() {
                Some("loopback")
            } else if (seg0 & 0xffc0) == 0xfe80 {
                Some("link-local")
            } else if v6.is_unspecified() || v6.is_multicast() {
                Some("not a host")
            } else {
                None
            }
        }
    }
}

/// The host's own addresses, every interface.
fn local_addresses() -> Vec<IpAddr> {
    let mut out = Vec::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list freed by freeifaddrs below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return out;
    }
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned, not yet freed.
        let ifa = unsafe { &*cur };
        if !ifa.ifa_addr.is_null() {
            // SAFETY: ifa_addr points to a sockaddr whose family says its real type.
            let family = unsafe { (*ifa.ifa_addr).sa_family } as i32;
            if family == libc::AF_INET {
                // SAFETY: an AF_INET address is a sockaddr_in.
                let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
                out.push(IpAddr::V4(Ipv4Addr::from(u32::from_be(
                    sin.sin_addr.s_addr,
                ))));
            } else if family == libc::AF_INET6 {
                // SAFETY: an AF_INET6 address is a sockaddr_in6.
                let sin6 = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in6) };
                out.push(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)));
            }
        }
        cur = ifa.ifa_next;
    }
    // SAFETY: `head` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    out
}

/// hosts(5): `address name...` lines, `#` comments.
fn read_hosts(path: &std::path::Path) -> HashMap<String, Vec<IpAddr>> {
    let mut map: HashMap<String, Vec<IpAddr>> = HashMap::new();
    let Ok(text) = std::fs::read_to_string(path) else {
        return map;
    };
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("");
        let mut words = line.split_whitespace();
        let Some(Ok(ip)) = words.next().map(str::parse::<IpAddr>) else {
            continue;
        };
        for name in words {
            map.entry(normalize(name)).or_default().push(ip);
        }
    }
    map
}

struct Rules {
    domains: Domains,
    hosts: HashMap<String, Vec<IpAddr>>,
    bridge: Option<(u32, u8)>,
}

impl Rules {
    fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
        let name = normalize(host);
        let name = name
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(&name);
        let addrs: Vec<SocketAddr> = if let Ok(ip) = name.parse::<IpAddr>() {
            vec![SocketAddr::new(ip, port)]
        } else if let Some(ips) = self.hosts.get(name) {
            ips.iter().map(|ip| SocketAddr::new(*ip, port)).collect()
        } else {
            use std::net::ToSocketAddrs;
            (name, port)
                .to_socket_addrs()
                .map_err(|e| format!("cannot resolve {name}: {e}"))?
                .collect()
        };
        if addrs.is_empty() {
            return Err(format!("{name} has no address"));
        }
        // Every address, not only the one connected to: a name that also points inside the
        // host is refused whole.
        let local = local_addresses();
        for a in &addrs {
            if let Some(why) = forbidden(a.ip(), &local, self.bridge) {
                return Err(format!("{name} resolves to {} ({why})", a.ip()));
            }
        }
        Ok(addrs)
    }
}

/// The proxy of one job: its accept thread stops when this is dropped.
pub struct Proxy {
    stop: Arc<AtomicBool>,
    listener_fd: RawFd,
    _listener: Arc<TcpListener>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // SAFETY: shutdown(2) on the listening socket this value keeps open: it wakes the
        // accept thread, which then sees `stop`.
        unsafe { libc::shutdown(self.listener_fd, libc::SHUT_RDWR) };
    }
}

/// The job's namespace (to `setns` into) with the proxy listening in it.
pub fn start(plan: &HttpPlan) -> io::Result<(OwnedFd, Proxy)> {
    let (fd, listener) = std::thread::Builder::new()
        .name("http-netns".into())
        .stack_size(STACK)
        .spawn(|| -> io::Result<(OwnedFd, TcpListener)> {
            // This thread alone moves: the socket it makes belongs to the job's namespace.
            super::netns::enter_isolated_network()?;
            let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, PROXY_PORT))?;
            let path = c"/proc/thread-self/ns/net";
            // SAFETY: open(2) of a constant path; the result is checked.
            let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: `fd` was just opened and is owned by nothing else.
            Ok((unsafe { OwnedFd::from_raw_fd(fd) }, listener))
        })?
        .join()
        .map_err(|_| io::Error::other("the thread making the job's network panicked"))??;
    let bridge = plan
        .bridge_subnet
        .as_deref()
        .and_then(|s| super::bridge::Subnet::parse(s).ok())
        .map(|s| (u32::from(s.host(0)), s.prefix()));
    let rules = Arc::new(Rules {
        domains: Domains::new(&plan.domains),
        hosts: plan
            .hosts_file
            .as_deref()
            .map(read_hosts)
            .unwrap_or_default(),
        bridge,
    });
    let listener = Arc::new(listener);
    let stop = Arc::new(AtomicBool::new(false));
    let proxy = Proxy {
        stop: stop.clone(),
        listener_fd: listener.as_raw_fd(),
        _listener: listener.clone(),
    };
    // Spawned from the monitor's own thread: connections go out from the host's namespace.
    std::thread::Builder::new()
        .name("http-proxy".into())
        .stack_size(STACK)
        .spawn(move || accept_loop(&listener, &stop, rules))?;
    Ok((fd, proxy))
}

fn accept_loop(listener: &TcpListener, stop: &AtomicBool, rules: Arc<Rules>) {
    let active = Arc::new(AtomicUsize::new(0));
    loop {
        let conn = listener.accept();
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok((stream, _)) = conn else {
            // Out of descriptors, say: give the connections being served time to end.
            std::thread::sleep(Duration::from_millis(50));
            continue;
        };
        if active.load(Ordering::SeqCst) >= MAX_CONNECTIONS {
            let _ = refuse(&stream, 503, "too many connections through the proxy");
            continue;
        }
        active.fetch_add(1, Ordering::SeqCst);
        // A thread that cannot be made now (the job's own threads at its pids limit, say) may
        // be makeable a moment later; a connection is never dropped without an answer.
        let mut stream = Some(stream);
        for attempt in 0..3 {
            let (rules, done) = (rules.clone(), active.clone());
            let Some(s) = stream.take() else { break };
            let (tx, rx) = std::sync::mpsc::channel();
            let spawned = std::thread::Builder::new()
                .stack_size(STACK)
                .spawn(move || {
                    let Ok(s) = rx.recv() else { return };
                    let _ = serve(s, &rules);
                    done.fetch_sub(1, Ordering::SeqCst);
                });
            match spawned {
                Ok(_) => {
                    let _ = tx.send(s);
                }
                Err(_) => {
                    stream = Some(s);
                    std::thread::sleep(Duration::from_millis(10 << attempt));
                }
            }
        }
        if let Some(s) = stream {
            active.fetch_sub(1, Ordering::SeqCst);
            let _ = refuse(&s, 503, "the proxy cannot serve another connection now");
        }
    }
}

fn refuse(mut s: &TcpStream, code: u16, why: &str) -> io::Result<()> {
    let reason = match code {
        400 => "Bad Request",
        403 => "Forbidden",
        502 => "Bad Gateway",
        _ => "Service Unavailable",
    };
    let body = format!("{why}\n");
    write!(
        s,
        "HTTP/1.1 {code} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// Read up to the end of the head; returns the head and any bytes read past it.
fn read_head(s: &mut TcpStream) -> io::Result<(Vec<u8>, Vec<u8>)> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(end + 4);
            return Ok((buf, rest));
        }
        if buf.len() > MAX_HEAD {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "head too large"));
        }
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// `host[:port]` with `default` port; IPv6 literals in brackets.
fn split_host_port(authority: &str, default: u16) -> Option<(String, u16)> {
    if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None if after.is_empty() => default,
            None => return None,
        };
        return Some((host.to_owned(), port));
    }
    match authority.rsplit_once(':') {
        Some((h, p)) => Some((h.to_owned(), p.parse().ok()?)),
        None => Some((authority.to_owned(), default)),
    }
}

fn serve(mut client: TcpStream, rules: &Rules) -> io::Result<()> {
    client.set_read_timeout(Some(HEAD_TIMEOUT))?;
    let (head, rest) = match read_head(&mut client) {
        Ok(h) => h,
        Err(_) => return refuse(&client, 400, "a malformed or incomplete request head"),
    };
    let text = String::from_utf8_lossy(&head).into_owned();
    let (line, headers) = text.split_once("\r\n").unwrap_or((&text, ""));
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return refuse(&client, 400, "a malformed request line");
    };
    let connect = method.eq_ignore_ascii_case("CONNECT");
    let (authority, path) = if connect {
        (target.to_owned(), String::new())
    } else {
        let Some(rest) = target
            .strip_prefix("http://")
            .or_else(|| target.strip_prefix("HTTP://"))
        else {
            return refuse(
                &client,
                400,
                "only absolute http:// URIs and CONNECT go through this proxy",
            );
        };
        let (auth, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        // No credentials in the authority.
        let auth = auth.rsplit('@').next().unwrap_or(auth);
        (auth.to_owned(), path.to_owned())
    };
    let Some((host, port)) = split_host_port(&authority, if connect { 443 } else { 80 }) else {
        return refuse(&client, 400, "a malformed host or port");
    };
    if !rules.domains.allows(&host) {
        return refuse(
            &client,
            403,
            &format!("{host} is not in the job's Network.Domains"),
        );
    }
    let addrs = match rules.resolve(&host, port) {
        Ok(a) => a,
        Err(why) => return refuse(&client, 403, &why),
    };
    let mut upstream = None;
    let mut last = None;
    for a in &addrs {
        match TcpStream::connect_timeout(a, CONNECT_TIMEOUT) {
            Ok(s) => {
                upstream = Some(s);
                break;
            }
            Err(e) => last = Some(e),
        }
    }
    let Some(mut upstream) = upstream else {
        let why = last.map(|e| e.to_string()).unwrap_or_default();
        return refuse(&client, 502, &format!("connecting to {host}:{port}: {why}"));
    };
    client.set_read_timeout(None)?;
    if connect {
        client.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")?;
    } else {
        // Origin-form request line; hop-by-hop proxy headers dropped.
        let mut out = format!("{method} {path} {version}\r\n");
        for h in headers.split("\r\n").filter(|h| !h.is_empty()) {
            let name = h.split(':').next().unwrap_or("").trim();
            if name.eq_ignore_ascii_case("proxy-connection")
                || name.eq_ignore_ascii_case("proxy-authorization")
            {
                continue;
            }
            out.push_str(h);
            out.push_str("\r\n");
        }
        out.push_str("\r\n");
        upstream.write_all(out.as_bytes())?;
    }
    upstream.write_all(&rest)?;
    relay(client, upstream)
}

/// Copy both ways until both sides are done. Bytes go only to the destination checked above,
/// whatever later requests on the same connection name.
fn relay(client: TcpStream, upstream: TcpStream) -> io::Result<()> {
    let (mut c_read, mut u_write) = (client.try_clone()?, upstream.try_clone()?);
    let up = std::thread::Builder::new()
        .stack_size(STACK)
        .spawn(move || {
            let _ = io::copy(&mut c_read, &mut u_write);
            let _ = u_write.shutdown(Shutdown::Write);
        })?;
    let (mut u_read, mut c_write) = (upstream, client);
    let _ = io::copy(&mut u_read, &mut c_write);
    let _ = c_write.shutdown(Shutdown::Write);
    let _ = up.join();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains_match_like_bacalhaus_wildcards() {
        let d = Domains::new(&["Example.com".into(), ".wild.org".into(), "10.0.0.5".into()]);
        for ok in [
            "example.com",
            "EXAMPLE.com.",
            "wild.org",
            "a.wild.org",
            "a.b.wild.org",
            "10.0.0.5",
        ] {
            assert!(d.allows(ok), "{ok}");
        }
        for no in [
            "www.example.com",
            "notwild.org",
            "wild.org.evil",
            "example.co",
            "",
            "10.0.0.6",
        ] {
            assert!(!d.allows(no), "{no}");
        }
    }

    #[test]
    fn host_and_special_addresses_are_never_destinations() {
        let local = [IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7))];
        let bridge = Some((u32::from(Ipv4Addr::new(10, 213, 0, 0)), 16));
        for bad in [
            "127.0.0.1",
            "169.254.169.254",
            "0.0.0.0",
            "224.0.0.1",
            "192.0.2.7",
            "10.213.4.4",
            "::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
        ] {
            let ip: IpAddr = bad.parse().unwrap();
            assert!(forbidden(ip, &local, bridge).is_some(), "{bad}");
        }
        for ok in ["10.214.0.2", "198.51.100.1", "2001:db8::1"] {
            let ip: IpAddr = ok.parse().unwrap();
            assert_eq!(forbidden(ip, &local, bridge), None, "{ok}");
        }
    }

    #[test]
    fn authorities_split() {
        assert_eq!(
            split_host_port("a.com:8443", 443),
            Some(("a.com".into(), 8443))
        );
        assert_eq!(split_host_port("a.com", 80), Some(("a.com".into(), 80)));
        assert_eq!(split_host_port("[::1]:9", 80), Some(("::1".into(), 9)));
        assert_eq!(split_host_port("a.com:x", 80), None);
    }
}
