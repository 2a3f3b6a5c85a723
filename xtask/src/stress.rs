//! `cargo xtask stress`: the reliability suites of `cargo xtask test` with soak-sized
//! counts (issue 7). Same binaries; the counts reach them as MMTRACE_STRESS_* variables.

use std::process::Stdio;

use anyhow::{Context as _, Result};

use crate::build::{self, Artifacts, TARGET};
use crate::qemu::{self, Markers, Options};
use crate::setup::Ready;
use crate::{Workspace, cmd, section};

/// Soak counts; a variable already set in the environment wins (e.g. a seed to replay).
const HOST_KNOBS: &[(&str, &str)] = &[
    ("MMTRACE_STRESS_BURST", "2000000"),
    ("MMTRACE_STRESS_PROCS", "10000"),
    ("MMTRACE_STRESS_SIGNALS", "200"),
];
const GUEST_KNOBS: &[(&str, &str)] = &[
    ("MMTRACE_STRESS_REQUESTS", "200000"),
    ("MMTRACE_STRESS_RELOADS", "1000"),
    ("MMTRACE_STRESS_ROUNDS", "100"),
];

fn knob(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

pub fn run(ws: &Workspace, ready: &Ready, artifacts: &Artifacts, opts: &Options) -> Result<i32> {
    section("stress: host (tests/tests/host_reliability.rs)");
    let workload = artifacts
        .bin("mmap-workload")
        .context("no mmap-workload binary was built")?;
    let mut c = build::cargo(ready);
    c.current_dir(&ws.root)
        .args([
            "test",
            "--release",
            "--target",
            TARGET,
            "-p",
            "mmap-trace-tests",
            "--test",
            "host_reliability",
        ])
        .args(["--", "--test-threads=1", "--nocapture"])
        .env("MMTRACE_CLI", &artifacts.cli)
        .env("MMTRACE_WORKLOAD", workload)
        .stdin(Stdio::null());
    for (name, default) in HOST_KNOBS {
        c.env(name, knob(name, default));
    }
    let host_ok = {
        let _one_at_a_time = crate::host_lock::hold("cargo xtask stress: host suites")?;
        cmd::status(&mut c)?.success()
    };

    section("stress: guest (tests/tests/guest_stress.rs, one boot)");
    let mut script = String::new();
    for (name, default) in GUEST_KNOBS.iter().chain(&[("MMTRACE_STRESS_SEED", "")]) {
        script.push_str(&format!(
            "export {name}={}\n",
            cmd::shell_quote(&knob(name, default))
        ));
    }
    script.push_str(&format!(
        "{}/guest_stress --test-threads=1\n",
        crate::initramfs::GUEST_BIN
    ));
    let outcome = qemu::run_in_guest(ready.guest(), artifacts, script, &Markers::new(), opts)?;
    let guest_code = outcome.report();

    section("stress: summary");
    println!(
        "host reliability: {}",
        if host_ok { "ok" } else { "FAILED" }
    );
    println!(
        "guest stress: {}",
        if guest_code == 0 { "ok" } else { "FAILED" }
    );
    Ok(if host_ok && guest_code == 0 { 0 } else { 1 })
}
