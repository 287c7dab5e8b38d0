//! `Network: Bridge`: a network namespace per job joined by a veth pair to a bridge the plugin
//! owns (`exbr0`), an address from `bridgeSubnet`, NAT to the outside, `Ports` published by
//! DNAT, and nothing of the host reachable from the job.
//!
//! What the job's monitor makes, it removes when the job ends; what a killed monitor left is
//! found and removed by [`sweep`]. Every job's share of the host is keyed by an index `i` into
//! the subnet (its address is `subnet + i`): the host end of its veth is `exv<i>`, its DNAT rules
//! are the nftables table `ip exj_<i>`, and the index is taken while an exclusive `flock` on
//! `/run/executor-plugins/net/<i>` is held by the monitor for its life. The lock, not any
//! plugin's memory, is the truth: a second plugin on another state root never takes an index
//! in use, and whatever carries an index whose lock is free is a leftover.
//!
//! The job's namespace itself has no name (no `/run/netns` file): it is made by a thread of the
//! monitor and lives as long as a process or descriptor holds it, so a crash leaves no
//! namespace behind, and the veth pair goes with it.
//!
//! The shared parts (the bridge, the `inet executor_plugins` table) are ensured at every start
//! and never removed: other jobs may use them. A plugin replaces the table atomically when it
//! starts; a job's start makes it again when it is gone (a firewall reload flushes the whole
//! ruleset). Its rules:
//! - input: from the bridge only replies to what the host opened (`ct state
//!   established,related`); the bridge address and every other host address (the host's
//!   services, its loopback through them) are refused (`reject`: a job fails fast);
//! - forward: from the bridge, nothing to link-local addresses (cloud metadata at
//!   169.254.169.254), nothing with a source outside the subnet, no IPv6;
//! - postrouting: the subnet is masqueraded out of every other interface.
//!
//! Bridge ports are isolated (`bridge_slave isolated on`): jobs do not reach each other.
//!
//! `nft` (nftables) is run as a program, only when a start has something to load (the shared
//! table is gone, the job publishes ports, or a killed monitor left its table): the rules read
//! as written in the nft language. Whether a table exists is asked over nfnetlink, which costs
//! a round trip where starting `nft` costs milliseconds. Links, addresses and routes (the bridge, the veth
//! pair, the inside of the job's namespace, the veth's removal at the end) are rtnetlink
//! requests the monitor sends itself, a few dozen lines instead of a crate or a process.
//!
//! Longer than most files here: the shared bridge and firewall table, one job's veth and
//! addresses, published ports, and the sweep of what killed monitors left are one lifecycle
//! that shares the naming and the netlink exchange; split, each part would reach into the
//! others.

use std::fs::File;
use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::{Deserialize, Serialize};

/// The bridge every Bridge job's veth is attached to.
pub const BRIDGE: &str = "exbr0";
/// The shared nftables table (family `inet`).
pub const TABLE: &str = "executor_plugins";
/// `bridgeSubnet` when none is configured.
pub const DEFAULT_SUBNET: &str = "10.213.0.0/16";
/// Host ends of job veths are `exv<index>`.
pub const VETH_PREFIX: &str = "exv";
/// A job's DNAT table is `ip exj_<index>`.
pub const JOB_TABLE_PREFIX: &str = "exj_";
/// Where the index locks live.
pub const LOCK_DIR: &str = "/run/executor-plugins/net";

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("{0}")]
    Unsupported(String),
    #[error("bridgeSubnet {0:?}: {1}")]
    BadSubnet(String, &'static str),
    #[error("the bridge network lock {path}: {source}")]
    Lock { path: PathBuf, source: io::Error },
    #[error("no free address in the bridge subnet {0}: every one is held by a running job")]
    Exhausted(String),
    #[error("{what}: {detail}")]
    Setup { what: String, detail: String },
}

fn setup(what: impl Into<String>, detail: impl ToString) -> NetError {
    NetError::Setup {
        what: what.into(),
        detail: detail.to_string(),
    }
}

/// An IPv4 subnet given as `a.b.c.d/len`, 16 to 29 bits long (an index names a veth, so at
/// most 2^16 addresses).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subnet {
    net: u32,
    prefix: u8,
}

impl Subnet {
    pub fn parse(s: &str) -> Result<Subnet, NetError> {
        let bad = |why| NetError::BadSubnet(s.to_owned(), why);
        let (addr, len) = s.split_once('/').ok_or(bad("must be an address/length"))?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| bad("not an IPv4 address"))?;
        let prefix: u8 = len.parse().map_err(|_| bad("the length is not a number"))?;
        if !(16..=29).contains(&prefix) {
            return Err(bad("the length must be between 16 and 29"));
        }
        let mask = u32::MAX << (32 - prefix);
        let net = u32::from(addr);
        if net & !mask != 0 {
            return Err(bad("host bits are set"));
        }
        if !addr.is_private() {
            return Err(bad("must be a private range (10/8, 172.16/12, 192.168/16)"));
        }
        Ok(Subnet { net, prefix })
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// The bridge's own address: the first host address.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.net + 1)
    }

    /// Job indexes are `2..=last_index()` (1 is the bridge, the last address is broadcast).
    pub fn last_index(&self) -> u32 {
        (1u32 << (32 - self.prefix)) - 2
    }

    pub fn host(&self, index: u32) -> Ipv4Addr {
        Ipv4Addr::from(self.net + index)
    }
}

impl std::fmt::Display for Subnet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", Ipv4Addr::from(self.net), self.prefix)
    }
}

/// A published port: TCP `port` on the host (on `host_ip` only, or every address) to `target`
/// in the job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Publish {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_ip: Option<Ipv4Addr>,
    pub port: u16,
    pub target: u16,
}

/// What the monitor makes for a Bridge job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BridgePlan {
    /// `bridgeSubnet`, as configured (checked at `initialize`).
    pub subnet: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<Publish>,
}

const TOOL_DIRS: [&str; 4] = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"];

fn tool(name: &str) -> Option<PathBuf> {
    TOOL_DIRS
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

/// Why Bridge cannot work on this host, or `None` when it can.
pub fn unavailable() -> Option<String> {
    if !super::netns::supported() {
        return Some("network namespaces need a root plugin".into());
    }
    tool("nft")
        .is_none()
        .then(|| "`nft` is not installed (Debian package nftables)".into())
}

/// [`unavailable`], and whether this kernel takes the plugin's nftables rules (`nft --check`:
/// validated by the kernel, nothing applied). For `capabilities`, once: a host with `nft` but
/// without nf_tables (a container, a trimmed kernel) must not be told it has Bridge, which
/// `Default` would then mean.
pub fn probe(subnet: Option<&str>) -> Option<String> {
    if let Some(why) = unavailable() {
        return Some(why);
    }
    let subnet = match Subnet::parse(subnet.unwrap_or(DEFAULT_SUBNET)) {
        Ok(s) => s,
        Err(e) => return Some(e.to_string()),
    };
    let rules = shared_rules(&subnet) + &job_rules(2, subnet.host(2), &[]);
    run("nft", &["--check", "-f", "-"], &rules)
        .err()
        .map(|e| format!("this kernel does not take the nftables rules: {e}"))
}

/// Run `program args`, `input` on its stdin; its stderr is the error.
fn run(program: &str, args: &[&str], input: &str) -> Result<(), String> {
    let path = tool(program).ok_or_else(|| format!("`{program}` is not installed"))?;
    let mut child = Command::new(&path)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("running {}: {e}", path.display()))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(input.as_bytes())
            .map_err(|e| format!("writing to {program}: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("waiting for {program}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }
}

fn output(program: &str, args: &[&str]) -> Result<String, String> {
    let path = tool(program).ok_or_else(|| format!("`{program}` is not installed"))?;
    let out = Command::new(&path)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running {}: {e}", path.display()))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }
}

fn link_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

/// IPv4 forwarding on: the NAT needs it. Left on (other jobs, other plugins use it).
fn enable_forwarding() -> Result<(), NetError> {
    std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")
        .map_err(|e| setup("turning on IPv4 forwarding (needed for NAT)", e))
}

/// Replace the shared table whole: when a plugin starts, so that the rules of this version are
/// the ones in force (a start only makes the table when it is missing).
pub fn load_shared(subnet: Option<&str>) -> Result<(), NetError> {
    let subnet = Subnet::parse(subnet.unwrap_or(DEFAULT_SUBNET))?;
    run("nft", &["-f", "-"], &shared_rules(&subnet))
        .map_err(|e| setup(format!("loading the nftables table inet {TABLE}"), e))
}

/// `nfgenmsg` families (`NFPROTO_*`).
const NFPROTO_INET: u8 = 1;
const NFPROTO_IPV4: u8 = 2;

/// Whether the nftables table `name` of `family` exists: one `NFT_MSG_GETTABLE` over
/// nfnetlink, answered by the table (`NFT_MSG_NEWTABLE`) or by `ENOENT`.
fn table_exists(family: u8, name: &str) -> io::Result<bool> {
    const NFNL_SUBSYS_NFTABLES: u16 = 10;
    const NFT_MSG_NEWTABLE: u16 = 0;
    const NFT_MSG_GETTABLE: u16 = 1;
    const NFTA_TABLE_NAME: u16 = 1;
    let sock = netlink(libc::NETLINK_NETFILTER)?;
    // nfgenmsg: family, version NFNETLINK_V0, resource id 0.
    let msg = NlMsg::new(
        (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETTABLE,
        0,
        &[family, 0, 0, 0],
    )
    .attr(NFTA_TABLE_NAME, &nul_terminated(name));
    let mut reply = [0u8; 1024];
    let n = exchange(&sock, msg, &mut reply)?;
    if n >= 16
        && u16::from_ne_bytes([reply[4], reply[5]])
            == (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWTABLE
    {
        return Ok(true);
    }
    match ack_errno(&reply[..n])? {
        libc::ENOENT => Ok(false),
        0 => Err(io::Error::other("an acknowledgement without the table")),
        errno => Err(io::Error::from_raw_os_error(errno)),
    }
}

/// The shared table, replaced whole in one transaction (`add` first, so `delete` never fails).
fn shared_rules(subnet: &Subnet) -> String {
    format!(
        "table inet {TABLE} {{}}
delete table inet {TABLE}
table inet {TABLE} {{
  chain input {{
    type filter hook input priority 0; policy accept;
    iifname \"{BRIDGE}\" ct state established,related accept
    iifname \"{BRIDGE}\" reject
  }}
  chain forward {{
    type filter hook forward priority 0; policy accept;
    iifname \"{BRIDGE}\" meta nfproto ipv6 drop
    iifname \"{BRIDGE}\" ip saddr != {subnet} drop
    iifname \"{BRIDGE}\" ip daddr 169.254.0.0/16 reject
  }}
  chain postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    ip saddr {subnet} oifname != \"{BRIDGE}\" masquerade
  }}
}}
"
    )
}

/// The job's DNAT table, made after any leftover of the same name is gone.
fn job_rules(index: u32, addr: Ipv4Addr, ports: &[Publish]) -> String {
    let name = format!("{JOB_TABLE_PREFIX}{index}");
    let mut rules = String::new();
    for p in ports {
        let to = match p.host_ip {
            Some(ip) => format!("ip daddr {ip}"),
            None => "fib daddr type local".into(),
        };
        rules.push_str(&format!(
            "    {to} tcp dport {} dnat to {addr}:{}\n",
            p.port, p.target
        ));
    }
    let leftover = format!("table ip {name} {{}}\ndelete table ip {name}\n");
    if ports.is_empty() {
        return leftover;
    }
    format!(
        "{leftover}table ip {name} {{
  chain prerouting {{
    type nat hook prerouting priority dstnat; policy accept;
{rules}  }}
  chain output {{
    type nat hook output priority -100; policy accept;
{rules}  }}
}}
"
    )
}

fn open_lock(index: u32) -> Result<File, NetError> {
    let dir = Path::new(LOCK_DIR);
    let lock_err = |path: &Path, source| NetError::Lock {
        path: path.to_owned(),
        source,
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| lock_err(dir, e))?;
    let path = dir.join(index.to_string());
    crate::fds::open_lock(&path).map_err(|e| lock_err(&path, e))
}

/// Take the lock without waiting: `Ok(false)` when somebody holds it.
fn try_lock(file: &File) -> io::Result<bool> {
    match crate::fds::flock(file, libc::LOCK_EX | libc::LOCK_NB) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
        Err(e) => Err(e),
    }
}

/// Remove whatever carries `index` (its lock is held by the caller): its veth, and its DNAT
/// table when `table` (there may be one).
fn remove_index(index: u32, table: bool) -> Vec<String> {
    let mut problems = Vec::new();
    let veth = format!("{VETH_PREFIX}{index}");
    if let Err(e) = delete_link(&veth) {
        problems.push(format!("removing {veth}: {e}"));
    }
    if !table {
        return problems;
    }
    let table = format!("{JOB_TABLE_PREFIX}{index}");
    if let Err(e) = run(
        "nft",
        &["-f", "-"],
        &format!("table ip {table} {{}}\ndelete table ip {table}\n"),
    ) {
        problems.push(format!("removing the nftables table ip {table}: {e}"));
    }
    problems
}

/// An rtnetlink request: the header, the family's fixed part, then attributes.
struct NlMsg(Vec<u8>);

impl NlMsg {
    /// `fixed` is the family's struct (`ifinfomsg`, `ifaddrmsg`, `rtmsg`), a multiple of 4.
    fn new(kind: u16, flags: libc::c_int, fixed: &[u8]) -> NlMsg {
        let mut m = Vec::with_capacity(64);
        m.extend_from_slice(&0u32.to_ne_bytes()); // length, set by `bytes`
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(
            &((libc::NLM_F_REQUEST | libc::NLM_F_ACK | flags) as u16).to_ne_bytes(),
        );
        m.extend_from_slice(&1u32.to_ne_bytes()); // sequence
        m.extend_from_slice(&0u32.to_ne_bytes()); // to the kernel
        m.extend_from_slice(fixed);
        NlMsg(m)
    }

    fn attr(mut self, kind: u16, data: &[u8]) -> NlMsg {
        self.push(kind, data);
        self
    }

    fn push(&mut self, kind: u16, data: &[u8]) {
        let len = 4 + data.len();
        self.0.extend_from_slice(&(len as u16).to_ne_bytes());
        self.0.extend_from_slice(&kind.to_ne_bytes());
        self.0.extend_from_slice(data);
        self.0.resize(self.0.len().div_ceil(4) * 4, 0);
    }

    /// Open a nested attribute; its length is set by [`NlMsg::end`] with the returned offset.
    fn begin(&mut self, kind: u16) -> usize {
        let at = self.0.len();
        self.0.extend_from_slice(&0u16.to_ne_bytes());
        self.0
            .extend_from_slice(&(kind | libc::NLA_F_NESTED as u16).to_ne_bytes());
        at
    }

    fn end(&mut self, at: usize) {
        let len = (self.0.len() - at) as u16;
        self.0[at..at + 2].copy_from_slice(&len.to_ne_bytes());
    }

    /// Raw bytes inside a nested attribute (a family struct), padded to 4.
    fn raw(&mut self, data: &[u8]) {
        self.0.extend_from_slice(data);
        self.0.resize(self.0.len().div_ceil(4) * 4, 0);
    }

    fn bytes(mut self) -> Vec<u8> {
        let len = self.0.len() as u32;
        self.0[..4].copy_from_slice(&len.to_ne_bytes());
        self.0
    }
}

/// A netlink socket of `protocol` (`NETLINK_ROUTE`, `NETLINK_NETFILTER`) in the calling
/// thread's network namespace.
fn netlink(protocol: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: socket(2) with constant arguments; the result is checked.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            protocol,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just opened and is owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Send one request and read the first reply into `reply`: its length. A longer message is
/// cut short (callers read only its header).
fn exchange(sock: &OwnedFd, msg: NlMsg, reply: &mut [u8]) -> io::Result<usize> {
    let msg = msg.bytes();
    // SAFETY: send(2) of a buffer that lives across the call, on an open socket (an unbound
    // netlink socket sends to the kernel).
    if unsafe { libc::send(sock.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    loop {
        // SAFETY: recv(2) into a buffer of the given length, on an open socket.
        let n = unsafe { libc::recv(sock.as_raw_fd(), reply.as_mut_ptr().cast(), reply.len(), 0) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// The errno of an acknowledgement (nlmsghdr with type `NLMSG_ERROR`, then the negative
/// errno; 0 for success); any other reply is an error.
fn ack_errno(reply: &[u8]) -> io::Result<i32> {
    if reply.len() < 20 || u16::from_ne_bytes([reply[4], reply[5]]) != libc::NLMSG_ERROR as u16 {
        return Err(io::Error::other("an unexpected netlink reply"));
    }
    Ok(-i32::from_ne_bytes([
        reply[16], reply[17], reply[18], reply[19],
    ]))
}

/// Send one request and read its acknowledgement: `Err` with the kernel's errno.
fn netlink_request(sock: &OwnedFd, msg: NlMsg) -> io::Result<()> {
    let mut reply = [0u8; 512];
    let n = exchange(sock, msg, &mut reply)?;
    match ack_errno(&reply[..n])? {
        0 => Ok(()),
        errno => Err(io::Error::from_raw_os_error(errno)),
    }
}

/// `ifinfomsg` for the link `index` (0: named by an attribute), setting `flags` in `change`.
fn ifinfomsg(index: u32, flags: u32, change: u32) -> [u8; 16] {
    let mut m = [0u8; 16];
    m[0] = libc::AF_UNSPEC as u8;
    m[4..8].copy_from_slice(&index.to_ne_bytes());
    m[8..12].copy_from_slice(&flags.to_ne_bytes());
    m[12..16].copy_from_slice(&change.to_ne_bytes());
    m
}

/// Delete the link `name` (both ends, for a veth) with one `RTM_DELLINK` over rtnetlink: at the
/// end of every Bridge job, where starting `ip` would keep the monitor that much longer. A link
/// that is not there is no error.
fn delete_link(name: &str) -> io::Result<()> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains('\0') {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "bad link name"));
    }
    let mut ifname = name.as_bytes().to_vec();
    ifname.push(0);
    let msg =
        NlMsg::new(libc::RTM_DELLINK, 0, &ifinfomsg(0, 0, 0)).attr(libc::IFLA_IFNAME, &ifname);
    match netlink_request(&netlink(libc::NETLINK_ROUTE)?, msg) {
        Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(()),
        done => done,
    }
}

/// `VETH_INFO_PEER` (linux/veth.h) and `IFLA_BRPORT_ISOLATED` (linux/if_link.h), which libc
/// does not name.
const VETH_INFO_PEER: u16 = 1;
const IFLA_BRPORT_ISOLATED: u16 = 33;

fn nul_terminated(name: &str) -> Vec<u8> {
    let mut v = name.as_bytes().to_vec();
    v.push(0);
    v
}

fn if_index(name: &str) -> io::Result<u32> {
    let c = std::ffi::CString::new(name).map_err(io::Error::other)?;
    // SAFETY: if_nametoindex(3) with a NUL-terminated string that outlives the call.
    match unsafe { libc::if_nametoindex(c.as_ptr()) } {
        0 => Err(io::Error::last_os_error()),
        i => Ok(i),
    }
}

/// On the host's side, over rtnetlink: the bridge (made if missing) up with the subnet's first
/// address, and the veth `veth` up on it, isolated, its peer `eth0` in the namespace `netns`.
fn connect_host_side(veth: &str, subnet: &Subnet, netns: RawFd) -> Result<(), NetError> {
    let sock = netlink(libc::NETLINK_ROUTE).map_err(|e| setup("opening rtnetlink", e))?;
    let create = libc::NLM_F_CREATE | libc::NLM_F_EXCL;
    if !link_exists(BRIDGE) {
        let mut m = NlMsg::new(libc::RTM_NEWLINK, create, &ifinfomsg(0, 0, 0))
            .attr(libc::IFLA_IFNAME, &nul_terminated(BRIDGE));
        let info = m.begin(libc::IFLA_LINKINFO);
        m.push(libc::IFLA_INFO_KIND, b"bridge");
        m.end(info);
        match netlink_request(&sock, m) {
            // Another monitor made it at the same moment: its existence is what counts.
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
            Err(e) => return Err(setup(format!("making the bridge {BRIDGE}"), e)),
            Ok(()) => {}
        }
    }
    // No IPv6 on the bridge: a job would otherwise reach the host by its link-local address.
    let _ = std::fs::write(
        format!("/proc/sys/net/ipv6/conf/{BRIDGE}/disable_ipv6"),
        "1",
    );
    let bridge = if_index(BRIDGE).map_err(|e| setup(format!("finding {BRIDGE}"), e))?;
    let gw = subnet.gateway();
    let mut ifaddrmsg = [0u8; 8];
    ifaddrmsg[0] = libc::AF_INET as u8;
    ifaddrmsg[1] = subnet.prefix();
    ifaddrmsg[4..8].copy_from_slice(&bridge.to_ne_bytes());
    let up = libc::IFF_UP as u32;
    netlink_request(
        &sock,
        NlMsg::new(
            libc::RTM_NEWADDR,
            libc::NLM_F_CREATE | libc::NLM_F_REPLACE,
            &ifaddrmsg,
        )
        .attr(libc::IFA_LOCAL, &gw.octets())
        .attr(libc::IFA_ADDRESS, &gw.octets()),
    )
    .and_then(|()| {
        netlink_request(
            &sock,
            NlMsg::new(libc::RTM_NEWLINK, 0, &ifinfomsg(bridge, up, up)),
        )
    })
    .map_err(|e| setup(format!("giving the bridge {BRIDGE} its address {gw}"), e))?;
    let mut m = NlMsg::new(libc::RTM_NEWLINK, create, &ifinfomsg(0, up, up))
        .attr(libc::IFLA_IFNAME, &nul_terminated(veth))
        .attr(libc::IFLA_MASTER, &bridge.to_ne_bytes());
    let info = m.begin(libc::IFLA_LINKINFO);
    m.push(libc::IFLA_INFO_KIND, b"veth");
    let data = m.begin(libc::IFLA_INFO_DATA);
    let peer = m.begin(VETH_INFO_PEER);
    m.raw(&ifinfomsg(0, 0, 0));
    m.push(libc::IFLA_IFNAME, &nul_terminated("eth0"));
    m.push(libc::IFLA_NET_NS_FD, &(netns as u32).to_ne_bytes());
    m.end(peer);
    m.end(data);
    m.end(info);
    netlink_request(&sock, m).map_err(|e| setup(format!("making the job's veth {veth}"), e))?;
    let index = if_index(veth).map_err(|e| setup(format!("finding {veth}"), e))?;
    let mut m = NlMsg::new(libc::RTM_NEWLINK, 0, &ifinfomsg(index, 0, 0));
    let info = m.begin(libc::IFLA_LINKINFO);
    m.push(libc::IFLA_INFO_SLAVE_KIND, b"bridge");
    let data = m.begin(libc::IFLA_INFO_SLAVE_DATA);
    m.push(IFLA_BRPORT_ISOLATED, &[1]);
    m.end(data);
    m.end(info);
    netlink_request(&sock, m)
        .map_err(|e| setup(format!("isolating {veth} from the other jobs' ports"), e))
}

/// In the job's namespace (the calling thread's): `eth0` up with `addr`, a default route
/// through `gateway`. Three rtnetlink requests, no process to start.
fn configure_inside(addr: Ipv4Addr, prefix: u8, gateway: Ipv4Addr) -> io::Result<()> {
    // SAFETY: if_nametoindex(3) with a NUL-terminated constant.
    let index = unsafe { libc::if_nametoindex(c"eth0".as_ptr()) };
    if index == 0 {
        return Err(io::Error::last_os_error());
    }
    let sock = netlink(libc::NETLINK_ROUTE)?;
    let mut ifaddrmsg = [0u8; 8];
    ifaddrmsg[0] = libc::AF_INET as u8;
    ifaddrmsg[1] = prefix;
    ifaddrmsg[3] = libc::RT_SCOPE_UNIVERSE;
    ifaddrmsg[4..8].copy_from_slice(&index.to_ne_bytes());
    let create = libc::NLM_F_CREATE | libc::NLM_F_EXCL;
    netlink_request(
        &sock,
        NlMsg::new(libc::RTM_NEWADDR, create, &ifaddrmsg)
            .attr(libc::IFA_LOCAL, &addr.octets())
            .attr(libc::IFA_ADDRESS, &addr.octets()),
    )?;
    let up = libc::IFF_UP as u32;
    netlink_request(
        &sock,
        NlMsg::new(libc::RTM_NEWLINK, 0, &ifinfomsg(index, up, up)),
    )?;
    let rtmsg = [
        libc::AF_INET as u8,
        0, // destination length: the default route
        0,
        0,
        libc::RT_TABLE_MAIN,
        libc::RTPROT_BOOT,
        libc::RT_SCOPE_UNIVERSE,
        libc::RTN_UNICAST,
        0,
        0,
        0,
        0,
    ];
    netlink_request(
        &sock,
        NlMsg::new(libc::RTM_NEWROUTE, create, &rtmsg)
            .attr(libc::RTA_GATEWAY, &gateway.octets())
            .attr(libc::RTA_OIF, &index.to_ne_bytes()),
    )
}

/// A Bridge job's network: its namespace (entered by the job), its index and what carries it.
#[derive(Debug)]
pub struct JobNet {
    index: u32,
    addr: Ipv4Addr,
    netns: Option<OwnedFd>,
    /// A DNAT table was made.
    ports: bool,
    /// Held for the monitor's life; released after the teardown.
    _lock: File,
}

impl JobNet {
    /// Make the job's namespace and connect it. `start_hint` spreads concurrent starts over the
    /// subnet (the monitor's pid).
    pub fn setup(plan: &BridgePlan, start_hint: u32) -> Result<JobNet, NetError> {
        let subnet = Subnet::parse(&plan.subnet)?;
        let (index, lock) = claim(&subnet, start_hint)?;
        let addr = subnet.host(index);
        enable_forwarding()?;
        // One transaction: the shared table made again when it is gone (a firewall reload
        // flushes the ruleset), a leftover of this index (the lock is ours, so it is a killed
        // monitor's) replaced by the job's own DNAT table. Starting `nft` costs far more than
        // the rest of a Bridge start, so it runs only when there is something to load: asking
        // the kernel whether a table exists is one nfnetlink round trip. The plugin reloads
        // the shared table whole when it starts ([`load_shared`]).
        let job_table = format!("{JOB_TABLE_PREFIX}{index}");
        let mut rules = String::new();
        if !table_exists(NFPROTO_INET, TABLE).unwrap_or(false) {
            rules += &shared_rules(&subnet);
        }
        if !plan.ports.is_empty() || table_exists(NFPROTO_IPV4, &job_table).unwrap_or(true) {
            rules += &job_rules(index, addr, &plan.ports);
        }
        if !rules.is_empty() {
            run("nft", &["-f", "-"], &rules).map_err(|e| {
                setup(
                    format!("loading the nftables tables inet {TABLE} and ip {job_table}"),
                    e,
                )
            })?;
        }
        let veth = format!("{VETH_PREFIX}{index}");
        if let Err(e) = delete_link(&veth) {
            eprintln!("monitor: removing the leftover {veth}: {e}");
        }
        // Made before the namespace, so a failure below is torn down like a job's end.
        let mut net = JobNet {
            index,
            addr,
            netns: None,
            ports: !plan.ports.is_empty(),
            _lock: lock,
        };
        net.netns = Some(make_netns(index, addr, &subnet)?);
        Ok(net)
    }

    /// The namespace to `setns` into.
    pub fn netns_fd(&self) -> RawFd {
        self.netns.as_ref().map_or(-1, |fd| fd.as_raw_fd())
    }

    pub fn address(&self) -> Ipv4Addr {
        self.addr
    }
}

impl Drop for JobNet {
    fn drop(&mut self) {
        for p in remove_index(self.index, self.ports) {
            eprintln!("monitor: {p}");
        }
    }
}

/// Setns into `fd` (a network namespace). Async-signal-safe: for `pre_exec`.
pub fn enter(fd: RawFd) -> io::Result<()> {
    // SAFETY: setns(2) on a descriptor the monitor keeps open until the job has started.
    if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn claim(subnet: &Subnet, hint: u32) -> Result<(u32, File), NetError> {
    let first = 2;
    let count = subnet.last_index() - first + 1;
    for k in 0..count {
        let index = first + (hint.wrapping_add(k)) % count;
        let file = open_lock(index)?;
        match try_lock(&file) {
            Ok(true) => return Ok((index, file)),
            Ok(false) => continue,
            Err(source) => {
                return Err(NetError::Lock {
                    path: Path::new(LOCK_DIR).join(index.to_string()),
                    source,
                })
            }
        }
    }
    Err(NetError::Exhausted(subnet.to_string()))
}

/// A thread makes the namespace (a network namespace is per thread until a process enters it)
/// and hands over a descriptor of it; the veth is made with its peer in that namespace (by the
/// descriptor), and the thread configures the inside over an rtnetlink socket it opens there.
fn make_netns(index: u32, addr: Ipv4Addr, subnet: &Subnet) -> Result<OwnedFd, NetError> {
    let (fd_tx, fd_rx) = std::sync::mpsc::channel::<io::Result<OwnedFd>>();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<bool>();
    let (prefix, gateway) = (subnet.prefix(), subnet.gateway());
    let worker = std::thread::Builder::new()
        .name("netns".into())
        .stack_size(64 * 1024)
        .spawn(move || -> Result<(), String> {
            let made = (|| {
                // A namespace for this thread alone, with `lo` up.
                super::netns::enter_isolated_network()?;
                let path = c"/proc/thread-self/ns/net";
                // SAFETY: open(2) of a constant path; the result is checked.
                let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
                if fd < 0 {
                    return Err(io::Error::last_os_error());
                }
                // SAFETY: `fd` was just opened and is owned by nothing else.
                Ok(unsafe { OwnedFd::from_raw_fd(fd) })
            })();
            let ok = made.is_ok();
            let _ = fd_tx.send(made);
            if !ok || !go_rx.recv().unwrap_or(false) {
                return Ok(());
            }
            configure_inside(addr, prefix, gateway).map_err(|e| e.to_string())
        })
        .map_err(|e| setup("starting the thread that makes the job's network", e))?;
    let joined = |worker: std::thread::JoinHandle<Result<(), String>>| {
        worker
            .join()
            .unwrap_or_else(|_| Err("the thread panicked".into()))
    };
    let fd = match fd_rx.recv() {
        Ok(Ok(made)) => made,
        Ok(Err(e)) => {
            let _ = joined(worker);
            return Err(setup("making the job's network namespace", e));
        }
        Err(_) => {
            let e = joined(worker).err().unwrap_or_default();
            return Err(setup("making the job's network namespace", e));
        }
    };
    let veth = format!("{VETH_PREFIX}{index}");
    if let Err(e) = connect_host_side(&veth, subnet, fd.as_raw_fd()) {
        let _ = go_tx.send(false);
        let _ = joined(worker);
        return Err(e);
    }
    let _ = go_tx.send(true);
    joined(worker).map_err(|e| setup(format!("configuring the job's eth0 ({addr})"), e))?;
    Ok(fd)
}

/// Remove what killed monitors left: host veths and DNAT tables whose index lock is free.
/// Returns what was removed, and problems.
pub fn sweep() -> (Vec<String>, Vec<String>) {
    let mut indexes = std::collections::BTreeSet::new();
    if let Ok(dir) = std::fs::read_dir("/sys/class/net") {
        for e in dir.flatten() {
            let name = e.file_name();
            if let Some(i) = name
                .to_str()
                .and_then(|n| n.strip_prefix(VETH_PREFIX))
                .and_then(|n| n.parse::<u32>().ok())
            {
                indexes.insert(i);
            }
        }
    }
    if tool("nft").is_some() {
        if let Ok(list) = output("nft", &["list", "tables", "ip"]) {
            for line in list.lines() {
                if let Some(i) = line
                    .trim()
                    .strip_prefix("table ip ")
                    .and_then(|n| n.strip_prefix(JOB_TABLE_PREFIX))
                    .and_then(|n| n.parse::<u32>().ok())
                {
                    indexes.insert(i);
                }
            }
        }
    }
    let (mut removed, mut problems) = (Vec::new(), Vec::new());
    for index in indexes {
        let file = match open_lock(index) {
            Ok(f) => f,
            Err(e) => {
                problems.push(e.to_string());
                continue;
            }
        };
        match try_lock(&file) {
            Ok(true) => {
                let p = remove_index(index, true);
                if p.is_empty() {
                    removed.push(format!("bridge index {index}"));
                }
                problems.extend(p);
            }
            Ok(false) => {}
            Err(e) => problems.push(format!("locking bridge index {index}: {e}")),
        }
    }
    (removed, problems)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets_are_checked() {
        let s = Subnet::parse(DEFAULT_SUBNET).unwrap();
        assert_eq!(s.gateway(), Ipv4Addr::new(10, 213, 0, 1));
        assert_eq!(s.host(258), Ipv4Addr::new(10, 213, 1, 2));
        assert_eq!(s.last_index(), 65534);
        for bad in [
            "10.213.0.0",
            "10.213.0.1/16",
            "8.8.0.0/16",
            "10.0.0.0/8",
            "10.0.0.0/30",
            "x/16",
        ] {
            assert!(Subnet::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn links_are_deleted_over_rtnetlink_and_a_missing_one_is_no_error() {
        if !nix::unistd::geteuid().is_root() || tool("ip").is_none() {
            eprintln!("skipped: needs root and ip");
            return;
        }
        let name = format!("exdl{}", std::process::id() % 100_000);
        run(
            "ip",
            &[
                "link",
                "add",
                &name,
                "type",
                "veth",
                "peer",
                "name",
                &format!("{name}p"),
            ],
            "",
        )
        .expect("a veth pair");
        assert!(link_exists(&name));
        delete_link(&name).expect("deleted");
        assert!(!link_exists(&name) && !link_exists(&format!("{name}p")));
        delete_link(&name).expect("a missing link is no error");
        assert!(delete_link("").is_err());
    }

    #[test]
    fn whether_a_table_exists_is_asked_over_nfnetlink() {
        if unavailable().is_some() {
            eprintln!("skipped: needs root and nft");
            return;
        }
        let name = format!("extest_{}", std::process::id());
        assert!(!table_exists(NFPROTO_IPV4, &name).unwrap());
        run("nft", &["-f", "-"], &format!("table ip {name} {{}}\n")).unwrap();
        assert!(table_exists(NFPROTO_IPV4, &name).unwrap());
        // Another family's table of the same name is another table.
        assert!(!table_exists(NFPROTO_INET, &name).unwrap());
        run("nft", &["-f", "-"], &format!("delete table ip {name}\n")).unwrap();
        assert!(!table_exists(NFPROTO_IPV4, &name).unwrap());
    }

    #[test]
    fn the_probe_checks_the_rules_with_the_kernel_and_applies_nothing() {
        assert!(probe(Some("8.8.0.0/16")).is_some());
        if unavailable().is_some() {
            eprintln!("skipped: needs root and nft");
            return;
        }
        let before = output("nft", &["list", "ruleset"]).unwrap();
        assert_eq!(probe(None), None);
        // `--check` changed nothing (a run that had no table yet still has none).
        let after = output("nft", &["list", "ruleset"]).unwrap();
        assert_eq!(before.contains(TABLE), after.contains(TABLE));
    }

    #[test]
    fn job_rules_publish_on_one_or_every_address() {
        let r = job_rules(
            7,
            Ipv4Addr::new(10, 213, 0, 7),
            &[
                Publish {
                    host_ip: None,
                    port: 8080,
                    target: 80,
                },
                Publish {
                    host_ip: Some(Ipv4Addr::new(192, 0, 2, 1)),
                    port: 9000,
                    target: 9000,
                },
            ],
        );
        assert!(r.contains("fib daddr type local tcp dport 8080 dnat to 10.213.0.7:80"));
        assert!(r.contains("ip daddr 192.0.2.1 tcp dport 9000 dnat to 10.213.0.7:9000"));
        assert!(r.starts_with("table ip exj_7 {}\ndelete table ip exj_7\n"));
    }
}
