//! `cargo xtask lint`: the style gate, for the whole tree.
//!
//! 1. `cargo fmt --all --check` (rustfmt.toml; every crate, the eBPF one included: rustfmt
//!    compiles nothing).
//! 2. `cargo clippy -D warnings` on the host crates: every target, the `guest_*` test
//!    targets too (they are `test = false`, so `--all-targets` alone skips them).
//! 3. `cargo clippy -D warnings` on the eBPF crate with the eBPF nightly, for
//!    `bpfel-unknown-none` (`-Z build-std=core`), as `mmap-trace/build.rs` compiles it.
//! 4. The module graph of `mmap-trace/src` (modules.rs): printed, and no cycle in it.
//!
//! The lints themselves are `[workspace.lints]` in Cargo.toml. All four steps run even
//! when one fails, so one run lists everything. `cargo xtask test` runs it first and
//! counts a failure like a failed test binary.

use std::process::Command;

use anyhow::Result;

use crate::{Workspace, build, cmd, section, setup::Ready};

const EBPF_CRATE: &str = "mmap-trace-ebpf";
const EBPF_TARGET: &str = "bpfel-unknown-none";

/// Runs the three steps; returns 0 when all pass, 1 otherwise.
pub fn run(ws: &Workspace, ready: &Ready) -> Result<i32> {
    let mut failed = Vec::new();

    section("lint: cargo fmt --check");
    let mut fmt = Command::new(crate::cargo());
    fmt.current_dir(&ws.root).args(["fmt", "--all", "--check"]);
    if !cmd::status(&mut fmt)?.success() {
        failed.push("cargo fmt --check (fix: cargo fmt --all)");
    }

    section("lint: clippy (host crates)");
    let mut host = build::cargo(ready);
    host.current_dir(&ws.root).args([
        "clippy",
        "--release",
        "--target",
        build::TARGET,
        "--workspace",
        "--exclude",
        EBPF_CRATE,
        "--all-targets",
        "--test",
        "guest_*",
        // A crate with findings must not hide its dependents' findings.
        "--keep-going",
        "--",
        "-D",
        "warnings",
    ]);
    if !cmd::status(&mut host)?.success() {
        failed.push("clippy on the host crates");
    }

    // Once per bpf_target_arch: each compiles a different arch/ module.
    for arch in ["x86_64", "aarch64"] {
        section(&format!(
            "lint: clippy (eBPF crate, bpf_target_arch {arch})"
        ));
        let mut ebpf = Command::new("rustup");
        ebpf.current_dir(&ws.root)
            .args(["run", &ready.ebpf_toolchain, "cargo", "clippy", "--package", EBPF_CRATE])
            .args(["--target", EBPF_TARGET, "-Z", "build-std=core", "--release", "--keep-going"])
            // Its own target dir per arch: host RUSTFLAGS and these must not evict each
            // other's cache.
            .arg("--target-dir")
            .arg(ws.target_dir.join(if arch == "x86_64" {
                "lint-ebpf".to_owned()
            } else {
                format!("lint-ebpf-{arch}")
            }))
            .args(["--", "-D", "warnings"])
            // aya-build passes it from the CLI's target; here it is chosen.
            .env("RUSTFLAGS", format!("--cfg bpf_target_arch=\"{arch}\""))
            .env("PATH", &ready.path)
            // Set by the outer (stable) cargo; they would pick its toolchain or flags.
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .env_remove("RUSTUP_TOOLCHAIN")
            .env_remove("RUSTC")
            .env_remove("RUSTDOC");
        if !cmd::status(&mut ebpf)?.success() {
            failed.push(if arch == "x86_64" {
                "clippy on the eBPF crate (x86_64)"
            } else {
                "clippy on the eBPF crate (aarch64)"
            });
        }
    }

    section("lint: module graph (mmap-trace/src; A -> what A imports)");
    let graph = crate::modules::graph(&ws.root.join("mmap-trace/src"))?;
    eprint!("{}", crate::modules::describe(&graph));
    if let Some(cycle) = crate::modules::cycle(&graph) {
        eprintln!("lint: import cycle: {}", cycle.join(" -> "));
        failed.push("an import cycle between mmap-trace's modules");
    }

    section("lint: summary");
    if failed.is_empty() {
        eprintln!("lint: fmt and clippy clean, no import cycle");
        Ok(0)
    } else {
        eprintln!("lint: FAILED: {}", failed.join("; "));
        Ok(1)
    }
}
