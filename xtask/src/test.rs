//! `cargo xtask test`: unit and host tests, then the guest tests, one VM boot per guest
//! kernel (the matrix of kernel_line.rs without --kernel).

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::Stdio;

use anyhow::{Context as _, Result};

use crate::build::{self, Artifacts, TARGET};
use crate::cmd;
use crate::guest_kernel::GuestKernel;
use crate::qemu::{self, Markers, Options};
use crate::selftests::{self, Selftests};
use crate::setup::Ready;
use crate::{Workspace, section};

/// Per-binary result line printed by the guest: `<prefix> <name> <status>`.
fn result_prefix(m: &Markers) -> String {
    format!("MMTRACE-TEST-{}", m.nonce())
}

struct Tally {
    passed: usize,
    failed: usize,
    lines: Vec<String>,
}

/// Which suites run.
#[derive(Clone, Copy)]
pub struct Scope {
    /// Each line's default suites (kernel_line::LINES); otherwise every suite.
    pub matrix: bool,
    /// Plain `cargo xtask test` (no --kernel, no --arch): the arm64 line runs a bounded
    /// part of guest_verify.
    pub plain: bool,
}

pub fn run(
    ws: &Workspace,
    ready: &Ready,
    builds: &[Artifacts],
    opts: &Options,
    scope: Scope,
    lint_failed: Option<bool>,
) -> Result<i32> {
    let mut tally = Tally {
        passed: 0,
        failed: 0,
        lines: Vec::new(),
    };
    if lint_failed.is_none() {
        tally
            .lines
            .push("lint: not run (the x86-64 host's; plain `cargo xtask test` runs it)".into());
    } else if lint_failed == Some(true) {
        tally.failed += 1;
        tally.lines.push(
            "lint: FAILED (cargo xtask lint: fmt --check, clippy -D warnings, import cycles)"
                .into(),
        );
    } else {
        tally.passed += 1;
        tally
            .lines
            .push("lint: fmt and clippy clean, no import cycle".into());
    }
    match builds.iter().find(|b| b.arch.is_host()) {
        Some(host) => {
            section("unit + host tests (cargo test --workspace, on the host)");
            let _one_at_a_time = crate::host_lock::hold("cargo xtask test: host tests")?;
            host_tests(ws, ready, host, &mut tally)?;
        }
        None => tally
            .lines
            .push("host: not run (this x86-64 host runs them: plain `cargo xtask test`)".into()),
    }

    // Each guest is one single-CPU TCG process: with two host CPUs two guests run side by
    // side in about the time of the longer, each line's results kept together below (a
    // line that `runs_alone` excepted).
    let at_once = guests_at_once(ready.guests.len());
    let guest_opts = |kernel: &GuestKernel| Options {
        label: if at_once > 1 {
            format!("[{}] ", kernel.version)
        } else {
            String::new()
        },
        ..opts.clone()
    };
    if at_once > 1 {
        let alone: Vec<&str> = ready
            .guests
            .iter()
            .filter(|k| k.line.runs_alone)
            .map(|k| k.version.as_str())
            .collect();
        section(&format!(
            "guest tests: {} kernels, {at_once} at a time{} (console lines labelled by kernel)",
            ready.guests.len(),
            if alone.is_empty() {
                String::new()
            } else {
                format!(", {} first and alone", alone.join(", "))
            }
        ));
    }
    let finished: std::sync::Mutex<Vec<Option<Result<GuestRun>>>> =
        std::sync::Mutex::new((0..ready.guests.len()).map(|_| None).collect());
    // A line whose guest must have the host to itself runs first, alone; then the others,
    // `at_once` at a time.
    let (alone, shared): (Vec<_>, Vec<_>) = ready
        .guests
        .iter()
        .enumerate()
        .partition(|(_, k)| k.line.runs_alone);
    for (batch, workers) in [(alone, 1), (shared, at_once)] {
        let queue = std::sync::Mutex::new(batch.into_iter());
        std::thread::scope(|threads| {
            for _ in 0..workers {
                threads.spawn(|| {
                    loop {
                        let next = queue.lock().map(|mut q| q.next());
                        let Ok(Some((i, kernel))) = next else { break };
                        let run = one_guest(kernel, builds, &guest_opts(kernel), scope);
                        if let Ok(mut done) = finished.lock() {
                            done[i] = Some(run);
                        }
                    }
                });
            }
        });
    }
    let results = finished
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut dmesg_clean = true;
    for (kernel, run) in ready.guests.iter().zip(results) {
        match run {
            Some(Ok(run)) => {
                tally.passed += run.tally.passed;
                tally.failed += run.tally.failed;
                tally.lines.extend(run.tally.lines);
                dmesg_clean &= run.dmesg_clean;
            }
            // One guest that could not be run does not hide the others' results.
            Some(Err(e)) => {
                tally.failed += 1;
                tally
                    .lines
                    .push(format!("guest {}: FAILED to run: {e:#}", kernel.version));
            }
            None => {
                tally.failed += 1;
                tally.lines.push(format!(
                    "guest {}: FAILED to run: its runner stopped (see the panic above)",
                    kernel.version
                ));
            }
        }
    }

    section("summary");
    for l in &tally.lines {
        println!("{l}");
    }
    println!("{} passed, {} failed", tally.passed, tally.failed);
    Ok(if tally.failed == 0 && dmesg_clean {
        0
    } else {
        1
    })
}

/// One guest kernel's results.
struct GuestRun {
    tally: Tally,
    dmesg_clean: bool,
}

/// How many guests run at once: one per host CPU, as each is a single-CPU TCG process
/// (`MMTRACE_GUESTS_AT_ONCE` overrides it; 1 runs them one after another).
fn guests_at_once(guests: usize) -> usize {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chosen = std::env::var("MMTRACE_GUESTS_AT_ONCE")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or(cpus);
    chosen.min(guests).max(1)
}

/// Boots `kernel` once with its suites and counts their results.
fn one_guest(
    kernel: &GuestKernel,
    builds: &[Artifacts],
    opts: &Options,
    scope: Scope,
) -> Result<GuestRun> {
    let matrix = scope.matrix;
    let mut tally = Tally {
        passed: 0,
        failed: 0,
        lines: Vec::new(),
    };
    let label = &opts.label;
    let artifacts = builds
        .iter()
        .find(|b| b.arch == kernel.arch)
        .with_context(|| format!("nothing was built for {}", kernel.arch))?;
    let default_suites = if kernel.arch.is_host() {
        kernel.line.default_suites
    } else {
        Some(crate::kernel_line::ARM64_SUITES)
    };
    let mut suites: Vec<&(String, std::path::PathBuf)> = artifacts
        .guest_tests
        .iter()
        .filter(|(name, _)| match default_suites {
            Some(chosen) if matrix => chosen.contains(&name.as_str()),
            _ => true,
        })
        .collect();
    section(&format!(
        "{label}guest tests on {} ({}, kernel line {}, one VM boot)",
        kernel.version, kernel.arch, kernel.line.name
    ));
    let whose = format!("guest {}", kernel.version);
    match artifacts
        .selftests
        .iter()
        .find(|(v, _)| *v == kernel.version)
    {
        Some((_, Ok(built))) => count_build_failures(&whose, built, &mut tally),
        // Without its selftests the suite cannot run: one failure, with the reason.
        Some((_, Err(why))) if suites.iter().any(|(n, _)| n == selftests::GUEST_SUITE) => {
            suites.retain(|(n, _)| n != selftests::GUEST_SUITE);
            tally.failed += 1;
            tally.lines.push(format!(
                "{whose}: {}: FAILED (no mm selftests: {why})",
                selftests::GUEST_SUITE
            ));
        }
        Some((_, Err(_))) => {}
        None => {}
    }
    let left_out: Vec<&str> = artifacts
        .guest_tests
        .iter()
        .map(|(name, _)| name.as_str())
        .filter(|name| !suites.iter().any(|(n, _)| n == name))
        .collect();
    if !left_out.is_empty() {
        // Said aloud, in the summary too: not run is not passed.
        let line = format!(
            "guest {}: NOT RUN on the {} line ({}): {} (docs/kernels.md and docs/arm64.md say why)",
            kernel.version,
            kernel.line.name,
            kernel.arch,
            left_out.join(", ")
        );
        println!("{label}!!! {line}");
        tally.lines.push(line);
    }
    // The arm64 line of the matrix: guest_verify's bounded list, said in the summary.
    let filters: &[(&str, &[&str])] = if scope.plain && !kernel.arch.is_host() {
        &[("guest_verify", crate::kernel_line::ARM64_MATRIX_VERIFY)]
    } else {
        &[]
    };
    for (suite, tests) in filters {
        if suites.iter().any(|(n, _)| n == suite) {
            tally.lines.push(format!(
                "guest {}: {suite} runs {} of its tests here ({}); all of them: cargo \
                 xtask test --arch {}",
                kernel.version,
                tests.len(),
                tests.join(", "),
                kernel.arch
            ));
        }
    }
    let clean = guest_tests(kernel, &suites, filters, artifacts, opts, &mut tally)?;
    tally.lines.push(format!(
        "guest {} dmesg: {}",
        kernel.version,
        if clean { "clean" } else { "SPLATS (see above)" }
    ));
    Ok(GuestRun {
        tally,
        dmesg_clean: clean,
    })
}

/// Runs `cargo test` on the host, echoing its output and counting libtest's
/// `test result:` lines (one per test binary).
fn host_tests(
    ws: &Workspace,
    ready: &Ready,
    artifacts: &Artifacts,
    tally: &mut Tally,
) -> Result<()> {
    let mut c = build::cargo(ready);
    c.current_dir(&ws.root)
        // --no-fail-fast: one failing suite must not hide the others' results.
        .args([
            "test",
            "--release",
            "--no-fail-fast",
            "--target",
            TARGET,
            "--workspace",
            "--exclude",
            "mmap-trace-ebpf",
        ])
        .env("MMTRACE_CLI", &artifacts.cli)
        // host_selftests says why, and fails, when the selftests could not be prepared.
        .env_remove(selftests::ENV)
        .env_remove(selftests::ENV_ERROR)
        .env(crate::setup::PERFETTO_PYTHON_VAR, &ready.perfetto_python)
        // The agent's OTLP test decodes with opentelemetry-proto from the same venv.
        .env("MMTRACE_OTLP_PYTHON", &ready.perfetto_python)
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    match &artifacts.host_selftests {
        Ok(built) => {
            c.env(selftests::ENV, &built.dir);
            count_build_failures("host", built, tally);
        }
        Err(why) => {
            c.env(selftests::ENV_ERROR, why);
        }
    }
    for (var, name) in [
        ("MMTRACE_WORKLOAD", "mmap-workload"),
        ("MMTRACE_FLOOR", "mmap-trace-floor"),
    ] {
        if let Some(bin) = artifacts.bin(name) {
            c.env(var, bin);
        }
    }
    let what = cmd::describe(&c);
    let mut child = c.spawn().with_context(|| format!("running {what}"))?;
    let stdout = child.stdout.take().context("cargo test stdout")?;
    let (mut ok, mut failed) = (0, 0);
    for line in BufReader::new(stdout).lines() {
        let line = line.with_context(|| format!("reading output of {what}"))?;
        println!("{line}");
        if line.starts_with("test result: ok.") {
            ok += 1;
        } else if line.starts_with("test result: FAILED.") {
            failed += 1;
        }
    }
    let status = child.wait().with_context(|| format!("running {what}"))?;
    // A build failure prints no `test result:` line: count it.
    if !status.success() && failed == 0 {
        failed = 1;
    }
    tally.passed += ok;
    tally.failed += failed;
    tally.lines.push(format!(
        "host: {ok} test binaries passed, {failed} failed (cargo test: {status})"
    ));
    Ok(())
}

/// Each selftest that did not build is one failure, with its line (what, why, the fix);
/// those the tree does not have are said, not counted.
fn count_build_failures(whose: &str, built: &Selftests, tally: &mut Tally) {
    for f in &built.failures {
        tally.failed += 1;
        tally.lines.push(format!("{whose}: FAILED: {f}"));
    }
    if !built.absent.is_empty() {
        tally.lines.push(format!(
            "{whose}: mm selftests not in {}: {} (not run, not counted)",
            built.source,
            built.absent.join(", ")
        ));
    }
}

/// Boots `kernel` once, runs each of `tests` with `--test-threads=1`; returns whether the
/// guest kernel log was clean.
fn guest_tests(
    kernel: &GuestKernel,
    tests: &[&(String, std::path::PathBuf)],
    filters: &[(&str, &[&str])],
    artifacts: &Artifacts,
    opts: &Options,
    tally: &mut Tally,
) -> Result<bool> {
    let markers = Markers::new();
    let prefix = result_prefix(&markers);
    let script = if tests.is_empty() {
        println!(
            "!!! no guest tests defined (no guest_* [[test]] targets in tests/Cargo.toml): smoke boot only"
        );
        "cat /proc/version".to_owned()
    } else {
        guest_script(
            tests.iter().map(|(n, _)| n.as_str()),
            filters,
            kernel.arch,
            &prefix,
        )
    };
    let outcome = qemu::run_in_guest(kernel, artifacts, script, &markers, opts)?;
    let code = outcome.report();

    if tests.is_empty() {
        let ok = code == 0;
        tally.lines.push(format!(
            "guest {}: smoke boot {}",
            kernel.version,
            if ok { "ok" } else { "FAILED" }
        ));
        if !ok {
            tally.failed += 1;
        }
    }
    for (name, _) in tests {
        let status = outcome.console.iter().find_map(|l| {
            let rest = l.split_once(&format!("{prefix} {name} "))?.1;
            rest.trim().parse::<i32>().ok()
        });
        let verdict = match status {
            Some(0) => {
                tally.passed += 1;
                "ok".to_owned()
            }
            Some(s) => {
                tally.failed += 1;
                format!("FAILED (exit {s})")
            }
            None => {
                tally.failed += 1;
                "FAILED (no result: the guest stopped before it finished)".to_owned()
            }
        };
        tally
            .lines
            .push(format!("guest {}: {name}: {verdict}", kernel.version));
    }
    Ok(outcome.splats.is_empty() && !outcome.timed_out && outcome.status.is_some())
}

/// How long one guest test binary may take, so a hang still leaves the others' results:
/// 400 s; 900 s for guest_verify (7.x's took 306 s on a busy machine, thread storms
/// included) and the mm selftests (each of ~20 tests runs twice; 83–188 s alone, 564 s
/// for 6.12's beside another guest and two builds); twice that on arm64 (TCG on a
/// foreign ISA: guest_verify took 593 s with a build beside it).
fn guest_binary_limit(name: &str, arch: crate::arch::Arch) -> std::time::Duration {
    let x86 = if name == selftests::GUEST_SUITE || name == "guest_verify" {
        900
    } else {
        400
    };
    std::time::Duration::from_secs(if arch.is_host() { x86 } else { 2 * x86 })
}

/// `filters`: (suite, the only tests of it to run, by exact name).
fn guest_script<'a>(
    names: impl Iterator<Item = &'a str>,
    filters: &[(&str, &[&str])],
    arch: crate::arch::Arch,
    prefix: &str,
) -> String {
    let mut s = String::from("failed=0\n");
    for name in names {
        let bin = Path::new(crate::initramfs::GUEST_BIN).join(name);
        let only = filters
            .iter()
            .find(|(suite, _)| *suite == name)
            .map(|(_, tests)| format!(" --exact {}", tests.join(" ")))
            .unwrap_or_default();
        s.push_str(&format!(
            "echo '===== guest test: {name} ====='\ntimeout -s KILL {limit} {bin} --test-threads=1{only}\nrc=$?\n\
             [ $rc -eq 137 ] && echo 'guest test {name}: KILLED after {limit} s'\n\
             echo \"{prefix} {name} $rc\"\n[ $rc -eq 0 ] || failed=1\n",
            bin = bin.display(),
            limit = guest_binary_limit(name, arch).as_secs()
        ));
    }
    s.push_str("exit $failed\n");
    s
}
