//! The kernel's own accounting of eBPF run time (`BPF_ENABLE_STATS`, what
//! `kernel.bpf_stats_enabled` switches): where a traced call's cost goes, hook by hook,
//! under the floor, the least records and mmap-trace. Read from the tracer's
//! `/proc/PID/fdinfo` (each program fd's `run_cnt` and `run_time_ns`) while it holds its
//! programs, in one loop of each after the timed rounds: the accounting itself adds to
//! every run it counts (two clock reads), so it is never on while a loop is timed.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::os::fd::{FromRawFd as _, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Result, bail};

use super::host::Kind;

/// One program's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProgRuns {
    /// The kernel's `enum bpf_prog_type`.
    pub prog_type: u32,
    pub runs: u64,
    pub ns: u64,
}

/// `prog_id` and the counters of an fdinfo that describes a program (None: another kind
/// of fd).
fn parse_fdinfo(text: &str) -> Option<(u32, ProgRuns)> {
    let (mut id, mut prog_type, mut runs, mut ns) = (None, None, None, None);
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match key {
            "prog_id" => id = value.parse().ok(),
            "prog_type" => prog_type = value.parse().ok(),
            "run_cnt" => runs = value.parse().ok(),
            "run_time_ns" => ns = value.parse().ok(),
            _ => {}
        }
    }
    Some((
        id?,
        ProgRuns {
            prog_type: prog_type?,
            runs: runs?,
            ns: ns?,
        },
    ))
}

/// Samples a process's programs every 10 ms until it exits or is stopped. The first
/// sample is taken before `start` returns (before the loop is released): what the
/// programs did until then (the tracer's start-up) is subtracted.
pub struct Sampler {
    stop: Arc<AtomicBool>,
    baseline: BTreeMap<u32, ProgRuns>,
    handle: JoinHandle<BTreeMap<u32, ProgRuns>>,
}

impl Sampler {
    pub fn start(pid: u32) -> Self {
        let mut baseline = BTreeMap::new();
        sample(pid, &mut baseline);
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let mut progs = baseline.clone();
        let handle = std::thread::spawn(move || {
            while !stopped.load(Ordering::Relaxed) && sample(pid, &mut progs) {
                std::thread::sleep(Duration::from_millis(10));
            }
            progs
        });
        Self {
            stop,
            baseline,
            handle,
        }
    }

    /// Each program's runs and time from the first sample to the last (the last up to
    /// 10 ms before the tracer let go of them: ratios of runs and times are what count).
    pub fn finish(self) -> Vec<ProgRuns> {
        self.stop.store(true, Ordering::Relaxed);
        let last = self.handle.join().unwrap_or_default();
        last.into_iter()
            .map(|(id, p)| {
                let first = self.baseline.get(&id).copied().unwrap_or_default();
                ProgRuns {
                    prog_type: p.prog_type,
                    runs: p.runs - first.runs.min(p.runs),
                    ns: p.ns - first.ns.min(p.ns),
                }
            })
            .collect()
    }
}

/// One pass over `/proc/PID/fdinfo`; false once the process is gone.
fn sample(pid: u32, progs: &mut BTreeMap<u32, ProgRuns>) -> bool {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return false;
    };
    for entry in dir.flatten() {
        let Ok(text) = std::fs::read_to_string(entry.path()) else {
            continue;
        };
        if let Some((id, runs)) = parse_fdinfo(&text) {
            let last = progs.entry(id).or_default();
            if runs.runs >= last.runs {
                *last = runs;
            }
        }
    }
    true
}

/// The kernel counts run time while this lives: `bpf(BPF_ENABLE_STATS)` returns an fd
/// that keeps the accounting on until it is closed, by this process or by its death, and
/// counts holders, so another bench's switch or the sysctl cannot turn it off under us
/// and a killed bench cannot leave it on.
pub struct StatsOn {
    _fd: OwnedFd,
}

impl StatsOn {
    pub fn enable() -> Result<Self> {
        /// `enum bpf_cmd`: BPF_ENABLE_STATS; `enum bpf_stats_type`: BPF_STATS_RUN_TIME.
        const BPF_ENABLE_STATS: libc::c_long = 32;
        const BPF_STATS_RUN_TIME: u32 = 0;
        // `union bpf_attr`'s `enable_stats`, padded as the kernel reads a whole attr.
        let attr: [u32; 16] = [
            BPF_STATS_RUN_TIME,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
        ];
        // SAFETY: the attr is valid for its size; the result is a new fd or -1.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_ENABLE_STATS,
                attr.as_ptr(),
                std::mem::size_of_val(&attr),
            )
        };
        if fd < 0 {
            bail!(
                "bpf(BPF_ENABLE_STATS): {} (needs root and Linux 5.8+)",
                std::io::Error::last_os_error()
            );
        }
        // SAFETY: a new fd of ours, owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        Ok(Self { _fd: fd })
    }
}

/// The hook behind each program type on this host: what `trace` and the floor attach by
/// default where the syscall hooks run one program each (no gate: docs/kernels.md).
fn hook(prog_type: u32) -> &'static str {
    match prog_type {
        17 => "sys_exit",
        26 => "mmap_lock_acquire_returned",
        5 => "sched_process_exec",
        _ => "other",
    }
}

/// What one variant's programs did during one loop.
pub struct Accounting {
    pub variant: &'static str,
    pub progs: Vec<ProgRuns>,
}

impl Accounting {
    /// `progs` as counted, if each hook had one program: with two of a type (the gate's
    /// copies on 7.x, kprobes) the per-hook figures would mix hooks.
    pub fn new(variant: &'static str, progs: Vec<ProgRuns>) -> Result<Self> {
        if progs.iter().all(|p| p.runs == 0) {
            bail!("{variant}: no program runs were counted");
        }
        let mut types: Vec<u32> = progs.iter().map(|p| p.prog_type).collect();
        types.sort_unstable();
        if types.windows(2).any(|w| w[0] == w[1]) {
            bail!(
                "{variant}: more than one program of a type ({types:?}): the accounting \
                 names hooks by program type"
            );
        }
        Ok(Self { variant, progs })
    }

    /// Runs and time summed per hook.
    fn hooks(&self) -> BTreeMap<&'static str, (u64, u64)> {
        let mut hooks = BTreeMap::new();
        for p in &self.progs {
            let (runs, ns) = hooks.entry(hook(p.prog_type)).or_insert((0, 0));
            *runs += p.runs;
            *ns += p.ns;
        }
        hooks
    }

    /// eBPF time per `sys_exit` run, every hook included (the lock hook's runs in
    /// proportion): per traced call, as nearly every `sys_exit` run is one of the loop's.
    fn ns_per_call(&self) -> f64 {
        let hooks = self.hooks();
        let exits = hooks.get("sys_exit").map_or(0, |h| h.0);
        if exits == 0 {
            return f64::NAN;
        }
        hooks.values().map(|h| h.1).sum::<u64>() as f64 / exits as f64
    }
}

pub fn markdown(rows: &[Accounting]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "**Where the time goes** (the kernel's own accounting, `BPF_ENABLE_STATS`, one loop \
         each after the timed rounds; `run_time_ns / run_cnt` of each program from the \
         tracer's fdinfo, from the loop's release to its end; runs include other processes' \
         syscalls and locks, which stop at the pid check):\n"
    );
    s.push_str(
        "| variant | sys_exit ns/run | mmap_lock_acquire_returned ns/run (runs per sys_exit) | eBPF ns per traced call |\n|---|---|---|---|\n",
    );
    for row in rows {
        let hooks = row.hooks();
        let per_run = |name: &str| {
            hooks
                .get(name)
                .filter(|h| h.0 > 0)
                .map(|h| h.1 as f64 / h.0 as f64)
        };
        let exits = hooks.get("sys_exit").map_or(0, |h| h.0);
        let locks = hooks.get("mmap_lock_acquire_returned").map_or(0, |h| h.0);
        let _ = writeln!(
            s,
            "| {} | {} | {} | {:.0} |",
            row.variant,
            per_run("sys_exit").map_or("–".into(), |ns| format!("{ns:.1}")),
            per_run("mmap_lock_acquire_returned").map_or("–".into(), |ns| format!(
                "{ns:.1} ({:.2})",
                locks as f64 / exits.max(1) as f64
            )),
            row.ns_per_call(),
        );
    }
    let by = |name: &str| {
        rows.iter()
            .find(|r| r.variant == name)
            .map(Accounting::ns_per_call)
    };
    if let (Some(floor), Some(records), Some(trace)) = (
        by(Kind::Floor.name()),
        by(Kind::FloorRecords.name()),
        by(Kind::MmapTrace.name()),
    ) {
        let _ = writeln!(
            s,
            "\nPer traced call: entering the programs {floor:.0} ns (the floor), recording the \
             call {:.0} ns more (the least records), mmap-trace's own work {:.0} ns more.",
            records - floor,
            trace - records,
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_program_fdinfo() {
        let text = "pos:\t0\nflags:\t02000002\nmnt_id:\t16\nino:\t1057\nprog_type:\t17\n\
                    prog_jited:\t1\nprog_tag:\t81c6a1c2f0d9a1b2\nmemlock:\t4096\nprog_id:\t27471\n\
                    run_time_ns:\t29012345\nrun_cnt:\t514908\nrecursion_misses:\t0\n\
                    verified_insns:\t52\n";
        assert_eq!(
            parse_fdinfo(text),
            Some((
                27471,
                ProgRuns {
                    prog_type: 17,
                    runs: 514908,
                    ns: 29012345
                }
            ))
        );
        // A map's fdinfo is not a program's.
        assert_eq!(
            parse_fdinfo("map_type:\t27\nkey_size:\t0\nmap_id:\t12\n"),
            None
        );
    }

    #[test]
    fn per_call_counts_every_hook_per_exit() {
        let row = Accounting {
            variant: "mmap-trace",
            progs: vec![
                ProgRuns {
                    prog_type: 17,
                    runs: 1000,
                    ns: 160_000,
                },
                ProgRuns {
                    prog_type: 26,
                    runs: 1500,
                    ns: 75_000,
                },
            ],
        };
        assert!((row.ns_per_call() - 235.0).abs() < 1e-9);
    }
}
