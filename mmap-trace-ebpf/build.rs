use which::which;

/// Rebuild when bpf-linker changes: it is the real linker of this crate
/// (the bpfel-unknown-none target links with it).
fn main() {
    if let Ok(linker) = which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
}
