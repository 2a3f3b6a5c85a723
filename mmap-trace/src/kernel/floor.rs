//! `mmap-trace floor --pid PID [--records]` (hidden; for `cargo xtask bench`): attaches
//! the floor's programs (mmap-trace-ebpf/src/floor.rs) to the attach points `trace` uses
//! by default, says ready like `trace`, and holds them until the process exits. The
//! bench times a loop under them to learn what the attach points themselves cost, and
//! with `--records` what the least record per call costs; then it prints the records
//! read and lost, as `floor: N records, M lost`.

use std::os::fd::AsRawFd as _;

use anyhow::{Context as _, Result, anyhow};
use aya::maps::{PerCpuArray, RingBuf};

use crate::process::session::pidfd_open;

/// How often the reader drains the ring: trace's own pace (the records wake nobody).
const DRAIN_MS: i32 = 10;

pub fn run(pid: u32, records: bool) -> Result<()> {
    crate::require_root("floor")?;
    let pidfd = pidfd_open(pid).with_context(|| format!("no process with pid {pid}"))?;
    let (mut ebpf, attached) = crate::kernel::loader::attach_floor(records.then_some(pid))?;
    let mut ring = if records {
        let map = ebpf
            .take_map("FLOOR_RECORDS")
            .ok_or_else(|| anyhow!("the eBPF object has no FLOOR_RECORDS map"))?;
        Some(RingBuf::try_from(map)?)
    } else {
        None
    };
    eprintln!(
        "mmap-trace: ready: floor ({} on {}), until pid {pid} exits",
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
        eprintln!("mmap-trace: floor: {read} records, {lost} lost");
    }
    Ok(())
}
