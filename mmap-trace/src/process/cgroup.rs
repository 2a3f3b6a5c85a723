//! cgroup v2: `trace --cgroup PATH` (the in-kernel filter's id and level), the
//! `cgroup` path of each JSON event (the id the probes record, named in userspace), and
//! the container a cgroup path belongs to (`agent`'s labels and OTLP attributes).
//!
//! A cgroup v2 id is its directory's inode number on the cgroup2 filesystem (the root's
//! is 1). The probes keep a task when its ancestor at the cgroup's level is the cgroup
//! (`bpf_get_current_ancestor_cgroup_id`), so the level must be the kernel's: counted
//! from the hierarchy's root, which is why a cgroup2 mount that is not the root (inside
//! a cgroup namespace) is refused rather than guessed at.

use std::{
    collections::HashMap,
    ffi::CString,
    fs::File,
    os::{fd::AsRawFd as _, unix::fs::MetadataExt as _},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};
use mmap_trace_common::CgroupFilter;

const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
const CGROUP_SUPER_MAGIC: i64 = 0x0027_e0eb;
/// The cgroup v2 root's id.
const ROOT_ID: u64 = 1;

/// Mount points of cgroup2 filesystems, from /proc/self/mountinfo.
fn cgroup2_mounts() -> Vec<PathBuf> {
    procfs::process::Process::myself()
        .and_then(|p| p.mountinfo())
        .map(|infos| {
            infos
                .into_iter()
                .filter(|m| m.fs_type == "cgroup2")
                .map(|m| m.mount_point)
                .collect()
        })
        .unwrap_or_default()
}

fn fs_type(path: &Path) -> std::io::Result<i64> {
    let c = CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: a NUL-terminated path and a statfs out-buffer.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a statfs out-buffer we own.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(st.f_type as i64)
}

/// A `--cgroup PATH` checked and turned into the probes' filter.
pub fn select(path: &Path) -> Result<CgroupFilter> {
    let v2_hint = || match cgroup2_mounts().first() {
        Some(m) => format!("cgroup v2 is mounted at {} on this machine", m.display()),
        None => {
            "this machine has no cgroup v2 mount (mount -t cgroup2 none /sys/fs/cgroup)".to_string()
        }
    };
    let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => {
            anyhow::anyhow!(
                "--cgroup {}: no such cgroup directory ({})",
                path.display(),
                v2_hint()
            )
        }
        _ => anyhow::anyhow!("--cgroup {}: {e}", path.display()),
    })?;
    if !meta.is_dir() {
        bail!(
            "--cgroup {}: not a directory; give a cgroup v2 directory",
            path.display()
        );
    }
    match fs_type(path).with_context(|| format!("--cgroup {}", path.display()))? {
        CGROUP2_SUPER_MAGIC => {}
        CGROUP_SUPER_MAGIC => bail!(
            "--cgroup {} is a cgroup v1 hierarchy; only cgroup v2 cgroups can be traced ({})",
            path.display(),
            v2_hint()
        ),
        _ => bail!(
            "--cgroup {} is not a cgroup v2 directory ({})",
            path.display(),
            v2_hint()
        ),
    }
    let canonical = path
        .canonicalize()
        .with_context(|| format!("--cgroup {}", path.display()))?;
    let mount = cgroup2_mounts()
        .into_iter()
        .filter(|m| canonical.starts_with(m))
        .max_by_key(|m| m.components().count())
        .with_context(|| {
            format!(
                "--cgroup {}: no cgroup2 mount contains it in /proc/self/mountinfo",
                path.display()
            )
        })?;
    let root_id = std::fs::metadata(&mount).map(|m| m.ino()).unwrap_or(0);
    if root_id != ROOT_ID {
        bail!(
            "--cgroup {}: the cgroup2 mount {} is not the hierarchy's root (inside a cgroup \
             namespace?), so the cgroup's depth is unknown; run mmap-trace in the host's \
             cgroup namespace",
            path.display(),
            mount.display()
        );
    }
    let relative = canonical.strip_prefix(&mount).unwrap_or(Path::new(""));
    let level = relative.components().count() as u32;
    Ok(CgroupFilter {
        id: meta.ino(),
        level,
        _pad: 0,
    })
}

/// `file_handle` with room for a cgroup id (`FILEID_KERNFS`: the 64-bit id itself).
#[repr(C)]
struct KernfsHandle {
    handle_bytes: u32,
    handle_type: i32,
    id: u64,
}
const FILEID_KERNFS: i32 = 0xfe;

/// cgroup ids to paths relative to the cgroup2 root, each resolved once: by
/// `open_by_handle_at` on the cgroup2 mount (so a cgroup created after the trace started
/// is named as well) and cached, unknown ids too (a cgroup removed before its events
/// were read has no name any more).
pub struct Names {
    mount: Option<(File, PathBuf)>,
    cache: HashMap<u64, Option<String>>,
}

impl Names {
    pub fn new() -> Self {
        let mount = cgroup2_mounts()
            .into_iter()
            .find(|m| std::fs::metadata(m).is_ok_and(|md| md.ino() == ROOT_ID))
            .and_then(|m| File::open(&m).ok().map(|f| (f, m)));
        Self {
            mount,
            cache: HashMap::new(),
        }
    }

    pub fn name(&mut self, id: u64) -> Option<&str> {
        let mount = &self.mount;
        self.cache
            .entry(id)
            .or_insert_with(|| resolve(mount.as_ref()?, id))
            .as_deref()
    }
}

fn resolve((mount_fd, mount): &(File, PathBuf), id: u64) -> Option<String> {
    if id == ROOT_ID {
        return Some("/".to_string());
    }
    let mut handle = KernfsHandle {
        handle_bytes: 8,
        handle_type: FILEID_KERNFS,
        id,
    };
    // SAFETY: a valid mount fd and a file_handle whose handle_bytes match its payload.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_by_handle_at,
            mount_fd.as_raw_fd(),
            (&raw mut handle).cast::<libc::c_void>(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return None;
    }
    // SAFETY: open_by_handle_at returned a fresh descriptor we now own.
    let dir = unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fd as i32) };
    let path = std::fs::read_link(format!("/proc/self/fd/{}", dir.as_raw_fd())).ok()?;
    let relative = path.strip_prefix(mount).ok()?;
    Some(format!("/{}", relative.display()))
}

/// The container (and Kubernetes pod) a cgroup path names, as the runtimes lay their
/// cgroups out: docker (`docker-ID.scope`, `/docker/ID`), containerd
/// (`cri-containerd-ID.scope`, `/kubepods/…/podUID/ID`), CRI-O (`crio-ID.scope`), podman
/// (`libpod-ID.scope`; its `libpod-conmon-…` monitor is not the container), and the
/// kubelet's pod slices with either cgroup driver (`kubepods-burstable-podUID.slice`
/// with `_` for `-`, or `/kubepods/burstable/podUID`). Empty fields when the path says
/// nothing of one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ContainerIdentity {
    /// The full 64-hex container id.
    pub container_id: String,
    /// docker, containerd, cri-o, podman; or "" when only the id shows.
    pub runtime: &'static str,
    /// The pod's UID (dashes, as the API server has it).
    pub pod_uid: String,
}

pub fn container_identity(path: &str) -> ContainerIdentity {
    const RUNTIMES: &[(&str, &str)] = &[
        ("docker-", "docker"),
        ("cri-containerd-", "containerd"),
        ("containerd-", "containerd"),
        ("crio-", "cri-o"),
        ("libpod-", "podman"),
    ];
    let is_id = |s: &str| s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit());
    let mut identity = ContainerIdentity::default();
    let mut parent = "";
    for component in path.split('/').filter(|c| !c.is_empty()) {
        let stem = component
            .strip_suffix(".scope")
            .or_else(|| component.strip_suffix(".slice"))
            .unwrap_or(component);
        if let Some(uid) = pod_uid(stem) {
            identity.pod_uid = uid;
        } else if let Some((id, runtime)) = RUNTIMES
            .iter()
            .find_map(|(prefix, rt)| stem.strip_prefix(prefix).map(|id| (id, *rt)))
            .filter(|(id, _)| is_id(id))
        {
            identity.container_id = id.to_owned();
            identity.runtime = runtime;
        } else if is_id(stem) {
            identity.container_id = stem.to_owned();
            identity.runtime = match parent {
                "docker" => "docker",
                "libpod_parent" => "podman",
                _ => "",
            };
        }
        parent = component;
    }
    identity
}

/// `pod<UID>` at the end of a slice name (`kubepods-besteffort-pod<UID>`), the UID's
/// underscores (systemd's escape of `-`) turned back into dashes.
fn pod_uid(stem: &str) -> Option<String> {
    let at = stem.rfind("pod")?;
    if at > 0 && !stem[..at].ends_with('-') {
        return None;
    }
    let uid = stem[at + 3..].replace('_', "-");
    let shape = uid.len() == 36
        && uid.bytes().enumerate().all(|(i, b)| {
            if matches!(i, 8 | 13 | 18 | 23) {
                b == b'-'
            } else {
                b.is_ascii_hexdigit()
            }
        });
    shape.then_some(uid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_what_is_not_a_cgroup_v2_directory() {
        let missing = select(Path::new("/nonexistent/cgroup"))
            .unwrap_err()
            .to_string();
        assert!(missing.contains("no such cgroup directory"), "{missing}");
        let not_cgroup = select(Path::new("/proc")).unwrap_err().to_string();
        assert!(
            not_cgroup.contains("not a cgroup v2 directory"),
            "{not_cgroup}"
        );
        let file = select(Path::new("/proc/self/maps"))
            .unwrap_err()
            .to_string();
        assert!(file.contains("not a directory"), "{file}");
    }

    #[test]
    fn the_root_is_level_zero_and_names_itself() {
        let Some(mount) = cgroup2_mounts().into_iter().next() else {
            panic!("this test needs a cgroup2 mount (see /proc/self/mountinfo)");
        };
        assert_eq!(
            select(&mount).unwrap(),
            CgroupFilter {
                id: 1,
                level: 0,
                _pad: 0
            }
        );
        let mut names = Names::new();
        assert_eq!(names.name(1), Some("/"));
        assert_eq!(names.name(u64::MAX), None);
    }
    #[test]
    fn container_identity_from_each_runtimes_layout() {
        let id = "3f4c2a1b".repeat(8);
        let uid = "0d1e2f3a-4b5c-6d7e-8f90-a1b2c3d4e5f6";
        let underscored = uid.replace('-', "_");
        let cases = [
            (format!("/system.slice/docker-{id}.scope"), "docker", ""),
            (format!("/docker/{id}"), "docker", ""),
            (format!("/machine.slice/libpod-{id}.scope"), "podman", ""),
            (format!("/system.slice/crio-{id}.scope"), "cri-o", ""),
            (
                format!(
                    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{underscored}.slice/cri-containerd-{id}.scope"
                ),
                "containerd",
                uid,
            ),
            (format!("/kubepods/besteffort/pod{uid}/{id}"), "", uid),
        ];
        for (path, runtime, pod) in cases {
            let found = container_identity(&path);
            assert_eq!(
                (
                    found.container_id.as_str(),
                    found.runtime,
                    found.pod_uid.as_str()
                ),
                (id.as_str(), runtime, pod),
                "{path}"
            );
        }
        // Not containers: a service, podman's monitor, a pod slice alone, nonsense.
        for path in [
            "/system.slice/ssh.service",
            "/machine.slice/libpod-conmon-abc.scope",
            "/",
            "",
            "/user.slice/pod/x",
        ] {
            assert_eq!(container_identity(path).container_id, "", "{path}");
        }
        let pod_only = container_identity(&format!("/kubepods/burstable/pod{uid}"));
        assert_eq!(
            (pod_only.container_id.as_str(), pod_only.pod_uid.as_str()),
            ("", uid)
        );
    }
}
