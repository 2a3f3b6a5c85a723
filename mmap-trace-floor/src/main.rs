//! `mmap-trace-floor --pid PID [--records]`, for `cargo xtask bench` only: attaches the
//! floor's programs (mmap-trace-ebpf/src/floor.rs) to the attach points `trace` uses by
//! default, says ready like `trace`, and holds them until the process exits. The bench
//! times a loop under them to learn what the attach points themselves cost, and with
//! `--records` what the least record per call costs; then it prints the records read
//! and lost, as `floor: N records, M lost`.
//!
//! A binary of its own so that the product, `mmap-trace`, carries no bench code: it
//! reuses mmap-trace's eBPF object and set-up (`mmap_trace::floor_support`) and adds
//! nothing to them.

use std::{os::fd::AsRawFd as _, process::ExitCode};

use anyhow::{Context as _, Result, anyhow};
use aya::{
    Ebpf, EbpfLoader,
    maps::{PerCpuArray, RingBuf},
    programs::{BtfTracePoint, Program, RawTracePoint, TracePoint},
};
use clap::Parser;
use mmap_trace::floor_support::{
    DEFAULT_RING_KIB, ebpf_object, ensure_tracefs_mounted, pidfd_open, require_root,
};

/// Empty eBPF programs on the attach points trace uses by default until PID exits.
#[derive(Parser)]
#[command(name = "mmap-trace-floor")]
struct Args {
    #[arg(long, value_name = "PID", value_parser = clap::value_parser!(u32).range(1..))]
    pid: u32,
    /// On sys_exit, the least record of each of PID's mmap, mprotect, munmap, brk and
    /// mremap calls, read and counted.
    #[arg(long)]
    records: bool,
}

/// How often the reader drains the ring: trace's own pace (the records wake nobody).
const DRAIN_MS: i32 = 10;

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args.pid, args.records) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mmap-trace-floor: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(pid: u32, records: bool) -> Result<()> {
    require_root("floor")?;
    let pidfd = pidfd_open(pid).with_context(|| format!("no process with pid {pid}"))?;
    let (mut ebpf, attached) = attach(records.then_some(pid))?;
    let mut ring = if records {
        let map = ebpf
            .take_map("FLOOR_RECORDS")
            .ok_or_else(|| anyhow!("the eBPF object has no FLOOR_RECORDS map"))?;
        Some(RingBuf::try_from(map)?)
    } else {
        None
    };
    eprintln!(
        "mmap-trace-floor: ready: floor ({} on {}), until pid {pid} exits",
        if records {
            "least records"
        } else {
            "empty programs"
        },
        attached.join(", ")
    );
    let mut read = 0u64;
    let mut pfd = libc::pollfd {
        fd: pidfd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    loop {
        if let Some(ring) = ring.as_mut() {
            while ring.next().is_some() {
                read += 1;
            }
        }
        let timeout = if ring.is_some() { DRAIN_MS } else { -1 };
        // SAFETY: one valid pollfd.
        match unsafe { libc::poll(&mut pfd, 1, timeout) } {
            0 => continue,
            n if n > 0 => break,
            _ => {
                let err = std::io::Error::last_os_error();
                if err.kind() != std::io::ErrorKind::Interrupted {
                    return Err(err).context("waiting for the process to exit");
                }
            }
        }
    }
    if let Some(ring) = ring.as_mut() {
        while ring.next().is_some() {
            read += 1;
        }
        let map = ebpf
            .map("FLOOR_LOST")
            .ok_or_else(|| anyhow!("the eBPF object has no FLOOR_LOST map"))?;
        let lost: u64 = PerCpuArray::<_, u64>::try_from(map)?
            .get(&0, 0)?
            .iter()
            .sum();
        eprintln!("mmap-trace-floor: floor: {read} records, {lost} lost");
    }
    Ok(())
}

/// Only the empty programs, on the attach points `trace` uses by default (sys_exit, the
/// catch-all's tracepoint when BTF has it, exec), from trace's object, with nothing else
/// loaded or attached. `records_of`: on sys_exit, the least record of each traced call
/// of this process instead (its ring is `FLOOR_RECORDS`, see
/// mmap-trace-ebpf/src/floor.rs). Returns what it attached.
fn attach(records_of: Option<u32>) -> Result<(Ebpf, Vec<&'static str>)> {
    ensure_tracefs_mounted()?;
    let tgid = records_of.unwrap_or(0);
    let mut loader = EbpfLoader::new();
    loader.override_global("FLOOR_TGID", &tgid, true);
    if records_of.is_some() {
        // trace's default ring; one page otherwise (floor.rs).
        loader.map_max_entries("FLOOR_RECORDS", DEFAULT_RING_KIB * 1024);
    }
    let mut ebpf = loader
        .load(ebpf_object())
        .context("loading the eBPF object")?;
    let mut attached = Vec::new();
    let (name, what) = if records_of.is_some() {
        ("floor_record_sys_exit", "raw tracepoint sys_exit (records)")
    } else {
        ("floor_sys_exit", "raw tracepoint sys_exit")
    };
    let exit: &mut RawTracePoint = program(&mut ebpf, name)?.try_into()?;
    exit.load().with_context(|| format!("loading {name}"))?;
    exit.attach("sys_exit")
        .with_context(|| format!("attaching {name} to the raw tracepoint sys_exit"))?;
    attached.push(what);
    // trace attaches the catch-all only where the kernel has BTF; so does the floor.
    if let Ok(btf) = aya::Btf::from_sys_fs() {
        let lock: &mut BtfTracePoint = program(&mut ebpf, "floor_mmap_lock")?.try_into()?;
        lock.load("mmap_lock_acquire_returned", &btf)
            .context("loading floor_mmap_lock")?;
        lock.attach().context("attaching floor_mmap_lock")?;
        attached.push("tp_btf mmap_lock_acquire_returned");
    }
    let exec: &mut TracePoint = program(&mut ebpf, "floor_exec")?.try_into()?;
    exec.load().context("loading floor_exec")?;
    exec.attach("sched", "sched_process_exec")
        .context("attaching floor_exec to sched/sched_process_exec")?;
    attached.push("tracepoint sched_process_exec");
    Ok((ebpf, attached))
}

fn program<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut Program> {
    ebpf.program_mut(name)
        .ok_or_else(|| anyhow!("the eBPF object has no program {name}"))
}
