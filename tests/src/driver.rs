//! Helpers for the driver's guest tests (`tests/tests/guest_driver/`): load and unload
//! `mmtrace_drv`, map its devices, read /proc/self/maps and the kernel log. The driver's
//! names, ground-truth files and their parsers are `mmtrace_driver_abi`'s (re-exported
//! here), shared with the CLI. Everything here talks to the kernel directly (syscalls
//! through libc), so a failing call carries its exact errno.

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use anyhow::{Context as _, Result, bail, ensure};

pub use mmtrace_driver_abi::{
    DEV_PREFIX, DeviceKind, DriverVma, MODULE, PAGE, PATTERN, PROC_VMAS, RANGE_PAGETABLE,
    buffer_pfns, counter, driver_vmas, faults, is_loaded, live_maps, npages, page_table,
    parse_vmas, range_page_table, vm,
};

/// Fails the calling test unless it runs in the mmap-trace guest (as root, with the
/// module built for that kernel).
pub fn require_guest() {
    assert!(
        std::env::var_os("MMTRACE_GUEST").is_some(),
        "MMTRACE_GUEST is not set: this test loads the mmtrace_drv kernel module and must run \
         as root in the Debian guest. Run it with `cargo xtask test` (all guest tests) or \
         `cargo xtask vm -- /mmtrace/bin/<test binary> --test-threads=1`."
    );
}

pub fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_PAGESIZE) as usize }
}

fn errno() -> io::Error {
    io::Error::last_os_error()
}

// ---------------------------------------------------------------- module loading

/// Tests load and unload the same module: they must not overlap, whatever
/// `--test-threads` says.
static MODULE_LOCK: Mutex<()> = Mutex::new(());

/// `finit_module(2)` on `$MMTRACE_KO` with these parameters.
pub fn finit_module(params: &str) -> io::Result<()> {
    let ko = std::env::var_os("MMTRACE_KO")
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "MMTRACE_KO is not set"))?;
    let file = fs::File::open(&ko)?;
    let params = CString::new(params).expect("no NUL in module parameters");
    // SAFETY: a valid fd and a NUL-terminated string that outlive the call.
    let rc = unsafe { libc::syscall(libc::SYS_finit_module, file.as_raw_fd(), params.as_ptr(), 0) };
    if rc == 0 { Ok(()) } else { Err(errno()) }
}

/// `delete_module(2)` like `rmmod`: O_NONBLOCK, so a module in use fails with
/// EWOULDBLOCK (EAGAIN) instead of waiting.
pub fn delete_module() -> io::Result<()> {
    let name = CString::new(MODULE).unwrap();
    // SAFETY: a NUL-terminated string that outlives the call.
    let rc = unsafe { libc::syscall(libc::SYS_delete_module, name.as_ptr(), libc::O_NONBLOCK) };
    if rc == 0 { Ok(()) } else { Err(errno()) }
}

/// The module's reference count as the kernel reports it.
pub fn module_refcnt() -> Result<u64> {
    let path = format!("/sys/module/{MODULE}/refcnt");
    let text = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    text.trim()
        .parse()
        .with_context(|| format!("parsing {path}: {text:?}"))
}

/// The loaded module, for one test. Holds the test lock and a kernel-log cursor taken
/// before the load; `unload` checks the log written since then.
pub struct Module {
    pub npages: usize,
    kmsg: Kmsg,
    loaded: bool,
    _lock: MutexGuard<'static, ()>,
}

impl Module {
    /// Takes the test lock and loads the module with `npages=<npages>` (pr_debug on).
    pub fn load(npages: usize) -> Result<Module> {
        let mut module = Module::lock()?;
        finit_module(&format!("npages={npages} dyndbg=+p"))
            .with_context(|| format!("loading {MODULE} with npages={npages}"))?;
        module.npages = npages;
        module.loaded = true;
        for kind in DeviceKind::ALL {
            ensure!(
                Path::new(&kind.dev_path()).exists(),
                "{MODULE} loaded but {} does not exist (is devtmpfs mounted on /dev?)",
                kind.dev_path()
            );
        }
        Ok(module)
    }

    /// Takes the test lock only (the module is not loaded): for load-failure tests.
    pub fn lock() -> Result<Module> {
        let lock = MODULE_LOCK
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if is_loaded() {
            // Left behind by a failed test: start from a clean slate.
            delete_module().with_context(|| format!("unloading a leftover {MODULE}"))?;
        }
        Ok(Module {
            npages: 0,
            kmsg: Kmsg::open_at_end()?,
            loaded: false,
            _lock: lock,
        })
    }

    pub fn size(&self) -> usize {
        self.npages * page_size()
    }

    /// Kernel log records written since this value was created.
    pub fn new_log(&mut self) -> Result<Vec<KmsgRecord>> {
        self.kmsg.read_new()
    }

    /// Unloads the module (it must not be in use) and fails if the kernel logged a
    /// warning, an error or a splat since the load.
    pub fn unload(mut self) -> Result<()> {
        delete_module().with_context(|| format!("rmmod {MODULE}"))?;
        self.loaded = false;
        ensure!(
            !is_loaded(),
            "{MODULE} still in /sys/module after a successful delete_module"
        );
        let records = self.kmsg.read_new()?;
        assert_log_clean(&records, &[])
    }
}

impl Drop for Module {
    fn drop(&mut self) {
        if self.loaded {
            // A test failed before unload(): do not leave the module to the next one.
            let _ = delete_module();
        }
    }
}

// ---------------------------------------------------------------- kernel log

/// One /dev/kmsg record.
#[derive(Debug, Clone)]
pub struct KmsgRecord {
    /// Syslog level: 0 emerg .. 7 debug.
    pub level: u8,
    pub text: String,
}

/// A reader of /dev/kmsg that only sees records written after it was opened.
pub struct Kmsg {
    fd: OwnedFd,
}

impl Kmsg {
    pub fn open_at_end() -> Result<Kmsg> {
        let path = CString::new("/dev/kmsg").unwrap();
        // SAFETY: a NUL-terminated path; the fd is owned below.
        let fd = unsafe {
            libc::open(
                path.as_ptr(),
                libc::O_RDONLY | libc::O_NONBLOCK | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(errno()).context("opening /dev/kmsg");
        }
        // SAFETY: fd was just opened and is owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: a valid fd.
        if unsafe { libc::lseek(fd.as_raw_fd(), 0, libc::SEEK_END) } < 0 {
            return Err(errno()).context("seeking /dev/kmsg to its end");
        }
        Ok(Kmsg { fd })
    }

    pub fn read_new(&mut self) -> Result<Vec<KmsgRecord>> {
        let mut records = Vec::new();
        let mut buf = vec![0u8; 8192];
        loop {
            // SAFETY: buf is valid for buf.len() bytes.
            let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n < 0 {
                let e = errno();
                match e.raw_os_error() {
                    Some(libc::EAGAIN) => break,
                    // Records were overwritten before we read them: carry on.
                    Some(libc::EPIPE) => continue,
                    _ => return Err(e).context("reading /dev/kmsg"),
                }
            }
            let line = String::from_utf8_lossy(&buf[..n as usize]).into_owned();
            let (head, text) = line.split_once(';').unwrap_or(("6", &line));
            let prio: u32 = head
                .split(',')
                .next()
                .and_then(|p| p.parse().ok())
                .unwrap_or(6);
            // Continuation lines (" KEY=value") carry metadata, not text.
            let text = text.lines().next().unwrap_or("").to_owned();
            records.push(KmsgRecord {
                level: (prio & 7) as u8,
                text,
            });
        }
        Ok(records)
    }
}

/// Fails on any splat, and on any record at warning level or worse that is not one of
/// `allowed` (substrings) or the taint notices every out-of-tree, unsigned module gets.
pub fn assert_log_clean(records: &[KmsgRecord], allowed: &[&str]) -> Result<()> {
    const SPLATS: [&str; 9] = [
        "BUG:",
        "WARNING:",
        "Oops",
        "Call Trace",
        "general protection",
        "Bad page",
        "UBSAN",
        "KASAN",
        "refcount_t",
    ];
    const TAINTS: [&str; 2] = ["taints kernel", "tainting kernel"];
    let bad: Vec<String> = records
        .iter()
        .filter(|r| {
            SPLATS.iter().any(|s| r.text.contains(s))
                || (r.level <= 4
                    && !allowed
                        .iter()
                        .chain(TAINTS.iter())
                        .any(|a| r.text.contains(a)))
        })
        .map(|r| format!("<{}> {}", r.level, r.text))
        .collect();
    if !bad.is_empty() {
        bail!("kernel log not clean:\n  {}", bad.join("\n  "));
    }
    Ok(())
}

// ---------------------------------------------------------------- devices and mappings

/// An open device file.
pub struct Device {
    pub kind: DeviceKind,
    fd: OwnedFd,
}

impl Device {
    pub fn open(kind: DeviceKind) -> Result<Device> {
        let path = CString::new(kind.dev_path()).unwrap();
        // SAFETY: a NUL-terminated path; the fd is owned below.
        let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
        if fd < 0 {
            return Err(errno()).with_context(|| format!("opening {}", kind.dev_path()));
        }
        // SAFETY: fd was just opened and is owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Device { kind, fd })
    }

    pub fn raw_fd(&self) -> i32 {
        self.fd.as_raw_fd()
    }

    /// mmap(2) of `pages` pages from page `page_off`, read-write, with these flags
    /// (MAP_SHARED or MAP_PRIVATE).
    pub fn map(&self, pages: usize, page_off: usize, flags: i32) -> io::Result<Mapping> {
        self.map_raw(
            pages * page_size(),
            libc::PROT_READ | libc::PROT_WRITE,
            flags,
            (page_off * page_size()) as i64,
        )
    }

    /// mmap(2) with every argument chosen by the caller (for refused requests).
    pub fn map_raw(&self, len: usize, prot: i32, flags: i32, offset: i64) -> io::Result<Mapping> {
        // SAFETY: a fresh mapping chosen by the kernel; nothing else is affected.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                flags,
                self.raw_fd(),
                offset,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(errno());
        }
        Ok(Mapping {
            ptr: ptr.cast(),
            len,
        })
    }

    pub fn pread(&self, len: usize, offset: i64) -> io::Result<Vec<u8>> {
        let mut buf = vec![0u8; len];
        // SAFETY: buf is valid for len bytes.
        let n = unsafe { libc::pread(self.raw_fd(), buf.as_mut_ptr().cast(), len, offset) };
        if n < 0 {
            return Err(errno());
        }
        buf.truncate(n as usize);
        Ok(buf)
    }

    pub fn pwrite(&self, data: &[u8], offset: i64) -> io::Result<usize> {
        // SAFETY: data is valid for data.len() bytes.
        let n = unsafe { libc::pwrite(self.raw_fd(), data.as_ptr().cast(), data.len(), offset) };
        if n < 0 { Err(errno()) } else { Ok(n as usize) }
    }

    pub fn seek_end(&self) -> io::Result<i64> {
        // SAFETY: a valid fd.
        let pos = unsafe { libc::lseek(self.raw_fd(), 0, libc::SEEK_END) };
        if pos < 0 { Err(errno()) } else { Ok(pos) }
    }
}

/// A mapping, unmapped on drop. Memory other processes and the driver change under us
/// is only touched through volatile accesses.
pub struct Mapping {
    ptr: *mut u8,
    len: usize,
}

impl Mapping {
    pub fn addr(&self) -> u64 {
        self.ptr as u64
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn read(&self, offset: usize, len: usize) -> Vec<u8> {
        assert!(
            offset + len <= self.len,
            "read {offset}+{len} outside a {}-byte mapping",
            self.len
        );
        // SAFETY: inside the mapping, which lives as long as self.
        (0..len)
            .map(|i| unsafe { self.ptr.add(offset + i).read_volatile() })
            .collect()
    }

    pub fn write(&self, offset: usize, data: &[u8]) {
        assert!(
            offset + data.len() <= self.len,
            "write {offset}+{} outside a {}-byte mapping",
            data.len(),
            self.len
        );
        for (i, b) in data.iter().enumerate() {
            // SAFETY: inside the mapping, which lives as long as self.
            unsafe { self.ptr.add(offset + i).write_volatile(*b) };
        }
    }

    /// Raw pointer, for use in a forked child (no allocation there).
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: ptr/len came from a successful mmap that nobody else unmaps.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

// ---------------------------------------------------------------- /proc/self/maps

fn hex(word: &str, what: &str) -> Result<u64> {
    u64::from_str_radix(word, 16).with_context(|| format!("{what}: {word:?} is not hex"))
}

/// One line of /proc/self/maps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapsLine {
    pub start: u64,
    pub end: u64,
    pub perms: String,
    pub offset: u64,
    /// The path or [name] column, if any.
    pub name: Option<String>,
}

pub fn self_maps() -> Result<Vec<MapsLine>> {
    let text = fs::read_to_string("/proc/self/maps").context("reading /proc/self/maps")?;
    parse_maps(&text)
}

pub fn parse_maps(text: &str) -> Result<Vec<MapsLine>> {
    text.lines()
        .map(|line| {
            let bad = || format!("/proc/self/maps: bad line {line:?}");
            let mut words = line.split_whitespace();
            let (start, end) = words
                .next()
                .and_then(|r| r.split_once('-'))
                .with_context(bad)?;
            let perms = words.next().with_context(bad)?.to_owned();
            let offset = hex(words.next().with_context(bad)?, "maps offset")?;
            let _dev = words.next().with_context(bad)?;
            let _inode = words.next().with_context(bad)?;
            // The name is the rest of the line after the inode column's padding.
            let name = line
                .splitn(6, ' ')
                .nth(5)
                .map(str::trim_start)
                .filter(|n| !n.is_empty())
                .map(str::to_owned);
            Ok(MapsLine {
                start: hex(start, "maps start")?,
                end: hex(end, "maps end")?,
                perms,
                offset,
                name,
            })
        })
        .collect()
}

/// The lines of /proc/self/maps that map one of the driver's devices.
pub fn device_maps_lines() -> Result<Vec<MapsLine>> {
    Ok(self_maps()?
        .into_iter()
        .filter(|l| l.name.as_deref().is_some_and(|n| n.starts_with(DEV_PREFIX)))
        .collect())
}

/// The VMA of /proc/self/maps that starts at `addr`.
pub fn maps_line_at(addr: u64) -> Result<MapsLine> {
    self_maps()?
        .into_iter()
        .find(|l| l.start == addr)
        .with_context(|| format!("no VMA starts at {addr:#x} in /proc/self/maps"))
}

/// The os_error of an io::Error, for assertion messages and comparisons.
pub fn errno_of(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(-1)
}

/// KPF_RESERVED in /proc/kpageflags (include/uapi/linux/kernel-page-flags.h).
pub const KPF_RESERVED: u64 = 1 << 32;

/// The /proc/kpageflags word of a PFN (root only).
pub fn kpageflags(pfn: u64) -> Result<u64> {
    use std::os::unix::fs::FileExt as _;
    let file = fs::File::open("/proc/kpageflags").context("opening /proc/kpageflags")?;
    let mut word = [0u8; 8];
    file.read_exact_at(&mut word, pfn * 8)
        .with_context(|| format!("reading /proc/kpageflags for PFN {pfn:#x}"))?;
    Ok(u64::from_ne_bytes(word))
}

/// The PFN `/proc/self/pagemap` gives for the page at `addr` (None: not present). Root
/// only (PFNs read as 0 without CAP_SYS_ADMIN). The kernel does not walk VM_PFNMAP VMAs
/// here: their pages read as not present.
pub fn pagemap_pfn(addr: u64) -> Result<Option<u64>> {
    use std::os::unix::fs::FileExt as _;
    let file = fs::File::open("/proc/self/pagemap").context("opening /proc/self/pagemap")?;
    let mut word = [0u8; 8];
    file.read_exact_at(&mut word, addr / PAGE * 8)
        .with_context(|| format!("reading /proc/self/pagemap at {addr:#x}"))?;
    let entry = u64::from_ne_bytes(word);
    // Bit 63: present; bits 0-54: the PFN.
    Ok((entry >> 63 == 1).then_some(entry & ((1 << 55) - 1)))
}
