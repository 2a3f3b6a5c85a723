//! The mmtrace_drv module's root-only ground truth (see driver/ and the README):
//! the PFN of every buffer page, what the reader's page tables hold for its mappings of
//! a device, and the driver's own walk of the reader's VMAs.

use std::path::Path;

use anyhow::{Context as _, Result, bail};

pub const MODULE: &str = "mmtrace_drv";
const DEBUGFS: &str = "/sys/kernel/debug/mmtrace";
pub const PROC_VMAS: &str = "/proc/mmtrace_vmas";

/// Which buffer a device node serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceKind {
    Kmalloc,
    Vmalloc,
}

impl DeviceKind {
    pub fn name(self) -> &'static str {
        match self {
            DeviceKind::Kmalloc => "kmalloc",
            DeviceKind::Vmalloc => "vmalloc",
        }
    }

    /// Finds the driver device `path` is, by its device number (the name may differ).
    pub fn of_device(path: &Path) -> Result<Self> {
        use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _};
        let meta = std::fs::metadata(path).with_context(|| format!("cannot open {}", path.display()))?;
        if !Path::new("/sys/module").join(MODULE).exists() {
            bail!("the {MODULE} module is not loaded: insmod mmtrace_drv.ko first");
        }
        for kind in [DeviceKind::Kmalloc, DeviceKind::Vmalloc] {
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
             /dev/mmtrace-kmalloc or /dev/mmtrace-vmalloc)",
            path.display()
        )
    }
}

/// `npages`, the module parameter: the size of each buffer in pages.
pub fn npages() -> Result<u64> {
    let path = format!("/sys/module/{MODULE}/parameters/npages");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    text.trim().parse().with_context(|| format!("{path}: {text:?}"))
}

fn read_debugfs(name: &str) -> Result<String> {
    let path = Path::new(DEBUGFS).join(name);
    std::fs::read_to_string(&path).with_context(|| {
        format!("reading {} (needs root and debugfs on /sys/kernel/debug)", path.display())
    })
}

/// The PFN of each buffer page, by page index.
pub fn buffer_pfns(kind: DeviceKind) -> Result<Vec<u64>> {
    parse_pfns(&read_debugfs(&format!("{}_pfns", kind.name()))?)
}

pub fn parse_pfns(text: &str) -> Result<Vec<u64>> {
    text.lines()
        .enumerate()
        .map(|(i, line)| {
            let (idx, pfn) = line.split_once(' ').with_context(|| format!("PFN line {line:?}"))?;
            if idx.parse::<usize>() != Ok(i) {
                bail!("PFN line {line:?} out of order");
            }
            u64::from_str_radix(pfn.trim(), 16).with_context(|| format!("PFN line {line:?}"))
        })
        .collect()
}

/// The calling process's page tables for its mappings of `kind`: (address, PFN or None).
pub fn page_table(kind: DeviceKind) -> Result<Vec<(u64, Option<u64>)>> {
    parse_page_table(&read_debugfs(&format!("{}_pagetable", kind.name()))?)
}

pub fn parse_page_table(text: &str) -> Result<Vec<(u64, Option<u64>)>> {
    text.lines()
        .map(|line| {
            let (addr, pfn) = line.split_once(' ').with_context(|| format!("page table line {line:?}"))?;
            let addr = u64::from_str_radix(addr, 16).with_context(|| format!("{line:?}"))?;
            let pfn = match pfn.trim() {
                "-" => None,
                p => Some(u64::from_str_radix(p, 16).with_context(|| format!("{line:?}"))?),
            };
            Ok((addr, pfn))
        })
        .collect()
}

/// One line of the driver's VMA walk: start, end, vm_flags, vm_pgoff, path (None: anonymous).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriverVma {
    pub start: u64,
    pub end: u64,
    pub flags: u64,
    pub pgoff: u64,
    pub path: Option<String>,
}

/// The VMA lines and the `total` line.
pub fn parse_vmas(text: &str) -> Result<(Vec<DriverVma>, u64)> {
    let mut vmas = Vec::new();
    let mut total = None;
    for line in text.lines() {
        if let Some(t) = line.strip_prefix("total ") {
            total = Some(t.trim().parse().with_context(|| format!("{line:?}"))?);
            continue;
        }
        let mut fields = line.splitn(5, ' ');
        let mut hex = || -> Result<u64> {
            let f = fields.next().with_context(|| format!("short VMA line {line:?}"))?;
            u64::from_str_radix(f, 16).with_context(|| format!("VMA line {line:?}"))
        };
        let (start, end, flags, pgoff) = (hex()?, hex()?, hex()?, hex()?);
        let path = match fields.next() {
            Some("-") | None => None,
            Some(p) => Some(p.to_string()),
        };
        vmas.push(DriverVma { start, end, flags, pgoff, path });
    }
    Ok((vmas, total.context("no total line")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_driver_formats() {
        assert_eq!(parse_pfns("0 1a2b\n1 1a2c\n").unwrap(), [0x1a2b, 0x1a2c]);
        assert!(parse_pfns("1 1a2b\n").is_err(), "out of order");
        assert_eq!(parse_page_table("7f00 12\n7f01 -\n").unwrap(), [(0x7f00, Some(0x12)), (0x7f01, None)]);
        let (vmas, total) = parse_vmas("1000 3000 73 0 -\n5000 6000 fb 2 /dev/mmtrace-kmalloc\ntotal 12288\n").unwrap();
        assert_eq!(total, 12288);
        assert_eq!(vmas[1].path.as_deref(), Some("/dev/mmtrace-kmalloc"));
        assert_eq!((vmas[0].start, vmas[0].end, vmas[0].flags, vmas[0].pgoff), (0x1000, 0x3000, 0x73, 0));
        assert!(parse_vmas("zz 1 2 3 -\ntotal 1\n").is_err());
        assert!(parse_vmas("1000 2000 0 0 -\n").is_err(), "no total");
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
        }
    }
}
