//! The lazy device (`/dev/mmtrace-fault`): pages inserted one by one on the first touch,
//! copy-on-write of a private mapping, and the root-only page-table walk of any range.

use super::*;

/// The rows of `<kind>_pagetable` that hold a PFN, as (page index in the mapping, PFN).
fn present(kind: DeviceKind, map: &Mapping) -> Result<Vec<(usize, u64)>> {
    Ok(page_table(kind)?
        .into_iter()
        .filter(|(a, _)| *a >= map.addr() && *a < map.addr() + map.len() as u64)
        .filter_map(|(a, pfn)| Some((((a - map.addr()) as usize) / ps(), pfn?)))
        .collect())
}

#[test]
fn fault_device_maps_each_page_on_first_touch() -> Result<()> {
    let m = setup()?;
    let kind = DeviceKind::Fault;
    let pfns = buffer_pfns(kind)?;
    let dev = Device::open(kind)?;
    let map = dev.map(NPAGES, 0, MAP_SHARED)?;
    let (vmas, _) = driver_vmas()?;
    let vma = vmas
        .iter()
        .find(|v| v.start == map.addr())
        .context("the mapping is not in /proc/mmtrace_vmas")?;
    ensure!(
        vma.flags & kind.vm_flags() == kind.vm_flags() && vma.flags & vm::PFNMAP == 0,
        "fault device VMA flags {:#x}: want MIXEDMAP|DONTEXPAND|DONTDUMP and no PFNMAP",
        vma.flags
    );
    ensure!(
        present(kind, &map)?.is_empty() && faults(kind)? == 0,
        "before any touch: page table {:x?}, {} faults",
        present(kind, &map)?,
        faults(kind)?
    );
    let mut touched: Vec<usize> = Vec::new();
    for page in [5, 0, NPAGES - 1, 3] {
        ensure!(
            map.read(page * ps(), 4) == PATTERN,
            "page {page}: no pattern after the fault"
        );
        touched.push(page);
        let mut want: Vec<(usize, u64)> = touched.iter().map(|p| (*p, pfns[*p])).collect();
        want.sort();
        let got = present(kind, &map)?;
        ensure!(
            got == want,
            "after touching pages {touched:?}: page table {got:x?}, want {want:x?}"
        );
        ensure!(
            faults(kind)? == touched.len() as i64,
            "after touching {} pages the driver counts {} inserted",
            touched.len(),
            faults(kind)?
        );
        // A VM_MIXEDMAP page is a normal page: pagemap sees it too (not so for PFNMAP).
        let addr = map.addr() + (page * ps()) as u64;
        ensure!(
            pagemap_pfn(addr)? == Some(pfns[page]),
            "page {page}: pagemap says {:x?}, want {:#x}",
            pagemap_pfn(addr)?,
            pfns[page]
        );
    }
    // A second touch faults nothing; a store to an untouched page inserts it.
    let _ = map.read(5 * ps() + 1, 1);
    map.write(7 * ps() + 16, b"store first");
    ensure!(
        faults(kind)? == touched.len() as i64 + 1,
        "re-read plus one store to a new page: {} inserted, want {}",
        faults(kind)?,
        touched.len() + 1
    );
    ensure!(
        dev.pread(11, (7 * ps() + 16) as i64)? == b"store first",
        "a store that faulted the page in is not visible to read()"
    );
    drop(map);
    assert_unmapped(kind, "after munmap")?;
    drop(dev);
    m.unload()
}

#[test]
fn fault_private_mapping_is_copy_on_write() -> Result<()> {
    let m = setup()?;
    let kind = DeviceKind::Fault;
    let pfns = buffer_pfns(kind)?;
    let dev = Device::open(kind)?;
    let map = dev.map(4, 2, MAP_PRIVATE)?;
    let line = maps_line_at(map.addr())?;
    ensure!(
        line.perms == "rw-p" && line.offset == (2 * ps()) as u64,
        "private fault map: /proc/self/maps says {} offset {:#x}, want rw-p at the file offset (vm_insert_page leaves vm_pgoff alone)",
        line.perms,
        line.offset
    );
    // Read first: the buffer page itself, read-only; write() shows through it.
    ensure!(map.read(0, 4) == PATTERN, "private fault map: no pattern");
    dev.pwrite(b"shows through", (2 * ps() + 8) as i64)?;
    ensure!(
        map.read(8, 13) == b"shows through",
        "private fault map: write() to a read-faulted page not visible"
    );
    ensure!(
        present(kind, &map)? == [(0, pfns[2])],
        "after one read: page table {:x?}, want page 0 -> {:#x}",
        present(kind, &map)?,
        pfns[2]
    );
    // A store to that page copies it; a store to an untouched page faults it in and
    // copies it at once. Neither reaches the buffer.
    let before = dev.pread(4 * ps(), (2 * ps()) as i64)?;
    map.write(100, b"copy of a mapped page");
    map.write(ps() + 100, b"copy of an untouched page");
    ensure!(
        map.read(ps() + 100, 25) == b"copy of an untouched page",
        "private fault map: the store is not visible through the mapping"
    );
    ensure!(
        dev.pread(4 * ps(), (2 * ps()) as i64)? == before,
        "private fault map: a store reached the device buffer"
    );
    let got = present(kind, &map)?;
    ensure!(
        got.len() == 2
            && got
                .iter()
                .all(|(i, pfn)| *i < 2 && *pfn != pfns[2 + i] && !pfns.contains(pfn)),
        "after stores to pages 0 and 1: page table {got:x?}, want private copies (buffer PFNs {:x?})",
        &pfns[2..4]
    );
    ensure!(
        faults(kind)? == 2,
        "private fault map: {} pages inserted, want 2 (one read fault, one write fault)",
        faults(kind)?
    );
    drop(map);
    assert_unmapped(kind, "after munmap of the private map")?;
    drop(dev);
    m.unload()
}

#[test]
fn range_walk_reads_any_mapping_of_the_caller() -> Result<()> {
    let m = setup()?;
    let rows = |map: &Mapping| range_page_table(map.addr(), map.addr() + map.len() as u64);
    // Our own devices: the same rows as their per-device files.
    let mut maps = Vec::new();
    for kind in DeviceKind::ALL {
        let dev = Device::open(kind)?;
        let map = dev.map(4, 1, MAP_SHARED)?;
        let _ = map.read(2 * ps(), 1);
        let got = rows(&map)?;
        let want = page_table(kind)?;
        ensure!(
            got == want,
            "{kind:?}: range walk {got:x?}, per-device file {want:x?}"
        );
        // The touched page (the mapping's third, buffer page 3) holds its buffer PFN.
        let pfn = buffer_pfns(kind)?[3];
        ensure!(
            got.get(2).and_then(|(_, p)| *p) == Some(pfn),
            "{kind:?}: touched page: range walk {got:x?}, want PFN {pfn:#x} in row 2"
        );
        maps.push((dev, map));
    }
    // An anonymous mapping nobody's driver made: the same PFNs as pagemap; a page not
    // yet touched is not present.
    // SAFETY: a fresh anonymous mapping, accessed only through `anon`.
    let anon = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            4 * ps(),
            PROT_READ | PROT_WRITE,
            MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    ensure!(anon != libc::MAP_FAILED, "anonymous mmap failed");
    let anon = anon as u64;
    for page in [0u64, 2] {
        // SAFETY: inside the anonymous mapping.
        unsafe { std::ptr::write_volatile((anon + page * ps() as u64) as *mut u8, 1) };
    }
    let got = range_page_table(anon, anon + 4 * ps() as u64);
    let mut want = Vec::new();
    for page in 0..4u64 {
        let addr = anon + page * ps() as u64;
        want.push((addr, pagemap_pfn(addr)?));
    }
    // SAFETY: unmapping our own anonymous mapping.
    unsafe { libc::munmap(anon as *mut libc::c_void, 4 * ps()) };
    let got = got?;
    ensure!(
        got == want && got[0].1.is_some() && got[1].1.is_none() && got[2].1.is_some(),
        "anonymous mapping: range walk {got:x?}, pagemap {want:x?}"
    );
    // Where no VMA is (the pages we just unmapped): every row empty.
    let hole = range_page_table(anon, anon + 4 * ps() as u64)?;
    ensure!(
        hole.len() == 4 && hole.iter().all(|(_, p)| p.is_none()),
        "unmapped range: {hole:x?}"
    );
    // Bad requests, straight to the file: end before start, and too many pages.
    for (request, want) in [
        ("2000 1000", EINVAL),
        ("0 100000000", libc::E2BIG),
        ("not hex", EINVAL),
    ] {
        use std::io::Write as _;
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(RANGE_PAGETABLE)?;
        let e = f
            .write(request.as_bytes())
            .err()
            .with_context(|| format!("range {request:?} was accepted"))?;
        ensure!(
            errno_of(&e) == want,
            "range {request:?}: {e}, want errno {want}"
        );
    }
    drop(maps);
    m.unload()
}
