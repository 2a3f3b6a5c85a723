//! `mmap-trace verify-driver`: map an mmtrace_drv device in this process with every
//! probe attached, and check end to end that the events, /proc/self/maps, the driver's
//! PFN list, the page tables and the bytes all tell the same story.

use std::{
    os::{fd::AsRawFd as _, unix::ffi::OsStrExt as _, unix::fs::MetadataExt as _},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};
use aya::maps::{MapData, RingBuf};
use mmap_trace_common::{DriverMmapEvent, MmapRegionEvent, Probe, RemapPfnEvent, TargetFilter};
use mmtrace_driver_abi::{self as driver, DeviceKind, PAGE, PATTERN, vm};
use serde::Serialize;

use crate::{
    kernel::decode::{self, Event, c_str},
    kernel::loader::{LoadOptions, Tracer},
    output::Format,
    output::flags,
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

#[derive(Serialize)]
struct Check {
    #[serde(rename = "type")]
    record_type: &'static str,
    device: String,
    check: &'static str,
    pass: bool,
    detail: String,
}

struct Checks {
    device: String,
    list: Vec<Check>,
}

impl Checks {
    fn add(&mut self, check: &'static str, pass: bool, detail: impl Into<String>) {
        self.list.push(Check {
            record_type: "check",
            device: self.device.clone(),
            check,
            pass,
            detail: detail.into(),
        });
    }
}

/// Returns whether every check passed.
pub fn run(config: VerifyDriverConfig) -> Result<bool> {
    crate::require_root("verify-driver")?;
    let kinds: Vec<DeviceKind> = config
        .devices
        .iter()
        .map(|d| DeviceKind::of_device(d))
        .collect::<Result<_>>()?;
    let load = LoadOptions {
        filter: TargetFilter {
            tgid: std::process::id(),
            ..TargetFilter::default()
        },
        cgroup: Default::default(),
        requested: Some(vec![
            Probe::Mmap,
            Probe::Munmap,
            Probe::MmapRegion,
            Probe::RemapPfnRange,
            Probe::DriverMmap,
        ]),
        btf: config.btf.clone(),
        ring_buffer_bytes: 1 << 20,
        driver_hooks: crate::kernel::loader::DEFAULT_DRIVER_HOOKS
            .iter()
            .map(|s| s.to_string())
            .collect(),
        implicit: false,
    };
    let mut tracer = Tracer::load(&load)?;
    let mut ring = tracer.take_events()?;
    let mut all = Vec::new();
    let mut malformed = 0;
    for (device, kind) in config.devices.iter().zip(kinds) {
        let checks = check_device(&config, device, kind, &mut ring, &mut malformed)?;
        all.extend(checks.list);
    }
    if malformed > 0 {
        all.push(Check {
            record_type: "check",
            device: "-".into(),
            check: "no malformed records",
            pass: false,
            detail: format!("{malformed} records could not be decoded"),
        });
    }
    let lost: u64 = tracer.lost()?.iter().sum();
    if lost > 0 {
        all.push(Check {
            record_type: "check",
            device: "-".into(),
            check: "no events lost",
            pass: false,
            detail: format!("{lost} events lost"),
        });
    }
    print(&all, config.format)?;
    Ok(all.iter().all(|c| c.pass))
}

fn print(checks: &[Check], format: Format) -> Result<()> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    let passed = checks.iter().filter(|c| c.pass).count();
    match format {
        Format::Json => {
            for c in checks {
                serde_json::to_writer(&mut out, c)?;
                writeln!(out)?;
            }
            let summary = serde_json::json!({
                "type": "summary", "checks": checks.len(), "passed": passed,
                "failed": checks.len() - passed,
            });
            writeln!(out, "{summary}")?;
        }
        Format::Table => {
            writeln!(
                out,
                "{:<22} {:<46} {:<6} DETAIL",
                "DEVICE", "CHECK", "RESULT"
            )?;
            for c in checks {
                let result = if c.pass { "PASS" } else { "FAIL" };
                writeln!(
                    out,
                    "{:<22} {:<46} {:<6} {}",
                    c.device, c.check, result, c.detail
                )?;
            }
            let verdict = if passed == checks.len() {
                "PASS"
            } else {
                "FAIL"
            };
            writeln!(out, "{verdict}: {passed} of {} checks passed", checks.len())?;
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

/// The ring's events. A malformed record is counted and warned about, as `trace` does,
/// and then fails the run like a lost event (the picture is incomplete): see `run`.
fn check_device(
    config: &VerifyDriverConfig,
    device: &Path,
    kind: DeviceKind,
    ring: &mut RingBuf<MapData>,
    malformed: &mut u64,
) -> Result<Checks> {
    let npages = driver::npages()?;
    let offset = config.offset;
    if offset >= npages {
        bail!("--offset {offset} is past the {npages}-page buffer");
    }
    let pages = config.pages.unwrap_or_else(|| (npages - offset).min(4));
    if pages == 0 || offset + pages > npages {
        bail!("--offset {offset} --pages {pages} does not fit the {npages}-page buffer");
    }
    if kind == DeviceKind::Fault {
        bail!(
            "{}: verify-driver does not check the lazy (fault) device yet",
            device.display()
        );
    }
    if config.private && !kind.serves_private() {
        bail!(
            "{} serves shared mappings only (page-by-page remap_pfn_range cannot serve a private mapping); drop --private",
            device.display()
        );
    }
    let mut checks = Checks {
        device: device.display().to_string(),
        list: Vec::new(),
    };
    let mut pfns = driver::buffer_pfns(kind)?;
    if config.plant == Some(DriverPlant::PfnOffByOne) {
        pfns.iter_mut().for_each(|p| *p += 1);
    }
    let expected: Vec<u64> = pfns[offset as usize..(offset + pages) as usize].to_vec();
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(device)
        .with_context(|| format!("cannot open {}", device.display()))?;
    let dev_inode = file.metadata()?.ino();
    let len = pages * PAGE;
    let _ = decode::drain_all(ring, malformed);
    let share = if config.private {
        libc::MAP_PRIVATE
    } else {
        libc::MAP_SHARED
    };
    // SAFETY: a fresh mapping of the device; only accessed through `Mapping`'s range.
    let addr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            share,
            file.as_raw_fd(),
            (offset * PAGE) as libc::off_t,
        )
    };
    if addr == libc::MAP_FAILED {
        let err = std::io::Error::last_os_error();
        bail!(
            "mmap of {} ({pages} pages at page {offset}) failed: {err}",
            device.display()
        );
    }
    let mapping = Mapping {
        addr: addr as u64,
        len,
    };
    let events = decode::drain_all(ring, malformed);
    let dev_name = device
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // The driver may be reached through another node name: the kernel reports the node's.
    let kernel_name = std::fs::canonicalize(device)
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or(dev_name);

    check_hook(&mut checks, &events, &mapping, offset, &kernel_name);
    check_mmap_region(&mut checks, &events, &mapping, offset, &kernel_name);
    let remaps: Vec<&RemapPfnEvent> = events
        .iter()
        .filter_map(|e| match e {
            Event::RemapPfn(r) => Some(r),
            _ => None,
        })
        .collect();
    check_remaps(&mut checks, kind, &remaps, &mapping, &expected);
    check_maps_line(
        &mut checks,
        &mapping,
        offset,
        dev_inode,
        device,
        config.private,
        &expected,
    )?;
    check_page_tables(&mut checks, kind, &mapping, &expected)?;
    check_bytes(&mut checks, &file, &mapping, offset, config.private)?;
    check_driver_walk(&mut checks)?;
    drop(mapping);
    let unmapped = decode::drain_all(ring, malformed).iter().any(|e| matches!(e, Event::Syscall(s) if s.header.probe == Probe::Munmap as u32 && s.args[0] == addr as u64));
    checks.add(
        "munmap traced",
        unmapped,
        if unmapped {
            "munmap event seen"
        } else {
            "no munmap event"
        },
    );
    Ok(checks)
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

fn check_hook(checks: &mut Checks, events: &[Event], m: &Mapping, offset: u64, name: &str) {
    let hooks: Vec<&DriverMmapEvent> = events
        .iter()
        .filter_map(|e| match e {
            Event::DriverMmap(h) => Some(h),
            _ => None,
        })
        .collect();
    let Some(hook) = hooks.first() else {
        checks.add("driver hook saw the VMA", false, "no driver_mmap event");
        return;
    };
    let b = &hook.before;
    let same = hooks.len() == 1
        && b.vm_start == m.addr
        && b.vm_end == m.addr + m.len
        && b.vm_pgoff == offset
        && c_str(&b.file.name) == name
        && hook.ret == 0;
    checks.add(
        "driver hook saw the VMA",
        same,
        format!(
            "{} call(s); before: {} file {}; ret {}",
            hooks.len(),
            vma_str(b),
            c_str(&b.file.name),
            hook.ret
        ),
    );
    let a = &hook.after;
    let flags_ok = a.vm_flags & vm::REMAP_PFN_RANGE == vm::REMAP_PFN_RANGE
        && b.vm_flags & vm::REMAP_PFN_RANGE == 0;
    checks.add(
        "driver set IO|PFNMAP|DONTEXPAND|DONTDUMP",
        flags_ok,
        format!("after: {}", flags::decode(flags::VM, a.vm_flags)),
    );
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

fn check_remaps(
    checks: &mut Checks,
    kind: DeviceKind,
    remaps: &[&RemapPfnEvent],
    m: &Mapping,
    expected: &[u64],
) {
    let seen: Vec<u64> = match kind {
        // One call maps the whole range: PFNs follow from the first.
        DeviceKind::Kmalloc => remaps
            .first()
            .map(|r| (0..r.size / PAGE).map(|i| r.pfn + i).collect())
            .unwrap_or_default(),
        DeviceKind::Vmalloc | DeviceKind::Fault => remaps.iter().map(|r| r.pfn).collect(),
    };
    let shape_ok = match kind {
        DeviceKind::Kmalloc => {
            remaps.len() == 1 && remaps[0].addr == m.addr && remaps[0].size == m.len
        }
        DeviceKind::Vmalloc | DeviceKind::Fault => {
            remaps.len() as u64 == m.len / PAGE
                && remaps
                    .iter()
                    .enumerate()
                    .all(|(i, r)| r.addr == m.addr + i as u64 * PAGE && r.size == PAGE)
        }
    };
    let same_vma = remaps
        .iter()
        .all(|r| r.vma.vm_start == m.addr && r.vma.vm_end == m.addr + m.len);
    checks.add(
        match kind {
            DeviceKind::Kmalloc => "one remap_pfn_range for the whole VMA",
            DeviceKind::Vmalloc | DeviceKind::Fault => "one remap_pfn_range per page",
        },
        shape_ok && same_vma,
        format!("{} calls", remaps.len()),
    );
    checks.add(
        "remap PFNs == driver's PFN list",
        seen == expected,
        format!("remap {seen:x?} driver {expected:x?}"),
    );
}

fn check_maps_line(
    checks: &mut Checks,
    m: &Mapping,
    offset: u64,
    inode: u64,
    device: &Path,
    private: bool,
    expected: &[u64],
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
    let want_offset = if private {
        expected[0] * PAGE
    } else {
        offset * PAGE
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
        if range.trim_start_matches('0') != want_range.trim_start_matches('0')
            || perms != want_perms
            || offset != want_offset
        {
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
