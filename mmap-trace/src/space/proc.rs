//! [`CallEnv`] for a live process, from /proc while it holds still.

use std::os::unix::{
    ffi::OsStrExt as _,
    fs::{FileTypeExt as _, MetadataExt as _},
};

use super::{
    model::FileIdentity,
    syscall::{CallEnv, ShmSegment},
};

pub struct ProcEnv {
    pub pid: u32,
}

impl CallEnv for ProcEnv {
    /// The file behind `fd` now: the process is stopped right after its call, so the fd
    /// is the one it used.
    fn fd_file(&self, fd: i32) -> Option<FileIdentity> {
        let link = format!("/proc/{}/fd/{fd}", self.pid);
        let meta = std::fs::metadata(&link).ok()?;
        let path = std::fs::read_link(&link).ok()?;
        let (dev, rdev) = (meta.dev(), meta.rdev());
        let is_device = meta.file_type().is_char_device() || meta.file_type().is_block_device();
        Some(FileIdentity {
            dev: (libc::major(dev), libc::minor(dev)),
            inode: meta.ino(),
            path: path.as_os_str().as_bytes().to_vec(),
            overlay: on_overlayfs(&link),
            rdev: is_device.then(|| (libc::major(rdev), libc::minor(rdev))),
        })
    }

    fn shm_segment(&self, shmid: i32) -> Option<ShmSegment> {
        let table = std::fs::read("/proc/sysvipc/shm").ok()?;
        shm_segment(&table, shmid)
    }
}

/// `key shmid perms size …` lines of /proc/sysvipc/shm (ipc/shm.c sysvipc_shm_proc_show).
pub fn shm_segment(table: &[u8], shmid: i32) -> Option<ShmSegment> {
    let text = String::from_utf8_lossy(table);
    text.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (key, id, size) = (
            f.first()?.parse::<i64>().ok()?,
            f.get(1)?.parse::<i32>().ok()?,
            f.get(3)?.parse().ok()?,
        );
        (id == shmid).then_some(ShmSegment {
            size,
            key: key as u32,
        })
    })
}

/// Whether `path` (followed) is on overlayfs.
fn on_overlayfs(path: &str) -> bool {
    const OVERLAYFS_SUPER_MAGIC: i64 = 0x794c_7630;
    let Ok(cpath) = std::ffi::CString::new(path) else {
        return false;
    };
    // SAFETY: statfs into a zeroed struct we own, with a NUL-terminated path.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a statfs out-buffer we own.
    (unsafe { libc::statfs(cpath.as_ptr(), &mut st) } == 0)
        && st.f_type as i64 == OVERLAYFS_SUPER_MAGIC
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_sysvipc_table() {
        let table = b"       key      shmid perms                  size  cpid  lpid nattch   uid   gid  cuid  cgid      atime      dtime      ctime                   rss                  swap\n\
         0          0   600                 12293 16337 16337      1     0     0     0     0 1796191448          0 1796191448                     0                     0\n\
      4660          1   600                  8192 16337 16337      2     0     0     0     0 1796191448          0 1796191448                     0                     0\n";
        assert_eq!(
            shm_segment(table, 1),
            Some(ShmSegment {
                size: 8192,
                key: 0x1234
            })
        );
        assert_eq!(
            shm_segment(table, 0),
            Some(ShmSegment {
                size: 12293,
                key: 0
            })
        );
        assert_eq!(shm_segment(table, 2), None);
    }
}
