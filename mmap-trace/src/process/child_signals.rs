//! Word that a traced task stopped or ended (SIGCHLD), without a signal handler.
//!
//! Every ptrace stop of a held process sends its tracer a SIGCHLD. Caught by a handler,
//! each one interrupts verify wherever it runs (a signal frame, the handler's write to
//! a pipe, the return from it) and, when verify is running on another CPU than the
//! stopping task, costs that CPU an interrupt to make it notice the signal. verify needs
//! none of that while it is looking for the next stop itself (`Holder::await_stop`):
//! only when it is about to sleep must a stop wake it. So SIGCHLD is blocked and read
//! through a signalfd: a stop only marks the descriptor readable (measured on the 6.18
//! host: a 40,000-checkpoint loop took 2.1 s with the handler, 1.34 s without).
//!
//! The mask is set before any other thread of ours exists (threads inherit it), and a
//! command verify starts gets back, before its exec, the mask verify was started with
//! ([`mask_at_start`]): it runs with the signals it would have had alone.

use std::os::fd::{AsRawFd, FromRawFd as _, OwnedFd, RawFd};
use std::sync::OnceLock;

use anyhow::{Context as _, Result};

/// The signal mask before SIGCHLD was blocked here; None while it never was.
static MASK_AT_START: OnceLock<libc::sigset_t> = OnceLock::new();

/// SIGCHLD, blocked in this process and readable from a descriptor.
pub struct ChildSignals {
    fd: OwnedFd,
}

impl ChildSignals {
    /// Blocks SIGCHLD in the calling thread (and so in every thread it starts after) and
    /// opens the descriptor it is read from. Call before any other thread exists: one
    /// that does not block SIGCHLD would take it instead.
    pub fn block() -> Result<Self> {
        // SAFETY: sigset_t is plain data; sigemptyset and sigaddset initialise it.
        let mut chld: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        let mut before: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: valid pointers to sets we own.
        let blocked = unsafe {
            libc::sigemptyset(&mut chld);
            libc::sigaddset(&mut chld, libc::SIGCHLD);
            libc::pthread_sigmask(libc::SIG_BLOCK, &chld, &mut before)
        };
        if blocked != 0 {
            return Err(std::io::Error::from_raw_os_error(blocked)).context("blocking SIGCHLD");
        }
        let _ = MASK_AT_START.set(before);
        // SAFETY: a new descriptor for a valid set; checked below.
        let fd = unsafe { libc::signalfd(-1, &chld, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error()).context("signalfd for SIGCHLD");
        }
        // SAFETY: signalfd returned a fresh descriptor that we now own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Self { fd })
    }

    /// Takes every SIGCHLD waiting (the descriptor is readable again only for a new one).
    /// What they said is not needed: waitpid tells it.
    pub fn drain(&self) {
        // SAFETY: plain data, read into by the kernel.
        let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
        let size = std::mem::size_of::<libc::signalfd_siginfo>();
        // SAFETY: reads at most `size` bytes into `info`.
        while unsafe { libc::read(self.fd.as_raw_fd(), (&raw mut info).cast(), size) }
            == size as isize
        {}
    }
}

impl AsRawFd for ChildSignals {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// The signal mask this process had before [`ChildSignals::block`], for a command it
/// starts (None: nothing was blocked here, the command inherits the mask as it is).
pub fn mask_at_start() -> Option<libc::sigset_t> {
    MASK_AT_START.get().copied()
}
