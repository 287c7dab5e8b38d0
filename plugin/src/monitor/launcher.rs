//! A fork server for execution monitors.
//!
//! Re-executing the plugin binary for every execution costs an `execve`, the dynamic loader and
//! the Rust runtime's start-up — most of a trivial job's start latency — and leaves each monitor
//! with the resident pages of a large binary. Instead, the plugin forks this small server while
//! it is still single-threaded (before the async runtime exists); the server forks one monitor
//! per request, which runs [`super::main_in_dir`] with no `exec` at all. A fork of a small,
//! single-threaded process is cheap, and the monitor only maps in the pages it touches.
//!
//! The plugin keeps one monitor forked ahead of time, a *spare*, idle until a request comes: the
//! server forks it when the plugin asks and sends the plugin the spare's socket and pidfd; a
//! start then goes from the plugin straight to the spare, with no fork and no process in between
//! on its path, and the plugin asks for the next one. Without a spare (it died, or could not be
//! forked) the server forks the monitor for the request itself. While it waits, a spare makes
//! what it can of a job's sandbox ahead ([`Ahead`]).
//!
//! Protocol over a `SOCK_SEQPACKET` pair, one request and its answer at a time: `M` and the
//! execution directory, with the monitor's stdin, stdout and stderr as `SCM_RIGHTS`, asks for a
//! monitor, answered with its pid (or an errno) and a pidfd for it; `S` and optionally a started
//! execution's directory (to learn the host from) asks for a spare, answered with its pid (or an
//! errno), its pidfd and its socket. The server reaps its children; the plugin watches them by
//! pidfd. When the plugin goes away the server sees end-of-file and exits, and so does every
//! idle spare; monitors live on, as they do when they were exec'd.

use super::host_sandbox::Ahead;
use super::Early;
use crate::state::{self, ExecDir, RequestRecord};
use std::ffi::OsStr;
use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use nix::sys::socket::{
    recvmsg, sendmsg, socketpair, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags,
    SockFlag, SockType,
};

/// Set in the plugin's environment, every launch loses the server's answer after the monitor
/// was forked: the self-test of the plugin finding a monitor it was not told about.
pub const SELFTEST_LOSE_ANSWER: &str = "EXECUTOR_PLUGIN_SELFTEST_LOSE_LAUNCH_ANSWER";

/// Longest execution directory path accepted (PATH_MAX).
const MAX_PATH: usize = 4096;

static INSTALLED: OnceLock<Launcher> = OnceLock::new();

/// Make `launcher` the one this process uses; a second call is ignored.
pub fn install(launcher: Launcher) {
    let _ = INSTALLED.set(launcher);
}

/// The installed launcher, if the plugin started one.
pub fn installed() -> Option<&'static Launcher> {
    INSTALLED.get()
}

/// The plugin's end of the fork server.
pub struct Launcher {
    /// One request/answer pair at a time: the answer must match its request.
    conn: Mutex<ServerLink>,
    pid: i32,
}

/// The server's socket, and the spare it forked for the next start.
struct ServerLink {
    server: OwnedFd,
    spare: Option<Spare>,
    /// A spare was asked for and the server's answer is not read yet.
    asked: bool,
}

/// What a message to the server asks for: a monitor for the execution directory that follows
/// (with its standard descriptors), or a spare (the directory that follows, if any, is a
/// started execution to learn the host from).
const ASK_MONITOR: u8 = b'M';
const ASK_SPARE: u8 = b'S';

impl ServerLink {
    /// Ask the server for the next spare; its answer is read at the next start ([`collect`]).
    fn ask_spare(&mut self, learn_from: &[u8]) {
        let msg = request(ASK_SPARE, learn_from);
        let sent = sendmsg::<()>(
            self.server.as_raw_fd(),
            &[IoSlice::new(&msg)],
            &[],
            MsgFlags::MSG_NOSIGNAL,
            None,
        );
        // A server that is gone shows at the next request for a monitor.
        self.asked = sent.is_ok();
    }

    /// The spare asked for, once the server has answered (it forks it at once, long before
    /// the next start as a rule).
    fn collect(&mut self) {
        if !std::mem::take(&mut self.asked) {
            return;
        }
        let Ok((answer, fds)) = recv(self.server.as_raw_fd(), 8) else {
            return;
        };
        let Ok([pidfd, sock]) = <[OwnedFd; 2]>::try_from(fds) else {
            return;
        };
        if let Some((pid, 0)) = answer_of(&answer) {
            self.spare = Some(Spare { pid, pidfd, sock });
        }
    }
}

/// A monitor the server started.
pub struct ForkedMonitor {
    pub pid: i32,
    /// Names the monitor for good (it is not our child, so its pid alone could be reused).
    pub pidfd: OwnedFd,
}

#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// The server could not fork the monitor (the errno of its fork or pidfd_open).
    #[error("forking the execution monitor: {0}")]
    Fork(io::Error),
    /// The server is gone: it never got the request, so no monitor was started.
    #[error("the monitor fork server is gone: {0}")]
    Unavailable(io::Error),
    /// The server got the request but its answer was lost or garbled: a monitor may exist.
    #[error("the monitor fork server did not answer: {0}")]
    Server(io::Error),
}

impl Launcher {
    /// Fork the server.
    ///
    /// # Safety
    /// The process must be single-threaded: the child runs on after `fork` and allocates.
    pub unsafe fn start() -> io::Result<Launcher> {
        let (ours, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .map_err(io::Error::from)?;
        // SAFETY: single-threaded per this function's contract.
        match unsafe { libc::fork() } {
            -1 => Err(io::Error::last_os_error()),
            0 => {
                drop(ours);
                serve(theirs)
            }
            pid => {
                drop(theirs);
                let mut conn = ServerLink {
                    server: ours,
                    spare: None,
                    asked: false,
                };
                conn.ask_spare(&[]);
                Ok(Launcher {
                    conn: Mutex::new(conn),
                    pid,
                })
            }
        }
    }

    /// Start a monitor for the execution directory `dir` with the given standard descriptors.
    pub fn launch(
        &self,
        dir: &Path,
        stdin: BorrowedFd<'_>,
        stdout: BorrowedFd<'_>,
        stderr: BorrowedFd<'_>,
    ) -> Result<ForkedMonitor, LaunchError> {
        let path = dir.as_os_str().as_bytes();
        if path.is_empty() || path.len() > MAX_PATH || path.contains(&0) {
            return Err(LaunchError::Fork(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("unusable execution directory {}", dir.display()),
            )));
        }
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let fds = [stdin.as_raw_fd(), stdout.as_raw_fd(), stderr.as_raw_fd()];
        conn.collect();
        // Straight to the spare the server forked ahead: no process in between.
        if let Some(spare) = conn.spare.take() {
            if let Ok((pid, pidfd)) = spare.hand(path, &fds) {
                conn.ask_spare(path);
                drop(conn);
                if std::env::var_os(SELFTEST_LOSE_ANSWER).is_some() {
                    return Err(LaunchError::Server(io::Error::other(
                        "answer lost (self-test)",
                    )));
                }
                return Ok(ForkedMonitor { pid, pidfd });
            }
            // It died idle: the server forks the monitor instead.
        }
        let msg = request(ASK_MONITOR, path);
        let cmsg = [ControlMessage::ScmRights(&fds)];
        if let Err(e) = sendmsg::<()>(
            conn.server.as_raw_fd(),
            &[IoSlice::new(&msg)],
            &cmsg,
            MsgFlags::MSG_NOSIGNAL,
            None,
        ) {
            // Gone: reap it (it is our child), so it does not stay a zombie.
            // SAFETY: waiting on our own child without blocking.
            unsafe { libc::waitpid(self.pid, std::ptr::null_mut(), libc::WNOHANG) };
            return Err(LaunchError::Unavailable(e.into()));
        }
        let (answer, fds) = recv(conn.server.as_raw_fd(), 8).map_err(LaunchError::Server)?;
        conn.ask_spare(path);
        drop(conn);
        if std::env::var_os(SELFTEST_LOSE_ANSWER).is_some() {
            // Self-test: the answer (and the pidfd with it) lost, as when this process is out
            // of descriptors; the monitor was forked all the same.
            return Err(LaunchError::Server(io::Error::other(
                "answer lost (self-test)",
            )));
        }
        let mut fds = fds.into_iter();
        let Some((pid, errno)) = answer_of(&answer) else {
            return Err(LaunchError::Server(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the fork server closed its socket",
            )));
        };
        if errno != 0 {
            return Err(LaunchError::Fork(io::Error::from_raw_os_error(errno)));
        }
        let pidfd = fds.next().ok_or_else(|| {
            LaunchError::Server(io::Error::other("the fork server sent no pidfd"))
        })?;
        Ok(ForkedMonitor { pid, pidfd })
    }
}

/// A request to the server: what it asks for, then the path.
fn request(ask: u8, path: &[u8]) -> Vec<u8> {
    let mut msg = Vec::with_capacity(1 + path.len());
    msg.push(ask);
    msg.extend_from_slice(path);
    msg
}

/// The server's answer: a pid and an errno (0: none).
fn answer(pid: i32, errno: i32) -> [u8; 8] {
    let mut bytes = [0u8; 8];
    bytes[..4].copy_from_slice(&pid.to_ne_bytes());
    bytes[4..].copy_from_slice(&errno.to_ne_bytes());
    bytes
}

/// (pid, errno) of an [`answer`]; `None` for anything else (end-of-file).
fn answer_of(bytes: &[u8]) -> Option<(i32, i32)> {
    let bytes: &[u8; 8] = bytes.try_into().ok()?;
    let word = |i: usize| i32::from_ne_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
    Some((word(0), word(4)))
}

/// Receive one message of at most `max` bytes and the descriptors that came with it (owned, and
/// close-on-exec). An empty message means end-of-file.
fn recv(sock: RawFd, max: usize) -> io::Result<(Vec<u8>, Vec<OwnedFd>)> {
    let mut buf = vec![0u8; max];
    let mut space = nix::cmsg_space!([RawFd; 3]);
    let (len, fds) = {
        let mut iov = [IoSliceMut::new(&mut buf)];
        let msg = recvmsg::<()>(sock, &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)
            .map_err(io::Error::from)?;
        let mut fds = Vec::new();
        for c in msg.cmsgs().map_err(io::Error::from)? {
            if let ControlMessageOwned::ScmRights(raw) = c {
                // SAFETY: the kernel just installed these descriptors for us.
                fds.extend(
                    raw.into_iter()
                        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                );
            }
        }
        if msg.flags.contains(MsgFlags::MSG_TRUNC) || msg.flags.contains(MsgFlags::MSG_CTRUNC) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "a truncated fork-server message",
            ));
        }
        (msg.bytes, fds)
    };
    buf.truncate(len);
    Ok((buf, fds))
}

/// The server's loop. Never returns.
fn serve(sock: OwnedFd) -> ! {
    // Hold none of the plugin's descriptors — above all not the host's pipes, whose end-of-file
    // tells the host the plugin is gone.
    // SAFETY: plain syscalls on descriptors of this (now single-threaded) process.
    unsafe {
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        if null >= 0 {
            for fd in 0..3 {
                libc::dup2(null, fd);
            }
            if null > 2 {
                libc::close(null);
            }
        }
    }
    let sock = keep_only(sock);
    let sigchld = match sigchld_fd() {
        Ok(fd) => fd,
        // SAFETY: leaving without running the plugin's destructors.
        Err(_) => unsafe { libc::_exit(1) },
    };
    // What the next monitors need to know about the host, learnt here from started executions
    // (off every start's path) until there is nothing more to learn, is theirs from birth.
    // A host where some of it cannot be learnt (no usable cgroups, no private roots) stops
    // being asked after a few executions: each lesson delays the next spare a little.
    let mut lessons = 0;
    let mut learn = |path: &[u8]| {
        if path.is_empty() || lessons >= 8 || super::host_sandbox::HostSandbox::learnt_all() {
            return;
        }
        let dir = ExecDir::at(PathBuf::from(OsStr::from_bytes(path)));
        if let Ok(record) = state::read_json::<RequestRecord>(&dir.request()) {
            super::host_sandbox::HostSandbox::warm(&record.monitor);
            lessons += 1;
        }
    };
    loop {
        let mut pfd = [
            libc::pollfd {
                fd: sock.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: sigchld.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: two valid pollfd entries.
        let n = unsafe { libc::poll(pfd.as_mut_ptr(), 2, -1) };
        if n < 0 {
            if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            // SAFETY: as above.
            unsafe { libc::_exit(1) };
        }
        if pfd[1].revents != 0 {
            drain(sigchld.as_raw_fd());
            reap();
        }
        if pfd[0].revents == 0 {
            continue;
        }
        let (msg, fds) = match recv(sock.as_raw_fd(), MAX_PATH + 1) {
            Ok((msg, _)) if msg.is_empty() => break,
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        let (ask, path) = msg.split_first().map_or((0, &[][..]), |(a, p)| (*a, p));
        let (pid, errno, give): (i32, i32, Vec<OwnedFd>) = match ask {
            ASK_MONITOR => match <[OwnedFd; 3]>::try_from(fds) {
                Ok(stdio) => {
                    let (pid, errno, pidfd) =
                        fork_monitor(Path::new(OsStr::from_bytes(path)), stdio, &sock);
                    (pid, errno, pidfd.into_iter().collect())
                }
                Err(_) => (0, libc::EINVAL, Vec::new()),
            },
            ASK_SPARE => {
                drop(fds);
                learn(path);
                match fork_spare(&sock) {
                    Some(s) => (s.pid, 0, vec![s.pidfd, s.sock]),
                    None => (0, libc::EAGAIN, Vec::new()),
                }
            }
            _ => (0, libc::EINVAL, Vec::new()),
        };
        let reply = answer(pid, errno);
        let raw: Vec<RawFd> = give.iter().map(|f| f.as_raw_fd()).collect();
        let cmsg = [ControlMessage::ScmRights(&raw)];
        let cmsgs: &[ControlMessage] = if raw.is_empty() { &[] } else { &cmsg };
        let sent = sendmsg::<()>(
            sock.as_raw_fd(),
            &[IoSlice::new(&reply)],
            cmsgs,
            MsgFlags::MSG_NOSIGNAL,
            None,
        );
        // The plugin's now: not ours to keep, nor the next spare's to inherit.
        drop(give);
        if sent.is_err() {
            break;
        }
        reap();
        if ask == ASK_MONITOR && pid != 0 {
            learn(path);
        }
    }
    // SAFETY: leaving without running the plugin's destructors (its runtime is not ours).
    unsafe { libc::_exit(0) }
}

/// Fork one monitor. Returns (pid, 0, pidfd) or (0, errno, None).
fn fork_monitor(dir: &Path, stdio: [OwnedFd; 3], sock: &OwnedFd) -> (i32, i32, Option<OwnedFd>) {
    let dir: PathBuf = dir.to_path_buf();
    // The child waits at this gate until we hold its pidfd: if we cannot get one, it must not
    // have created a cgroup or started a job by the time it is killed.
    let (gate_r, gate_w) = match crate::fds::pipe2(libc::O_CLOEXEC) {
        Ok(gate) => gate,
        Err(e) => return (0, e.raw_os_error().unwrap_or(libc::EIO), None),
    };
    // SAFETY: this server is single-threaded.
    match unsafe { libc::fork() } {
        -1 => (0, errno(), None),
        0 => {
            drop(gate_w);
            let mut go = [0u8; 1];
            let n = loop {
                // SAFETY: reading one byte into a local buffer.
                let n = unsafe { libc::read(gate_r.as_raw_fd(), go.as_mut_ptr().cast(), 1) };
                if n >= 0 || io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
                    break n;
                }
            };
            if n != 1 {
                // The server could not watch us: do nothing.
                // SAFETY: leaving at once.
                unsafe { libc::_exit(1) };
            }
            drop(gate_r);
            // SAFETY: the server's socket is not the monitor's to hold.
            unsafe { libc::close(sock.as_raw_fd()) };
            become_monitor(dir, &stdio, Ahead::default(), Early::default())
        }
        pid => {
            drop(stdio);
            drop(gate_r);
            // Not reaped before this: the pid still names our child.
            match super::pidfd::open(pid) {
                Ok(fd) => {
                    // SAFETY: writing one byte from a local buffer; the gate closes after.
                    unsafe { libc::write(gate_w.as_raw_fd(), b"g".as_ptr().cast(), 1) };
                    (pid, 0, Some(fd))
                }
                Err(e) => {
                    // Still at the gate: it leaves when the gate closes; the kill makes sure.
                    // SAFETY: our child.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                    (0, e.raw_os_error().unwrap_or(libc::EIO), None)
                }
            }
        }
    }
}

/// In a forked child of the server: run the monitor of `dir` on the given standard descriptors,
/// then exit.
fn become_monitor(dir: PathBuf, stdio: &[OwnedFd; 3], ahead: Ahead, early: Early) -> ! {
    // SAFETY: the child owns copies of every descriptor; the standard ones are replaced by the
    // monitor's, and the monitor closes everything above 2 itself.
    unsafe {
        for (target, fd) in stdio.iter().enumerate() {
            libc::dup2(fd.as_raw_fd(), target as i32);
        }
        let empty = {
            let mut set = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
            libc::sigemptyset(set.as_mut_ptr());
            set.assume_init()
        };
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
    }
    let code = super::main_in_dir(dir, ahead, early);
    // SAFETY: the monitor's work is done and flushed; nothing of the plugin's may run.
    unsafe { libc::_exit(code) }
}

/// A monitor forked before its request, waiting on its own socket for the execution directory
/// and standard descriptors, which the plugin (holding the other end) sends it directly. Its
/// pidfd is held from the start, so, unlike a monitor forked for a request, it needs no gate.
struct Spare {
    pid: i32,
    pidfd: OwnedFd,
    sock: OwnedFd,
}

/// Fork a spare; `None` when that fails (the next request then forks its own monitor).
fn fork_spare(server: &OwnedFd) -> Option<Spare> {
    let (ours, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .ok()?;
    // SAFETY: this server is single-threaded.
    match unsafe { libc::fork() } {
        -1 => None,
        0 => {
            drop(ours);
            // SAFETY: the server's socket is not ours to hold; a name that tells spares apart in
            // `ps` (a spare carries the plugin's command line until it becomes a monitor).
            unsafe {
                libc::close(server.as_raw_fd());
                libc::prctl(libc::PR_SET_NAME, c"exec-spare".as_ptr(), 0, 0, 0);
            }
            // While it waits, the spare makes what it can of a job's sandbox ahead; made again
            // now and then, so that it never hands a job the host as it was long ago.
            let early = Early::now();
            // Made ahead only if no request is waiting already (starts arriving faster than
            // spares): then making it first would only delay that start, which assembles its
            // sandbox itself.
            let mut ahead = if wait_readable(&theirs, 0) {
                Ahead::default()
            } else {
                Ahead::prepare()
            };
            let (path, fds) = loop {
                if !wait_readable(&theirs, AHEAD_RENEW_MS) {
                    if ahead.renewable() {
                        drop(ahead);
                        ahead = Ahead::prepare();
                    }
                    continue;
                }
                let code = match recv(theirs.as_raw_fd(), MAX_PATH + 1) {
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Ok((path, fds)) if !path.is_empty() => break (path, fds),
                    // The plugin is gone: there is nothing to do.
                    Ok(_) => 0,
                    // A request we could not take whole (out of descriptors): the plugin sees
                    // this monitor exit without a report and fails the execution.
                    Err(_) => 1,
                };
                drop(ahead);
                // SAFETY: leaving without running the plugin's destructors.
                unsafe { libc::_exit(code) }
            };
            drop(theirs);
            match <[OwnedFd; 3]>::try_from(fds) {
                Ok(stdio) => become_monitor(
                    PathBuf::from(OsStr::from_bytes(&path)),
                    &stdio,
                    ahead,
                    early,
                ),
                Err(_) => {
                    drop(ahead);
                    // SAFETY: as above.
                    unsafe { libc::_exit(1) }
                }
            }
        }
        pid => {
            drop(theirs);
            // Not reaped before this: the pid still names our child.
            match super::pidfd::open(pid) {
                Ok(pidfd) => Some(Spare {
                    pid,
                    pidfd,
                    sock: ours,
                }),
                Err(_) => {
                    // SAFETY: our child, still waiting for a request it will never get.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                    None
                }
            }
        }
    }
}

impl Spare {
    /// Give the spare its execution: (pid, pidfd) of the monitor it now is, or the error when
    /// it is gone (its end of the socket closed with it).
    fn hand(self, path: &[u8], stdio: &[RawFd; 3]) -> io::Result<(i32, OwnedFd)> {
        let sent = sendmsg::<()>(
            self.sock.as_raw_fd(),
            &[IoSlice::new(path)],
            &[ControlMessage::ScmRights(stdio)],
            MsgFlags::MSG_NOSIGNAL,
            None,
        );
        match sent {
            Ok(_) => Ok((self.pid, self.pidfd)),
            Err(e) => {
                let _ = super::pidfd::send_signal(&self.pidfd, libc::SIGKILL);
                Err(e.into())
            }
        }
    }
}

/// How long a spare keeps what it made ahead before making it again.
const AHEAD_RENEW_MS: libc::c_int = 30_000;

/// Whether `fd` became readable (or hung up) within `timeout_ms`; false on timeout. An
/// interrupted poll is retried (each time with the whole timeout: a signal can only delay the
/// renewal); a failed one counts as readable, and the read that follows tells.
fn wait_readable(fd: &OwnedFd, timeout_ms: libc::c_int) -> bool {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    loop {
        // SAFETY: one valid pollfd entry.
        match unsafe { libc::poll(&mut pfd, 1, timeout_ms) } {
            0 => return false,
            n if n > 0 => return true,
            _ if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted => continue,
            _ => return true,
        }
    }
}

fn errno() -> i32 {
    io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

/// Move the socket to fd 3 and close everything else above the standard descriptors.
fn keep_only(sock: OwnedFd) -> OwnedFd {
    let raw = sock.as_raw_fd();
    // SAFETY: dup2 to a fixed number, then closing every other inherited descriptor; nothing in
    // this process uses them (the plugin's runtime does not exist here).
    unsafe {
        let fd = if raw == 3 {
            std::mem::forget(sock);
            3
        } else {
            let fd = libc::dup2(raw, 3);
            drop(sock);
            if fd < 0 {
                libc::_exit(1);
            }
            fd
        };
        libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
        if !crate::fds::close_range_except(4, &mut []) {
            for other in 4..1024 {
                libc::close(other);
            }
        }
        OwnedFd::from_raw_fd(fd)
    }
}

/// SIGCHLD as a descriptor, so the loop reaps exited monitors as soon as they exit.
fn sigchld_fd() -> io::Result<OwnedFd> {
    // SAFETY: a valid sigset; blocking SIGCHLD so the signalfd receives it.
    unsafe {
        let mut set = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
        libc::sigemptyset(set.as_mut_ptr());
        libc::sigaddset(set.as_mut_ptr(), libc::SIGCHLD);
        let set = set.assume_init();
        if libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) < 0 {
            return Err(io::Error::last_os_error());
        }
        let fd = libc::signalfd(-1, &set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(OwnedFd::from_raw_fd(fd))
    }
}

fn drain(fd: RawFd) {
    let mut buf = [0u8; 128 * 8];
    // SAFETY: reading into a local buffer from a non-blocking descriptor.
    while unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) } > 0 {}
}

fn reap() {
    let mut status = 0;
    loop {
        // SAFETY: reaping our own children without blocking.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid <= 0 {
            break;
        }
        Ahead::remove_left(pid);
    }
}
