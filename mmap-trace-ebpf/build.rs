use which::which;

/// Rebuild when bpf-linker changes: it is the real linker of this crate
/// (the bpfel-unknown-none target links with it). `bpf_target_arch` picks the arch/
/// module: aya-build passes it (the CLI's target); a direct build (`cargo xtask lint`'s
/// clippy) gets the host's, as aya-ebpf itself does.
fn main() {
    if let Ok(linker) = which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
    println!("cargo::rustc-check-cfg=cfg(bpf_target_arch, values(\"x86_64\", \"aarch64\"))");
    println!("cargo:rerun-if-env-changed=CARGO_CFG_BPF_TARGET_ARCH");
    if std::env::var_os("CARGO_CFG_BPF_TARGET_ARCH").is_none() {
        let host = std::env::var("HOST").unwrap_or_default();
        let arch = host.split('-').next().unwrap_or_default();
        println!("cargo:rustc-cfg=bpf_target_arch=\"{arch}\"");
    }
}
