//! `mmap-trace floor --pid PID` (hidden; for `cargo xtask bench`): attaches the empty
//! eBPF program to the raw `sys_exit` tracepoint mmap-trace's syscall probes use, says
//! ready like `trace`, and holds it until the process exits. The bench times a loop under
//! it to learn what the attach point itself costs.

use std::os::fd::AsRawFd as _;

use anyhow::{Context as _, Result};

use crate::process::session::pidfd_open;

pub fn run(pid: u32) -> Result<()> {
    crate::require_root("floor")?;
    let pidfd = pidfd_open(pid).with_context(|| format!("no process with pid {pid}"))?;
    let _ebpf = crate::kernel::loader::attach_floor()?;
    eprintln!(
        "mmap-trace: ready: floor (an empty program on raw tracepoint sys_exit), until pid {pid} exits"
    );
    let mut pfd = libc::pollfd {
        fd: pidfd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd; EINTR is retried.
    while unsafe { libc::poll(&mut pfd, 1, -1) } < 0 {
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            return Err(err).context("waiting for the process to exit");
        }
    }
    Ok(())
}
