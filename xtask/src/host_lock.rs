//! One eBPF-loading run per machine: host tests and the bench trace processes by name and
//! count every event of this kernel, so a second run on the same host would corrupt the
//! first one's figures (and its own). They queue on a lock file instead.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::path::Path;

use anyhow::{Context as _, Result};

const LOCK: &str = "/run/lock/mmap-trace-host.lock";

/// Held until dropped; waits, saying for whom, while another run holds it.
pub struct HostLock(#[expect(dead_code, reason = "held for its lock, never read")] File);

pub fn hold(what: &str) -> Result<HostLock> {
    let path = if Path::new("/run/lock").is_dir() {
        LOCK
    } else {
        "/tmp/mmap-trace-host.lock"
    };
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .with_context(|| format!("opening the host lock {path}"))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            eprintln!(
                "xtask: waiting for another run on this machine to finish ({}; lock {path})",
                holder.trim()
            );
            file.lock().with_context(|| format!("waiting for {path}"))?;
        }
        Err(TryLockError::Error(e)) => return Err(e).with_context(|| format!("locking {path}")),
    }
    file.set_len(0)?;
    file.seek(SeekFrom::Start(0))?;
    write!(file, "{what}, pid {}", std::process::id())?;
    Ok(HostLock(file))
}
