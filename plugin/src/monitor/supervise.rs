//! The monitor's event loop: one poll(2) over the job's two pipes and the signalfd, with the
//! deadline, the grace period and the drain as timers. Nothing here grows with the output.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use super::signals::SignalFd;
use super::spawn::JobSandbox;
use super::tree;
use super::JobLog;
use crate::results::OutputSink;

const CHUNK: usize = 64 * 1024;
/// Reads per pipe per wakeup, so one busy stream cannot starve the other or the signals.
const READS_PER_WAKEUP: usize = 16;
/// How often to re-scan for processes that forked while the tree was being killed.
const REKILL_EVERY: Duration = Duration::from_millis(20);
/// How long to keep reading pipes whose writers are all dead yet never reach EOF (a descriptor
/// passed outside the tree): a result must never wait on them for ever.
const DRAIN_GRACE: Duration = Duration::from_secs(2);
/// How long a job runs before its monitor gives back the pages start-up left resident (see
/// [`trim`]). Shorter jobs end first and never pay for it; a job still running by then is
/// likely to run much longer, so the one-off re-faults of the code the loop still uses are
/// nothing against the memory it holds for the job's lifetime.
const TRIM_AFTER: Duration = Duration::from_secs(1);

mod trim;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Stop {
    Cancelled,
    Deadline(f64),
}

#[derive(Debug, Default)]
pub struct Outcome {
    /// Raw wait status of the job's main process.
    pub main_status: Option<i32>,
    pub stop: Option<Stop>,
    /// The tree had to be SIGKILLed after the grace period.
    pub killed_after_grace: bool,
    /// The pipes were closed without EOF after the tree was dead.
    pub pipes_abandoned: bool,
}

pub struct Supervisor<'a> {
    pub job_pid: i32,
    pub sigfd: &'a SignalFd,
    /// stdout, stderr; None once at EOF.
    pub pipes: [Option<OwnedFd>; 2],
    pub sinks: &'a mut [OutputSink; 2],
    pub log: &'a mut dyn JobLog,
    pub sandbox: &'a mut dyn JobSandbox,
    pub deadline: Option<(Instant, f64)>,
    pub grace: Duration,
}

impl Supervisor<'_> {
    pub fn run(mut self) -> io::Result<Outcome> {
        for fd in self.pipes.iter().flatten() {
            set_nonblocking(fd)?;
        }
        let mut out = Outcome::default();
        let mut buf = vec![0u8; CHUNK];
        let mut kill_at: Option<Instant> = None;
        let mut tree_killed = false;
        let mut last_kill = Instant::now();
        let mut drain_until: Option<Instant> = None;
        let mut trim_at = Some(Instant::now() + TRIM_AFTER);

        loop {
            while let Some(sig) = self.sigfd.next()? {
                if sig != libc::SIGCHLD && out.stop.is_none() && out.main_status.is_none() {
                    self.begin_stop(&mut out, Stop::Cancelled, &mut kill_at);
                }
            }
            let mut children_remain = self.reap(&mut out);
            let now = Instant::now();
            if let Some((at, secs)) = self.deadline {
                if now >= at && out.stop.is_none() && out.main_status.is_none() {
                    self.begin_stop(&mut out, Stop::Deadline(secs), &mut kill_at);
                }
            }
            let grace_over = kill_at.is_some_and(|k| now >= k);
            if !tree_killed && out.main_status.is_some() && !children_remain {
                // Nothing of the job is left: this monitor is its subreaper, so every process
                // it started, however orphaned, would still be our child. Nothing to kill, and
                // no cgroup to write to and read back on the way to the result.
                tree_killed = true;
            }
            if !tree_killed && (out.main_status.is_some() || grace_over) {
                if out.main_status.is_none() {
                    out.killed_after_grace = true;
                }
                self.kill_tree();
                tree_killed = true;
                last_kill = now;
                children_remain = self.reap(&mut out);
            } else if tree_killed && children_remain && now >= last_kill + REKILL_EVERY {
                self.kill_tree();
                last_kill = now;
            }

            let mut timeout: Option<Instant> = None;
            if out.main_status.is_some() && !children_remain {
                if self.pipes.iter().all(Option::is_none) {
                    break;
                }
                let until = *drain_until.get_or_insert(now + DRAIN_GRACE);
                if now >= until {
                    out.pipes_abandoned = true;
                    break;
                }
                timeout = Some(until);
            }
            if out.stop.is_none() && out.main_status.is_none() {
                if let Some((at, _)) = self.deadline {
                    timeout = earliest(timeout, at);
                }
            }
            if !tree_killed {
                if let Some(k) = kill_at {
                    timeout = earliest(timeout, k);
                }
            } else if children_remain {
                timeout = earliest(timeout, last_kill + REKILL_EVERY);
            }
            if let Some(at) = self.log.flush_at() {
                timeout = earliest(timeout, at);
            }
            if let Some(at) = trim_at {
                if out.stop.is_some() || out.main_status.is_some() {
                    // Ending anyway: the pages go with the process.
                    trim_at = None;
                } else if now >= at {
                    trim_at = None;
                    if let Err(e) = trim::give_back() {
                        eprintln!(
                            "monitor: giving back start-up memory (the job is unaffected): {e}"
                        );
                    }
                } else {
                    timeout = earliest(timeout, at);
                }
            }
            self.poll_once(timeout, &mut buf)?;
            self.log.flush_due(Instant::now());
        }
        Ok(out)
    }

    fn begin_stop(&mut self, out: &mut Outcome, why: Stop, kill_at: &mut Option<Instant>) {
        out.stop = Some(why);
        tree::signal_group(self.job_pid, libc::SIGTERM);
        *kill_at = Some(Instant::now() + self.grace);
    }

    fn kill_tree(&mut self) {
        if self.sandbox.kill_all() {
            // The cgroup took everything; walking all of /proc per monitor is what made
            // cancelling 1000 executions at once take seconds per hundred.
            tree::signal_group(self.job_pid, libc::SIGKILL);
        } else {
            tree::kill_descendants(Some(self.job_pid));
        }
    }

    /// Reap every exited child; true while any child remains.
    fn reap(&mut self, out: &mut Outcome) -> bool {
        loop {
            let mut status = 0;
            // SAFETY: plain syscall with a valid status pointer.
            let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
            if pid > 0 {
                if pid == self.job_pid {
                    out.main_status = Some(status);
                }
                continue;
            }
            if pid == 0 {
                return true;
            }
            match io::Error::last_os_error().raw_os_error() {
                Some(libc::EINTR) => continue,
                _ => return false, // ECHILD: nothing left
            }
        }
    }

    fn poll_once(&mut self, until: Option<Instant>, buf: &mut [u8]) -> io::Result<()> {
        let mut fds = vec![libc::pollfd {
            fd: self.sigfd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        let mut which = Vec::with_capacity(2);
        for (i, p) in self.pipes.iter().enumerate() {
            if let Some(fd) = p {
                fds.push(libc::pollfd {
                    fd: fd.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                });
                which.push(i);
            }
        }
        let timeout_ms = match until {
            None => -1,
            Some(t) => {
                let d = t.saturating_duration_since(Instant::now());
                // Round up so we never wake just before the timer and spin.
                d.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32
            }
        };
        // SAFETY: fds is a valid array of pollfd of the given length.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::Interrupted {
                Ok(())
            } else {
                Err(e)
            };
        }
        for (slot, &stream) in fds[1..].iter().zip(&which) {
            if slot.revents != 0 {
                self.read_pipe(stream, buf);
            }
        }
        Ok(())
    }

    fn read_pipe(&mut self, stream: usize, buf: &mut [u8]) {
        for _ in 0..READS_PER_WAKEUP {
            let Some(fd) = &self.pipes[stream] else {
                return;
            };
            // SAFETY: reading into a buffer we own, of its length.
            let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n > 0 {
                let data = &buf[..n as usize];
                self.log.write(stream, data);
                self.sinks[stream].write(data);
                continue;
            }
            if n < 0 {
                match io::Error::last_os_error().kind() {
                    io::ErrorKind::Interrupted => continue,
                    io::ErrorKind::WouldBlock => return,
                    _ => {}
                }
            }
            // EOF or a hard error: this stream is done.
            self.pipes[stream] = None;
            return;
        }
    }
}

fn earliest(a: Option<Instant>, b: Instant) -> Option<Instant> {
    Some(a.map_or(b, |a| a.min(b)))
}

fn set_nonblocking(fd: &OwnedFd) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor we own.
    unsafe {
        let flags = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}
