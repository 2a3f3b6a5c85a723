//! Raw syscalls and byte access through mappings: the kernel sees exactly these values.

use super::*;

/// A raw syscall (no libc argument checks: the kernel must see exactly these values).
pub(crate) fn sys(nr: libc::c_long, a: [u64; 6]) -> Result<u64, i32> {
    // SAFETY: the callers only pass addresses of memory this program maps and tracks.
    let ret = unsafe { libc::syscall(nr, a[0], a[1], a[2], a[3], a[4], a[5]) };
    if ret == -1 {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
    } else {
        Ok(ret as u64)
    }
}

pub(crate) fn open(path: &str, flags: i32) -> i32 {
    let c = CString::new(path).unwrap();
    // SAFETY: a NUL-terminated path.
    let fd = unsafe { libc::open(c.as_ptr(), flags | libc::O_CLOEXEC) };
    assert!(fd >= 0, "open {path}: {}", std::io::Error::last_os_error());
    fd
}

pub(crate) fn npages() -> u64 {
    mmap_trace_tests::driver::npages().unwrap_or_else(|e| panic!("{e:#} (is mmtrace_drv loaded?)"))
}

pub(crate) fn pread(fd: i32, len: usize, pos: i64) -> Result<Vec<u8>, i32> {
    let mut buf = vec![0u8; len];
    let n = sys(
        libc::SYS_pread64,
        [
            fd as u64,
            buf.as_mut_ptr() as u64,
            len as u64,
            pos as u64,
            0,
            0,
        ],
    )?;
    buf.truncate(n as usize);
    Ok(buf)
}

pub(crate) fn pwrite(fd: i32, data: &[u8], pos: i64) -> Result<u64, i32> {
    sys(
        libc::SYS_pwrite64,
        [
            fd as u64,
            data.as_ptr() as u64,
            data.len() as u64,
            pos as u64,
            0,
            0,
        ],
    )
}

pub(crate) fn load(addr: u64, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    // SAFETY: [addr, addr+len) is a readable mapping the model tracks.
    unsafe { std::ptr::copy_nonoverlapping(addr as *const u8, out.as_mut_ptr(), len) };
    out
}

pub(crate) fn store(addr: u64, data: &[u8]) {
    // SAFETY: [addr, addr+len) is a writable mapping the model tracks.
    unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), addr as *mut u8, data.len()) };
}
