//! Guest tests of the `mmtrace_drv` module (driver/). They load a kernel module, so they
//! run as root in the Debian guest: all of them with `cargo xtask test`, one with
//! `cargo xtask vm -- /mmtrace/bin/guest_driver --test-threads=1 --exact <area>::<name>`.
//! One file per area, as aya's `integration-test/src/tests/<feature>.rs`; the shared
//! helpers are here.
//! Each test loads the module itself and unloads it at the end, which also checks that
//! the kernel logged no warning, error or splat in between.

use std::ffi::CString;

use anyhow::{Context as _, Result, bail, ensure};
use libc::{
    EINVAL, ENOMEM, ENOSPC, ENXIO, EOVERFLOW, MAP_PRIVATE, MAP_SHARED, PROT_READ, PROT_WRITE,
};
use mmap_trace_tests::driver::{
    DEV_PREFIX, Device, DeviceKind, DriverVma, KPF_RESERVED, Mapping, MapsLine, Module, PATTERN,
    RANGE_PAGETABLE, buffer_pfns, counter, delete_module, device_maps_lines, driver_vmas, errno_of,
    faults, finit_module, is_loaded, kpageflags, live_maps, maps_line_at, module_refcnt, page_size,
    page_table, pagemap_pfn, parse_maps, parse_vmas, range_page_table, require_guest, vm,
};

mod fault;
mod load;
mod mapping;
mod page_tables;
mod processes;
mod procfs;

const NPAGES: usize = 16;

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

fn assert_unmapped(kind: DeviceKind, what: &str) -> Result<()> {
    let lines = device_maps_lines()?;
    ensure!(
        lines.is_empty(),
        "{kind:?}, {what}: /proc/self/maps still maps the device: {lines:?}"
    );
    let pt = page_table(kind)?;
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

// ---------------------------------------------------------------- forked children

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

/// Lets the child go on (one byte on its pipe), closes the parent's pipe ends and waits
/// for it; returns its exit code.
fn release_child(pid: i32, to_child_w: i32, to_parent_r: i32) -> Result<i32> {
    send_byte(to_child_w);
    // SAFETY: closing our own ends of the pipes.
    unsafe {
        libc::close(to_child_w);
        libc::close(to_parent_r);
    }
    reap(pid)
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
