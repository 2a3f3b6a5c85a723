//! The full path of the file behind a traced mmap, for display (best effort). The event
//! carries the kernel's identity of the file (device, inode, name) but no path, and by
//! the time userspace reads it the process may have closed the fd and reused the number
//! (ld.so closes each library right after mapping it), so the fd is no witness.
//! /proc/<pid>/maps answers by the mapped address instead, and the inode must agree
//! (the range may have been remapped since): parsed by procfs, read once per drained
//! batch and process, so it reflects the state after the batch. Once the process has
//! exited there is no path, only the event's name.

use std::{cell::RefCell, collections::HashMap};

use mmap_trace_common::Probe;

use crate::{decode::Event, json::is_error};

/// Cached maps per pid: (start, end, inode, path).
type MapsCache = HashMap<u32, Vec<(u64, u64, u64, String)>>;

thread_local! {
    static CACHE: RefCell<MapsCache> = RefCell::new(HashMap::new());
}

/// The path of the file a successful fd-backed mmap mapped, when it can still be found.
pub fn mapped_path(event: &Event) -> Option<String> {
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

/// The file-backed regions of `pid` (none once it has exited).
fn read_file_maps(pid: u32) -> Vec<(u64, u64, u64, String)> {
    let Ok(maps) = procfs::process::Process::new(pid as i32).and_then(|p| p.maps()) else {
        return Vec::new();
    };
    maps.into_iter()
        .filter_map(|m| match m.pathname {
            procfs::process::MMapPath::Path(p) => Some((m.address.0, m.address.1, m.inode, p.display().to_string())),
            _ => None,
        })
        .collect()
}
