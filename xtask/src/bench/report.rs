//! The results table (Markdown) and its place in docs/benchmarks.md.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;

use anyhow::{Context as _, Result};

use super::Spread;
use super::guest::Guest;
use super::host::{FaultBench, Kind, Overhead, SmallRing, ThroughputRow, Variant};
use super::programs::{Cache, ProgramRow};
use crate::cmd;

pub const BEGIN: &str = "<!-- bench:begin -->";
pub const END: &str = "<!-- bench:end -->";

/// Targets from issue 6: reported, never asserted.
const TARGET_SLOWDOWN: f64 = 1.3;
const TARGET_READY_MS: f64 = 150.0;
const TARGET_RSS_MB: f64 = 30.0;
/// Targets from issue 20.
const TARGET_VERIFY_COLD_MEDIAN: f64 = 2.0;
const TARGET_VERIFY_COLD_WORST: f64 = 5.0;
/// The synthetic loop (a checkpoint per call, nothing else) under verify, and what one of
/// its checkpoints costs: (verified − untraced) / checkpoints.
const TARGET_LOOP_SLOWDOWN: f64 = 20.0;
const TARGET_CHECKPOINT_US: f64 = 30.0;
/// `trace --stacks` on the bench loop at its default ring: every event kept, at most this
/// slowdown.
const TARGET_STACKS_SLOWDOWN: f64 = 2.5;
const TARGET_TRACE_VS_UNTRACED: f64 = 1.10;
const TARGET_TRACE_VS_FLOOR: f64 = 1.05;

pub struct Machine {
    pub date: String,
    pub nproc: usize,
    pub kernel: String,
    pub cpu: String,
}

impl Machine {
    pub fn probe() -> Self {
        let first_line = |c: &mut Command| {
            cmd::stdout(c)
                .map(|s| s.trim().to_owned())
                .unwrap_or_else(|_| "unknown".into())
        };
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("model name"))
                    .map(|l| l.trim_start_matches([' ', '\t', ':']).trim().to_owned())
            })
            .unwrap_or_else(|| "unknown".into());
        Machine {
            date: first_line(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"])),
            nproc: std::thread::available_parallelism().map_or(0, |n| n.get()),
            kernel: first_line(Command::new("uname").arg("-r")),
            cpu,
        }
    }
}

pub struct Results {
    pub machine: Machine,
    pub rounds: usize,
    pub loops: u64,
    pub overhead: Overhead,
    /// The kernel's accounting of the floor, the least records and mmap-trace.
    pub accounting: Vec<super::accounting::Accounting>,
    pub throughput: Vec<ThroughputRow>,
    pub small_ring: SmallRing,
    pub faults: FaultBench,
    pub guest: Option<Guest>,
    /// Verify on real programs (empty when skipped).
    pub programs: Vec<ProgramRow>,
    /// Verify at 2,000 to 60,000 VMAs (empty when skipped).
    pub scaling: Vec<super::scaling::ScalingRow>,
}

/// The cells every table of variants shares.
impl Variant {
    /// What the tracer said it lost, min–max over the rounds; "–" where nothing traces.
    fn lost_cell(&self) -> String {
        let lost: Vec<u64> = self.lost.iter().flatten().copied().collect();
        match (self.name, lost.iter().max()) {
            ("untraced" | "floor", _) => "–".to_owned(),
            (_, None) => "not reported".to_owned(),
            (_, Some(max)) => format!("{}–{max}", lost.iter().min().unwrap_or(max)),
        }
    }

    /// The tracer's peak RSS over the rounds.
    fn rss_cell(&self) -> String {
        if self.rss_kib.is_empty() {
            return "–".to_owned();
        }
        let mb: Vec<f64> = self.rss_kib.iter().map(|k| *k as f64 / 1024.0).collect();
        range(Spread::of(&mb), " MB", 1)
    }
}

/// Round-by-round ratio of two variants' loop times.
fn ratio(a: &Variant, b: &Variant) -> Spread {
    let r: Vec<f64> = a.secs.iter().zip(&b.secs).map(|(x, y)| x / y).collect();
    Spread::of(&r)
}

/// The table of verify on real programs, and the issue-20 verdict on it.
pub fn programs_markdown(rows: &[ProgramRow]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "**verify on real programs**: `mmap-trace verify --json -o FILE -- CMD` against CMD alone, \
         untraced and verified alternating; cold = `sync; echo 3 > /proc/sys/vm/drop_caches` \
         before each run. Verified time is the summary's `duration_s` (attach to exit), \
         untraced time spawn to exit.\n"
    );
    s.push_str(
        "| program | page cache | alone | verify | slowdown | checkpoints | page PFN checks | full passes | result |\n\
         |---|---|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        let spread_u = |v: &[u64]| {
            let f: Vec<f64> = v.iter().map(|x| *x as f64).collect();
            range(Spread::of(&f), "", 0)
        };
        let passed = r.passed.iter().filter(|p| **p).count();
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {passed}/{} PASS, {} mismatches, {} lost |",
            r.name,
            r.cache.name(),
            range(Spread::of(&r.untraced_secs), " s", 3),
            range(Spread::of(&r.verify_secs), " s", 3),
            range(Spread::of(&r.slowdowns()), "×", 2),
            spread_u(&r.checkpoints),
            spread_u(&r.pfn_checks),
            spread_u(&r.full_passes),
            r.passed.len(),
            r.mismatches.iter().sum::<u64>(),
            r.lost.iter().sum::<u64>(),
        );
    }
    s.push('\n');
    // Each program has a cold and a warm row, next to each other.
    let mut shown = rows
        .iter()
        .map(|r| (r.name, r.shown.as_str()))
        .collect::<Vec<_>>();
    shown.dedup();
    for (name, command) in shown {
        let _ = writeln!(s, "- {name}: `{command}`");
    }
    let cold: Vec<f64> = rows
        .iter()
        .filter(|r| r.real && r.cache == Cache::Cold)
        .map(|r| Spread::of(&r.slowdowns()).median)
        .collect();
    if !cold.is_empty() {
        let median = Spread::of(&cold).median;
        let worst = cold.iter().copied().fold(0.0, f64::max);
        let _ = writeln!(
            s,
            "\n**Targets**, over the real programs' median slowdowns with a cold page \
             cache: median ≤ {TARGET_VERIFY_COLD_MEDIAN}×: {} ({median:.2}×); worst ≤ \
             {TARGET_VERIFY_COLD_WORST}×: {} ({worst:.2}×).",
            met(median <= TARGET_VERIFY_COLD_MEDIAN),
            met(worst <= TARGET_VERIFY_COLD_WORST),
        );
    }
    if let Some(r) = rows.iter().find(|r| !r.real && r.cache == Cache::Warm) {
        let slowdown = Spread::of(&r.slowdowns()).median;
        let per_checkpoint: Vec<f64> = r
            .verify_secs
            .iter()
            .zip(&r.untraced_secs)
            .zip(&r.checkpoints)
            .map(|((v, u), &c)| (v - u) / c.max(1) as f64 * 1e6)
            .collect();
        let per_checkpoint = Spread::of(&per_checkpoint).median;
        let _ = writeln!(
            s,
            "\n**Targets**, {} warm: under verify ≤ {TARGET_LOOP_SLOWDOWN}× of alone: {} \
             ({slowdown:.1}×); one checkpoint ((verified − untraced) / checkpoints) ≤ \
             {TARGET_CHECKPOINT_US} µs: {} ({per_checkpoint:.1} µs).",
            r.name,
            met(slowdown <= TARGET_LOOP_SLOWDOWN),
            met(per_checkpoint <= TARGET_CHECKPOINT_US),
        );
    }
    s
}

fn range(s: Spread, unit: &str, digits: usize) -> String {
    format!(
        "{:.d$}{unit} ({:.d$}–{:.d$})",
        s.median,
        s.min,
        s.max,
        d = digits
    )
}

fn met(ok: bool) -> &'static str {
    if ok { "met" } else { "MISSED" }
}

fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        100.0 * part as f64 / whole as f64
    }
}

impl FaultBench {
    /// Issue 17: what `trace --faults` costs a loop that touches fresh pages, beside
    /// `perf trace --pf=all`.
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "**Page faults** (issue 17): `mmap-workload --touch-mib {}` writes one byte to each \
             page of a fresh {} MiB anonymous mapping ({} faults, plus the program's own \
             start-up faults), held until the tracer is attached, timed from release to exit.\n",
            self.mib, self.mib, self.expected
        );
        s.push_str(
            "| variant | loop time | slowdown | faults kept (the pid's) | lost (tracer's own count) | peak RSS |\n\
             |---|---|---|---|---|---|\n",
        );
        let untraced = &self.variants[0];
        for v in &self.variants {
            let ratios: Vec<f64> = v
                .secs
                .iter()
                .zip(&untraced.secs)
                .map(|(t, u)| t / u)
                .collect();
            let name = if v.version.is_empty() {
                v.name.to_owned()
            } else {
                format!("{} ({})", v.name, v.version)
            };
            let kept = match (v.kept.iter().min(), v.kept.iter().max()) {
                (Some(min), Some(max)) => format!("{min}–{max}"),
                _ => "–".to_owned(),
            };
            let (lost, rss) = (v.lost_cell(), v.rss_cell());
            let _ = writeln!(
                s,
                "| {name} | {} | {} | {kept} | {lost} | {rss} |",
                range(Spread::of(&v.secs), " s", 3),
                if v.name == "untraced" {
                    "1.00×".to_owned()
                } else {
                    range(Spread::of(&ratios), "×", 2)
                },
            );
        }
        if let Some(why) = &self.perf_missing {
            let _ = writeln!(s, "\nperf trace is not in the table: {why}.");
        }
        s.push('\n');
        s
    }
}

impl Results {
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let m = &self.machine;
        let _ = writeln!(
            s,
            "Measured {} on {} CPUs, kernel {}, {}. {} rounds, variants alternating; \
             median (min–max).\n",
            m.date, m.nproc, m.kernel, m.cpu, self.rounds
        );
        let o = &self.overhead;
        let untraced = Spread::of(&o.variants[0].secs);
        let _ = writeln!(
            s,
            "**Host loop**: `mmap-workload --loop {}` ({} mmap+munmap calls of 16 KiB), held \
             until the tracer is attached to its pid, timed from release to exit.\n",
            self.loops, o.expected
        );
        s.push_str(
            "| variant | loop time | slowdown | loop calls kept / expected | lost (tracer's own count) | peak RSS |\n\
             |---|---|---|---|---|---|\n",
        );
        let mut mmap_trace_slowdown = Spread::default();
        let mut mmap_trace_lost = 0;
        let mut stacks: Option<(Spread, u64)> = None;
        for v in &o.variants {
            let secs = Spread::of(&v.secs);
            let ratios: Vec<f64> = v
                .secs
                .iter()
                .zip(&o.variants[0].secs)
                .map(|(t, u)| t / u)
                .collect();
            let slowdown = Spread::of(&ratios);
            let name = if v.version.is_empty() {
                v.name.to_owned()
            } else {
                format!("{} ({})", v.name, v.version)
            };
            let kept = if v.kept.is_empty() {
                "–".to_owned()
            } else {
                let min = v.kept.iter().copied().min().unwrap_or(0);
                let max = v.kept.iter().copied().max().unwrap_or(0);
                format!(
                    "{min}–{max} / {} ({:.1}–{:.1}%)",
                    o.expected,
                    percent(min, o.expected),
                    percent(max, o.expected)
                )
            };
            let (lost, rss) = (v.lost_cell(), v.rss_cell());
            // Worst run: what it reported lost, or what is missing from its output.
            let worst_lost = || {
                v.kept
                    .iter()
                    .zip(&v.lost)
                    .map(|(k, l)| l.unwrap_or(0).max(o.expected.saturating_sub(*k)))
                    .max()
                    .unwrap_or(0)
            };
            if v.name == Kind::MmapTrace.name() {
                mmap_trace_slowdown = slowdown;
                mmap_trace_lost = worst_lost();
            } else if v.name == Kind::MmapTraceStacks.name() {
                stacks = Some((slowdown, worst_lost()));
            }
            let _ = writeln!(
                s,
                "| {name} | {} | {} | {kept} | {lost} | {rss} |",
                range(secs, " s", 3),
                if v.name == "untraced" {
                    "1.00×".to_owned()
                } else {
                    range(slowdown, "×", 2)
                },
            );
        }
        let _ = writeln!(
            s,
            "\nbpftrace prints entry and exit as separate records (its \"kept\" counts entry \
             records); its loss is the sum of its `Lost N events` lines. strace loses nothing \
             by design. untraced: {}.\n",
            range(untraced, " s", 3)
        );
        let by_name = |n: &str| o.variants.iter().find(|v| v.name == n);
        let mut vs_floor = Spread::default();
        let mut floor_slowdown = Spread::default();
        if let (Some(floor), Some(mt)) =
            (by_name(Kind::Floor.name()), by_name(Kind::MmapTrace.name()))
        {
            vs_floor = ratio(mt, floor);
            floor_slowdown = ratio(floor, &o.variants[0]);
            let _ = writeln!(
                s,
                "**Floor**: `floor` is the same loop under empty eBPF programs, returning 0, on \
                 the attach points `trace` uses by default (raw tracepoint `sys_exit`, tp_btf \
                 `mmap_lock_acquire_returned`, tracepoint `sched_process_exec`; the bench's own \
                 `mmap-trace-floor --pid`): {} of untraced. mmap-trace / floor, round by \
                 round: {}.\n",
                range(floor_slowdown, "×", 2),
                range(vs_floor, "×", 2),
            );
        }
        let mut vs_records = Spread::default();
        let mut records_vs_floor = Spread::default();
        if let (Some(records), Some(floor), Some(mt)) = (
            by_name(Kind::FloorRecords.name()),
            by_name(Kind::Floor.name()),
            by_name(Kind::MmapTrace.name()),
        ) {
            vs_records = ratio(mt, records);
            records_vs_floor = ratio(records, floor);
            let _ = writeln!(
                s,
                "**Least records**: `floor + least records` is the floor with, on `sys_exit`, \
                 the least record a syscall tracer with arguments writes for each of the \
                 loop's calls (timestamp, ids, number, arguments, return value: 80 bytes, \
                 filtered by pid and call number, into a 4 MiB ring that wakes nobody, drained \
                 every 10 ms and only counted; `mmap-trace-floor --records`): {} of the floor. \
                 What recording costs whatever the tool. mmap-trace / least records, round by \
                 round: {}: what is mmap-trace's own (comm, cgroup, ia32 check, the \
                 catch-all, JSON).\n",
                range(records_vs_floor, "×", 2),
                range(vs_records, "×", 2),
            );
        }

        if !self.accounting.is_empty() {
            s.push_str(&super::accounting::markdown(&self.accounting));
            s.push('\n');
        }

        // Part 2.
        let _ = writeln!(
            s,
            "**Throughput**: k loops at once under one `mmap-trace trace --json --comm \
             mmap-workload` (default 4 MiB ring buffer).\n"
        );
        s.push_str(
            "| loops | calls | untraced calls/s | traced calls/s | kept | lost |\n|---|---|---|---|---|---|\n",
        );
        let mut best_lossless: Option<f64> = None;
        for r in &self.throughput {
            // Round by round: one round's loss says nothing of another's rate.
            for ((rate, lost), kept) in r.traced_rate.iter().zip(&r.lost).zip(&r.kept) {
                if *lost == 0 && *kept == r.calls {
                    best_lossless = Some(best_lossless.map_or(*rate, |b: f64| b.max(*rate)));
                }
            }
            let kmin = r.kept.iter().copied().min().unwrap_or(0);
            let lmax = r.lost.iter().copied().max().unwrap_or(0);
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | ≥ {kmin} ({:.1}%) | ≤ {lmax} |",
                r.loops,
                r.calls,
                range(Spread::of(&r.untraced_rate), "", 0),
                range(Spread::of(&r.traced_rate), "", 0),
                percent(kmin, r.calls),
            );
        }
        let _ = writeln!(
            s,
            "\nHighest rate with nothing lost: {}.",
            best_lossless.map_or("none (every run lost events)".to_owned(), |b| format!(
                "{b:.0} calls/s"
            ))
        );
        let sr = &self.small_ring;
        let _ = writeln!(
            s,
            "With `--ring-buffer-kib {}` and {} loops it kept {} of {} calls ({:.1}%) and \
             reported {} lost: summary `\"lost\":{}`; stderr: {}.\n",
            sr.kib,
            sr.loops,
            sr.kept,
            sr.calls,
            percent(sr.kept, sr.calls),
            sr.lost,
            sr.lost_json,
            if sr.warnings.is_empty() {
                "no warning".to_owned()
            } else {
                sr.warnings
                    .iter()
                    .map(|w| format!("`{w}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        );

        // Part 3.
        let mt = o.variants.iter().find(|v| v.name == Kind::MmapTrace.name());
        let ready = mt.map(|v| Spread::of(&v.ready_ms)).unwrap_or_default();
        let rss_mb: Vec<f64> = mt
            .map(|v| v.rss_kib.iter().map(|k| *k as f64 / 1024.0).collect())
            .unwrap_or_default();
        let rss = Spread::of(&rss_mb);
        let _ = writeln!(
            s,
            "**Start-up** (launch of `mmap-trace trace --pid` to its `ready` line): {}; \
             **peak RSS** during the loop: {}.\n",
            range(ready, " ms", 0),
            range(rss, " MB", 1)
        );

        s.push_str(&self.faults.markdown());

        // Part 4.
        if let Some(g) = &self.guest {
            let expected = 2 * g.iterations;
            let _ = writeln!(
                s,
                "**Guest** (Debian 6.1 under QEMU TCG, {}; probes: {}): `--loop {}` untraced {}, \
                 traced {}, ratio {}; loop calls kept {}–{} / {expected}, mmap_region events \
                 {}–{} / {}, lost {}.\n",
                g.cpu,
                g.probes,
                g.iterations,
                range(Spread::of(&g.untraced_secs), " s", 2),
                range(Spread::of(&g.traced_secs), " s", 2),
                range(g.ratio(), "×", 2),
                g.kept.iter().min().unwrap_or(&0),
                g.kept.iter().max().unwrap_or(&0),
                g.region_kept.iter().min().unwrap_or(&0),
                g.region_kept.iter().max().unwrap_or(&0),
                g.iterations,
                g.lost.iter().max().unwrap_or(&0),
            );
        }

        if !self.scaling.is_empty() {
            s.push_str(&super::scaling::markdown(&self.scaling));
            s.push('\n');
        }
        if !self.programs.is_empty() {
            s.push_str(&programs_markdown(&self.programs));
            s.push('\n');
        }

        // Targets.
        if vs_floor.median > 0.0 {
            let _ = writeln!(
                s,
                "**Targets** (issue 20), trace: ≤ {TARGET_TRACE_VS_UNTRACED}× of untraced: {} \
                 ({:.2}×); ≤ {TARGET_TRACE_VS_FLOOR}× of the floor: {} ({:.2}×); with 0 lost: {}. \
                 The floor is {:.2}× of untraced and the least records {:.2}× of the floor; \
                 mmap-trace is {:.2}× of the least records.\n",
                met(mmap_trace_slowdown.median <= TARGET_TRACE_VS_UNTRACED),
                mmap_trace_slowdown.median,
                met(vs_floor.median <= TARGET_TRACE_VS_FLOOR),
                vs_floor.median,
                met(mmap_trace_lost == 0),
                floor_slowdown.median,
                records_vs_floor.median,
                vs_records.median,
            );
        }
        if let Some((slowdown, lost)) = stacks {
            let _ = writeln!(
                s,
                "**Target**, `trace --stacks` on the loop at its default ring: 0 lost and ≤ \
                 {TARGET_STACKS_SLOWDOWN}× of untraced: {} ({:.2}×, {lost} lost at worst).\n",
                met(lost == 0 && slowdown.median <= TARGET_STACKS_SLOWDOWN),
                slowdown.median,
            );
        }
        let _ = writeln!(
            s,
            "**Targets** (issue 6): slowdown ≤ {TARGET_SLOWDOWN}× with nothing lost: {} \
             ({:.2}×, {mmap_trace_lost} lost at worst); start-up < {TARGET_READY_MS} ms: {} \
             ({:.0} ms); peak RSS < {TARGET_RSS_MB} MB: {} ({:.1} MB).",
            met(mmap_trace_slowdown.median <= TARGET_SLOWDOWN && mmap_trace_lost == 0),
            mmap_trace_slowdown.median,
            met(ready.median < TARGET_READY_MS),
            ready.median,
            met(rss.max < TARGET_RSS_MB),
            rss.max,
        );
        s
    }
}

/// Puts `table` between the bench markers of docs/benchmarks.md, adding a "Benchmarks" section
/// at the end if there is none; nothing else in the file changes.
pub fn write_readme(readme: &Path, table: &str) -> Result<()> {
    let text =
        std::fs::read_to_string(readme).with_context(|| format!("reading {}", readme.display()))?;
    let updated = splice(&text, table);
    std::fs::write(readme, updated).with_context(|| format!("writing {}", readme.display()))
}

fn splice(text: &str, table: &str) -> String {
    let block = format!("{BEGIN}\n{}\n{END}", table.trim_end());
    if let (Some(b), Some(e)) = (text.find(BEGIN), text.find(END))
        && b < e
    {
        return format!("{}{block}{}", &text[..b], &text[e + END.len()..]);
    }
    format!(
        "{}\n\n## Benchmarks\n\n`cargo xtask bench` (as root) measures what tracing costs and \
         what it keeps, next to bpftrace and strace, and rewrites the block below with its \
         results; it installs bpftrace, strace and GNU time from apt if missing. \
         `--rounds`, `--loops`, `--guest-loops`, `--parallel`, `--no-guest` and \
         `--no-readme` change what it runs.\n\n{block}\n",
        text.trim_end()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splices_between_markers_or_appends_a_section() {
        let first = splice("# x\n\nintro\n", "T1");
        assert!(first.starts_with("# x\n\nintro\n\n## Benchmarks\n"));
        assert!(first.ends_with(&format!("{BEGIN}\nT1\n{END}\n")));
        let again = splice(&(first.clone() + "\n## Later\n"), "T2\n");
        assert!(again.contains(&format!("{BEGIN}\nT2\n{END}\n\n## Later\n")));
        assert!(!again.contains("T1"));
    }
}
