//! The model of every buffer and of this process's device mappings that `random` checks against.

use super::*;

/// One mapped page of a device, as the model expects it.
#[derive(Clone)]
pub(crate) struct Page {
    pub(crate) kind: DeviceKind,
    pub(crate) shared: bool,
    /// Which buffer page it maps.
    pub(crate) buf_page: u64,
    pub(crate) prot: i32,
    pub(crate) fd_writable: bool,
    /// A private page after its first store: its own copy (COW), no longer the buffer.
    pub(crate) copy: Option<Vec<u8>>,
    /// The VMA it belongs to (device VMAs never merge: they have vm_ops->close).
    pub(crate) vma: u64,
}

pub(crate) struct Vma {
    pub(crate) start: u64,
    pub(crate) end: u64,
    pub(crate) kind: DeviceKind,
    pub(crate) shared: bool,
    pub(crate) prot: i32,
    pub(crate) fd_writable: bool,
}

pub(crate) struct Model {
    pub(crate) npages: u64,
    /// Buffer contents, by DeviceKind as usize.
    pub(crate) bufs: [Vec<u8>; DeviceKind::ALL.len()],
    pub(crate) pages: BTreeMap<u64, Page>,
    pub(crate) next_vma: u64,
    /// VMAs that come from a split (munmap, mprotect, mremap shrink of part of a VMA).
    pub(crate) split: std::collections::BTreeSet<u64>,
    pub(crate) arena: u64,
}

pub(crate) fn ki(kind: DeviceKind) -> usize {
    kind as usize
}

impl Model {
    pub(crate) fn size(&self) -> u64 {
        self.npages * PAGE
    }

    pub(crate) fn vmas(&self) -> Vec<Vma> {
        let mut out: Vec<Vma> = Vec::new();
        let mut last_id = u64::MAX;
        for (&addr, p) in &self.pages {
            match out.last_mut() {
                Some(v) if p.vma == last_id && v.end == addr => v.end += PAGE,
                _ => out.push(Vma {
                    start: addr,
                    end: addr + PAGE,
                    kind: p.kind,
                    shared: p.shared,
                    prot: p.prot,
                    fd_writable: p.fd_writable,
                }),
            }
            last_id = p.vma;
        }
        out
    }

    /// Whether fork must fail: x86 PAT on 6.1 (`get_pat_info`) re-reads the cache mode of
    /// a private (copy-on-write) `remap_pfn_range` VMA from the PTE at its start, and once
    /// that first page is an anonymous COW copy it gives up and fails fork() (reported as
    /// ENOMEM). `mmap-stress fork-cases` shows it: only the cases whose first page was
    /// written fail. The fault device's VMAs are VM_MIXEDMAP, which PAT does not track.
    pub(crate) fn fork_refused(&self) -> bool {
        let mut last_vma = None;
        self.pages.values().any(|p| {
            let first = last_vma != Some(p.vma);
            last_vma = Some(p.vma);
            first && !p.shared && p.copy.is_some() && p.kind.eager()
        })
    }

    pub(crate) fn new_vma(&mut self) -> u64 {
        self.next_vma += 1;
        self.next_vma
    }

    /// A VMA boundary at `addr` (as munmap and mprotect make): the pages from addr to
    /// the end of its VMA get a new id.
    pub(crate) fn split_at(&mut self, addr: u64) {
        let (Some(before), Some(at)) = (self.pages.get(&(addr - PAGE)), self.pages.get(&addr))
        else {
            return;
        };
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
    pub(crate) fn expected(&self, addr: u64, off: usize) -> u8 {
        let p = &self.pages[&addr];
        match &p.copy {
            Some(c) => c[off],
            None => self.bufs[ki(p.kind)][(p.buf_page * PAGE) as usize + off],
        }
    }

    pub(crate) fn expected_range(&self, addr: u64, len: usize) -> Vec<u8> {
        (0..len as u64)
            .map(|i| {
                let a = addr + i;
                self.expected(a & !(PAGE - 1), (a & (PAGE - 1)) as usize)
            })
            .collect()
    }

    pub(crate) fn apply_store(&mut self, addr: u64, data: &[u8]) {
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

    pub(crate) fn slot_addr(&self, slot: u64) -> u64 {
        self.arena + slot * SLOT_PAGES * PAGE
    }

    pub(crate) fn slot_is_free(&self, slot: u64) -> bool {
        let start = self.slot_addr(slot);
        self.pages
            .range(start..start + SLOT_PAGES * PAGE)
            .next()
            .is_none()
    }

    /// Free slots go back to PROT_NONE anonymous memory, so nothing else (the allocator)
    /// can land in a hole a MAP_FIXED request would later replace.
    pub(crate) fn recover_slots(&self) {
        for slot in 0..SLOTS {
            if self.slot_is_free(slot) {
                let flags = (libc::MAP_PRIVATE
                    | libc::MAP_ANONYMOUS
                    | libc::MAP_FIXED
                    | libc::MAP_NORESERVE) as u64;
                sys(
                    libc::SYS_mmap,
                    [
                        self.slot_addr(slot),
                        SLOT_PAGES * PAGE,
                        0,
                        flags,
                        u64::MAX,
                        0,
                    ],
                )
                .expect("re-reserving an arena slot");
            }
        }
    }
}
