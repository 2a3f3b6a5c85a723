//! `mmap-stress mremap-burst N`: N no-op mremap calls (a known number of traced events).

use super::*;

pub(crate) fn mremap_burst(n: u64) {
    let rw = (libc::PROT_READ | libc::PROT_WRITE) as u64;
    let anon = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64;
    let a = sys(libc::SYS_mmap, [0, PAGE, rw, anon, u64::MAX, 0]).expect("mmap");
    for _ in 0..n {
        // Same size, no flags: a no-op the kernel answers with the address.
        sys(libc::SYS_mremap, [a, PAGE, PAGE, 0, 0, 0]).expect("mremap");
    }
    println!("STRESS-RESULT mode=mremap-burst calls={n}");
}
