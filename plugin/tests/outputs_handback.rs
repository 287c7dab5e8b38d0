//! Handing outputs to a job's uid and back (issue 12, item 4): a racer swapping a directory for
//! a symlink during the walk never gets a file outside the outputs chowned; FIFOs, sockets and
//! device nodes are dropped, setuid/setgid bits cleared, symlinks and hard links left alone;
//! nesting past PATH_MAX is walked to the bottom.

mod common;

use std::ffi::CString;
use std::fs;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use executor_plugin::outputs::{hand_over, strip, Direction};

/// A scratch directory on tmpfs (`/tmp` can be a slow journal-less ext4 here).
fn scratch() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("handback-")
        .tempdir_in("/dev/shm")
        .or_else(|_| tempfile::tempdir())
        .unwrap()
}

fn give(results: &Path, name: &str, uid: u32, direction: Direction) {
    let dir = fs::File::open(results).unwrap();
    if let Err(e) = hand_over(dir.as_fd(), name, uid, uid, direction) {
        panic!("hand over {name}: {e}");
    }
}

fn exchange(dir: &fs::File, a: &str, b: &str) {
    let (a, b) = (CString::new(a).unwrap(), CString::new(b).unwrap());
    // SAFETY: renameat2 relative to a directory we hold, NUL-terminated names.
    unsafe {
        libc::renameat2(
            dir.as_raw_fd(),
            a.as_ptr(),
            dir.as_raw_fd(),
            b.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
}

#[test]
fn a_directory_swapped_for_a_symlink_during_the_walk_leads_nowhere() {
    if common::skip_unless_root("outputs_handback") {
        return;
    }
    const JOB: u32 = 4245;
    const ROUNDS: usize = 300;
    let base = scratch();
    let outside = base.path().join("outside");
    let results = base.path().join("results");
    let out = results.join("out");
    fs::create_dir_all(&outside).unwrap();
    fs::create_dir_all(out.join("d")).unwrap();
    // The same names inside and outside, so a walk that followed the swap finds them either way.
    for i in 0..40 {
        fs::write(outside.join(format!("f{i}")), "host").unwrap();
        fs::write(out.join("d").join(format!("f{i}")), "job").unwrap();
    }
    std::os::unix::fs::symlink(&outside, out.join("l")).unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let racer = {
        let stop = stop.clone();
        let out = fs::File::open(&out).unwrap();
        std::thread::spawn(move || {
            let mut swaps = 0u64;
            while !stop.load(Ordering::Relaxed) {
                exchange(&out, "d", "l");
                swaps += 1;
            }
            swaps
        })
    };
    let mut escaped_rounds = 0;
    for _ in 0..ROUNDS {
        let dir = fs::File::open(&results).unwrap();
        // Errors are allowed (entries vanish under the racer); escapes are not.
        let _ = hand_over(dir.as_fd(), "out", JOB, JOB, Direction::ToJob);
        let escaped = std::iter::once(outside.clone())
            .chain((0..40).map(|i| outside.join(format!("f{i}"))))
            .filter(|p| fs::symlink_metadata(p).unwrap().uid() != 0)
            .count();
        if escaped > 0 {
            escaped_rounds += 1;
            // Back to root for the next round.
            for e in fs::read_dir(&outside).unwrap() {
                std::os::unix::fs::lchown(e.unwrap().path(), Some(0), Some(0)).unwrap();
            }
            std::os::unix::fs::lchown(&outside, Some(0), Some(0)).unwrap();
        }
    }
    stop.store(true, Ordering::Relaxed);
    let swaps = racer.join().unwrap();
    println!(
        "{escaped_rounds} of {ROUNDS} walks chowned files outside the outputs ({swaps} swaps)"
    );
    assert_eq!(escaped_rounds, 0, "the walk followed a swapped-in symlink");
    // And without the racer the walk does its job.
    give(&results, "out", JOB, Direction::ToJob);
    for e in fs::read_dir(&out).unwrap() {
        let e = e.unwrap();
        assert_eq!(fs::symlink_metadata(e.path()).unwrap().uid(), JOB);
    }
}

#[test]
fn fifos_sockets_and_devices_are_dropped_and_special_bits_cleared() {
    if common::skip_unless_root("outputs_handback") {
        return;
    }
    const JOB: u32 = 4246;
    let base = scratch();
    let results = base.path().join("results");
    let out = results.join("out");
    let outside = base.path().join("outside");
    fs::create_dir_all(out.join("sub")).unwrap();
    fs::create_dir_all(&outside).unwrap();
    nix::unistd::mkfifo(
        &out.join("fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o666),
    )
    .unwrap();
    nix::unistd::mkfifo(
        &out.join("sub/fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o666),
    )
    .unwrap();
    let _sock = std::os::unix::net::UnixListener::bind(out.join("sock")).unwrap();
    let have_dev = nix::sys::stat::mknod(
        &out.join("null"),
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o666),
        nix::sys::stat::makedev(1, 3),
    )
    .is_ok();
    fs::write(out.join("suid"), "x").unwrap();
    fs::set_permissions(out.join("suid"), fs::Permissions::from_mode(0o6755)).unwrap();
    fs::write(out.join("sgid-noexec"), "x").unwrap();
    fs::set_permissions(out.join("sgid-noexec"), fs::Permissions::from_mode(0o2644)).unwrap();
    fs::set_permissions(out.join("sub"), fs::Permissions::from_mode(0o2775)).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", out.join("link")).unwrap();
    // A hard link to a host file (as a job could make where protected_hardlinks is off).
    let victim = outside.join("victim");
    fs::write(&victim, "host").unwrap();
    fs::set_permissions(&victim, fs::Permissions::from_mode(0o4755)).unwrap();
    fs::hard_link(&victim, out.join("hardlink")).unwrap();
    let passwd = fs::metadata("/etc/passwd").unwrap();

    give(&results, "out", JOB, Direction::ToJob);
    let gone = |name: &str| fs::symlink_metadata(out.join(name)).is_err();
    assert!(gone("fifo") && gone("sub/fifo"), "FIFOs are dropped");
    assert!(gone("sock"), "sockets are dropped");
    if have_dev {
        assert!(gone("null"), "device nodes are dropped");
    } else {
        println!("(no device node: mknod refused here)");
    }
    let mode = |name: &str| fs::symlink_metadata(out.join(name)).unwrap().mode() & 0o7777;
    assert_eq!(mode("suid"), 0o755);
    assert_eq!(mode("sgid-noexec"), 0o644);
    assert_eq!(mode("sub"), 0o775);
    let link = fs::symlink_metadata(out.join("link")).unwrap();
    assert!(link.file_type().is_symlink(), "symlinks stay symlinks");
    assert_eq!(link.uid(), JOB);
    let after = fs::metadata("/etc/passwd").unwrap();
    assert_eq!((after.uid(), after.mode()), (passwd.uid(), passwd.mode()));
    let v = fs::metadata(&victim).unwrap();
    assert_eq!(
        (v.uid(), v.mode() & 0o7777),
        (0, 0o4755),
        "hard link left alone"
    );
    assert_eq!(fs::metadata(out.join("sub")).unwrap().uid(), JOB);

    // The job's turn: it leaves a FIFO and a setuid file of its own, then gives them back.
    nix::unistd::mkfifo(
        &out.join("sub/late"),
        nix::sys::stat::Mode::from_bits_truncate(0o666),
    )
    .unwrap();
    std::os::unix::fs::lchown(out.join("sub/late"), Some(JOB), Some(JOB)).unwrap();
    fs::set_permissions(out.join("suid"), fs::Permissions::from_mode(0o4755)).unwrap();
    give(&results, "out", 0, Direction::ToHost { job_uid: JOB });
    assert!(gone("sub/late"), "the job's FIFO is dropped");
    assert_eq!(mode("suid"), 0o755);
    for name in ["suid", "sub", "link", "sgid-noexec", "."] {
        let m = fs::symlink_metadata(out.join(name)).unwrap();
        assert_eq!((m.uid(), m.gid()), (0, 0), "{name} is root's again");
    }
    let v = fs::metadata(&victim).unwrap();
    assert_eq!(
        (v.uid(), v.mode() & 0o7777),
        (0, 0o4755),
        "hard link left alone"
    );

    // A job without a uid of its own: its outputs keep their owner, and are only swept.
    nix::unistd::mkfifo(
        &out.join("sub/third"),
        nix::sys::stat::Mode::from_bits_truncate(0o666),
    )
    .unwrap();
    std::os::unix::fs::lchown(out.join("suid"), Some(JOB), Some(JOB)).unwrap();
    fs::set_permissions(out.join("suid"), fs::Permissions::from_mode(0o4755)).unwrap();
    give(&results, "out", 0, Direction::InPlace);
    assert!(gone("sub/third"), "FIFO dropped in place");
    assert_eq!(mode("suid"), 0o755);
    assert_eq!(fs::symlink_metadata(out.join("suid")).unwrap().uid(), JOB);
    let v = fs::metadata(&victim).unwrap();
    assert_eq!((v.uid(), v.mode() & 0o7777), (0, 0o4755));
}

/// `name` in `dir`, made and opened without a path (the chain is longer than PATH_MAX).
fn mkdir_open(dir: &OwnedFd, name: &CString) -> OwnedFd {
    // SAFETY: mkdirat/openat relative to a directory we hold, NUL-terminated name.
    unsafe {
        assert_eq!(libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), 0o755), 0);
        let fd = libc::openat(
            dir.as_raw_fd(),
            name.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        );
        assert!(fd >= 0, "{}", std::io::Error::last_os_error());
        OwnedFd::from_raw_fd(fd)
    }
}

fn owner_at(dir: &OwnedFd, name: &CString) -> u32 {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: fstatat into a stat buffer, relative to a directory we hold.
    let rc = unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            name.as_ptr(),
            st.as_mut_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    assert_eq!(rc, 0);
    // SAFETY: filled by fstatat.
    unsafe { st.assume_init() }.st_uid
}

/// Owners of every level of the chain and of the file at its bottom.
fn owners(out: &Path, name: &CString, depth: usize) -> Vec<u32> {
    let mut dir: OwnedFd = fs::File::open(out).unwrap().into();
    let mut got = Vec::new();
    for _ in 0..depth {
        got.push(owner_at(&dir, name));
        // SAFETY: openat relative to a directory we hold.
        let fd = unsafe {
            libc::openat(
                dir.as_raw_fd(),
                name.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        assert!(fd >= 0);
        // SAFETY: just opened.
        dir = unsafe { OwnedFd::from_raw_fd(fd) };
    }
    got.push(owner_at(&dir, &CString::new("bottom").unwrap()));
    got
}

#[test]
fn nesting_past_path_max_is_walked_to_the_bottom_both_ways() {
    if common::skip_unless_root("outputs_handback") {
        return;
    }
    const JOB: u32 = 4247;
    // 120 levels of 100-byte names: 12 000 bytes of path, and far more levels than the walk
    // keeps open, so it climbs back through `..`.
    const DEPTH: usize = 120;
    let base = scratch();
    let results = base.path().join("results");
    let out = results.join("out");
    fs::create_dir_all(&out).unwrap();
    let name = CString::new("n".repeat(100)).unwrap();
    let mut dir: OwnedFd = fs::File::open(&out).unwrap().into();
    let mut siblings = 0;
    for level in 0..DEPTH {
        let next = mkdir_open(&dir, &name);
        if level % 10 == 0 {
            // A sibling subtree at some levels, visited after the deep branch is climbed back.
            let side = CString::new(format!("side{level}")).unwrap();
            let s = mkdir_open(&dir, &side);
            // SAFETY: openat relative to a directory we hold.
            let f = unsafe {
                libc::openat(
                    s.as_raw_fd(),
                    c"file".as_ptr(),
                    libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC,
                    0o644,
                )
            };
            assert!(f >= 0);
            // SAFETY: just opened.
            drop(unsafe { OwnedFd::from_raw_fd(f) });
            siblings += 1;
        }
        dir = next;
    }
    // SAFETY: openat relative to a directory we hold.
    let f = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            c"bottom".as_ptr(),
            libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC,
            0o644,
        )
    };
    assert!(f >= 0);
    // SAFETY: just opened.
    drop(unsafe { OwnedFd::from_raw_fd(f) });
    drop(dir);

    let dir = fs::File::open(&results).unwrap();
    let done =
        hand_over(dir.as_fd(), "out", JOB, JOB, Direction::ToJob).unwrap_or_else(|e| panic!("{e}"));
    // out, DEPTH levels, the bottom file, and each sibling with its file.
    assert_eq!(done.entries, 1 + DEPTH as u64 + 1 + 2 * siblings);
    let got = owners(&out, &name, DEPTH);
    assert!(got.iter().all(|&u| u == JOB), "given to the job: {got:?}");
    hand_over(dir.as_fd(), "out", 0, 0, Direction::ToHost { job_uid: JOB })
        .unwrap_or_else(|e| panic!("{e}"));
    let got = owners(&out, &name, DEPTH);
    assert!(
        got.iter().all(|&u| u == 0),
        "nothing left to the job's uid: {got:?}"
    );
    // The tempdir's removal cannot take paths this long: remove level by level from the top.
    let _ = std::process::Command::new("rm")
        .arg("-rf")
        .arg(&out)
        .status();
}

/// A racer moving a deep directory between two places while the walk climbs back through `..`
/// (past the directories it keeps open): the walk notices, starts again or reports, ends, and
/// never touches anything outside the outputs.
#[test]
fn a_deep_tree_moved_during_the_walk_ends_the_walk_without_escaping() {
    if common::skip_unless_root("outputs_handback") {
        return;
    }
    const JOB: u32 = 4248;
    const ROUNDS: usize = 60;
    let base = scratch();
    let outside = base.path().join("outside");
    let results = base.path().join("results");
    let out = results.join("out");
    fs::create_dir_all(&outside).unwrap();
    fs::write(outside.join("host-file"), "host").unwrap();
    // out/a/<60 levels> and out/b/<60 levels>, plus a symlink to the outside at each level of
    // b's chain: the racer exchanges a's and b's chains at level 2.
    let name = CString::new("lvl").unwrap();
    for top in ["a", "b"] {
        fs::create_dir_all(out.join(top)).unwrap();
        let mut dir: OwnedFd = fs::File::open(out.join(top)).unwrap().into();
        for _ in 0..60 {
            let next = mkdir_open(&dir, &name);
            let link = CString::new("to-host").unwrap();
            let target = CString::new(outside.as_os_str().as_encoded_bytes()).unwrap();
            // SAFETY: symlinkat relative to a directory we hold, NUL-terminated strings.
            unsafe { libc::symlinkat(target.as_ptr(), dir.as_raw_fd(), link.as_ptr()) };
            dir = next;
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    let racer = {
        let stop = stop.clone();
        let a = fs::File::open(out.join("a/lvl")).unwrap();
        let b = fs::File::open(out.join("b/lvl")).unwrap();
        std::thread::spawn(move || {
            let (x, y) = (c"lvl", c"lvl");
            while !stop.load(Ordering::Relaxed) {
                // SAFETY: renameat2 relative to directories we hold, NUL-terminated names.
                unsafe {
                    libc::renameat2(
                        a.as_raw_fd(),
                        x.as_ptr(),
                        b.as_raw_fd(),
                        y.as_ptr(),
                        libc::RENAME_EXCHANGE,
                    )
                };
            }
        })
    };
    let mut reported = 0;
    for _ in 0..ROUNDS {
        let dir = fs::File::open(&results).unwrap();
        if hand_over(dir.as_fd(), "out", JOB, JOB, Direction::ToJob).is_err() {
            reported += 1;
        }
        for p in [outside.clone(), outside.join("host-file")] {
            assert_eq!(fs::symlink_metadata(&p).unwrap().uid(), 0, "{p:?} escaped");
        }
    }
    stop.store(true, Ordering::Relaxed);
    racer.join().unwrap();
    println!("{reported} of {ROUNDS} walks reported the tree moving under them");
    // Still: without the racer, everything is the job's, nothing outside.
    let dir = fs::File::open(&results).unwrap();
    hand_over(dir.as_fd(), "out", JOB, JOB, Direction::ToJob).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        fs::symlink_metadata(out.join("a/lvl/lvl")).unwrap().uid(),
        JOB
    );
    assert_eq!(fs::metadata(outside.join("host-file")).unwrap().uid(), 0);
    let _ = std::process::Command::new("rm")
        .arg("-rf")
        .arg(&out)
        .status();
}

/// A writable input the job has finished with: the setuid and setgid bits of what the job's uid
/// owns are cleared (a hard-linked file too, a file deep below, a setgid directory), and nothing
/// else changes: another uid's setuid file, owners, FIFOs and symlinks stay.
#[test]
fn strip_clears_only_the_job_uids_setid_bits_in_a_writable_input() {
    use std::os::unix::fs::FileTypeExt;
    if common::skip_unless_root("outputs_handback") {
        return;
    }
    const JOB: u32 = 4249;
    let tmp = scratch();
    let input = tmp.path().join("input");
    let deep = input.join("a/b/c");
    fs::create_dir_all(&deep).unwrap();
    let made = |path: &Path, mode: u32, uid: u32| {
        fs::write(path, b"#!/bin/sh\n").unwrap();
        std::os::unix::fs::chown(path, Some(uid), Some(uid)).unwrap();
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    };
    made(&input.join("sh"), 0o6755, JOB);
    fs::hard_link(input.join("sh"), input.join("sh.link")).unwrap();
    made(&deep.join("deep"), 0o4755, JOB);
    made(&input.join("theirs"), 0o4755, JOB + 1);
    std::os::unix::fs::chown(input.join("a"), Some(JOB), Some(JOB)).unwrap();
    fs::set_permissions(input.join("a"), fs::Permissions::from_mode(0o2777)).unwrap();
    nix::unistd::mkfifo(
        &input.join("fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o644),
    )
    .unwrap();
    std::os::unix::fs::lchown(input.join("fifo"), Some(JOB), Some(JOB)).unwrap();
    std::os::unix::fs::symlink("/", input.join("up")).unwrap();

    let held = fs::File::open(&input).unwrap();
    let done = strip(held.as_fd(), JOB).expect("strip");
    assert_eq!(done.cleared, 3, "{done:?}");
    let mode = |p: &Path| fs::symlink_metadata(p).unwrap().mode() & 0o7777;
    assert_eq!(mode(&input.join("sh")), 0o755);
    assert_eq!(mode(&input.join("sh.link")), 0o755);
    assert_eq!(mode(&deep.join("deep")), 0o755);
    assert_eq!(mode(&input.join("a")), 0o777);
    assert_eq!(
        mode(&input.join("theirs")),
        0o4755,
        "another uid's file changed"
    );
    assert_eq!(
        fs::metadata(input.join("sh")).unwrap().uid(),
        JOB,
        "owner changed"
    );
    assert!(
        fs::symlink_metadata(input.join("fifo"))
            .unwrap()
            .file_type()
            .is_fifo(),
        "a FIFO in host data was dropped"
    );

    // A writable input that is one file.
    let file = tmp.path().join("file");
    made(&file, 0o6755, JOB);
    let held = fs::File::open(&file).unwrap();
    strip(held.as_fd(), JOB).expect("strip a file");
    assert_eq!(mode(&file), 0o755);
}
