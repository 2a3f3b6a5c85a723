//! An address space's regions, kept by start address: sorted, non-overlapping, found and
//! changed in O(log n). A call touches a few regions however many a process has, so the
//! model's work per call, and a checkpoint that compares only what calls touched, cost
//! the same at 60,000 VMAs as at 30.

use std::{collections::BTreeMap, ops::Bound};

use super::region::Region;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RegionMap {
    by_start: BTreeMap<u64, Region>,
}

impl RegionMap {
    /// From regions that do not overlap (in any order; empty ones are dropped).
    pub fn from_regions(regions: impl IntoIterator<Item = Region>) -> Self {
        Self {
            by_start: regions
                .into_iter()
                .filter(|r| r.start < r.end)
                .map(|r| (r.start, r))
                .collect(),
        }
    }

    /// In address order.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = &Region> {
        self.by_start.values()
    }

    pub fn to_vec(&self) -> Vec<Region> {
        self.by_start.values().cloned().collect()
    }

    /// The region holding `addr`.
    pub fn at(&self, addr: u64) -> Option<&Region> {
        self.by_start
            .range(..=addr)
            .next_back()
            .map(|(_, r)| r)
            .filter(|r| r.end > addr)
    }

    /// The region that starts exactly at `start`.
    pub fn starting_at_mut(&mut self, start: u64) -> Option<&mut Region> {
        self.by_start.get_mut(&start)
    }

    /// The regions overlapping `[start, end)`, in address order.
    pub fn overlapping(&self, start: u64, end: u64) -> impl Iterator<Item = &Region> {
        let first = self
            .by_start
            .range(..start)
            .next_back()
            .map(|(_, r)| r)
            .filter(|r| r.end > start);
        let rest = (start < end)
            .then(|| self.by_start.range(start..end).map(|(_, r)| r))
            .into_iter()
            .flatten();
        first.filter(|_| start < end).into_iter().chain(rest)
    }

    /// The starts of the regions overlapping `[start, end)` (to change them one by one).
    pub fn starts_overlapping(&self, start: u64, end: u64) -> Vec<u64> {
        self.overlapping(start, end).map(|r| r.start).collect()
    }

    /// The regions from the one holding (or first after) `addr` on.
    pub fn from(&self, addr: u64) -> impl Iterator<Item = &Region> {
        let first = self
            .by_start
            .range(..addr)
            .next_back()
            .map(|(_, r)| r)
            .filter(|r| r.end > addr);
        first.into_iter().chain(
            self.by_start
                .range((Bound::Included(addr), Bound::Unbounded))
                .map(|(_, r)| r),
        )
    }

    /// The last region ending at or before `addr`.
    pub fn before(&self, addr: u64) -> Option<&Region> {
        self.by_start
            .range(..addr)
            .rev()
            .map(|(_, r)| r)
            .find(|r| r.end <= addr)
    }

    /// Puts `region` where nothing is (the caller cleared its range).
    pub fn insert(&mut self, region: Region) {
        if region.start < region.end {
            self.by_start.insert(region.start, region);
        }
    }

    pub fn remove(&mut self, start: u64) -> Option<Region> {
        self.by_start.remove(&start)
    }

    /// Cuts the region holding `addr` strictly inside in two; false when none does.
    pub fn split_at(&mut self, addr: u64) -> bool {
        let Some(r) = self
            .by_start
            .range_mut(..addr)
            .next_back()
            .map(|(_, r)| r)
            .filter(|r| r.end > addr)
        else {
            return false;
        };
        let upper = r.upper_part(addr);
        r.end = addr;
        self.by_start.insert(addr, upper);
        true
    }

    /// Merges the neighbours that continue each other from the region before `start` to
    /// the one after `end` (what a whole-list normalize would do there).
    pub fn merge_around(&mut self, start: u64, end: u64) {
        let mut keys: Vec<u64> = Vec::new();
        if let Some(before) = self.before(start.max(1)) {
            keys.push(before.start);
        }
        keys.extend(self.starts_overlapping(start, end.max(start + 1)));
        if let Some((&k, _)) = self.by_start.range(end.max(start + 1)..).next() {
            keys.push(k);
        }
        keys.dedup();
        let mut current: Option<u64> = None;
        for k in keys {
            match current {
                Some(c) if self.by_start[&c].continues(&self.by_start[&k]) => {
                    let next = self.by_start.remove(&k).expect("a key just listed");
                    if let Some(merged) = self.by_start.get_mut(&c) {
                        merged.end = next.end;
                    }
                }
                _ => current = Some(k),
            }
        }
    }

    /// Copies of the regions over `[start, end)`, cut at its edges.
    pub fn clipped(&self, start: u64, end: u64) -> Vec<Region> {
        self.overlapping(start, end)
            .map(|r| {
                let mut c = if r.start < start {
                    r.upper_part(start)
                } else {
                    r.clone()
                };
                c.end = c.end.min(end);
                c
            })
            .collect()
    }

    /// Makes `[start, end)` hold exactly `pieces` (clipped to it): the rest stays.
    pub fn splice(&mut self, start: u64, end: u64, pieces: impl IntoIterator<Item = Region>) {
        if start >= end {
            return;
        }
        self.split_at(start);
        self.split_at(end);
        for k in self.starts_overlapping(start, end) {
            self.by_start.remove(&k);
        }
        for p in pieces {
            let mut c = if p.start < start {
                p.upper_part(start)
            } else {
                p
            };
            c.end = c.end.min(end);
            self.insert(c);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::space::region::tests::anon;

    fn map(regions: &[(u64, u64, &str)]) -> RegionMap {
        RegionMap::from_regions(regions.iter().map(|&(s, e, p)| anon(s, e, p)))
    }

    fn spans(m: &RegionMap) -> Vec<(u64, u64)> {
        m.iter().map(|r| (r.start, r.end)).collect()
    }

    #[test]
    fn finds_and_cuts_by_address() {
        let mut m = map(&[(0x1000, 0x3000, "rw-p"), (0x5000, 0x6000, "r--p")]);
        assert_eq!(m.at(0x2fff).map(|r| r.start), Some(0x1000));
        assert!(m.at(0x3000).is_none());
        assert_eq!(m.starts_overlapping(0x2000, 0x5001), [0x1000, 0x5000]);
        assert_eq!(m.starts_overlapping(0x3000, 0x5000), Vec::<u64>::new());
        assert_eq!(m.starts_overlapping(0x2000, 0x2000), Vec::<u64>::new());
        assert_eq!(m.before(0x5000).map(|r| r.start), Some(0x1000));
        assert!(m.split_at(0x2000));
        assert!(!m.split_at(0x2000));
        assert_eq!(
            spans(&m),
            [(0x1000, 0x2000), (0x2000, 0x3000), (0x5000, 0x6000)]
        );
        m.merge_around(0x2000, 0x2000);
        assert_eq!(spans(&m), [(0x1000, 0x3000), (0x5000, 0x6000)]);
        m.splice(0x2000, 0x5800, [anon(0x0, 0x9000, "---p")]);
        assert_eq!(
            spans(&m),
            [(0x1000, 0x2000), (0x2000, 0x5800), (0x5800, 0x6000)]
        );
        assert_eq!(m.clipped(0x1800, 0x2800).len(), 2);
    }
}
