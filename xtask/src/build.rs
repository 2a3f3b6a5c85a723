//! The one build configuration: release, static, `--target x86_64-unknown-linux-gnu`
//! (`aarch64-unknown-linux-gnu` for the arm64 guest, linked with Debian's cross gcc; the
//! eBPF object inside it is then built for arm64's `bpf_target_arch` by aya-build).
//!
//! With an explicit `--target`, RUSTFLAGS reach only target code, not build scripts, so
//! `+crt-static` makes the CLI and the test binaries static (they run unchanged in the
//! guest's busybox initramfs) while aya-build in mmap-trace/build.rs still works.

use std::fs;
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use crate::Workspace;
use crate::arch::Arch;
use crate::chroot;
use crate::cmd;
use crate::guest_kernel::GuestKernel;
use crate::kernel_line::Compiler;
use crate::selftests;
use crate::setup::{EBPF_TOOLCHAIN_VAR, Ready};

/// The host's target: host tests, lint, stress.
pub const TARGET: &str = "x86_64-unknown-linux-gnu";
const RUSTFLAGS: &str = "-C target-feature=+crt-static";
/// The eBPF crate only builds for bpfel-unknown-none (through mmap-trace/build.rs).
const EBPF_CRATE: &str = "mmap-trace-ebpf";
const TESTS_CRATE: &str = "mmap-trace-tests";
const CLI_NAME: &str = "mmap-trace";
/// The driver source whose presence makes the driver build mandatory.
const DRIVER_SOURCE: &str = "mmtrace_drv.c";

pub struct Artifacts {
    /// What the binaries were built for.
    pub arch: Arch,
    /// The static CLI.
    pub cli: PathBuf,
    /// Every other binary of the workspace (e.g. the tests crate's mmap-workload).
    pub bins: Vec<PathBuf>,
    /// `guest_*` test targets of the tests crate: (target name, executable).
    pub guest_tests: Vec<(String, PathBuf)>,
    /// (kernel version, the driver built against its headers) for each guest kernel of
    /// the run; empty while driver/ has no sources.
    pub drivers: Vec<(String, PathBuf)>,
    /// (kernel version, its mm selftests or why there are none) for each guest kernel.
    pub selftests: Vec<(String, selftests::Outcome)>,
    /// The mm selftests the host runs (the newest line's).
    pub host_selftests: selftests::Outcome,
}

impl Artifacts {
    /// One of the other binaries, by name (`mmap-workload`, `mmap-trace-floor`).
    pub fn bin(&self, name: &str) -> Option<&Path> {
        self.bins
            .iter()
            .find(|p| p.file_name().is_some_and(|n| n == name))
            .map(PathBuf::as_path)
    }

    /// The driver built for `kernel`, if any.
    pub fn driver(&self, kernel: &GuestKernel) -> Option<&Path> {
        self.drivers
            .iter()
            .find(|(v, _)| *v == kernel.version)
            .map(|(_, ko)| ko.as_path())
    }

    /// The mm selftests built for `kernel`, if they could be.
    pub fn selftests(&self, kernel: &GuestKernel) -> Option<&selftests::Selftests> {
        self.selftests
            .iter()
            .find(|(v, _)| *v == kernel.version)
            .and_then(|(_, s)| s.as_ref().ok())
    }
}

/// A `cargo` command with the build configuration's environment.
pub fn cargo(ready: &Ready) -> Command {
    let mut c = Command::new(crate::cargo());
    c.env("RUSTFLAGS", RUSTFLAGS)
        // Set by an outer cargo in some setups; it would override RUSTFLAGS.
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env(EBPF_TOOLCHAIN_VAR, &ready.ebpf_toolchain)
        .env("PATH", &ready.path);
    // Cross builds (--target aarch64-…): Debian's cross gcc links, and compiles any C a
    // build script asks for.
    for arch in [Arch::Arm64] {
        let (Some(prefix), target) = (arch.cross_prefix(), arch.rust_target()) else {
            continue;
        };
        let var = target.replace('-', "_");
        c.env(
            format!("CARGO_TARGET_{}_LINKER", var.to_uppercase()),
            format!("{prefix}gcc"),
        )
        .env(format!("CC_{var}"), format!("{prefix}gcc"))
        .env(format!("AR_{var}"), format!("{prefix}ar"));
    }
    c
}

/// Builds the workspace's binaries (the CLI first of all) for `arch`.
pub fn build_bins(ws: &Workspace, ready: &Ready, arch: Arch) -> Result<(PathBuf, Vec<PathBuf>)> {
    let mut c = cargo(ready);
    c.current_dir(&ws.root).args([
        "build",
        "--release",
        "--target",
        arch.rust_target(),
        "--workspace",
        "--exclude",
        EBPF_CRATE,
        "--exclude",
        "xtask",
    ]);
    let executables = executables(&mut c, |target, _| is_kind(target, "bin"))?;
    let cli = executables
        .iter()
        .find(|(name, _)| name == CLI_NAME)
        .map(|(_, p)| p.clone())
        .with_context(|| format!("cargo build produced no `{CLI_NAME}` binary"))?;
    let bins = executables
        .into_iter()
        .filter(|(name, _)| name != CLI_NAME)
        .map(|(_, p)| p)
        .collect();
    Ok((cli, bins))
}

/// Builds the tests crate's `guest_*` test targets (declared `test = false`, so plain
/// `cargo test` skips them) and returns their executables.
pub fn build_guest_tests(
    ws: &Workspace,
    ready: &Ready,
    arch: Arch,
) -> Result<Vec<(String, PathBuf)>> {
    if ws.guest_tests.is_empty() {
        return Ok(Vec::new());
    }
    let mut c = cargo(ready);
    c.current_dir(&ws.root).args([
        "test",
        "--no-run",
        "--release",
        "--target",
        arch.rust_target(),
        "-p",
        TESTS_CRATE,
    ]);
    for name in &ws.guest_tests {
        c.args(["--test", name]);
    }
    let mut built = executables(&mut c, |target, test| {
        test && target["name"]
            .as_str()
            .is_some_and(|n| n.starts_with("guest_"))
    })?;
    built.sort();
    for name in &ws.guest_tests {
        if !built.iter().any(|(n, _)| n == name) {
            bail!("cargo test --no-run produced no executable for guest test `{name}`");
        }
    }
    Ok(built)
}

/// Runs a cargo build with JSON messages (diagnostics still rendered for humans) and
/// returns (target name, executable) of the artifacts `wanted(target, is_test)` accepts.
fn executables(
    c: &mut Command,
    wanted: impl Fn(&Value, bool) -> bool,
) -> Result<Vec<(String, PathBuf)>> {
    c.arg("--message-format=json-render-diagnostics")
        .stdout(Stdio::piped())
        .stdin(Stdio::null());
    let what = cmd::describe(c);
    let mut child = c.spawn().with_context(|| format!("running {what}"))?;
    let stdout = child.stdout.take().context("cargo stdout")?;
    let mut found = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.with_context(|| format!("reading output of {what}"))?;
        let Ok(msg) = serde_json::from_str::<Value>(&line) else {
            // Build scripts may print plain lines; pass them on.
            eprintln!("{line}");
            continue;
        };
        if msg["reason"] != "compiler-artifact" {
            continue;
        }
        let (Some(exe), target) = (msg["executable"].as_str(), &msg["target"]) else {
            continue;
        };
        let is_test = msg["profile"]["test"].as_bool().unwrap_or(false);
        if wanted(target, is_test) {
            let name = target["name"].as_str().unwrap_or_default().to_owned();
            found.push((name, PathBuf::from(exe)));
        }
    }
    let status = child.wait().with_context(|| format!("running {what}"))?;
    if !status.success() {
        bail!("running {what}: {status}");
    }
    Ok(found)
}

fn is_kind(target: &Value, kind: &str) -> bool {
    target["kind"]
        .as_array()
        .is_some_and(|kinds| kinds.iter().any(|k| k == kind))
}

/// Builds driver/ against `kernel`'s headers with the compiler that kernel was built with
/// (its CONFIG_CC_VERSION_TEXT): the host's gcc in `target/guest/<v>/driver-build/`, or a
/// chroot of the line's suite (chroot.rs). None, loudly, while driver/ has no sources.
pub fn build_driver(ws: &Workspace, kernel: &GuestKernel) -> Result<Option<PathBuf>> {
    let src = ws.root.join("driver");
    if !src.join(DRIVER_SOURCE).exists() {
        eprintln!(
            "!!! driver/{DRIVER_SOURCE} does not exist yet: SKIPPING the driver build; the guest gets no mmtrace_drv.ko"
        );
        return Ok(None);
    }
    let cc = kernel.cc_version_text()?;
    let compiler = cc.split_whitespace().next().unwrap_or_default().to_owned();
    // A foreign guest: the kernel's own compiler's cross build (aarch64-linux-gnu-gcc-12
    // for `gcc-12`), kbuild told the architecture.
    let compiler = match kernel.arch.cross_prefix() {
        Some(prefix) => format!("{prefix}{compiler}"),
        None => compiler,
    };
    let make_args = |headers: &Path, build: &Path| {
        let mut args = vec![
            "make".to_owned(),
            "-C".to_owned(),
            headers.display().to_string(),
            format!("M={}", build.display()),
        ];
        if let Some(prefix) = kernel.arch.cross_prefix() {
            args.push(format!("ARCH={}", kernel.arch.kernel_arch()));
            args.push(format!("CROSS_COMPILE={prefix}"));
            args.push(format!("CC={compiler}"));
        }
        // linux-kbuild-6.1 ships no resolve_btfids; the driver has no BTF ids to resolve.
        if !kernel
            .headers
            .join("tools/bpf/resolve_btfids/resolve_btfids")
            .exists()
        {
            args.push("RESOLVE_BTFIDS=true".to_owned());
        }
        args.push("modules".to_owned());
        args
    };
    eprintln!("build: driver against {} headers with {cc}", kernel.version);
    let ko = match kernel.line.compiler {
        Compiler::Host => {
            if which::which(&compiler).is_err() {
                bail!(
                    "kernel {} was built with `{cc}` (CONFIG_CC_VERSION_TEXT) and its driver \
                     must be too, but this host has no {compiler}. Fix: apt-get install {} \
                     (cargo xtask setup installs gcc-12, the compiler of the 6.1 and 6.12 lines)",
                    kernel.version,
                    compiler.trim_start_matches("x86_64-linux-gnu-")
                );
            }
            let build = kernel.dir.join("driver-build");
            sync_sources(&src, &build)?;
            let args = make_args(&kernel.headers, &build);
            cmd::run(Command::new(&args[0]).args(&args[1..])).context("building the driver")?;
            build.join("mmtrace_drv.ko")
        }
        Compiler::Chroot { suite } => {
            let chroot = chroot::ensure(kernel, suite)?;
            if !chroot::has_program(&chroot, &compiler) {
                bail!(
                    "the {suite} chroot {} has no {compiler}, the compiler kernel {} was built \
                     with ({cc}). Fix: delete {} and {}/chroot.complete so the next run \
                     rebuilds it with the headers' current dependencies",
                    chroot.dir.display(),
                    kernel.version,
                    chroot.dir.display(),
                    kernel.dir.display()
                );
            }
            let inside = "/mmtrace-driver";
            sync_sources(&src, &chroot.host_path(inside))?;
            let headers = Path::new("/usr/src").join(format!("linux-headers-{}", kernel.version));
            chroot
                .run(&make_args(&headers, Path::new(inside)))
                .context("building the driver in the chroot")?;
            chroot.host_path(inside).join("mmtrace_drv.ko")
        }
    };
    if !ko.exists() {
        bail!("the driver build produced no {}", ko.display());
    }
    Ok(Some(ko))
}

/// Copies driver sources (not build products) into `dst`, rewriting only files whose
/// contents changed so make's timestamps stay meaningful.
fn sync_sources(src: &Path, dst: &Path) -> Result<()> {
    fs::create_dir_all(dst).with_context(|| format!("creating {}", dst.display()))?;
    for entry in fs::read_dir(src).with_context(|| format!("listing {}", src.display()))? {
        let entry = entry?;
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if entry.file_type()?.is_dir() {
            sync_sources(&path, &dst.join(&*name))?;
            continue;
        }
        let is_source =
            name.ends_with(".c") || name.ends_with(".h") || name == "Kbuild" || name == "Makefile";
        if !is_source {
            continue;
        }
        let data = fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        let out = dst.join(&*name);
        if fs::read(&out).ok().as_deref() != Some(&data[..]) {
            fs::write(&out, &data).with_context(|| format!("writing {}", out.display()))?;
        }
    }
    Ok(())
}

/// Builds everything the host and the guests of `arch` run: the binaries for `arch`, the
/// driver and the mm selftests for each of its guest kernels (and, on x86_64, the host's
/// selftests).
pub fn build_all(ws: &Workspace, ready: &Ready, arch: Arch) -> Result<Artifacts> {
    let target = arch.rust_target();
    eprintln!("build: cargo build --release --target {target} (static)");
    let (cli, bins) = build_bins(ws, ready, arch)?;
    let guest_tests = build_guest_tests(ws, ready, arch)?;
    let guests: Vec<&GuestKernel> = ready.guests.iter().filter(|k| k.arch == arch).collect();
    let mut drivers = Vec::new();
    for kernel in &guests {
        if let Some(ko) = build_driver(ws, kernel)? {
            drivers.push((kernel.version.clone(), ko));
        }
    }
    // A source that cannot be fetched or built is kept as its one-line reason, which
    // `test` counts as a failure: the other suites still run.
    let selftests = guests
        .iter()
        .map(|kernel| (kernel.version.clone(), selftests::for_kernel(ws, kernel)))
        .collect::<Vec<_>>();
    let host_selftests = if arch.is_host() {
        selftests::for_host(ws, &ready.guests)
    } else {
        Err(format!("the host does not run {arch} binaries"))
    };
    let host_line = arch
        .is_host()
        .then_some(("the host".to_owned(), &host_selftests));
    for (what, outcome) in selftests
        .iter()
        .map(|(v, o)| (format!("guest {v}"), o))
        .chain(host_line)
    {
        if let Err(why) = outcome {
            println!("!!! mm selftests for {what}: {why}");
        }
    }
    Ok(Artifacts {
        arch,
        cli,
        bins,
        guest_tests,
        drivers,
        selftests,
        host_selftests,
    })
}
