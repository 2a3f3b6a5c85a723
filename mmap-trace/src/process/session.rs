//! A tracing session: the target (a pid, a name, a command held before exec, or all),
//! the loaded and attached probes, and the ring buffer. Shared by `trace` and `verify`.

use std::os::fd::{FromRawFd as _, OwnedFd};

use anyhow::{Context as _, Result, bail};
use aya::maps::{MapData, RingBuf};
use mmap_trace_common::{Probe, TASK_COMM_LEN, TargetFilter};

use crate::{
    kernel::loader::{LoadOptions, Tracer},
    process::hold::Holder,
    process::spawn,
};

/// SIGINT and SIGTERM, caught from before the ready line on: a Ctrl-C at any moment
/// after "ready" ends the trace through the drain-and-summary path, never by default
/// action.
pub struct StopSignals {
    pub sigint: tokio::signal::unix::Signal,
    pub sigterm: tokio::signal::unix::Signal,
}

impl StopSignals {
    pub fn install(runtime: &tokio::runtime::Runtime) -> Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        let _context = runtime.enter();
        Ok(Self {
            sigint: signal(SignalKind::interrupt()).context("catching SIGINT")?,
            sigterm: signal(SignalKind::terminate()).context("catching SIGTERM")?,
        })
    }
}

/// A single-threaded event loop (no thread exists before the held child's fork).
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the event loop")
}

/// What to trace, already validated by the CLI.
pub enum Target {
    All,
    Pid(u32),
    Comm(String),
    Command(SpawnCommand),
}

/// A command to run traced.
pub struct SpawnCommand {
    /// Bytes: any but NUL, as exec takes them.
    pub argv: Vec<std::ffi::OsString>,
    /// Its standard output goes to our standard error (the records are on our stdout).
    pub stdout_to_stderr: bool,
}

pub struct Session {
    pub tracer: Tracer,
    pub ring: RingBuf<MapData>,
    /// Readable when the traced process (pid or command) exits.
    pub pidfd: Option<OwnedFd>,
    /// The command we started, if any (we reap it).
    pub child: Option<u32>,
    /// The traced process, when there is exactly one.
    pub pid: Option<u32>,
    /// CLOCK_MONOTONIC ns once attached (the probes' clock).
    pub start_ns: u64,
}

impl Session {
    /// Attaches to `target`; `command` names the CLI subcommand for error messages.
    /// `hold` (verify): the target is seized with ptrace before any probe can stop it.
    pub fn start(
        command: &str,
        target: &Target,
        mut load: LoadOptions,
        hold: Option<&mut Holder>,
    ) -> Result<Self> {
        crate::kernel::require_root(command)?;
        // Fork before anything starts a thread (see spawn.rs).
        let held = match target {
            Target::Command(cmd) => Some(spawn::spawn_held(&cmd.argv, cmd.stdout_to_stderr)?),
            _ => None,
        };
        if let Some(holder) = hold {
            match (target, &held) {
                (Target::Pid(pid), _) => holder.seize(*pid)?,
                (_, Some(child)) => holder.seize(child.pid)?,
                _ => {}
            }
        }
        let mut pidfd = None;
        let (tracer, follow) = (load.filter.tracer_tgid, load.filter.follow_forks);
        if follow != 0 && matches!(target, Target::All | Target::Comm(_)) {
            bail!(
                "--follow-forks follows the children of --pid or -- CMD; --comm and the whole-system trace see every matching process already"
            );
        }
        load.filter = match target {
            Target::All => TargetFilter::default(),
            Target::Pid(pid) => {
                pidfd =
                    Some(pidfd_open(*pid).with_context(|| format!("no process with pid {pid}"))?);
                TargetFilter {
                    tgid: *pid,
                    ..TargetFilter::default()
                }
            }
            Target::Comm(name) => comm_filter(name)?,
            Target::Command(_) => TargetFilter {
                tgid: held.as_ref().map_or(0, |h| h.pid),
                ..TargetFilter::default()
            },
        };
        load.filter.tracer_tgid = tracer;
        load.filter.follow_forks = follow;
        let cgroup = load.cgroup;
        let mut tracer = Tracer::load(&load)?;
        report_skipped(&tracer.skipped);
        let ring = tracer.take_events()?;
        let start_ns = monotonic_ns();
        let child = match held {
            Some(held) => {
                let pid = held.release()?;
                pidfd = Some(pidfd_open(pid).context("watching the traced command")?);
                Some(pid)
            }
            None => None,
        };
        let pid = match target {
            Target::Pid(pid) => Some(*pid),
            _ => child,
        };
        let names: Vec<&str> = tracer.attached.iter().map(|p| p.name()).collect();
        eprintln!(
            "mmap-trace: ready: {} probes attached ({}), tracing {}{}",
            names.len(),
            names.join(","),
            describe(target, child),
            match cgroup.id {
                0 => String::new(),
                id => format!(
                    " in cgroup {} and below",
                    crate::process::cgroup::Names::new()
                        .name(id)
                        .unwrap_or("(unnamed)")
                ),
            }
        );
        Ok(Self {
            tracer,
            ring,
            pidfd,
            child,
            pid,
            start_ns,
        })
    }
}

pub fn pidfd_open(pid: u32) -> std::io::Result<OwnedFd> {
    // SAFETY: plain syscall; the result is a fresh fd we own.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: pidfd_open returned a new descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Reaps our exited child and describes its status.
pub fn reap(pid: u32) -> String {
    let mut status = 0;
    // SAFETY: waiting for our own child, which the pidfd says has exited.
    let rc = unsafe { libc::waitpid(pid as i32, &mut status, 0) };
    if rc < 0 {
        "status unknown".to_string()
    } else if libc::WIFEXITED(status) {
        format!("status {}", libc::WEXITSTATUS(status))
    } else if libc::WIFSIGNALED(status) {
        format!("killed by signal {}", libc::WTERMSIG(status))
    } else {
        "status unknown".to_string()
    }
}

/// One line per reason: `mmap_region, remap_pfn_range skipped: no kprobes …`.
fn report_skipped(skipped: &[(Probe, String)]) {
    let mut reasons: Vec<&String> = skipped.iter().map(|(_, why)| why).collect();
    reasons.dedup();
    for why in reasons {
        let names: Vec<&str> = skipped
            .iter()
            .filter(|(_, w)| w == why)
            .map(|(p, _)| p.name())
            .collect();
        eprintln!(
            "mmap-trace: kernel probes skipped ({}): {why}",
            names.join(", ")
        );
    }
}

fn comm_filter(name: &str) -> Result<TargetFilter> {
    if name.is_empty() || name.contains('\0') {
        bail!("--comm needs a non-empty process name");
    }
    let mut comm = [0u8; TASK_COMM_LEN];
    // The kernel keeps 15 bytes of the name plus a NUL.
    let bytes = &name.as_bytes()[..name.len().min(TASK_COMM_LEN - 1)];
    comm[..bytes.len()].copy_from_slice(bytes);
    if name.len() >= TASK_COMM_LEN {
        eprintln!(
            "mmap-trace: note: the kernel keeps 15 bytes of a process name; matching {:?}",
            String::from_utf8_lossy(bytes)
        );
    }
    Ok(TargetFilter {
        match_comm: 1,
        comm,
        ..TargetFilter::default()
    })
}

fn describe(target: &Target, child: Option<u32>) -> String {
    match target {
        Target::All => "every process".to_string(),
        Target::Pid(pid) => format!("pid {pid}"),
        Target::Comm(name) => format!("processes named {name:?}"),
        Target::Command(cmd) => {
            format!(
                "{:?} (pid {})",
                cmd.argv.join(std::ffi::OsStr::new(" ")),
                child.unwrap_or(0)
            )
        }
    }
}

pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid timespec out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
