//! verify on its target's CPU. A checkpoint is a hand-off: the target stops, verify
//! compares, the target resumes; the two never run at once. On different CPUs each
//! hand-off wakes an idle CPU, which on a virtual machine costs ~100 µs (an interrupt to
//! a halted vCPU) against ~30 µs for the whole checkpoint on one CPU (measured on the
//! 6.18 host: a 4,000-checkpoint loop took 0.50 s across CPUs, 0.15 s on one). So when a
//! target's next stop does not come quickly, verify moves itself to the CPU the target
//! last ran on. Only verify's own thread moves, within the CPUs it was allowed at
//! start: the target's scheduling is not touched.

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
