//! Part 5: `mmap-trace verify` on real programs, each against itself untraced,
//! with a cold page cache (`echo 3 > /proc/sys/vm/drop_caches` before the run, as on a
//! first run after boot) and a warm one (right after), in rounds whose order alternates.
//!
//! The untraced time is the program's wall time from spawn to exit; the verified time is
//! the `duration_s` of verify's summary (attach to exit: the program's whole run, without
//! verify's own start-up, which part 3 reports).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context as _, Result, bail};

use super::Tools;

/// What each program does (the workloads of issue 20).
const PYTHON: &str = "import json, sqlite3, ssl; print(json.dumps({'imported': 3}))";
const NODE: &str = "const a = []; for (let i = 0; i < 100; i++) { const b = new ArrayBuffer(1 << 20); \
                    new Uint8Array(b).fill(1); a.push(b); } console.log(a.length);";
const JAVA: &str = r#"public class Hello {
    public static void main(String[] args) throws Exception {
        Thread[] threads = new Thread[4];
        long[] bytes = new long[4];
        for (int i = 0; i < 4; i++) {
            final int k = i;
            threads[i] = new Thread(() -> {
                for (int j = 0; j < 50; j++) {
                    byte[] a = new byte[1 << 20];
                    a[j] = (byte) j;
                    bytes[k] += a.length;
                }
            });
            threads[i].start();
        }
        long total = 0;
        for (int i = 0; i < 4; i++) { threads[i].join(); total += bytes[i]; }
        System.out.println("Hello: " + (total >> 20) + " MiB of arrays in 4 threads");
    }
}
"#;
const SQLITE: &str = "drop table if exists t; create table t(x integer, y text); \
                      with recursive c(i) as (select 1 union all select i + 1 from c where i < 20000) \
                      insert into t select i, hex(randomblob(16)) from c; \
                      create index t_y on t(y); select count(*), max(x) from t;";
/// The page chromium renders (a local file: this machine has no network).
const PAGE: &str = "<!doctype html><html><body><h1>mmap-trace</h1><p>verify follows every \
                    process chromium starts.</p></body></html>";
/// Iterations of the workload's mmap/munmap loop: a checkpoint per call, nothing else.
const WORKLOAD_LOOPS: u64 = 2000;

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Cache {
    Cold,
    Warm,
}

impl Cache {
    pub fn name(self) -> &'static str {
        match self {
            Cache::Cold => "cold",
            Cache::Warm => "warm",
        }
    }
}

/// One program in one cache state, over all rounds.
pub struct ProgramRow {
    pub name: &'static str,
    /// The command, as the README shows it.
    pub shown: String,
    /// A real program (counted in the median and worst case), not the synthetic loop.
    pub real: bool,
    pub cache: Cache,
    pub untraced_secs: Vec<f64>,
    pub verify_secs: Vec<f64>,
    pub checkpoints: Vec<u64>,
    pub pfn_checks: Vec<u64>,
    pub full_passes: Vec<u64>,
    pub mismatches: Vec<u64>,
    pub lost: Vec<u64>,
    /// verify's exit status was 0 (agreed, nothing lost, something checked).
    pub passed: Vec<bool>,
}

impl ProgramRow {
    pub fn slowdowns(&self) -> Vec<f64> {
        self.verify_secs
            .iter()
            .zip(&self.untraced_secs)
            .map(|(v, u)| v / u)
            .collect()
    }
}

struct Program {
    name: &'static str,
    shown: String,
    argv: Vec<OsString>,
    real: bool,
    /// A directory the program must find empty at each run (chromium's profile).
    fresh: Option<PathBuf>,
}

fn programs(tools: &Tools) -> Result<Vec<Program>> {
    let java_file = tools.scratch.join("Hello.java");
    std::fs::write(&java_file, JAVA).with_context(|| format!("writing {}", java_file.display()))?;
    let db = tools.scratch.join("bench.db");
    let page = tools.scratch.join("page.html");
    std::fs::write(&page, PAGE).with_context(|| format!("writing {}", page.display()))?;
    let profile = tools.scratch.join("chromium-profile");
    let mut page_url = OsString::from("file://");
    page_url.push(&page);
    let mut profile_arg = OsString::from("--user-data-dir=");
    profile_arg.push(&profile);
    let os = |parts: &[&dyn AsRef<std::ffi::OsStr>]| {
        parts.iter().map(|p| p.as_ref().to_owned()).collect()
    };
    Ok(vec![
        Program {
            name: "python3",
            shown: format!("python3 -c \"{PYTHON}\""),
            argv: os(&[&tools.python, &"-c", &PYTHON]),
            real: true,
            fresh: None,
        },
        Program {
            name: "node",
            shown: "node -e '…100 ArrayBuffers of 1 MiB, filled…'".into(),
            argv: os(&[&tools.node, &"-e", &NODE]),
            real: true,
            fresh: None,
        },
        Program {
            name: "java",
            shown: "java Hello.java (4 threads, 200 MiB of arrays; the source launcher compiles it first)".into(),
            argv: os(&[&tools.java, &java_file]),
            real: true,
            fresh: None,
        },
        Program {
            name: "sqlite3",
            shown: "sqlite3 bench.db '…20,000 rows, an index…'".into(),
            argv: os(&[&tools.sqlite3, &db, &SQLITE]),
            real: true,
            fresh: None,
        },
        Program {
            name: "chromium",
            shown: "chromium --headless --dump-dom file://…/page.html (a fresh profile; every \
                    process it starts is followed)"
                .into(),
            argv: os(&[
                &tools.chromium,
                &"--headless",
                // As root: the sandbox needs an unprivileged user.
                &"--no-sandbox",
                &"--disable-gpu",
                // Nothing that reaches for the network (closed here) or updates itself.
                &"--disable-quic",
                &"--no-first-run",
                &"--disable-background-networking",
                &"--disable-component-update",
                &"--disable-sync",
                &profile_arg,
                &"--dump-dom",
                &page_url,
            ]),
            real: true,
            fresh: Some(profile),
        },
        Program {
            name: "mmap-workload",
            shown: format!("mmap-workload --loop {WORKLOAD_LOOPS} (a checkpoint per call, nothing else)"),
            argv: os(&[&tools.workload, &"--loop", &WORKLOAD_LOOPS.to_string()]),
            real: false,
            fresh: None,
        },
    ])
}

/// Every program, cold then warm, untraced and verified in alternating order.
pub fn run(tools: &Tools, rounds: usize, verify_cli: &Path) -> Result<Vec<ProgramRow>> {
    let programs = programs(tools)?;
    let mut rows: Vec<ProgramRow> = programs
        .iter()
        .flat_map(|p| {
            [Cache::Cold, Cache::Warm].map(|cache| ProgramRow {
                name: p.name,
                shown: p.shown.clone(),
                real: p.real,
                cache,
                untraced_secs: Vec::new(),
                verify_secs: Vec::new(),
                checkpoints: Vec::new(),
                pfn_checks: Vec::new(),
                full_passes: Vec::new(),
                mismatches: Vec::new(),
                lost: Vec::new(),
                passed: Vec::new(),
            })
        })
        .collect();
    let out = tools.scratch.join("verify-program.jsonl");
    for round in 0..rounds {
        for (i, row) in rows.iter_mut().enumerate() {
            let program = &programs[i / 2];
            let verify_first = (round + i / 2) % 2 == 1;
            for verified in [verify_first, !verify_first] {
                if let Some(dir) = &program.fresh {
                    let _ = std::fs::remove_dir_all(dir);
                }
                if row.cache == Cache::Cold {
                    drop_caches()?;
                }
                if verified {
                    verify_once(verify_cli, &program.argv, &out, row)?;
                } else {
                    row.untraced_secs.push(untraced_once(&program.argv)?);
                }
            }
            eprintln!(
                "bench: round {}: {:<13} {}: untraced {:.3} s, verify {:.3} s, {} checkpoints, {} PFN checks, {}",
                round + 1,
                row.name,
                row.cache.name(),
                row.untraced_secs.last().unwrap_or(&f64::NAN),
                row.verify_secs.last().unwrap_or(&f64::NAN),
                row.checkpoints.last().unwrap_or(&0),
                row.pfn_checks.last().unwrap_or(&0),
                if row.passed.last() == Some(&true) {
                    "PASS"
                } else {
                    "FAIL"
                }
            );
        }
    }
    Ok(rows)
}

/// Writes back dirty pages, then drops the page cache, dentries and inodes.
fn drop_caches() -> Result<()> {
    let _ = Command::new("sync").status();
    std::fs::write("/proc/sys/vm/drop_caches", "3\n")
        .context("writing /proc/sys/vm/drop_caches (needs root)")
}

fn untraced_once(argv: &[OsString]) -> Result<f64> {
    let started = Instant::now();
    // Its stderr is kept for a failure (chromium's is chatty on a machine without D-Bus).
    let output = Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .with_context(|| format!("running {:?}", argv[0]))?;
    let secs = started.elapsed().as_secs_f64();
    if !output.status.success() {
        bail!(
            "{:?} failed untraced: {}\n{}",
            argv[0],
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(secs)
}

fn verify_once(cli: &Path, argv: &[OsString], out: &PathBuf, row: &mut ProgramRow) -> Result<()> {
    let _ = std::fs::remove_file(out);
    let output = Command::new(cli)
        .args(["verify", "--json", "--output"])
        .arg(out)
        .arg("--")
        .args(argv)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .with_context(|| format!("running {} verify", cli.display()))?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !matches!(output.status.code(), Some(0 | 1)) {
        bail!(
            "verify of {:?} failed ({}):\n{stderr}",
            argv[0],
            output.status
        );
    }
    let text =
        std::fs::read_to_string(out).with_context(|| format!("reading {}", out.display()))?;
    let summary = text
        .lines()
        .rev()
        .find(|l| l.starts_with("{\"type\":\"summary\""))
        .with_context(|| format!("verify of {:?} wrote no summary:\n{stderr}", argv[0]))?;
    let summary: serde_json::Value = serde_json::from_str(summary)?;
    let n = |key: &str| summary[key].as_u64().unwrap_or(0);
    if !summary["ended"]
        .as_str()
        .unwrap_or_default()
        .contains("status 0")
    {
        bail!(
            "{:?} did not exit cleanly under verify: {}",
            argv[0],
            summary["ended"]
        );
    }
    row.verify_secs.push(
        summary["duration_s"]
            .as_f64()
            .context("summary without duration_s")?,
    );
    row.checkpoints.push(n("checkpoints"));
    row.pfn_checks.push(n("pfn_checks"));
    row.full_passes.push(n("pfn_full_passes"));
    row.mismatches.push(n("mismatches"));
    row.lost.push(n("lost_total"));
    row.passed.push(output.status.success());
    Ok(())
}
