//! `mmap-trace trace`: attach, stream events until the target exits, the duration ends or
//! a signal arrives, then drain the ring buffer, write the summary and flush.

use std::{
    io::Write,
    os::fd::{FromRawFd as _, OwnedFd},
    path::PathBuf,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use aya::maps::{MapData, RingBuf};
use mmap_trace_common::{Probe, TASK_COMM_LEN, TargetFilter};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
};

use crate::{
    decode::{self, Event},
    loader::{LoadOptions, Tracer},
    output::{Format, Output, Summary},
    spawn,
};

/// What to trace, already validated by the CLI.
pub enum Target {
    All,
    Pid(u32),
    Comm(String),
    Command(Vec<String>),
}

pub struct TraceConfig {
    pub target: Target,
    pub format: Format,
    pub output: Option<PathBuf>,
    pub duration: Option<Duration>,
    pub load: LoadOptions,
}

pub fn run(mut config: TraceConfig) -> Result<()> {
    crate::require_root("trace")?;
    // Fork before anything starts a thread (see spawn.rs).
    let held = match &config.target {
        Target::Command(argv) => Some(spawn::spawn_held(argv)?),
        _ => None,
    };
    let mut pidfd = None;
    config.load.filter = match &config.target {
        Target::All => TargetFilter::default(),
        Target::Pid(pid) => {
            pidfd = Some(pidfd_open(*pid).with_context(|| format!("no process with pid {pid}"))?);
            TargetFilter { tgid: *pid, ..TargetFilter::default() }
        }
        Target::Comm(name) => comm_filter(name)?,
        Target::Command(_) => TargetFilter {
            tgid: held.as_ref().map_or(0, |h| h.pid),
            ..TargetFilter::default()
        },
    };
    let mut tracer = Tracer::load(&config.load)?;
    report_skipped(&tracer.skipped);
    let ring = tracer.take_events()?;
    let sink: Box<dyn Write + Send> = match &config.output {
        Some(path) => Box::new(
            std::fs::File::create(path)
                .with_context(|| format!("cannot create output file {}", path.display()))?,
        ),
        None => Box::new(std::io::stdout()),
    };
    let start_ns = monotonic_ns();
    let mut out = Output::new(config.format, sink, start_ns);

    let child = match held {
        Some(held) => {
            let pid = held.release()?;
            pidfd = Some(pidfd_open(pid).context("watching the traced command")?);
            Some(pid)
        }
        None => None,
    };
    let names: Vec<&str> = tracer.attached.iter().map(|p| p.name()).collect();
    eprintln!(
        "mmap-trace: ready: {} probes attached ({}), tracing {}",
        names.len(),
        names.join(","),
        describe(&config.target, child)
    );

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the event loop")?;
    let mut summary = runtime.block_on(event_loop(
        ring,
        &mut out,
        pidfd,
        child,
        config.duration,
        &tracer,
    ))?;
    summary.attached = tracer.attached.clone();
    summary.duration_ns = monotonic_ns().saturating_sub(start_ns);
    summary.events = out.counts;
    summary.lost = tracer.lost()?;
    out.summary(&summary).and_then(|()| out.flush()).or_else(ignore_closed_output)?;
    let lost: u64 = summary.lost.iter().sum();
    if lost > 0 {
        eprintln!("mmap-trace: WARNING: {lost} events were lost (ring buffer full); see the summary");
    }
    Ok(())
}

async fn event_loop(
    ring: RingBuf<MapData>,
    out: &mut Output,
    pidfd: Option<OwnedFd>,
    child: Option<u32>,
    duration: Option<Duration>,
    tracer: &Tracer,
) -> Result<Summary> {
    // SAFETY (both): the AsyncFd owns the descriptor, so it stays open while registered.
    let mut ring = unsafe { AsyncFd::register(ring) }
        .map_err(|e| e.into_parts().1)
        .context("polling the ring buffer")?;
    let exited = match pidfd {
        Some(fd) => Some(
            unsafe { AsyncFd::register(fd) }
                .map_err(|e| e.into_parts().1)
                .context("polling the target")?,
        ),
        None => None,
    };
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let deadline = async {
        match duration {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(deadline);
    let target_exit = async {
        match &exited {
            Some(fd) => fd.readable().await.map(|_| ()),
            None => std::future::pending().await,
        }
    };
    tokio::pin!(target_exit);
    let mut lost_check = tokio::time::interval(Duration::from_secs(1));
    let mut lost_seen = 0u64;
    let mut summary = Summary::default();

    let ended = loop {
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard?;
                if drain(guard.get_inner_mut(), out, &mut summary).is_err() {
                    break "output closed".to_string();
                }
                guard.clear_ready();
            }
            _ = sigint.recv() => break "SIGINT".to_string(),
            _ = sigterm.recv() => break "SIGTERM".to_string(),
            () = &mut deadline => break "duration elapsed".to_string(),
            res = &mut target_exit => {
                res?;
                break match child {
                    Some(pid) => format!("command exited ({})", reap(pid)),
                    None => "target process exited".to_string(),
                };
            }
            _ = lost_check.tick() => {
                let lost: u64 = tracer.lost()?.iter().sum();
                if lost > lost_seen {
                    eprintln!("mmap-trace: WARNING: {} events lost so far", lost);
                    lost_seen = lost;
                }
            }
        }
    };
    if ended == "target process exited" {
        eprintln!("mmap-trace: note: the traced process exited; trace ended");
    }
    // Whatever the kernel submitted before we stopped is still in the buffer.
    let _ = drain(ring.get_mut(), out, &mut summary);
    summary.ended = ended;
    Ok(summary)
}

fn drain(ring: &mut RingBuf<MapData>, out: &mut Output, summary: &mut Summary) -> Result<()> {
    while let Some(item) = ring.next() {
        match decode::decode(&item) {
            Ok(event) => {
                let path = mapped_path(&event);
                out.event(&event, path).or_else(ignore_closed_output)?;
            }
            Err(e) => {
                summary.malformed += 1;
                log::warn!("skipping a malformed record: {e}");
            }
        }
    }
    out.flush().or_else(ignore_closed_output)?;
    Ok(())
}

/// The file behind an mmap's fd, while the process still has it open.
fn mapped_path(event: &Event) -> Option<String> {
    let Event::Syscall(e) = event else { return None };
    if e.header.probe != Probe::Mmap as u32
        || e.args[3] & libc::MAP_ANONYMOUS as u64 != 0
        || (e.args[4] as i32) < 0
    {
        return None;
    }
    let link = format!("/proc/{}/fd/{}", e.header.pid, e.args[4] as i32);
    std::fs::read_link(link).ok().map(|p| p.display().to_string())
}

/// A closed stdout (e.g. `| head`) ends the trace quietly rather than as an error.
fn ignore_closed_output(e: std::io::Error) -> std::io::Result<()> {
    if e.kind() == std::io::ErrorKind::BrokenPipe { Ok(()) } else { Err(e) }
}

fn pidfd_open(pid: u32) -> std::io::Result<OwnedFd> {
    // SAFETY: plain syscall; the result is a fresh fd we own.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: pidfd_open returned a new descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Reaps our exited child and describes its status.
fn reap(pid: u32) -> String {
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
        let names: Vec<&str> =
            skipped.iter().filter(|(_, w)| w == why).map(|(p, _)| p.name()).collect();
        eprintln!("mmap-trace: kernel probes skipped ({}): {why}", names.join(", "));
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
    Ok(TargetFilter { tgid: 0, match_comm: 1, comm })
}

fn describe(target: &Target, child: Option<u32>) -> String {
    match target {
        Target::All => "every process".to_string(),
        Target::Pid(pid) => format!("pid {pid}"),
        Target::Comm(name) => format!("processes named {name:?}"),
        Target::Command(argv) => format!("{:?} (pid {})", argv.join(" "), child.unwrap_or(0)),
    }
}

pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid timespec out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
