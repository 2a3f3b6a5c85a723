//! The Debian guest kernel, its headers and an uncompressed vmlinux, cached under
//! `target/guest/<version>/`.
//!
//! Layout of the cache (a contract for the other engineers):
//! - `root/`: the four .debs unpacked with `dpkg-deb -x` (boot/, lib/modules/, usr/src/…)
//! - `vmlinux`: the ELF extracted from the bzImage; QEMU boots it directly (~6 s vs ~9 s)
//! - `root/usr/src/linux-headers-<version>/`: the headers, patched to build in place, with
//!   the kernel's raw `.BTF` as `vmlinux` so modules get BTF
//! - `.complete`: written last; its presence skips all of the above

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context as _, Result, bail};

use crate::Workspace;
use crate::cmd;
use crate::setup::{Apt, apt_command};

/// The image meta-package whose dependency names the current kernel.
const META_PACKAGE: &str = "linux-image-amd64";
const MARKER: &str = ".complete";
const XZ_MAGIC: &[u8] = &[0xFD, b'7', b'z', b'X', b'Z', 0x00];

pub struct GuestKernel {
    pub version: String,
    /// `target/guest/<version>/`.
    pub dir: PathBuf,
    /// The uncompressed kernel ELF to boot.
    pub vmlinux: PathBuf,
    /// The headers tree to pass to `make -C`.
    pub headers: PathBuf,
}

impl GuestKernel {
    fn at(ws: &Workspace, version: &str) -> Self {
        let dir = ws.target_dir.join("guest").join(version);
        GuestKernel {
            version: version.to_owned(),
            vmlinux: dir.join("vmlinux"),
            headers: dir
                .join("root/usr/src")
                .join(format!("linux-headers-{version}")),
            dir,
        }
    }

    fn root(&self) -> PathBuf {
        self.dir.join("root")
    }

    /// overlayfs as a loadable module of this kernel, uncompressed (the guest tests mount
    /// an overlay to check `verify` on it), or None if the package has none.
    pub fn overlay_module(&self) -> Result<Option<PathBuf>> {
        let dir = self.root().join(format!("lib/modules/{}/kernel/fs/overlayfs", self.version));
        let plain = dir.join("overlay.ko");
        if plain.is_file() {
            return Ok(Some(plain));
        }
        let packed = dir.join("overlay.ko.xz");
        if !packed.is_file() {
            return Ok(None);
        }
        let out = self.dir.join("overlay.ko");
        if !out.is_file() {
            let file = fs::File::create(&out).with_context(|| format!("creating {}", out.display()))?;
            let status = cmd::status(Command::new("xz").arg("-dc").arg(&packed).stdout(file))?;
            if !status.success() {
                let _ = fs::remove_file(&out);
                bail!("xz -dc {}: {status}", packed.display());
            }
        }
        Ok(Some(out))
    }
}

/// Returns the cached kernel, downloading and preparing it first if needed.
pub fn ensure(ws: &Workspace, apt: &mut Apt, version: Option<&str>) -> Result<GuestKernel> {
    let version = match version {
        Some(v) => v.to_owned(),
        None => current_version(apt)?,
    };
    let kernel = GuestKernel::at(ws, &version);
    if kernel.dir.join(MARKER).exists() {
        eprintln!(
            "setup: guest kernel {version}: cached in {}",
            kernel.dir.display()
        );
        return Ok(kernel);
    }
    eprintln!(
        "setup: fetching guest kernel {version} (apt-get download, ~90 MB) into {}",
        kernel.dir.display()
    );
    prepare(&kernel, apt).with_context(|| format!("preparing guest kernel {version}"))?;
    fs::write(kernel.dir.join(MARKER), format!("{version}\n"))
        .with_context(|| format!("writing {}", kernel.dir.join(MARKER).display()))?;
    Ok(kernel)
}

/// The version `linux-image-amd64` depends on, e.g. `6.1.0-56-amd64`.
fn current_version(apt: &mut Apt) -> Result<String> {
    if let Some(v) = dependency(META_PACKAGE, "linux-image-")? {
        return Ok(v.trim_start_matches("linux-image-").to_owned());
    }
    // Empty or stale package lists (a fresh machine): update once and ask again.
    apt.update_once()?;
    dependency(META_PACKAGE, "linux-image-")?
        .map(|v| v.trim_start_matches("linux-image-").to_owned())
        .with_context(|| format!("apt-cache depends {META_PACKAGE} names no linux-image-*"))
}

/// The first `Depends:` of `package` that starts with `prefix`.
fn dependency(package: &str, prefix: &str) -> Result<Option<String>> {
    let out = cmd::output(Command::new("apt-cache").args(["depends", package]))?;
    Ok(parse_depends(&String::from_utf8_lossy(&out.stdout))
        .into_iter()
        .find(|d| d.starts_with(prefix)))
}

fn parse_depends(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .map(|d| d.trim().to_owned())
        .collect()
}

fn prepare(kernel: &GuestKernel, apt: &mut Apt) -> Result<()> {
    let v = &kernel.version;
    let debs = kernel.dir.join("debs");
    let root = kernel.root();
    for d in [&debs, &root] {
        if d.exists() {
            fs::remove_dir_all(d).with_context(|| format!("removing {}", d.display()))?;
        }
        fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }

    let headers_pkg = format!("linux-headers-{v}");
    let mut packages = vec![format!("linux-image-{v}"), headers_pkg.clone()];
    let deps = parse_depends(&String::from_utf8_lossy(
        &cmd::output(Command::new("apt-cache").args(["depends", &headers_pkg]))?.stdout,
    ));
    let common = deps
        .iter()
        .find(|d| d.starts_with("linux-headers-") && d.ends_with("-common"));
    let kbuild = deps.iter().find(|d| d.starts_with("linux-kbuild-"));
    match (common, kbuild) {
        (Some(c), Some(k)) => packages.extend([c.clone(), k.clone()]),
        _ => bail!(
            "apt-cache depends {headers_pkg} does not name the -common headers and linux-kbuild (got {deps:?})"
        ),
    }

    download(&debs, &packages, apt)?;
    for entry in fs::read_dir(&debs).with_context(|| format!("listing {}", debs.display()))? {
        let deb = entry?.path();
        cmd::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root))?;
    }
    fs::remove_dir_all(&debs).with_context(|| format!("removing {}", debs.display()))?;

    fix_headers(kernel)?;
    extract_vmlinux(&root.join(format!("boot/vmlinuz-{v}")), &kernel.vmlinux)?;
    // Raw BTF of the guest kernel: kbuild generates module BTF against <headers>/vmlinux.
    cmd::run(
        Command::new("objcopy")
            .args(["-O", "binary", "--only-section=.BTF"])
            .arg(&kernel.vmlinux)
            .arg(kernel.headers.join("vmlinux")),
    )?;
    Ok(())
}

fn download(dir: &Path, packages: &[String], apt: &mut Apt) -> Result<()> {
    let attempt = || {
        cmd::status(
            apt_command("apt-get")
                .current_dir(dir)
                .stdout(std::io::stderr())
                // The cache dir is root's; without this apt warns that _apt cannot write it.
                .args(["-q", "-o", "APT::Sandbox::User=root", "download"])
                .args(packages),
        )
    };
    if attempt()?.success() {
        return Ok(());
    }
    if apt.updated() {
        bail!("running apt-get download {} failed", packages.join(" "));
    }
    // Stale lists point at versions the mirror no longer has: update once and retry.
    apt.update_once()?;
    if !attempt()?.success() {
        bail!("running apt-get download {} failed", packages.join(" "));
    }
    Ok(())
}

/// Makes the unpacked headers build in place: the amd64 Makefile includes the -common
/// Makefile by absolute path, and `scripts`/`tools` may link to /usr/lib/linux-kbuild-*.
fn fix_headers(kernel: &GuestKernel) -> Result<()> {
    let root = kernel.root();
    let makefile = kernel.headers.join("Makefile");
    let text =
        fs::read_to_string(&makefile).with_context(|| format!("reading {}", makefile.display()))?;
    let patched: String = text
        .lines()
        .map(|line| match line.strip_prefix("include /usr/src/") {
            Some(rest) => format!("include {}/usr/src/{rest}\n", root.display()),
            None => format!("{line}\n"),
        })
        .collect();
    fs::write(&makefile, patched).with_context(|| format!("writing {}", makefile.display()))?;

    for name in ["scripts", "tools"] {
        let link = kernel.headers.join(name);
        let Ok(target) = fs::read_link(&link) else {
            continue;
        };
        if target.is_absolute() {
            let inside = root.join(target.strip_prefix("/").unwrap_or(&target));
            fs::remove_file(&link).with_context(|| format!("removing {}", link.display()))?;
            std::os::unix::fs::symlink(&inside, &link)
                .with_context(|| format!("linking {} -> {}", link.display(), inside.display()))?;
        }
    }
    Ok(())
}

/// Finds the xz payload in a bzImage and decompresses it to an ELF (like the kernel's
/// scripts/extract-vmlinux; xz complains about the trailing bytes, which we ignore).
fn extract_vmlinux(bzimage: &Path, out: &Path) -> Result<()> {
    let image = fs::read(bzimage).with_context(|| format!("reading {}", bzimage.display()))?;
    for offset in find_all(&image, XZ_MAGIC) {
        let elf = xz_decompress(&image[offset..])?;
        if elf.starts_with(b"\x7fELF") {
            fs::write(out, &elf).with_context(|| format!("writing {}", out.display()))?;
            return Ok(());
        }
    }
    bail!("no xz-compressed ELF found in {}", bzimage.display())
}

fn xz_decompress(data: &[u8]) -> Result<Vec<u8>> {
    let mut child = Command::new("xz")
        .arg("-dc")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("running xz -dc")?;
    let mut stdin = child.stdin.take().context("xz stdin")?;
    let input = data.to_vec();
    // Feed stdin from a thread so a full stdout pipe cannot deadlock us.
    let feeder = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let out = child.wait_with_output().context("running xz -dc")?;
    let _ = feeder.join();
    Ok(out.stdout)
}

fn find_all<'a>(haystack: &'a [u8], needle: &'a [u8]) -> impl Iterator<Item = usize> + 'a {
    haystack
        .windows(needle.len())
        .enumerate()
        .filter(move |(_, w)| *w == needle)
        .map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_apt_cache_depends() {
        let text = "linux-headers-6.1.0-56-amd64\n  Depends: linux-headers-6.1.0-56-common\n  Depends: linux-kbuild-6.1\n";
        assert_eq!(
            parse_depends(text),
            ["linux-headers-6.1.0-56-common", "linux-kbuild-6.1"]
        );
    }

    #[test]
    fn finds_magic() {
        let data = [0u8, 0xFD, b'7', b'z', b'X', b'Z', 0, 1];
        assert_eq!(find_all(&data, XZ_MAGIC).collect::<Vec<_>>(), [1]);
    }
}
