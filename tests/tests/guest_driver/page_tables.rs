//! The debugfs page-table view against the PFN list; copy-on-write of a private mapping.

use super::*;

/// Reads one byte of every page, so the fault device maps each of them.
fn touch_every_page(map: &Mapping) {
    for page in 0..map.len() / ps() {
        let _ = map.read(page * ps(), 1);
    }
}

#[test]
fn page_tables_agree_with_the_pfn_list() -> Result<()> {
    let m = setup()?;
    for kind in DeviceKind::ALL {
        let pfns = buffer_pfns(kind)?;
        ensure!(
            pfns.len() == NPAGES,
            "{kind:?}: {} PFNs listed, want {NPAGES}",
            pfns.len()
        );
        let mut sorted = pfns.clone();
        sorted.sort();
        sorted.dedup();
        ensure!(
            sorted.len() == NPAGES && sorted[0] != 0,
            "{kind:?}: PFN list has duplicates or 0: {pfns:x?}"
        );
        if kind == DeviceKind::Kmalloc {
            ensure!(
                pfns.iter()
                    .enumerate()
                    .all(|(i, p)| *p == pfns[0] + i as u64),
                "kmalloc: buffer is not physically contiguous: {pfns:x?}"
            );
        }
        let dev = Device::open(kind)?;
        let whole = dev.map(NPAGES, 0, MAP_SHARED)?;
        if !kind.eager() {
            // Lazy: nothing is mapped before the first touch.
            let got = page_table(kind)?;
            ensure!(
                got.len() == NPAGES && got.iter().all(|(_, pfn)| pfn.is_none()),
                "{kind:?}: untouched mapping: page table {got:x?}, want {NPAGES} empty rows"
            );
            touch_every_page(&whole);
        }
        let got = page_table(kind)?;
        let want = expected_pagetable(&[(&whole, 0)], &pfns);
        ensure!(
            got == want,
            "{kind:?}: whole shared mapping: page table {got:x?}, want {want:x?}"
        );

        let part = dev.map(5, 3, MAP_SHARED)?;
        if !kind.eager() {
            touch_every_page(&part);
        }
        let got = page_table(kind)?;
        let want = expected_pagetable(&[(&whole, 0), (&part, 3)], &pfns);
        ensure!(
            got == want,
            "{kind:?}: shared mappings from page 0 and 3: page table {got:x?}, want {want:x?}"
        );
        drop((whole, part));
        assert_unmapped(kind, "after munmap")?;
    }
    m.unload()
}

#[test]
fn kmalloc_private_mapping_is_copy_on_write() -> Result<()> {
    let m = setup()?;
    let kind = DeviceKind::Kmalloc;
    let pfns = buffer_pfns(kind)?;
    let dev = Device::open(kind)?;

    for (first, pages) in [(0, NPAGES), (3, 4)] {
        let map = dev.map(pages, first, MAP_PRIVATE)?;
        let line = maps_line_at(map.addr())?;
        ensure!(
            line.perms == "rw-p" && line.offset == pfns[first] * ps() as u64,
            "private map from page {first}: /proc/self/maps says {} offset {:#x}, want rw-p and the first PFN {:#x} * page size",
            line.perms,
            line.offset,
            pfns[first]
        );
        let got = page_table(kind)?;
        let want = expected_pagetable(&[(&map, first)], &pfns);
        ensure!(
            got == want,
            "private map from page {first}: page table {got:x?}, want {want:x?}"
        );
        ensure!(
            map.read(0, 4) == PATTERN,
            "private map from page {first}: no pattern"
        );
    }

    let map = dev.map(NPAGES, 0, MAP_PRIVATE)?;
    // Before any store, the private mapping is the buffer: write() shows through.
    dev.pwrite(b"before cow", (ps() + 8) as i64)?;
    ensure!(
        map.read(ps() + 8, 10) == b"before cow",
        "private map: write() to an untouched page not visible"
    );

    // A store copies the page: the buffer keeps its bytes, the PTE moves to a new page.
    let off = 2 * ps() + 8;
    let original = dev.pread(13, off as i64)?;
    map.write(off, b"private store");
    ensure!(
        map.read(off, 13) == b"private store",
        "private map: store not visible through the mapping itself"
    );
    let after = dev.pread(13, off as i64)?;
    ensure!(
        after == original,
        "private map: a store reached the device buffer: {after:02x?}"
    );
    let got = page_table(kind)?;
    for (i, (addr, pfn)) in got.iter().enumerate() {
        ensure!(
            *addr == map.addr() + (i * ps()) as u64,
            "private map: page table rows out of order: {got:x?}"
        );
        if i == 2 {
            ensure!(
                pfn.is_some() && *pfn != Some(pfns[2]),
                "private map: after a store, page 2 should map a private copy, page table says {pfn:x?} (buffer PFN {:#x})",
                pfns[2]
            );
        } else {
            ensure!(
                *pfn == Some(pfns[i]),
                "private map: page {i} maps {pfn:x?}, want buffer PFN {:#x}",
                pfns[i]
            );
        }
    }
    // The copied page no longer follows the buffer; the others still do.
    dev.pwrite(b"late", (2 * ps() + 100) as i64)?;
    ensure!(
        map.read(2 * ps() + 100, 4) != b"late",
        "private map: write() reached a copied page"
    );
    dev.pwrite(b"late", (3 * ps() + 100) as i64)?;
    ensure!(
        map.read(3 * ps() + 100, 4) == b"late",
        "private map: write() to an untouched page not visible"
    );
    drop(map);
    assert_unmapped(kind, "after munmap of the private map")?;
    drop(dev);
    m.unload()
}
