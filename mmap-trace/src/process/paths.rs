//! The full path of the file behind a traced mmap. The probe walks it as the call returns
//! (mmap-trace-ebpf/src/path.rs), so it is there even for a process that exited before
//! userspace read the record. Where the walk was cut short (a deeper or longer path than
//! the record holds) or did not run (no BTF offsets for it), /proc/<pid>/maps answers by
//! the mapped address instead, and the inode must agree (the range may have been
//! remapped since): parsed by procfs, read once per drained batch and process, so it
//! reflects the state after the batch. The fd is no witness: ld.so closes each library
//! right after mapping it, and the number is reused.

use std::{cell::RefCell, collections::HashMap, os::unix::ffi::OsStrExt as _};

use mmap_trace_common::Probe;

use crate::kernel::decode::{Event, FilePath, is_error};

/// Cached maps per pid: (start, end, inode, path).
type MapsCache = HashMap<u32, Vec<(u64, u64, u64, Vec<u8>)>>;

thread_local! {
    static CACHE: RefCell<MapsCache> = RefCell::new(HashMap::new());
}

/// The path of the file a successful fd-backed mmap mapped, when it can still be found.
pub fn mapped_path(event: &Event) -> Option<FilePath> {
    let walked = kernel_path(event);
    if walked.as_ref().is_some_and(|p| !p.truncated) {
        return walked;
    }
    maps_path(event)
        .map(|bytes| FilePath {
            bytes,
            truncated: false,
            deleted: walked.as_ref().is_some_and(|p| p.deleted),
        })
        .or(walked)
}

/// The path the probe recorded for the file an event names, without asking /proc
/// (for `verify`, whose checkpoints read maps anyway).
pub fn kernel_path(event: &Event) -> Option<FilePath> {
    event.mmap_file().and_then(FilePath::from_kernel)
}

/// The path /proc/<pid>/maps shows at the mapped address (mangled as maps mangles it).
fn maps_path(event: &Event) -> Option<Vec<u8>> {
    let e = event.syscall()?;
    if e.header.probe != Probe::Mmap as u32
        || e.args[3] & libc::MAP_ANONYMOUS as u64 != 0
        || (e.args[4] as i32) < 0
        || is_error(e.ret)
    {
        return None;
    }
    let (pid, addr) = (e.header.pid, e.ret as u64);
    let inode = event.mmap_file().map(|f| f.ino);
    CACHE.with(|cache| {
        let mut cache = cache.borrow_mut();
        let maps = match cache.entry(pid) {
            std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => v.insert(read_file_maps(pid)),
        };
        maps.iter()
            .find(|(s, e, ino, _)| *s <= addr && addr < *e && inode.is_none_or(|i| i == *ino))
            .map(|(_, _, _, p)| p.clone())
    })
}

/// Forget what was read: call before each drained batch of events.
pub fn new_batch() {
    CACHE.with(|cache| cache.borrow_mut().clear());
}

/// The file-backed regions of `pid` (none once it has exited, or when procfs cannot
/// parse its maps).
fn read_file_maps(pid: u32) -> Vec<(u64, u64, u64, Vec<u8>)> {
    let Ok(maps) = procfs::process::Process::new(pid as i32).and_then(|p| p.maps()) else {
        return Vec::new();
    };
    maps.into_iter()
        .filter_map(|m| match m.pathname {
            procfs::process::MMapPath::Path(p) => Some((
                m.address.0,
                m.address.1,
                m.inode,
                p.as_os_str().as_bytes().to_vec(),
            )),
            _ => None,
        })
        .collect()
}
