//! `cargo xtask setup`: install what the build and the guest need, and nothing twice.
//!
//! Every other subcommand calls [`ensure`] first, so the README's two commands are enough
//! on a fresh machine. Each step checks before it installs and says what it installs.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, bail};

use crate::Workspace;
use crate::cmd;
use crate::guest_kernel::{self, GuestKernel};
use crate::kernel_line::KernelRequest;

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
];

/// Perfetto's own generated protobuf classes, from PyPI, pinned: the test of
/// `report --perfetto` decodes the file with them (tests/scripts/perfetto_decode.py).
const PERFETTO_PY_PACKAGES: &[&str] = &["perfetto==0.59.1", "protobuf==7.36.2"];

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
    ensure_apt_packages(&mut apt)?;
    let ebpf_toolchain = ensure_nightly()?;
    ensure_rust_src(&ebpf_toolchain)?;
    let path = ensure_bpf_linker()?;
    let perfetto_python = ensure_perfetto_python(ws)?;
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
            "import perfetto.protos.perfetto.trace.perfetto_trace_pb2",
        ]))
        .is_ok_and(|o| o.status.success())
    };
    if ready() {
        eprintln!(
            "setup: perfetto protobuf classes for the tests: present ({})",
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
            "{} cannot import perfetto's protobuf classes after pip install",
            python.display()
        );
    }
    Ok(python)
}

fn ensure_apt_packages(apt: &mut Apt) -> Result<()> {
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| !dpkg_installed(p))
        .collect();
    if missing.is_empty() {
        eprintln!("setup: apt packages: all {} present", APT_PACKAGES.len());
        return Ok(());
    }
    eprintln!("setup: installing apt packages: {}", missing.join(" "));
    apt.update_once()?;
    cmd::run(
        apt_command("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing),
    )
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
    fn parses_llvm_major() {
        let vv = "rustc 1.97.0-nightly\nhost: x86_64-unknown-linux-gnu\nLLVM version: 22.1.4\n";
        assert_eq!(parse_llvm_major(vv).as_deref(), Some("22"));
        assert_eq!(parse_llvm_major("rustc 1.0"), None);
    }
}
