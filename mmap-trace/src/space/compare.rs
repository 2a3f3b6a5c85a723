//! How the model differs from the kernel's view: differences (a mismatch) and notes (the
//! path text of a file changed while its identity did not: a rename, an unlink's
//! " (deleted)", a mount move — no VMA changed, so nothing to reproach the events with).

use super::region::{Backing, Region};

/// What a difference is about: a column of maps, a page's PFN (pagemap) or a maps line
/// that could not be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Field {
    Mapping,
    Perms,
    Offset,
    Device,
    Inode,
    Path,
    Pfn,
    #[serde(rename = "maps line")]
    MapsLine,
}

impl Field {
    pub const fn name(self) -> &'static str {
        match self {
            Field::Mapping => "mapping",
            Field::Perms => "perms",
            Field::Offset => "offset",
            Field::Device => "device",
            Field::Inode => "inode",
            Field::Path => "path",
            Field::Pfn => "pfn",
            Field::MapsLine => "maps line",
        }
    }

    /// The kernel's account it was read from.
    pub const fn source(self) -> &'static str {
        match self {
            Field::Pfn => "pagemap",
            _ => "maps",
        }
    }
}

impl std::fmt::Display for Field {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Tests and callers compare with the names the JSON records carry.
impl PartialEq<&str> for Field {
    fn eq(&self, other: &&str) -> bool {
        self.name() == *other
    }
}

/// One way the kernel's account differs from the model over [start, end).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Difference {
    pub start: u64,
    pub end: u64,
    pub field: Field,
    /// The model's value (what the events imply).
    pub expected: String,
    /// The kernel's value (/proc/<pid>/maps).
    pub found: String,
}

/// The same file (device and inode agree) under another name in maps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Note {
    pub start: u64,
    pub end: u64,
    pub expected: String,
    pub found: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Comparison {
    pub differences: Vec<Difference>,
    pub notes: Vec<Note>,
}

impl Comparison {
    /// The ranges that differ, merged.
    pub fn ranges(&self) -> Vec<(u64, u64)> {
        let mut r: Vec<(u64, u64)> = self.differences.iter().map(|d| (d.start, d.end)).collect();
        r.sort_unstable();
        let mut out: Vec<(u64, u64)> = Vec::new();
        for (s, e) in r {
            match out.last_mut() {
                Some(last) if s <= last.1 => last.1 = last.1.max(e),
                _ => out.push((s, e)),
            }
        }
        out
    }
}

/// Walks both accounts over every boundary either has, so a difference is reported for
/// exactly the addresses it covers, whatever VMA boundaries either side drew.
pub fn compare(model: &[Region], kernel: &[Region]) -> Comparison {
    let mut bounds: Vec<u64> = model
        .iter()
        .chain(kernel)
        .flat_map(|r| [r.start, r.end])
        .collect();
    bounds.sort_unstable();
    bounds.dedup();
    fn covering(regions: &[Region], a: u64) -> Option<&Region> {
        let i = regions.partition_point(|r| r.end <= a);
        regions.get(i).filter(|r| r.start <= a)
    }
    let mut out = Comparison::default();
    for w in bounds.windows(2) {
        let (start, end) = (w[0], w[1]);
        let mut note = None;
        let diffs = match (covering(model, start), covering(kernel, start)) {
            (None, None) => vec![],
            // The main stack grows on page faults, not through syscalls.
            (None, Some(k)) if k.backing == Backing::Stack => vec![],
            (None, Some(k)) => vec![(Field::Mapping, "unmapped".to_string(), k.to_string())],
            (Some(s), None) => vec![(Field::Mapping, s.to_string(), "unmapped".to_string())],
            (Some(s), Some(k)) => fields(s, k, start, &mut note),
        };
        for (field, expected, found) in diffs {
            match out.differences.last_mut() {
                Some(d)
                    if d.end == start
                        && d.field == field
                        && d.expected == expected
                        && d.found == found =>
                {
                    d.end = end
                }
                _ => out.differences.push(Difference {
                    start,
                    end,
                    field,
                    expected,
                    found,
                }),
            }
        }
        if let Some((expected, found)) = note {
            match out.notes.last_mut() {
                Some(n) if n.end == start && n.expected == expected && n.found == found => {
                    n.end = end
                }
                _ => out.notes.push(Note {
                    start,
                    end,
                    expected,
                    found,
                }),
            }
        }
    }
    out
}

fn fields(
    s: &Region,
    k: &Region,
    at: u64,
    note: &mut Option<(String, String)>,
) -> Vec<(Field, String, String)> {
    let mut d = Vec::new();
    if s.perms != k.perms {
        d.push((Field::Perms, s.perms.clone(), k.perms.clone()));
    }
    if k.backing == Backing::Stack && s.backing == Backing::Stack {
        return d;
    }
    let both_files = s.has_file() && k.has_file();
    let by_identity = both_files && s.identity_known();
    if s.backing != k.backing {
        if !by_identity {
            d.push((Field::Path, s.backing.to_string(), k.backing.to_string()));
            return d;
        }
        // Compared by (device, inode) below; the name alone is a note when they agree.
        if s.dev == k.dev && s.inode == k.inode {
            *note = Some((s.backing.to_string(), k.backing.to_string()));
        }
    }
    let offset_at = |r: &Region| {
        if r.has_file() {
            r.offset.wrapping_add(at - r.start)
        } else {
            r.offset
        }
    };
    if offset_at(s) != offset_at(k) {
        d.push((
            Field::Offset,
            format!("{:#x}", offset_at(s)),
            format!("{:#x}", offset_at(k)),
        ));
    }
    // Shared anonymous memory and SysV segments live on shmem's internal mount, whatever
    // its device number is on this boot; shared anonymous memory's inode is unknown.
    let shmem = s.shared_anon() || s.hidden.sysv_shm;
    if s.dev != k.dev && !shmem && !s.overlay {
        d.push((
            Field::Device,
            format!("{:02x}:{:02x}", s.dev.0, s.dev.1),
            format!("{:02x}:{:02x}", k.dev.0, k.dev.1),
        ));
    }
    if s.inode != k.inode && !s.shared_anon() && !s.overlay {
        d.push((Field::Inode, s.inode.to_string(), k.inode.to_string()));
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::space::region::{Name, tests::anon};

    fn file(start: u64, end: u64, path: &[u8], inode: u64) -> Region {
        Region {
            dev: (8, 1),
            inode,
            backing: Backing::File(Name(path.to_vec())),
            ..anon(start, end, "r--p")
        }
    }

    #[test]
    fn compare_finds_each_planted_difference() {
        let model = vec![anon(0x1000, 0x4000, "rw-p")];
        assert_eq!(compare(&model, &model), Comparison::default());
        // The kernel drew two VMAs where the model has one: not a difference.
        let split = vec![anon(0x1000, 0x2000, "rw-p"), anon(0x2000, 0x4000, "rw-p")];
        assert_eq!(compare(&model, &split), Comparison::default());
        let perms = vec![
            anon(0x1000, 0x2000, "rw-p"),
            anon(0x2000, 0x3000, "r--p"),
            anon(0x3000, 0x4000, "rw-p"),
        ];
        let d = compare(&model, &perms).differences;
        assert_eq!(d.len(), 1);
        assert_eq!(
            (d[0].start, d[0].end, d[0].field),
            (0x2000, 0x3000, Field::Perms)
        );
        assert_eq!(
            (d[0].expected.as_str(), d[0].found.as_str()),
            ("rw-p", "r--p")
        );
        let shifted = vec![anon(0x2000, 0x5000, "rw-p")];
        let d = compare(&model, &shifted).differences;
        assert_eq!(d.len(), 2, "{d:?}");
        assert_eq!(
            (d[0].start, d[0].end, d[0].found.as_str()),
            (0x1000, 0x2000, "unmapped")
        );
        assert_eq!(
            (d[1].start, d[1].end, d[1].expected.as_str()),
            (0x4000, 0x5000, "unmapped")
        );
        assert_eq!(
            compare(&model, &shifted).ranges(),
            [(0x1000, 0x2000), (0x4000, 0x5000)]
        );
    }

    /// Issue 19: unlinked, renamed, newline-escaped: the same file, only a note.
    #[test]
    fn a_path_text_change_with_the_same_identity_is_a_note() {
        let model = vec![file(0x1000, 0x2000, b"/tmp/x", 7)];
        for kernel_name in [&b"/tmp/x (deleted)"[..], b"/tmp/y", b"/tmp/\xff"] {
            let c = compare(&model, &[file(0x1000, 0x2000, kernel_name, 7)]);
            assert!(c.differences.is_empty(), "{c:?}");
            assert_eq!(c.notes.len(), 1);
            assert_eq!(
                (c.notes[0].start, c.notes[0].expected.as_str()),
                (0x1000, "/tmp/x")
            );
        }
        // Another inode under the same name is a difference, not a note.
        let c = compare(&model, &[file(0x1000, 0x2000, b"/tmp/x", 8)]);
        assert_eq!(
            c.differences.iter().map(|d| d.field).collect::<Vec<_>>(),
            ["inode"]
        );
        assert!(c.notes.is_empty());
        // A file where the kernel has anonymous memory: a path difference.
        let c = compare(&model, &[anon(0x1000, 0x2000, "r--p")]);
        assert_eq!(c.differences[0].field, "path");
    }

    /// An overlayfs file: maps may name the layer's device and inode (6.1); the path,
    /// perms and offset are still compared.
    #[test]
    fn overlay_files_are_compared_without_device_and_inode() {
        let mut model = file(0x10000, 0x11000, b"/o/m/f", 14);
        (model.dev, model.overlay, model.offset) = ((0, 0x17), true, 0x1000);
        let mut layer = model.clone();
        (layer.dev, layer.inode, layer.overlay) = ((0, 0x16), 99, false);
        assert_eq!(
            compare(&[model.clone()], &[layer.clone()]),
            Comparison::default()
        );
        layer.offset = 0;
        assert_eq!(
            compare(&[model.clone()], &[layer.clone()]).differences[0].field,
            "offset"
        );
        layer.backing = Backing::File("/o/m/g".into());
        layer.offset = 0x1000;
        assert_eq!(
            compare(&[model.clone()], &[layer.clone()]).differences[0].field,
            "path"
        );
        model.overlay = false;
        layer.backing = model.backing.clone();
        let fields: Vec<_> = compare(&[model], &[layer])
            .differences
            .iter()
            .map(|d| d.field)
            .collect();
        assert_eq!(fields, ["device", "inode"]);
    }
}
