//! verify and its target's CPUs. A checkpoint is a hand-off: the target stops, verify
//! compares, the target resumes; the two never run at once. On different CPUs each
//! hand-off wakes an idle CPU, which on a virtual machine costs tens of µs (an interrupt
//! to a halted vCPU) against ~20 µs for the whole checkpoint on a CPU that is awake.
//!
//! Two remedies, neither touching the target's scheduling:
//! - [`FollowCpu`]: when a target's next stop does not come quickly, verify moves itself
//!   to the CPU the target last ran on (only verify's own thread moves, within the CPUs
//!   it was allowed at start). A resumed target is still placed on an idle CPU, so this
//!   helps a target that sleeps between calls more than one that calls without pause.
//! - [`AwakeCpus`]: while verify runs it asks the kernel's CPU idle policy, through the
//!   PM QoS device `/dev/cpu_dma_latency`, for a wake-up latency of zero: idle CPUs poll
//!   instead of halting, so a resumed target starts at once wherever it is placed. The
//!   request ends when its descriptor closes (with verify, however it ends). Measured on
//!   the 6.18 host (2 vCPUs): a 40,000-checkpoint loop took 1.34 s, 0.85 s with it.

/// The CPUs verify may use, and the one it follows its target to.
pub struct FollowCpu {
    allowed: libc::cpu_set_t,
    on: Option<usize>,
}

impl FollowCpu {
    pub fn new() -> Self {
        // SAFETY: an all-zero cpu_set_t is the empty set.
        let mut allowed: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        // SAFETY: our own thread's mask, into a set of the size given.
        let rc = unsafe {
            libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut allowed)
        };
        if rc != 0 {
            // Unknown: never move.
            // SAFETY: as above.
            allowed = unsafe { std::mem::zeroed() };
        }
        Self { allowed, on: None }
    }

    /// Moves verify's thread to the CPU thread `tid` of `pid` last ran on.
    pub fn follow(&mut self, pid: u32, tid: u32) {
        let Some(cpu) = last_cpu(pid, tid) else {
            return;
        };
        // SAFETY: reads a bit of a set we own.
        if self.on == Some(cpu) || !unsafe { libc::CPU_ISSET(cpu, &self.allowed) } {
            return;
        }
        // SAFETY: an all-zero cpu_set_t is the empty set.
        let mut one: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        // SAFETY: writes a bit inside the set (CPU_SET ignores a cpu past its size).
        unsafe { libc::CPU_SET(cpu, &mut one) };
        // SAFETY: our own thread's mask, from a set of the size given.
        let rc =
            unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &one) };
        if rc == 0 {
            self.on = Some(cpu);
        }
    }
}

impl Drop for FollowCpu {
    fn drop(&mut self) {
        if self.on.is_some() {
            // SAFETY: restores our own thread's mask from the set read at start.
            unsafe {
                libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &self.allowed)
            };
        }
    }
}

/// A held request that idle CPUs wake at once (PM QoS CPU latency of zero µs).
pub struct AwakeCpus {
    _request: std::fs::File,
}

impl AwakeCpus {
    const DEVICE: &str = "/dev/cpu_dma_latency";

    /// The request, while there is another CPU for the target to run on (on one CPU a
    /// hand-off never wakes another, and polling would only burn it); None, said at
    /// info level, where the kernel offers no such device or refuses it.
    pub fn request() -> Option<Self> {
        if std::thread::available_parallelism().is_ok_and(|n| n.get() < 2) {
            return None;
        }
        let opened = std::fs::OpenOptions::new().write(true).open(Self::DEVICE);
        let written = opened.and_then(|mut f| {
            use std::io::Write as _;
            f.write_all(&0i32.to_ne_bytes()).map(|()| f)
        });
        match written {
            Ok(request) => {
                log::info!("{}: idle CPUs kept awake while verify runs", Self::DEVICE);
                Some(Self { _request: request })
            }
            Err(e) => {
                log::info!(
                    "{}: {e}: idle CPUs may sleep, a checkpoint across CPUs is slower",
                    Self::DEVICE
                );
                None
            }
        }
    }
}

/// Field 39 of /proc/<pid>/task/<tid>/stat: the CPU the thread last ran on.
fn last_cpu(pid: u32, tid: u32) -> Option<usize> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count after its end.
    let after_comm = &stat[stat.rfind(')')? + 2..];
    after_comm.split(' ').nth(36)?.parse().ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_our_own_cpu() {
        let pid = std::process::id();
        let cpu = super::last_cpu(pid, pid).expect("our own stat");
        assert!(cpu < 4096);
    }
}
