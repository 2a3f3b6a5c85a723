//! /proc/mmtrace_vmas, the driver's VMA walk, against /proc/self/maps.

use super::*;

/// Reads /proc/mmtrace_vmas between two reads of /proc/self/maps, until both maps reads
/// agree (so nothing moved in between).
fn consistent_listings() -> Result<(Vec<DriverVma>, u64, Vec<MapsLine>)> {
    let read = |p: &str| std::fs::read_to_string(p).with_context(|| format!("reading {p}"));
    for _ in 0..5 {
        let maps1 = read("/proc/self/maps")?;
        let vmas = read(mmap_trace_tests::driver::PROC_VMAS)?;
        let maps2 = read("/proc/self/maps")?;
        if maps1 == maps2 {
            let (vmas, total) = parse_vmas(&vmas)?;
            return Ok((vmas, total, parse_maps(&maps1)?));
        }
    }
    bail!("/proc/self/maps kept changing while reading /proc/mmtrace_vmas")
}

#[test]
fn procfs_total_tracks_a_10_mib_anonymous_mapping() -> Result<()> {
    let m = setup()?;
    const LEN: usize = 10 << 20;
    let mut last = String::new();
    for _ in 0..5 {
        let (_, before, _) = consistent_listings()?;
        // SAFETY: a fresh anonymous mapping, unmapped below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                LEN,
                PROT_READ | PROT_WRITE,
                MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        ensure!(p != libc::MAP_FAILED, "anonymous mmap of 10 MiB failed");
        let (vmas, during, _) = consistent_listings()?;
        // SAFETY: the mapping made above.
        unsafe { libc::munmap(p, LEN) };
        let (_, after, _) = consistent_listings()?;
        let addr = p as u64;
        ensure!(
            vmas.iter()
                .any(|v| v.start <= addr && addr + LEN as u64 <= v.end && v.path.is_none()),
            "no anonymous VMA in /proc/mmtrace_vmas covers the new mapping at {addr:#x}"
        );
        if before == after {
            ensure!(
                during == before + LEN as u64,
                "/proc/mmtrace_vmas total went {before} -> {during} with a 10 MiB mapping, want +{LEN}"
            );
            return m.unload();
        }
        // Something else (the heap) moved between the reads: measure again.
        last = format!("before {before}, during {during}, after {after}");
    }
    bail!("/proc/mmtrace_vmas total never settled: {last}")
}

#[test]
fn procfs_listing_matches_proc_self_maps() -> Result<()> {
    let m = setup()?;
    let kdev = Device::open(DeviceKind::Kmalloc)?;
    let vdev = Device::open(DeviceKind::Vmalloc)?;
    let _shared = kdev.map(4, 2, MAP_SHARED)?;
    let _private = kdev.map(NPAGES, 0, MAP_PRIVATE)?;
    let _vshared = vdev.map(3, 1, MAP_SHARED)?;

    let (vmas, total, maps) = consistent_listings()?;
    // The gate VMA ([vsyscall]) is not in the process's maple tree; /proc/self/maps
    // adds it, and get_gate_vma() is not exported to modules.
    let maps: Vec<MapsLine> = maps
        .into_iter()
        .filter(|l| l.name.as_deref() != Some("[vsyscall]"))
        .collect();
    ensure!(
        vmas.len() == maps.len(),
        "/proc/mmtrace_vmas has {} VMAs, /proc/self/maps {}:\n{vmas:#x?}\n{maps:#x?}",
        vmas.len(),
        maps.len()
    );
    for (v, l) in vmas.iter().zip(&maps) {
        let perms = vm::perms(v.flags);
        let offset = if v.path.is_some() {
            v.pgoff * ps() as u64
        } else {
            0
        };
        let name_ok = match &v.path {
            Some(p) => l.name.as_deref() == Some(p.as_str()),
            None => l.name.as_deref().is_none_or(|n| n.starts_with('[')),
        };
        ensure!(
            (v.start, v.end, perms.as_str(), offset)
                == (l.start, l.end, l.perms.as_str(), l.offset)
                && name_ok,
            "/proc/mmtrace_vmas line {v:x?} (perms {perms}, offset {offset:#x}) disagrees with /proc/self/maps {l:x?}"
        );
        if v.path.as_deref().is_some_and(|p| p.starts_with(DEV_PREFIX)) {
            let want = vm::REMAP_PFN_RANGE;
            ensure!(
                v.flags & want == want,
                "device VMA {v:x?} lacks VM_IO|VM_PFNMAP|VM_DONTEXPAND|VM_DONTDUMP"
            );
        }
    }
    let sum: u64 = vmas.iter().map(|v| v.end - v.start).sum();
    ensure!(
        total == sum,
        "/proc/mmtrace_vmas total {total} is not the sum of its VMAs {sum}"
    );
    drop((_shared, _private, _vshared, kdev, vdev));
    m.unload()
}
