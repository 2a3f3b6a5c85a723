//! `mmap-trace trace`: attach, stream events until the target exits, the duration ends or
//! a signal arrives, then drain the ring buffer, write the summary and flush.

use std::{os::fd::OwnedFd, path::PathBuf, time::Duration};

use anyhow::{Context as _, Result};
use aya::maps::{MapData, RingBuf};
use tokio::io::unix::AsyncFd;

use crate::{
    decode,
    loader::{LoadOptions, Tracer},
    output::{Format, Output, Summary},
    session::{Session, StopSignals, Target, monotonic_ns, reap, runtime},
};

pub struct TraceConfig {
    pub target: Target,
    pub format: Format,
    pub output: Option<PathBuf>,
    pub duration: Option<Duration>,
    /// `-T`: table times as the wall-clock time of day.
    pub wall_clock: bool,
    pub load: LoadOptions,
}

pub fn run(config: TraceConfig) -> Result<()> {
    let runtime = runtime()?;
    let signals = StopSignals::install(&runtime)?;
    // Before attaching: a bad path must not leave a command running untraced.
    let sink = crate::output::open(config.output.as_deref())?;
    let session = Session::start("trace", &config.target, config.load)?;
    let mut out = Output::new(config.format, sink, session.start_ns);
    if config.wall_clock {
        out.wall_clock();
    }
    let Session { tracer, ring, pidfd, child, start_ns, .. } = session;

    let mut summary = runtime.block_on(event_loop(
        ring,
        signals,
        &mut out,
        pidfd,
        child,
        config.duration,
        &tracer,
    ))?;
    tracer.flush_logs();
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

/// How long a record may sit in the ring buffer below the probes' wake-up threshold.
const DRAIN_INTERVAL: Duration = Duration::from_millis(10);

async fn event_loop(
    ring: RingBuf<MapData>,
    signals: StopSignals,
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
    let StopSignals { mut sigint, mut sigterm } = signals;
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
    // The syscall probes wake us only once the buffer fills past a threshold (emit.rs):
    // drain on a short timer as well, so no record waits longer than DRAIN_INTERVAL.
    let mut drain_tick = tokio::time::interval(DRAIN_INTERVAL);
    drain_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut lost_check = tokio::time::interval(Duration::from_secs(1));
    let mut lost_seen = 0u64;
    let mut summary = Summary::default();

    let ended = loop {
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard?;
                // Cleared before draining: a wake-up that arrives while we drain must
                // bring us back (the probes wake us once per threshold crossing only).
                guard.clear_ready();
                if drain(guard.get_inner_mut(), out, &mut summary).is_err() {
                    break "output closed".to_string();
                }
            }
            _ = drain_tick.tick() => {
                if drain(ring.get_mut(), out, &mut summary).is_err() {
                    break "output closed".to_string();
                }
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
    crate::paths::new_batch();
    while let Some(item) = ring.next() {
        match decode::decode(&item) {
            Ok(event) => {
                let path = crate::paths::mapped_path(&event);
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

/// A closed stdout (e.g. `| head`) ends the trace quietly rather than as an error.
pub fn ignore_closed_output(e: std::io::Error) -> std::io::Result<()> {
    if e.kind() == std::io::ErrorKind::BrokenPipe { Ok(()) } else { Err(e) }
}

