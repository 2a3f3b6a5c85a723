//! Holding the verified processes still without their knowing: ptrace.
//!
//! verify compares /proc/<pid>/maps while nothing moves. The probes stop the thread that
//! made a traced call with a thread-directed SIGSTOP as it returns to user mode. Were
//! the process not traced, that SIGSTOP would group-stop it, and the SIGCONT that ends
//! the checkpoint would run any SIGCONT handler it installed, make a blocked `read()`
//! without SA_RESTART return EINTR, and show its parent a stop in `waitpid(WUNTRACED)`.
//!
//! Under ptrace (PTRACE_SEIZE) the SIGSTOP becomes a signal-delivery-stop of that thread
//! only: it is seen here first and discarded (the thread resumes with no signal), so no
//! group stop happens and no SIGCONT is ever sent. The process's other threads are held
//! with PTRACE_INTERRUPT, whose stop restarts an interrupted syscall transparently. What
//! remains visible to the target: time, and that it is ptraced (TracerPid in
//! /proc/self/status; a second tracer such as gdb or strace cannot attach meanwhile).
//! Signals the target receives are passed on as they arrive (or as the checkpoint ends).
//!
//! A thread is let go as it exits (PTRACE_EVENT_EXIT, before the kernel tears down its
//! mm: the last checkpoint of a process runs there), not after: a traced child's real
//! parent cannot reap it until its tracer has, and a parent that polls a pidfd and then
//! calls `waitpid(WNOHANG)` — the kselftest harness judges every test case that way —
//! would find no child yet and call the case failed. Detached before its exit, the
//! child ends exactly as it would alone.
//!
//! All ptrace requests come from the thread that attached (the main thread: verify's event
//! loop is single-threaded).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

const PTRACE_EVENT_FORK: i32 = 1;
const PTRACE_EVENT_VFORK: i32 = 2;
const PTRACE_EVENT_CLONE: i32 = 3;
const PTRACE_EVENT_EXEC: i32 = 4;
const PTRACE_EVENT_VFORK_DONE: i32 = 5;
const PTRACE_EVENT_EXIT: i32 = 6;
const PTRACE_EVENT_STOP: i32 = 128;
/// `si_code` of a signal the kernel sent (the probes' bpf_send_signal_thread), as opposed
/// to a kill(2) from a process (SI_USER) or a queued one.
const SI_KERNEL: i32 = 0x80;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Running,
    /// In a ptrace-stop; resumed with this signal (0: none) or, for a real group stop
    /// that someone else asked for, with PTRACE_LISTEN so it stays stopped.
    Stopped {
        resume_with: i32,
        listen: bool,
        why: Why,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Why {
    /// The probes' SIGSTOP after a reported event.
    Event,
    /// Our PTRACE_INTERRUPT, or an auto-attached child's first stop.
    Held,
    /// A signal or group stop of the target's own.
    Other,
    /// At its exit (PTRACE_EVENT_EXIT): its mm is still whole; detached, not resumed.
    Exiting,
}

#[derive(Debug)]
struct Thread {
    tgid: u32,
    state: State,
    /// Inside vfork(): the kernel holds it until the child execs or exits (a ptrace
    /// interrupt cannot stop it there), and it cannot change anything meanwhile.
    in_vfork: bool,
    /// A vfork child of a process whose children are not followed: let go at its first
    /// stop.
    detach: bool,
    /// How it is exiting (the wait status the kernel will give), from its exit stop.
    exit_status: Option<libc::c_int>,
}

/// What the wait statuses said beyond stops.
#[derive(Debug, PartialEq, Eq)]
pub enum Notice {
    /// A new process (fork, vfork, or clone without CLONE_THREAD) is traced too.
    NewProcess { parent: u32, child: u32 },
    /// The last thread of `pid` is gone; `status` as waitpid described it.
    Exited {
        pid: u32,
        status: String,
        /// Why this end is not one the process could have reached alone: it died of a
        /// signal that never reached it through its signal-delivery-stops (a signal
        /// only the holding could have caused). `None` for every ordinary end.
        unexplained: Option<String>,
    },
}

pub struct Holder {
    threads: HashMap<u32, Thread>,
    options: libc::c_int,
    follow_forks: bool,
    /// Notices seen while waiting inside `stop_process`.
    pending: Vec<Notice>,
    /// Processes being held for a checkpoint: their event stops (fork, vfork done, exec)
    /// are kept, not resumed, so a thread once stopped stays stopped.
    holding: std::collections::HashSet<u32>,
    /// Per process, the signals passed on to it (bit `1 << signo`): a process that dies
    /// of a signal must have been passed it (SIGKILL excepted: it is never reported).
    passed: HashMap<u32, u128>,
}

fn errno() -> std::io::Error {
    std::io::Error::last_os_error()
}

fn ptrace(
    request: libc::c_uint,
    tid: u32,
    addr: usize,
    data: usize,
) -> std::io::Result<libc::c_long> {
    // SAFETY: the requests used here take integers or point into memory we own.
    let rc = unsafe { libc::ptrace(request, tid as libc::pid_t, addr, data) };
    if rc < 0 { Err(errno()) } else { Ok(rc) }
}

/// The thread group of `tid`, from /proc.
fn tgid_of(tid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{tid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Tgid:"))
        .and_then(|v| v.trim().parse().ok())
}

fn describe_exit(status: libc::c_int) -> String {
    if libc::WIFEXITED(status) {
        format!("status {}", libc::WEXITSTATUS(status))
    } else if libc::WIFSIGNALED(status) {
        format!("killed by signal {}", libc::WTERMSIG(status))
    } else {
        "status unknown".to_string()
    }
}

impl Holder {
    /// `follow_forks`: children are traced (and held) from their first instruction.
    pub fn new(follow_forks: bool) -> Self {
        // vfork is always traced: a parent inside it cannot be stopped, so it must be known.
        let mut options = libc::PTRACE_O_TRACECLONE
            | libc::PTRACE_O_TRACEEXIT
            | libc::PTRACE_O_TRACEEXEC
            | libc::PTRACE_O_TRACEVFORK
            | libc::PTRACE_O_TRACEVFORKDONE;
        if follow_forks {
            options |= libc::PTRACE_O_TRACEFORK;
        }
        Self {
            threads: HashMap::new(),
            options,
            follow_forks,
            pending: Vec::new(),
            holding: Default::default(),
            passed: HashMap::new(),
        }
    }

    /// Seizes every thread of `pid` (a running process, or our held child before exec).
    pub fn seize(&mut self, pid: u32) -> Result<()> {
        // Threads created meanwhile are attached by their creator's PTRACE_O_TRACECLONE
        // once it is seized; loop until a listing finds nothing new.
        loop {
            let mut new = 0;
            let tids: Vec<u32> = match std::fs::read_dir(format!("/proc/{pid}/task")) {
                Ok(dir) => dir
                    .flatten()
                    .filter_map(|e| e.file_name().to_str()?.parse().ok())
                    .collect(),
                Err(e) => bail!("cannot list the threads of process {pid}: {e}"),
            };
            for tid in tids {
                if self.threads.contains_key(&tid) {
                    continue;
                }
                if let Err(e) = ptrace(libc::PTRACE_SEIZE, tid, 0, self.options as usize) {
                    if tid == pid || self.threads.is_empty() {
                        let hint = match e.raw_os_error() {
                            Some(libc::EPERM) => {
                                ": it is already traced (gdb, strace?) or ptrace is restricted (kernel.yama.ptrace_scope=3)"
                            }
                            _ => "",
                        };
                        bail!("cannot hold process {pid} with ptrace: {e}{hint}");
                    }
                    continue; // a thread that just exited
                }
                self.threads.insert(
                    tid,
                    Thread {
                        tgid: pid,
                        state: State::Running,
                        in_vfork: false,
                        detach: false,
                        exit_status: None,
                    },
                );
                new += 1;
            }
            if new == 0 {
                return Ok(());
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.threads.is_empty()
    }

    /// Whether a thread of `pid` is held at its exit (its last checkpoint is due).
    pub fn is_exiting(&self, pid: u32) -> bool {
        self.threads.values().any(|t| {
            t.tgid == pid
                && matches!(
                    t.state,
                    State::Stopped {
                        why: Why::Exiting,
                        ..
                    }
                )
        })
    }

    pub fn is_traced(&self, pid: u32) -> bool {
        self.threads.values().any(|t| t.tgid == pid)
    }

    /// Processes with a thread stopped by the probes or held at its start, waiting for a
    /// checkpoint.
    pub fn waiting(&self) -> Vec<u32> {
        let mut pids: Vec<u32> = self
            .threads
            .values()
            .filter(|t| {
                matches!(
                    t.state,
                    State::Stopped {
                        why: Why::Event | Why::Held | Why::Exiting,
                        ..
                    }
                )
            })
            .map(|t| t.tgid)
            .collect();
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    /// Looks for a held thread, or the next wait status, for up to `within` without
    /// sleeping (yielding the CPU to whoever else may run on it); true when there is one
    /// (a status is handled, and a notice it gave is kept for the next [`Holder::poll`]).
    pub fn await_stop(&mut self, within: Duration) -> Result<bool> {
        let start = Instant::now();
        let mut notices = Vec::new();
        loop {
            if !self.waiting().is_empty() {
                return Ok(true);
            }
            if self.wait_one(libc::WNOHANG, &mut notices)? {
                self.pending.append(&mut notices);
                return Ok(true);
            }
            if start.elapsed() >= within || self.threads.is_empty() {
                return Ok(false);
            }
            std::thread::yield_now();
        }
    }

    /// Handles every wait status the kernel has for us, without blocking.
    pub fn poll(&mut self) -> Result<Vec<Notice>> {
        let mut notices = std::mem::take(&mut self.pending);
        while self.wait_one(libc::WNOHANG, &mut notices)? {}
        Ok(notices)
    }

    /// The notices kept from statuses already handled, without asking for more.
    pub fn take_notices(&mut self) -> Vec<Notice> {
        std::mem::take(&mut self.pending)
    }

    /// One wait status (false when there was none). Signals and events that need no
    /// checkpoint are passed on at once.
    fn wait_one(&mut self, flags: libc::c_int, notices: &mut Vec<Notice>) -> Result<bool> {
        let mut status = 0;
        // SAFETY: waitpid with a valid status pointer.
        let tid = unsafe { libc::waitpid(-1, &mut status, flags | libc::__WALL) };
        if tid == 0 {
            return Ok(false);
        }
        if tid < 0 {
            let e = errno();
            if e.raw_os_error() == Some(libc::ECHILD) {
                self.threads.clear();
                return Ok(false);
            }
            if e.raw_os_error() == Some(libc::EINTR) {
                return Ok(true);
            }
            bail!("waitpid: {e}");
        }
        let tid = tid as u32;
        if libc::WIFEXITED(status) || libc::WIFSIGNALED(status) {
            if let Some(t) = self.threads.remove(&tid)
                && !self.is_traced(t.tgid)
            {
                notices.push(self.ended(t.tgid, Some(status)));
            }
            return Ok(true);
        }
        if !libc::WIFSTOPPED(status) {
            return Ok(true);
        }
        let sig = libc::WSTOPSIG(status);
        let event = status >> 16;
        let known = self.threads.contains_key(&tid);
        let thread = self.threads.entry(tid).or_insert_with(|| Thread {
            // An auto-attached task whose first stop came before its creator's event.
            tgid: tgid_of(tid).unwrap_or(tid),
            state: State::Running,
            in_vfork: false,
            detach: false,
            exit_status: None,
        });
        let tgid = thread.tgid;
        let stopped = |resume_with, listen, why| State::Stopped {
            resume_with,
            listen,
            why,
        };
        match event {
            PTRACE_EVENT_FORK | PTRACE_EVENT_VFORK | PTRACE_EVENT_CLONE => {
                let mut child: libc::c_ulong = 0;
                let _ = ptrace(libc::PTRACE_GETEVENTMSG, tid, 0, (&raw mut child) as usize);
                let child = child as u32;
                let child_tgid = if event == PTRACE_EVENT_CLONE {
                    tgid_of(child).unwrap_or(tgid)
                } else {
                    child
                };
                let detach = event == PTRACE_EVENT_VFORK && !self.follow_forks;
                let entry = self.threads.entry(child).or_insert(Thread {
                    tgid: child_tgid,
                    state: State::Running,
                    in_vfork: false,
                    detach,
                    exit_status: None,
                });
                entry.tgid = child_tgid;
                entry.detach = detach;
                if entry.state != State::Running && detach {
                    let _ = ptrace(libc::PTRACE_DETACH, child, 0, 0);
                    self.threads.remove(&child);
                }
                if child_tgid != tgid && !detach {
                    notices.push(Notice::NewProcess {
                        parent: tgid,
                        child: child_tgid,
                    });
                }
                if let Some(t) = self.threads.get_mut(&tid) {
                    t.in_vfork = event == PTRACE_EVENT_VFORK;
                }
                self.event_stop(tid, tgid);
            }
            PTRACE_EVENT_VFORK_DONE => {
                thread.in_vfork = false;
                self.event_stop(tid, tgid);
            }
            PTRACE_EVENT_EXEC => {
                // A non-leader thread's exec takes over the leader's tid; the others are gone.
                self.threads.retain(|&t, th| th.tgid != tgid || t == tid);
                self.event_stop(tid, tgid);
            }
            PTRACE_EVENT_EXIT => {
                let mut code: libc::c_ulong = 0;
                let _ = ptrace(libc::PTRACE_GETEVENTMSG, tid, 0, (&raw mut code) as usize);
                thread.exit_status = Some(code as libc::c_int);
                thread.state = stopped(0, false, Why::Exiting);
            }
            PTRACE_EVENT_STOP if thread.detach => {
                let _ = ptrace(libc::PTRACE_DETACH, tid, 0, 0);
                self.threads.remove(&tid);
            }
            PTRACE_EVENT_STOP => {
                let group_stop = matches!(
                    sig,
                    libc::SIGSTOP | libc::SIGTSTP | libc::SIGTTIN | libc::SIGTTOU
                );
                thread.state = if !known || !group_stop {
                    stopped(0, false, Why::Held) // our interrupt, or a new task's first stop
                } else {
                    stopped(0, true, Why::Other) // a real group stop: keep it stopped
                };
            }
            0 => {
                // Signal-delivery-stop.
                // SAFETY: an all-zero siginfo_t is a valid value of this plain C struct.
                let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
                let from_probe = sig == libc::SIGSTOP
                    && ptrace(libc::PTRACE_GETSIGINFO, tid, 0, (&raw mut info) as usize).is_ok()
                    && info.si_code == SI_KERNEL;
                if !from_probe {
                    *self.passed.entry(tgid).or_default() |= 1u128 << (sig as u32 & 127);
                }
                let Some(thread) = self.threads.get_mut(&tid) else {
                    return Ok(true);
                };
                if from_probe {
                    thread.state = stopped(0, false, Why::Event);
                } else if matches!(thread.state, State::Stopped { .. }) {
                    thread.state = stopped(sig, false, Why::Other);
                } else {
                    self.cont(tid, sig); // the target's own signal: deliver it now
                }
            }
            _ => self.event_stop(tid, tgid),
        }
        Ok(true)
    }

    /// A ptrace event stop (fork, exec…): passed on, unless its process is being held.
    fn event_stop(&mut self, tid: u32, tgid: u32) {
        if self.holding.contains(&tgid) {
            if let Some(t) = self.threads.get_mut(&tid) {
                t.state = State::Stopped {
                    resume_with: 0,
                    listen: false,
                    why: Why::Held,
                };
            }
        } else {
            self.cont(tid, 0);
        }
    }

    fn cont(&mut self, tid: u32, sig: i32) {
        if ptrace(libc::PTRACE_CONT, tid, 0, sig as usize).is_ok()
            && let Some(t) = self.threads.get_mut(&tid)
        {
            t.state = State::Running;
        }
    }

    /// Holds every thread of `pid` still; false when the process is gone. `expect`: its
    /// threads that reported an event and are on their way to their SIGSTOP (waited for,
    /// not interrupted, so one checkpoint covers them).
    pub fn stop_process(&mut self, pid: u32, expect: &[u32]) -> Result<Hold> {
        let start = Instant::now();
        let (grace, deadline) = (
            start + Duration::from_millis(2),
            start + Duration::from_secs(10),
        );
        let mut interrupted = std::collections::HashSet::new();
        // Threads that have exited and wait for the rest of their group (a leader that
        // ended first, or was killed without an exit stop): no interrupt stops them, and
        // their end is reported only with the group's.
        let mut dead = std::collections::HashSet::new();
        let mut notices = Vec::new();
        let mut idle = 0u32;
        self.holding.insert(pid);
        loop {
            if !self.is_traced(pid) {
                self.pending.append(&mut notices);
                return Ok(Hold::Gone);
            }
            let running: Vec<u32> = self
                .threads
                .iter()
                .filter(|(tid, t)| {
                    t.tgid == pid
                        && t.state == State::Running
                        && !t.in_vfork
                        && !dead.contains(*tid)
                })
                .map(|(&tid, _)| tid)
                .collect();
            if running.is_empty() {
                self.pending.append(&mut notices);
                return Ok(Hold::Held);
            }
            let now = Instant::now();
            if now >= grace && idle > 0 && idle.is_multiple_of(100) {
                dead.extend(running.iter().copied().filter(|&tid| is_dead(pid, tid)));
                if let Some(blocked) = running
                    .iter()
                    .find_map(|&tid| waits_on_its_own_process(pid, tid))
                {
                    self.pending.append(&mut notices);
                    return Ok(Hold::Blocked(blocked));
                }
            }
            for tid in running {
                if !interrupted.contains(&tid) && (!expect.contains(&tid) || now >= grace) {
                    let _ = ptrace(libc::PTRACE_INTERRUPT, tid, 0, 0);
                    interrupted.insert(tid);
                }
            }
            if self.wait_one(libc::WNOHANG, &mut notices)? {
                idle = 0;
            } else {
                if now > deadline {
                    let stuck: Vec<String> = self
                        .threads
                        .iter()
                        .filter(|(_, t)| t.tgid == pid && t.state == State::Running)
                        .map(|(&tid, t)| describe_thread(pid, tid, t))
                        .collect();
                    bail!(
                        "process {pid} did not stop within 10 s after an event; still running: {} (a thread in uninterruptible sleep?)",
                        stuck.join(", ")
                    );
                }
                // A stop is microseconds away: yield first, sleep only when it is not.
                idle += 1;
                if idle < 200 {
                    std::thread::yield_now();
                } else {
                    std::thread::sleep(Duration::from_micros(50));
                }
            }
            self.pending.append(&mut notices);
        }
    }

    /// Resumes every held thread of `pid`, delivering any signal that arrived meanwhile.
    pub fn resume_process(&mut self, pid: u32) {
        self.holding.remove(&pid);
        let held: Vec<(u32, i32, bool, Why)> = self
            .threads
            .iter()
            .filter(|(_, t)| t.tgid == pid)
            .filter_map(|(&tid, t)| match t.state {
                State::Stopped {
                    resume_with,
                    listen,
                    why,
                } => Some((tid, resume_with, listen, why)),
                State::Running => None,
            })
            .collect();
        for (tid, sig, listen, why) in held {
            if why == Why::Exiting {
                self.let_go_exiting(tid);
            } else if listen {
                let _ = ptrace(libc::PTRACE_LISTEN, tid, 0, 0);
                if let Some(t) = self.threads.get_mut(&tid) {
                    t.state = State::Stopped {
                        resume_with: 0,
                        listen: true,
                        why: Why::Other,
                    };
                }
            } else {
                self.cont(tid, sig);
            }
        }
    }

    /// Detaches a thread held at its exit stop; its process's end is noticed when it was
    /// the last thread (the status its exit stop gave: what its real parent will see).
    fn let_go_exiting(&mut self, tid: u32) {
        let _ = ptrace(libc::PTRACE_DETACH, tid, 0, 0);
        let Some(t) = self.threads.remove(&tid) else {
            return;
        };
        if !self.is_traced(t.tgid) {
            let notice = self.ended(t.tgid, t.exit_status);
            self.pending.push(notice);
        }
    }

    /// The notice of `pid`'s end with wait status `status`, checked against the signals
    /// it was passed.
    fn ended(&mut self, pid: u32, status: Option<libc::c_int>) -> Notice {
        let passed = self.passed.remove(&pid).unwrap_or(0);
        let unexplained = status
            .filter(|&s| libc::WIFSIGNALED(s))
            .map(|s| libc::WTERMSIG(s))
            .filter(|&sig| sig != libc::SIGKILL && passed & (1u128 << (sig as u32 & 127)) == 0)
            .map(|sig| {
                format!("it died of signal {sig}, which never reached it through verify's hold")
            });
        Notice::Exited {
            pid,
            status: status.map_or_else(|| "status unknown".to_string(), describe_exit),
            unexplained,
        }
    }

    /// Lets every traced thread go with nothing left stopped: each is brought to a
    /// ptrace-stop; a SIGSTOP the probes queued before they were detached is taken as a
    /// signal-delivery-stop (so it is never delivered for real); then it is detached with no
    /// signal. Called on drop, after the eBPF programs are gone (they are dropped first).
    pub fn release_all(&mut self) {
        let mut pids: Vec<u32> = self.threads.values().map(|t| t.tgid).collect();
        pids.sort_unstable();
        pids.dedup();
        for pid in &pids {
            if self.stop_process(*pid, &[]).is_err() {
                continue; // a thread in uninterruptible sleep: detached below as it is
            }
        }
        let tids: Vec<u32> = self.threads.keys().copied().collect();
        for tid in tids {
            if sigstop_pending(tid) {
                // Let it reach the signal, held there, then detach suppressing it.
                let _ = ptrace(libc::PTRACE_CONT, tid, 0, 0);
                let mut status = 0;
                // SAFETY: waitpid on our tracee with a valid status pointer.
                unsafe { libc::waitpid(tid as i32, &mut status, libc::__WALL) };
            }
            let _ = ptrace(libc::PTRACE_DETACH, tid, 0, 0);
        }
        self.threads.clear();
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        self.release_all();
    }
}

/// What holding a process came to.
#[derive(Debug, PartialEq, Eq)]
pub enum Hold {
    /// Every thread is stopped.
    Held,
    /// The process is gone.
    Gone,
    /// A thread cannot stop: it waits in the kernel for another thread of its process,
    /// already stopped (a userfaultfd's fault or event, waiting for its reader). What
    /// stopped must be let go; the checkpoint comes later, once that thread has gone on.
    Blocked(String),
}

/// Where a thread sleeps uninterruptibly until another thread of its own process acts: a
/// userfaultfd fault (`handle_userfault`) or event (fork, mremap, unmap: the caller waits
/// in `userfaultfd_event_wait_completion` for the monitor to read it; uninterruptible on
/// 6.1). No interrupt stops such a thread while the other is held.
const WAITS_ON_OWN_PROCESS: &[&str] = &["handle_userfault", "userfaultfd_event_wait_completion"];

/// `tid`, described, if it sleeps where only another thread of its process wakes it.
fn waits_on_its_own_process(pid: u32, tid: u32) -> Option<String> {
    let wchan = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/wchan")).ok()?;
    WAITS_ON_OWN_PROCESS
        .contains(&wchan.trim())
        .then(|| format!("thread {tid} of process {pid} waits in {}", wchan.trim()))
}

/// Whether thread `tid` has exited (a zombie, or gone from /proc).
fn is_dead(pid: u32, tid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")) else {
        return true;
    };
    let state = stat.rfind(')').and_then(|i| stat.get(i + 2..i + 3));
    matches!(state, Some("Z" | "X"))
}

/// A thread that would not stop, as /proc sees it: its state and where it waits.
fn describe_thread(pid: u32, tid: u32, t: &Thread) -> String {
    let read = |what: &str| {
        std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/{what}")).unwrap_or_default()
    };
    let stat = read("stat");
    let state = stat
        .rfind(')')
        .and_then(|i| stat.get(i + 2..i + 3))
        .unwrap_or("?");
    format!(
        "tid {tid} (state {state}, waiting in {:?}{})",
        read("wchan"),
        if t.in_vfork { ", in vfork" } else { "" }
    )
}

/// Whether SIGSTOP is pending for `tid` (its own or its process's pending set).
fn sigstop_pending(tid: u32) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{tid}/status")) else {
        return false;
    };
    let bit = 1u64 << (libc::SIGSTOP - 1);
    status
        .lines()
        .filter_map(|l| {
            l.strip_prefix("SigPnd:")
                .or_else(|| l.strip_prefix("ShdPnd:"))
        })
        .filter_map(|v| u64::from_str_radix(v.trim(), 16).ok())
        .any(|mask| mask & bit != 0)
}
