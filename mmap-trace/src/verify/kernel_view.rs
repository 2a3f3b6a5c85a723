//! verify's copy of the kernel's view of one address space: what /proc/<pid>/maps showed
//! at the last whole read, with every range a checkpoint has asked the kernel about since
//! put in its place. Between two whole reads only what calls touched is asked
//! (`PROCMAP_QUERY`); the rest is what the kernel showed before, which nothing changed.
//! The page checks find the mappings of a file here without walking every VMA.

use std::collections::{BTreeSet, HashMap};

use crate::space::{Region, RegionMap};

/// `(major, minor)` as maps shows it, and the inode.
pub type FileKey = ((u32, u32), u64);

#[derive(Clone, Debug, Default)]
pub struct KernelView {
    regions: RegionMap,
    /// The starts of the regions of each file (inode non-zero).
    by_file: HashMap<FileKey, BTreeSet<u64>>,
}

impl KernelView {
    /// A whole read of maps.
    pub fn whole(regions: &[Region]) -> Self {
        let mut view = Self {
            regions: RegionMap::from_regions(regions.iter().cloned()),
            by_file: HashMap::new(),
        };
        for r in regions {
            view.index(r.start, key(r));
        }
        view
    }

    pub fn regions(&self) -> &RegionMap {
        &self.regions
    }

    /// The regions mapping `file`, in address order.
    pub fn of_file(&self, file: FileKey) -> impl Iterator<Item = &Region> {
        self.by_file
            .get(&file)
            .into_iter()
            .flatten()
            .filter_map(|&start| self.regions.at(start))
    }

    /// `[start, end)` as the kernel shows it now: `now` are its VMAs there (whole or cut).
    pub fn splice(&mut self, start: u64, end: u64, now: &[Region]) {
        for r in self.regions.overlapping(start, end) {
            if let Some(file) = key(r)
                && let Some(starts) = self.by_file.get_mut(&file)
            {
                starts.remove(&r.start);
            }
        }
        // The edges' pieces outside the range keep their file under new starts.
        let edges: Vec<Region> = [
            self.regions
                .at(start.wrapping_sub(1))
                .filter(|r| r.end > start),
            self.regions.at(end).filter(|r| r.start < end),
        ]
        .into_iter()
        .flatten()
        .cloned()
        .collect();
        self.regions.splice(start, end, now.iter().cloned());
        for r in &edges {
            for piece in self.regions.overlapping(r.start, r.end) {
                self.by_file
                    .entry(match key(piece) {
                        Some(k) => k,
                        None => continue,
                    })
                    .or_default()
                    .insert(piece.start);
            }
        }
        let inside: Vec<(u64, Option<FileKey>)> = self
            .regions
            .overlapping(start, end)
            .map(|r| (r.start, key(r)))
            .collect();
        for (s, k) in inside {
            self.index(s, k);
        }
    }

    fn index(&mut self, start: u64, file: Option<FileKey>) {
        if let Some(file) = file {
            self.by_file.entry(file).or_default().insert(start);
        }
    }
}

fn key(r: &Region) -> Option<FileKey> {
    (r.inode != 0).then_some((r.dev, r.inode))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::space::{Backing, region::tests::anon};

    fn file(start: u64, end: u64, inode: u64) -> Region {
        Region {
            dev: (8, 1),
            inode,
            backing: Backing::File("/f".into()),
            ..anon(start, end, "r--p")
        }
    }

    #[test]
    fn splices_keep_the_file_index() {
        let mut v = KernelView::whole(&[file(0x1000, 0x4000, 7), anon(0x4000, 0x5000, "rw-p")]);
        assert_eq!(v.of_file(((8, 1), 7)).count(), 1);
        // The middle page of the file is unmapped: two pieces of it remain.
        v.splice(0x2000, 0x3000, &[]);
        let pieces: Vec<(u64, u64)> = v.of_file(((8, 1), 7)).map(|r| (r.start, r.end)).collect();
        assert_eq!(pieces, [(0x1000, 0x2000), (0x3000, 0x4000)]);
        // Another file mapped over the anonymous page.
        v.splice(0x4000, 0x5000, &[file(0x4000, 0x5000, 9)]);
        assert_eq!(v.of_file(((8, 1), 9)).count(), 1);
        v.splice(0x0, 0x10000, &[]);
        assert_eq!(v.of_file(((8, 1), 7)).count(), 0);
        assert!(v.regions().iter().next().is_none());
    }
}
