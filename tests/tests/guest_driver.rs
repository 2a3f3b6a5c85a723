//! Guest tests of the `mmtrace_drv` module (driver/). They load a kernel module, so they
//! run as root in the Debian guest: all of them with `cargo xtask test`, one with
//! `cargo xtask vm -- /mmtrace/bin/guest_driver --test-threads=1 --exact <name>`.
//! Each test loads the module itself and unloads it at the end, which also checks that
//! the kernel logged no warning, error or splat in between.

use std::ffi::CString;

use anyhow::{Context as _, Result, bail, ensure};
use libc::{
    EINVAL, ENOMEM, ENOSPC, ENXIO, EOVERFLOW, MAP_PRIVATE, MAP_SHARED, PROT_READ, PROT_WRITE,
};
use mmap_trace_tests::driver::{
    Device, DriverVma, KPF_RESERVED, Kind, Mapping, MapsLine, Module, PATTERN, buffer_pfns,
    counter, delete_module, device_maps_lines, errno_of, finit_module, is_loaded,
    kpageflags, live_maps, maps_line_at, module_refcnt, page_size, pagetable, parse_driver_vmas,
    parse_maps, require_guest,
};

const NPAGES: usize = 16;

// vm_flags bits (include/linux/mm.h), for reading /proc/mmtrace_vmas.
const VM_READ: u64 = 0x1;
const VM_WRITE: u64 = 0x2;
const VM_EXEC: u64 = 0x4;
const VM_MAYSHARE: u64 = 0x80;
const VM_PFNMAP: u64 = 0x400;
const VM_IO: u64 = 0x4000;
const VM_DONTEXPAND: u64 = 0x40000;
const VM_DONTDUMP: u64 = 0x400_0000;

fn ps() -> usize {
    page_size()
}

fn setup() -> Result<Module> {
    require_guest();
    Module::load(NPAGES)
}

/// What `<dev>_pagetable` must say for these mappings of these buffer pages.
fn expected_pagetable(maps: &[(&Mapping, usize)], pfns: &[u64]) -> Vec<(u64, Option<u64>)> {
    let mut want: Vec<(u64, Option<u64>)> = maps
        .iter()
        .flat_map(|(m, first_page)| {
            (0..m.len() / ps())
                .map(move |i| (m.addr() + (i * ps()) as u64, Some(pfns[first_page + i])))
        })
        .collect();
    want.sort();
    want
}

fn assert_unmapped(kind: Kind, what: &str) -> Result<()> {
    let lines = device_maps_lines()?;
    ensure!(
        lines.is_empty(),
        "{kind:?}, {what}: /proc/self/maps still maps the device: {lines:?}"
    );
    let pt = pagetable(kind)?;
    ensure!(
        pt.is_empty(),
        "{kind:?}, {what}: {}_pagetable is not empty: {pt:x?}",
        kind.name()
    );
    let live = live_maps(kind)?;
    ensure!(
        live == 0,
        "{kind:?}, {what}: {} live mappings counted, want 0",
        live
    );
    Ok(())
}

#[test]
fn pattern_on_every_page_of_both_buffers() -> Result<()> {
    let m = setup()?;
    for kind in Kind::ALL {
        let dev = Device::open(kind)?;
        let map = dev.map(NPAGES, 0, MAP_SHARED)?;
        let buf = dev.pread(m.size(), 0)?;
        ensure!(
            buf.len() == m.size(),
            "{kind:?}: read() of the whole buffer returned {} bytes, want {}",
            buf.len(),
            m.size()
        );
        for page in 0..NPAGES {
            let got = map.read(page * ps(), PATTERN.len());
            ensure!(
                got == PATTERN,
                "{kind:?}: mapped page {page} starts with {got:02x?}, want {PATTERN:02x?}"
            );
            let got = &buf[page * ps()..][..PATTERN.len()];
            ensure!(
                got == PATTERN,
                "{kind:?}: read() page {page} starts with {got:02x?}, want {PATTERN:02x?}"
            );
        }
    }
    m.unload()
}

#[test]
fn write_shows_in_mapping_and_store_shows_in_read() -> Result<()> {
    let m = setup()?;
    for kind in Kind::ALL {
        let dev = Device::open(kind)?;
        let map = dev.map(NPAGES, 0, MAP_SHARED)?;

        let msg = b"written by pwrite";
        let off = 3 * ps() + 100;
        ensure!(
            dev.pwrite(msg, off as i64)? == msg.len(),
            "{kind:?}: short pwrite"
        );
        let got = map.read(off, msg.len());
        ensure!(
            got == msg,
            "{kind:?}: pwrite at {off:#x} not visible in the mapping: {got:02x?}"
        );

        // Across a page boundary: two different physical pages on the vmalloc path.
        let msg = b"straddles";
        let off = 5 * ps() - 4;
        ensure!(
            dev.pwrite(msg, off as i64)? == msg.len(),
            "{kind:?}: short pwrite"
        );
        let got = map.read(off, msg.len());
        ensure!(
            got == msg,
            "{kind:?}: pwrite across pages 4/5 not visible in the mapping: {got:02x?}"
        );

        let msg = b"stored through the mapping";
        let off = 7 * ps() + 10;
        map.write(off, msg);
        let got = dev.pread(msg.len(), off as i64)?;
        ensure!(
            got == msg,
            "{kind:?}: store at {off:#x} through the mapping not visible to read(): {got:02x?}"
        );
    }
    m.unload()
}

#[test]
fn read_write_stay_inside_the_buffer() -> Result<()> {
    let m = setup()?;
    let size = m.size() as i64;
    for kind in Kind::ALL {
        let dev = Device::open(kind)?;
        ensure!(
            dev.seek_end()? == size,
            "{kind:?}: SEEK_END is not the buffer size {size}"
        );
        ensure!(
            dev.pread(100, size)?.is_empty(),
            "{kind:?}: read at the end returned data"
        );
        ensure!(
            dev.pread(100, size - 10)?.len() == 10,
            "{kind:?}: read straddling the end not clamped to 10 bytes"
        );
        ensure!(
            dev.pread(10, i64::MAX - 10)?.is_empty(),
            "{kind:?}: read at 2^63-11 returned data"
        );
        let e = dev
            .pread(10, -4096)
            .err()
            .context("read at a negative offset succeeded")?;
        ensure!(
            errno_of(&e) == EINVAL,
            "{kind:?}: read at a negative offset: {e}, want EINVAL"
        );

        let e = dev
            .pwrite(b"12345678", size)
            .err()
            .context("write at the end succeeded")?;
        ensure!(
            errno_of(&e) == ENOSPC,
            "{kind:?}: write at the end: {e}, want ENOSPC"
        );
        let e = dev
            .pwrite(b"12345678", i64::MAX - 8)
            .err()
            .context("write at 2^63-9 succeeded")?;
        ensure!(
            errno_of(&e) == ENOSPC,
            "{kind:?}: write at 2^63-9: {e}, want ENOSPC"
        );
        let n = dev.pwrite(b"12345678", size - 4)?;
        ensure!(
            n == 4,
            "{kind:?}: write straddling the end stored {n} bytes, want 4"
        );
        ensure!(
            dev.pread(4, size - 4)? == b"1234",
            "{kind:?}: the clamped write stored the wrong bytes"
        );
    }
    m.unload()
}

#[test]
fn mapping_from_a_page_offset() -> Result<()> {
    let m = setup()?;
    for kind in Kind::ALL {
        let dev = Device::open(kind)?;
        for page in 0..NPAGES {
            dev.pwrite(
                format!("page{page:03}").as_bytes(),
                (page * ps() + 4) as i64,
            )?;
        }
        for (first, pages) in [(5, 4), (NPAGES - 1, 1), (1, NPAGES - 1)] {
            let map = dev.map(pages, first, MAP_SHARED)?;
            for i in 0..pages {
                let want = format!("page{:03}", first + i);
                let got = map.read(i * ps(), 4 + want.len());
                ensure!(
                    got[..4] == PATTERN && got[4..] == *want.as_bytes(),
                    "{kind:?}: mapping of {pages} pages from page {first}: its page {i} holds {:?}, want buffer page {}",
                    String::from_utf8_lossy(&got[4..]),
                    first + i
                );
            }
            let line = maps_line_at(map.addr())?;
            ensure!(
                line.offset == (first * ps()) as u64,
                "{kind:?}: /proc/self/maps offset {:#x} for a mapping from page {first}",
                line.offset
            );
        }
    }
    m.unload()
}

#[test]
fn bad_requests_are_refused_and_map_nothing() -> Result<()> {
    let m = setup()?;
    let ps = ps();
    let top = (u64::MAX & !(ps as u64 - 1)) as i64;
    // (what, length, byte offset, errno). Length 0, an unaligned offset, and offset +
    // length overflowing are refused by the kernel before the driver is called.
    let cases: [(&str, usize, i64, i32); 8] = [
        (
            "one page longer than the buffer",
            (NPAGES + 1) * ps,
            0,
            EINVAL,
        ),
        (
            "two pages from the last page",
            2 * ps,
            ((NPAGES - 1) * ps) as i64,
            EINVAL,
        ),
        (
            "offset at the end of the buffer",
            ps,
            (NPAGES * ps) as i64,
            ENXIO,
        ),
        ("offset far past the end", ps, 1 << 40, ENXIO),
        ("offset + length overflows", 2 * ps, top, EOVERFLOW),
        ("length 0", 0, 0, EINVAL),
        ("unaligned offset", ps, 1, EINVAL),
        (
            "length rounding up past the address space",
            usize::MAX,
            0,
            ENOMEM,
        ),
    ];
    for kind in Kind::ALL {
        let dev = Device::open(kind)?;
        for (what, len, offset, want) in cases {
            let before = device_maps_lines()?;
            match dev.map_raw(len, PROT_READ | PROT_WRITE, MAP_SHARED, offset) {
                Ok(map) => bail!(
                    "{kind:?}: {what} (len {len:#x}, offset {offset:#x}) was mapped at {:#x}",
                    map.addr()
                ),
                Err(e) => ensure!(
                    errno_of(&e) == want,
                    "{kind:?}: {what} (len {len:#x}, offset {offset:#x}) refused with {e}, want errno {want}"
                ),
            }
            ensure!(
                before.is_empty(),
                "{kind:?}: device mapped before {what}: {before:?}"
            );
            assert_unmapped(kind, what)?;
        }
    }
    m.unload()
}

#[test]
fn vmalloc_refuses_private_mappings() -> Result<()> {
    let m = setup()?;
    let dev = Device::open(Kind::Vmalloc)?;
    for (pages, first, prot) in [
        (1, 0, PROT_READ),
        (1, 3, PROT_READ | PROT_WRITE),
        (NPAGES, 0, PROT_READ | PROT_WRITE),
    ] {
        let what = format!("MAP_PRIVATE of {pages} pages from page {first}, prot {prot}");
        match dev.map_raw(pages * ps(), prot, MAP_PRIVATE, (first * ps()) as i64) {
            Ok(map) => bail!("vmalloc: {what} was mapped at {:#x}", map.addr()),
            Err(e) => ensure!(
                errno_of(&e) == EINVAL,
                "vmalloc: {what} refused with {e}, want EINVAL"
            ),
        }
        assert_unmapped(Kind::Vmalloc, &what)?;
    }
    drop(dev);
    m.unload()
}

#[test]
fn npages_bounds_are_enforced_at_load() -> Result<()> {
    require_guest();
    let mut m = Module::lock()?;
    for bad in ["npages=0", "npages=1025", "npages=4294967295"] {
        let e = finit_module(bad)
            .err()
            .with_context(|| format!("insmod with {bad} succeeded"))?;
        ensure!(
            errno_of(&e) == EINVAL,
            "insmod with {bad}: {e}, want EINVAL"
        );
        ensure!(
            !is_loaded(),
            "insmod with {bad} failed but the module is loaded"
        );
    }
    let log = m.new_log()?;
    for bad in [
        "npages=0 refused",
        "npages=1025 refused",
        "npages=4294967295 refused",
    ] {
        ensure!(
            log.iter().any(|r| r.level == 3 && r.text.contains(bad)),
            "no pr_err {bad:?} in the kernel log: {log:?}"
        );
    }
    mmap_trace_tests::driver::assert_log_clean(&log, &["refused: must be 1..1024"])?;
    drop(m);

    for good in [1, 1024] {
        let m = Module::load(good)?;
        let pfns = buffer_pfns(Kind::Kmalloc)?;
        ensure!(
            pfns.len() == good,
            "npages={good}: kmalloc_pfns has {} lines",
            pfns.len()
        );
        ensure!(
            counter("npages")? == good as i64,
            "npages={good}: counters disagree"
        );
        ensure!(
            counter("reserved_pages")? == 2 * good as i64,
            "npages={good}: {} reserved pages, want {}",
            counter("reserved_pages")?,
            2 * good
        );
        let dev = Device::open(Kind::Vmalloc)?;
        let map = dev.map(good, 0, MAP_SHARED)?;
        ensure!(
            map.read((good - 1) * ps(), 4) == PATTERN,
            "npages={good}: last vmalloc page lacks the pattern"
        );
        drop(map);
        drop(dev);
        m.unload()?;
    }
    Ok(())
}

/// Reads /proc/mmtrace_vmas between two reads of /proc/self/maps, until both maps reads
/// agree (so nothing moved in between).
fn consistent_listings() -> Result<(Vec<DriverVma>, u64, Vec<MapsLine>)> {
    let read = |p: &str| std::fs::read_to_string(p).with_context(|| format!("reading {p}"));
    for _ in 0..5 {
        let maps1 = read("/proc/self/maps")?;
        let vmas = read(mmap_trace_tests::driver::PROC_VMAS)?;
        let maps2 = read("/proc/self/maps")?;
        if maps1 == maps2 {
            let (vmas, total) = parse_driver_vmas(&vmas)?;
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
    let kdev = Device::open(Kind::Kmalloc)?;
    let vdev = Device::open(Kind::Vmalloc)?;
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
        let perms: String = [
            if v.flags & VM_READ != 0 { 'r' } else { '-' },
            if v.flags & VM_WRITE != 0 { 'w' } else { '-' },
            if v.flags & VM_EXEC != 0 { 'x' } else { '-' },
            if v.flags & VM_MAYSHARE != 0 { 's' } else { 'p' },
        ]
        .into_iter()
        .collect();
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
        if v.path
            .as_deref()
            .is_some_and(|p| p.starts_with("/dev/mmtrace-"))
        {
            let want = VM_IO | VM_PFNMAP | VM_DONTEXPAND | VM_DONTDUMP;
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

#[test]
fn page_tables_agree_with_the_pfn_list() -> Result<()> {
    let m = setup()?;
    for kind in Kind::ALL {
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
        if kind == Kind::Kmalloc {
            ensure!(
                pfns.iter()
                    .enumerate()
                    .all(|(i, p)| *p == pfns[0] + i as u64),
                "kmalloc: buffer is not physically contiguous: {pfns:x?}"
            );
        }
        let dev = Device::open(kind)?;
        let whole = dev.map(NPAGES, 0, MAP_SHARED)?;
        let got = pagetable(kind)?;
        let want = expected_pagetable(&[(&whole, 0)], &pfns);
        ensure!(
            got == want,
            "{kind:?}: whole shared mapping: page table {got:x?}, want {want:x?}"
        );

        let part = dev.map(5, 3, MAP_SHARED)?;
        let got = pagetable(kind)?;
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
    let kind = Kind::Kmalloc;
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
        let got = pagetable(kind)?;
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
    let got = pagetable(kind)?;
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

#[test]
fn live_mapping_counter_follows_vmas() -> Result<()> {
    let m = setup()?;
    ensure!(
        counter("reserved_pages")? == 2 * NPAGES as i64,
        "reserved_pages is not 2 * npages"
    );
    for kind in Kind::ALL {
        let dev = Device::open(kind)?;
        ensure!(
            live_maps(kind)? == 0,
            "{kind:?}: live mappings before any mmap"
        );
        let map = dev.map(4, 0, MAP_SHARED)?;
        ensure!(
            live_maps(kind)? == 1,
            "{kind:?}: one mapping, counter says {}",
            live_maps(kind)?
        );
        // Punch out page 1: the VMA splits in two (open on the split-off part, close on
        // the removed one).
        // SAFETY: inside our own mapping; the Mapping's final munmap covers the hole.
        ensure!(
            unsafe { libc::munmap(map.as_ptr().add(ps()).cast(), ps()) } == 0,
            "partial munmap failed"
        );
        ensure!(
            live_maps(kind)? == 2,
            "{kind:?}: after splitting, counter says {}",
            live_maps(kind)?
        );
        let got = pagetable(kind)?;
        ensure!(
            got.len() == 3,
            "{kind:?}: 3 pages left mapped, page table lists {got:x?}"
        );
        drop(map);
        ensure!(
            live_maps(kind)? == 0,
            "{kind:?}: after munmap, counter says {}",
            live_maps(kind)?
        );
    }
    m.unload()
}

/// A pipe; both ends close-on-exec.
fn pipe() -> Result<(i32, i32)> {
    let mut fds = [0; 2];
    // SAFETY: fds has room for two descriptors.
    ensure!(
        unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } == 0,
        "pipe2 failed"
    );
    Ok((fds[0], fds[1]))
}

fn wait_byte(fd: i32, who: &str) -> Result<()> {
    let mut b = 0u8;
    // SAFETY: reads one byte into b.
    let n = unsafe { libc::read(fd, (&raw mut b).cast(), 1) };
    ensure!(n == 1, "{who} did not signal (it died?)");
    Ok(())
}

fn send_byte(fd: i32) {
    // SAFETY: writes one byte.
    unsafe { libc::write(fd, b"1".as_ptr().cast(), 1) };
}

/// Waits for the child and returns its exit status (or fails if it was killed).
fn reap(pid: i32) -> Result<i32> {
    let mut status = 0;
    // SAFETY: waits for our own child.
    ensure!(
        unsafe { libc::waitpid(pid, &mut status, 0) } == pid,
        "waitpid failed"
    );
    ensure!(libc::WIFEXITED(status), "child killed (status {status:#x})");
    Ok(libc::WEXITSTATUS(status))
}

/// Forks; the child runs `body` (which must not allocate: the parent is threaded) and
/// exits with its return value.
fn fork_child(body: impl FnOnce() -> i32) -> Result<i32> {
    // SAFETY: the child only makes raw syscalls and leaves with _exit.
    let pid = unsafe { libc::fork() };
    ensure!(pid >= 0, "fork failed");
    if pid == 0 {
        let code = body();
        // SAFETY: leaves the child without running the parent's destructors.
        unsafe { libc::_exit(code) };
    }
    Ok(pid)
}

/// In the child: open and map the whole device shared. Null on failure.
fn child_map(path: &CString, len: usize) -> *mut u8 {
    // SAFETY: raw syscalls on a NUL-terminated path.
    unsafe {
        let fd = libc::open(path.as_ptr(), libc::O_RDWR);
        if fd < 0 {
            return std::ptr::null_mut();
        }
        let p = libc::mmap(
            std::ptr::null_mut(),
            len,
            PROT_READ | PROT_WRITE,
            MAP_SHARED,
            fd,
            0,
        );
        // The mapping keeps the file (and so the module) alive without the fd.
        libc::close(fd);
        if p == libc::MAP_FAILED {
            std::ptr::null_mut()
        } else {
            p.cast()
        }
    }
}

#[test]
fn two_processes_see_each_others_writes() -> Result<()> {
    let m = setup()?;
    let len = m.size();
    for kind in Kind::ALL {
        let dev = Device::open(kind)?;
        let map = dev.map(NPAGES, 0, MAP_SHARED)?;
        let path = CString::new(kind.dev_path())?;
        let (to_child_r, to_child_w) = pipe()?;
        let (to_parent_r, to_parent_w) = pipe()?;
        let (child_off, parent_off) = (9 * ps() + 16, 4 * ps() + 16);
        let pid = fork_child(|| {
            // SAFETY: raw syscalls and accesses inside the child's own mapping.
            unsafe {
                libc::close(to_child_w);
                libc::close(to_parent_r);
                let p = child_map(&path, len);
                if p.is_null() {
                    return 2;
                }
                for (i, b) in b"child".iter().enumerate() {
                    p.add(child_off + i).write_volatile(*b);
                }
                send_byte(to_parent_w);
                let mut b = 0u8;
                if libc::read(to_child_r, (&raw mut b).cast(), 1) != 1 {
                    return 3;
                }
                let seen = (0..6).all(|i| p.add(parent_off + i).read_volatile() == b"parent"[i]);
                if seen { 0 } else { 4 }
            }
        })?;
        // SAFETY: closing the child's ends in the parent.
        unsafe {
            libc::close(to_child_r);
            libc::close(to_parent_w);
        }
        let result = (|| -> Result<()> {
            wait_byte(to_parent_r, "the child")?;
            let got = map.read(child_off, 5);
            ensure!(
                got == b"child",
                "{kind:?}: the child's store is not visible in the parent's mapping: {got:02x?}"
            );
            // Ours, the copy the child inherited at fork, and the child's own.
            let live = live_maps(kind)?;
            ensure!(
                live == 3,
                "{kind:?}: {live} live mappings with the child running, want 3"
            );
            map.write(parent_off, b"parent");
            Ok(())
        })();
        send_byte(to_child_w);
        // SAFETY: closing our ends.
        unsafe {
            libc::close(to_child_w);
            libc::close(to_parent_r);
        }
        let code = reap(pid)?;
        result?;
        ensure!(
            code == 0,
            "{kind:?}: child exited {code} (2: mmap failed, 3: parent vanished, 4: parent's store not visible in the child)"
        );
        ensure!(
            live_maps(kind)? == 1,
            "{kind:?}: child exited but its mappings are still counted"
        );
    }
    m.unload()
}

#[test]
fn rmmod_is_refused_while_a_process_holds_a_mapping() -> Result<()> {
    let m = setup()?;
    let len = m.size();
    ensure!(module_refcnt()? == 0, "module in use before the test");
    let paths = [
        CString::new(Kind::Kmalloc.dev_path())?,
        CString::new(Kind::Vmalloc.dev_path())?,
    ];
    let (to_child_r, to_child_w) = pipe()?;
    let (to_parent_r, to_parent_w) = pipe()?;
    let pid = fork_child(|| {
        // SAFETY: raw syscalls only.
        unsafe {
            libc::close(to_child_w);
            libc::close(to_parent_r);
            if paths.iter().any(|p| child_map(p, len).is_null()) {
                return 2;
            }
            send_byte(to_parent_w);
            let mut b = 0u8;
            libc::read(to_child_r, (&raw mut b).cast(), 1);
            // Exit with the mappings in place: exit_mmap must release them.
            0
        }
    })?;
    // SAFETY: closing the child's ends in the parent.
    unsafe {
        libc::close(to_child_r);
        libc::close(to_parent_w);
    }
    let result = (|| -> Result<()> {
        wait_byte(to_parent_r, "the child")?;
        let refcnt = module_refcnt()?;
        ensure!(
            refcnt == 2,
            "child holds one mapping per device and no fd, module refcnt is {refcnt}, want 2"
        );
        let e = delete_module()
            .err()
            .context("rmmod succeeded while a process maps the device")?;
        ensure!(
            errno_of(&e) == libc::EWOULDBLOCK,
            "rmmod while mapped failed with {e}, want EWOULDBLOCK (module in use)"
        );
        ensure!(is_loaded(), "module gone after a refused rmmod");
        Ok(())
    })();
    send_byte(to_child_w);
    // SAFETY: closing our ends.
    unsafe {
        libc::close(to_child_w);
        libc::close(to_parent_r);
    }
    let code = reap(pid)?;
    result?;
    ensure!(code == 0, "child exited {code} (2: open or mmap failed)");
    ensure!(
        module_refcnt()? == 0,
        "child exited, module refcnt still {}",
        module_refcnt()?
    );
    for kind in Kind::ALL {
        ensure!(
            live_maps(kind)? == 0,
            "{kind:?}: child exited, mappings still counted"
        );
    }
    m.unload()
}

#[test]
fn rmmod_clears_the_reserved_bits() -> Result<()> {
    let m = setup()?;
    let mut pfns = Vec::new();
    for kind in Kind::ALL {
        for pfn in buffer_pfns(kind)? {
            let flags = kpageflags(pfn)?;
            ensure!(
                flags & KPF_RESERVED != 0,
                "{kind:?}: buffer PFN {pfn:#x} is not PG_reserved while loaded (kpageflags {flags:#x})"
            );
            pfns.push((kind, pfn));
        }
    }
    m.unload()?;
    for (kind, pfn) in pfns {
        let flags = kpageflags(pfn)?;
        ensure!(
            flags & KPF_RESERVED == 0,
            "{kind:?}: PFN {pfn:#x} still PG_reserved after rmmod (kpageflags {flags:#x})"
        );
    }
    Ok(())
}
