//! mmap-stress: load generators for the reliability tests (issue 7).
//!
//!   mmap-stress random [--seed S] [--requests N]
//!       A seeded random client of both mmtrace_drv devices (the module must be loaded):
//!       mmap with every kind of length, offset, prot and flags, partial munmap, mprotect,
//!       mremap, fork with the mappings held, pread/pwrite and loads/stores through the
//!       mappings. Each request is checked against a model of the buffers and of this
//!       process's device mappings: served as the model says, or refused with the errno
//!       the README's rules predict. Prints `seed=S` first; `--seed S` replays a run.
//!   mmap-stress concurrent --slot K --slots M [--threads T] [--rounds R]
//!       One of M processes hammering both devices from T threads; each thread owns a
//!       disjoint part of the buffers, so any foreign byte in it is corruption.
//!   mmap-stress mremap-burst N
//!       N no-op mremap calls as fast as possible (a known number of traced events).
//!   mmap-stress fork-cases
//!       fork() with one private kmalloc-device mapping reshaped in one way per case
//!       (COW, munmap, mprotect, mremap); one `FORK-CASE` line each (README Found (2)).
//!
//! Every mode ends with one `STRESS-RESULT key=value …` line; a failure prints
//! `STRESS-FAIL …` (with the seed) and exits 1. For a replay, MMTRACE_STRESS_VERBOSE=1
//! prints every request and its answer, MMTRACE_STRESS_KMSG=1 every kernel log line at
//! warning level or worse next to the request that caused it.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::sync::atomic::{AtomicU64, Ordering};

use mmap_trace_tests::driver::{DeviceKind, live_maps, parse_maps};
use mmap_trace_tests::stress::{Rng, errno_name};

const PAGE: u64 = 4096;
/// MAP_FIXED and mremap targets live in an arena of slots this size (PROT_NONE when free).
const SLOT_PAGES: u64 = 64;
const SLOTS: u64 = 24;
/// x86-64 user address space with 4-level page tables (the guest CPU has no LA57).
const TASK_SIZE: u64 = 0x7fff_ffff_f000;
/// Full consistency check (maps, counters, every mapped byte, both buffers) this often.
const CHECK_EVERY: u64 = 97;
/// Not too many live VMAs: beyond this, requests lean towards unmapping.
const MAX_VMAS: usize = 48;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let opt = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
    let num = |name: &str, default: u64| {
        opt(name).map_or(default, |v| v.parse().unwrap_or_else(|_| panic!("{name} {v:?}: not a number")))
    };
    match args.first().map(String::as_str) {
        Some("random") => {
            let seed = opt("--seed").map_or_else(
                || mmap_trace_tests::stress::seed_from("MMTRACE_STRESS_SEED"),
                |s| s.parse().expect("--seed N"),
            );
            random(seed, num("--requests", 10_000));
        }
        Some("concurrent") => concurrent(num("--slot", 0), num("--slots", 1), num("--threads", 2), num("--rounds", 20)),
        Some("mremap-burst") => mremap_burst(opt("mremap-burst").map_or(0, |n| n.parse().expect("N"))),
        Some("fork-cases") => fork_cases(),
        _ => {
            eprintln!("usage: mmap-stress random [--seed S] [--requests N] | concurrent --slot K --slots M [--threads T] [--rounds R] | mremap-burst N");
            std::process::exit(2);
        }
    }
}

// ------------------------------------------------------------------------ fork-cases

/// Each case maps 4 private pages of the kmalloc device read-write, reshapes them, forks
/// a child that exits at once, and says what fork answered.
fn fork_cases() {
    let fd = open(&DeviceKind::Kmalloc.dev_path(), libc::O_RDWR);
    let rw = (libc::PROT_READ | libc::PROT_WRITE) as u64;
    let write = |addr: u64| {
        // SAFETY: a store into a page of a mapping this case made writable.
        unsafe { std::ptr::write_volatile(addr as *mut u8, 0x5a) }
    };
    let cases: &[(&str, &dyn Fn(u64) -> u64)] = &[
        ("untouched", &|a| a),
        ("cow-page0", &|a| { write(a); a }),
        ("cow-page1", &|a| { write(a + PAGE); a }),
        ("munmap-page0", &|a| { sys(libc::SYS_munmap, [a, PAGE, 0, 0, 0, 0]).unwrap(); a + PAGE }),
        ("cow-page1-munmap-page0", &|a| {
            write(a + PAGE);
            sys(libc::SYS_munmap, [a, PAGE, 0, 0, 0, 0]).unwrap();
            a + PAGE
        }),
        ("mprotect-split", &|a| {
            sys(libc::SYS_mprotect, [a + PAGE, PAGE, libc::PROT_READ as u64, 0, 0, 0]).unwrap();
            a
        }),
        ("cow-page0-mprotect-page0", &|a| {
            write(a);
            sys(libc::SYS_mprotect, [a, PAGE, libc::PROT_READ as u64, 0, 0, 0]).unwrap();
            a
        }),
        ("mremap-shrink", &|a| { sys(libc::SYS_mremap, [a, 4 * PAGE, PAGE, 0, 0, 0]).unwrap(); a }),
        ("mremap-move", &|a| {
            let hole = sys(libc::SYS_mmap, [0, 8 * PAGE, 0, (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64, u64::MAX, 0]).unwrap();
            let flags = (libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED) as u64;
            sys(libc::SYS_mremap, [a, 4 * PAGE, 4 * PAGE, flags, hole, 0]).unwrap()
        }),
    ];
    for (name, reshape) in cases {
        let a = sys(libc::SYS_mmap, [0, 4 * PAGE, rw, libc::MAP_PRIVATE as u64, fd as u64, 0]).expect("mmap");
        let _kept = reshape(a);
        // SAFETY: the child only exits.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: leaving the child at once.
            unsafe { libc::_exit(0) };
        }
        let result = if pid < 0 {
            errno_name(std::io::Error::last_os_error().raw_os_error().unwrap_or(0)).to_string()
        } else {
            // SAFETY: reaping our own child.
            unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
            "ok".to_string()
        };
        println!("FORK-CASE name={name} fork={result}");
        // Unmap whatever is left of the 4 pages and anything a move put elsewhere.
        let _ = sys(libc::SYS_munmap, [a, 4 * PAGE, 0, 0, 0, 0]);
        if _kept != a && _kept != a + PAGE {
            let _ = sys(libc::SYS_munmap, [_kept, 8 * PAGE, 0, 0, 0, 0]);
        }
    }
}

// ------------------------------------------------------------------------ syscalls

/// A raw syscall (no libc argument checks: the kernel must see exactly these values).
fn sys(nr: libc::c_long, a: [u64; 6]) -> Result<u64, i32> {
    // SAFETY: the callers only pass addresses of memory this program maps and tracks.
    let ret = unsafe { libc::syscall(nr, a[0], a[1], a[2], a[3], a[4], a[5]) };
    if ret == -1 { Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0)) } else { Ok(ret as u64) }
}

fn open(path: &str, flags: i32) -> i32 {
    let c = CString::new(path).unwrap();
    // SAFETY: a NUL-terminated path.
    let fd = unsafe { libc::open(c.as_ptr(), flags | libc::O_CLOEXEC) };
    assert!(fd >= 0, "open {path}: {}", std::io::Error::last_os_error());
    fd
}

fn npages() -> u64 {
    let p = "/sys/module/mmtrace_drv/parameters/npages";
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{p}: {e} (is mmtrace_drv loaded?)")).trim().parse().unwrap()
}

fn pread(fd: i32, len: usize, pos: i64) -> Result<Vec<u8>, i32> {
    let mut buf = vec![0u8; len];
    let n = sys(libc::SYS_pread64, [fd as u64, buf.as_mut_ptr() as u64, len as u64, pos as u64, 0, 0])?;
    buf.truncate(n as usize);
    Ok(buf)
}

fn pwrite(fd: i32, data: &[u8], pos: i64) -> Result<u64, i32> {
    sys(libc::SYS_pwrite64, [fd as u64, data.as_ptr() as u64, data.len() as u64, pos as u64, 0, 0])
}

fn load(addr: u64, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    // SAFETY: [addr, addr+len) is a readable mapping the model tracks.
    unsafe { std::ptr::copy_nonoverlapping(addr as *const u8, out.as_mut_ptr(), len) };
    out
}

fn store(addr: u64, data: &[u8]) {
    // SAFETY: [addr, addr+len) is a writable mapping the model tracks.
    unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), addr as *mut u8, data.len()) };
}

// ------------------------------------------------------------------------ the model

/// One mapped page of a device, as the model expects it.
#[derive(Clone)]
struct Page {
    kind: DeviceKind,
    shared: bool,
    /// Which buffer page it maps.
    buf_page: u64,
    prot: i32,
    fd_writable: bool,
    /// A private page after its first store: its own copy (COW), no longer the buffer.
    copy: Option<Vec<u8>>,
    /// The VMA it belongs to (device VMAs never merge: they have vm_ops->close).
    vma: u64,
}

struct Vma {
    start: u64,
    end: u64,
    kind: DeviceKind,
    shared: bool,
    prot: i32,
    fd_writable: bool,
}

struct Model {
    npages: u64,
    /// Buffer contents, by DeviceKind as usize.
    bufs: [Vec<u8>; 2],
    pages: BTreeMap<u64, Page>,
    next_vma: u64,
    /// VMAs that come from a split (munmap, mprotect, mremap shrink of part of a VMA).
    split: std::collections::BTreeSet<u64>,
    arena: u64,
}

fn ki(kind: DeviceKind) -> usize {
    kind as usize
}

impl Model {
    fn size(&self) -> u64 {
        self.npages * PAGE
    }

    fn vmas(&self) -> Vec<Vma> {
        let mut out: Vec<Vma> = Vec::new();
        let mut last_id = u64::MAX;
        for (&addr, p) in &self.pages {
            match out.last_mut() {
                Some(v) if p.vma == last_id && v.end == addr => v.end += PAGE,
                _ => out.push(Vma { start: addr, end: addr + PAGE, kind: p.kind, shared: p.shared, prot: p.prot, fd_writable: p.fd_writable }),
            }
            last_id = p.vma;
        }
        out
    }

    /// Whether fork must fail: x86 PAT on 6.1 (`get_pat_info`) re-reads the cache mode of
    /// a private (copy-on-write) `remap_pfn_range` VMA from the PTE at its start, and once
    /// that first page is an anonymous COW copy it gives up and fails fork() (reported as
    /// ENOMEM). `mmap-stress fork-cases` shows it: only the cases whose first page was
    /// written fail.
    fn fork_refused(&self) -> bool {
        let mut last_vma = None;
        self.pages.values().any(|p| {
            let first = last_vma != Some(p.vma);
            last_vma = Some(p.vma);
            first && !p.shared && p.copy.is_some()
        })
    }

    fn new_vma(&mut self) -> u64 {
        self.next_vma += 1;
        self.next_vma
    }

    /// A VMA boundary at `addr` (as munmap and mprotect make): the pages from addr to
    /// the end of its VMA get a new id.
    fn split_at(&mut self, addr: u64) {
        let (Some(before), Some(at)) = (self.pages.get(&(addr - PAGE)), self.pages.get(&addr)) else { return };
        if before.vma != at.vma {
            return;
        }
        let (old, new) = (at.vma, self.new_vma());
        self.split.extend([old, new]);
        let mut a = addr;
        while let Some(p) = self.pages.get_mut(&a).filter(|p| p.vma == old) {
            p.vma = new;
            a += PAGE;
        }
    }

    /// The byte the model expects at page `addr`, offset `off`.
    fn expected(&self, addr: u64, off: usize) -> u8 {
        let p = &self.pages[&addr];
        match &p.copy {
            Some(c) => c[off],
            None => self.bufs[ki(p.kind)][(p.buf_page * PAGE) as usize + off],
        }
    }

    fn expected_range(&self, addr: u64, len: usize) -> Vec<u8> {
        (0..len as u64).map(|i| {
            let a = addr + i;
            self.expected(a & !(PAGE - 1), (a & (PAGE - 1)) as usize)
        }).collect()
    }

    fn apply_store(&mut self, addr: u64, data: &[u8]) {
        for (i, b) in data.iter().enumerate() {
            let a = addr + i as u64;
            let (page, off) = (a & !(PAGE - 1), (a & (PAGE - 1)) as usize);
            let p = self.pages.get(&page).expect("store to a modelled page");
            if p.shared {
                let (k, bp) = (ki(p.kind), p.buf_page);
                self.bufs[k][(bp * PAGE) as usize + off] = *b;
            } else {
                if p.copy.is_none() {
                    let start = (p.buf_page * PAGE) as usize;
                    let copy = self.bufs[ki(p.kind)][start..start + PAGE as usize].to_vec();
                    self.pages.get_mut(&page).unwrap().copy = Some(copy);
                }
                self.pages.get_mut(&page).unwrap().copy.as_mut().unwrap()[off] = *b;
            }
        }
    }

    fn slot_addr(&self, slot: u64) -> u64 {
        self.arena + slot * SLOT_PAGES * PAGE
    }

    fn slot_is_free(&self, slot: u64) -> bool {
        let start = self.slot_addr(slot);
        self.pages.range(start..start + SLOT_PAGES * PAGE).next().is_none()
    }

    /// Free slots go back to PROT_NONE anonymous memory, so nothing else (the allocator)
    /// can land in a hole a MAP_FIXED request would later replace.
    fn recover_slots(&self) {
        for slot in 0..SLOTS {
            if self.slot_is_free(slot) {
                let flags = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED | libc::MAP_NORESERVE) as u64;
                sys(libc::SYS_mmap, [self.slot_addr(slot), SLOT_PAGES * PAGE, 0, flags, u64::MAX, 0])
                    .expect("re-reserving an arena slot");
            }
        }
    }
}

// ------------------------------------------------------------------------ random client

struct Fds {
    /// [kind][0: O_RDWR, 1: O_RDONLY]
    fds: [[i32; 2]; 2],
}

struct Tally {
    requests: u64,
    served: u64,
    mappings: u64,
    refused: BTreeMap<String, u64>,
    forks: u64,
    /// Forks refused as the model predicted (see `Model::fork_refused`).
    forks_refused: u64,
    checks: u64,
}

struct Client {
    seed: u64,
    rng: Rng,
    m: Model,
    fds: Fds,
    t: Tally,
    request: u64,
    what: String,
}

macro_rules! fail {
    ($c:expr, $($arg:tt)*) => {{
        println!("STRESS-FAIL seed={} request={} op={}: {}", $c.seed, $c.request, $c.what, format!($($arg)*));
        println!("replay: mmap-stress random --seed {} --requests {}", $c.seed, $c.request + 1);
        std::process::exit(1)
    }};
}

fn random(seed: u64, requests: u64) {
    println!("seed={seed} requests={requests}");
    let npages = npages();
    let fds = Fds {
        fds: DeviceKind::ALL.map(|k| [open(&k.dev_path(), libc::O_RDWR), open(&k.dev_path(), libc::O_RDONLY)]),
    };
    let arena_len = SLOTS * SLOT_PAGES * PAGE;
    let arena = sys(
        libc::SYS_mmap,
        [0, arena_len, 0, (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE) as u64, u64::MAX, 0],
    )
    .expect("arena");
    let bufs = DeviceKind::ALL.map(|k| pread(fds.fds[ki(k)][0], (npages * PAGE) as usize, 0).expect("initial read"));
    for (k, buf) in DeviceKind::ALL.iter().zip(&bufs) {
        assert_eq!(buf.len() as u64, npages * PAGE, "{k:?}: short initial read");
        // The model starts from the load-time pattern; an earlier run's writes are
        // still in the buffer until the module is reloaded.
        if let Some(p) = (0..npages as usize).find(|p| buf[p * PAGE as usize..][..4] != [0xaa, 0xbb, 0xcc, 0xdd]) {
            eprintln!(
                "mmap-stress: page {p} of {} no longer holds the load-time pattern (an earlier run wrote to it);\n\
                 the random client needs a freshly loaded module: rmmod mmtrace_drv && insmod mmtrace_drv.ko npages=N",
                k.dev_path()
            );
            std::process::exit(2);
        }
    }
    let mut c = Client {
        seed,
        rng: Rng::new(seed),
        m: Model { npages, bufs, pages: BTreeMap::new(), next_vma: 0, split: Default::default(), arena },
        fds,
        t: Tally { requests: 0, served: 0, mappings: 0, refused: BTreeMap::new(), forks: 0, forks_refused: 0, checks: 0 },
        request: 0,
        what: String::new(),
    };
    let mut kmsg = std::env::var_os("MMTRACE_STRESS_KMSG").map(|_| mmap_trace_tests::driver::Kmsg::open_at_end().unwrap());
    for i in 0..requests {
        c.request = i;
        c.step();
        if let Some(k) = kmsg.as_mut() {
            for r in k.read_new().unwrap().iter().filter(|r| r.level <= 4) {
                println!("KMSG after #{i} {}: <{}> {}", c.what, r.level, r.text);
            }
        }
        if i % CHECK_EVERY == CHECK_EVERY - 1 {
            c.check_all();
        }
    }
    c.what = "final check".into();
    c.check_all();
    // Unmap everything, then the counters must say 0 (the guest test checks it too).
    for v in c.m.vmas() {
        sys(libc::SYS_munmap, [v.start, v.end - v.start, 0, 0, 0, 0]).expect("final munmap");
    }
    c.m.pages.clear();
    c.check_all();
    let refusals: Vec<String> = c.t.refused.iter().map(|(e, n)| format!("{e}:{n}")).collect();
    println!(
        "STRESS-RESULT mode=random seed={seed} npages={npages} requests={} served={} refused={} mappings={} forks={} forks_refused={} checks={} refusals={}",
        c.t.requests,
        c.t.served,
        c.t.refused.values().sum::<u64>(),
        c.t.mappings,
        c.t.forks,
        c.t.forks_refused,
        c.t.checks,
        refusals.join(",")
    );
}

impl Client {
    /// Counts a request and compares its result with the prediction.
    fn outcome(&mut self, got: Result<u64, i32>, want: Result<(), i32>) -> Option<u64> {
        self.t.requests += 1;
        if std::env::var_os("MMTRACE_STRESS_VERBOSE").is_some() {
            println!("#{} {} -> {:x?}", self.request, self.what, got);
        }
        match (got, want) {
            (Ok(v), Ok(())) => {
                self.t.served += 1;
                Some(v)
            }
            (Err(e), Err(w)) if e == w => {
                *self.t.refused.entry(errno_name(e)).or_default() += 1;
                None
            }
            (got, want) => fail!(
                self,
                "kernel answered {:?}, the model predicted {:?}",
                got.map_err(errno_name),
                want.map_err(errno_name)
            ),
        }
    }

    fn step(&mut self) {
        let crowded = self.m.vmas().len() >= MAX_VMAS;
        let roll = self.rng.below(100);
        match roll {
            0..=29 if !crowded => self.mmap(),
            0..=29 | 30..=41 => self.munmap(),
            42..=51 => self.mprotect(),
            52..=58 => self.mremap(),
            59..=68 => self.pread(),
            69..=78 => self.pwrite(),
            79..=87 => self.load_check(),
            88..=96 => self.store(),
            97 => self.fork(),
            _ => self.bad_calls(),
        }
    }

    fn mmap(&mut self) {
        let r = &mut self.rng;
        let np = self.m.npages;
        let kind = *r.pick(&DeviceKind::ALL);
        let len = match r.below(9) {
            0 => 0,
            1 => 1,
            2 => PAGE - 1,
            3 | 4 => r.range(1, np) * PAGE,
            5 => r.range(1, np) * PAGE - r.range(1, PAGE - 1),
            6 => (np + 1) * PAGE,
            7 => 1 << 30,
            _ => {
                let near_max = u64::MAX - r.below(PAGE);
                *r.pick(&[u64::MAX, near_max, u64::MAX - 2 * PAGE + 1, 1 << 63, TASK_SIZE + PAGE])
            }
        };
        let off = match r.below(8) {
            0..=2 => 0,
            3 | 4 => r.below(np) * PAGE,
            5 => np * PAGE + r.below(4) * PAGE,
            6 => r.range(1, PAGE - 1) + r.below(np) * PAGE,
            _ => *r.pick(&[u64::MAX & !(PAGE - 1), 1 << 63, (u64::MAX >> 1) & !(PAGE - 1), u64::MAX - PAGE * np + 1]),
        };
        let prot = *r.pick(&[
            libc::PROT_READ,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::PROT_READ | libc::PROT_EXEC,
            libc::PROT_WRITE,
            libc::PROT_NONE,
            libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC,
        ]);
        let mut flags = *r.pick(&[
            libc::MAP_SHARED,
            libc::MAP_SHARED,
            libc::MAP_PRIVATE,
            libc::MAP_PRIVATE,
            libc::MAP_SHARED_VALIDATE,
            libc::MAP_SHARED_VALIDATE | libc::MAP_SYNC,
            0,
        ]);
        if r.chance(10) {
            flags |= libc::MAP_POPULATE;
        }
        if (1 << 30..=TASK_SIZE).contains(&len) {
            // Without it a private writable 1 GiB request fails the commit charge in
            // mmap_region() (ENOMEM, and the kernel logs a warning): let the driver answer.
            flags |= libc::MAP_NORESERVE;
        }
        let writable = r.chance(80);
        // MAP_FIXED into a free arena slot, only for lengths that fit in it.
        let fixed_slot = if len > 0 && len <= SLOT_PAGES * PAGE && r.chance(30) {
            let from = r.below(SLOTS);
            (0..SLOTS).map(|i| (from + i) % SLOTS).find(|&s| self.m.slot_is_free(s))
        } else {
            None
        };
        let addr = match fixed_slot {
            Some(s) => {
                flags |= libc::MAP_FIXED;
                self.m.slot_addr(s)
            }
            None => 0,
        };
        let fd = self.fds.fds[ki(kind)][usize::from(!writable)];
        self.what = format!(
            "mmap({addr:#x}, {len:#x}, prot {prot:#x}, flags {flags:#x}, {kind:?} {}, off {off:#x})",
            if writable { "O_RDWR" } else { "O_RDONLY" }
        );
        let want = predict_mmap(np, kind, len, off, prot, flags, writable);
        let got = sys(libc::SYS_mmap, [addr, len, prot as u64, flags as u64, fd as u64, off]);
        let served = self.outcome(got, want);
        if let Some(a) = served {
            if fixed_slot.is_some() && a != addr {
                fail!(self, "MAP_FIXED mapping at {a:#x}");
            }
            let pages = len.div_ceil(PAGE);
            let vma = self.m.new_vma();
            let shared = flags & libc::MAP_TYPE != libc::MAP_PRIVATE;
            for i in 0..pages {
                let page = Page { kind, shared, buf_page: off / PAGE + i, prot, fd_writable: writable, copy: None, vma };
                if self.m.pages.insert(a + i * PAGE, page).is_some() {
                    fail!(self, "the kernel mapped {a:#x} over a live device mapping");
                }
            }
            self.t.mappings += 1;
        }
        if fixed_slot.is_some() {
            // A refusal from the driver comes after the old range was unmapped.
            self.m.recover_slots();
        }
    }

    /// A random existing VMA and a page-aligned subrange of it.
    fn some_range(&mut self) -> Option<(Vma, u64, u64)> {
        let vmas = self.m.vmas();
        if vmas.is_empty() {
            return None;
        }
        let v = vmas.into_iter().nth(self.rng.below(self.m.vmas().len() as u64) as usize)?;
        let pages = (v.end - v.start) / PAGE;
        let (first, n) = match self.rng.below(4) {
            0 => (0, pages),
            1 => (0, self.rng.range(1, pages)),
            2 => {
                let n = self.rng.range(1, pages);
                (pages - n, n)
            }
            _ => {
                let first = self.rng.below(pages);
                (first, self.rng.range(1, pages - first))
            }
        };
        let start = v.start + first * PAGE;
        Some((v, start, start + n * PAGE))
    }

    fn munmap(&mut self) {
        let Some((_, start, end)) = self.some_range() else { return self.mmap() };
        self.what = format!("munmap({start:#x}, {:#x})", end - start);
        let got = sys(libc::SYS_munmap, [start, end - start, 0, 0, 0, 0]);
        self.outcome(got, Ok(()));
        self.m.split_at(start);
        self.m.split_at(end);
        let gone: Vec<u64> = self.m.pages.range(start..end).map(|(a, _)| *a).collect();
        for a in gone {
            self.m.pages.remove(&a);
        }
        self.m.recover_slots();
    }

    fn mprotect(&mut self) {
        let Some((v, start, end)) = self.some_range() else { return self.mmap() };
        let prot = *self.rng.pick(&[
            libc::PROT_NONE,
            libc::PROT_READ,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::PROT_READ | libc::PROT_EXEC,
            libc::PROT_WRITE,
        ]);
        self.what = format!("mprotect({start:#x}, {:#x}, {prot:#x}) on {:?} shared={}", end - start, v.kind, v.shared);
        // A shared mapping of a read-only fd lost VM_MAYWRITE at mmap.
        let want = if v.shared && !v.fd_writable && prot & libc::PROT_WRITE != 0 { Err(libc::EACCES) } else { Ok(()) };
        let got = sys(libc::SYS_mprotect, [start, end - start, prot as u64, 0, 0, 0]);
        if self.outcome(got, want).is_some() && prot != v.prot {
            self.m.split_at(start);
            self.m.split_at(end);
            for (_, p) in self.m.pages.range_mut(start..end) {
                p.prot = prot;
            }
        }
    }

    fn mremap(&mut self) {
        let vmas = self.m.vmas();
        if vmas.is_empty() {
            return self.mmap();
        }
        let v = vmas.into_iter().nth(self.rng.below(self.m.vmas().len() as u64) as usize).unwrap();
        let len = v.end - v.start;
        let free_slot = (0..SLOTS).find(|&s| self.m.slot_is_free(s));
        let choice = self.rng.below(5);
        let (new_len, flags, new_addr, want) = match (choice, free_slot) {
            // Growing a VM_DONTEXPAND|VM_PFNMAP mapping: refused, in place or moving.
            (0, _) => (len + self.rng.range(1, 4) * PAGE, 0, 0, Err(libc::EFAULT)),
            (1, _) => (len + PAGE, libc::MREMAP_MAYMOVE, 0, Err(libc::EFAULT)),
            (2, _) if len > PAGE => (len - self.rng.range(1, len / PAGE - 1) * PAGE, 0, 0, Ok(())),
            (3, Some(s)) => (len, libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED, self.m.slot_addr(s), Ok(())),
            _ => (len, 0, 0, Ok(())),
        };
        self.what = format!("mremap({:#x}, {len:#x}, {new_len:#x}, {flags:#x}, {new_addr:#x})", v.start);
        let got = sys(libc::SYS_mremap, [v.start, len, new_len, flags as u64, new_addr, 0]);
        let Some(at) = self.outcome(got, want) else { return };
        let moved: Vec<(u64, Page)> = self.m.pages.range(v.start..v.end).map(|(a, p)| (*a, p.clone())).collect();
        for (a, _) in &moved {
            self.m.pages.remove(a);
        }
        if new_addr != 0 && at != new_addr {
            fail!(self, "MREMAP_FIXED answered {at:#x}");
        }
        if new_addr == 0 && at != v.start {
            fail!(self, "an in-place mremap answered {at:#x}");
        }
        let vma = if at == v.start { moved[0].1.vma } else { self.m.new_vma() };
        for (a, mut p) in moved.into_iter().filter(|(a, _)| a - v.start < new_len) {
            p.vma = vma;
            self.m.pages.insert(at + (a - v.start), p);
        }
        self.m.recover_slots();
    }

    /// An odd position and size, inside, across or past the end of the buffer.
    fn rw_span(&mut self) -> (i64, usize) {
        let size = self.m.size() as i64;
        let r = &mut self.rng;
        let pos = match r.below(8) {
            0 => 0,
            1..=3 => r.below(size as u64) as i64,
            4 => size - r.range(1, 8) as i64,
            5 => size + r.below(3) as i64 * PAGE as i64,
            6 => *r.pick(&[-1, -(PAGE as i64), i64::MIN, i64::MAX, i64::MAX - 8]),
            _ => (r.below(self.m.npages) * PAGE) as i64 - 1,
        };
        let len = match r.below(5) {
            0 => 0,
            1 => 1,
            2 => r.range(1, 64) as usize,
            3 => r.range(1, 2 * PAGE) as usize,
            _ => r.range(1, 2 * size as u64) as usize,
        };
        (pos, len)
    }

    /// read()/write() rules (README + the VFS's rw_verify_area()): negative position or
    /// position + length overflowing loff_t: EINVAL; reads clamp at the end and return 0
    /// there; writes starting at or past the end: ENOSPC (zero-length: 0).
    fn rw_predict(&self, pos: i64, len: usize, write: bool) -> Result<usize, i32> {
        let size = self.m.size() as i64;
        if pos < 0 || pos.checked_add(len as i64).is_none() {
            return Err(libc::EINVAL);
        }
        if pos >= size {
            return if write && len > 0 { Err(libc::ENOSPC) } else { Ok(0) };
        }
        Ok(len.min((size - pos) as usize))
    }

    fn pread(&mut self) {
        let kind = *self.rng.pick(&DeviceKind::ALL);
        let ro = usize::from(self.rng.chance(50));
        let (pos, len) = self.rw_span();
        self.what = format!("pread({kind:?}, len {len}, pos {pos})");
        let want = self.rw_predict(pos, len, false);
        let got = pread(self.fds.fds[ki(kind)][ro], len, pos);
        let n = self.outcome(got.as_ref().map(|b| b.len() as u64).map_err(|e| *e), want.map(|_| ()));
        if let (Some(n), Ok(w)) = (n, want) {
            if n as usize != w {
                fail!(self, "read {n} bytes, the model says {w}");
            }
            let start = (pos as usize).min(self.m.size() as usize);
            if got.unwrap()[..] != self.m.bufs[ki(kind)][start..start + w] {
                fail!(self, "the bytes read differ from the model's buffer");
            }
        }
    }

    fn pwrite(&mut self) {
        let kind = *self.rng.pick(&DeviceKind::ALL);
        let (pos, len) = self.rw_span();
        let data = self.rng.bytes(len);
        self.what = format!("pwrite({kind:?}, len {len}, pos {pos})");
        let want = self.rw_predict(pos, len, true);
        let got = pwrite(self.fds.fds[ki(kind)][0], &data, pos);
        let n = self.outcome(got, want.map(|_| ()));
        if let (Some(n), Ok(w)) = (n, want) {
            if n as usize != w {
                fail!(self, "wrote {n} bytes, the model says {w}");
            }
            let start = (pos as usize).min(self.m.size() as usize);
            self.m.bufs[ki(kind)][start..start + w].copy_from_slice(&data[..w]);
        }
    }

    /// A span of one VMA with odd start and length, if one allows `prot`.
    fn mapped_span(&mut self, prot: i32) -> Option<(u64, usize)> {
        let vmas: Vec<Vma> = self.m.vmas().into_iter().filter(|v| v.prot & prot == prot).collect();
        if vmas.is_empty() {
            return None;
        }
        let v = &vmas[self.rng.below(vmas.len() as u64) as usize];
        let len = v.end - v.start;
        let start = v.start + self.rng.below(len);
        let n = self.rng.range(1, (v.end - start).min(3 * PAGE));
        Some((start, n as usize))
    }

    fn load_check(&mut self) {
        let Some((addr, len)) = self.mapped_span(libc::PROT_READ) else { return self.pread() };
        self.what = format!("load {len} bytes at {addr:#x}");
        self.t.requests += 1;
        self.t.served += 1;
        if load(addr, len) != self.m.expected_range(addr, len) {
            fail!(self, "the mapping's bytes differ from the model");
        }
    }

    fn store(&mut self) {
        let Some((addr, len)) = self.mapped_span(libc::PROT_WRITE) else { return self.pwrite() };
        let data = self.rng.bytes(len);
        self.what = format!("store {len} bytes at {addr:#x}");
        self.t.requests += 1;
        self.t.served += 1;
        store(addr, &data);
        self.m.apply_store(addr, &data);
    }

    /// Calls refused before they reach a mapping: unaligned, zero-length, bad prot.
    fn bad_calls(&mut self) {
        let a = self.m.pages.keys().next().copied().unwrap_or(self.m.arena);
        let (name, nr, args, want) = match self.rng.below(5) {
            0 => ("munmap unaligned", libc::SYS_munmap, [a + 1, PAGE, 0, 0, 0, 0], libc::EINVAL),
            1 => ("munmap len 0", libc::SYS_munmap, [a, 0, 0, 0, 0, 0], libc::EINVAL),
            2 => ("mprotect unaligned", libc::SYS_mprotect, [a + 3, PAGE, libc::PROT_READ as u64, 0, 0, 0], libc::EINVAL),
            3 => ("mprotect bad prot", libc::SYS_mprotect, [a, PAGE, 0x100, 0, 0, 0], libc::EINVAL),
            _ => ("mremap new_len 0", libc::SYS_mremap, [a, PAGE, 0, 0, 0, 0], libc::EINVAL),
        };
        self.what = name.to_owned();
        let got = sys(nr, args);
        self.outcome(got, Err(want));
    }

    /// fork with every mapping held: the child checks what it sees, stores through a
    /// shared mapping (the parent must see it) and a private one (it must not), and
    /// waits while the parent counts twice the VMAs.
    fn fork(&mut self) {
        self.what = "fork".into();
        let refused = self.m.fork_refused();
        let shared_w = self.m.vmas().into_iter().find(|v| v.shared && v.prot & libc::PROT_WRITE != 0);
        let private_w = self.m.vmas().into_iter().find(|v| !v.shared && v.prot & libc::PROT_WRITE != 0);
        let readable: Vec<(u64, usize)> = (0..3).filter_map(|_| self.mapped_span(libc::PROT_READ)).collect();
        let child_data = self.rng.bytes(16);
        let mut up = [0i32; 2];
        let mut down = [0i32; 2];
        // SAFETY: plain pipes.
        unsafe {
            assert_eq!(libc::pipe(up.as_mut_ptr()), 0);
            assert_eq!(libc::pipe(down.as_mut_ptr()), 0);
        }
        // SAFETY: this program is single-threaded here; the child only uses memory it
        // inherited and exits with _exit.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            let mut code = 0;
            for (addr, len) in &readable {
                if load(*addr, *len) != self.m.expected_range(*addr, *len) {
                    code = 3;
                }
            }
            if let Some(v) = &shared_w {
                store(v.start, &child_data);
            }
            if let Some(v) = &private_w {
                store(v.start, &[0x5a; 16]);
            }
            let mut b = [code as u8];
            // SAFETY: pipe fds and a one-byte buffer.
            unsafe {
                libc::write(up[1], b.as_ptr().cast(), 1);
                libc::read(down[0], b.as_mut_ptr().cast(), 1);
                libc::_exit(code);
            }
        }
        if pid < 0 && refused && std::io::Error::last_os_error().raw_os_error() == Some(libc::ENOMEM) {
            self.t.forks_refused += 1;
            self.outcome(Err(libc::ENOMEM), Err(libc::ENOMEM));
            // SAFETY: our own pipe fds.
            unsafe { up.into_iter().chain(down).for_each(|fd| { libc::close(fd); }) };
            return;
        }
        if pid < 0 {
            let e = std::io::Error::last_os_error();
            let maps: String = std::fs::read_to_string("/proc/self/smaps")
                .unwrap_or_default()
                .lines()
                .filter(|l| l.contains('-') && !l.contains(':') || l.contains("-") && l.contains("/dev") || l.starts_with("VmFlags") || l.starts_with("Size"))
                .map(|l| format!("{l}\n"))
                .collect();
            fail!(self, "fork: {e}; /proc/self/maps:\n{maps}");
        }
        self.t.forks += 1;
        self.t.requests += 1;
        let mut b = [0u8];
        // SAFETY: pipe fds and a one-byte buffer.
        unsafe { libc::read(up[0], b.as_mut_ptr().cast(), 1) };
        let vmas = self.m.vmas();
        for kind in DeviceKind::ALL {
            let mine = vmas.iter().filter(|v| v.kind == kind).count() as i64;
            let live = live_maps(kind).unwrap_or(-1);
            if live != 2 * mine {
                fail!(self, "{kind:?}: {live} live mappings with the child holding copies, want {}", 2 * mine);
            }
        }
        let mut status = 0;
        // SAFETY: pipe fds, our own child.
        unsafe {
            libc::write(down[1], b.as_ptr().cast(), 1);
            libc::waitpid(pid, &mut status, 0);
            for fd in up.into_iter().chain(down) {
                libc::close(fd);
            }
        }
        if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
            fail!(self, "the child failed (wait status {status:#x}; 3: it saw bytes that differ from the model)");
        }
        if refused {
            fail!(self, "fork succeeded; the model predicted ENOMEM (a private VMA starts with a COW page)");
        }
        self.t.served += 1;
        if let Some(v) = shared_w {
            self.m.apply_store(v.start, &child_data);
        }
        self.check_all();
    }

    /// /proc/self/maps and the driver's counters against the model; every mapped byte
    /// and both buffers against the model.
    fn check_all(&mut self) {
        self.t.checks += 1;
        let what = std::mem::replace(&mut self.what, "check".into());
        let maps = std::fs::read_to_string("/proc/self/maps").expect("/proc/self/maps");
        let lines: Vec<_> = parse_maps(&maps)
            .expect("parse maps")
            .into_iter()
            .filter(|l| l.name.as_deref().is_some_and(|n| n.starts_with("/dev/mmtrace-")))
            .collect();
        let vmas = self.m.vmas();
        let want: Vec<(u64, u64, String, String)> = vmas
            .iter()
            .map(|v| {
                let bit = |p, c| if v.prot & p != 0 { c } else { '-' };
                let perms = format!(
                    "{}{}{}{}",
                    bit(libc::PROT_READ, 'r'),
                    bit(libc::PROT_WRITE, 'w'),
                    bit(libc::PROT_EXEC, 'x'),
                    if v.shared { 's' } else { 'p' }
                );
                (v.start, v.end, perms, v.kind.dev_path())
            })
            .collect();
        let got: Vec<(u64, u64, String, String)> =
            lines.iter().map(|l| (l.start, l.end, l.perms.clone(), l.name.clone().unwrap_or_default())).collect();
        if got != want {
            fail!(self, "after {what}: /proc/self/maps device lines differ from the model:\n got  {got:x?}\n want {want:x?}");
        }
        for kind in DeviceKind::ALL {
            let n = vmas.iter().filter(|v| v.kind == kind).count() as i64;
            match live_maps(kind) {
                Ok(live) if live == n => {}
                other => fail!(self, "after {what}: {kind:?} live mappings {other:?}, the model has {n} VMAs"),
            }
            let buf = pread(self.fds.fds[ki(kind)][0], self.m.size() as usize, 0).expect("pread whole buffer");
            if buf != self.m.bufs[ki(kind)] {
                let at = buf.iter().zip(&self.m.bufs[ki(kind)]).position(|(a, b)| a != b);
                fail!(self, "after {what}: {kind:?} buffer differs from the model at byte {at:?}");
            }
        }
        for v in vmas.iter().filter(|v| v.prot & libc::PROT_READ != 0) {
            let len = (v.end - v.start) as usize;
            if load(v.start, len) != self.m.expected_range(v.start, len) {
                fail!(self, "after {what}: the mapping at {:#x} differs from the model", v.start);
            }
        }
        self.what = what;
    }
}

/// What the kernel (do_mmap(), file_mmap_ok()) and the driver answer, in their order.
fn predict_mmap(npages: u64, kind: DeviceKind, len: u64, off: u64, prot: i32, flags: i32, writable: bool) -> Result<(), i32> {
    if off % PAGE != 0 || len == 0 {
        return Err(libc::EINVAL);
    }
    let Some(alen) = len.checked_next_multiple_of(PAGE) else { return Err(libc::ENOMEM) };
    let pgoff = off / PAGE;
    if alen > TASK_SIZE {
        return Err(libc::ENOMEM);
    }
    // file_mmap_ok(): a character device may map up to ULONG_MAX bytes of offset + length.
    if pgoff > (u64::MAX - alen) >> 12 {
        return Err(libc::EOVERFLOW);
    }
    let shared = match flags & libc::MAP_TYPE {
        libc::MAP_SHARED => true,
        libc::MAP_SHARED_VALIDATE => {
            if flags & libc::MAP_SYNC != 0 {
                return Err(libc::EOPNOTSUPP);
            }
            true
        }
        libc::MAP_PRIVATE => false,
        _ => return Err(libc::EINVAL),
    };
    if shared && prot & libc::PROT_WRITE != 0 && !writable {
        return Err(libc::EACCES);
    }
    // mmap_region() charges a private writable mapping against the commit limit before
    // the driver sees it (the 1 GiB request in a 1 GiB guest).
    if !shared && prot & libc::PROT_WRITE != 0 && flags & libc::MAP_NORESERVE == 0 && alen / PAGE > commit_limit_pages() {
        return Err(libc::ENOMEM);
    }
    // The driver (mmtrace_check_request()).
    if pgoff >= npages {
        return Err(libc::ENXIO);
    }
    if pgoff + alen / PAGE > npages {
        return Err(libc::EINVAL);
    }
    if kind == DeviceKind::Vmalloc && !shared {
        return Err(libc::EINVAL);
    }
    Ok(())
}

/// The pages __vm_enough_memory() lets one mapping charge: RAM + swap under the default
/// heuristic overcommit (mode 0), unlimited under mode 1.
fn commit_limit_pages() -> u64 {
    let mode = std::fs::read_to_string("/proc/sys/vm/overcommit_memory").unwrap_or_default();
    match mode.trim() {
        "1" => u64::MAX,
        "0" => {
            // SAFETY: sysinfo fills the struct.
            let mut si: libc::sysinfo = unsafe { std::mem::zeroed() };
            assert_eq!(unsafe { libc::sysinfo(&mut si) }, 0);
            (si.totalram + si.totalswap) * u64::from(si.mem_unit) / PAGE
        }
        other => panic!("vm.overcommit_memory={other:?}: the model knows modes 0 and 1 only"),
    }
}

// ------------------------------------------------------------------------ concurrent

fn concurrent(slot: u64, slots: u64, threads: u64, rounds: u64) {
    let npages = npages();
    let parts = slots * threads;
    let part_pages = npages / parts;
    assert!(part_pages >= 1, "{npages} pages cannot be split into {parts} parts");
    let mmaps = AtomicU64::new(0);
    let checks = AtomicU64::new(0);
    std::thread::scope(|s| {
        for t in 0..threads {
            let (mmaps, checks) = (&mmaps, &checks);
            s.spawn(move || {
                let part = slot * threads + t;
                let first = part * part_pages;
                let mut rng = Rng::new(part);
                for round in 0..rounds {
                    for kind in DeviceKind::ALL {
                        hammer(kind, npages, first, part_pages, round, &mut rng, mmaps, checks);
                    }
                }
            });
        }
    });
    println!(
        "STRESS-RESULT mode=concurrent slot={slot} threads={threads} rounds={rounds} mmaps={} checks={}",
        mmaps.into_inner(),
        checks.into_inner()
    );
}

/// One round on one device for the thread owning pages first..first+n.
#[allow(clippy::too_many_arguments)]
fn hammer(kind: DeviceKind, npages: u64, first: u64, n: u64, round: u64, rng: &mut Rng, mmaps: &AtomicU64, checks: &AtomicU64) {
    let fd = open(&kind.dev_path(), libc::O_RDWR);
    let rw = (libc::PROT_READ | libc::PROT_WRITE) as u64;
    let die = |what: String| -> ! {
        println!("STRESS-FAIL concurrent {kind:?} pages {first}+{n} round {round}: {what}");
        std::process::exit(1)
    };
    let map = |len: u64, flags: i32, off: u64| {
        mmaps.fetch_add(1, Ordering::Relaxed);
        sys(libc::SYS_mmap, [0, len, rw, flags as u64, fd as u64, off])
            .unwrap_or_else(|e| die(format!("mmap {len:#x} at {off:#x}: {}", errno_name(e))))
    };
    let (mine, len) = (first * PAGE, (n * PAGE) as usize);
    // The whole buffer, shared: store into our part, read it back with pread.
    let whole = map(npages * PAGE, libc::MAP_SHARED, 0);
    let data = rng.bytes(len);
    store(whole + mine, &data);
    let _ = load(whole, (npages * PAGE) as usize); // others' parts: read, not checked
    if pread(fd, len, mine as i64).ok().as_deref() != Some(&data[..]) {
        die("a store through the mapping is not what pread returns".into());
    }
    // pwrite, then the mapping must show it.
    let data = rng.bytes(len);
    if pwrite(fd, &data, mine as i64) != Ok(len as u64) {
        die("short pwrite".into());
    }
    if load(whole + mine, len) != data {
        die("pwrite not visible through the whole-buffer mapping".into());
    }
    sys(libc::SYS_munmap, [whole, npages * PAGE, 0, 0, 0, 0]).unwrap();
    // Only our part, from its offset.
    let part = map(n * PAGE, libc::MAP_SHARED, mine);
    if load(part, len) != data {
        die("the part mapped at its offset differs".into());
    }
    if kind == DeviceKind::Kmalloc {
        // A private copy: stores stay in this process, the buffer keeps our bytes.
        let private = map(n * PAGE, libc::MAP_PRIVATE, mine);
        store(private, &rng.bytes(len));
        if pread(fd, len, mine as i64).ok().as_deref() != Some(&data[..]) {
            die("a store to a private mapping reached the buffer".into());
        }
        sys(libc::SYS_munmap, [private, n * PAGE, 0, 0, 0, 0]).unwrap();
    }
    sys(libc::SYS_munmap, [part, n * PAGE, 0, 0, 0, 0]).unwrap();
    checks.fetch_add(1, Ordering::Relaxed);
    // SAFETY: our own fd.
    unsafe { libc::close(fd) };
}

// ------------------------------------------------------------------------ mremap burst

fn mremap_burst(n: u64) {
    let rw = (libc::PROT_READ | libc::PROT_WRITE) as u64;
    let anon = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64;
    let a = sys(libc::SYS_mmap, [0, PAGE, rw, anon, u64::MAX, 0]).expect("mmap");
    for _ in 0..n {
        // Same size, no flags: a no-op the kernel answers with the address.
        sys(libc::SYS_mremap, [a, PAGE, PAGE, 0, 0, 0]).expect("mremap");
    }
    println!("STRESS-RESULT mode=mremap-burst calls={n}");
}
