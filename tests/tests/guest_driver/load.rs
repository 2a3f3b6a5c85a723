//! Loading and unloading: npages bounds, rmmod while mapped, PG_reserved cleared.

use super::*;

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
        let pfns = buffer_pfns(DeviceKind::Kmalloc)?;
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
            counter("reserved_pages")? == (DeviceKind::ALL.len() * good) as i64,
            "npages={good}: {} reserved pages, want {}",
            counter("reserved_pages")?,
            DeviceKind::ALL.len() * good
        );
        let dev = Device::open(DeviceKind::Vmalloc)?;
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

#[test]
fn rmmod_is_refused_while_a_process_holds_a_mapping() -> Result<()> {
    let m = setup()?;
    let len = m.size();
    ensure!(module_refcnt()? == 0, "module in use before the test");
    let paths = DeviceKind::ALL.map(|k| CString::new(k.dev_path()).expect("no NUL in a path"));
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
        let want = paths.len() as u64;
        ensure!(
            refcnt == want,
            "child holds one mapping per device and no fd, module refcnt is {refcnt}, want {want}"
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
    let code = release_child(pid, to_child_w, to_parent_r)?;
    result?;
    ensure!(code == 0, "child exited {code} (2: open or mmap failed)");
    ensure!(
        module_refcnt()? == 0,
        "child exited, module refcnt still {}",
        module_refcnt()?
    );
    for kind in DeviceKind::ALL {
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
    for kind in DeviceKind::ALL {
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
