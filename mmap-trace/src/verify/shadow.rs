//! The shadow address space: verify's model of one process (the semantics are
//! `space::model`'s), merged after each call so it stays small, and checked against the
//! kernel's view at each checkpoint.

use crate::space::{
    AddressSpace, Applied, Backing, CallEnv, Comparison, Region, RegionMap, apply_syscall, compare,
};

pub use crate::space::{Difference, PAGE};

#[derive(Clone, Default, Debug)]
pub struct ShadowSpace {
    space: AddressSpace,
}

impl ShadowSpace {
    /// From the kernel's view (at attach or exec) and /proc/<pid>/stat's start_brk and
    /// startstack.
    pub fn seed(regions: Vec<Region>, start_brk: u64, start_stack: u64) -> Self {
        let mut space = AddressSpace::from_kernel(regions, start_brk).with_start_stack(start_stack);
        space.track_touched();
        Self { space }
    }

    #[cfg(test)]
    pub fn regions(&self) -> Vec<Region> {
        self.space.regions().to_vec()
    }

    /// The model itself, for the calls that are not syscalls (remap_pfn_range, stack
    /// growth, adoption).
    pub fn space_mut(&mut self) -> &mut AddressSpace {
        &mut self.space
    }

    pub fn apply_syscall(
        &mut self,
        nr: u64,
        args: [u64; 6],
        ret: i64,
        env: &dyn CallEnv,
    ) -> Applied {
        let applied = apply_syscall(&mut self.space, nr, args, ret, env);
        self.space.merge();
        applied
    }

    /// The ranges the model changed since the last call: with the calls' own ranges,
    /// what a checkpoint compares.
    pub fn take_touched(&mut self) -> Vec<(u64, u64)> {
        self.space.take_touched()
    }

    /// The child at fork (without MADV_DONTFORK ranges).
    pub fn fork_child(&self) -> Self {
        Self {
            space: self.space.fork_child(),
        }
    }

    /// Stack and MAP_GROWSDOWN growth (a fault, no syscall) seen in the kernel's view;
    /// returns the ranges grown (empty: the change was something else).
    pub fn grow_down(&mut self, kernel: &[Region]) -> Vec<(u64, u64)> {
        let grown = self.space.grow_down(kernel);
        self.space.merge();
        grown
    }

    /// Compares with the kernel's whole view. A note (same file, new name) is said once:
    /// the shadow takes the kernel's name for it.
    pub fn check(&mut self, kernel: &[Region]) -> Comparison {
        let model = self.space.named_in(self.space.regions().to_vec(), kernel);
        let comparison = compare(&model, kernel);
        self.settle_notes(kernel, &comparison);
        comparison
    }

    /// Compares over `windows` only (sorted, not overlapping), `kernel` being the kernel's
    /// VMAs over them: what nothing touched is not looked at.
    pub fn check_windows(&mut self, windows: &[(u64, u64)], kernel: &RegionMap) -> Comparison {
        let mut comparison = Comparison::default();
        for &(start, end) in windows {
            let whole: Vec<Region> = kernel.overlapping(start, end).cloned().collect();
            let model = self
                .space
                .named_in(self.space.regions().clipped(start, end), &whole);
            let c = compare(&model, &kernel.clipped(start, end));
            comparison.differences.extend(c.differences);
            comparison.notes.extend(c.notes);
        }
        let kernel: Vec<Region> = comparison
            .notes
            .iter()
            .flat_map(|n| kernel.overlapping(n.start, n.end).cloned())
            .collect();
        self.settle_notes(&kernel, &comparison);
        comparison
    }

    fn settle_notes(&mut self, kernel: &[Region], comparison: &Comparison) {
        for note in &comparison.notes {
            if let Some(Backing::File(name)) = kernel
                .iter()
                .find(|k| k.start <= note.start && note.start < k.end)
                .map(|k| &k.backing)
            {
                self.space.rename(note.start, note.end, name);
            }
        }
        self.space.merge();
    }

    /// Takes the kernel's view where the comparison found differences (an unmodelled
    /// change); returns the ranges taken, for the caller's `unmodelled` record.
    pub fn adopt(&mut self, kernel: &[Region], comparison: &Comparison) -> Vec<(u64, u64)> {
        let ranges = comparison.ranges();
        self.space.adopt(kernel, &ranges);
        self.space.merge();
        ranges
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::space::{NoEnv, region::tests::anon};

    const RW: u64 = (libc::PROT_READ | libc::PROT_WRITE) as u64;
    const ANON: u64 = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64;
    const MMAP: u64 = 9;
    const MPROTECT: u64 = 10;

    /// The shadow merges what the calls cut back together, like the kernel.
    #[test]
    fn mprotect_splits_in_three_and_merges_back() {
        let mut s = ShadowSpace::default();
        s.apply_syscall(MMAP, [0, 3 * PAGE, RW, ANON, u64::MAX, 0], 0x10000, &NoEnv);
        s.apply_syscall(MPROTECT, [0x11000, PAGE, 1, 0, 0, 0], 0, &NoEnv);
        assert_eq!(s.regions().len(), 3);
        s.apply_syscall(MPROTECT, [0x11000, PAGE, RW, 0, 0, 0], 0, &NoEnv);
        assert_eq!(s.regions(), [anon(0x10000, 0x13000, "rw-p")]);
    }

    #[test]
    fn adopting_takes_the_kernels_view_where_it_differs() {
        let mut s = ShadowSpace::seed(vec![anon(0x1000, 0x3000, "rw-p")], 0, 0);
        let kernel = vec![
            anon(0x1000, 0x2000, "rw-p"),
            anon(0x2000, 0x3000, "r--p"),
            anon(0x5000, 0x6000, "rw-p"),
        ];
        let c = s.check(&kernel);
        assert_eq!(s.adopt(&kernel, &c), [(0x2000, 0x3000), (0x5000, 0x6000)]);
        assert!(s.check(&kernel).differences.is_empty());
    }
}
