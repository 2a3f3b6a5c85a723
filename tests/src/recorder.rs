//! How `mmap-workload` makes and prints its calls: one JSON object per line, a
//! [`Call`] for each traced syscall (mmap, munmap, mprotect, mremap, brk) and an
//! [`Observation`] for anything else it did or saw.

use std::io::Write as _;

use serde::Serialize;

use crate::workload::{Call, FileKey, Observation};

pub use mmtrace_driver_abi::PAGE;

pub struct Recorder {
    pub out: std::io::StdoutLock<'static>,
}

impl Recorder {
    pub fn new() -> Self {
        Self {
            out: std::io::stdout().lock(),
        }
    }

    /// Makes the syscall `nr` with `args` (raw, so libc adds no calls of its own) and
    /// records it.
    pub fn call(&mut self, name: &'static str, nr: libc::c_long, args: &[u64]) -> i64 {
        let ret = raw(nr, args);
        let file = (name == "mmap" && args[3] & libc::MAP_ANONYMOUS as u64 == 0 && ret >= 0)
            .then(|| fd_file(args[4] as i32))
            .flatten();
        let call = Call {
            call: name.to_string(),
            args: args.to_vec(),
            ret,
            file,
        };
        self.line(&call);
        ret
    }

    /// A syscall the probes do not trace (shmat, pkey_mprotect…), made raw and printed as
    /// an observation `{"observe": name, "value": {"args", "ret", "error"?}}`.
    pub fn other(&mut self, name: &str, nr: libc::c_long, args: &[u64]) -> i64 {
        let ret = raw(nr, args);
        let mut value = serde_json::json!({ "args": args, "ret": ret });
        if ret < 0 && ret > -4096 {
            value["error"] = errno_name(-ret as i32).into();
        }
        self.observe(name, value);
        ret
    }

    pub fn observe(&mut self, what: &str, value: impl Into<serde_json::Value>) {
        self.line(&Observation {
            observe: what.to_string(),
            value: value.into(),
        });
    }

    fn line<T: Serialize>(&mut self, record: &T) {
        let line = serde_json::to_string(record).expect("serializable");
        // Line by line and flushed: a fork must not copy unwritten lines.
        writeln!(self.out, "{line}")
            .and_then(|()| self.out.flush())
            .expect("stdout");
    }
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

/// A raw syscall: its return value, or minus its errno.
pub fn raw(nr: libc::c_long, args: &[u64]) -> i64 {
    let mut a = [0u64; 6];
    a[..args.len()].copy_from_slice(args);
    // SAFETY: the calls made here only touch memory the workload maps itself.
    let ret = unsafe { libc::syscall(nr, a[0], a[1], a[2], a[3], a[4], a[5]) };
    if ret == -1 {
        -(std::io::Error::last_os_error().raw_os_error().unwrap_or(0) as i64)
    } else {
        ret as i64
    }
}

/// "EINVAL" and the like (libc's own description where the name is not one we list).
pub fn errno_name(errno: i32) -> String {
    let name = match errno {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EINTR => "EINTR",
        libc::EAGAIN => "EAGAIN",
        libc::ENOMEM => "ENOMEM",
        libc::EACCES => "EACCES",
        libc::EFAULT => "EFAULT",
        libc::EINVAL => "EINVAL",
        libc::ENOSPC => "ENOSPC",
        libc::ENOSYS => "ENOSYS",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        _ => return std::io::Error::from_raw_os_error(errno).to_string(),
    };
    name.to_string()
}

/// The file `fd` names, by fstat(2).
pub fn fd_file(fd: i32) -> Option<FileKey> {
    // SAFETY: an all-zero stat is a valid value of this plain C struct.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat into the struct we own.
    (unsafe { libc::fstat(fd, &mut st) } == 0).then(|| FileKey {
        dev: format!(
            "{:02x}:{:02x}",
            libc::major(st.st_dev),
            libc::minor(st.st_dev)
        ),
        ino: st.st_ino,
    })
}
