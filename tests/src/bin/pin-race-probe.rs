//! `pin-race-probe`: a stand-in plugin binary for the pin race test (`host_trust`).
//!
//! The test appends a trailer to a copy of this binary: `GOOD` on the pinned bytes, `EVIL` on
//! the bytes a racer writes in place. The probe reads the bytes it is running from and, when
//! they carry `EVIL`, appends a line to `<argv0>.evil`: proof that the unpinned bytes ran.

use std::io::Write;

const EVIL: &[u8] = b"PIN-TRAILER:EVIL";

fn main() {
    let Ok(me) = std::fs::read("/proc/self/exe") else {
        std::process::exit(2);
    };
    if !me.ends_with(EVIL) {
        return;
    }
    let argv0 = std::env::args_os().next().unwrap_or_default();
    let mut marker = argv0;
    marker.push(".evil");
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&marker)
        .and_then(|mut f| f.write_all(b"ran\n"));
    if written.is_err() {
        std::process::exit(3);
    }
}
