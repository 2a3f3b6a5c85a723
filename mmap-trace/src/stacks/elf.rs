//! What the unwinder and the process model need from a mapped ELF file, read once per
//! path: its loadable segments (to turn file offsets into addresses and back), its
//! interpreter, and the sections DWARF unwinding reads (`.eh_frame`, `.eh_frame_hdr`,
//! `.text`, `.got`).

use std::{collections::HashMap, ops::Range, path::Path, sync::Arc};

use object::{
    Endianness, Object as _, ObjectSection as _,
    elf::{PF_X, PT_INTERP, PT_LOAD},
    read::elf::{ElfFile64, ProgramHeader as _},
};

/// One `PT_LOAD`.
#[derive(Clone, Debug)]
pub struct Segment {
    pub offset: u64,
    pub filesz: u64,
    pub vaddr: u64,
    pub memsz: u64,
    pub exec: bool,
}

/// A section's address range (as linked) and bytes.
#[derive(Clone)]
pub struct Section {
    pub svma: Range<u64>,
    pub data: Arc<[u8]>,
}

pub struct ElfInfo {
    pub segments: Vec<Segment>,
    /// `PT_INTERP`: the dynamic loader exec maps beside the executable.
    pub interp: Option<String>,
    pub text: Option<Section>,
    pub eh_frame: Option<Section>,
    pub eh_frame_hdr: Option<Section>,
    pub got: Option<Range<u64>>,
}

impl ElfInfo {
    pub fn read(path: &Path) -> Option<Self> {
        let data = std::fs::read(path).ok()?;
        let elf = ElfFile64::<Endianness>::parse(&*data).ok()?;
        let endian = elf.endian();
        let mut segments = Vec::new();
        let mut interp = None;
        for ph in elf.elf_program_headers() {
            match ph.p_type(endian) {
                PT_LOAD => segments.push(Segment {
                    offset: ph.p_offset(endian),
                    filesz: ph.p_filesz(endian),
                    vaddr: ph.p_vaddr(endian),
                    memsz: ph.p_memsz(endian),
                    exec: ph.p_flags(endian) & PF_X != 0,
                }),
                PT_INTERP => {
                    if let Ok(bytes) = ph.data(endian, &*data) {
                        let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
                        interp = Some(String::from_utf8_lossy(&bytes[..end]).into_owned());
                    }
                }
                _ => {}
            }
        }
        let section = |name: &str| {
            let s = elf.section_by_name(name)?;
            let data = s.data().ok()?;
            Some(Section {
                svma: s.address()..s.address() + s.size(),
                data: Arc::from(data),
            })
        };
        Some(Self {
            segments,
            interp,
            text: section(".text"),
            eh_frame: section(".eh_frame"),
            eh_frame_hdr: section(".eh_frame_hdr"),
            got: elf
                .section_by_name(".got")
                .map(|s| s.address()..s.address() + s.size()),
        })
    }

    /// The link-time address of the byte at file offset `offset`, if a segment maps it
    /// (from the segment's page start: a mapping's offset is page-aligned, a segment's
    /// need not be, and then the page is shared with the previous segment: the later
    /// segment is the one a mapping starting there was made for).
    pub fn svma_of_offset(&self, offset: u64) -> Option<u64> {
        self.segments
            .iter()
            .rev()
            .find(|s| s.offset & !4095 <= offset && offset < s.offset + s.filesz.max(1))
            .map(|s| s.vaddr.wrapping_add(offset.wrapping_sub(s.offset)))
    }

    /// The lowest executable segment's address (exec's `start_code` minus the bias).
    pub fn first_exec_vaddr(&self) -> Option<u64> {
        self.segments
            .iter()
            .filter(|s| s.exec)
            .map(|s| s.vaddr)
            .min()
    }
}

/// Parsed files by path (None: unreadable or not ELF: a JIT's memfd, a deleted file).
#[derive(Default)]
pub struct ElfCache {
    files: HashMap<Arc<str>, Option<Arc<ElfInfo>>>,
}

impl ElfCache {
    pub fn get(&mut self, path: &Arc<str>) -> Option<Arc<ElfInfo>> {
        self.files
            .entry(path.clone())
            .or_insert_with(|| ElfInfo::read(Path::new(&**path)).map(Arc::new))
            .clone()
    }

    /// [`get`](Self::get), or, when `path` cannot be read (deleted since), the same file
    /// through `fallback` (`/proc/<pid>/exe`, which holds a deleted executable while the
    /// process lives), kept under `path`.
    pub fn get_or(&mut self, path: &Arc<str>, fallback: &Path) -> Option<Arc<ElfInfo>> {
        if let Some(info) = self.get(path) {
            return Some(info);
        }
        let info = ElfInfo::read(fallback).map(Arc::new);
        if info.is_some() {
            self.files.insert(path.clone(), info.clone());
        }
        info
    }
}
