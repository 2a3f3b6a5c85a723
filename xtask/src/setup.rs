//! `cargo xtask setup`: install what the build and the guest need, and nothing twice.
//!
//! Every other subcommand calls [`ensure`] first, so the README's two commands are enough
//! on a fresh machine. Each step checks before it installs and says what it installs.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, anyhow, bail};

use crate::Workspace;
use crate::apt_sources::HostArchives;
use crate::arch::Arch;
use crate::cmd;
use crate::guest_kernel::{self, GuestKernel};
use crate::kernel_line::KernelRequest;
use crate::kernel_line::PrivateApt;

/// Host packages: LLVM 22 for bpf-linker, QEMU + busybox for the guest, the rest for
/// building the driver against the guest's headers (gcc-12 matches the guest kernel's
/// CONFIG_CC_VERSION_TEXT).
const APT_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "qemu-system-x86",
    "busybox-static",
    "cpio",
    "dwarves",
    "kmod",
    "gcc-12",
    "make",
    "libelf-dev",
    "bc",
    "flex",
    "bison",
    "xz-utils",
    "zstd",
    // A chroot of sid to build the driver with gcc-16 for the 7.x guest (chroot.rs).
    "mmdebstrap",
    // Headless browser for the report test (renders the HTML and counts the bars).
    "chromium",
    // The Perfetto test's decoder runs in a venv (see ensure_perfetto_python); the CLI
    // docs test renders the generated man pages with man(1).
    "python3-venv",
    "man-db",
    // The Linux mm selftests (selftests.rs), built static: libc.a, and libcap.a for
    // mlock-random-test.
    "gcc",
    "libc6-dev",
    "libcap-dev",
    // The agent's test scrapes it with a real Prometheus server (Debian's, 2.42).
    "prometheus",
    // The arm64 guest (arch.rs): QEMU's aarch64 system emulator, and the cross compiler
    // with arm64's glibc for the static CLI, the test binaries and the driver (bookworm's
    // gcc-12, the compiler of Debian's arm64 6.1 kernel).
    "qemu-system-arm",
    "gcc-aarch64-linux-gnu",
    "gcc-12-aarch64-linux-gnu",
    "libc6-dev-arm64-cross",
];

/// Perfetto's own generated protobuf classes, from PyPI, pinned: the test of
/// `report --perfetto` decodes the file with them (tests/scripts/perfetto_decode.py);
/// and OpenTelemetry's, with which the agent's OTLP test decodes what it received
/// (tests/scripts/otlp_receiver.py).
const PERFETTO_PY_PACKAGES: &[&str] = &[
    "perfetto==0.59.1",
    "protobuf==7.36.2",
    "opentelemetry-proto==1.45.2",
];

/// Env var that tells the tests which Python has them.
pub const PERFETTO_PYTHON_VAR: &str = "MMTRACE_PERFETTO_PYTHON";

/// The eBPF nightly must use bpf-linker's LLVM major; this one does (LLVM 22.1.4).
const PINNED_NIGHTLY: &str = "nightly-2026-05-19";
const LLVM_MAJOR: &str = "22";
const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";

/// Env var that mmap-trace/build.rs reads to pick the eBPF toolchain.
pub const EBPF_TOOLCHAIN_VAR: &str = "MMAP_TRACE_EBPF_TOOLCHAIN";

/// What the other steps need from set-up.
pub struct Ready {
    /// The rustup toolchain that compiles the eBPF crate.
    pub ebpf_toolchain: String,
    /// PATH for child processes (with bpf-linker's directory on it).
    pub path: OsString,
    /// A Python that can import perfetto's protobuf classes.
    pub perfetto_python: PathBuf,
    /// The guest kernels asked for, the first being the one `vm` boots.
    pub guests: Vec<GuestKernel>,
}

impl Ready {
    /// The first guest kernel asked for (the only one, except for the test matrix).
    pub fn guest(&self) -> &GuestKernel {
        &self.guests[0]
    }
}

/// `apt-get update` runs at most once per xtask run, and only when something needs it.
#[derive(Default)]
pub struct Apt {
    updated: bool,
}

impl Apt {
    pub fn update_once(&mut self) -> Result<()> {
        if !self.updated {
            eprintln!("setup: running apt-get update");
            cmd::run(apt_command("apt-get").arg("update").arg("-q"))?;
            self.updated = true;
        }
        Ok(())
    }
}

/// An apt command that never prompts.
pub fn apt_command(program: &str) -> Command {
    let mut c = Command::new(program);
    c.env("DEBIAN_FRONTEND", "noninteractive");
    c
}

/// Installs whatever is missing, including each of `kernels` (at least one); prints one
/// line per item.
pub fn ensure(ws: &Workspace, kernels: &[KernelRequest]) -> Result<Ready> {
    let mut apt = Apt::default();
    ensure_apt_packages(ws, &mut apt)?;
    let ebpf_toolchain = ensure_nightly()?;
    ensure_rust_src(&ebpf_toolchain)?;
    let path = ensure_bpf_linker()?;
    let perfetto_python = ensure_perfetto_python(ws)?;
    let mut arches: Vec<Arch> = kernels.iter().map(|k| k.arch).collect();
    arches.dedup();
    for arch in arches.iter().filter(|a| !a.is_host()) {
        ensure_rust_target(arch.rust_target())?;
    }
    let guests = kernels
        .iter()
        .map(|k| guest_kernel::ensure(ws, k))
        .collect::<Result<Vec<_>>>()?;
    if guests.is_empty() {
        bail!("no guest kernel was asked for");
    }
    Ok(Ready {
        ebpf_toolchain,
        path,
        guests,
        perfetto_python,
    })
}

/// A venv under target/ with [`PERFETTO_PY_PACKAGES`] (pip, once).
fn ensure_perfetto_python(ws: &Workspace) -> Result<PathBuf> {
    let venv = ws.target_dir.join("perfetto-py");
    let python = venv.join("bin").join("python3");
    let ready = || {
        cmd::output(Command::new(&python).args([
            "-c",
            "import perfetto.protos.perfetto.trace.perfetto_trace_pb2; \
             import opentelemetry.proto.collector.metrics.v1.metrics_service_pb2",
        ]))
        .is_ok_and(|o| o.status.success())
    };
    if ready() {
        eprintln!(
            "setup: perfetto and opentelemetry-proto classes for the tests: present ({})",
            venv.display()
        );
        return Ok(python);
    }
    eprintln!(
        "setup: installing {} into {} (pip)",
        PERFETTO_PY_PACKAGES.join(" "),
        venv.display()
    );
    cmd::run(
        Command::new("/usr/bin/python3")
            .args(["-m", "venv", "--clear"])
            .arg(&venv),
    )?;
    cmd::run(
        Command::new(venv.join("bin").join("pip"))
            .args(["install", "-q", "--disable-pip-version-check"])
            .args(PERFETTO_PY_PACKAGES),
    )?;
    if !ready() {
        bail!(
            "{} cannot import perfetto's or opentelemetry-proto's classes after pip install",
            python.display()
        );
    }
    Ok(python)
}

fn ensure_apt_packages(ws: &Workspace, apt: &mut Apt) -> Result<()> {
    let missing: Vec<String> = APT_PACKAGES
        .iter()
        .filter(|p| !dpkg_installed(p))
        .map(|p| (*p).to_owned())
        .collect();
    if missing.is_empty() {
        eprintln!("setup: apt packages: all {} present", APT_PACKAGES.len());
        return Ok(());
    }
    eprintln!("setup: installing apt packages: {}", missing.join(" "));
    apt.update_once()?;
    // Simulated first: an install that would take away what the user has is not done.
    let plan = simulate(&mut apt_command("apt-get"), &missing)?;
    if plan.harms().is_empty() {
        return install(&mut apt_command("apt-get"), &missing);
    }
    install_fitting(ws, &missing, &plan)
}

/// What `apt-get install -s` says it would do to packages already installed.
#[derive(Debug, Default, PartialEq, Eq)]
struct Plan {
    /// (package, installed version).
    removed: Vec<(String, String)>,
    /// (package, installed version, the older version apt would put in its place).
    downgraded: Vec<(String, String, String)>,
}

impl Plan {
    /// One phrase per package the install would remove or downgrade.
    fn harms(&self) -> Vec<String> {
        self.removed
            .iter()
            .map(|(p, v)| format!("remove {p} {v}"))
            .chain(
                self.downgraded
                    .iter()
                    .map(|(p, from, to)| format!("downgrade {p} {from} to {to}")),
            )
            .collect()
    }

    /// The installed packages it would remove or downgrade, with their installed versions.
    fn harmed(&self) -> Vec<(&str, &str)> {
        self.removed
            .iter()
            .map(|(p, v)| (p.as_str(), v.as_str()))
            .chain(
                self.downgraded
                    .iter()
                    .map(|(p, v, _)| (p.as_str(), v.as_str())),
            )
            .collect()
    }
}

/// `apt-get install -s` of `packages` with `apt` (the host's configuration or a private
/// one): what it would remove or downgrade.
fn simulate(apt: &mut Command, packages: &[String]) -> Result<Plan> {
    apt.args(["install", "-s", "-q", "--no-install-recommends"])
        .args(packages);
    let out = cmd::output(apt)?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        // apt cannot because a dependency wants an older version of what is installed
        // (bookworm's qemu-system-arm 7.2 wants qemu-system-common 7.2 next to the
        // installed 10.0): a downgrade apt would need, which the fitting path can avoid.
        let blocked = parse_blocked(&format!("{text}\n{err}"), dpkg_version);
        if !blocked.downgraded.is_empty() {
            return Ok(blocked);
        }
        bail!(
            "apt cannot install {} on this machine (apt-get install -s: {}). Fix what apt \
             reports, e.g. with `apt-get install {}` by hand, and run again",
            packages.join(" "),
            err.lines()
                .filter(|l| l.starts_with("E:") || l.contains("Depends:") || l.contains("Breaks:"))
                .map(str::trim)
                .collect::<Vec<_>>()
                .join("; "),
            packages.join(" ")
        );
    }
    parse_simulation(&text, version_lt)
}

/// Reads apt's simulation: `Remv P [V]`, and `Inst P [OLD] (NEW …)` where NEW < OLD.
fn parse_simulation(text: &str, lt: impl Fn(&str, &str) -> Result<bool>) -> Result<Plan> {
    let mut plan = Plan::default();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let (Some(action), Some(package)) = (words.next(), words.next()) else {
            continue;
        };
        let rest: Vec<&str> = words.collect();
        let installed = rest
            .first()
            .and_then(|w| w.strip_prefix('['))
            .map(|w| w.trim_end_matches(']').to_owned());
        match (action, installed) {
            ("Remv", Some(v)) => plan.removed.push((package.to_owned(), v)),
            ("Remv", None) => plan.removed.push((package.to_owned(), String::new())),
            ("Inst", Some(old)) => {
                let new = rest
                    .get(1)
                    .and_then(|w| w.strip_prefix('('))
                    .map(|w| w.trim_end_matches(')'))
                    .unwrap_or_default();
                if !new.is_empty() && lt(new, &old)? {
                    plan.downgraded
                        .push((package.to_owned(), old, new.to_owned()));
                }
            }
            _ => {}
        }
    }
    Ok(plan)
}

/// apt's `P : Depends: Q (= OLD) but NEW is to be installed` lines where Q is installed
/// at NEW: the downgrades the install would need.
fn parse_blocked(text: &str, installed: impl Fn(&str) -> Option<String>) -> Plan {
    let mut plan = Plan::default();
    for line in text.lines() {
        let Some((_, dep)) = line.split_once("Depends: ") else {
            continue;
        };
        let mut words = dep.split_whitespace();
        let (Some(package), Some("(="), Some(wanted)) = (words.next(), words.next(), words.next())
        else {
            continue;
        };
        let wanted = wanted.trim_end_matches(')');
        let (Some("but"), Some(new)) = (words.next(), words.next()) else {
            continue;
        };
        if installed(package).as_deref() == Some(new) {
            plan.downgraded
                .push((package.to_owned(), new.to_owned(), wanted.to_owned()));
        }
    }
    plan
}

/// The installed version of `package`, if it is installed.
fn dpkg_version(package: &str) -> Option<String> {
    dpkg_installed(package)
        .then(|| {
            cmd::stdout(Command::new("dpkg-query").args(["-W", "-f=${Version}", package])).ok()
        })
        .flatten()
        .map(|v| v.trim().to_owned())
}

fn version_lt(a: &str, b: &str) -> Result<bool> {
    let status = cmd::status(
        Command::new("dpkg")
            .args(["--compare-versions", a, "lt", b])
            .stdout(std::process::Stdio::null()),
    )?;
    Ok(status.success())
}

fn install(apt: &mut Command, packages: &[String]) -> Result<()> {
    cmd::run(
        apt.args(["install", "-y", "-q", "--no-install-recommends"])
            .args(packages),
    )
}

/// The host's suites would replace an installed package (on this kind of machine:
/// bookworm's qemu-system-x86 7.2 makes apt remove the preinstalled qemu-utils 10.0 from
/// bookworm-backports). Looks in `<codename>-backports` of the host's own mirror for the
/// missing packages at the version of the installed package of the same source, and
/// installs those if apt then harms nothing; otherwise stops with what apt wanted.
fn install_fitting(ws: &Workspace, missing: &[String], plan: &Plan) -> Result<()> {
    let archives = HostArchives::read()?;
    let suite = format!("{}-backports", archives.codename);
    let refuse = |why: &str| {
        anyhow!(
            "installing {} with this machine's apt sources would {} ({why}); setup never removes \
             or downgrades a package by itself. Fix: install versions of {} that fit what is \
             installed, or accept apt's plan with `apt-get install --no-install-recommends {}`, \
             then run again",
            missing.join(" "),
            plan.harms().join(", "),
            missing.join(" "),
            missing.join(" ")
        )
    };
    let mut apt = PrivateApt::host_plus(&ws.target_dir.join("apt/host-with-backports"), &suite)?;
    apt.update_once()?;
    // The source (name, version) of each package apt would harm.
    let mut harmed_sources = Vec::new();
    for (package, _) in plan.harmed() {
        let out = cmd::stdout(Command::new("dpkg-query").args([
            "-W",
            "-f=${source:Package} ${source:Version}",
            package,
        ]))?;
        if let Some((name, version)) = out.trim().split_once(' ') {
            harmed_sources.push((name.to_owned(), version.to_owned()));
        }
    }
    // Each missing package built from a harmed package's source, at that source version;
    // the others come from the host's suites as before.
    let mut pinned = Vec::new();
    let mut chosen = Vec::new();
    let mut others = Vec::new();
    for package in missing {
        let show = cmd::output(apt.command("apt-cache").args(["show", package]))?;
        let stanzas = String::from_utf8_lossy(&show.stdout).into_owned();
        let fit = package_versions(&stanzas)
            .into_iter()
            .find(|(_, source, source_version)| {
                harmed_sources
                    .iter()
                    .any(|(n, v)| n == source && v == source_version)
            });
        match fit {
            Some((version, _, _)) => {
                chosen.push(format!("{package} {version}"));
                pinned.push(format!("{package}={version}"));
            }
            None => others.push(package.clone()),
        }
    }
    if chosen.is_empty() {
        return Err(refuse(&format!(
            "neither the host's suites nor {suite} have a version of them built from the same \
             source as the installed packages"
        )));
    }
    if !others.is_empty() {
        let plain = simulate(&mut apt_command("apt-get"), &others)?;
        if !plain.harms().is_empty() {
            return Err(refuse(&format!(
                "{} alone would {}",
                others.join(" "),
                plain.harms().join(", ")
            )));
        }
    }
    // `-t` lets the pinned packages' own dependencies come from the same suite (10.0's
    // qemu-system-x86 wants backports' qemu-system-data and seabios); what the simulation
    // shows is what is done.
    let from_suite = || {
        let mut c = apt.command("apt-get");
        c.args(["-t", &suite]);
        c
    };
    let fitting = simulate(&mut from_suite(), &pinned)?;
    if !fitting.harms().is_empty() {
        return Err(refuse(&format!(
            "with {} from {suite} it would still {}",
            chosen.join(", "),
            fitting.harms().join(", ")
        )));
    }
    eprintln!(
        "setup: apt would {} to install {}; installing {} from {suite} instead (the version \
         of what is installed), which removes and downgrades nothing",
        plan.harms().join(", "),
        missing.join(" "),
        chosen.join(", ")
    );
    if !others.is_empty() {
        install(&mut apt_command("apt-get"), &others)?;
    }
    install(&mut from_suite(), &pinned)
}

/// (version, source package, source version) of each stanza of `apt-cache show`.
fn package_versions(stanzas: &str) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for stanza in stanzas.split("\n\n") {
        let field = |name: &str| {
            stanza
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().to_owned())
        };
        let (Some(package), Some(version)) = (field("Package:"), field("Version:")) else {
            continue;
        };
        // `Source: qemu (1:7.2+dfsg-7+deb12u18)` on a binNMU, `Source: qemu` otherwise;
        // none when the source is named like the package.
        let (source, source_version) = match field("Source:") {
            Some(s) => match s.split_once(' ') {
                Some((name, v)) => (
                    name.to_owned(),
                    v.trim_matches(|c| c == '(' || c == ')').to_owned(),
                ),
                None => (s, version.clone()),
            },
            None => (package, version.clone()),
        };
        out.push((version, source, source_version));
    }
    out
}

fn dpkg_installed(package: &str) -> bool {
    cmd::output(Command::new("dpkg-query").args(["-W", "-f=${Status}", package]))
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "install ok installed")
        .unwrap_or(false)
}

/// `nightly` if its LLVM major matches bpf-linker's, else the pinned nightly (installed
/// if needed).
fn ensure_nightly() -> Result<String> {
    if llvm_major("nightly").as_deref() == Some(LLVM_MAJOR) {
        eprintln!("setup: eBPF toolchain: nightly (LLVM {LLVM_MAJOR})");
        return Ok("nightly".into());
    }
    match llvm_major(PINNED_NIGHTLY) {
        Some(major) if major == LLVM_MAJOR => {
            eprintln!("setup: eBPF toolchain: {PINNED_NIGHTLY} (LLVM {LLVM_MAJOR})");
        }
        Some(major) => bail!("{PINNED_NIGHTLY} reports LLVM {major}, expected {LLVM_MAJOR}"),
        None => {
            eprintln!(
                "setup: `nightly` is missing or not LLVM {LLVM_MAJOR}: installing {PINNED_NIGHTLY}"
            );
            cmd::run(Command::new("rustup").args([
                "toolchain",
                "install",
                PINNED_NIGHTLY,
                "--profile",
                "minimal",
                "--no-self-update",
            ]))?;
            let major = llvm_major(PINNED_NIGHTLY);
            if major.as_deref() != Some(LLVM_MAJOR) {
                bail!(
                    "{PINNED_NIGHTLY} reports LLVM {major:?} after install, expected {LLVM_MAJOR}"
                );
            }
        }
    }
    Ok(PINNED_NIGHTLY.into())
}

/// The LLVM major of `toolchain`'s rustc, or None if the toolchain is not installed.
fn llvm_major(toolchain: &str) -> Option<String> {
    let out = cmd::output(
        Command::new("rustup")
            .args(["run", toolchain, "rustc", "-vV"])
            // rustup would otherwise download a missing toolchain here.
            .env("RUSTUP_AUTO_INSTALL", "0"),
    )
    .ok()?;
    if !out.status.success() {
        return None;
    }
    parse_llvm_major(&String::from_utf8_lossy(&out.stdout))
}

fn parse_llvm_major(rustc_vv: &str) -> Option<String> {
    rustc_vv
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .map(|m| m.trim().to_owned())
}

fn ensure_rust_src(toolchain: &str) -> Result<()> {
    let installed = cmd::stdout(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        toolchain,
    ]))?;
    if installed.lines().any(|l| l.trim() == "rust-src") {
        eprintln!("setup: rust-src for {toolchain}: present");
        return Ok(());
    }
    eprintln!("setup: installing rust-src for {toolchain}");
    // rustup 1.29 rejects --no-self-update here; `component add` does not self-update.
    cmd::run(Command::new("rustup").args([
        "component",
        "add",
        "rust-src",
        "--toolchain",
        toolchain,
    ]))
}

/// The Rust standard library for `target` in the toolchain that runs us (rustup's
/// `RUSTUP_TOOLCHAIN`, as cargo passes it on), installed once.
fn ensure_rust_target(target: &str) -> Result<()> {
    let installed = cmd::stdout(Command::new("rustup").args(["target", "list", "--installed"]))?;
    if installed.lines().any(|l| l.trim() == target) {
        eprintln!("setup: Rust target {target}: present");
        return Ok(());
    }
    eprintln!("setup: installing the Rust target {target} (rustup target add)");
    // Like `component add`, `target add` does not self-update (and rejects the flag).
    cmd::run(Command::new("rustup").args(["target", "add", target]))
}

/// Makes sure bpf-linker 0.13.0 (LLVM 22) is reachable and returns the PATH that reaches it.
fn ensure_bpf_linker() -> Result<OsString> {
    let cargo_bin = cargo_home()?.join("bin");
    let path = path_with(&cargo_bin);
    let found = which::which_in("bpf-linker", Some(&path), ".")
        .ok()
        .and_then(|p| bpf_linker_version(&p));
    if found.as_deref() == Some(BPF_LINKER_VERSION) {
        eprintln!("setup: bpf-linker {BPF_LINKER_VERSION}: present");
        return Ok(path);
    }
    eprintln!(
        "setup: installing bpf-linker {BPF_LINKER_VERSION} against LLVM {LLVM_MAJOR} (found: {}; takes ~90 s)",
        found.as_deref().unwrap_or("none")
    );
    cmd::run(
        Command::new(crate::cargo())
            .args([
                "install",
                &format!("bpf-linker@{BPF_LINKER_VERSION}"),
                "--locked",
                "--no-default-features",
                "--features",
                &format!("llvm-{LLVM_MAJOR}"),
            ])
            .env("LLVM_PREFIX", LLVM_PREFIX),
    )?;
    let installed = cargo_bin.join("bpf-linker");
    match bpf_linker_version(&installed) {
        Some(v) if v == BPF_LINKER_VERSION => Ok(path),
        other => bail!(
            "{} reports version {other:?} after install",
            installed.display()
        ),
    }
}

fn bpf_linker_version(binary: &Path) -> Option<String> {
    let out = cmd::output(Command::new(binary).arg("--version")).ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    // "bpf-linker 0.13.0"
    text.split_whitespace().nth(1).map(str::to_owned)
}

fn cargo_home() -> Result<PathBuf> {
    if let Some(home) = std::env::var_os("CARGO_HOME") {
        return Ok(home.into());
    }
    let home = std::env::var_os("HOME").context("neither CARGO_HOME nor HOME is set")?;
    Ok(PathBuf::from(home).join(".cargo"))
}

/// The current PATH with `dir` appended unless it is already on it.
fn path_with(dir: &Path) -> OsString {
    let current = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = std::env::split_paths(&current).collect();
    if !dirs.iter().any(|d| d == dir) {
        dirs.push(dir.to_owned());
    }
    std::env::join_paths(dirs).unwrap_or(current)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_removals_and_downgrades_from_a_simulation() {
        let text = "\
NOTE: This is only a simulation!
Remv qemu-utils [1:10.0.2+ds-2+deb13u1~bpo12+1]
Inst qemu-system-common (1:7.2+dfsg-7+deb12u18+b3 Debian:12.13/oldstable [amd64])
Inst libfoo [2.0-1] (1.9-1 Debian:12.13/oldstable [amd64])
Inst libbar [1.0-1] (1.1-1 Debian:12.13/oldstable [amd64])
Conf qemu-system-common (1:7.2+dfsg-7+deb12u18+b3 Debian:12.13/oldstable [amd64])
";
        let lt = |a: &str, b: &str| Ok(a < b);
        let plan = parse_simulation(text, lt).unwrap();
        assert_eq!(
            plan.harms(),
            [
                "remove qemu-utils 1:10.0.2+ds-2+deb13u1~bpo12+1",
                "downgrade libfoo 2.0-1 to 1.9-1"
            ]
        );
        let quiet = "Inst hello (2.10-3 Debian:12.15/oldstable [amd64])\n";
        assert!(parse_simulation(quiet, lt).unwrap().harms().is_empty());
    }

    #[test]
    fn reads_source_versions_of_apt_cache_show() {
        let text = "Package: qemu-system-x86\nSource: qemu (1:7.2+dfsg-7+deb12u18)\n\
                    Version: 1:7.2+dfsg-7+deb12u18+b3\n\n\
                    Package: qemu-system-x86\nSource: qemu\nVersion: 1:10.0.2+ds-2~bpo12+1\n\n\
                    Package: hello\nVersion: 2.10-3\n";
        assert_eq!(
            package_versions(text),
            [
                (
                    "1:7.2+dfsg-7+deb12u18+b3".to_owned(),
                    "qemu".to_owned(),
                    "1:7.2+dfsg-7+deb12u18".to_owned()
                ),
                (
                    "1:10.0.2+ds-2~bpo12+1".to_owned(),
                    "qemu".to_owned(),
                    "1:10.0.2+ds-2~bpo12+1".to_owned()
                ),
                ("2.10-3".to_owned(), "hello".to_owned(), "2.10-3".to_owned()),
            ]
        );
    }

    #[test]
    fn reads_blocked_dependencies() {
        let text = " qemu-system-arm : Depends: qemu-system-common (= 1:7.2+dfsg-7+deb12u18+b3) \
                    but 1:10.0.2+ds-2+deb13u1~bpo12+1 is to be installed\n\
                    E: Unable to correct problems, you have held broken packages.\n";
        let installed = |p: &str| {
            (p == "qemu-system-common").then(|| "1:10.0.2+ds-2+deb13u1~bpo12+1".to_owned())
        };
        assert_eq!(
            parse_blocked(text, installed).harms(),
            [
                "downgrade qemu-system-common 1:10.0.2+ds-2+deb13u1~bpo12+1 to 1:7.2+dfsg-7+deb12u18+b3"
            ]
        );
        assert!(parse_blocked(text, |_| None).harms().is_empty());
    }

    #[test]
    fn parses_llvm_major() {
        let vv = "rustc 1.97.0-nightly\nhost: x86_64-unknown-linux-gnu\nLLVM version: 22.1.4\n";
        assert_eq!(parse_llvm_major(vv).as_deref(), Some("22"));
        assert_eq!(parse_llvm_major("rustc 1.0"), None);
    }
}
