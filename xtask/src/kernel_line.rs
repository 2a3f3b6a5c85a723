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
    },
    Line {
        name: "6.12",
        version_prefix: "6.12.",
        // Built for bookworm: its headers want bookworm's gcc-12, the host's.
        suites: &[(Archive::Main, "bookworm-backports")],
        compiler: Compiler::Host,
        default_suites: Some(CORE_SUITES),
    },
    Line {
        name: "7",
        version_prefix: "7.",
        suites: &[(Archive::Main, "sid")],
        compiler: Compiler::Chroot { suite: "sid" },
        default_suites: Some(CORE_SUITES),
    },
];

pub const DEFAULT_LINE: &str = "6.1";

/// A parsed `--kernel`: a line, and a full version if one was given.
pub struct KernelRequest {
    pub line: &'static Line,
    pub version: Option<String>,
}

impl KernelRequest {
    pub fn parse(arg: &str) -> Result<Self> {
        let arg = arg.trim();
        if let Some(line) = LINES.iter().find(|l| l.name == arg) {
            return Ok(KernelRequest {
                line,
                version: None,
            });
        }
        // A full version: "6.12.95+deb12-amd64", "6.1.0-57-amd64", "7.2.13+deb14-amd64".
        let line = LINES.iter().find(|l| arg.starts_with(l.version_prefix));
        match line {
            Some(line) if arg.ends_with("-amd64") => Ok(KernelRequest {
                line,
                version: Some(arg.to_owned()),
            }),
            _ => bail!(
                "unknown guest kernel `{arg}`: --kernel takes a line ({}) or a full Debian \
                 kernel version of one of them, such as 6.12.95+deb12-amd64 (the part after \
                 linux-image-)",
                LINES.iter().map(|l| l.name).collect::<Vec<_>>().join(", ")
            ),
        }
    }

    pub fn default_line() -> Self {
        Self::parse(DEFAULT_LINE).expect("the default line is in LINES")
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
}

impl PrivateApt {
    /// The private apt of `line`, in `target/guest/apt/<line>/`, its suites served by the
    /// host's own mirror.
    pub fn new(ws: &Workspace, line: &'static Line) -> Result<Self> {
        let archives = HostArchives::read()?;
        let suites = line
            .suites
            .iter()
            .map(|(archive, suite)| Ok((archives.uri(*archive)?, *suite)))
            .collect::<Result<Vec<_>>>()?;
        let dir = ws.target_dir.join("guest/apt").join(line.name);
        let mut apt = Self::at(&dir, format!("kernel line {}", line.name), &suites)?;
        apt.source_parts = PathBuf::from("/dev/null");
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
        assert_eq!(KernelRequest::parse("6.1").unwrap().line.name, "6.1");
        assert_eq!(KernelRequest::parse("7").unwrap().line.name, "7");
        let full = KernelRequest::parse("6.12.95+deb12-amd64").unwrap();
        assert_eq!(full.line.name, "6.12");
        assert_eq!(full.version.as_deref(), Some("6.12.95+deb12-amd64"));
        assert_eq!(
            KernelRequest::parse("6.1.0-57-amd64").unwrap().line.name,
            "6.1"
        );
        let err = KernelRequest::parse("6.6").err().unwrap().to_string();
        assert!(err.contains("unknown guest kernel `6.6`"), "{err}");
        assert!(KernelRequest::parse("6.12.95").is_err());
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
