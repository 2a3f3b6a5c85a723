//! `cargo xtask bench`: what tracing the mmap/munmap loop costs with mmap-trace, bpftrace
//! and strace, how much each keeps, mmap-trace's lossless throughput, start-up and memory,
//! and the loop in the guest with the kernel probes on. One run alternates the variants
//! round by round (so drift hits them all alike), prints one table and writes it into
//! docs/benchmarks.md between the bench markers.
//!
//! Every loop is started held (`sh` waiting on a pipe before it execs the workload), the
//! tracer is attached to that pid and reports ready, and only then is the loop released
//! and timed from release to exit: the tracer's start-up is not billed to the loop, and
//! the untraced loop is timed exactly the same way.

mod accounting;
mod guest;
mod host;
mod programs;
mod report;
mod scaling;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, bail};
use clap::Args;

use crate::build::Artifacts;
use crate::setup::{self, Apt, Ready};
use crate::{GuestArgs, Workspace, cmd, section};

#[derive(Args)]
pub struct BenchArgs {
    #[command(flatten)]
    pub guest: GuestArgs,
    /// Rounds: each runs every variant once, in rotating order (7: single runs on this
    /// shared machine vary by ±20%, the median of 7 much less).
    #[arg(long, default_value_t = 7)]
    rounds: usize,
    /// Iterations of {mmap 16 KiB, munmap} per loop on the host.
    #[arg(long, default_value_t = 200_000)]
    loops: u64,
    /// Iterations per loop in the guest (TCG is ~20-50x slower than the host).
    #[arg(long, default_value_t = 20_000)]
    guest_loops: u64,
    /// Concurrent loops for the throughput runs (comma-separated).
    #[arg(long, value_delimiter = ',', default_values_t = [1u32, 2, 4])]
    parallel: Vec<u32>,
    /// The ring buffer (KiB) of the run that shows what mmap-trace reports when it loses.
    #[arg(long, default_value_t = 16)]
    small_ring_kib: u32,
    /// MiB of fresh pages the fault loop touches (`mmap-workload --touch`; 1024: the
    /// 262,144 faults of a 1 GiB memset).
    #[arg(long, default_value_t = 1024)]
    touch_mib: u64,
    /// Skip the guest part.
    #[arg(long)]
    no_guest: bool,
    /// Skip verify on real programs (python3, node, java, sqlite3, chromium).
    #[arg(long)]
    no_programs: bool,
    /// Run only verify on real programs (prints its table; README untouched).
    #[arg(long, conflicts_with = "no_programs")]
    only_programs: bool,
    /// Run only the page-fault comparison (prints its table; README untouched).
    #[arg(long, conflicts_with = "only_programs")]
    only_faults: bool,
    /// Skip verify at 2,000, 20,000 and 60,000 VMAs.
    #[arg(long)]
    no_scaling: bool,
    /// Run only verify at 2,000, 20,000 and 60,000 VMAs (prints its table; README
    /// untouched).
    #[arg(long, conflicts_with_all = ["only_programs", "only_faults"])]
    only_scaling: bool,
    /// The mmap-trace binary whose verify the program runs use (default: this build's;
    /// another one gives a before/after comparison).
    #[arg(long, value_name = "PATH")]
    verify_cli: Option<PathBuf>,
    /// Print the table without writing docs/benchmarks.md.
    #[arg(long)]
    no_readme: bool,
}

/// Packages the comparison needs: (binary, Debian package).
const TOOLS: &[(&str, &str)] = &[
    ("bpftrace", "bpftrace"),
    ("strace", "strace"),
    ("/usr/bin/time", "time"),
    // The real programs verify runs on (Debian's python3, not a pyenv shim on PATH).
    ("/usr/bin/python3", "python3"),
    ("node", "nodejs"),
    ("java", "default-jdk-headless"),
    ("sqlite3", "sqlite3"),
    ("chromium", "chromium"),
];

/// The programs a bench run drives.
pub struct Tools {
    pub cli: PathBuf,
    /// The floor's binary (mmap-trace-floor/): empty programs on trace's attach points.
    pub floor: PathBuf,
    pub workload: PathBuf,
    pub bpftrace: PathBuf,
    pub strace: PathBuf,
    pub time: PathBuf,
    pub python: PathBuf,
    pub node: PathBuf,
    pub java: PathBuf,
    pub sqlite3: PathBuf,
    pub chromium: PathBuf,
    /// Debian's linux-perf, for `perf trace --pf=all` beside `trace --faults`; or why it
    /// does not run here.
    pub perf: Result<PathBuf, String>,
    /// Scratch files (traces, RSS reports).
    pub scratch: PathBuf,
}

pub fn run(ws: &Workspace, ready: &Ready, artifacts: &Artifacts, args: &BenchArgs) -> Result<i32> {
    if args.rounds == 0 || args.loops == 0 || args.parallel.is_empty() {
        bail!("--rounds, --loops and --parallel must be positive");
    }
    section("bench: tools");
    let tools = ensure_tools(ws, artifacts)?;
    let _one_at_a_time = crate::host_lock::hold("cargo xtask bench")?;
    let verify_cli = args.verify_cli.clone().unwrap_or_else(|| tools.cli.clone());
    let run_programs = |rounds| -> Result<Vec<programs::ProgramRow>> {
        section(&format!(
            "bench: verify on real programs ({rounds} rounds; cold and warm page cache; {})",
            verify_cli.display()
        ));
        programs::run(&tools, rounds, &verify_cli)
    };
    if args.only_programs {
        let rows = run_programs(args.rounds)?;
        println!("{}", report::programs_markdown(&rows));
        return Ok(0);
    }
    let run_faults = || -> Result<host::FaultBench> {
        section(&format!(
            "bench: faults ({} rounds; mmap-workload --touch-mib {}: untraced, trace --faults, \
             perf trace --pf=all)",
            args.rounds, args.touch_mib
        ));
        host::faults(&tools, args.rounds, args.touch_mib)
    };
    if args.only_faults {
        println!("{}", run_faults()?.markdown());
        return Ok(0);
    }
    let run_scaling = || -> Result<Vec<scaling::ScalingRow>> {
        section(&format!(
            "bench: verify at {:?} VMAs ({} rounds; verify --pid, then mprotect calls)",
            scaling::SIZES,
            args.rounds
        ));
        scaling::run(&tools, args.rounds)
    };
    if args.only_scaling {
        println!("{}", scaling::markdown(&run_scaling()?));
        return Ok(0);
    }

    section(&format!(
        "bench: host loop ({} rounds x {} iterations; untraced, mmap-trace, bpftrace, strace)",
        args.rounds, args.loops
    ));
    let overhead = host::overhead(&tools, args.rounds, args.loops)?;
    section("bench: where the time goes (BPF_ENABLE_STATS, one loop each)");
    // Best effort: a kernel without the accounting must not cost the timed figures.
    let accounting = host::accounting(&tools, args.loops).unwrap_or_else(|e| {
        eprintln!("bench: WARNING: no accounting section: {e:#}");
        Vec::new()
    });

    section(&format!(
        "bench: throughput ({:?} concurrent loops)",
        args.parallel
    ));
    let throughput = host::throughput(&tools, args.rounds, args.loops, &args.parallel)?;
    let faults = run_faults()?;
    let small_ring = host::small_ring(
        &tools,
        args.loops,
        *args.parallel.iter().max().unwrap_or(&1),
        args.small_ring_kib,
    )?;

    let guest = if args.no_guest {
        None
    } else {
        section(&format!(
            "bench: guest loop ({} rounds x {} iterations, kernel probes on, TCG)",
            args.rounds, args.guest_loops
        ));
        Some(guest::run(
            ready,
            artifacts,
            args.rounds,
            args.guest_loops,
            &args.guest.options(),
        )?)
    };

    let programs = if args.no_programs {
        Vec::new()
    } else {
        run_programs(args.rounds)?
    };

    let scaling = if args.no_scaling {
        Vec::new()
    } else {
        run_scaling()?
    };

    section("bench: results");
    let results = report::Results {
        machine: report::Machine::probe(),
        rounds: args.rounds,
        loops: args.loops,
        overhead,
        accounting,
        throughput,
        small_ring,
        faults,
        guest,
        programs,
        scaling,
    };
    let table = results.markdown();
    println!("{table}");
    if !args.no_readme {
        let readme = ws.root.join("docs/benchmarks.md");
        report::write_readme(&readme, &table)?;
        eprintln!("bench: wrote the table into {}", readme.display());
    }
    Ok(0)
}

/// Installs the comparison tracers if missing and finds the binaries.
fn ensure_tools(ws: &Workspace, artifacts: &Artifacts) -> Result<Tools> {
    let missing: Vec<&str> = TOOLS
        .iter()
        .filter(|(bin, _)| which::which(bin).is_err())
        .map(|(_, package)| *package)
        .collect();
    if missing.is_empty() {
        eprintln!("bench: bpftrace, strace, time, python3, node, java, sqlite3, chromium: present");
    } else {
        eprintln!("bench: installing apt packages: {}", missing.join(" "));
        let mut apt = Apt::default();
        apt.update_once()?;
        cmd::run(
            setup::apt_command("apt-get")
                .args(["install", "-y", "-q", "--no-install-recommends"])
                .args(&missing),
        )?;
    }
    let find = |bin: &str| which::which(bin).with_context(|| format!("{bin} is not on PATH"));
    let built = |name: &str| {
        artifacts
            .bin(name)
            .map(Path::to_path_buf)
            .with_context(|| format!("the build produced no {name}"))
    };
    let workload = built("mmap-workload")?;
    let floor = built("mmap-trace-floor")?;
    let scratch = ws.target_dir.join("bench");
    std::fs::create_dir_all(&scratch).with_context(|| format!("creating {}", scratch.display()))?;
    let tools = Tools {
        cli: artifacts.cli.clone(),
        floor,
        workload,
        bpftrace: find("bpftrace")?,
        strace: find("strace")?,
        time: find("/usr/bin/time")?,
        python: find("/usr/bin/python3")?,
        node: find("node")?,
        java: find("java")?,
        sqlite3: find("sqlite3")?,
        chromium: find("chromium")?,
        perf: perf_trace(),
        scratch,
    };
    for (name, path) in [("bpftrace", &tools.bpftrace), ("strace", &tools.strace)] {
        eprintln!("bench: {name}: {}", version(path));
    }
    Ok(tools)
}

/// `perf` if `perf trace --pf=all` runs on this kernel (it needs the page-fault software
/// events and tracefs), else why not.
fn perf_trace() -> Result<PathBuf, String> {
    let perf = which::which("perf")
        .map_err(|_| "perf is not installed (Debian: linux-perf)".to_string())?;
    let out = Command::new(&perf)
        .args([
            "trace",
            "--pf=all",
            "--no-syscalls",
            "-o",
            "/dev/null",
            "--",
            "true",
        ])
        .output()
        .map_err(|e| format!("running {}: {e}", perf.display()))?;
    if out.status.success() {
        Ok(perf)
    } else {
        Err(format!(
            "`perf trace --pf=all -- true` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The version `--version` prints (its first line's last word: `bpftrace v0.17.0`,
/// `strace -- version 6.1`, `mmap-trace 0.1.0`).
pub fn version(program: &Path) -> String {
    cmd::output(Command::new(program).arg("--version"))
        .ok()
        .and_then(|o| {
            let text = String::from_utf8_lossy(&o.stdout);
            let word = text.lines().next()?.split_whitespace().last()?;
            Some(word.trim_start_matches('v').to_owned())
        })
        .unwrap_or_else(|| "unknown version".into())
}

/// Median and range of a sample.
#[derive(Clone, Copy, Debug, Default)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    pub fn of(values: &[f64]) -> Spread {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return Spread::default();
        }
        v.sort_by(f64::total_cmp);
        let mid = v.len() / 2;
        let median = if v.len() % 2 == 1 {
            v[mid]
        } else {
            (v[mid - 1] + v[mid]) / 2.0
        };
        Spread {
            median,
            min: v[0],
            max: v[v.len() - 1],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_of_odd_and_even_samples() {
        let s = Spread::of(&[3.0, 1.0, 2.0]);
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        let s = Spread::of(&[4.0, 1.0, 2.0, 3.0]);
        assert_eq!((s.median, s.min, s.max), (2.5, 1.0, 4.0));
        assert_eq!(Spread::of(&[]).median, 0.0);
    }
}
