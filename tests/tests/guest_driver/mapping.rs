//! Mapping the two devices: the pattern, read()/write() coherency, offsets, refused requests.

use super::*;

#[test]
fn pattern_on_every_page_of_both_buffers() -> Result<()> {
    let m = setup()?;
    for kind in DeviceKind::ALL {
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
    for kind in DeviceKind::ALL {
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
    for kind in DeviceKind::ALL {
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
    for kind in DeviceKind::ALL {
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
    for kind in DeviceKind::ALL {
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
    let dev = Device::open(DeviceKind::Vmalloc)?;
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
        assert_unmapped(DeviceKind::Vmalloc, &what)?;
    }
    drop(dev);
    m.unload()
}
