//! The Debian guest kernels, their headers and an uncompressed vmlinux, cached under
//! `target/guest/<version>/`.
//!
//! Layout of the cache (a contract for the other engineers):
//! - `root/`: the kernel's .debs unpacked with `dpkg-deb -x` (boot/ or usr/lib/modules/,
//!   usr/src/…); 7.x splits the image into linux-binary-, linux-modules- and linux-base-
//! - `vmlinux`: the ELF extracted from the bzImage; QEMU boots it directly (~6 s vs ~9 s);
//!   arm64 (`<version>` ends in `-arm64`): `Image`, Debian's uncompressed vmlinuz, and
//!   `root/bin/busybox`, busybox-static for arm64, the guest's shell
//! - `root/usr/src/linux-headers-<version>/`: the headers, patched to build in place, with
//!   the kernel's raw `.BTF` as `vmlinux` so modules get BTF (6.12 and 7.x ship one)
//! - `chroot/`: for lines whose compiler the host lacks (7.x), see chroot.rs
//! - `.complete`: written last; its presence skips all of the above

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context as _, Result, bail};

use crate::Workspace;
use crate::arch::Arch;
use crate::cmd;
use crate::kernel_line::{KernelRequest, Line, PrivateApt};

const MARKER: &str = ".complete";
/// Compressed payloads a Debian bzImage may carry: 6.1 uses xz, 6.12 and 7.x zstd.
const PAYLOADS: &[(&str, &[u8])] = &[
    ("xz", &[0xFD, b'7', b'z', b'X', b'Z', 0x00]),
    ("zstd", &[0x28, 0xB5, 0x2F, 0xFD]),
];

pub struct GuestKernel {
    pub version: String,
    pub line: &'static Line,
    pub arch: Arch,
    /// `target/guest/<version>/`.
    pub dir: PathBuf,
    /// The uncompressed kernel ELF to boot.
    pub vmlinux: PathBuf,
    /// The headers tree to pass to `make -C`.
    pub headers: PathBuf,
    /// The guest's busybox (static): the host's on x86_64, Debian's arm64 build on arm64.
    pub busybox: PathBuf,
}

impl GuestKernel {
    fn at(ws: &Workspace, line: &'static Line, arch: Arch, version: &str) -> Self {
        let dir = ws.target_dir.join("guest").join(version);
        GuestKernel {
            version: version.to_owned(),
            line,
            arch,
            vmlinux: dir.join(if arch.is_host() { "vmlinux" } else { "Image" }),
            busybox: if arch.is_host() {
                PathBuf::from("/bin/busybox")
            } else {
                dir.join("root/bin/busybox")
            },
            headers: dir
                .join("root/usr/src")
                .join(format!("linux-headers-{version}")),
            dir,
        }
    }

    fn root(&self) -> PathBuf {
        self.dir.join("root")
    }

    /// `lib/modules/<version>` (usr-merged on 7.x: `usr/lib/modules/<version>`).
    fn modules_dir(&self) -> PathBuf {
        let plain = self.root().join("lib/modules").join(&self.version);
        if plain.is_dir() {
            return plain;
        }
        self.root().join("usr/lib/modules").join(&self.version)
    }

    /// The compiler the kernel was built with, from its CONFIG_CC_VERSION_TEXT, e.g.
    /// `x86_64-linux-gnu-gcc-16 (Debian 16.2.0-4) 16.2.0`.
    pub fn cc_version_text(&self) -> Result<String> {
        let conf = self.headers.join("include/config/auto.conf");
        let text =
            fs::read_to_string(&conf).with_context(|| format!("reading {}", conf.display()))?;
        text.lines()
            .find_map(|l| l.strip_prefix("CONFIG_CC_VERSION_TEXT="))
            .map(|v| v.trim_matches('"').to_owned())
            .with_context(|| format!("{} has no CONFIG_CC_VERSION_TEXT", conf.display()))
    }

    /// overlayfs as a loadable module of this kernel, uncompressed (the guest tests mount
    /// an overlay to check `verify` on it), or None if the package has none.
    pub fn overlay_module(&self) -> Result<Option<PathBuf>> {
        let dir = self.modules_dir().join("kernel/fs/overlayfs");
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
            let file =
                fs::File::create(&out).with_context(|| format!("creating {}", out.display()))?;
            let status = cmd::status(Command::new("xz").arg("-dc").arg(&packed).stdout(file))?;
            if !status.success() {
                let _ = fs::remove_file(&out);
                bail!("xz -dc {}: {status}", packed.display());
            }
        }
        Ok(Some(out))
    }
}

/// Returns the requested kernel, downloading and preparing it first if needed.
pub fn ensure(ws: &Workspace, request: &KernelRequest) -> Result<GuestKernel> {
    let (line, arch) = (request.line, request.arch);
    let mut apt = PrivateApt::new(ws, line, arch)?;
    // A version cached before needs no network, even if the archive has moved on.
    if let Some(v) = &request.version {
        let kernel = GuestKernel::at(ws, line, arch, v);
        if kernel.dir.join(MARKER).exists() {
            return Ok(cached(kernel));
        }
    }
    loop {
        let version = match &request.version {
            Some(v) => available(&mut apt, line, v)?,
            None => current_version(&mut apt, arch)?,
        };
        let kernel = GuestKernel::at(ws, line, arch, &version);
        if kernel.dir.join(MARKER).exists() {
            return Ok(cached(kernel));
        }
        eprintln!(
            "setup: fetching guest kernel {version} (kernel line {}, apt-get download, 100-250 MB) into {}",
            line.name,
            kernel.dir.display()
        );
        match prepare(&kernel, &apt) {
            Ok(()) => {
                fs::write(kernel.dir.join(MARKER), format!("{version}\n"))
                    .with_context(|| format!("writing {}", kernel.dir.join(MARKER).display()))?;
                return Ok(kernel);
            }
            // Stale lists name files the mirror no longer has: update once and retry
            // (a line may then resolve to a newer version).
            Err(e) if !apt.updated() => {
                eprintln!("setup: {e:#}; refreshing the package lists and retrying");
                apt.update_once()?;
            }
            Err(e) => return Err(e.context(format!("preparing guest kernel {version}"))),
        }
    }
}

fn cached(kernel: GuestKernel) -> GuestKernel {
    eprintln!(
        "setup: guest kernel {} (line {}): cached in {}",
        kernel.version,
        kernel.line.name,
        kernel.dir.display()
    );
    kernel
}

/// The current kernel version of `line` (from its private lists), without fetching it.
pub fn current(ws: &Workspace, line: &'static Line) -> Result<String> {
    current_version(&mut PrivateApt::new(ws, line, Arch::X86_64)?, Arch::X86_64)
}

/// The version the line's `linux-image-<arch>` depends on, e.g. `7.2.13+deb14-amd64`.
fn current_version(apt: &mut PrivateApt, arch: Arch) -> Result<String> {
    // The image meta-package whose dependency names a suite's current kernel.
    let meta = format!("linux-image-{}", arch.debian());
    let meta = meta.as_str();
    if !apt.has_lists() {
        apt.update_once()?;
    }
    let find = |apt: &PrivateApt| -> Result<Option<String>> {
        Ok(apt.depends(meta)?.and_then(|deps| {
            deps.iter()
                .find_map(|d| d.strip_prefix("linux-image-").map(str::to_owned))
        }))
    };
    if let Some(v) = find(apt)? {
        return Ok(v);
    }
    apt.update_once()?;
    find(apt)?.with_context(|| {
        format!(
            "the package lists in {} name no kernel for {} ({META_PACKAGE} has no \
             linux-image-* dependency)",
            apt.dir().display(),
            apt.what,
            META_PACKAGE = meta
        )
    })
}

/// `version` if the line's archive still has `linux-image-<version>`.
fn available(apt: &mut PrivateApt, line: &Line, version: &str) -> Result<String> {
    if !apt.has_lists() {
        apt.update_once()?;
    }
    let image = format!("linux-image-{version}");
    if apt.depends(&image)?.is_some_and(|d| !d.is_empty()) {
        return Ok(version.to_owned());
    }
    apt.update_once()?;
    if apt.depends(&image)?.is_some_and(|d| !d.is_empty()) {
        return Ok(version.to_owned());
    }
    let arch = if version.ends_with("-arm64") {
        Arch::Arm64
    } else {
        Arch::X86_64
    };
    let current = current_version(apt, arch).unwrap_or_else(|e| format!("unknown ({e:#})"));
    bail!(
        "the Debian archive no longer has {image} (kernel line {}): it now serves {current}. \
         Fix: pass --kernel {} for the line's current kernel, or --kernel {current}",
        line.name,
        line.name
    )
}

/// The packages that make up kernel `v`: the image (and, on 7.x, the linux-binary-,
/// linux-modules- and linux-base- packages it depends on), the headers, their -common
/// part and linux-kbuild. On arm64 also busybox-static, and linux-kbuild's amd64 build:
/// its tools (fixdep, modpost) run on this host while the module is cross-compiled.
fn packages(apt: &PrivateApt, arch: Arch, v: &str) -> Result<Vec<String>> {
    let image = format!("linux-image-{v}");
    let headers = format!("linux-headers-{v}");
    let deps_of = |package: &str| -> Result<Vec<String>> {
        apt.depends(package)?
            .with_context(|| format!("apt-cache depends {package}: no such package"))
    };
    let mut packages = vec![image.clone(), headers.clone()];
    packages.extend(
        deps_of(&image)?
            .into_iter()
            .filter(|d| d.starts_with("linux-") && d.contains(v)),
    );
    let deps = deps_of(&headers)?;
    let common = deps
        .iter()
        .find(|d| d.starts_with("linux-headers-") && d.ends_with("-common"));
    let kbuild = deps.iter().find(|d| d.starts_with("linux-kbuild-"));
    match (common, kbuild) {
        (Some(c), Some(k)) if arch.is_host() => packages.extend([c.clone(), k.clone()]),
        (Some(c), Some(k)) => {
            packages.extend([c.clone(), format!("{k}:amd64"), "busybox-static".to_owned()])
        }
        _ => bail!(
            "apt-cache depends {headers} does not name the -common headers and linux-kbuild (got {deps:?})"
        ),
    }
    Ok(packages)
}

fn prepare(kernel: &GuestKernel, apt: &PrivateApt) -> Result<()> {
    let v = &kernel.version;
    let debs = kernel.dir.join("debs");
    let root = kernel.root();
    for d in [&debs, &root] {
        if d.exists() {
            fs::remove_dir_all(d).with_context(|| format!("removing {}", d.display()))?;
        }
        fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }

    let packages = packages(apt, kernel.arch, v)?;
    let status = cmd::status(
        apt.command("apt-get")
            .current_dir(&debs)
            .stdout(std::io::stderr())
            .arg("download")
            .args(&packages),
    )?;
    if !status.success() {
        bail!("apt-get download {} failed: {status}", packages.join(" "));
    }
    for entry in fs::read_dir(&debs).with_context(|| format!("listing {}", debs.display()))? {
        let deb = entry?.path();
        cmd::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root))?;
    }
    fs::remove_dir_all(&debs).with_context(|| format!("removing {}", debs.display()))?;

    fix_headers(kernel)?;
    let bzimage = [
        root.join(format!("boot/vmlinuz-{v}")),
        root.join(format!("usr/lib/modules/{v}/vmlinuz")),
    ]
    .into_iter()
    .find(|p| p.is_file())
    .with_context(|| {
        format!("the packages of {v} hold no vmlinuz (looked in boot/ and usr/lib/modules/)")
    })?;
    // Raw BTF of the guest kernel: kbuild generates module BTF against <headers>/vmlinux
    // (6.12 and 7.x headers ship one; 6.1's do not).
    let headers_btf = kernel.headers.join("vmlinux");
    if kernel.arch.is_host() {
        extract_vmlinux(&bzimage, &kernel.vmlinux)?;
        if !headers_btf.exists() {
            write_raw_btf(&kernel.vmlinux, &headers_btf)?;
        }
    } else {
        // Debian's arm64 vmlinuz is the uncompressed Image QEMU boots; not an ELF, so
        // its BTF is found by the blob's header.
        fs::rename(&bzimage, &kernel.vmlinux).with_context(|| {
            format!(
                "moving {} to {}",
                bzimage.display(),
                kernel.vmlinux.display()
            )
        })?;
        if !headers_btf.exists() {
            let image = fs::read(&kernel.vmlinux)
                .with_context(|| format!("reading {}", kernel.vmlinux.display()))?;
            let btf = find_btf(&image)
                .with_context(|| format!("{} holds no BTF blob", kernel.vmlinux.display()))?;
            fs::write(&headers_btf, btf)
                .with_context(|| format!("writing {}", headers_btf.display()))?;
        }
        if !kernel.busybox.is_file() {
            bail!(
                "busybox-static for {} unpacked no {}",
                kernel.arch,
                kernel.busybox.display()
            );
        }
    }
    Ok(())
}

/// The kernel's BTF in a raw image: the one blob whose header is BTF's magic (0xeB9F),
/// version 1 and a 24-byte header; its length is the header's plus the string section's
/// end (strings follow types).
fn find_btf(image: &[u8]) -> Option<&[u8]> {
    const HEADER: &[u8] = &[0x9f, 0xeb, 0x01, 0x00, 24, 0, 0, 0];
    let word = |at: usize| -> Option<usize> {
        let bytes = image.get(at..at + 4)?;
        Some(u32::from_le_bytes(bytes.try_into().ok()?) as usize)
    };
    find_all(image, HEADER).find_map(|at| {
        let (type_off, type_len) = (word(at + 8)?, word(at + 12)?);
        let (str_off, str_len) = (word(at + 16)?, word(at + 20)?);
        let end = 24 + (type_off + type_len).max(str_off + str_len);
        (str_len > 0).then_some(())?;
        image.get(at..at + end)
    })
}

/// The `.BTF` section of `vmlinux` as a raw file, which is what kbuild's `--btf_base`
/// reads.
pub fn write_raw_btf(vmlinux: &Path, out: &Path) -> Result<()> {
    cmd::run(
        Command::new("objcopy")
            .args(["-O", "binary", "--only-section=.BTF"])
            .arg(vmlinux)
            .arg(out),
    )
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
        // `include /usr/src/…-common/Makefile` (and, on 7.x, `KBUILD_OUTPUT=/usr/src/…`).
        .map(|line| {
            let unpacked = format!("{}/usr/src/", root.display());
            format!("{}\n", line.replace(" /usr/src/", &format!(" {unpacked}")).replace("=/usr/src/", &format!("={unpacked}")))
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

/// Finds the compressed payload in a bzImage and decompresses it to an ELF (like the
/// kernel's scripts/extract-vmlinux; the decompressor complains about the trailing bytes,
/// which we ignore).
fn extract_vmlinux(bzimage: &Path, out: &Path) -> Result<()> {
    let image = fs::read(bzimage).with_context(|| format!("reading {}", bzimage.display()))?;
    for (program, magic) in PAYLOADS {
        for offset in find_all(&image, magic) {
            let elf = decompress(program, &image[offset..])?;
            if elf.starts_with(b"\x7fELF") {
                fs::write(out, &elf).with_context(|| format!("writing {}", out.display()))?;
                return Ok(());
            }
        }
    }
    bail!(
        "no xz- or zstd-compressed ELF found in {}",
        bzimage.display()
    )
}

fn decompress(program: &str, data: &[u8]) -> Result<Vec<u8>> {
    let mut child = Command::new(program)
        .arg("-dc")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("running {program} -dc"))?;
    let mut stdin = child.stdin.take().context("decompressor stdin")?;
    let input = data.to_vec();
    // Feed stdin from a thread so a full stdout pipe cannot deadlock us.
    let feeder = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let out = child
        .wait_with_output()
        .with_context(|| format!("running {program} -dc"))?;
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
    fn finds_magic() {
        let data = [0u8, 0xFD, b'7', b'z', b'X', b'Z', 0, 1];
        assert_eq!(find_all(&data, PAYLOADS[0].1).collect::<Vec<_>>(), [1]);
    }

    #[test]
    fn finds_btf_in_a_raw_image() {
        let mut image = vec![7u8; 5];
        for word in [0x0001_eb9f_u32, 24, 0, 4, 4, 3] {
            image.extend(word.to_le_bytes());
        }
        image.extend([1, 2, 3, 4, b'a', 0, 0, 9, 9]);
        let btf = find_btf(&image).unwrap();
        assert_eq!(btf.len(), 24 + 7);
        assert_eq!(btf[btf.len() - 1], 0);
    }
}
