//! Several processes and the live-mapping counter (vm_ops open/close).

use super::*;

#[test]
fn live_mapping_counter_follows_vmas() -> Result<()> {
    let m = setup()?;
    ensure!(
        counter("reserved_pages")? == (DeviceKind::ALL.len() * NPAGES) as i64,
        "reserved_pages is not npages per device"
    );
    for kind in DeviceKind::ALL {
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
        let got = page_table(kind)?;
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

#[test]
fn two_processes_see_each_others_writes() -> Result<()> {
    let m = setup()?;
    let len = m.size();
    for kind in DeviceKind::ALL {
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
        let code = release_child(pid, to_child_w, to_parent_r)?;
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
