//! `mmap-stress concurrent`: M processes × T threads on disjoint parts of every buffer.

use super::*;

pub(crate) fn concurrent(slot: u64, slots: u64, threads: u64, rounds: u64) {
    let npages = npages();
    let parts = slots * threads;
    let part_pages = npages / parts;
    assert!(
        part_pages >= 1,
        "{npages} pages cannot be split into {parts} parts"
    );
    let mmaps = AtomicU64::new(0);
    let checks = AtomicU64::new(0);
    std::thread::scope(|s| {
        for t in 0..threads {
            let (mmaps, checks) = (&mmaps, &checks);
            s.spawn(move || {
                let part = slot * threads + t;
                let first = part * part_pages;
                let mut rng = Rng::new(part);
                for round in 0..rounds {
                    for kind in DeviceKind::ALL {
                        hammer(
                            kind, npages, first, part_pages, round, &mut rng, mmaps, checks,
                        );
                    }
                }
            });
        }
    });
    println!(
        "STRESS-RESULT mode=concurrent slot={slot} threads={threads} rounds={rounds} mmaps={} checks={}",
        mmaps.into_inner(),
        checks.into_inner()
    );
}

/// One round on one device for the thread owning pages first..first+n.
#[expect(
    clippy::too_many_arguments,
    reason = "one thread's part of the buffers, its round and the shared counters"
)]
pub(crate) fn hammer(
    kind: DeviceKind,
    npages: u64,
    first: u64,
    n: u64,
    round: u64,
    rng: &mut Rng,
    mmaps: &AtomicU64,
    checks: &AtomicU64,
) {
    let fd = open(&kind.dev_path(), libc::O_RDWR);
    let rw = (libc::PROT_READ | libc::PROT_WRITE) as u64;
    let die = |what: String| -> ! {
        println!("STRESS-FAIL concurrent {kind:?} pages {first}+{n} round {round}: {what}");
        std::process::exit(1)
    };
    let map = |len: u64, flags: i32, off: u64| {
        mmaps.fetch_add(1, Ordering::Relaxed);
        sys(libc::SYS_mmap, [0, len, rw, flags as u64, fd as u64, off])
            .unwrap_or_else(|e| die(format!("mmap {len:#x} at {off:#x}: {}", errno_name(e))))
    };
    let (mine, len) = (first * PAGE, (n * PAGE) as usize);
    // The whole buffer, shared: store into our part, read it back with pread.
    let whole = map(npages * PAGE, libc::MAP_SHARED, 0);
    let data = rng.bytes(len);
    store(whole + mine, &data);
    let _ = load(whole, (npages * PAGE) as usize); // others' parts: read, not checked
    if pread(fd, len, mine as i64).ok().as_deref() != Some(&data[..]) {
        die("a store through the mapping is not what pread returns".into());
    }
    // pwrite, then the mapping must show it.
    let data = rng.bytes(len);
    if pwrite(fd, &data, mine as i64) != Ok(len as u64) {
        die("short pwrite".into());
    }
    if load(whole + mine, len) != data {
        die("pwrite not visible through the whole-buffer mapping".into());
    }
    sys(libc::SYS_munmap, [whole, npages * PAGE, 0, 0, 0, 0]).unwrap();
    // Only our part, from its offset.
    let part = map(n * PAGE, libc::MAP_SHARED, mine);
    if load(part, len) != data {
        die("the part mapped at its offset differs".into());
    }
    if kind.serves_private() {
        // A private copy: stores stay in this process, the buffer keeps our bytes.
        let private = map(n * PAGE, libc::MAP_PRIVATE, mine);
        store(private, &rng.bytes(len));
        if pread(fd, len, mine as i64).ok().as_deref() != Some(&data[..]) {
            die("a store to a private mapping reached the buffer".into());
        }
        sys(libc::SYS_munmap, [private, n * PAGE, 0, 0, 0, 0]).unwrap();
    }
    sys(libc::SYS_munmap, [part, n * PAGE, 0, 0, 0, 0]).unwrap();
    checks.fetch_add(1, Ordering::Relaxed);
    // SAFETY: our own fd.
    unsafe { libc::close(fd) };
}
