//! A test program that makes known memory-mapping syscalls and prints, one JSON object
//! per line, exactly what it asked for and what the kernel answered. The tests compare
//! that account with what `mmap-trace trace` saw, call by call.
//!
//! Usage: mmap-workload [--device PATH [--pages N] [--offset PAGES] [--private] [--touch]]
//!                      [--loop N] [--touch-mib MIB] [--scenario NAME] [--ia32] [--wx]
//!
//! Without --scenario: one sequence touching every traced call. Scenarios (for verify):
//! anon, file-offset, file-pages, split3, hole, mremap-move, fixed, threads, and those of
//! mmap_trace_tests::scenarios (odd names, signals, shm, pkeys, forks…), which also
//! print their own observations as `{"observe": …}` lines.
//! --ia32: ia32 syscalls (`int $0x80`) numbered like the traced x86-64 calls, then one
//! real munmap of the same address; only the munmap may appear in a trace.
//! --wx: two writable+executable mappings and one of 1 GiB + 1 page (the agent's logs).

use std::ffi::CString;

use mmap_trace_tests::recorder::{PAGE, Recorder};

/// The marker address of `--ia32` (never mapped by anything else).
#[cfg(target_arch = "x86_64")]
const IA32_MARKER: u64 = 0x4d4d_0000;

/// In the ia32 table 9, 10, 12 and 25 are link, unlink, chdir and stime (the x86-64
/// mmap, mprotect, brk and mremap); with the marker as every pointer they fail with
/// EFAULT and change nothing. 11 (munmap here) is execve there: left out.
#[cfg(target_arch = "x86_64")]
fn ia32_calls(rec: &mut Recorder) {
    for nr in [9u32, 10, 12, 25] {
        let ret: i32;
        // SAFETY: the calls only read the (unmapped) marker address. rbx cannot be an
        // asm operand, so the first argument is swapped into it and back.
        unsafe {
            std::arch::asm!(
                "xchg {b:r}, rbx",
                "int 0x80",
                "xchg {b:r}, rbx",
                b = inout(reg) IA32_MARKER => _,
                inlateout("eax") nr => ret,
                in("ecx") IA32_MARKER as u32,
                in("edx") IA32_MARKER as u32,
                // What a 64-bit probe would read as arguments, if it took this call for one.
                in("rdi") IA32_MARKER,
                in("rsi") 4096u64,
            );
        }
        println!("{{\"ia32\":{nr},\"ret\":{ret}}}");
    }
    rec.call("munmap", libc::SYS_munmap, &[IA32_MARKER, PAGE]);
}

/// ia32 exists only on x86-64.
#[cfg(not(target_arch = "x86_64"))]
fn ia32_calls(_: &mut Recorder) {
    eprintln!("mmap-workload: --ia32 needs an x86-64 build (int $0x80)");
    std::process::exit(2);
}

/// Maps `len` bytes of anonymous memory; a name found in no library, for the stack tests.
#[inline(never)]
#[unsafe(no_mangle)]
pub extern "C" fn mmtrace_workload_stack_marker(len: u64) -> u64 {
    // SAFETY: a fresh anonymous mapping.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            std::hint::black_box(len) as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    std::hint::black_box(p as u64)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let opt = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let mut rec = Recorder {
        out: std::io::stdout().lock(),
    };
    if let Some(n) = opt("--loop") {
        // The benchmark loop: N × {mmap 16 KiB anonymous, munmap}, not recorded.
        let n: u64 = n.parse().expect("--loop N");
        for _ in 0..n {
            // SAFETY: maps and unmaps its own anonymous memory.
            unsafe {
                let p = libc::mmap(
                    std::ptr::null_mut(),
                    16384,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                );
                libc::munmap(p, 16384);
            }
        }
        return;
    }
    if let Some(n) = opt("--vmas") {
        // The verify scaling benchmark: N one-page VMAs (alternating protections, so no
        // two merge), then "ready" on stdout; after a line on stdin, --changes M
        // mprotects of one of them (back and forth), then exit. verify attaches between.
        let n: u64 = n.parse().expect("--vmas N");
        let changes: u64 = opt("--changes").map_or(600, |c| c.parse().expect("--changes M"));
        // SAFETY: maps and changes its own anonymous memory.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                (n * PAGE) as usize,
                libc::PROT_READ,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        assert_ne!(base, libc::MAP_FAILED, "mmap {n} pages");
        let page = |i: u64| (base as u64 + i * PAGE) as *mut libc::c_void;
        for i in (1..n).step_by(2) {
            // SAFETY: inside the mapping above.
            unsafe { libc::mprotect(page(i), PAGE as usize, libc::PROT_READ | libc::PROT_WRITE) };
        }
        println!("ready");
        let mut line = String::new();
        let _ = std::io::stdin().read_line(&mut line);
        for c in 0..changes {
            let prot = if c % 2 == 0 {
                libc::PROT_NONE
            } else {
                libc::PROT_READ
            };
            // SAFETY: as above (an even page: PROT_NONE and back, never merged).
            unsafe { libc::mprotect(page((c / 2 * 2) % n), PAGE as usize, prot) };
        }
        return;
    }
    if let Some(n) = opt("--stack-marker") {
        // `trace --stacks` tests: N mmaps made by a function only this program has,
        // and one of them never unmapped (the leak report's planted call site).
        let n: u64 = n.parse().expect("--stack-marker N");
        for _ in 0..n {
            let p = mmtrace_workload_stack_marker(4 * PAGE);
            // SAFETY: unmaps the anonymous memory just mapped.
            unsafe { libc::munmap(p as *mut libc::c_void, 4 * PAGE as usize) };
        }
        println!("{{\"leaked\":{}}}", mmtrace_workload_stack_marker(3 * PAGE));
        return;
    }
    if let Some(mib) = opt("--touch-mib") {
        // The fault benchmark: N MiB of fresh anonymous pages, one write each, not
        // recorded (`--touch-mib 1024`: the 262,144 faults of a 1 GiB memset).
        let len = mib.parse::<usize>().expect("--touch-mib MIB") << 20;
        // SAFETY: maps, writes and unmaps its own anonymous memory.
        unsafe {
            let p = libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            assert_ne!(p, libc::MAP_FAILED, "mmap {len} bytes");
            libc::madvise(p, len, libc::MADV_NOHUGEPAGE);
            for i in (0..len).step_by(PAGE as usize) {
                std::ptr::write_volatile(p.cast::<u8>().add(i), 1);
            }
            libc::munmap(p, len);
        }
        return;
    }
    if args.iter().any(|a| a == "--wx") {
        // The agent's notable events: memory made writable and executable twice (an
        // mmap asking for it, an mprotect to it), and one mapping of 1 GiB + 1 page
        // (PROT_NONE, reserved only), each recorded.
        let rw = (libc::PROT_READ | libc::PROT_WRITE) as u64;
        let rwx = rw | libc::PROT_EXEC as u64;
        let anon = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64;
        let no_fd = -1i64 as u64;
        let a = rec.call("mmap", libc::SYS_mmap, &[0, PAGE, rwx, anon, no_fd, 0]) as u64;
        let b = rec.call("mmap", libc::SYS_mmap, &[0, PAGE, rw, anon, no_fd, 0]) as u64;
        rec.call("mprotect", libc::SYS_mprotect, &[b, PAGE, rwx]);
        let big = (1 << 30) + PAGE;
        let norsv = anon | libc::MAP_NORESERVE as u64;
        let c = rec.call("mmap", libc::SYS_mmap, &[0, big, 0, norsv, no_fd, 0]) as u64;
        for (addr, len) in [(a, PAGE), (b, PAGE), (c, big)] {
            rec.call("munmap", libc::SYS_munmap, &[addr, len]);
        }
        return;
    }
    if args.iter().any(|a| a == "--ia32") {
        ia32_calls(&mut rec);
        return;
    }
    if let Some(name) = opt("--scenario") {
        scenario(&mut rec, &name);
        return;
    }
    let rw = (libc::PROT_READ | libc::PROT_WRITE) as u64;
    let anon = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64;
    let no_fd = -1i64 as u64;

    // Anonymous 4 pages, then split by mprotect and a partial munmap.
    let a = rec.call("mmap", libc::SYS_mmap, &[0, 4 * PAGE, rw, anon, no_fd, 0]) as u64;
    rec.call(
        "mprotect",
        libc::SYS_mprotect,
        &[a + PAGE, PAGE, libc::PROT_READ as u64],
    );
    rec.call("munmap", libc::SYS_munmap, &[a + 2 * PAGE, PAGE]);
    // Grow the first page in place or move it.
    let b = rec.call(
        "mremap",
        libc::SYS_mremap,
        &[a, PAGE, 2 * PAGE, libc::MREMAP_MAYMOVE as u64, 0],
    ) as u64;
    // MAP_FIXED over part of an existing mapping.
    rec.call(
        "mmap",
        libc::SYS_mmap,
        &[
            a + 3 * PAGE,
            PAGE,
            libc::PROT_READ as u64,
            anon | libc::MAP_FIXED as u64,
            no_fd,
            0,
        ],
    );
    // A file mapping with an offset.
    let path = std::env::temp_dir().join(format!("mmap-workload-{}", std::process::id()));
    std::fs::write(&path, vec![7u8; 3 * PAGE as usize]).expect("temp file");
    let cpath = CString::new(path.to_str().expect("utf-8 path")).expect("no NUL");
    // SAFETY: plain open of our own temp file.
    let fd = unsafe { libc::open(cpath.as_ptr(), libc::O_RDONLY) };
    assert!(fd >= 0, "open {}", path.display());
    let f = rec.call(
        "mmap",
        libc::SYS_mmap,
        &[
            0,
            PAGE,
            libc::PROT_READ as u64,
            libc::MAP_PRIVATE as u64,
            fd as u64,
            PAGE,
        ],
    ) as u64;
    // Refused calls: zero length, unaligned munmap.
    rec.call("mmap", libc::SYS_mmap, &[0, 0, rw, anon, no_fd, 0]);
    rec.call("munmap", libc::SYS_munmap, &[a + 1, PAGE]);
    // The heap: query, grow, shrink back.
    let brk0 = rec.call("brk", libc::SYS_brk, &[0]) as u64;
    rec.call("brk", libc::SYS_brk, &[brk0 + 16 * PAGE]);
    rec.call("brk", libc::SYS_brk, &[brk0]);

    if let Some(device) = opt("--device") {
        let pages: u64 = opt("--pages").map_or(4, |p| p.parse().expect("--pages N"));
        let offset: u64 = opt("--offset").map_or(0, |p| p.parse().expect("--offset PAGES"));
        let kind = if args.iter().any(|a| a == "--private") {
            libc::MAP_PRIVATE
        } else {
            libc::MAP_SHARED
        };
        let cdev = CString::new(device.as_str()).expect("no NUL");
        // SAFETY: plain open of the device.
        let dfd = unsafe { libc::open(cdev.as_ptr(), libc::O_RDWR) };
        assert!(
            dfd >= 0,
            "open {device}: {}",
            std::io::Error::last_os_error()
        );
        let d = rec.call(
            "mmap",
            libc::SYS_mmap,
            &[0, pages * PAGE, rw, kind as u64, dfd as u64, offset * PAGE],
        );
        if d > 0 {
            // --touch: read one byte of each page, last page first, so a device that
            // maps on the first touch inserts them one by one, in that order.
            if args.iter().any(|a| a == "--touch") {
                for page in (0..pages).rev() {
                    // SAFETY: inside the mapping just made.
                    unsafe { std::ptr::read_volatile((d as u64 + page * PAGE) as *const u8) };
                }
            }
            rec.call("munmap", libc::SYS_munmap, &[d as u64, pages * PAGE]);
        }
        // SAFETY: closing our own fd.
        unsafe { libc::close(dfd) };
    }

    rec.call("munmap", libc::SYS_munmap, &[f, PAGE]);
    rec.call("munmap", libc::SYS_munmap, &[b, 2 * PAGE]);
    rec.call("munmap", libc::SYS_munmap, &[a, 4 * PAGE]);
    // SAFETY: closing our own fd.
    unsafe { libc::close(fd) };
    let _ = std::fs::remove_file(&path);
}

const RW: u64 = (libc::PROT_READ | libc::PROT_WRITE) as u64;
const ANON: u64 = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64;
const NO_FD: u64 = -1i64 as u64;

fn scenario(rec: &mut Recorder, name: &str) {
    let ro = libc::PROT_READ as u64;
    match name {
        "anon" => {
            let a = rec.call("mmap", libc::SYS_mmap, &[0, 8 * PAGE, RW, ANON, NO_FD, 0]) as u64;
            // SAFETY: writing into the mapping just made.
            unsafe { std::ptr::write_bytes(a as *mut u8, 1, 8 * PAGE as usize) };
            rec.call("munmap", libc::SYS_munmap, &[a, 8 * PAGE]);
        }
        "file-offset" => {
            let path = std::env::temp_dir().join(format!("mmap-workload-f-{}", std::process::id()));
            std::fs::write(&path, vec![3u8; 4 * PAGE as usize]).expect("temp file");
            let file = std::fs::File::open(&path).expect("open temp file");
            use std::os::fd::AsRawFd as _;
            let fd = file.as_raw_fd() as u64;
            let f = rec.call(
                "mmap",
                libc::SYS_mmap,
                &[0, 2 * PAGE, ro, libc::MAP_PRIVATE as u64, fd, PAGE],
            ) as u64;
            let s = rec.call(
                "mmap",
                libc::SYS_mmap,
                &[0, PAGE, ro, libc::MAP_SHARED as u64, fd, 3 * PAGE],
            ) as u64;
            rec.call("munmap", libc::SYS_munmap, &[f, 2 * PAGE]);
            rec.call("munmap", libc::SYS_munmap, &[s, PAGE]);
            let _ = std::fs::remove_file(&path);
        }
        "split3" => {
            let a = rec.call("mmap", libc::SYS_mmap, &[0, 3 * PAGE, RW, ANON, NO_FD, 0]) as u64;
            rec.call("mprotect", libc::SYS_mprotect, &[a + PAGE, PAGE, ro]);
            rec.call("mprotect", libc::SYS_mprotect, &[a + PAGE, PAGE, RW]);
            rec.call("munmap", libc::SYS_munmap, &[a, 3 * PAGE]);
        }
        "hole" => {
            let a = rec.call("mmap", libc::SYS_mmap, &[0, 3 * PAGE, RW, ANON, NO_FD, 0]) as u64;
            rec.call("munmap", libc::SYS_munmap, &[a + PAGE, PAGE]);
            rec.call("munmap", libc::SYS_munmap, &[a, 3 * PAGE]);
        }
        "mremap-move" => {
            let a = rec.call("mmap", libc::SYS_mmap, &[0, 2 * PAGE, RW, ANON, NO_FD, 0]) as u64;
            // A reserved spot to move to, replaced by the move (MREMAP_FIXED).
            let target = rec.call(
                "mmap",
                libc::SYS_mmap,
                &[0, 4 * PAGE, libc::PROT_NONE as u64, ANON, NO_FD, 0],
            ) as u64;
            let flags = (libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED) as u64;
            let b = rec.call(
                "mremap",
                libc::SYS_mremap,
                &[a, 2 * PAGE, 3 * PAGE, flags, target + PAGE],
            ) as u64;
            rec.call("munmap", libc::SYS_munmap, &[b, 3 * PAGE]);
            rec.call("munmap", libc::SYS_munmap, &[target, 4 * PAGE]);
        }
        "fixed" => {
            let a = rec.call("mmap", libc::SYS_mmap, &[0, 4 * PAGE, RW, ANON, NO_FD, 0]) as u64;
            rec.call(
                "mmap",
                libc::SYS_mmap,
                &[
                    a + PAGE,
                    2 * PAGE,
                    ro,
                    ANON | libc::MAP_FIXED as u64,
                    NO_FD,
                    0,
                ],
            );
            rec.call("munmap", libc::SYS_munmap, &[a, 4 * PAGE]);
        }
        "file-pages" => {
            // Fresh file pages (their PFNs come from page_cache events as write() adds
            // them), mapped and touched so pagemap shows them present.
            let path = std::env::temp_dir().join(format!("mmap-workload-p-{}", std::process::id()));
            std::fs::write(&path, vec![5u8; 8 * PAGE as usize]).expect("temp file");
            let file = std::fs::File::options()
                .read(true)
                .write(true)
                .open(&path)
                .expect("open temp file");
            use std::os::fd::AsRawFd as _;
            let fd = file.as_raw_fd() as u64;
            let touch = |addr: u64, pages: u64| {
                for p in 0..pages {
                    // SAFETY: reading inside a mapping just made.
                    unsafe { std::ptr::read_volatile((addr + p * PAGE) as *const u8) };
                }
            };
            let shared = rec.call(
                "mmap",
                libc::SYS_mmap,
                &[0, 4 * PAGE, ro, libc::MAP_SHARED as u64, fd, 2 * PAGE],
            ) as u64;
            touch(shared, 4);
            let private = rec.call(
                "mmap",
                libc::SYS_mmap,
                &[0, 2 * PAGE, RW, libc::MAP_PRIVATE as u64, fd, 0],
            ) as u64;
            touch(private, 2);
            // A store copies the page: from then on it is not a file page.
            // SAFETY: writing inside the private mapping just made.
            unsafe { std::ptr::write_volatile(private as *mut u8, 9) };
            rec.call("munmap", libc::SYS_munmap, &[shared, 4 * PAGE]);
            rec.call("munmap", libc::SYS_munmap, &[private, 2 * PAGE]);
            let _ = std::fs::remove_file(&path);
        }
        "threads" => {
            // Several threads mapping at once: each call is still checked.
            let workers: Vec<_> = (0..4)
                .map(|_| {
                    std::thread::spawn(|| {
                        for _ in 0..25 {
                            // SAFETY: each thread maps, changes and unmaps its own memory.
                            unsafe {
                                let p = libc::mmap(
                                    std::ptr::null_mut(),
                                    3 * PAGE as usize,
                                    libc::PROT_READ | libc::PROT_WRITE,
                                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                                    -1,
                                    0,
                                );
                                assert_ne!(p, libc::MAP_FAILED);
                                libc::mprotect(
                                    p.cast::<u8>().add(PAGE as usize).cast(),
                                    PAGE as usize,
                                    libc::PROT_READ,
                                );
                                libc::munmap(p, 3 * PAGE as usize);
                            }
                        }
                    })
                })
                .collect();
            for w in workers {
                w.join().expect("worker");
            }
        }
        other => {
            if !mmap_trace_tests::scenarios::run(rec, other) {
                panic!("unknown scenario {other:?}");
            }
        }
    }
}
