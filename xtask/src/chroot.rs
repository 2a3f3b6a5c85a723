//! A minimal chroot of a Debian suite for building the driver against a kernel whose
//! compiler the host cannot run (sid's 7.x wants gcc-16; bookworm has gcc-12).
//!
//! `mmdebstrap --variant=minbase` with `make` and the kernel's own headers package: apt
//! then installs exactly the compiler, linux-kbuild and pahole those headers depend on,
//! at the paths their Makefiles name, so nothing needs patching. Built once per kernel
//! into `target/guest/<version>/chroot/` (~50 s and ~430 MB here, 2026-12-02).
//! Running a build needs /proc in the chroot (objtool reads it); it is mounted in a
//! private mount namespace (`unshare`), so nothing stays mounted when make exits.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context as _, Result, bail};

use crate::apt_sources::{Archive, HostArchives};
use crate::cmd;
use crate::guest_kernel::{self, GuestKernel};

const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";
const MARKER: &str = "chroot.complete";
/// Documentation is not needed to compile a module (saves ~20% of the chroot).
const EXCLUDED: &[&str] = &[
    "/usr/share/doc/*",
    "/usr/share/man/*",
    "/usr/share/locale/*",
    "/usr/share/info/*",
];

pub struct Chroot {
    pub dir: PathBuf,
}

impl Chroot {
    /// `path` inside the chroot as seen from the host.
    pub fn host_path(&self, path: &str) -> PathBuf {
        self.dir.join(path.trim_start_matches('/'))
    }

    /// Runs `args` inside the chroot with /proc mounted, in a private mount namespace.
    pub fn run(&self, args: &[String]) -> Result<()> {
        let mut c = Command::new("unshare");
        c.args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg(r#"mount -t proc proc "$0/proc" && exec chroot "$0" "$@""#)
            .arg(&self.dir)
            .args(args)
            // The chroot's PATH, not the host's (cargo's bin dirs do not exist in it).
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
        cmd::run(&mut c)
    }
}

/// The chroot of `suite` with kernel `kernel`'s headers, built now if not cached.
pub fn ensure(kernel: &GuestKernel, suite: &str) -> Result<Chroot> {
    let chroot = Chroot {
        dir: kernel.dir.join("chroot"),
    };
    let marker = kernel.dir.join(MARKER);
    if marker.exists() {
        eprintln!(
            "setup: {suite} chroot for the {} driver build: cached in {}",
            kernel.version,
            chroot.dir.display()
        );
        return Ok(chroot);
    }
    if which::which("mmdebstrap").is_err() {
        bail!(
            "kernel {} must be compiled with {suite}'s compiler, which needs a {suite} chroot, \
             but mmdebstrap is not installed. Fix: apt-get install mmdebstrap (cargo xtask \
             setup installs it)",
            kernel.version
        );
    }
    if chroot.dir.exists() {
        // A half-built chroot from an interrupted run: mmdebstrap wants an empty target.
        fs::remove_dir_all(&chroot.dir)
            .with_context(|| format!("removing {}", chroot.dir.display()))?;
    }
    let headers = format!("linux-headers-{}", kernel.version);
    // The host's mirror serves sid too; mmdebstrap writes its own apt configuration, so
    // the host's proxy settings are handed over explicitly.
    let mirror = HostArchives::read()?.uri(Archive::Main)?;
    let proxies = HostArchives::proxy_options()?;
    eprintln!(
        "setup: building a {suite} chroot (mmdebstrap minbase + make + {headers}, ~1 min, \
         ~430 MB) in {}",
        chroot.dir.display()
    );
    let started = Instant::now();
    let mut c = Command::new("mmdebstrap");
    c.args(["--variant=minbase", "--mode=root"])
        .arg(format!("--include=make,{headers}"))
        // See kernel_line.rs: this machine's clock is ahead of the mirror's Valid-Until.
        .arg("--aptopt=Acquire::Check-Valid-Until \"false\"")
        .arg(format!("--keyring={KEYRING}"));
    for option in &proxies {
        c.arg(format!("--aptopt={option}"));
    }
    for pattern in EXCLUDED {
        c.arg(format!("--dpkgopt=path-exclude={pattern}"));
    }
    c.arg(suite).arg(&chroot.dir).arg(&mirror);
    let status = cmd::status(c.stdout(std::io::stderr()))?;
    if !status.success() {
        bail!(
            "building the {suite} chroot for kernel {} failed (mmdebstrap: {status}; its \
             output is above). It needs root, mount permission and {mirror} reachable. Fix the \
             cause and run again: the half-built {} is removed then",
            kernel.version,
            chroot.dir.display()
        );
    }
    // kbuild builds module BTF against <headers>/vmlinux; sid's headers ship one.
    let btf = chroot.host_path(&format!("usr/src/{headers}/vmlinux"));
    if !btf.exists() {
        guest_kernel::write_raw_btf(&kernel.vmlinux, &btf)?;
    }
    eprintln!(
        "setup: {suite} chroot built in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    fs::write(&marker, format!("{suite}\n"))
        .with_context(|| format!("writing {}", marker.display()))?;
    Ok(chroot)
}

/// Whether `program` (a compiler named by CONFIG_CC_VERSION_TEXT) is in the chroot.
pub fn has_program(chroot: &Chroot, program: &str) -> bool {
    ["usr/bin", "bin"]
        .iter()
        .any(|d| Path::new(&chroot.dir).join(d).join(program).exists())
}
