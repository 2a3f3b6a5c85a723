//! Booting the guest under QEMU (TCG) and reading its serial console.
//!
//! The console is streamed to our stdout as it arrives, except the dmesg block (every
//! splat of the whole run with its context, then the log's last lines), which goes to
//! `target/guest/<version>/dmesg.log` and is scanned for kernel splats.

use std::fs;
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result};

use crate::build::Artifacts;
use crate::cmd;
use crate::guest_kernel::GuestKernel;
use crate::initramfs;

/// Kernel log lines that fail a run.
pub const SPLATS: &[&str] = &[
    "Oops",
    "BUG:",
    "WARNING:",
    "general protection",
    "Call Trace",
];
/// How long QEMU may take to exit after the guest printed its last marker.
const POWEROFF_GRACE: Duration = Duration::from_secs(15);

/// Marker lines with a per-boot nonce, so program output cannot fake them.
pub struct Markers {
    nonce: String,
}

impl Markers {
    pub fn new() -> Self {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        Markers {
            nonce: format!("{:x}{:x}", std::process::id(), nanos),
        }
    }

    pub fn nonce(&self) -> &str {
        &self.nonce
    }

    /// Followed by a space and the command's exit status.
    /// Printed by /init just before the command: what comes before is firmware and
    /// kernel chatter (stderr), what follows is the command's output (stdout).
    pub fn start(&self) -> String {
        format!("MMTRACE-START-{}", self.nonce)
    }

    pub fn exit_prefix(&self) -> String {
        format!("MMTRACE-EXIT-{}", self.nonce)
    }

    pub fn dmesg_begin(&self) -> String {
        format!("MMTRACE-DMESG-BEGIN-{}", self.nonce)
    }

    pub fn dmesg_end(&self) -> String {
        format!("MMTRACE-DMESG-END-{}", self.nonce)
    }
}

#[derive(Clone)]
pub struct Options {
    pub timeout: Duration,
    pub smp: u32,
    /// Put before every console line this process prints (`[6.12.95+deb12-amd64] `) when
    /// guests run side by side; empty otherwise.
    pub label: String,
}

pub struct Outcome {
    /// The command's exit status; None if the guest never reported one.
    pub status: Option<i32>,
    /// Console lines (without the dmesg block), for callers that look for markers.
    pub console: Vec<String>,
    /// Kernel log lines matching [`SPLATS`].
    pub splats: Vec<String>,
    pub dmesg_log: PathBuf,
    pub timed_out: bool,
    /// The console label it ran with ([`Options::label`]), for its messages.
    label: String,
}

impl Outcome {
    /// Prints what went wrong in the guest, if anything; returns the exit code to use.
    pub fn report(&self) -> i32 {
        let label = &self.label;
        if self.timed_out {
            eprintln!("{label}xtask: the guest did not finish within the timeout; qemu was killed");
        }
        if !self.splats.is_empty() {
            eprintln!(
                "{label}xtask: the guest kernel log has {} splat line(s) (with context and the last lines of the log: {}):",
                self.splats.len(),
                self.dmesg_log.display()
            );
            for l in &self.splats {
                eprintln!("{label}  {l}");
            }
        }
        match self.status {
            None => {
                eprintln!(
                    "{label}xtask: no exit marker from the guest: the command did not complete"
                );
                1
            }
            Some(0) if !self.splats.is_empty() => 1,
            Some(code) => code,
        }
    }
}

/// Packs the initramfs for `command` (a shell script) and boots it.
pub fn run_in_guest(
    kernel: &GuestKernel,
    artifacts: &Artifacts,
    command: String,
    markers: &Markers,
    opts: &Options,
) -> Result<Outcome> {
    let mut bins: Vec<(String, PathBuf)> = artifacts
        .bins
        .iter()
        .filter_map(|p| Some((p.file_name()?.to_string_lossy().into_owned(), p.clone())))
        .collect();
    bins.extend(artifacts.guest_tests.iter().cloned());
    let initrd = kernel.dir.join("initramfs.cpio");
    let overlay = kernel.overlay_module()?;
    initramfs::write(
        &initrd,
        &initramfs::Contents {
            cli: &artifacts.cli,
            bins,
            driver: artifacts.driver(kernel),
            overlay: overlay.as_deref(),
            busybox: &kernel.busybox,
            selftests: artifacts.selftests(kernel).map(|s| s.dir.as_path()),
            command,
            markers,
        },
    )?;
    boot(kernel, &initrd, markers, opts)
}

enum Event {
    Line(String),
    Eof,
}

fn boot(kernel: &GuestKernel, initrd: &Path, markers: &Markers, opts: &Options) -> Result<Outcome> {
    let arch = kernel.arch;
    let mut c = Command::new(arch.qemu());
    c.args(arch.qemu_machine())
        .arg("-kernel")
        .arg(&kernel.vmlinux)
        .arg("-initrd")
        .arg(initrd)
        // A log buffer that holds the whole run (the driver logs every mmap), so the splat
        // scan sees all of it; no TSC or lockup watchdogs, which a host stalled by other
        // work would trip under TCG without anything being wrong in the guest.
        .arg("-append")
        .arg(format!(
            "console={} panic=-1 quiet log_buf_len=32M tsc=reliable nowatchdog",
            arch.console()
        ))
        // 3 GiB: the mm selftests' 2 GiB mremap cases need the overcommit heuristic to
        // allow a 2 GiB mapping (with 1 GiB they fail alone and go uncounted); TCG takes
        // the memory from the host only as the guest touches it.
        .args([
            "-nographic",
            "-m",
            "3G",
            "-no-reboot",
            "-smp",
            &opts.smp.to_string(),
        ])
        // TCG only: /dev/kvm on this kind of machine hangs QEMU.
        .args(["-accel", "tcg"])
        // No NIC: skips the iPXE option ROM (~0.7 s of boot); the guest needs no network.
        .args(["-nic", "none"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    let what = cmd::describe(&c);
    eprintln!("{}vm: booting {} ({what})", opts.label, kernel.version);
    let started = Instant::now();
    let mut child = c.spawn().with_context(|| format!("running {what}"))?;
    let stdout = child.stdout.take().context("qemu stdout")?;

    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line = strip_escapes(&String::from_utf8_lossy(&buf));
                    if tx.send(Event::Line(line)).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = tx.send(Event::Eof);
    });

    let label = &opts.label;
    let exit_prefix = format!("{} ", markers.exit_prefix());
    let (begin, end) = (markers.dmesg_begin(), markers.dmesg_end());
    let mut deadline = started + opts.timeout;
    let mut status = None;
    let mut console = Vec::new();
    let mut dmesg: Option<Vec<String>> = None;
    let mut in_dmesg = false;
    let mut in_command = false;
    let start_marker = markers.start();
    let mut timed_out = false;
    let mut finished = false;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(Event::Line(line)) => {
                if in_dmesg {
                    if line.contains(&end) {
                        in_dmesg = false;
                        finished = true;
                        deadline = deadline.min(Instant::now() + POWEROFF_GRACE);
                    } else if let Some(d) = dmesg.as_mut() {
                        d.push(line);
                    }
                } else if line.contains(&begin) {
                    in_dmesg = true;
                    dmesg = Some(Vec::new());
                } else if !in_command {
                    // The marker may share a line with SeaBIOS's "Booting from ROM..".
                    match line.split_once(&start_marker) {
                        Some((before, _)) => {
                            in_command = true;
                            if !before.is_empty() {
                                eprintln!("{label}{before}");
                            }
                        }
                        None => eprintln!("{label}{line}"),
                    }
                    console.push(line);
                } else if let Some(rest) = line.split_once(&exit_prefix).map(|(_, r)| r) {
                    // The command is done: its status, and nothing after it, on stdout.
                    status = rest.trim().parse::<i32>().ok();
                    in_command = false;
                    eprintln!("{label}{line}");
                    console.push(line);
                } else {
                    println!("{label}{line}");
                    console.push(line);
                }
            }
            Ok(Event::Eof) | Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if !finished {
                    timed_out = true;
                    eprintln!(
                        "{label}xtask: TIMEOUT: the guest ran longer than {} s; killing qemu",
                        opts.timeout.as_secs()
                    );
                }
                let _ = child.kill();
                break;
            }
        }
    }
    let _ = child.wait();
    let boot_time = started.elapsed();

    let dmesg_log = kernel.dir.join("dmesg.log");
    let dmesg = dmesg.unwrap_or_default();
    fs::write(&dmesg_log, dmesg.join("\n") + "\n")
        .with_context(|| format!("writing {}", dmesg_log.display()))?;
    // Without a dmesg block (a panic, a timeout) the console is all we have.
    let scanned = if dmesg.is_empty() { &console } else { &dmesg };
    let splats = scanned
        .iter()
        .filter(|l| SPLATS.iter().any(|s| l.contains(s)))
        .cloned()
        .collect();
    eprintln!(
        "{label}vm: guest finished in {:.1} s; kernel log: {} ({} lines)",
        boot_time.as_secs_f64(),
        dmesg_log.display(),
        dmesg.len()
    );
    Ok(Outcome {
        status,
        console,
        splats,
        dmesg_log,
        timed_out,
        label: label.clone(),
    })
}

/// Drops terminal escape sequences (SeaBIOS clears the screen) and the line ending.
fn strip_escapes(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\x1b' {
            out.push(c);
            continue;
        }
        // ESC [ params final-byte, or ESC + one char (e.g. `ESC c`, reset).
        if chars.next_if_eq(&'[').is_some() {
            while chars.next().is_some_and(|c| !c.is_ascii_alphabetic()) {}
        } else {
            chars.next();
        }
    }
    out.trim_end_matches(['\n', '\r']).to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_bios_escapes() {
        assert_eq!(
            strip_escapes("\x1bc\x1b[?7l\x1b[2J\x1b[0mSeaBIOS\r\n"),
            "SeaBIOS"
        );
        assert_eq!(strip_escapes("plain\n"), "plain");
    }
}
