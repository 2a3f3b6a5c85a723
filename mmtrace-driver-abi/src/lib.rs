//! The user-visible ABI of the `mmtrace_drv` kernel module (`driver/mmtrace_drv.c`, which
//! stays the source of truth): module and device names, the root-only ground-truth files,
//! the bytes every buffer page starts with, and one parser per file format. Both the CLI
//! (`mmap-trace verify-driver`) and the guest tests read the driver through this crate.
//!
//! The formats, one record per line, numbers in lowercase hex without `0x` unless noted
//! (documented for readers in `docs/driver.md`):
//!
//! | file | line | parser |
//! |------|------|--------|
//! | `/sys/kernel/debug/mmtrace/<kind>_pfns` | `<page index, decimal> <pfn>` | [`parse_pfns`] |
//! | `/sys/kernel/debug/mmtrace/<kind>_pagetable` | `<user address> <pfn or ->` | [`parse_page_table`] |
//! | `/sys/kernel/debug/mmtrace/pagetable` (write `<start> <end>` first) | `<user address> <pfn or ->` | [`parse_page_table`] |
//! | `/sys/kernel/debug/mmtrace/counters` | `<name> <decimal>` | [`parse_counter`] |
//! | `/proc/mmtrace_vmas` | `<vm_start> <vm_end> <vm_flags> <vm_pgoff> <path or ->`, last `total <bytes, decimal>` | [`parse_vmas`] |

use std::path::Path;

use anyhow::{Context as _, Result, bail, ensure};

pub mod vm;

/// The module's name (`/sys/module/<MODULE>`).
pub const MODULE: &str = "mmtrace_drv";
/// The debugfs folder of the ground-truth files (root only).
pub const DEBUGFS_DIR: &str = "/sys/kernel/debug/mmtrace";
/// The driver's walk of the reading process's VMAs (world-readable).
pub const PROC_VMAS: &str = "/proc/mmtrace_vmas";
/// Every device node is `/dev/mmtrace-<kind>`.
pub const DEV_PREFIX: &str = "/dev/mmtrace-";
/// The bytes every buffer page starts with after load.
pub const PATTERN: [u8; 4] = [0xaa, 0xbb, 0xcc, 0xdd];
/// The page size of the only target (x86_64): the unit of `npages`, `vm_pgoff` and the
/// mmap offset the driver takes.
pub const PAGE: u64 = 4096;

/// The driver's three devices: which buffer a device node serves, and how.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DeviceKind {
    /// `kmalloc`ed, physically contiguous; mapped by one `remap_pfn_range` (eager, PFNMAP).
    Kmalloc,
    /// `vmalloc`ed; mapped page by page (eager, PFNMAP; shared mappings only).
    Vmalloc,
    /// `vmalloc`ed; mmap maps nothing, `vm_ops->fault` inserts each page with
    /// `vm_insert_page` on the first touch (lazy, MIXEDMAP; shared and private).
    Fault,
}

impl DeviceKind {
    pub const ALL: [DeviceKind; 3] = [DeviceKind::Kmalloc, DeviceKind::Vmalloc, DeviceKind::Fault];

    /// `kmalloc`, `vmalloc` or `fault`: the prefix of its ground-truth files.
    pub fn name(self) -> &'static str {
        match self {
            DeviceKind::Kmalloc => "kmalloc",
            DeviceKind::Vmalloc => "vmalloc",
            DeviceKind::Fault => "fault",
        }
    }

    /// The driver function that is the device's `f_op->mmap` (a kprobe target).
    pub fn mmap_hook(self) -> String {
        format!("mmtrace_{}_mmap", self.name())
    }

    /// Whether a page is mapped by mmap itself (false: on the first touch, by the fault
    /// handler).
    pub fn eager(self) -> bool {
        self != DeviceKind::Fault
    }

    /// Whether the device serves MAP_PRIVATE (copy-on-write) mappings.
    pub fn serves_private(self) -> bool {
        self != DeviceKind::Vmalloc
    }

    /// The `vm_flags` the driver's mmap leaves on the VMA.
    pub fn vm_flags(self) -> u64 {
        if self.eager() {
            vm::REMAP_PFN_RANGE
        } else {
            vm::MIXEDMAP | vm::DONTEXPAND | vm::DONTDUMP
        }
    }

    /// `/dev/mmtrace-<kind>`.
    pub fn dev_path(self) -> String {
        format!("{DEV_PREFIX}{}", self.name())
    }

    /// Its debugfs PFN list.
    pub fn pfns_path(self) -> String {
        format!("{DEBUGFS_DIR}/{}_pfns", self.name())
    }

    /// Its debugfs page-table view (of the reading process).
    pub fn pagetable_path(self) -> String {
        format!("{DEBUGFS_DIR}/{}_pagetable", self.name())
    }

    /// Its line in the `counters` file.
    pub fn live_maps_counter(self) -> String {
        format!("{}_live_maps", self.name())
    }

    /// Its `counters` line of pages inserted by the fault handler (always 0 for the
    /// eager devices).
    pub fn faults_counter(self) -> String {
        format!("{}_faults", self.name())
    }

    /// Finds the driver device `path` is, by its device number (the name may differ).
    pub fn of_device(path: &Path) -> Result<Self> {
        use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _};
        let meta =
            std::fs::metadata(path).with_context(|| format!("cannot open {}", path.display()))?;
        if !is_loaded() {
            bail!("the {MODULE} module is not loaded: insmod mmtrace_drv.ko first");
        }
        for kind in DeviceKind::ALL {
            let sys = format!("/sys/class/misc/mmtrace-{}/dev", kind.name());
            let dev = std::fs::read_to_string(&sys).with_context(|| format!("reading {sys}"))?;
            let (major, minor) = dev.trim().split_once(':').unwrap_or(("", ""));
            if meta.file_type().is_char_device()
                && major.parse() == Ok(libc::major(meta.rdev()))
                && minor.parse() == Ok(libc::minor(meta.rdev()))
            {
                return Ok(kind);
            }
        }
        bail!(
            "{} is not an {MODULE} device (expected the character device of \
             /dev/mmtrace-kmalloc, /dev/mmtrace-vmalloc or /dev/mmtrace-fault)",
            path.display()
        )
    }
}

/// Whether the module is loaded.
pub fn is_loaded() -> bool {
    Path::new("/sys/module").join(MODULE).exists()
}

fn read(path: &str) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| {
        if path.starts_with(DEBUGFS_DIR) {
            format!("reading {path} (needs root and debugfs on /sys/kernel/debug)")
        } else {
            format!("reading {path}")
        }
    })
}

fn hex(word: &str, path: &str, line: &str) -> Result<u64> {
    u64::from_str_radix(word, 16)
        .with_context(|| format!("{path}: {word:?} is not hex in line {line:?}"))
}

/// `npages`, the module parameter: the size of each buffer in pages.
pub fn npages() -> Result<u64> {
    let path = format!("/sys/module/{MODULE}/parameters/npages");
    let text = read(&path)?;
    text.trim()
        .parse()
        .with_context(|| format!("{path}: {text:?}"))
}

/// The PFN of each buffer page of `kind`, by page index.
pub fn buffer_pfns(kind: DeviceKind) -> Result<Vec<u64>> {
    let path = kind.pfns_path();
    parse_pfns(&read(&path)?).with_context(|| format!("parsing {path}"))
}

/// `<kind>_pfns`: `<index> <pfn>` lines, indices 0, 1, 2… in order.
pub fn parse_pfns(text: &str) -> Result<Vec<u64>> {
    const WHAT: &str = "PFN list";
    text.lines()
        .enumerate()
        .map(|(i, line)| {
            let (idx, pfn) = line
                .split_once(' ')
                .with_context(|| format!("{WHAT}: bad line {line:?}"))?;
            ensure!(
                idx.parse::<usize>() == Ok(i),
                "{WHAT}: line {i} has page index {idx:?}"
            );
            hex(pfn.trim(), WHAT, line)
        })
        .collect()
}

/// The calling process's page tables for its mappings of `kind`: (address, PFN or None
/// when not present).
pub fn page_table(kind: DeviceKind) -> Result<Vec<(u64, Option<u64>)>> {
    let path = kind.pagetable_path();
    parse_page_table(&read(&path)?).with_context(|| format!("parsing {path}"))
}

/// The debugfs file that walks any address range of the reading process.
pub const RANGE_PAGETABLE: &str = "/sys/kernel/debug/mmtrace/pagetable";
/// The most pages one [`range_page_table`] call may ask for (the driver's
/// `MMTRACE_MAX_RANGE_PAGES`).
pub const RANGE_MAX_PAGES: u64 = 65536;

/// The calling process's page tables for `[start, end)` (page aligned), whoever mapped
/// it: (address, PFN or None when nothing is mapped there), one row per page. The
/// driver reads PFNMAP/IO VMAs with the kernel's follow_pfn family and every other VMA
/// with get_user_pages(FOLL_NOFAULT), which never faults a page in; a PTE neither can
/// read (a special PFN in a MIXEDMAP VMA, PROT_NONE, swapped out) reads as None. Root
/// only.
pub fn range_page_table(start: u64, end: u64) -> Result<Vec<(u64, Option<u64>)>> {
    use std::io::{Read as _, Seek as _, Write as _};
    ensure!(
        start <= end && (end - start).div_ceil(PAGE) <= RANGE_MAX_PAGES,
        "page-table range {start:#x}-{end:#x}: more than {RANGE_MAX_PAGES} pages"
    );
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(RANGE_PAGETABLE)
        .with_context(|| {
            format!("opening {RANGE_PAGETABLE} (needs root, debugfs and a {MODULE} that has it)")
        })?;
    file.write_all(format!("{start:x} {end:x}").as_bytes())
        .with_context(|| format!("asking {RANGE_PAGETABLE} for {start:#x}-{end:#x}"))?;
    file.rewind()?;
    let mut text = String::new();
    file.read_to_string(&mut text)
        .with_context(|| format!("reading {RANGE_PAGETABLE}"))?;
    parse_page_table(&text).with_context(|| format!("parsing {RANGE_PAGETABLE}"))
}

/// `<kind>_pagetable` and `pagetable`: `<address> <pfn>` or `<address> -` lines.
pub fn parse_page_table(text: &str) -> Result<Vec<(u64, Option<u64>)>> {
    const WHAT: &str = "page table";
    text.lines()
        .map(|line| {
            let (addr, pfn) = line
                .split_once(' ')
                .with_context(|| format!("{WHAT}: bad line {line:?}"))?;
            let pfn = match pfn.trim() {
                "-" => None,
                p => Some(hex(p, WHAT, line)?),
            };
            Ok((hex(addr, WHAT, line)?, pfn))
        })
        .collect()
}

/// One value of the debugfs `counters` file (`npages`, `<kind>_live_maps`, `<kind>_faults`,
/// `reserved_pages`).
pub fn counter(name: &str) -> Result<i64> {
    let path = format!("{DEBUGFS_DIR}/counters");
    parse_counter(&read(&path)?, name).with_context(|| format!("parsing {path}"))
}

/// `counters`: `<name> <decimal>` lines; the value of `name`.
pub fn parse_counter(text: &str, name: &str) -> Result<i64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .with_context(|| format!("no {name:?} in:\n{text}"))?
        .trim()
        .parse()
        .with_context(|| format!("{name} is not a number"))
}

/// The live mappings of `kind`, as the driver counts them (vm_ops open/close).
pub fn live_maps(kind: DeviceKind) -> Result<i64> {
    counter(&kind.live_maps_counter())
}

/// The pages `kind`'s fault handler has inserted since the module was loaded.
pub fn faults(kind: DeviceKind) -> Result<i64> {
    counter(&kind.faults_counter())
}

/// One line of the driver's VMA walk (`/proc/mmtrace_vmas`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriverVma {
    pub start: u64,
    pub end: u64,
    /// Raw `vm_flags` (bits in [`vm`]).
    pub flags: u64,
    pub pgoff: u64,
    /// The mapped file's path; None for an anonymous VMA.
    pub path: Option<String>,
}

/// `/proc/mmtrace_vmas` for this process: its VMAs and the total mapped size in bytes.
pub fn driver_vmas() -> Result<(Vec<DriverVma>, u64)> {
    parse_vmas(&read(PROC_VMAS)?).with_context(|| format!("parsing {PROC_VMAS}"))
}

/// The VMA lines and the `total` line, which must come last.
pub fn parse_vmas(text: &str) -> Result<(Vec<DriverVma>, u64)> {
    const WHAT: &str = "VMA walk";
    let mut vmas = Vec::new();
    let mut total = None;
    for line in text.lines() {
        ensure!(total.is_none(), "{WHAT}: line after the total: {line:?}");
        if let Some(t) = line.strip_prefix("total ") {
            total = Some(
                t.trim()
                    .parse()
                    .with_context(|| format!("{WHAT}: bad total {line:?}"))?,
            );
            continue;
        }
        let mut fields = line.splitn(5, ' ');
        let mut next = |what: &str| {
            fields
                .next()
                .with_context(|| format!("{WHAT}: no {what} in {line:?}"))
        };
        let start = hex(next("vm_start")?, WHAT, line)?;
        let end = hex(next("vm_end")?, WHAT, line)?;
        let flags = hex(next("vm_flags")?, WHAT, line)?;
        let pgoff = hex(next("vm_pgoff")?, WHAT, line)?;
        let path = match next("path")? {
            "-" => None,
            p => Some(p.to_owned()),
        };
        vmas.push(DriverVma {
            start,
            end,
            flags,
            pgoff,
            path,
        });
    }
    Ok((
        vmas,
        total.with_context(|| format!("{WHAT}: no total line:\n{text}"))?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_driver_formats() {
        assert_eq!(parse_pfns("0 1a2b\n1 1a2c\n").unwrap(), [0x1a2b, 0x1a2c]);
        assert!(parse_pfns("1 1a2b\n").is_err(), "out of order");
        assert_eq!(
            parse_page_table("7f00 12\n7f01 -\n").unwrap(),
            [(0x7f00, Some(0x12)), (0x7f01, None)]
        );
        let (vmas, total) =
            parse_vmas("1000 3000 73 0 -\n5000 6000 fb 2 /dev/mmtrace-kmalloc\ntotal 12288\n")
                .unwrap();
        assert_eq!(total, 12288);
        assert_eq!(vmas[1].path.as_deref(), Some("/dev/mmtrace-kmalloc"));
        assert_eq!(
            (vmas[0].start, vmas[0].end, vmas[0].flags, vmas[0].pgoff),
            (0x1000, 0x3000, 0x73, 0)
        );
        assert!(parse_vmas("zz 1 2 3 -\ntotal 1\n").is_err());
        assert!(parse_vmas("1000 2000 0 0 -\n").is_err(), "no total");
        assert!(
            parse_vmas("total 1\n1000 2000 0 0 -\n").is_err(),
            "line after the total"
        );
        assert!(
            parse_vmas("1000 2000 0 0\ntotal 1\n").is_err(),
            "no path column"
        );
        let counters = "npages 16\nkmalloc_live_maps 2\nkmalloc_faults 0\nvmalloc_live_maps 0\nvmalloc_faults 0\nfault_live_maps 1\nfault_faults 3\nreserved_pages 48\n";
        assert_eq!(
            parse_counter(counters, &DeviceKind::Kmalloc.live_maps_counter()).unwrap(),
            2
        );
        assert_eq!(parse_counter(counters, "npages").unwrap(), 16);
        assert_eq!(
            parse_counter(counters, &DeviceKind::Fault.faults_counter()).unwrap(),
            3
        );
        assert!(parse_counter(counters, "missing").is_err());
    }

    #[test]
    fn names_and_paths() {
        assert_eq!(DeviceKind::Vmalloc.dev_path(), "/dev/mmtrace-vmalloc");
        assert_eq!(
            DeviceKind::Kmalloc.pfns_path(),
            "/sys/kernel/debug/mmtrace/kmalloc_pfns"
        );
        assert_eq!(
            DeviceKind::Vmalloc.pagetable_path(),
            "/sys/kernel/debug/mmtrace/vmalloc_pagetable"
        );
        assert_eq!(DeviceKind::Fault.dev_path(), "/dev/mmtrace-fault");
        assert_eq!(DeviceKind::Fault.mmap_hook(), "mmtrace_fault_mmap");
        assert_eq!(
            DeviceKind::Fault.vm_flags() & (vm::PFNMAP | vm::MIXEDMAP),
            vm::MIXEDMAP
        );
    }
}

#[cfg(test)]
mod proptests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Garbage and near-misses of the driver's formats: Ok or Err, never a panic.
        #[test]
        fn parsers_never_panic(text in "([0-9a-fx -]{0,24}(total )?[0-9a-z/ -]{0,12}\n){0,8}|\\PC{0,200}") {
            let _ = parse_pfns(&text);
            let _ = parse_page_table(&text);
            let _ = parse_vmas(&text);
            let _ = parse_counter(&text, "npages");
        }

        /// Whatever the driver can print, the parser reads back.
        #[test]
        fn vma_walk_round_trips(vmas in proptest::collection::vec((any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>(), proptest::option::of("/[a-z/]{1,20}")), 0..8)) {
            let mut text = String::new();
            for (s, e, f, p, path) in &vmas {
                text += &format!("{s:x} {e:x} {f:x} {p:x} {}\n", path.as_deref().unwrap_or("-"));
            }
            text += "total 42\n";
            let (parsed, total) = parse_vmas(&text).unwrap();
            prop_assert_eq!(total, 42);
            let back: Vec<_> = parsed.into_iter().map(|v| (v.start, v.end, v.flags, v.pgoff, v.path)).collect();
            prop_assert_eq!(back, vmas);
        }
    }
}
