//! Helpers for the reliability tests: a seeded generator (so a failing run replays), the
//! `STRESS-RESULT key=value …` line the stress client prints, and count knobs from the
//! environment (`cargo xtask stress` raises them).

use std::collections::BTreeMap;

/// splitmix64: small, fast, and the same sequence on every machine for a seed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// 0..n (0 when n is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next_u64() % n }
    }

    /// lo..=hi.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }

    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next_u64() as u8).collect()
    }
}

/// `var` from the environment if set, else a seed from the clock (printed by the caller).
pub fn seed_from(var: &str) -> u64 {
    if let Some(s) = std::env::var(var).ok().filter(|s| !s.is_empty()) {
        return s
            .parse()
            .unwrap_or_else(|_| panic!("{var}={s:?} is not a number"));
    }
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    t.as_secs() ^ u64::from(t.subsec_nanos()) << 20 ^ u64::from(std::process::id())
}

/// A count knob: `var` from the environment, else `default`.
pub fn env_count(var: &str, default: u64) -> u64 {
    match std::env::var(var) {
        Ok(s) if !s.is_empty() => s
            .parse()
            .unwrap_or_else(|_| panic!("{var}={s:?} is not a count")),
        _ => default,
    }
}

/// The errno names the driver and the kernel's mmap paths can answer with.
pub fn errno_name(e: i32) -> String {
    let name = match e {
        libc::EPERM => "EPERM",
        libc::EBADF => "EBADF",
        libc::EAGAIN => "EAGAIN",
        libc::ENOMEM => "ENOMEM",
        libc::EACCES => "EACCES",
        libc::EFAULT => "EFAULT",
        libc::ENXIO => "ENXIO",
        libc::EINVAL => "EINVAL",
        libc::ENOSPC => "ENOSPC",
        libc::ENODEV => "ENODEV",
        libc::EOVERFLOW => "EOVERFLOW",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        _ => return format!("errno{e}"),
    };
    name.to_owned()
}

/// The fields of the first `STRESS-RESULT` line in `text` (`key=value` words).
pub fn parse_result(text: &str) -> Option<BTreeMap<String, String>> {
    let line = text.lines().find(|l| l.starts_with("STRESS-RESULT "))?;
    Some(
        line.split_whitespace()
            .skip(1)
            .filter_map(|w| w.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
    )
}

/// A numeric field of a parsed result line; panics naming the line's fields if absent.
pub fn field(fields: &BTreeMap<String, String>, key: &str) -> u64 {
    fields
        .get(key)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no numeric {key} in {fields:?}"))
}

/// Writes a line to the real stderr, past libtest's capture, so figures reach the log
/// of a passing run.
pub fn report(line: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// The stress client, next to the workload binary (host and guest alike).
pub fn stress_path() -> std::path::PathBuf {
    crate::cli::workload_path().with_file_name("mmap-stress")
}

/// Blocks until a spawned tracer prints its `ready:` line; the rest of its stderr is
/// collected and handed back by the returned receiver's thread when it ends.
pub fn wait_ready(tracer: &mut std::process::Child) -> std::thread::JoinHandle<String> {
    use std::io::{BufRead as _, BufReader};
    let stderr = tracer.stderr.take().expect("piped stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    let handle = std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("ready:") {
                let _ = tx.send(());
            }
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    if rx.recv_timeout(std::time::Duration::from_secs(60)).is_err() {
        let _ = tracer.kill();
        let err = handle.join().unwrap_or_default();
        panic!("the tracer never became ready:\n{err}");
    }
    handle
}

/// Per-probe count `probe` in a summary's `events`/`lost` object (absent: 0).
pub fn per_probe(summary: &serde_json::Value, which: &str, probe: &str) -> u64 {
    summary[which][probe].as_u64().unwrap_or(0)
}

/// `MemFree` of /proc/meminfo, in KiB, after dropping clean caches (so page cache
/// filled by the run between two readings does not count as memory lost).
pub fn mem_free_kib() -> u64 {
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
    std::fs::write("/proc/sys/vm/drop_caches", "3").expect("write /proc/sys/vm/drop_caches (root)");
    let text = std::fs::read_to_string("/proc/meminfo").expect("/proc/meminfo");
    text.lines()
        .find_map(|l| l.strip_prefix("MemFree:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("MemFree in /proc/meminfo")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_sequences_repeat() {
        let (mut a, mut b) = (Rng::new(7), Rng::new(7));
        assert!((0..100).all(|_| a.next_u64() == b.next_u64()));
        assert!((0..1000).all(|_| a.range(3, 5) >= 3 && b.range(3, 5) <= 5));
    }

    #[test]
    fn parses_a_result_line() {
        let f =
            parse_result("noise\nSTRESS-RESULT mode=x requests=12 refusals=EINVAL:3\n").unwrap();
        assert_eq!(field(&f, "requests"), 12);
        assert_eq!(f["refusals"], "EINVAL:3");
    }
}
