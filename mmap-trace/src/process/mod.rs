//! The traced processes: choosing and starting them (`session`, `spawn`), holding them
//! still for verify with ptrace (`hold`) on their CPU (`cpu`), and cgroup v2 targets
//! (`cgroup`).

pub mod cgroup;
pub mod cpu;
pub mod hold;
pub mod session;
pub mod spawn;
