//! `mmap-stress fork-cases`: fork() after one reshaping of a private device mapping per case.

use super::*;

/// Each case maps 4 private pages of the kmalloc device read-write, reshapes them, forks
/// a child that exits at once, and says what fork answered.
pub(crate) fn fork_cases() {
    let fd = open(&DeviceKind::Kmalloc.dev_path(), libc::O_RDWR);
    let rw = (libc::PROT_READ | libc::PROT_WRITE) as u64;
    let write = |addr: u64| {
        // SAFETY: a store into a page of a mapping this case made writable.
        unsafe { std::ptr::write_volatile(addr as *mut u8, 0x5a) }
    };
    let cases: &[(&str, &dyn Fn(u64) -> u64)] = &[
        ("untouched", &|a| a),
        ("cow-page0", &|a| {
            write(a);
            a
        }),
        ("cow-page1", &|a| {
            write(a + PAGE);
            a
        }),
        ("munmap-page0", &|a| {
            sys(libc::SYS_munmap, [a, PAGE, 0, 0, 0, 0]).unwrap();
            a + PAGE
        }),
        ("cow-page1-munmap-page0", &|a| {
            write(a + PAGE);
            sys(libc::SYS_munmap, [a, PAGE, 0, 0, 0, 0]).unwrap();
            a + PAGE
        }),
        ("mprotect-split", &|a| {
            sys(
                libc::SYS_mprotect,
                [a + PAGE, PAGE, libc::PROT_READ as u64, 0, 0, 0],
            )
            .unwrap();
            a
        }),
        ("cow-page0-mprotect-page0", &|a| {
            write(a);
            sys(
                libc::SYS_mprotect,
                [a, PAGE, libc::PROT_READ as u64, 0, 0, 0],
            )
            .unwrap();
            a
        }),
        ("mremap-shrink", &|a| {
            sys(libc::SYS_mremap, [a, 4 * PAGE, PAGE, 0, 0, 0]).unwrap();
            a
        }),
        ("mremap-move", &|a| {
            let hole = sys(
                libc::SYS_mmap,
                [
                    0,
                    8 * PAGE,
                    0,
                    (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64,
                    u64::MAX,
                    0,
                ],
            )
            .unwrap();
            let flags = (libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED) as u64;
            sys(libc::SYS_mremap, [a, 4 * PAGE, 4 * PAGE, flags, hole, 0]).unwrap()
        }),
    ];
    for (name, reshape) in cases {
        let a = sys(
            libc::SYS_mmap,
            [0, 4 * PAGE, rw, libc::MAP_PRIVATE as u64, fd as u64, 0],
        )
        .expect("mmap");
        let _kept = reshape(a);
        // SAFETY: the child only exits.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: leaving the child at once.
            unsafe { libc::_exit(0) };
        }
        let result = if pid < 0 {
            errno_name(std::io::Error::last_os_error().raw_os_error().unwrap_or(0)).to_string()
        } else {
            // SAFETY: reaping our own child.
            unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
            "ok".to_string()
        };
        println!("FORK-CASE name={name} fork={result}");
        // Unmap whatever is left of the 4 pages and anything a move put elsewhere.
        let _ = sys(libc::SYS_munmap, [a, 4 * PAGE, 0, 0, 0, 0]);
        if _kept != a && _kept != a + PAGE {
            let _ = sys(libc::SYS_munmap, [_kept, 8 * PAGE, 0, 0, 0, 0]);
        }
    }
}
