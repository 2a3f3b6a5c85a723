//! Each traced process's file mappings, as the trace itself recorded them (exec's image,
//! the mmap events, a /proc/<pid>/maps snapshot when a process is first seen), so its
//! stacks unwind and symbolize after it has exited; and its unwinder, rebuilt when the
//! mappings change.

use std::{collections::HashMap, sync::Arc};

use foldhash::fast::RandomState;

#[cfg(target_arch = "aarch64")]
use framehop::aarch64::{
    CacheAarch64 as Cache, PtrAuthMask, UnwindRegsAarch64, UnwinderAarch64 as ArchUnwinder,
};
#[cfg(target_arch = "x86_64")]
use framehop::x86_64::{CacheX86_64 as Cache, UnwindRegsX86_64, UnwinderX86_64 as ArchUnwinder};
use framehop::{ExplicitModuleSectionInfo, Module, Unwinder as _};

use super::elf::{ElfCache, ElfInfo};
use crate::kernel::decode::StackCopy;
use crate::space::{Lifecycle, ProcessState, ProcessTable};

/// The registers the unwinder starts from: ip, sp and rbp.
#[cfg(target_arch = "x86_64")]
fn unwind_regs(s: &StackCopy<'_>) -> UnwindRegsX86_64 {
    UnwindRegsX86_64::new(s.ip, s.sp, s.bp)
}

/// The registers the unwinder starts from: lr, sp and x29. Debian's arm64 kernels
/// enable pointer authentication, so return addresses (lr, and those saved on the
/// stack) carry a PAC in their top bits: user addresses are below 2^48 (48-bit VAs),
/// everything above is stripped.
#[cfg(target_arch = "aarch64")]
fn unwind_regs(s: &StackCopy<'_>) -> UnwindRegsAarch64 {
    UnwindRegsAarch64::new_with_ptr_auth_mask(PtrAuthMask((1 << 48) - 1), s.lr, s.sp, s.bp)
}

const PAGE: u64 = 4096;
/// Frames unwound at most per stack (the copy ends long before on real programs).
const MAX_FRAMES: usize = 128;

/// A file mapped at `start..end` from file offset `offset`.
#[derive(Clone, Debug)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    pub offset: u64,
    pub path: Arc<str>,
    pub exec: bool,
}

/// One frame of an unwound stack: its address, and where that is in a mapped file.
#[derive(Clone, Debug)]
pub struct RawFrame {
    pub addr: u64,
    /// The address to look up: the call instruction for a return address.
    pub lookup: u64,
    /// The mapping's file and the file offset of `lookup`, when a mapping covers it.
    pub file: Option<(Arc<str>, u64)>,
}

/// Where an unwind started: the registers of the stack copy.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct UnwindStart {
    ip: u64,
    sp: u64,
    bp: u64,
    lr: u64,
}

/// An unwind's result, and every stack word it read to get there (address, and the word
/// or `None` where the copy ended): a stack copy from the same registers that holds the
/// same words at those addresses unwinds to the same frames, since the unwinder's path
/// is decided by nothing else (the process's mappings and unwinder, the other inputs,
/// empty the cache when they change). A loop calling from one site, the costly case,
/// then pays a comparison of a dozen words instead of the unwind.
struct Unwound {
    reads: Vec<(u64, Option<u64>)>,
    frames: Arc<[RawFrame]>,
}

/// Unwinds remembered per process; past this many the process's cache starts over (a
/// program with more call sites unwinds the others again).
const UNWOUND_MAX: usize = 1024;

#[derive(Default)]
struct Process {
    /// Oldest first; a later mapping of the same range wins.
    mappings: Vec<Mapping>,
    unwinder: Option<ArchUnwinder<Arc<[u8]>>>,
    /// Looked up for every stacked record: a fast hash (std's SipHash, over this and
    /// the reader's other per-record maps, was about a tenth of the reader's own CPU in
    /// a profile of the bench loop).
    unwound: HashMap<UnwindStart, Unwound, RandomState>,
}

impl Process {
    fn find(&self, addr: u64) -> Option<&Mapping> {
        self.mappings
            .iter()
            .rev()
            .find(|m| m.start <= addr && addr < m.end)
    }
}

/// A forked child starts with its parent's mappings; exec starts over.
impl ProcessState for Process {
    fn fork_child(&self) -> Self {
        Process {
            mappings: self.mappings.clone(),
            unwinder: None,
            unwound: HashMap::default(),
        }
    }
}

#[derive(Default)]
pub struct Processes {
    by_pid: ProcessTable<Process>,
    pub elf: ElfCache,
    cache: Option<Cache>,
}

impl Processes {
    pub fn known(&self, pid: u32) -> bool {
        self.by_pid.get(pid).is_some()
    }

    /// A fork, exec or exit: the one rule of `space::lifecycle` (an exit releases the
    /// process's mappings and unwinder).
    pub fn lifecycle(&mut self, change: Lifecycle) {
        self.by_pid.apply(change);
    }

    /// exec replaced the address space.
    pub fn exec(&mut self, pid: u32) {
        self.by_pid.apply(Lifecycle::Exec { pid });
    }

    pub fn add(&mut self, pid: u32, mapping: Mapping) {
        let process = self.by_pid.entry(pid);
        if mapping.exec {
            process.unwinder = None;
        }
        // A frame's file and offset come from the mappings: remembered unwinds may name
        // another file now.
        process.unwound.clear();
        // What the new mapping covers whole is gone for good: a process that maps and
        // unmaps in a loop keeps a bounded list.
        process
            .mappings
            .retain(|m| m.start < mapping.start || m.end > mapping.end);
        process.mappings.push(mapping);
    }

    /// A file exec (or the loader it named) mapped, placed by its ELF segments: `bias`
    /// is where the file's address 0 went.
    pub fn add_image(&mut self, pid: u32, path: Arc<str>, info: &ElfInfo, bias: u64) {
        for s in &info.segments {
            let start = (bias + s.vaddr) & !(PAGE - 1);
            self.add(
                pid,
                Mapping {
                    start,
                    end: (bias + s.vaddr + s.memsz).next_multiple_of(PAGE),
                    offset: s.offset & !(PAGE - 1),
                    path: path.clone(),
                    exec: s.exec,
                },
            );
        }
    }

    /// Unwinds the stack copy of a task of `pid` (its bytes from `sp` up): the frames of
    /// an earlier unwind from the same registers when the copy holds the same words
    /// where that one read ([`Unwound`]), otherwise a fresh unwind.
    pub fn unwind(&mut self, pid: u32, copy: &StackCopy<'_>) -> Arc<[RawFrame]> {
        let (sp, stack) = (copy.sp, copy.bytes);
        let word = |addr: u64| -> Option<u64> {
            let at = usize::try_from(addr.checked_sub(sp)?).ok()?;
            let bytes = stack.get(at..at.checked_add(8)?)?;
            Some(u64::from_le_bytes(bytes.try_into().ok()?))
        };
        let start = UnwindStart {
            ip: copy.ip,
            sp,
            bp: copy.bp,
            lr: copy.lr,
        };
        let Self { by_pid, elf, cache } = self;
        let process = by_pid.entry(pid);
        if let Some(done) = process.unwound.get(&start)
            && done.reads.iter().all(|&(addr, seen)| word(addr) == seen)
        {
            return done.frames.clone();
        }
        let mut reads = Vec::new();
        let frames: Arc<[RawFrame]> = fresh_unwind(process, elf, cache, copy, |addr| {
            let seen = word(addr);
            reads.push((addr, seen));
            seen.ok_or(())
        })
        .into();
        if process.unwound.len() >= UNWOUND_MAX {
            process.unwound.clear();
        }
        process.unwound.insert(
            start,
            Unwound {
                reads,
                frames: frames.clone(),
            },
        );
        frames
    }
}

/// Unwinds `copy` with the process's unwinder (built from its mappings when they
/// changed), reading the stack through `read_stack`.
fn fresh_unwind(
    process: &mut Process,
    elf: &mut ElfCache,
    cache: &mut Option<Cache>,
    copy: &StackCopy<'_>,
    mut read_stack: impl FnMut(u64) -> Result<u64, ()>,
) -> Vec<RawFrame> {
    if process.unwinder.is_none() {
        process.unwinder = Some(build_unwinder(&process.mappings, elf));
    }
    let Some(unwinder) = process.unwinder.as_ref() else {
        return Vec::new();
    };
    let cache = cache.get_or_insert_with(Cache::new);
    let mut frames = Vec::new();
    let mut iter = unwinder.iter_frames(copy.ip, unwind_regs(copy), cache, &mut read_stack);
    while frames.len() < MAX_FRAMES {
        let Ok(Some(address)) = iter.next() else {
            break;
        };
        let lookup = address.address_for_lookup();
        let addr = address.address();
        let file = process
            .find(lookup)
            .map(|m| (m.path.clone(), lookup - m.start + m.offset));
        frames.push(RawFrame { addr, lookup, file });
    }
    frames
}

/// One framehop module per executable mapping of an ELF file with unwind sections (the
/// newest wins where two overlap).
fn build_unwinder(mappings: &[Mapping], elf: &mut ElfCache) -> ArchUnwinder<Arc<[u8]>> {
    let mut unwinder = ArchUnwinder::new();
    let mut taken: Vec<std::ops::Range<u64>> = Vec::new();
    for m in mappings.iter().rev().filter(|m| m.exec) {
        if taken.iter().any(|r| r.start < m.end && m.start < r.end) {
            continue;
        }
        let Some(info) = elf.get(&m.path) else {
            continue;
        };
        let Some(svma) = info.svma_of_offset(m.offset) else {
            continue;
        };
        let bias = m.start.wrapping_sub(svma);
        let section_info = ExplicitModuleSectionInfo {
            base_svma: 0,
            text_svma: info.text.as_ref().map(|s| s.svma.clone()),
            text: info.text.as_ref().map(|s| s.data.clone()),
            got_svma: info.got.clone(),
            eh_frame_svma: info.eh_frame.as_ref().map(|s| s.svma.clone()),
            eh_frame: info.eh_frame.as_ref().map(|s| s.data.clone()),
            eh_frame_hdr_svma: info.eh_frame_hdr.as_ref().map(|s| s.svma.clone()),
            eh_frame_hdr: info.eh_frame_hdr.as_ref().map(|s| s.data.clone()),
            ..ExplicitModuleSectionInfo::default()
        };
        unwinder.add_module(Module::new(
            m.path.to_string(),
            m.start..m.end,
            bias,
            section_info,
        ));
        taken.push(m.start..m.end);
    }
    unwinder
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;

    /// This thread's registers here and a copy of its stack from `sp` up (up to 16 KiB,
    /// within the stack's mapping).
    #[inline(never)]
    fn own_stack() -> (u64, u64, u64, Vec<u8>) {
        let (ip, sp, bp): (u64, u64, u64);
        // SAFETY: reads three registers, writes nothing else.
        unsafe {
            std::arch::asm!(
                "lea {ip}, [rip]",
                "mov {sp}, rsp",
                "mov {bp}, rbp",
                ip = out(reg) ip,
                sp = out(reg) sp,
                bp = out(reg) bp,
            );
        }
        let maps = std::fs::read_to_string("/proc/self/maps").expect("/proc/self/maps");
        let top = maps
            .lines()
            .filter_map(|l| {
                let (range, _) = l.split_once(' ')?;
                let (start, end) = range.split_once('-')?;
                Some((
                    u64::from_str_radix(start, 16).ok()?,
                    u64::from_str_radix(end, 16).ok()?,
                ))
            })
            .find(|&(start, end)| start <= sp && sp < end)
            .map(|(_, end)| end)
            .expect("the stack's mapping");
        let len = (top - sp).min(16384) as usize;
        // SAFETY: `sp..sp + len` is inside this thread's mapped stack.
        let bytes = unsafe { std::slice::from_raw_parts(sp as *const u8, len) }.to_vec();
        (ip, sp, bp, bytes)
    }

    fn model() -> Processes {
        let mut processes = Processes::default();
        for m in super::super::snapshot(std::process::id()) {
            processes.add(1, m);
        }
        processes
    }

    fn same(a: &[RawFrame], b: &[RawFrame]) -> bool {
        a.len() == b.len()
            && a.iter().zip(b).all(|(x, y)| {
                x.addr == y.addr
                    && x.lookup == y.lookup
                    && x.file.as_ref().map(|(p, o)| (&**p, *o))
                        == y.file.as_ref().map(|(p, o)| (&**p, *o))
            })
    }

    fn stack_copy(ip: u64, sp: u64, bp: u64, bytes: &[u8]) -> StackCopy<'_> {
        StackCopy {
            ip,
            sp,
            bp,
            lr: 0,
            bytes,
        }
    }

    /// A remembered unwind is returned only for a copy with the same words where it
    /// read, and is then exactly what a fresh unwind gives; a copy that differs in one
    /// of those words is unwound afresh.
    #[test]
    fn remembered_unwinds_equal_fresh_ones() {
        let (ip, sp, bp, original) = own_stack();
        let mut processes = model();
        let first = processes.unwind(1, &stack_copy(ip, sp, bp, &original));
        assert!(first.len() >= 3, "the test's own stack unwinds: {first:?}");
        assert!(
            first.iter().any(|f| f.file.is_some()),
            "frames are placed in files: {first:?}"
        );
        let again = processes.unwind(1, &stack_copy(ip, sp, bp, &original));
        assert!(Arc::ptr_eq(&first, &again), "the same copy is recognized");
        let fresh = model().unwind(1, &stack_copy(ip, sp, bp, &original));
        assert!(same(&again, &fresh));

        let reads = processes
            .by_pid
            .entry(1)
            .unwound
            .values()
            .next()
            .map(|u| u.reads.clone());
        let reads = reads.expect("the unwind is remembered");
        let with_word = |addr: u64| {
            let mut bytes = original.clone();
            let at = (addr - sp) as usize;
            bytes[at..at + 8].copy_from_slice(&0x10u64.to_le_bytes());
            bytes
        };

        // A word the unwind did not read changes nothing: still recognized.
        let unread = (0..original.len() / 8)
            .map(|i| sp + 8 * i as u64)
            .find(|a| reads.iter().all(|(r, _)| r != a))
            .expect("a word the unwind did not read");
        let other = with_word(unread);
        let recognized = processes.unwind(1, &stack_copy(ip, sp, bp, &other));
        assert!(Arc::ptr_eq(&first, &recognized));
        assert!(same(
            &recognized,
            &model().unwind(1, &stack_copy(ip, sp, bp, &other))
        ));

        // The caller's return address, where the unwind read it: changed, the copy is
        // unwound afresh, and differs.
        let (addr, _) = *reads
            .iter()
            .find(|(_, word)| *word == Some(first[1].addr))
            .expect("the unwind read the caller's return address");
        let changed_copy = with_word(addr);
        let changed = processes.unwind(1, &stack_copy(ip, sp, bp, &changed_copy));
        assert!(
            !Arc::ptr_eq(&first, &changed),
            "a changed word is unwound afresh"
        );
        let fresh = model().unwind(1, &stack_copy(ip, sp, bp, &changed_copy));
        assert!(same(&changed, &fresh));
        assert!(!same(&changed, &first));
    }
}
