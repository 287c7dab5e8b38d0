//! Giving back a settled monitor's resident code pages.
//!
//! A monitor is a fork of the fork server, so it maps the whole plugin binary and libc. Its
//! start-up runs scattered code, and every fault maps up to 16 neighbouring page-cache pages
//! (fault-around), so a monitor that then only waits on its job keeps megabytes of file pages
//! in its VmRSS that it will not run again (figures in docs/PERFORMANCE.md). Those pages are clean copies of the file: dropping
//! them from our page tables (`MADV_DONTNEED`) frees nothing in the page cache, and the loop
//! faults back in only the code it still runs.
//!
//! Only mappings where that is provably lossless qualify: private, not writable, backed by a
//! file that still exists, and with no anonymous or swapped page in them. A copy-on-write page
//! in a read-only mapping (RELRO after relocation, text patched by a debugger or by text
//! relocations) would be thrown away and replaced by the file's bytes, so `/proc/self/smaps`
//! rather than `maps` is read: it says per mapping whether any such page exists.

use std::fs::File;
use std::io::{self, BufRead, BufReader};

/// A mapping whose resident pages can be dropped without losing anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    pub start: usize,
    pub len: usize,
}

/// Drop the resident pages of every qualifying mapping. Returns how many mappings were advised. Errors leave the process as it was, apart from the
/// mappings already advised.
pub fn give_back() -> io::Result<usize> {
    let ranges = read_smaps(BufReader::with_capacity(
        4096,
        File::open("/proc/self/smaps")?,
    ))?;
    let mut first_err = None;
    let mut done = 0;
    for r in &ranges {
        // SAFETY: each range is a whole mapping of this process that read_smaps proved holds
        // only clean page-cache pages; dropping them loses nothing (they fault back from the
        // file), and nothing else in this single-threaded process changes mappings meanwhile.
        // (`malloc_trim(0)` after this was tried too: the monitor's heap is live data and its
        // RssAnon moved by 4 KiB, so it is not done.)
        let rc = unsafe { libc::madvise(r.start as *mut libc::c_void, r.len, libc::MADV_DONTNEED) };
        if rc == 0 {
            done += 1;
        } else if first_err.is_none() {
            first_err = Some(io::Error::last_os_error());
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(done),
    }
}

/// One mapping of smaps: its header line and the fields that decide whether it qualifies.
#[derive(Debug, Default)]
struct Entry {
    range: Option<Range>,
    /// The header allows it (private, read-only, a live file).
    eligible: bool,
    rss_kib: u64,
    anon_kib: u64,
    swap_kib: u64,
    locked: bool,
}

impl Entry {
    fn qualifies(&self) -> Option<Range> {
        let ok = self.eligible
            && self.rss_kib > 0
            && self.anon_kib == 0
            && self.swap_kib == 0
            && !self.locked;
        self.range.filter(|_| ok)
    }
}

/// Qualifying ranges of an smaps text. Reads line by line into
/// one small buffer: a monitor's smaps is tens of KiB, and reading it whole would grow the heap
/// this is trying to shrink.
fn read_smaps(mut r: impl BufRead) -> io::Result<Vec<Range>> {
    let mut out = Vec::new();
    let mut cur: Option<Entry> = None;
    let mut line = String::with_capacity(256);
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            break;
        }
        if let Some(header) = parse_header(&line) {
            out.extend(cur.take().and_then(|e| e.qualifies()));
            cur = Some(header);
            continue;
        }
        let Some(e) = cur.as_mut() else { continue };
        let mut words = line.split_whitespace();
        match words.next() {
            Some("Rss:") => e.rss_kib = kib(words.next()),
            Some("Anonymous:") => e.anon_kib = kib(words.next()),
            Some("Swap:") => e.swap_kib = kib(words.next()),
            Some("VmFlags:") => e.locked = words.any(|f| f == "lo"),
            _ => {}
        }
    }
    out.extend(cur.and_then(|e| e.qualifies()));
    Ok(out)
}

/// An unparsable size counts as "unknown", which must not look like zero anonymous pages.
fn kib(word: Option<&str>) -> u64 {
    word.and_then(|w| w.parse().ok()).unwrap_or(u64::MAX)
}

/// A mapping's header line (`start-end perms offset dev inode path`), or None for a field line.
fn parse_header(line: &str) -> Option<Entry> {
    let mut words = line.split_whitespace();
    let (start, end) = words.next()?.split_once('-')?;
    let start = usize::from_str_radix(start, 16).ok()?;
    let end = usize::from_str_radix(end, 16).ok()?;
    let perms = words.next()?.as_bytes();
    // Offset, device, inode; the rest of the line is the path.
    let inode = words.nth(2)?;
    let path = line
        .splitn(6, char::is_whitespace)
        .nth(5)
        .map(str::trim)
        .unwrap_or("");
    let eligible = perms.len() == 4
        && perms[0] == b'r'
        && perms[1] == b'-'
        && perms[3] == b'p'
        && inode != "0"
        && path.starts_with('/')
        && !path.ends_with("(deleted)");
    Some(Entry {
        range: (end > start).then_some(Range {
            start,
            len: end - start,
        }),
        eligible,
        ..Entry::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(header: &str, rss: u64, anon: u64, swap: u64, flags: &str) -> String {
        format!(
            "{header}\nSize:                 64 kB\nRss:               {rss} kB\n\
             Pss:                 12 kB\nAnonymous:         {anon} kB\nSwap:              {swap} kB\n\
             VmFlags: {flags}\n"
        )
    }

    fn qualifying(text: &str) -> Vec<usize> {
        read_smaps(text.as_bytes())
            .unwrap()
            .iter()
            .map(|r| r.start)
            .collect()
    }

    #[test]
    fn only_clean_read_only_file_mappings_qualify() {
        let bin = "/usr/local/bin/executor-native";
        let cases = [
            // Text and read-only data of a live file, untouched by COW: qualify.
            (
                0x1000,
                format!("1000-2000 r-xp 00001000 fd:01 42 {bin}"),
                0,
                true,
            ),
            (
                0x2000,
                format!("2000-3000 r--p 00000000 fd:01 42 {bin}"),
                0,
                true,
            ),
            (
                0x3000,
                "3000-4000 r-xp 00000000 fd:01 7 /lib/x86_64-linux-gnu/libc.so.6".into(),
                0,
                true,
            ),
            (
                0x4000,
                "4000-5000 r-xp 00000000 fd:01 9 /opt/my dir/lib.so".into(),
                0,
                true,
            ),
            // RELRO: read-only now, but written during relocation.
            (
                0x5000,
                format!("5000-6000 r--p 00005000 fd:01 42 {bin}"),
                4,
                false,
            ),
            // Writable, shared, anonymous, special or deleted: never.
            (
                0x6000,
                format!("6000-7000 rw-p 00006000 fd:01 42 {bin}"),
                0,
                false,
            ),
            (
                0x7000,
                "7000-8000 r-xs 00000000 fd:01 11 /dev/shm/x".into(),
                0,
                false,
            ),
            (0x8000, "8000-9000 r-xp 00000000 00:00 0 ".into(), 0, false),
            (
                0x9000,
                "9000-a000 r-xp 00000000 00:00 0 [vdso]".into(),
                0,
                false,
            ),
            (
                0xa000,
                "a000-b000 rw-p 00000000 00:00 0 [heap]".into(),
                0,
                false,
            ),
            (
                0xb000,
                "b000-c000 r--p 00000000 00:00 0 [vvar]".into(),
                0,
                false,
            ),
            (
                0xc000,
                format!("c000-d000 r-xp 00000000 fd:01 42 {bin} (deleted)"),
                0,
                false,
            ),
            (
                0xd000,
                "d000-e000 ---p 00000000 fd:01 7 /lib/x86_64-linux-gnu/libc.so.6".into(),
                0,
                false,
            ),
        ];
        let mut text = String::new();
        for (_, header, anon, _) in &cases {
            text += &block(header, 8, *anon, 0, "rd ex mr mw me");
        }
        let want: Vec<usize> = cases.iter().filter(|c| c.3).map(|c| c.0).collect();
        assert_eq!(qualifying(&text), want);
    }

    #[test]
    fn swapped_locked_unresident_or_unreadable_mappings_are_skipped() {
        let h = "1000-2000 r-xp 00000000 fd:01 42 /bin/x";
        assert_eq!(qualifying(&block(h, 8, 0, 0, "rd ex")), vec![0x1000]);
        // A COW'd page swapped out shows under Swap, not Anonymous.
        assert!(qualifying(&block(h, 8, 0, 4, "rd ex")).is_empty());
        assert!(qualifying(&block(h, 8, 0, 0, "rd ex lo")).is_empty());
        assert!(qualifying(&block(h, 0, 0, 0, "rd ex")).is_empty());
        let garbled = block(h, 8, 0, 0, "rd ex").replace("Anonymous:         0", "Anonymous: ?");
        assert!(qualifying(&garbled).is_empty());
    }

    #[test]
    fn ranges_cover_whole_mappings() {
        let text = block("1000-3000 r-xp 00000000 fd:01 42 /bin/x", 8, 0, 0, "rd")
            + &block("3000-4000 r--p 00000000 fd:01 42 /bin/x", 4, 0, 0, "rd");
        let ranges = read_smaps(text.as_bytes()).unwrap();
        assert_eq!(
            ranges,
            vec![
                Range {
                    start: 0x1000,
                    len: 0x2000
                },
                Range {
                    start: 0x3000,
                    len: 0x1000
                }
            ]
        );
    }

    /// On this process: something qualifies (our own text), and giving it back leaves the
    /// process running the same code.
    #[test]
    fn gives_back_own_text_and_keeps_running() {
        let ranges = read_smaps(BufReader::new(File::open("/proc/self/smaps").unwrap())).unwrap();
        assert!(!ranges.is_empty(), "no qualifying mapping");
        assert!(give_back().unwrap() > 0);
        assert_eq!(format!("{}", 6 * 7), "42");
    }
}
