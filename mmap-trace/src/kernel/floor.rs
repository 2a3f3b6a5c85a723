//! `mmap-trace floor --pid PID` (hidden; for `cargo xtask bench`): attaches empty eBPF
//! programs to the attach points `trace` uses by default, says ready like `trace`, and
//! holds them until the process exits. The bench times a loop under them to learn what
//! the attach points themselves cost.

use std::os::fd::AsRawFd as _;

use anyhow::{Context as _, Result};

use crate::process::session::pidfd_open;

pub fn run(pid: u32) -> Result<()> {
    crate::require_root("floor")?;
    let pidfd = pidfd_open(pid).with_context(|| format!("no process with pid {pid}"))?;
    let (_ebpf, attached) = crate::kernel::loader::attach_floor()?;
    eprintln!(
        "mmap-trace: ready: floor (empty programs on {}), until pid {pid} exits",
        attached.join(", ")
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
