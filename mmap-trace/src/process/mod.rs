//! The traced processes: choosing and starting them (`session`, `spawn`), holding them
//! still for verify with ptrace (`hold`) on their CPU (`cpu`), told of their stops by a
//! blocked SIGCHLD (`child_signals`), cgroup v2 targets
//! (`cgroup`), and what their /proc/<pid>/maps says about a mapped file's path (`paths`).
//!
//! Owns everything that acts on or reads the traced processes from outside the kernel
//! probes. May not touch: the address-space model, records or output; it uses the
//! kernel side (kernel/) and nothing above it.

pub mod cgroup;
pub mod child_signals;
pub mod cpu;
pub mod hold;
pub mod paths;
pub mod session;
pub mod spawn;
