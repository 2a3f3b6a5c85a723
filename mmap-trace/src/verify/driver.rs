//! `mmap-trace verify-driver`: map a character device in this process with every kernel
//! probe attached, touch each page, and check end to end that the events, /proc/self/maps
//! and the page tables tell the same story. Any driver: the generic checks (its mmap hook
//! found from `f_op->mmap` through /proc/kallsyms and seen, mmap_region, the VMA flags the
//! mapping API implies, traced PFNs == page tables, the maps line, munmap). mmtrace_drv's
//! own devices add the checks only they can pass (PFN list, pattern, coherency); a check
//! that cannot apply to a device is "n/a" with the reason, never a PASS.

use std::{
    collections::BTreeMap,
    os::{fd::AsRawFd as _, unix::ffi::OsStrExt as _, unix::fs::MetadataExt as _},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};
use mmap_trace_common::{
    DriverMmapEvent, MmapRegionEvent, PageInsertEvent, Probe, RemapPfnEvent, TargetFilter,
};
use mmtrace_driver_abi::{self as driver, DeviceKind, PAGE, PATTERN, vm};

use crate::{
    kernel::decode::{self, Event, c_str},
    kernel::loader::{LoadOptions, Tracer},
    output::{Format, flags, write_record},
    schema::{CheckRecord, DriverSummaryRecord, Verdict},
    space::{self, Backing},
};

/// Self-test: doctor one input so that the checks must fail (hidden flag).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DriverPlant {
    /// Add one to every PFN of the driver's list.
    PfnOffByOne,
}

pub struct VerifyDriverConfig {
    pub devices: Vec<PathBuf>,
    pub offset: u64,
    pub pages: Option<u64>,
    pub private: bool,
    pub format: Format,
    pub btf: PathBuf,
    pub plant: Option<DriverPlant>,
}

struct Checks {
    device: String,
    list: Vec<CheckRecord>,
}

impl Checks {
    fn record(&mut self, check: &'static str, result: Verdict, detail: String) {
        self.list.push(CheckRecord {
            device: self.device.clone(),
            check: check.to_owned(),
            pass: result == Verdict::Pass,
            result,
            detail,
        });
    }

    fn add(&mut self, check: &'static str, pass: bool, detail: impl Into<String>) {
        let result = if pass { Verdict::Pass } else { Verdict::Fail };
        self.record(check, result, detail.into());
    }

    fn na(&mut self, check: &'static str, why: impl Into<String>) {
        self.record(check, Verdict::NotApplicable, why.into());
    }
}

/// The kernel probes verify-driver attaches; the page-insertion ones this kernel lacks
/// are skipped (and named in the checks that would use them).
fn probes() -> Vec<Probe> {
    let mut probes = vec![
        Probe::Mmap,
        Probe::Munmap,
        Probe::MmapRegion,
        Probe::RemapPfnRange,
        Probe::DriverMmap,
    ];
    probes.extend(Probe::ALL.iter().filter(|p| p.is_page_insert()));
    probes
}

fn load(btf: &Path, requested: Vec<Probe>, driver_hooks: Vec<String>) -> Result<Tracer> {
    Tracer::load(&LoadOptions {
        filter: TargetFilter {
            tgid: std::process::id(),
            ..TargetFilter::default()
        },
        cgroup: Default::default(),
        requested: Some(requested),
        btf: btf.to_owned(),
        ring_buffer_bytes: 1 << 20,
        driver_hooks,
        // Skip what this kernel cannot serve (page-insertion functions it lacks).
        implicit: true,
        stacks: false,
    })
}

/// Returns whether every check that applies passed.
pub fn run(config: VerifyDriverConfig) -> Result<bool> {
    crate::kernel::require_root("verify-driver")?;
    let kallsyms = std::fs::read_to_string("/proc/kallsyms").context("reading /proc/kallsyms")?;
    let mut all = Vec::new();
    for device in &config.devices {
        if device.to_string_lossy().starts_with(driver::DEV_PREFIX) && !driver::is_loaded() {
            bail!(
                "the {} module is not loaded: insmod mmtrace_drv.ko first",
                driver::MODULE
            );
        }
        std::fs::metadata(device).with_context(|| format!("cannot open {}", device.display()))?;
        // One of ours only when the module is loaded and the device number is one of its.
        let kind = if driver::is_loaded() {
            DeviceKind::of_device(device).ok()
        } else {
            None
        };
        all.extend(check_device(&config, &kallsyms, device, kind)?.list);
    }
    print(&all, config.format)?;
    Ok(all.iter().all(|c| c.result != Verdict::Fail))
}

fn print(checks: &[CheckRecord], format: Format) -> Result<()> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    let count = |v: Verdict| checks.iter().filter(|c| c.result == v).count();
    let (passed, failed, na) = (
        count(Verdict::Pass),
        count(Verdict::Fail),
        count(Verdict::NotApplicable),
    );
    match format {
        Format::Json => {
            for c in checks {
                write_record(&mut out, c)?;
            }
            let summary = DriverSummaryRecord {
                checks: checks.len() as u64,
                passed: passed as u64,
                failed: failed as u64,
                not_applicable: na as u64,
            };
            write_record(&mut out, &summary)?;
        }
        Format::Table => {
            writeln!(
                out,
                "{:<22} {:<46} {:<6} DETAIL",
                "DEVICE", "CHECK", "RESULT"
            )?;
            for c in checks {
                writeln!(
                    out,
                    "{:<22} {:<46} {:<6} {}",
                    c.device,
                    c.check,
                    c.result.name(),
                    c.detail
                )?;
            }
            let verdict = if failed == 0 { "PASS" } else { "FAIL" };
            let na = if na > 0 {
                format!(" ({na} n/a)")
            } else {
                String::new()
            };
            writeln!(
                out,
                "{verdict}: {passed} of {} checks passed{na}",
                checks.len() - count(Verdict::NotApplicable)
            )?;
        }
    }
    Ok(())
}

/// A mapping of the device, unmapped on drop.
struct Mapping {
    addr: u64,
    len: u64,
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmapping the range we mapped.
        unsafe { libc::munmap(self.addr as *mut libc::c_void, self.len as usize) };
    }
}

/// The device opened read-write, or read-only where the driver refuses writers
/// (/dev/hpet), with the protection a shared mapping of it may have.
fn open(device: &Path) -> Result<(std::fs::File, i32)> {
    let rw = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(device);
    match rw {
        Ok(file) => Ok((file, libc::PROT_READ | libc::PROT_WRITE)),
        Err(_) => Ok((
            std::fs::File::open(device)
                .with_context(|| format!("cannot open {}", device.display()))?,
            libc::PROT_READ,
        )),
    }
}

fn mmap(
    file: &std::fs::File,
    device: &Path,
    len: u64,
    prot: i32,
    private: bool,
    offset: u64,
) -> Result<Mapping> {
    let share = if private {
        libc::MAP_PRIVATE
    } else {
        libc::MAP_SHARED
    };
    // SAFETY: a fresh mapping of the device; only accessed through `Mapping`'s range.
    let addr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len as usize,
            prot,
            share,
            file.as_raw_fd(),
            (offset * PAGE) as libc::off_t,
        )
    };
    if addr == libc::MAP_FAILED {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::ENODEV) {
            bail!(
                "{} does not support mmap (ENODEV: its driver has no f_op->mmap)",
                device.display()
            );
        }
        bail!(
            "mmap of {} ({} pages at page {offset}) failed: {err}",
            device.display(),
            len / PAGE
        );
    }
    Ok(Mapping {
        addr: addr as u64,
        len,
    })
}

/// The symbol at `addr` in /proc/kallsyms (`name` or `name [module]`).
fn symbol_at(kallsyms: &str, addr: u64) -> Option<String> {
    kallsyms.lines().find_map(|line| {
        let mut f = line.split_whitespace();
        let a = u64::from_str_radix(f.next()?, 16).ok()?;
        let _kind = f.next()?;
        let name = f.next()?;
        (a == addr && a != 0).then(|| name.to_owned())
    })
}

/// A device's mmap hook, by its symbol.
enum Hook {
    /// `f_op->mmap(file, vma)`: the driver_mmap probe sees the VMA before and after.
    Mmap(String),
    /// `f_op->mmap_prepare(desc)` (6.17+): the driver fills a `vm_area_desc` before the
    /// VMA exists and the kernel completes the mapping (the mmap_action probe).
    Prepare(String),
}

/// The device's mmap hook: one mmap of its first page under the mmap_region probe,
/// which reads `file->f_op->mmap` (and `mmap_prepare`); its name from /proc/kallsyms.
fn discover_hook(
    config: &VerifyDriverConfig,
    kallsyms: &str,
    device: &Path,
) -> Result<Result<Hook, String>> {
    let mut tracer = load(&config.btf, vec![Probe::MmapRegion], Vec::new())?;
    let mut ring = tracer.take_events()?;
    let (file, prot) = open(device)?;
    let mut malformed = 0;
    let mapping = mmap(&file, device, PAGE, prot, config.private, config.offset)?;
    let addr = mapping.addr;
    drop(mapping);
    let hook = decode::drain_all(&mut ring, &mut malformed)
        .iter()
        .find_map(|e| match e {
            Event::MmapRegion(r) if r.ret as u64 == addr => {
                Some((r.mmap_hook, r.mmap_prepare_hook))
            }
            _ => None,
        });
    let name = |a: u64, what: &str| {
        symbol_at(kallsyms, a)
            .ok_or_else(|| format!("{what} is {a:#x}, which /proc/kallsyms does not name"))
    };
    Ok(match hook {
        None => Err("no mmap_region event for the discovery mmap".into()),
        Some((0, 0)) => Err("the file has neither f_op->mmap nor f_op->mmap_prepare".into()),
        Some((0, prepare)) => name(prepare, "f_op->mmap_prepare").map(Hook::Prepare),
        Some((mmap, _)) => name(mmap, "f_op->mmap").map(Hook::Mmap),
    })
}

fn check_device(
    config: &VerifyDriverConfig,
    kallsyms: &str,
    device: &Path,
    kind: Option<DeviceKind>,
) -> Result<Checks> {
    let mut checks = Checks {
        device: device.display().to_string(),
        list: Vec::new(),
    };
    let offset = config.offset;
    // Our devices: the buffer bounds the request; anyone else's: what was asked.
    let pages = match kind {
        Some(kind) => {
            let npages = driver::npages()?;
            if offset >= npages {
                bail!("--offset {offset} is past the {npages}-page buffer");
            }
            let pages = config.pages.unwrap_or_else(|| (npages - offset).min(4));
            if pages == 0 || offset + pages > npages {
                bail!("--offset {offset} --pages {pages} does not fit the {npages}-page buffer");
            }
            if config.private && !kind.serves_private() {
                bail!(
                    "{} serves shared mappings only (page-by-page remap_pfn_range cannot serve a private mapping); drop --private",
                    device.display()
                );
            }
            pages
        }
        None => config.pages.unwrap_or(1),
    };
    if pages == 0 {
        bail!("--pages 0: nothing to map");
    }
    let hook = discover_hook(config, kallsyms, device)?;
    const FOUND: &str = "mmap hook found (f_op->mmap)";
    let hooks = match &hook {
        Ok(Hook::Mmap(name)) => {
            checks.add(FOUND, true, format!("{name} (from /proc/kallsyms)"));
            vec![name.clone()]
        }
        Ok(Hook::Prepare(name)) => {
            checks.add(
                FOUND,
                true,
                format!("{name} (f_op->mmap_prepare, from /proc/kallsyms)"),
            );
            Vec::new()
        }
        Err(why) => {
            checks.add(FOUND, false, why.clone());
            Vec::new()
        }
    };
    let mut requested = probes();
    if hooks.is_empty() {
        requested.retain(|p| *p != Probe::DriverMmap);
    }
    let mut tracer = load(&config.btf, requested, hooks)?;
    let skipped: Vec<String> = tracer
        .skipped
        .iter()
        .map(|(p, why)| format!("{} ({why})", p.name()))
        .collect();
    let mut ring = tracer.take_events()?;
    let mut malformed = 0;

    let mut pfns = match kind {
        Some(kind) => driver::buffer_pfns(kind)?,
        None => Vec::new(),
    };
    if config.plant == Some(DriverPlant::PfnOffByOne) {
        pfns.iter_mut().for_each(|p| *p += 1);
    }
    let expected: Vec<u64> = pfns
        .get(offset as usize..(offset + pages) as usize)
        .unwrap_or_default()
        .to_vec();
    let (file, prot) = open(device)?;
    let dev_inode = file.metadata()?.ino();
    let len = pages * PAGE;
    let _ = decode::drain_all(&mut ring, &mut malformed);
    let mapping = mmap(&file, device, len, prot, config.private, offset)?;
    let at_mmap = decode::drain_all(&mut ring, &mut malformed);
    // Touch every page (a read), so a driver that maps on fault maps them all.
    for page in 0..pages {
        // SAFETY: inside our live mapping.
        unsafe { std::ptr::read_volatile((mapping.addr + page * PAGE) as *const u8) };
    }
    let at_touch = decode::drain_all(&mut ring, &mut malformed);
    let events: Vec<Event> = at_mmap.iter().chain(&at_touch).copied().collect();
    let dev_name = device
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // The driver may be reached through another node name: the kernel reports the node's.
    let kernel_name = std::fs::canonicalize(device)
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or(dev_name);

    let hook_event = check_hook(&mut checks, &events, &mapping, offset, &kernel_name, &hook);
    check_mmap_region(&mut checks, &events, &mapping, offset, &kernel_name);
    let traced = traced_pfns(&events, &mapping);
    check_api_flags(
        &mut checks,
        &events,
        &mapping,
        hook_event.as_ref(),
        &traced,
        &skipped,
    );
    check_traced_pfns(&mut checks, &mapping, &traced)?;
    let remaps: Vec<&RemapPfnEvent> = events
        .iter()
        .filter_map(|e| match e {
            Event::RemapPfn(r) if r.vma.vm_start == mapping.addr => Some(r),
            _ => None,
        })
        .collect();
    check_maps_line(
        &mut checks,
        &mapping,
        offset,
        dev_inode,
        device,
        config.private,
        &remaps,
    )?;
    match kind {
        Some(kind) => {
            check_remaps(&mut checks, kind, &remaps, &at_touch, &mapping, &expected);
            check_page_tables(&mut checks, kind, &mapping, &expected)?;
            check_bytes(&mut checks, &file, &mapping, offset, config.private)?;
        }
        None => {
            let why = "only mmtrace_drv's devices have a known PFN list, pattern and buffer";
            checks.na("driver's PFN list", why);
            checks.na("pattern and read/write coherency", why);
        }
    }
    if driver::is_loaded() {
        check_driver_walk(&mut checks)?;
    } else {
        checks.na(
            "driver VMA walk == /proc/self/maps",
            "mmtrace_drv is not loaded",
        );
    }
    let addr = mapping.addr;
    drop(mapping);
    let unmapped = decode::drain_all(&mut ring, &mut malformed).iter().any(|e| matches!(e, Event::Syscall(s) if s.header.probe == Probe::Munmap as u32 && s.args[0] == addr));
    checks.add(
        "munmap traced",
        unmapped,
        if unmapped {
            "munmap event seen"
        } else {
            "no munmap event"
        },
    );
    if malformed > 0 {
        checks.add(
            "no malformed records",
            false,
            format!("{malformed} records could not be decoded"),
        );
    }
    let lost: u64 = tracer.lost()?.iter().sum();
    if lost > 0 {
        checks.add("no events lost", false, format!("{lost} events lost"));
    }
    Ok(checks)
}

/// What the traced mapping calls put at each page of the mapping: address → (PFN, the
/// function). remap_pfn_range (vm_iomap_memory's too) covers its range; the insert
/// functions one page each, vm_insert_pages its first page (the others' PFNs are not in
/// the event); remap_vmalloc_range's pages come as vm_insert_page events.
fn traced_pfns(events: &[Event], m: &Mapping) -> BTreeMap<u64, (u64, &'static str)> {
    let mut out = BTreeMap::new();
    let inside = |a: u64| a >= m.addr && a < m.addr + m.len;
    for e in events {
        match e {
            Event::RemapPfn(r) if r.vma.vm_start == m.addr => {
                for i in 0..r.size / PAGE {
                    if inside(r.addr + i * PAGE) {
                        out.insert(r.addr + i * PAGE, (r.pfn + i, "remap_pfn_range"));
                    }
                }
            }
            // vm_iomap_memory's pages come as its remap_pfn_range event.
            Event::PageInsert(p)
                if p.vma.vm_start == m.addr
                    && p.pfn != 0
                    && inside(p.addr)
                    && p.header.probe != Probe::VmIomapMemory as u32 =>
            {
                let probe = Probe::from_u32(p.header.probe).map_or("?", |p| p.name());
                // A remap action is one contiguous range; the others, their first page.
                let contiguous =
                    p.header.probe == Probe::MmapAction as u32 && p.action != MAP_KERNEL_PAGES;
                let pages = if contiguous { p.pages } else { 1 };
                for i in 0..pages {
                    if inside(p.addr + i * PAGE) {
                        out.entry(p.addr + i * PAGE).or_insert((p.pfn + i, probe));
                    }
                }
            }
            _ => {}
        }
    }
    out
}

/// `enum mmap_action_type`'s MMAP_MAP_KERNEL_PAGES (the others remap a PFN range).
const MAP_KERNEL_PAGES: u32 = 4;

fn insert_events<'a>(events: &'a [Event], m: &Mapping) -> Vec<&'a PageInsertEvent> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::PageInsert(p) if p.vma.vm_start == m.addr => Some(p),
            _ => None,
        })
        .collect()
}

/// The VMA flags the traced API implies: remap_pfn_range (and vm_iomap_memory, which
/// calls it, and an mmap_action remap) sets IO|PFNMAP|DONTEXPAND|DONTDUMP;
/// vm_insert_page(s), vmf_insert_mixed and mapping kernel pages need MIXEDMAP (vm_insert_page sets it when called from mmap); vmf_insert_pfn needs
/// PFNMAP or MIXEDMAP. Read from the latest VMA snapshot of an event.
fn check_api_flags(
    checks: &mut Checks,
    events: &[Event],
    m: &Mapping,
    hook: Option<&DriverMmapEvent>,
    traced: &BTreeMap<u64, (u64, &'static str)>,
    skipped: &[String],
) {
    const CHECK: &str = "VMA flags match the mapping API";
    let inserts = insert_events(events, m);
    let action = |p: &&PageInsertEvent| p.header.probe == Probe::MmapAction as u32;
    let remapped = events
        .iter()
        .any(|e| matches!(e, Event::RemapPfn(r) if r.vma.vm_start == m.addr))
        || inserts
            .iter()
            .any(|p| action(p) && p.action != MAP_KERNEL_PAGES);
    // The VMA as it stood last: an insert after the hook returned (a fault), else the
    // hook's return (an insert during mmap saw the VMA before the driver was done).
    let hook_ts = hook.map_or(0, |h| h.header.ts_ns);
    let flags = inserts
        .iter()
        .rfind(|p| p.header.ts_ns > hook_ts)
        .map(|p| p.vma.vm_flags)
        .or(hook.map(|h| h.after.vm_flags))
        .or(inserts.last().map(|p| p.vma.vm_flags));
    let Some(flags) = flags else {
        checks.add(
            CHECK,
            false,
            "no event carries the VMA (no driver_mmap, no insert)",
        );
        return;
    };
    let mut apis: Vec<&str> = traced.values().map(|(_, api)| *api).collect();
    apis.sort();
    apis.dedup();
    let mut wrong = Vec::new();
    if remapped && flags & vm::REMAP_PFN_RANGE != vm::REMAP_PFN_RANGE {
        wrong.push("remap_pfn_range without IO|PFNMAP|DONTEXPAND|DONTDUMP");
    }
    let mixed = |p: &&&PageInsertEvent| {
        [
            Probe::VmInsertPage,
            Probe::VmInsertPages,
            Probe::VmfInsertMixed,
        ]
        .iter()
        .any(|x| *x as u32 == p.header.probe)
            || (action(p) && p.action == MAP_KERNEL_PAGES)
    };
    if inserts.iter().any(|p| mixed(&p)) && flags & vm::MIXEDMAP == 0 {
        wrong.push("vm_insert_page(s)/vmf_insert_mixed without MIXEDMAP");
    }
    if inserts
        .iter()
        .any(|p| p.header.probe == Probe::VmfInsertPfn as u32)
        && flags & (vm::PFNMAP | vm::MIXEDMAP) == 0
    {
        wrong.push("vmf_insert_pfn without PFNMAP or MIXEDMAP");
    }
    if !remapped && inserts.is_empty() {
        let also = if skipped.is_empty() {
            String::new()
        } else {
            format!("; not attached here: {}", skipped.join(", "))
        };
        checks.add(
            CHECK,
            false,
            format!("no mapping API traced for the VMA after touching every page{also}"),
        );
        return;
    }
    let used = if remapped && !apis.contains(&"remap_pfn_range") {
        apis.push("remap_pfn_range");
        apis
    } else {
        apis
    };
    checks.add(
        CHECK,
        wrong.is_empty(),
        format!(
            "{} via {}{}",
            flags::decode(flags::VM, flags),
            used.join(", "),
            if wrong.is_empty() {
                String::new()
            } else {
                format!(": {}", wrong.join("; "))
            }
        ),
    );
}

/// Every page, touched: the page tables (the module's walk of this process) hold the
/// PFN a traced call put there.
fn check_traced_pfns(
    checks: &mut Checks,
    m: &Mapping,
    traced: &BTreeMap<u64, (u64, &'static str)>,
) -> Result<()> {
    const CHECK: &str = "traced PFNs == page tables (every page touched)";
    if !driver::is_loaded() {
        checks.na(
            CHECK,
            "the page-table truth is mmtrace_drv's range walk: insmod mmtrace_drv.ko",
        );
        return Ok(());
    }
    let table = driver::range_page_table(m.addr, m.addr + m.len)?;
    let mut problems = Vec::new();
    for (addr, pfn) in &table {
        match (pfn, traced.get(addr)) {
            (Some(p), Some((t, _))) if p == t => {}
            (Some(p), Some((t, api))) => {
                problems.push(format!("{addr:#x}: table {p:#x}, {api} {t:#x}"))
            }
            (Some(p), None) => problems.push(format!(
                "{addr:#x}: table {p:#x}, no traced call put it there"
            )),
            (None, _) => problems.push(format!("{addr:#x}: not present after a touch")),
        }
    }
    let shown: Vec<String> = table
        .iter()
        .map(|(_, p)| p.map_or("-".into(), |p| format!("{p:x}")))
        .collect();
    checks.add(
        CHECK,
        problems.is_empty() && !table.is_empty(),
        if problems.is_empty() {
            format!("{} pages [{}]", table.len(), shown.join(", "))
        } else {
            problems.join("; ")
        },
    );
    Ok(())
}

fn vma_str(v: &mmap_trace_common::VmaFields) -> String {
    format!(
        "{:#x}-{:#x} pgoff {:#x} {}",
        v.vm_start,
        v.vm_end,
        v.vm_pgoff,
        flags::decode(flags::VM, v.vm_flags)
    )
}

/// The driver's mmap hook (kprobe + kretprobe on the symbol found) saw this VMA and
/// returned 0. Returns its event, for the flags it left.
fn check_hook(
    checks: &mut Checks,
    events: &[Event],
    m: &Mapping,
    offset: u64,
    name: &str,
    hook: &Result<Hook, String>,
) -> Option<DriverMmapEvent> {
    const CHECK: &str = "driver hook saw the VMA";
    match hook {
        Err(_) => {
            checks.na(CHECK, "no hook to attach to (see the check above)");
            return None;
        }
        Ok(Hook::Prepare(name)) => {
            checks.na(
                CHECK,
                format!(
                    "{name} is an mmap_prepare hook: it fills a vm_area_desc before the VMA \
                     exists; mmap_region and the kernel's mmap_action describe the VMA"
                ),
            );
            return None;
        }
        Ok(Hook::Mmap(_)) => {}
    }
    let hooks: Vec<&DriverMmapEvent> = events
        .iter()
        .filter_map(|e| match e {
            Event::DriverMmap(h) => Some(h),
            _ => None,
        })
        .collect();
    let Some(hook) = hooks.first() else {
        checks.add(CHECK, false, "no driver_mmap event");
        return None;
    };
    let b = &hook.before;
    let same = hooks.len() == 1
        && b.vm_start == m.addr
        && b.vm_end == m.addr + m.len
        && b.vm_pgoff == offset
        && c_str(&b.file.name) == name
        && hook.ret == 0;
    checks.add(
        CHECK,
        same,
        format!(
            "{} call(s); before: {} file {}; ret {}; after: {}",
            hooks.len(),
            vma_str(b),
            c_str(&b.file.name),
            hook.ret,
            flags::decode(flags::VM, hook.after.vm_flags)
        ),
    );
    Some(**hook)
}

fn check_mmap_region(checks: &mut Checks, events: &[Event], m: &Mapping, offset: u64, name: &str) {
    let region: Option<&MmapRegionEvent> = events.iter().find_map(|e| match e {
        Event::MmapRegion(r) if c_str(&r.file.name) == name => Some(r),
        _ => None,
    });
    match region {
        Some(r) => checks.add(
            "mmap_region describes the VMA",
            r.ret as u64 == m.addr && r.len == m.len && r.pgoff == offset,
            format!("ret {:#x} len {:#x} pgoff {:#x}", r.ret, r.len, r.pgoff),
        ),
        None => checks.add(
            "mmap_region describes the VMA",
            false,
            "no mmap_region event for the device",
        ),
    }
}

/// Our devices: the calls have the shape the device's mmap promises, and their PFNs are
/// the driver's list.
fn check_remaps(
    checks: &mut Checks,
    kind: DeviceKind,
    remaps: &[&RemapPfnEvent],
    at_touch: &[Event],
    m: &Mapping,
    expected: &[u64],
) {
    let inserts = insert_events(at_touch, m);
    let (shape, shape_ok, seen): (&str, bool, Vec<u64>) = match kind {
        // One call maps the whole range: PFNs follow from the first.
        DeviceKind::Kmalloc => (
            "one remap_pfn_range for the whole VMA",
            remaps.len() == 1 && remaps[0].addr == m.addr && remaps[0].size == m.len,
            remaps
                .first()
                .map(|r| (0..r.size / PAGE).map(|i| r.pfn + i).collect())
                .unwrap_or_default(),
        ),
        DeviceKind::Vmalloc => (
            "one remap_pfn_range per page",
            remaps.len() as u64 == m.len / PAGE
                && remaps
                    .iter()
                    .enumerate()
                    .all(|(i, r)| r.addr == m.addr + i as u64 * PAGE && r.size == PAGE),
            remaps.iter().map(|r| r.pfn).collect(),
        ),
        // Nothing at mmap; each touch (in address order here) inserts its page.
        DeviceKind::Fault => (
            "one vm_insert_page per touched page",
            remaps.is_empty()
                && inserts.len() as u64 == m.len / PAGE
                && inserts.iter().enumerate().all(|(i, p)| {
                    p.header.probe == Probe::VmInsertPage as u32
                        && p.addr == m.addr + i as u64 * PAGE
                }),
            inserts.iter().map(|p| p.pfn).collect(),
        ),
    };
    let calls = if kind.eager() {
        remaps.len()
    } else {
        inserts.len()
    };
    checks.add(shape, shape_ok, format!("{calls} calls"));
    checks.add(
        "traced PFNs == driver's PFN list",
        seen == expected,
        format!("traced {seen:x?} driver {expected:x?}"),
    );
}

fn check_maps_line(
    checks: &mut Checks,
    m: &Mapping,
    offset: u64,
    inode: u64,
    device: &Path,
    private: bool,
    remaps: &[&RemapPfnEvent],
) -> Result<()> {
    let regions = space::maps::read(std::process::id())?.regions;
    let Some(r) = regions.iter().find(|r| r.start <= m.addr && m.addr < r.end) else {
        checks.add(
            "/proc/self/maps shows the VMA",
            false,
            "no maps line at the address",
        );
        return Ok(());
    };
    // A private mapping's vm_pgoff becomes the first PFN (remap_pfn_range on a COW VMA).
    let want_offset = match remaps.first() {
        Some(r) if private && r.addr == m.addr && r.size == m.len => r.pfn * PAGE,
        _ => offset * PAGE,
    };
    let path_ok = matches!(&r.backing, Backing::File(p) if Path::new(std::ffi::OsStr::from_bytes(p.as_bytes())) == std::fs::canonicalize(device).unwrap_or_default());
    checks.add(
        "/proc/self/maps shows the VMA",
        r.start == m.addr
            && r.end == m.addr + m.len
            && r.offset == want_offset
            && r.inode == inode
            && path_ok,
        format!("{r} (offset expected {want_offset:#x}, inode {inode})"),
    );
    Ok(())
}

fn check_page_tables(
    checks: &mut Checks,
    kind: DeviceKind,
    m: &Mapping,
    expected: &[u64],
) -> Result<()> {
    let table = driver::page_table(kind)?;
    let ours: Vec<Option<u64>> = table
        .iter()
        .filter(|(a, _)| *a >= m.addr && *a < m.addr + m.len)
        .map(|(_, p)| *p)
        .collect();
    let want: Vec<Option<u64>> = expected.iter().map(|p| Some(*p)).collect();
    let shown: Vec<String> = ours
        .iter()
        .map(|p| p.map_or("-".into(), |p| format!("{p:x}")))
        .collect();
    checks.add(
        "page tables == driver's PFN list",
        ours == want,
        format!("page tables [{}]", shown.join(", ")),
    );
    Ok(())
}

fn check_bytes(
    checks: &mut Checks,
    file: &std::fs::File,
    m: &Mapping,
    offset: u64,
    private: bool,
) -> Result<()> {
    use std::os::unix::fs::FileExt as _;
    let base = m.addr as *mut u8;
    let pages = m.len / PAGE;
    let byte = |at: u64| {
        // SAFETY: callers pass offsets below `m.len`, inside our live mapping.
        unsafe { std::ptr::read_volatile(base.add(at as usize)) }
    };
    let bad: Vec<u64> = (0..pages)
        .filter(|p| (0..4).any(|i| byte(p * PAGE + i) != PATTERN[i as usize]))
        .collect();
    checks.add(
        "pattern aa bb cc dd on every page",
        bad.is_empty(),
        if bad.is_empty() {
            format!("{pages} pages")
        } else {
            format!("pages without it: {bad:?}")
        },
    );

    // write() → mapping, at byte 8 of the last page; restored afterwards.
    let at = (pages - 1) * PAGE + 8;
    let file_at = offset * PAGE + at;
    let mut saved = [0u8; 4];
    file.read_exact_at(&mut saved, file_at)?;
    file.write_all_at(b"MMTR", file_at)?;
    let seen: Vec<u8> = (0..4).map(|i| byte(at + i)).collect();
    checks.add(
        "write() visible through the mapping",
        seen == b"MMTR",
        format!("mapping reads {seen:02x?}"),
    );
    file.write_all_at(&saved, file_at)?;

    // A store through the mapping: read() sees it on a shared mapping; a private one is
    // copy-on-write, so the buffer must stay untouched.
    let at = 12;
    let file_at = offset * PAGE + at;
    file.read_exact_at(&mut saved, file_at)?;
    for (i, b) in b"PAGE".iter().enumerate() {
        // SAFETY: inside the mapping.
        unsafe { std::ptr::write_volatile(base.add(at as usize + i), *b) };
    }
    let mut read_back = [0u8; 4];
    file.read_exact_at(&mut read_back, file_at)?;
    if private {
        checks.add(
            "store through a private mapping stays private",
            read_back == saved,
            format!("read() gives {read_back:02x?}"),
        );
    } else {
        checks.add(
            "store through the mapping visible to read()",
            &read_back == b"PAGE",
            format!("read() gives {read_back:02x?}"),
        );
        file.write_all_at(&saved, file_at)?;
    }
    Ok(())
}

/// The driver's VMA walk of this process against /proc/self/maps, line for line. Both
/// are read into buffers allocated up front so no allocation moves the heap in between.
fn check_driver_walk(checks: &mut Checks) -> Result<()> {
    use std::io::Read as _;
    let mut walk = Vec::with_capacity(1 << 20);
    let mut maps_text = Vec::with_capacity(1 << 20);
    std::fs::File::open(driver::PROC_VMAS)
        .with_context(|| format!("opening {}", driver::PROC_VMAS))?
        .read_to_end(&mut walk)?;
    std::fs::File::open("/proc/self/maps")?.read_to_end(&mut maps_text)?;
    let (vmas, total) = driver::parse_vmas(&String::from_utf8_lossy(&walk))?;
    let maps_text = String::from_utf8_lossy(&maps_text);
    let lines: Vec<&str> = maps_text
        .lines()
        .filter(|l| !l.ends_with("[vsyscall]"))
        .collect();
    let mut problems = Vec::new();
    if lines.len() != vmas.len() {
        problems.push(format!(
            "{} VMAs in the walk, {} maps lines",
            vmas.len(),
            lines.len()
        ));
    }
    for (vma, line) in vmas.iter().zip(&lines) {
        let mut f = line.split_whitespace();
        let range = f.next().unwrap_or("");
        let perms = f.next().unwrap_or("");
        let offset = u64::from_str_radix(f.next().unwrap_or(""), 16).unwrap_or(u64::MAX);
        let want_range = format!("{:x}-{:x}", vma.start, vma.end);
        let want_perms = vm::perms(vma.flags);
        let want_offset = if vma.path.is_some() {
            vma.pgoff * PAGE
        } else {
            0
        };
        // maps pads each address to 8 digits: 00400000-00bfd000 for a non-PIE binary
        // (the arm64 static CLI's), so the numbers are compared, not the text.
        let parsed = range.split_once('-').and_then(|(a, b)| {
            Some((
                u64::from_str_radix(a, 16).ok()?,
                u64::from_str_radix(b, 16).ok()?,
            ))
        });
        if parsed != Some((vma.start, vma.end)) || perms != want_perms || offset != want_offset {
            problems.push(format!(
                "walk {want_range} {want_perms} {want_offset:x} vs maps {line:?}"
            ));
        }
    }
    let sum: u64 = vmas.iter().map(|v| v.end - v.start).sum();
    if sum != total {
        problems.push(format!("total {total} != sum of VMAs {sum}"));
    }
    checks.add(
        "driver VMA walk == /proc/self/maps",
        problems.is_empty(),
        if problems.is_empty() {
            format!("{} VMAs, total {total} bytes", vmas.len())
        } else {
            problems.join("; ")
        },
    );
    Ok(())
}
