//! `mmap-workload --scenario NAME` for issues 12 and 19: programs that do what real
//! programs do and a verifier must neither misjudge nor disturb. Each makes the real
//! calls (traced calls as [`Call`](crate::workload::Call) lines, the rest as
//! observations) and prints what it saw itself — handler counts, what read() returned,
//! whether its parent saw a stop, the kernel's maps lines for its mappings — so a test
//! can check the program behaves the same under `verify` as alone.

use std::{
    ffi::{CString, OsStr},
    os::unix::ffi::OsStrExt as _,
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
};

use serde_json::{Value, json};

use crate::recorder::{PAGE, Recorder, errno_name};

/// Every scenario [`run`] knows.
pub const SCENARIOS: &[&str] = &[
    // Issue 19: names, renames, signals.
    "name-space",
    "name-newline",
    "name-tab",
    "name-deleted-suffix",
    "name-heap",
    "name-not-utf8",
    "unlink-mapped",
    "rename-mapped",
    "sigcont-handler",
    "blocked-read",
    "waitpid-stop",
    "pidfd-reap",
    "signal-mask",
    "deep-path",
    "long-path",
    // Issue 12: changes outside mmap/munmap/mprotect/mremap/brk, and process trees.
    "shmat",
    "shmat-shmdt",
    "pkey-mprotect",
    "remap-file-pages",
    "growsdown",
    "mremap-dup",
    "dev-zero-shared",
    "madvise-fork",
    "mlock-split",
    "mseal",
    "shadow-stack",
    "fork-exec",
    // Threads racing on the same addresses: 8 of them (`storm-N` for N).
    "storm",
    // Issue 17: what mappings cost.
    "fault-regions",
    "memset-64m",
    "file-cold",
];

const RO: u64 = libc::PROT_READ as u64;
const RW: u64 = (libc::PROT_READ | libc::PROT_WRITE) as u64;
const ANON: u64 = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64;
const SHARED: u64 = libc::MAP_SHARED as u64;
const NO_FD: u64 = -1i64 as u64;

/// Runs scenario `name`; false if there is none of that name.
pub fn run(rec: &mut Recorder, name: &str) -> bool {
    match name {
        "name-space" => map_named(rec, b"a b"),
        "name-newline" => map_named(rec, b"new\nline"),
        "name-tab" => map_named(rec, b"t\tab"),
        "name-deleted-suffix" => map_named(rec, b"x (deleted)"),
        "name-heap" => map_named(rec, b"[heap]"),
        "name-not-utf8" => map_named(rec, b"\xff\xfe-bin"),
        "unlink-mapped" => unlink_or_rename(rec, false),
        "rename-mapped" => unlink_or_rename(rec, true),
        "sigcont-handler" => sigcont_handler(rec),
        "blocked-read" => blocked_read(rec),
        "waitpid-stop" => waitpid_stop(rec),
        "pidfd-reap" => pidfd_reap(rec),
        "signal-mask" => signal_mask(rec),
        "deep-path" => map_nested(rec, &[b"d".as_slice(); 40]),
        "long-path" => map_nested(rec, &[[b'l'; 200].as_slice(), &[b'm'; 200]]),
        "shmat" => shm(rec, true),
        "shmat-shmdt" => shm(rec, false),
        "pkey-mprotect" => pkey_mprotect(rec),
        "remap-file-pages" => remap_file_pages(rec),
        "growsdown" => growsdown(rec),
        "mremap-dup" => mremap_dup(rec),
        "dev-zero-shared" => dev_zero_shared(rec),
        "madvise-fork" => madvise_fork(rec),
        "mlock-split" => mlock_split(rec),
        "mseal" => mseal(rec),
        "shadow-stack" => shadow_stack(rec),
        "fork-exec" => fork_exec(rec),
        "storm" => storm(rec, 8),
        "fault-regions" => fault_regions(rec),
        "memset-64m" => memset(rec, 64),
        "file-cold" => file_cold(rec),
        _ => match name.strip_prefix("storm-").and_then(|n| n.parse().ok()) {
            Some(threads) => storm(rec, threads),
            None => return false,
        },
    }
    true
}

// ---- threads racing ----

/// `threads` threads that map, split, partly unmap, move and
/// unmap in a loop, half of them in one shared arena with MAP_FIXED and MREMAP_FIXED, so
/// a range one thread frees is mapped over by another at once; the others let the kernel
/// pick, which hands each the addresses the last munmap freed. Every call races: only
/// the order in which the mm's write lock was taken says what maps shows.
fn storm(rec: &mut Recorder, threads: u64) {
    const ARENA_PAGES: u64 = 64;
    const ROUNDS: u64 = 20;
    // SAFETY: a fresh anonymous reservation, only ever mapped over with MAP_FIXED below.
    let arena = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            (ARENA_PAGES * PAGE) as usize,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    } as u64;
    assert_ne!(arena, libc::MAP_FAILED as u64, "storm arena");
    // Every thread exists before the first call: the arena's holes must not take a
    // thread's stack while another thread maps over them.
    let start = std::sync::Arc::new(std::sync::Barrier::new(threads as usize));
    let workers: Vec<_> = (0..threads)
        .map(|t| {
            let start = start.clone();
            std::thread::spawn(move || {
                start.wait();
                let mut seed = 0x9e37_79b9_7f4a_7c15u64 ^ (t + 1).wrapping_mul(0x1234_5678_9abc);
                let mut next = move |below: u64| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed % below
                };
                for _ in 0..ROUNDS {
                    if t % 2 == 0 {
                        storm_in_arena(arena, ARENA_PAGES, &mut next);
                    } else {
                        storm_anywhere(&mut next);
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.join().expect("storm worker");
    }
    // SAFETY: unmapping the arena made above (whatever the threads left in it).
    unsafe { libc::munmap(arena as *mut libc::c_void, (ARENA_PAGES * PAGE) as usize) };
    rec.observe("storm", json!({"threads": threads, "rounds": ROUNDS}));
}

/// One round in the shared arena: every call may land on another thread's pages.
fn storm_in_arena(arena: u64, pages: u64, next: &mut impl FnMut(u64) -> u64) {
    let at = |page: u64| (arena + page * PAGE) as *mut libc::c_void;
    let (a, b) = (next(pages - 4), next(pages - 4));
    // SAFETY: every address is inside the arena this scenario owns; the calls race, and
    // whatever they leave is valid memory of ours (or unmapped).
    unsafe {
        libc::mmap(
            at(a),
            (4 * PAGE) as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
            -1,
            0,
        );
        libc::mprotect(at(a + 1), PAGE as usize, libc::PROT_READ);
        libc::munmap(at(a + 3), PAGE as usize);
        libc::mremap(
            at(a),
            (2 * PAGE) as usize,
            (2 * PAGE) as usize,
            libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
            at(b),
        );
        libc::mprotect(at(b), (3 * PAGE) as usize, libc::PROT_NONE);
    }
}

/// One round where the kernel picks the address: it hands out what another thread just
/// freed.
fn storm_anywhere(next: &mut impl FnMut(u64) -> u64) {
    let len = (2 + next(4)) * PAGE;
    // SAFETY: the thread's own fresh mapping, changed and unmapped by this thread only
    // (other threads may map over what it freed).
    unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            len as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        if p == libc::MAP_FAILED {
            return;
        }
        let p = p as u64;
        libc::mprotect(
            (p + PAGE) as *mut libc::c_void,
            PAGE as usize,
            libc::PROT_READ,
        );
        libc::munmap(p as *mut libc::c_void, PAGE as usize);
        let q = libc::mremap(
            (p + PAGE) as *mut libc::c_void,
            (len - PAGE) as usize,
            (len + PAGE) as usize,
            libc::MREMAP_MAYMOVE,
        );
        let (q, qlen) = if q == libc::MAP_FAILED {
            (p + PAGE, len - PAGE)
        } else {
            (q as u64, len + PAGE)
        };
        libc::munmap(q as *mut libc::c_void, qlen as usize);
    }
}

// ---- helpers ----

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A fresh directory for this process's files, under TMPDIR.
fn scratch_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mmap-workload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch directory");
    dir
}

/// Opens `path` (any bytes) with `flags`, panicking with the reason.
fn open(path: &Path, flags: i32) -> i32 {
    let c = CString::new(path.as_os_str().as_bytes()).expect("no NUL in a path");
    // SAFETY: plain open of a path we made.
    let fd = unsafe { libc::open(c.as_ptr(), flags | libc::O_CLOEXEC) };
    assert!(
        fd >= 0,
        "open {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
    fd
}

fn close(fd: i32) {
    // SAFETY: closing a descriptor we opened.
    unsafe { libc::close(fd) };
}

/// A file of `pages` pages at `path`, opened read-write.
fn make_file(path: &Path, pages: u64) -> i32 {
    std::fs::write(path, vec![7u8; (pages * PAGE) as usize]).expect("write scratch file");
    open(path, libc::O_RDWR)
}

/// The lines of /proc/self/maps that overlap `[lo, hi)`, as bytes made printable the way
/// the kernel prints them (a name's newline is already `\012` there).
pub fn maps_lines(lo: u64, hi: u64) -> Vec<String> {
    let maps = std::fs::read("/proc/self/maps").expect("read /proc/self/maps");
    maps.split(|&b| b == b'\n')
        .filter(|l| {
            let text = String::from_utf8_lossy(l);
            let Some((range, _)) = text.split_once(' ') else {
                return false;
            };
            let Some((s, e)) = range.split_once('-') else {
                return false;
            };
            let (Ok(s), Ok(e)) = (u64::from_str_radix(s, 16), u64::from_str_radix(e, 16)) else {
                return false;
            };
            s < hi && lo < e
        })
        .map(|l| String::from_utf8_lossy(l).into_owned())
        .collect()
}

fn observe_maps(rec: &mut Recorder, what: &str, lo: u64, hi: u64) {
    let lines = maps_lines(lo, hi);
    rec.observe(what, json!(lines));
}

/// One anonymous mmap and munmap: a traced call after the step before, so a verifier
/// takes a checkpoint while the earlier mappings are in place.
fn checkpoint(rec: &mut Recorder) {
    let a = rec.call("mmap", libc::SYS_mmap, &[0, PAGE, RW, ANON, NO_FD, 0]) as u64;
    rec.call("munmap", libc::SYS_munmap, &[a, PAGE]);
}

fn touch(addr: u64) {
    // SAFETY: callers pass addresses inside writable mappings they made.
    unsafe { std::ptr::write_volatile(addr as *mut u8, 0x5a) };
}

fn peek(addr: u64) -> u8 {
    // SAFETY: callers pass addresses inside readable mappings they made.
    unsafe { std::ptr::read_volatile(addr as *const u8) }
}

/// waitpid until `pid` ends: its exit status (or 128 + signal), and how many times
/// WUNTRACED reported it stopped.
fn wait_child(pid: i32, untraced: bool) -> (i32, u32) {
    let mut stops = 0;
    loop {
        let mut status = 0;
        let flags = if untraced { libc::WUNTRACED } else { 0 };
        // SAFETY: waiting for our own child.
        let r = unsafe { libc::waitpid(pid, &mut status, flags) };
        if r < 0 {
            if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            panic!("waitpid {pid}: {}", std::io::Error::last_os_error());
        }
        if libc::WIFSTOPPED(status) {
            stops += 1;
        } else if libc::WIFEXITED(status) {
            return (libc::WEXITSTATUS(status), stops);
        } else if libc::WIFSIGNALED(status) {
            return (128 + libc::WTERMSIG(status), stops);
        }
    }
}

/// What the kselftest harness does with every test case: fork a child, poll its pidfd
/// until it has ended, then `waitpid(WNOHANG)`. A child still held by a tracer when its
/// pidfd says it ended cannot be reaped yet: the parent would find none (and the harness
/// would fail the case). Three children: one exits 3, one dies of its own SIGTERM, one
/// exits 0 after mapping and unmapping.
fn pidfd_reap(rec: &mut Recorder) {
    for (i, how) in ["exit 3", "own SIGTERM", "map and exit 0"]
        .iter()
        .enumerate()
    {
        // SAFETY: a single-threaded program forks; the child only makes raw calls and exits.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
        if pid == 0 {
            // SAFETY: the child's last acts.
            unsafe {
                match i {
                    0 => libc::_exit(3),
                    1 => {
                        libc::kill(libc::getpid(), libc::SIGTERM);
                        libc::_exit(1)
                    }
                    _ => {
                        let p = libc::mmap(
                            std::ptr::null_mut(),
                            PAGE as usize,
                            libc::PROT_READ | libc::PROT_WRITE,
                            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                            -1,
                            0,
                        );
                        libc::munmap(p, PAGE as usize);
                        libc::_exit(0)
                    }
                }
            }
        }
        // SAFETY: plain syscalls on our own child.
        let reaped = unsafe {
            let pidfd = libc::syscall(libc::SYS_pidfd_open, pid, 0) as i32;
            assert!(
                pidfd >= 0,
                "pidfd_open: {}",
                std::io::Error::last_os_error()
            );
            let mut poll = libc::pollfd {
                fd: pidfd,
                events: libc::POLLIN,
                revents: 0,
            };
            while libc::poll(&mut poll, 1, 30_000) < 0 {}
            libc::close(pidfd);
            let mut status = 0;
            let got = libc::waitpid(pid, &mut status, libc::WNOHANG);
            if got == pid {
                if libc::WIFEXITED(status) {
                    format!("exited {}", libc::WEXITSTATUS(status))
                } else {
                    format!("killed by {}", libc::WTERMSIG(status))
                }
            } else {
                // Reap it all the same, but say the harness would have failed it.
                libc::waitpid(pid, &mut status, 0);
                "not reapable when its pidfd said it ended".to_string()
            }
        };
        rec.observe(how, reaped);
    }
}

/// Installs `handler` for `signal`, with or without SA_RESTART.
fn install(signal: i32, handler: extern "C" fn(i32), restart: bool) {
    // SAFETY: a zeroed sigaction with a handler that only touches an atomic.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = handler as usize;
        sa.sa_flags = if restart { libc::SA_RESTART } else { 0 };
        libc::sigemptyset(&mut sa.sa_mask);
        assert_eq!(
            libc::sigaction(signal, &sa, std::ptr::null_mut()),
            0,
            "sigaction"
        );
    }
}

static SIGCONT_RUNS: AtomicU32 = AtomicU32::new(0);

extern "C" fn on_sigcont(_: i32) {
    SIGCONT_RUNS.fetch_add(1, Ordering::Relaxed);
}

// ---- issue 19 ----

/// Maps a file whose last component is `name` (any bytes), closes the fd (as ld.so does),
/// then makes a traced call with the mapping in place.
fn map_named(rec: &mut Recorder, name: &[u8]) {
    let dir = scratch_dir();
    let path = dir.join(OsStr::from_bytes(name));
    let fd = make_file(&path, 2);
    rec.observe("path_hex", hex(path.as_os_str().as_bytes()));
    let f = rec.call(
        "mmap",
        libc::SYS_mmap,
        &[0, 2 * PAGE, RO, libc::MAP_PRIVATE as u64, fd as u64, 0],
    ) as u64;
    close(fd);
    observe_maps(rec, "maps", f, f + 2 * PAGE);
    checkpoint(rec);
    rec.call("munmap", libc::SYS_munmap, &[f, 2 * PAGE]);
    let _ = std::fs::remove_file(&path);
    let _ = std::fs::remove_dir(&dir);
}

/// Maps a file under the directories `dirs` (nested in that order): deeper or longer
/// than a probe's path walk keeps.
fn map_nested(rec: &mut Recorder, dirs: &[&[u8]]) {
    let top = scratch_dir();
    let dir = dirs
        .iter()
        .fold(top.clone(), |d, name| d.join(OsStr::from_bytes(name)));
    std::fs::create_dir_all(&dir).expect("nested directories");
    let path = dir.join("leaf");
    let fd = make_file(&path, 1);
    rec.observe("path_hex", hex(path.as_os_str().as_bytes()));
    let f = rec.call(
        "mmap",
        libc::SYS_mmap,
        &[0, PAGE, RO, libc::MAP_PRIVATE as u64, fd as u64, 0],
    ) as u64;
    close(fd);
    checkpoint(rec);
    rec.call("munmap", libc::SYS_munmap, &[f, PAGE]);
    let _ = std::fs::remove_dir_all(&top);
}

/// Maps a file, then unlinks (or renames) it while mapped, then a traced call.
fn unlink_or_rename(rec: &mut Recorder, rename: bool) {
    let dir = scratch_dir();
    let path = dir.join("mapped");
    let fd = make_file(&path, 2);
    rec.observe("path_hex", hex(path.as_os_str().as_bytes()));
    let f = rec.call(
        "mmap",
        libc::SYS_mmap,
        &[0, 2 * PAGE, RO, SHARED, fd as u64, 0],
    ) as u64;
    close(fd);
    let renamed = dir.join("renamed");
    if rename {
        std::fs::rename(&path, &renamed).expect("rename the mapped file");
        rec.observe("renamed_hex", hex(renamed.as_os_str().as_bytes()));
    } else {
        std::fs::remove_file(&path).expect("unlink the mapped file");
    }
    observe_maps(rec, "maps", f, f + 2 * PAGE);
    checkpoint(rec);
    rec.call("munmap", libc::SYS_munmap, &[f, 2 * PAGE]);
    let _ = std::fs::remove_file(&renamed);
    let _ = std::fs::remove_dir(&dir);
}

/// A SIGCONT handler (with SA_RESTART) and 20 mmap/munmap pairs: the handler must run
/// as often as SIGCONT is sent by someone else — alone, never.
fn sigcont_handler(rec: &mut Recorder) {
    install(libc::SIGCONT, on_sigcont, true);
    for _ in 0..20 {
        let a = rec.call("mmap", libc::SYS_mmap, &[0, 2 * PAGE, RW, ANON, NO_FD, 0]) as u64;
        rec.call("munmap", libc::SYS_munmap, &[a, 2 * PAGE]);
    }
    rec.observe("sigcont_handler_runs", SIGCONT_RUNS.load(Ordering::Relaxed));
}

/// The signals this process was started with blocked and ignored (from
/// /proc/self/status), around a few calls: a command verify starts must get the mask it
/// would have had alone, not the one verify runs with (verify blocks SIGCHLD for itself).
fn signal_mask(rec: &mut Recorder) {
    let a = rec.call("mmap", libc::SYS_mmap, &[0, PAGE, RW, ANON, NO_FD, 0]) as u64;
    rec.call("munmap", libc::SYS_munmap, &[a, PAGE]);
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    for key in ["SigBlk", "SigIgn"] {
        let value = status
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{key}:")))
            .map(str::trim)
            .unwrap_or_default();
        rec.observe(key, value);
    }
}

/// Whether thread `tid` of this process sits in read(2) (syscall 0), from
/// /proc/self/task/TID/syscall.
fn in_read(tid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/self/task/{tid}/syscall"))
        .is_ok_and(|s| s.starts_with("0 "))
}

/// A thread blocked in read() on a pipe, with a SIGCONT handler installed WITHOUT
/// SA_RESTART, while the main thread maps: read() must return the data the main thread
/// writes at the end, not EINTR.
fn blocked_read(rec: &mut Recorder) {
    install(libc::SIGCONT, on_sigcont, false);
    let mut fds = [0; 2];
    assert_eq!(
        // SAFETY: a two-int array for pipe2.
        unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) },
        0,
        "pipe2"
    );
    let (rfd, wfd) = (fds[0], fds[1]);
    let (tid_tx, tid_rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        // SAFETY: gettid has no arguments.
        tid_tx.send(unsafe { libc::gettid() }).expect("send tid");
        let mut buf = [0u8; 16];
        // SAFETY: reading into our buffer.
        let n = unsafe { libc::read(rfd, buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            json!({ "error": errno_name(std::io::Error::last_os_error().raw_os_error().unwrap_or(0)) })
        } else {
            json!({ "data": String::from_utf8_lossy(&buf[..n as usize]) })
        }
    });
    let tid = tid_rx.recv().expect("reader tid");
    // Wait (bounded, 10 s) until the reader is inside read(): the maps below must happen
    // while it is blocked. Not a timing assertion: the observation says if it was.
    let blocked = (0..10_000).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(1));
        in_read(tid)
    });
    rec.observe("reader_blocked_before_maps", blocked);
    for _ in 0..20 {
        let a = rec.call("mmap", libc::SYS_mmap, &[0, 2 * PAGE, RW, ANON, NO_FD, 0]) as u64;
        rec.call("munmap", libc::SYS_munmap, &[a, 2 * PAGE]);
    }
    // SAFETY: writing a constant to our pipe.
    unsafe { libc::write(wfd, b"done".as_ptr().cast(), 4) };
    let got = reader.join().expect("reader thread");
    rec.observe("read_returned", got);
    rec.observe("sigcont_handler_runs", SIGCONT_RUNS.load(Ordering::Relaxed));
    close(rfd);
    close(wfd);
}

/// The parent forks a child that maps (20 mmap/munmap) and waits for it with
/// waitpid(WUNTRACED): it must never see the child stopped.
fn waitpid_stop(rec: &mut Recorder) {
    checkpoint(rec);
    // SAFETY: the child only makes raw syscalls, prints through the recorder (its line
    // buffer was flushed) and _exits.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        for _ in 0..20 {
            let a = rec.call("mmap", libc::SYS_mmap, &[0, 2 * PAGE, RW, ANON, NO_FD, 0]) as u64;
            rec.call("munmap", libc::SYS_munmap, &[a, 2 * PAGE]);
        }
        // SAFETY: ends the child without running the parent's exit handlers.
        unsafe { libc::_exit(0) };
    }
    let (status, stops) = wait_child(pid, true);
    rec.observe("child_status", status);
    rec.observe("child_stops_seen", stops);
    checkpoint(rec);
}

// ---- issue 12 ----

/// A SysV segment attached, touched, then (`then_mmap`) an mmap while it is attached,
/// then detached and removed. Without `then_mmap`: shmat…shmdt with nothing between.
fn shm(rec: &mut Recorder, then_mmap: bool) {
    let id = rec.other(
        "shmget",
        libc::SYS_shmget,
        &[
            libc::IPC_PRIVATE as u64,
            4 * PAGE,
            (libc::IPC_CREAT | 0o600) as u64,
        ],
    );
    assert!(id >= 0, "shmget failed");
    let addr = rec.other("shmat", libc::SYS_shmat, &[id as u64, 0, 0]);
    assert!(addr > 0, "shmat failed");
    let addr = addr as u64;
    if then_mmap {
        touch(addr);
        observe_maps(rec, "maps", addr, addr + 4 * PAGE);
        checkpoint(rec);
    }
    rec.other("shmdt", libc::SYS_shmdt, &[addr]);
    rec.other(
        "shmctl",
        libc::SYS_shmctl,
        &[id as u64, libc::IPC_RMID as u64, 0],
    );
    if then_mmap {
        checkpoint(rec);
    }
}

/// pkey_mprotect(p + page, page, PROT_READ, -1) (works like mprotect, PKU or not), and
/// with a real key where the CPU and kernel have protection keys.
fn pkey_mprotect(rec: &mut Recorder) {
    let key = rec.other("pkey_alloc", libc::SYS_pkey_alloc, &[0, 0]);
    rec.observe(
        "pkeys",
        if key >= 0 {
            "supported".to_string()
        } else {
            format!("unsupported: pkey_alloc {}", errno_name(-key as i32))
        },
    );
    let p = rec.call("mmap", libc::SYS_mmap, &[0, 3 * PAGE, RW, ANON, NO_FD, 0]) as u64;
    rec.other(
        "pkey_mprotect",
        libc::SYS_pkey_mprotect,
        &[p + PAGE, PAGE, RO, -1i64 as u64],
    );
    if key >= 0 {
        rec.other(
            "pkey_mprotect",
            libc::SYS_pkey_mprotect,
            &[p + 2 * PAGE, PAGE, RW, key as u64],
        );
    }
    observe_maps(rec, "maps", p, p + 3 * PAGE);
    checkpoint(rec);
    rec.call("munmap", libc::SYS_munmap, &[p, 3 * PAGE]);
    if key >= 0 {
        rec.other("pkey_free", libc::SYS_pkey_free, &[key as u64]);
    }
}

/// remap_file_pages on a shared file mapping: the first page shows file page 3.
fn remap_file_pages(rec: &mut Recorder) {
    let dir = scratch_dir();
    let path = dir.join("remap");
    let fd = make_file(&path, 4);
    let p = rec.call(
        "mmap",
        libc::SYS_mmap,
        &[0, 4 * PAGE, RW, SHARED, fd as u64, 0],
    ) as u64;
    close(fd);
    rec.other(
        "remap_file_pages",
        libc::SYS_remap_file_pages,
        &[p, PAGE, 0, 3, 0],
    );
    observe_maps(rec, "maps", p, p + 4 * PAGE);
    checkpoint(rec);
    rec.call("munmap", libc::SYS_munmap, &[p, 4 * PAGE]);
    let _ = std::fs::remove_file(&path);
    let _ = std::fs::remove_dir(&dir);
}

/// A MAP_GROWSDOWN mapping grown by touching the two pages below it, then an mmap. Room
/// below: the top of a PROT_NONE reservation is replaced by the mapping and the ~2 MiB
/// under it unmapped (more than stack_guard_gap), so the faults grow it.
fn growsdown(rec: &mut Recorder) {
    let none = libc::PROT_NONE as u64;
    let r = rec.call(
        "mmap",
        libc::SYS_mmap,
        &[0, 600 * PAGE, none, ANON, NO_FD, 0],
    ) as u64;
    let g = r + 598 * PAGE;
    let flags = ANON | (libc::MAP_FIXED | libc::MAP_GROWSDOWN) as u64;
    rec.call("mmap", libc::SYS_mmap, &[g, 2 * PAGE, RW, flags, NO_FD, 0]);
    rec.call("munmap", libc::SYS_munmap, &[r + 100 * PAGE, 498 * PAGE]);
    observe_maps(rec, "maps_before", g - 4 * PAGE, g + 2 * PAGE);
    touch(g - PAGE);
    touch(g - 2 * PAGE);
    observe_maps(rec, "maps_after", g - 4 * PAGE, g + 2 * PAGE);
    checkpoint(rec);
    rec.call("munmap", libc::SYS_munmap, &[g - 2 * PAGE, 4 * PAGE]);
    rec.call("munmap", libc::SYS_munmap, &[r, 100 * PAGE]);
}

/// mremap(p, 0, n, MREMAP_MAYMOVE) of a shared mapping: a second mapping of the same
/// pages; the first stays.
fn mremap_dup(rec: &mut Recorder) {
    let shared_anon = (libc::MAP_SHARED | libc::MAP_ANONYMOUS) as u64;
    let p = rec.call(
        "mmap",
        libc::SYS_mmap,
        &[0, 2 * PAGE, RW, shared_anon, NO_FD, 0],
    ) as u64;
    touch(p);
    let q = rec.call(
        "mremap",
        libc::SYS_mremap,
        &[p, 0, 2 * PAGE, libc::MREMAP_MAYMOVE as u64, 0],
    );
    if q > 0 {
        rec.observe("same_pages", peek(q as u64) == 0x5a);
        observe_maps(rec, "maps_dup", q as u64, q as u64 + 2 * PAGE);
    }
    observe_maps(rec, "maps", p, p + 2 * PAGE);
    checkpoint(rec);
    if q > 0 {
        rec.call("munmap", libc::SYS_munmap, &[q as u64, 2 * PAGE]);
    }
    rec.call("munmap", libc::SYS_munmap, &[p, 2 * PAGE]);
}

/// MAP_SHARED of /dev/zero: shmem behind it, which maps names "/dev/zero (deleted)".
fn dev_zero_shared(rec: &mut Recorder) {
    let fd = open(Path::new("/dev/zero"), libc::O_RDWR);
    let p = rec.call(
        "mmap",
        libc::SYS_mmap,
        &[0, 2 * PAGE, RW, SHARED, fd as u64, 0],
    ) as u64;
    close(fd);
    touch(p);
    observe_maps(rec, "maps", p, p + 2 * PAGE);
    checkpoint(rec);
    rec.call("munmap", libc::SYS_munmap, &[p, 2 * PAGE]);
}

/// MADV_DONTFORK on one page of a mapping and MADV_WIPEONFORK on one page of another
/// (each splits its VMA), then fork: the child sees the first page gone and the wiped
/// one zeroed, maps something and exits.
fn madvise_fork(rec: &mut Recorder) {
    let d = rec.call("mmap", libc::SYS_mmap, &[0, 2 * PAGE, RW, ANON, NO_FD, 0]) as u64;
    let w = rec.call("mmap", libc::SYS_mmap, &[0, 2 * PAGE, RW, ANON, NO_FD, 0]) as u64;
    for a in [d, d + PAGE, w, w + PAGE] {
        touch(a);
    }
    rec.other(
        "madvise",
        libc::SYS_madvise,
        &[d, PAGE, libc::MADV_DONTFORK as u64],
    );
    rec.other(
        "madvise",
        libc::SYS_madvise,
        &[w + PAGE, PAGE, libc::MADV_WIPEONFORK as u64],
    );
    observe_maps(rec, "maps_dontfork", d, d + 2 * PAGE);
    observe_maps(rec, "maps_wipeonfork", w, w + 2 * PAGE);
    checkpoint(rec);
    // SAFETY: the child makes raw syscalls, reads its own memory, prints and _exits.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        observe_maps(rec, "child_maps_dontfork", d, d + 2 * PAGE);
        rec.observe("child_wiped_page", peek(w + PAGE));
        rec.observe("child_kept_page", peek(w));
        checkpoint(rec);
        // SAFETY: ends the child.
        unsafe { libc::_exit(0) };
    }
    let (status, _) = wait_child(pid, false);
    rec.observe("child_status", status);
    rec.call("munmap", libc::SYS_munmap, &[d, 2 * PAGE]);
    rec.call("munmap", libc::SYS_munmap, &[w, 2 * PAGE]);
}

/// mlock of one page in the middle of four (a split), munlock (merged back).
fn mlock_split(rec: &mut Recorder) {
    let p = rec.call("mmap", libc::SYS_mmap, &[0, 4 * PAGE, RW, ANON, NO_FD, 0]) as u64;
    rec.other("mlock", libc::SYS_mlock, &[p + PAGE, PAGE]);
    observe_maps(rec, "maps_locked", p, p + 4 * PAGE);
    checkpoint(rec);
    rec.other("munlock", libc::SYS_munlock, &[p + PAGE, PAGE]);
    observe_maps(rec, "maps_unlocked", p, p + 4 * PAGE);
    checkpoint(rec);
    rec.call("munmap", libc::SYS_munmap, &[p, 4 * PAGE]);
}

/// mseal(2) of the middle page (Linux 6.10+; ENOSYS before): a split, and a sealed page
/// that munmap must refuse (EPERM).
fn mseal(rec: &mut Recorder) {
    const SYS_MSEAL: libc::c_long = 462;
    let p = rec.call("mmap", libc::SYS_mmap, &[0, 3 * PAGE, RW, ANON, NO_FD, 0]) as u64;
    let r = rec.other("mseal", SYS_MSEAL, &[p + PAGE, PAGE, 0]);
    rec.observe(
        "mseal",
        if r == 0 {
            "supported".to_string()
        } else {
            format!("unsupported: {}", errno_name(-r as i32))
        },
    );
    observe_maps(rec, "maps", p, p + 3 * PAGE);
    checkpoint(rec);
    if r == 0 {
        rec.call("munmap", libc::SYS_munmap, &[p, 3 * PAGE]); // refused: EPERM
        rec.call("munmap", libc::SYS_munmap, &[p, PAGE]);
        rec.call("munmap", libc::SYS_munmap, &[p + 2 * PAGE, PAGE]);
    } else {
        rec.call("munmap", libc::SYS_munmap, &[p, 3 * PAGE]);
    }
}

/// map_shadow_stack(2) (x86 user shadow stacks, 6.6+, needs CET in CPU and kernel).
fn shadow_stack(rec: &mut Recorder) {
    const SYS_MAP_SHADOW_STACK: libc::c_long = 453;
    const SHADOW_STACK_SET_TOKEN: u64 = 1;
    let r = rec.other(
        "map_shadow_stack",
        SYS_MAP_SHADOW_STACK,
        &[0, 4 * PAGE, SHADOW_STACK_SET_TOKEN],
    );
    if r > 0 {
        rec.observe("shadow_stack", "supported");
        observe_maps(rec, "maps", r as u64, r as u64 + 4 * PAGE);
        checkpoint(rec);
        rec.call("munmap", libc::SYS_munmap, &[r as u64, 4 * PAGE]);
    } else {
        rec.observe(
            "shadow_stack",
            format!("unsupported: {}", errno_name(-r as i32)),
        );
        checkpoint(rec);
    }
}

/// A process tree: fork + exec of this program with `--scenario anon`, then a vfork +
/// exec with `--scenario hole` (posix_spawn: glibc's is clone(CLONE_VM | CLONE_VFORK) +
/// exec on a stack of its own, which Rust cannot do safely with a bare vfork); waits for
/// both and prints their statuses.
fn fork_exec(rec: &mut Recorder) {
    checkpoint(rec);
    let exe = std::fs::read_link("/proc/self/exe").expect("readlink /proc/self/exe");
    let mut children = Vec::new();
    for (how, scenario) in [("fork", "anon"), ("vfork", "hole")] {
        let args: Vec<CString> = [
            exe.as_os_str().as_bytes(),
            b"--scenario",
            scenario.as_bytes(),
        ]
        .into_iter()
        .map(|a| CString::new(a).expect("no NUL"))
        .collect();
        let mut ptrs: Vec<*mut libc::c_char> = args.iter().map(|a| a.as_ptr().cast_mut()).collect();
        ptrs.push(std::ptr::null_mut());
        let pid = if how == "fork" {
            // SAFETY: the child calls only execv and _exit on memory prepared before.
            let pid = unsafe { libc::fork() };
            if pid == 0 {
                // SAFETY: as above.
                unsafe {
                    libc::execv(ptrs[0], ptrs.as_ptr().cast());
                    libc::_exit(127);
                }
            }
            assert!(pid > 0, "fork: {}", std::io::Error::last_os_error());
            pid
        } else {
            let mut pid = 0;
            // SAFETY: NUL-terminated argv; no file actions or attributes; our environ.
            let r = unsafe {
                unsafe extern "C" {
                    static environ: *const *mut libc::c_char;
                }
                libc::posix_spawn(
                    &mut pid,
                    ptrs[0],
                    std::ptr::null(),
                    std::ptr::null(),
                    ptrs.as_ptr(),
                    environ,
                )
            };
            assert_eq!(
                r,
                0,
                "posix_spawn: {}",
                std::io::Error::from_raw_os_error(r)
            );
            pid
        };
        let (status, _) = wait_child(pid, false);
        children.push(json!({ "how": how, "scenario": scenario, "pid": pid, "status": status }));
    }
    rec.observe("children", Value::Array(children));
    checkpoint(rec);
}

// ---- issue 17 ----

/// Pages touched in each of the three regions of `fault-regions`.
pub const FAULT_REGION_PAGES: [u64; 3] = [1, 100, 10_000];

/// Three private anonymous regions (each one page larger than it is touched, with a
/// PROT_NONE page between them so the kernel cannot merge them), then one write per page
/// of 1, 100 and 10,000 pages. Private anonymous memory has no fault-around and a write
/// to an untouched page maps it at once: one fault per page. MADV_NOHUGEPAGE keeps a
/// kernel with THP "always" from serving 512 pages per fault.
fn fault_regions(rec: &mut Recorder) {
    for pages in FAULT_REGION_PAGES {
        let guard = rec.call("mmap", libc::SYS_mmap, &[0, PAGE, 0, ANON, NO_FD, 0]) as u64;
        let len = (pages + 1) * PAGE;
        let a = rec.call("mmap", libc::SYS_mmap, &[0, len, RW, ANON, NO_FD, 0]) as u64;
        rec.other(
            "madvise",
            libc::SYS_madvise,
            &[a, len, libc::MADV_NOHUGEPAGE as u64],
        );
        for i in 0..pages {
            touch(a + i * PAGE);
        }
        rec.observe(
            "touched",
            json!({"addr": a, "len": len, "pages": pages, "guard": guard}),
        );
    }
}

/// One private anonymous mapping of `mib` MiB written end to end (memset), so its
/// resident set rises by `mib` MiB; the mapping stays until the process exits.
pub fn memset(rec: &mut Recorder, mib: u64) {
    let len = mib << 20;
    let a = rec.call("mmap", libc::SYS_mmap, &[0, len, RW, ANON, NO_FD, 0]) as u64;
    rec.other(
        "madvise",
        libc::SYS_madvise,
        &[a, len, libc::MADV_NOHUGEPAGE as u64],
    );
    // SAFETY: the mapping is ours, writable and `len` bytes long.
    unsafe { std::ptr::write_bytes(a as *mut u8, 0x5a, len as usize) };
    rec.observe("memset", json!({"addr": a, "len": len}));
}

/// Pages of the `file-cold` file.
pub const COLD_PAGES: u64 = 64;

/// A file written, synced and dropped from the page cache, mapped with MADV_RANDOM (no
/// readahead, and fault-around finds nothing cached to map), then read page by page:
/// every read needs I/O, one major fault per page. `cached` observes the pages mincore
/// saw in the page cache before the reads (0 unless the drop failed). A write to a
/// fresh page follows, so the last read has a fault after it.
fn file_cold(rec: &mut Recorder) {
    let dir = scratch_dir();
    let path = dir.join("cold");
    let fd = make_file(&path, COLD_PAGES);
    // SAFETY: plain calls on a descriptor we opened.
    let dropped = unsafe {
        libc::fsync(fd);
        libc::posix_fadvise(fd, 0, 0, libc::POSIX_FADV_DONTNEED)
    };
    let len = COLD_PAGES * PAGE;
    let a = rec.call(
        "mmap",
        libc::SYS_mmap,
        &[0, len, RO, libc::MAP_PRIVATE as u64, fd as u64, 0],
    ) as u64;
    rec.other(
        "madvise",
        libc::SYS_madvise,
        &[a, len, libc::MADV_RANDOM as u64],
    );
    let mut vec = vec![0u8; COLD_PAGES as usize];
    // SAFETY: `vec` has a byte per page of the mapping.
    unsafe { libc::mincore(a as *mut libc::c_void, len as usize, vec.as_mut_ptr()) };
    let cached = vec.iter().filter(|b| **b & 1 != 0).count();
    for i in 0..COLD_PAGES {
        peek(a + i * PAGE);
    }
    let after = rec.call("mmap", libc::SYS_mmap, &[0, PAGE, RW, ANON, NO_FD, 0]) as u64;
    touch(after);
    rec.observe(
        "cold",
        json!({"addr": a, "len": len, "pages": COLD_PAGES, "cached": cached, "fadvise": dropped}),
    );
    close(fd);
    let _ = std::fs::remove_dir_all(&dir);
}
