//! The package mirrors this machine's apt is configured with, read (never written) from its
//! sources in both formats: one-line `sources.list` files and deb822 `*.sources` files.
//!
//! Everything xtask fetches from Debian (guest kernels, the sid chroot, the selftests'
//! sources, QEMU from backports) goes to the mirror the machine already uses, so a machine
//! behind its own mirror or proxy works unchanged and no address is written into this
//! repository. Suites the host does not list (backports, sid) are served by the same URI
//! as its main archive, as on every Debian mirror.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, bail};

use crate::cmd;

/// Which of the host's archives a suite comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Archive {
    /// Debian's main archive: the codename, its -updates and -backports, sid.
    Main,
    /// Debian's security archive: `<codename>-security`.
    Security,
}

/// One `deb` or `deb-src` source: one line of the one-line format, or one deb822 stanza.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Source {
    pub types: Vec<String>,
    pub uris: Vec<String>,
    pub suites: Vec<String>,
    pub components: Vec<String>,
}

impl Source {
    fn serves(&self, suite: &str) -> bool {
        self.types.iter().any(|t| t == "deb")
            && self.suites.iter().any(|s| s == suite)
            && self.components.iter().any(|c| c == "main")
    }
}

/// The host's Debian archives, as its apt sources name them.
pub struct HostArchives {
    /// The host's codename (`bookworm`), from /etc/os-release.
    pub codename: String,
    sources: Vec<Source>,
    /// The files read, for messages.
    files: Vec<PathBuf>,
}

impl HostArchives {
    /// Reads the host's apt sources where its apt configuration says they are.
    pub fn read() -> Result<Self> {
        let codename = host_codename()?;
        let (list, parts) = source_paths()?;
        let mut files = Vec::new();
        if list.is_file() {
            files.push(list);
        }
        files.extend(part_files(&parts));
        let mut sources = Vec::new();
        for file in &files {
            let text =
                fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
            if file.extension().is_some_and(|e| e == "sources") {
                sources.extend(parse_deb822(&text));
            } else {
                sources.extend(parse_one_line(&text));
            }
        }
        Ok(HostArchives {
            codename,
            sources,
            files,
        })
    }

    /// The URI of `archive` (no trailing slash): the first source that serves its suite
    /// (the host's codename, or `<codename>-security`) with component main.
    pub fn uri(&self, archive: Archive) -> Result<String> {
        let suite = match archive {
            Archive::Main => self.codename.clone(),
            Archive::Security => format!("{}-security", self.codename),
        };
        find_uri(&self.sources, &suite).with_context(|| {
            let read: Vec<String> = self.files.iter().map(|f| f.display().to_string()).collect();
            format!(
                "none of this machine's apt sources ({}) serves Debian's `{suite}` suite with \
                 component main, and xtask takes its Debian mirror from there. Fix: add a \
                 `deb <mirror> {suite} main` source to the host's apt configuration",
                if read.is_empty() {
                    "no source files found".to_owned()
                } else {
                    read.join(", ")
                }
            )
        })
    }

    /// The host's own setting of every `Acquire::<protocol>::Proxy…` key, as apt
    /// configuration lines (`Acquire::http::Proxy "…";`), for tools that do not read the
    /// host's apt configuration (mmdebstrap writes its own).
    pub fn proxy_options() -> Result<Vec<String>> {
        let dump = cmd::stdout(Command::new("apt-config").arg("dump"))?;
        Ok(proxy_lines(&dump))
    }
}

fn proxy_lines(dump: &str) -> Vec<String> {
    dump.lines()
        .filter(|l| {
            ["http", "https", "ftp"]
                .iter()
                .any(|p| l.starts_with(&format!("Acquire::{p}::Proxy")))
        })
        .map(str::to_owned)
        .collect()
}

fn find_uri(sources: &[Source], suite: &str) -> Option<String> {
    sources
        .iter()
        .filter(|s| s.serves(suite))
        .flat_map(|s| s.uris.first())
        .map(|u| u.trim_end_matches('/').to_owned())
        .next()
}

/// The source files apt reads in `parts` (`*.list` and `*.sources`; a file with another
/// ending, such as `x.list.disabled`, is not a source), sorted.
pub fn part_files(parts: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = fs::read_dir(parts)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "list" || e == "sources"))
        .collect();
    found.sort();
    found
}

/// `Dir::Etc::SourceList` (a file) and `Dir::Etc::SourceParts` (a directory), as the
/// host's apt configuration resolves them.
pub fn source_paths() -> Result<(PathBuf, PathBuf)> {
    let out = cmd::stdout(Command::new("apt-config").args([
        "shell",
        "LIST",
        "Dir::Etc::SourceList/f",
        "PARTS",
        "Dir::Etc::SourceParts/d",
    ]))
    .context("asking apt-config where the apt sources are (is this a Debian machine?)")?;
    let mut list = None;
    let mut parts = None;
    for line in out.lines() {
        let value = |l: &str| PathBuf::from(l.trim().trim_matches('\''));
        if let Some(v) = line.strip_prefix("LIST=") {
            list = Some(value(v));
        } else if let Some(v) = line.strip_prefix("PARTS=") {
            parts = Some(value(v));
        }
    }
    match (list, parts) {
        (Some(l), Some(p)) => Ok((l, p)),
        _ => bail!("apt-config shell did not name Dir::Etc::SourceList and SourceParts: {out}"),
    }
}

/// VERSION_CODENAME of /etc/os-release (`bookworm`).
fn host_codename() -> Result<String> {
    let path = Path::new("/etc/os-release");
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
        .map(|v| v.trim().trim_matches('"').to_owned())
        .filter(|v| !v.is_empty())
        .with_context(|| {
            format!(
                "{} has no VERSION_CODENAME: xtask needs a Debian release (bookworm) to find \
                 its mirror in the apt sources",
                path.display()
            )
        })
}

/// The one-line format: `deb [opt=val …] URI SUITE [COMPONENT…]`, `#` to the line's end
/// a comment.
pub fn parse_one_line(text: &str) -> Vec<Source> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or_default().trim();
        let Some((kind, rest)) = line.split_once(char::is_whitespace) else {
            continue;
        };
        if kind != "deb" && kind != "deb-src" {
            continue;
        }
        let mut rest = rest.trim_start();
        if rest.starts_with('[') {
            let Some(end) = rest.find(']') else { continue };
            rest = rest[end + 1..].trim_start();
        }
        let mut words = rest.split_whitespace().map(str::to_owned);
        let (Some(uri), Some(suite)) = (words.next(), words.next()) else {
            continue;
        };
        out.push(Source {
            types: vec![kind.to_owned()],
            uris: vec![uri],
            suites: vec![suite],
            components: words.collect(),
        });
    }
    out
}

/// The deb822 format: stanzas separated by blank lines, `Field: value` with indented
/// continuation lines, `#` lines comments; `Enabled: no` turns a stanza off.
pub fn parse_deb822(text: &str) -> Vec<Source> {
    let mut out = Vec::new();
    let mut fields: Vec<(String, String)> = Vec::new();
    let mut finish = |fields: &mut Vec<(String, String)>| {
        let get = |name: &str| -> Vec<String> {
            fields
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.split_whitespace().map(str::to_owned).collect())
                .unwrap_or_default()
        };
        let enabled = get("Enabled");
        let off = enabled
            .first()
            .is_some_and(|v| v.eq_ignore_ascii_case("no"));
        if !fields.is_empty() && !off {
            out.push(Source {
                types: get("Types"),
                uris: get("URIs"),
                suites: get("Suites"),
                components: get("Components"),
            });
        }
        fields.clear();
    };
    for line in text.lines() {
        if line.trim().is_empty() {
            finish(&mut fields);
        } else if line.starts_with('#') {
            continue;
        } else if line.starts_with([' ', '\t']) {
            if let Some((_, value)) = fields.last_mut() {
                value.push(' ');
                value.push_str(line.trim());
            }
        } else if let Some((key, value)) = line.split_once(':') {
            fields.push((key.trim().to_owned(), value.trim().to_owned()));
        }
    }
    finish(&mut fields);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEB822: &str = "\
Types: deb
# a comment line inside the stanza
URIs: http://mirror.example/debian/
Suites: bookworm bookworm-updates
Components: main contrib
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://security.example/debian-security
Suites: bookworm-security
Components: main
Signed-By:
 -----BEGIN PGP PUBLIC KEY BLOCK-----
 .
 -----END PGP PUBLIC KEY BLOCK-----

Types: deb
URIs: http://disabled.example/debian
Suites: bookworm
Components: main
Enabled: no
";

    #[test]
    fn reads_deb822_stanzas() {
        let sources = parse_deb822(DEB822);
        assert_eq!(sources.len(), 2, "{sources:?}");
        assert_eq!(
            find_uri(&sources, "bookworm").as_deref(),
            Some("http://mirror.example/debian")
        );
        assert_eq!(
            find_uri(&sources, "bookworm-security").as_deref(),
            Some("http://security.example/debian-security")
        );
        assert_eq!(find_uri(&sources, "sid"), None);
    }

    #[test]
    fn reads_one_line_entries() {
        let text = "\
# deb http://commented.example/debian bookworm main
deb-src http://src.example/debian bookworm main
deb [arch=amd64 signed-by=/usr/share/keyrings/k.gpg] http://mirror.example/debian bookworm main # tail
deb http://mirror.example/debian-security bookworm-security main non-free-firmware
deb http://contrib.example/debian bookworm contrib
";
        let sources = parse_one_line(text);
        assert_eq!(sources.len(), 4, "{sources:?}");
        // deb-src and a source without main do not count.
        assert_eq!(
            find_uri(&sources, "bookworm").as_deref(),
            Some("http://mirror.example/debian")
        );
        assert_eq!(
            find_uri(&sources, "bookworm-security").as_deref(),
            Some("http://mirror.example/debian-security")
        );
    }

    #[test]
    fn names_what_is_missing() {
        let archives = HostArchives {
            codename: "bookworm".into(),
            sources: parse_one_line("deb http://mirror.example/debian bookworm main\n"),
            files: vec![PathBuf::from("/etc/apt/sources.list")],
        };
        assert_eq!(
            archives.uri(Archive::Main).unwrap(),
            "http://mirror.example/debian"
        );
        let err = format!("{:#}", archives.uri(Archive::Security).unwrap_err());
        assert!(
            err.contains("`bookworm-security`") && err.contains("/etc/apt/sources.list"),
            "{err}"
        );
    }

    #[test]
    fn keeps_only_proxy_settings() {
        let dump = "Acquire::http::Proxy \"http://proxy.example:3128\";\n\
                    Acquire::Check-Valid-Until \"false\";\n\
                    Acquire::https::Proxy::mirror.example \"DIRECT\";\n";
        assert_eq!(
            proxy_lines(dump),
            [
                "Acquire::http::Proxy \"http://proxy.example:3128\";",
                "Acquire::https::Proxy::mirror.example \"DIRECT\";"
            ]
        );
    }
}
