//! Guest kernel lines (`--kernel 6.1 | 6.12 | 7 | <full version>`): which Debian suite
//! serves each, where its driver is compiled, and a private apt configuration per line.
//!
//! The host's apt sources are never edited and only read for the mirror's address
//! (apt_sources.rs): each line has its own `sources.list`, package lists and cache under
//! `target/guest/apt/<line>/`, passed to apt with `-o Dir::…` options.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, bail};

use crate::Workspace;
use crate::apt_sources::{Archive, HostArchives};
use crate::arch::Arch;
use crate::cmd;

const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// Where the driver for a line's kernels is compiled.
pub enum Compiler {
    /// The host's gcc (named by the kernel's CONFIG_CC_VERSION_TEXT, e.g. gcc-12).
    Host,
    /// A minimal chroot of this suite with the kernel's headers package installed, whose
    /// dependencies bring the kernel's own compiler (sid's 7.x wants gcc-16, which
    /// bookworm cannot run).
    Chroot { suite: &'static str },
}

pub struct Line {
    /// What `--kernel` takes: "6.1", "6.12", "7".
    pub name: &'static str,
    /// What the line's full versions start with.
    version_prefix: &'static str,
    /// (the host's archive that serves it, suite) pairs of the private sources.list.
    pub suites: &'static [(Archive, &'static str)],
    pub compiler: Compiler,
    /// The guest test suites a plain `cargo xtask test` runs on this line (None: all).
    pub default_suites: Option<&'static [&'static str]>,
    /// The architectures whose kernels of this line xtask can boot and build for.
    pub arches: &'static [Arch],
    /// `cargo xtask test` boots this line's guest with no other guest beside it. 7.x runs
    /// syscall-tracepoint BPF preemptible: a run preempted inside a hook on the guest's one
    /// CPU makes the next thread there skip that copy, and the thread storms' lost events
    /// show how often. A guest whose host CPU is taken by another is preempted more
    /// (its timer keeps host time while it waits for the CPU): beside another guest and
    /// two builds, 7.2's storms lost 2 and 7 events.
    pub runs_alone: bool,
}

/// Suites that prove the kernel probes and the driver, and the kernel's own mm selftests
/// under verify; the matrix runs them on the newer lines, the whole guest suite on the
/// default line.
const CORE_SUITES: &[&str] = &[
    "guest_driver",
    "guest_trace",
    "guest_verify",
    "guest_selftests",
];

pub const LINES: &[Line] = &[
    Line {
        name: "6.1",
        version_prefix: "6.1.",
        suites: &[
            (Archive::Main, "bookworm"),
            (Archive::Security, "bookworm-security"),
        ],
        compiler: Compiler::Host,
        default_suites: None,
        runs_alone: false,
        // arm64: bookworm's kernel, its headers and busybox from the same lists; the
        // headers' kbuild tools are the amd64 build of the same package (they run here).
        arches: &[Arch::X86_64, Arch::Arm64],
    },
    Line {
        name: "6.12",
        version_prefix: "6.12.",
        // Built for bookworm: its headers want bookworm's gcc-12, the host's.
        suites: &[(Archive::Main, "bookworm-backports")],
        compiler: Compiler::Host,
        default_suites: Some(CORE_SUITES),
        arches: &[Arch::X86_64],
        runs_alone: false,
    },
    Line {
        name: "7",
        version_prefix: "7.",
        suites: &[(Archive::Main, "sid")],
        compiler: Compiler::Chroot { suite: "sid" },
        default_suites: Some(CORE_SUITES),
        arches: &[Arch::X86_64],
        runs_alone: true,
    },
];

pub const DEFAULT_LINE: &str = "6.1";

/// The suites `cargo xtask test` runs on arm64 (one boot, 6.1): the driver, the probes,
/// verify and the kernel's own mm selftests under verify (cross-built). A foreign ISA
/// under TCG runs them about twice as slowly as the x86 guests, so in the plain matrix
/// guest_verify runs only [`ARM64_MATRIX_VERIFY`] (every test: `cargo xtask test --arch
/// arm64`); the times are in docs/arm64.md.
pub const ARM64_SUITES: &[&str] = &[
    "guest_driver",
    "guest_trace",
    "guest_verify",
    "guest_selftests",
];

/// guest_verify's tests the matrix runs on arm64: the driver end to end, the in-tree
/// driver, the planted errors and the thread storms; left to `--arch arm64`: every
/// scenario, every cause and name, and overlayfs (~8 of its ~10 minutes there).
pub const ARM64_MATRIX_VERIFY: &[&str] = &[
    "verify_agrees_on_driver_mappings",
    "verify_driver_passes_for_an_in_tree_driver",
    "verify_catches_a_planted_mismatch",
    "verify_driver_catches_a_planted_pfn_error",
    "thread_storms_verify_in_every_run_with_kernel_probes",
];

/// A parsed `--kernel`: a line, and a full version if one was given.
pub struct KernelRequest {
    pub line: &'static Line,
    pub version: Option<String>,
    pub arch: Arch,
}

impl KernelRequest {
    pub fn parse(arg: &str, arch: Arch) -> Result<Self> {
        let arg = arg.trim();
        let suffix = format!("-{}", arch.debian());
        let line = match LINES.iter().find(|l| l.name == arg) {
            Some(line) => Some((line, None)),
            // A full version: "6.12.95+deb12-amd64", "6.1.0-57-amd64", "6.1.0-57-arm64".
            None => LINES
                .iter()
                .find(|l| arg.starts_with(l.version_prefix) && arg.ends_with(&suffix))
                .map(|l| (l, Some(arg.to_owned()))),
        };
        let Some((line, version)) = line else {
            bail!(
                "unknown guest kernel `{arg}` for {arch}: --kernel takes a line ({}) or a full \
                 Debian kernel version of one of them, such as 6.1.0-57{suffix} (the part after \
                 linux-image-)",
                LINES
                    .iter()
                    .filter(|l| l.arches.contains(&arch))
                    .map(|l| l.name)
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        };
        if !line.arches.contains(&arch) {
            bail!(
                "kernel line {} is not built for {arch} here: --arch {arch} takes --kernel {}",
                line.name,
                LINES
                    .iter()
                    .filter(|l| l.arches.contains(&arch))
                    .map(|l| l.name)
                    .collect::<Vec<_>>()
                    .join(" or ")
            );
        }
        Ok(KernelRequest {
            line,
            version,
            arch,
        })
    }

    pub fn default_line(arch: Arch) -> Self {
        Self::parse(DEFAULT_LINE, arch).expect("the default line serves every architecture")
    }
}

/// apt with private sources, lists and cache: a kernel line's suites, or the host's own
/// sources plus one more suite (setup.rs).
pub struct PrivateApt {
    /// What it serves, for messages: "kernel line 6.12".
    pub what: String,
    dir: PathBuf,
    source_list: PathBuf,
    source_parts: PathBuf,
    /// "suite (URI)" of each source xtask wrote, for messages.
    written: Vec<String>,
    updated: bool,
    /// A foreign guest architecture: apt's own for these lists (with amd64 beside it,
    /// for the headers' kbuild tools); the host's dpkg architectures stay as they are.
    arch: Option<Arch>,
}

impl PrivateApt {
    /// The private apt of `line`, in `target/guest/apt/<line>/`, its suites served by the
    /// host's own mirror.
    pub fn new(ws: &Workspace, line: &'static Line, arch: Arch) -> Result<Self> {
        let archives = HostArchives::read()?;
        let suites = line
            .suites
            .iter()
            .map(|(archive, suite)| Ok((archives.uri(*archive)?, *suite)))
            .collect::<Result<Vec<_>>>()?;
        let (dir, what) = if arch.is_host() {
            (
                ws.target_dir.join("guest/apt").join(line.name),
                format!("kernel line {}", line.name),
            )
        } else {
            (
                ws.target_dir
                    .join("guest/apt")
                    .join(format!("{}-{arch}", line.name)),
                format!("kernel line {} ({arch})", line.name),
            )
        };
        let mut apt = Self::at(&dir, what, &suites)?;
        apt.source_parts = PathBuf::from("/dev/null");
        apt.arch = (!arch.is_host()).then_some(arch);
        Ok(apt)
    }

    /// The host's apt sources as they are, plus `suite` of the host's main archive, with
    /// lists of their own in `dir` (the host's lists and sources stay untouched).
    pub fn host_plus(dir: &Path, suite: &str) -> Result<Self> {
        let archives = HostArchives::read()?;
        let uri = archives.uri(Archive::Main)?;
        let mut apt = Self::at(
            dir,
            format!("the host's apt sources + {suite}"),
            &[(uri, suite)],
        )?;
        // The host's own sources: its sources.list and each of its parts, linked.
        let (host_list, host_parts) = crate::apt_sources::source_paths()?;
        let parts = dir.join("sources.list.d");
        if parts.exists() {
            fs::remove_dir_all(&parts).with_context(|| format!("removing {}", parts.display()))?;
        }
        fs::create_dir_all(&parts).with_context(|| format!("creating {}", parts.display()))?;
        for file in crate::apt_sources::part_files(&host_parts) {
            if let Some(name) = file.file_name() {
                let link = parts.join(name);
                std::os::unix::fs::symlink(&file, &link)
                    .with_context(|| format!("linking {} -> {}", link.display(), file.display()))?;
            }
        }
        if host_list.is_file() {
            let link = parts.join("host-sources.list");
            std::os::unix::fs::symlink(&host_list, &link).with_context(|| {
                format!("linking {} -> {}", link.display(), host_list.display())
            })?;
        }
        apt.source_parts = parts;
        Ok(apt)
    }

    /// A private apt in `dir` whose own sources.list holds `suites` (URI, suite).
    fn at(dir: &Path, what: String, suites: &[(String, &str)]) -> Result<Self> {
        for sub in ["lists/partial", "cache/archives/partial"] {
            let d = dir.join(sub);
            fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
        }
        let sources: String = suites
            .iter()
            .map(|(uri, suite)| format!("deb [signed-by={KEYRING}] {uri} {suite} main\n"))
            .collect();
        let path = dir.join("sources.list");
        if fs::read_to_string(&path).ok().as_deref() != Some(sources.as_str()) {
            fs::write(&path, &sources).with_context(|| format!("writing {}", path.display()))?;
            // New sources: the old lists describe other suites.
            clear_lists(&dir.join("lists"))?;
        }
        Ok(PrivateApt {
            what,
            dir: dir.to_owned(),
            source_list: path,
            source_parts: PathBuf::from("/dev/null"),
            written: suites
                .iter()
                .map(|(uri, suite)| format!("{suite} ({uri})"))
                .collect(),
            updated: false,
            arch: None,
        })
    }

    /// `program` (apt-get or apt-cache) with the private configuration.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.env("DEBIAN_FRONTEND", "noninteractive");
        for (key, value) in [
            ("Dir::Etc::SourceList", &self.source_list),
            ("Dir::Etc::SourceParts", &self.source_parts),
            ("Dir::State::Lists", &self.dir.join("lists")),
            ("Dir::Cache", &self.dir.join("cache")),
        ] {
            c.arg("-o").arg(format!("{key}={}", value.display()));
        }
        if let Some(arch) = self.arch {
            c.arg("-o")
                .arg(format!("APT::Architecture={}", arch.debian()))
                .arg("-o")
                .arg(format!("APT::Architectures::={}", arch.debian()))
                .args(["-o", "APT::Architectures::=amd64"]);
        }
        // This machine's clock runs ahead of the mirror's Valid-Until (sid's InRelease read
        // as expired by 25 days, 2026-12-02); the signatures are still checked.
        c.args(["-o", "Acquire::Check-Valid-Until=false"]);
        // The cache dir is root's; without this apt warns that _apt cannot write it.
        c.args(["-o", "APT::Sandbox::User=root", "-q"]);
        // Only the package lists: the host's appstream hook would add ~6 MB per suite.
        c.args([
            "-o",
            "Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false",
        ]);
        c
    }

    /// Downloads the package lists once per xtask run.
    pub fn update_once(&mut self) -> Result<()> {
        if self.updated {
            return Ok(());
        }
        eprintln!(
            "setup: apt-get update of the private lists for {} ({}) in {}",
            self.what,
            self.written.join(", "),
            self.dir.display()
        );
        cmd::run(self.command("apt-get").arg("update")).with_context(|| {
            format!(
                "downloading the package lists of {}: is the network up?",
                self.written.join(", ")
            )
        })?;
        self.updated = true;
        Ok(())
    }

    pub fn updated(&self) -> bool {
        self.updated
    }

    /// Whether the lists were ever downloaded.
    pub fn has_lists(&self) -> bool {
        fs::read_dir(self.dir.join("lists")).is_ok_and(|entries| {
            entries
                .flatten()
                .any(|e| e.file_name().to_string_lossy().contains("_Packages"))
        })
    }

    /// `apt-cache depends <package>`'s plain `Depends:` (no alternatives, no virtuals).
    pub fn depends(&self, package: &str) -> Result<Option<Vec<String>>> {
        let out = cmd::output(self.command("apt-cache").args(["depends", package]))?;
        if !out.status.success() {
            return Ok(None);
        }
        Ok(Some(parse_depends(&String::from_utf8_lossy(&out.stdout))))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

fn clear_lists(lists: &Path) -> Result<()> {
    for entry in fs::read_dir(lists).with_context(|| format!("listing {}", lists.display()))? {
        let path = entry?.path();
        if path.is_file() {
            fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
        }
    }
    Ok(())
}

pub fn parse_depends(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .map(|d| d.trim().to_owned())
        .filter(|d| !d.starts_with('<'))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lines_and_versions() {
        let x86 = Arch::X86_64;
        assert_eq!(KernelRequest::parse("6.1", x86).unwrap().line.name, "6.1");
        assert_eq!(KernelRequest::parse("7", x86).unwrap().line.name, "7");
        let full = KernelRequest::parse("6.12.95+deb12-amd64", x86).unwrap();
        assert_eq!(full.line.name, "6.12");
        assert_eq!(full.version.as_deref(), Some("6.12.95+deb12-amd64"));
        assert_eq!(
            KernelRequest::parse("6.1.0-57-amd64", x86)
                .unwrap()
                .line
                .name,
            "6.1"
        );
        let err = KernelRequest::parse("6.6", x86).err().unwrap().to_string();
        assert!(err.contains("unknown guest kernel `6.6`"), "{err}");
        assert!(KernelRequest::parse("6.12.95", x86).is_err());
        let arm = KernelRequest::parse("6.1.0-57-arm64", Arch::Arm64).unwrap();
        assert_eq!((arm.line.name, arm.arch), ("6.1", Arch::Arm64));
        assert!(KernelRequest::parse("6.1.0-57-amd64", Arch::Arm64).is_err());
        let err = KernelRequest::parse("7", Arch::Arm64)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("--arch arm64 takes --kernel 6.1"), "{err}");
    }

    #[test]
    fn parses_apt_cache_depends() {
        let text = "linux-headers-6.1.0-56-amd64\n  Depends: linux-headers-6.1.0-56-common\n  \
                    Depends: linux-kbuild-6.1\n |Depends: dracut\n  Depends: <linux-initramfs-tool>\n";
        assert_eq!(
            parse_depends(text),
            ["linux-headers-6.1.0-56-common", "linux-kbuild-6.1"]
        );
    }
}
