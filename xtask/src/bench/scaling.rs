//! verify at any size: a process that already has N VMAs (`mmap-workload --vmas N`:
//! one-page VMAs whose protections alternate, so none merge), verify attached to it with
//! `--pid`, then a fixed number of mprotect calls, a checkpoint each.
//!
//! "Per checkpoint" is what one more checkpoint costs: the difference between a run of
//! [`MANY`] changes and one of [`FEW`], over the difference in checkpoints. The attach
//! (the seed reads maps whole) and the exit's whole comparison happen once a run at any
//! count of changes, so they are not billed to each checkpoint; the whole run, attach to
//! exit at [`FEW`] changes, is set against the same changes untraced.

use std::io::{BufRead as _, BufReader, Write as _};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::Instant;

use anyhow::{Context as _, Result, bail};

use super::{Spread, Tools};

/// The address-space sizes measured.
pub const SIZES: [u64; 3] = [2_000, 20_000, 60_000];
/// Changes of the two runs whose difference is the per-checkpoint cost.
const FEW: u64 = 600;
const MANY: u64 = 2_400;
/// Per checkpoint at the largest size ≤ this many times that at the smallest.
pub const TARGET_RATIO: f64 = 2.0;

/// One size, over the rounds.
pub struct ScalingRow {
    pub vmas: u64,
    pub per_checkpoint_us: Vec<f64>,
    /// Verified run (attach to exit) and untraced changes, at [`FEW`] changes.
    pub verified_secs: Vec<f64>,
    pub untraced_secs: Vec<f64>,
    pub mismatches: u64,
    pub lost: u64,
    /// verify's exit status was 0 in every run.
    pub passed: usize,
    pub runs: usize,
}

impl ScalingRow {
    pub fn slowdowns(&self) -> Vec<f64> {
        self.verified_secs
            .iter()
            .zip(&self.untraced_secs)
            .map(|(v, u)| v / u)
            .collect()
    }
}

/// Every size, `rounds` times each (sizes alternate within a round).
pub fn run(tools: &Tools, rounds: usize) -> Result<Vec<ScalingRow>> {
    let mut rows: Vec<ScalingRow> = SIZES
        .iter()
        .map(|&vmas| ScalingRow {
            vmas,
            per_checkpoint_us: Vec::new(),
            verified_secs: Vec::new(),
            untraced_secs: Vec::new(),
            mismatches: 0,
            lost: 0,
            passed: 0,
            runs: 0,
        })
        .collect();
    let out = tools.scratch.join("verify-scaling.jsonl");
    for round in 0..rounds {
        for row in &mut rows {
            row.untraced_secs
                .push(untraced(&tools.workload, row.vmas, FEW)?);
            let few = verified(&tools.cli, &tools.workload, row.vmas, FEW, &out)?;
            let many = verified(&tools.cli, &tools.workload, row.vmas, MANY, &out)?;
            let per_checkpoint = (many.duration_s - few.duration_s)
                / (many.checkpoints.saturating_sub(few.checkpoints)).max(1) as f64;
            row.per_checkpoint_us.push(per_checkpoint * 1e6);
            row.verified_secs.push(few.duration_s);
            for run in [&few, &many] {
                row.mismatches += run.mismatches;
                row.lost += run.lost;
                row.passed += usize::from(run.passed);
                row.runs += 1;
            }
            eprintln!(
                "bench: round {}: {} VMAs: {:.1} µs a checkpoint, verified {:.3} s ({} checkpoints, {} whole maps reads), untraced {:.4} s",
                round + 1,
                row.vmas,
                per_checkpoint * 1e6,
                few.duration_s,
                few.checkpoints,
                few.whole_reads,
                row.untraced_secs.last().unwrap_or(&f64::NAN)
            );
        }
    }
    Ok(rows)
}

/// The workload with its VMAs made, waiting for the word to change them.
struct Ready {
    child: Child,
    stdin: ChildStdin,
}

fn start(workload: &Path, vmas: u64, changes: u64) -> Result<Ready> {
    let mut child = Command::new(workload)
        .args([
            "--vmas",
            &vmas.to_string(),
            "--changes",
            &changes.to_string(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {}", workload.display()))?;
    let stdin = child.stdin.take().context("workload stdin")?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().context("workload stdout")?).read_line(&mut line)?;
    if line.trim() != "ready" {
        bail!(
            "{} --vmas {vmas} did not get ready: {line:?}",
            workload.display()
        );
    }
    Ok(Ready { child, stdin })
}

impl Ready {
    /// Lets the changes run; returns when the workload has exited.
    fn go(mut self) -> Result<f64> {
        let started = Instant::now();
        self.stdin.write_all(b"go\n")?;
        drop(self.stdin);
        let status = self.child.wait()?;
        let secs = started.elapsed().as_secs_f64();
        if !status.success() {
            bail!("the scaling workload failed: {status}");
        }
        Ok(secs)
    }
}

fn untraced(workload: &Path, vmas: u64, changes: u64) -> Result<f64> {
    start(workload, vmas, changes)?.go()
}

struct Verified {
    duration_s: f64,
    checkpoints: u64,
    whole_reads: u64,
    mismatches: u64,
    lost: u64,
    passed: bool,
}

fn verified(cli: &Path, workload: &Path, vmas: u64, changes: u64, out: &Path) -> Result<Verified> {
    let _ = std::fs::remove_file(out);
    let ready = start(workload, vmas, changes)?;
    let mut verify = Command::new(cli)
        .args(["verify", "--json", "--output"])
        .arg(out)
        .args(["--pid", &ready.child.id().to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {} verify", cli.display()))?;
    let mut stderr = BufReader::new(verify.stderr.take().context("verify stderr")?);
    let mut said = String::new();
    loop {
        let mut line = String::new();
        if stderr.read_line(&mut line)? == 0 {
            bail!("verify --pid ended before it was ready:\n{said}");
        }
        said.push_str(&line);
        if line.starts_with("mmap-trace: ready:") {
            break;
        }
    }
    // Drained meanwhile, so verify never blocks on a full pipe.
    let rest = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
        text
    });
    ready.go()?;
    let status = verify.wait()?;
    let said = said + &rest.join().unwrap_or_default();
    let text =
        std::fs::read_to_string(out).with_context(|| format!("reading {}", out.display()))?;
    let summary: serde_json::Value = text
        .lines()
        .rev()
        .find(|l| l.starts_with("{\"type\":\"summary\""))
        .map(serde_json::from_str)
        .transpose()?
        .with_context(|| format!("verify --pid wrote no summary:\n{said}"))?;
    let n = |key: &str| summary[key].as_u64().unwrap_or(0);
    Ok(Verified {
        duration_s: summary["duration_s"]
            .as_f64()
            .context("summary without duration_s")?,
        checkpoints: n("checkpoints"),
        whole_reads: n("maps_whole_reads"),
        mismatches: n("mismatches"),
        lost: n("lost_total"),
        passed: status.success(),
    })
}

/// The table and its target line.
pub fn markdown(rows: &[ScalingRow]) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "**verify at any size**: `mmap-workload --vmas N` (one-page VMAs that never merge), \
         `verify --pid` attached, then mprotect calls. Per checkpoint: (run of {MANY} changes \
         − run of {FEW}) / (their difference in checkpoints); verified: attach to exit at \
         {FEW} changes, against the same changes untraced.\n"
    );
    s.push_str(
        "| VMAs | per checkpoint | verified run | untraced | slowdown | result |\n\
         |---|---|---|---|---|---|\n",
    );
    for r in rows {
        let cell = |v: &[f64], unit: &str, d: usize| {
            let sp = Spread::of(v);
            format!("{:.d$}{unit} ({:.d$}–{:.d$})", sp.median, sp.min, sp.max)
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {}/{} PASS, {} mismatches, {} lost |",
            r.vmas,
            cell(&r.per_checkpoint_us, " µs", 1),
            cell(&r.verified_secs, " s", 3),
            cell(&r.untraced_secs, " s", 4),
            cell(&r.slowdowns(), "×", 1),
            r.passed,
            r.runs,
            r.mismatches,
            r.lost,
        );
    }
    let per = |r: Option<&ScalingRow>| r.map(|r| Spread::of(&r.per_checkpoint_us).median);
    if let (Some(small), Some(large)) = (per(rows.first()), per(rows.last())) {
        let ratio = large / small.max(f64::MIN_POSITIVE);
        let _ = writeln!(
            s,
            "\n**Target**: per checkpoint at {} VMAs ≤ {TARGET_RATIO}× that at {}: {} ({ratio:.2}×).",
            rows.last().map_or(0, |r| r.vmas),
            rows.first().map_or(0, |r| r.vmas),
            if ratio <= TARGET_RATIO {
                "met"
            } else {
                "MISSED"
            },
        );
    }
    s
}
