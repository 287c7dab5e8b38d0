//! The job's system-call filter and its own session keyring, the last steps before exec.
//!
//! The filter is a deny-list, not an allow-list: ordinary programs keep every call they use,
//! and what is refused is the kernel attack surface and the reach into other processes that a
//! batch job has no need for. The list follows what Docker's default profile refuses a
//! container without capabilities: new namespaces (`unshare`, `clone` with a `CLONE_NEW*` flag,
//! `setns`; `clone3`, whose flags sit behind a pointer a filter cannot read, answers ENOSYS so
//! libc falls back to `clone`), the keyrings, tracing and reading other processes, BPF, perf
//! events, `userfaultfd`, io_uring, mounting, modules, reboot and kexec, the clock, swap and
//! accounting, and the kernel crypto and vsock sockets. Refused calls fail with EPERM, as
//! they do for an unprivileged process, so programs take their usual fallbacks. Beyond Docker's
//! list, a mode with the setuid or setgid bit is refused (see [`MODE_ARG`]; `openat2` answers
//! ENOSYS, as `clone3` does).
//!
//! The programs are compiled in the monitor before the job is cloned (the child may not
//! allocate); the child only hands them to the kernel.

use std::io;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// Why the filter could not be compiled (a bug in the rules, or an architecture we do not know).
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("no system-call filter for the architecture {0}")]
    Arch(&'static str),
    #[error("compiling the job's system-call filter: {0}")]
    Compile(#[from] seccompiler::BackendError),
}

/// Every `CLONE_NEW*` flag `clone` takes (its low byte is the exit signal, so `CLONE_NEWTIME`,
/// 0x80, is only a namespace flag for `unshare` and `clone3`).
const CLONE_NAMESPACES: [u64; 7] = [
    libc::CLONE_NEWNS as u64,
    libc::CLONE_NEWCGROUP as u64,
    libc::CLONE_NEWUTS as u64,
    libc::CLONE_NEWIPC as u64,
    libc::CLONE_NEWUSER as u64,
    libc::CLONE_NEWPID as u64,
    libc::CLONE_NEWNET as u64,
];

/// `CLONE_NEWTIME`, which libc does not name on every target.
const CLONE_NEWTIME: u64 = 0x80;

/// Calls refused whatever their arguments.
const DENIED: &[libc::c_long] = &[
    // Namespaces.
    libc::SYS_setns,
    // Keyrings: a job has no business with the kernel's key store, and the user keyring of a
    // uid outlives the job that used it.
    libc::SYS_keyctl,
    libc::SYS_add_key,
    libc::SYS_request_key,
    // Reaching into other processes.
    libc::SYS_ptrace,
    libc::SYS_process_vm_readv,
    libc::SYS_process_vm_writev,
    libc::SYS_process_madvise,
    libc::SYS_pidfd_getfd,
    libc::SYS_kcmp,
    // Kernel attack surface without a use in a batch job.
    libc::SYS_bpf,
    libc::SYS_perf_event_open,
    libc::SYS_userfaultfd,
    libc::SYS_io_uring_setup,
    libc::SYS_io_uring_enter,
    libc::SYS_io_uring_register,
    libc::SYS_open_by_handle_at,
    libc::SYS_fanotify_init,
    libc::SYS_lookup_dcookie,
    libc::SYS_syslog,
    // Mounts and roots.
    libc::SYS_mount,
    libc::SYS_umount2,
    libc::SYS_pivot_root,
    libc::SYS_chroot,
    libc::SYS_open_tree,
    libc::SYS_move_mount,
    libc::SYS_fsopen,
    libc::SYS_fsconfig,
    libc::SYS_fsmount,
    libc::SYS_fspick,
    libc::SYS_mount_setattr,
    // The machine itself.
    libc::SYS_init_module,
    libc::SYS_finit_module,
    libc::SYS_delete_module,
    libc::SYS_kexec_load,
    libc::SYS_kexec_file_load,
    libc::SYS_reboot,
    libc::SYS_swapon,
    libc::SYS_swapoff,
    libc::SYS_acct,
    libc::SYS_quotactl,
    libc::SYS_quotactl_fd,
    libc::SYS_settimeofday,
    libc::SYS_clock_settime,
    libc::SYS_sethostname,
    libc::SYS_setdomainname,
    libc::SYS_vhangup,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_iopl,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_ioperm,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_uselib,
    #[cfg(target_arch = "x86_64")]
    libc::SYS__sysctl,
];

/// `fchmodat2` (Linux 6.6), the same number on every architecture; libc does not name it on all.
const SYS_FCHMODAT2: libc::c_long = 452;

/// Calls that set a file's mode, with the index of their mode argument. A mode with the setuid
/// or setgid bit is refused: a job writing into host data (a writable input) must not leave a
/// file there that runs as its uid, which goes back to the pool and is the next job's. Inside
/// the job the binds are nosuid, so nothing a job runs loses by this. `openat2`, whose mode
/// sits behind a pointer, answers ENOSYS instead (libc's `open` does not use it).
const MODE_ARG: &[(libc::c_long, u8)] = &[
    #[cfg(target_arch = "x86_64")]
    (libc::SYS_chmod, 1),
    #[cfg(target_arch = "x86_64")]
    (libc::SYS_open, 2),
    #[cfg(target_arch = "x86_64")]
    (libc::SYS_creat, 1),
    #[cfg(target_arch = "x86_64")]
    (libc::SYS_mknod, 1),
    (libc::SYS_fchmod, 1),
    (libc::SYS_fchmodat, 2),
    (SYS_FCHMODAT2, 2),
    (libc::SYS_openat, 3),
    (libc::SYS_mknodat, 2),
];

/// The mode bits [`MODE_ARG`] refuses.
const SET_ID_BITS: [u64; 2] = [libc::S_ISUID as u64, libc::S_ISGID as u64];

/// Socket families refused: the kernel crypto API and vsock.
const DENIED_SOCKET_FAMILIES: [libc::c_int; 2] = [libc::AF_ALG, libc::AF_VSOCK];

/// The compiled programs, in the order they are installed.
#[derive(Debug, Clone)]
pub struct JobFilter {
    programs: Vec<Vec<libc::sock_filter>>,
}

fn arch() -> Result<TargetArch, SeccompError> {
    let name = std::env::consts::ARCH;
    TargetArch::try_from(name).map_err(|_| SeccompError::Arch(name))
}

/// `(arg & flag) == flag` on a 64-bit argument.
fn has_flag(arg: u8, flag: u64) -> Result<SeccompRule, SeccompError> {
    Ok(SeccompRule::new(vec![SeccompCondition::new(
        arg,
        SeccompCmpArgLen::Qword,
        SeccompCmpOp::MaskedEq(flag),
        flag,
    )?])?)
}

fn to_libc(program: BpfProgram) -> Vec<libc::sock_filter> {
    program
        .into_iter()
        .map(|i| libc::sock_filter {
            code: i.code,
            jt: i.jt,
            jf: i.jf,
            k: i.k,
        })
        .collect()
}

impl JobFilter {
    /// Compile the filter for this machine's architecture.
    pub fn new() -> Result<JobFilter, SeccompError> {
        // seccompiler keys rules by i64 syscall numbers: the `c_long` of the 64-bit
        // architectures it knows.
        let arch = arch()?;
        let mut eperm: std::collections::BTreeMap<i64, Vec<SeccompRule>> =
            DENIED.iter().map(|&nr| (nr, Vec::new())).collect();
        // The namespace flags are argument 0 of both on x86_64 and aarch64 (s390 differs, and
        // is not an architecture seccompiler knows).
        eperm.insert(
            libc::SYS_clone,
            CLONE_NAMESPACES
                .iter()
                .map(|&f| has_flag(0, f))
                .collect::<Result<_, _>>()?,
        );
        eperm.insert(
            libc::SYS_unshare,
            CLONE_NAMESPACES
                .iter()
                .chain(std::iter::once(&CLONE_NEWTIME))
                .map(|&f| has_flag(0, f))
                .collect::<Result<_, _>>()?,
        );
        eperm.insert(
            libc::SYS_socket,
            DENIED_SOCKET_FAMILIES
                .iter()
                .map(|&family| {
                    Ok(SeccompRule::new(vec![SeccompCondition::new(
                        0,
                        SeccompCmpArgLen::Dword,
                        SeccompCmpOp::Eq,
                        family as u64,
                    )?])?)
                })
                .collect::<Result<_, SeccompError>>()?,
        );
        for &(nr, arg) in MODE_ARG {
            eperm.insert(
                nr,
                SET_ID_BITS
                    .iter()
                    .map(|&bit| has_flag(arg, bit))
                    .collect::<Result<_, _>>()?,
            );
        }
        let eperm = SeccompFilter::new(
            eperm,
            SeccompAction::Allow,
            SeccompAction::Errno(libc::EPERM as u32),
            arch,
        )?;
        let enosys = SeccompFilter::new(
            [
                (libc::SYS_clone3, Vec::new()),
                (libc::SYS_openat2, Vec::new()),
            ]
            .into_iter()
            .collect(),
            SeccompAction::Allow,
            SeccompAction::Errno(libc::ENOSYS as u32),
            arch,
        )?;
        let mut programs = Vec::new();
        if let Some(x32) = x32_filter() {
            programs.push(x32);
        }
        programs.push(to_libc(BpfProgram::try_from(enosys)?));
        programs.push(to_libc(BpfProgram::try_from(eperm)?));
        Ok(JobFilter { programs })
    }

    /// In the job, last before exec: `no_new_privs` (needed to install a filter without
    /// privilege, and set already when the sandbox ran) and the programs. Async-signal-safe:
    /// two raw system calls per program over memory prepared before the fork.
    pub fn apply(&self) -> io::Result<()> {
        // SAFETY: prctl with integer arguments.
        if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
            return Err(io::Error::last_os_error());
        }
        for program in &self.programs {
            let prog = libc::sock_fprog {
                len: program.len() as libc::c_ushort,
                filter: program.as_ptr() as *mut libc::sock_filter,
            };
            // SAFETY: the kernel copies the program in; `prog` and the instructions it points
            // at live for the call.
            let rc = unsafe {
                libc::syscall(
                    libc::SYS_seccomp,
                    libc::SECCOMP_SET_MODE_FILTER,
                    0,
                    &prog as *const libc::sock_fprog,
                )
            };
            if rc != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    }
}

/// On x86_64, calls of the x32 ABI (numbers with bit 30 set) carry the same audit architecture
/// as native ones, so a deny-list keyed by native numbers would not see them: every one is
/// refused with ENOSYS, as on a kernel built without x32. seccompiler matches numbers only by
/// equality, hence four hand-written instructions.
fn x32_filter() -> Option<Vec<libc::sock_filter>> {
    if !cfg!(target_arch = "x86_64") {
        return None;
    }
    const X32_SYSCALL_BIT: u32 = 0x4000_0000;
    let stmt = |code: u32, k: u32| libc::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    };
    Some(vec![
        // A = seccomp_data.nr (offset 0).
        stmt(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, 0),
        // if (A & X32_SYSCALL_BIT) fall through to ENOSYS, else skip it.
        libc::sock_filter {
            code: (libc::BPF_JMP | libc::BPF_JSET | libc::BPF_K) as u16,
            jt: 0,
            jf: 1,
            k: X32_SYSCALL_BIT,
        },
        stmt(
            libc::BPF_RET | libc::BPF_K,
            libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32,
        ),
        stmt(libc::BPF_RET | libc::BPF_K, libc::SECCOMP_RET_ALLOW),
    ])
}

/// Whether this kernel takes seccomp filters: `PR_GET_SECCOMP` fails with EINVAL on a kernel
/// built without seccomp.
pub fn supported() -> bool {
    // SAFETY: prctl with integer arguments; it only reads our own mode.
    unsafe { libc::prctl(libc::PR_GET_SECCOMP, 0, 0, 0, 0) >= 0 }
}

/// Whether this process can reach the kernel's keyrings at all: not on a kernel built without
/// them (ENOSYS), nor under a filter of our own that refuses `keyctl` (EPERM, e.g. a container
/// runtime's profile). A job inherits both, so where we cannot, it cannot either.
pub fn keyrings_reachable() -> bool {
    // SAFETY: keyctl with integer arguments; GET_KEYRING_ID without "create" only looks up.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_keyctl,
            libc::KEYCTL_GET_KEYRING_ID as libc::c_long,
            libc::KEY_SPEC_SESSION_KEYRING as libc::c_long,
            0 as libc::c_long,
        )
    };
    !(rc < 0
        && matches!(
            io::Error::last_os_error().raw_os_error(),
            Some(libc::ENOSYS) | Some(libc::EPERM)
        ))
}

/// In the job: leave the session keyring inherited from the plugin (where the host's keys may
/// be, and every other job's) for a fresh, empty, anonymous one. Done while still root, as
/// runc does: the keyring is charged to root's key quota rather than to a job uid's small one
/// (shared by every job where `runAsUser` is configured); the job possesses it all the same, and
/// no other job does. Async-signal-safe: one raw system call.
pub fn join_fresh_session_keyring() -> io::Result<()> {
    // SAFETY: keyctl with a null name: the kernel reads no memory of ours.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_keyctl,
            libc::KEYCTL_JOIN_SESSION_KEYRING as libc::c_long,
            std::ptr::null::<libc::c_char>(),
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filter_compiles_for_this_machine() {
        let f = JobFilter::new().expect("filter");
        assert!(f.programs.iter().all(|p| !p.is_empty() && p.len() < 4096));
    }
}
