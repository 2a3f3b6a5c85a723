//! Whether the syscall tracepoints can preempt our programs, which decides if the syscall
//! hooks need the gate and its spare copies (mmap-trace-ebpf/src/syscalls.rs).
//!
//! Since Linux 6.13 the syscall tracepoints are faultable (`struct tracepoint_ext` with
//! `faultable` in BTF) and, on 7.x, call BPF with only migration disabled. A program
//! running there is preempted only if the kernel's preemption model preempts kernel code:
//! `full`, `lazy` or RT. Under `none` and `voluntary` (the 6.18 host here) nothing
//! preempts a BPF program, so one program per hook is enough and costs less.

use std::path::Path;

use super::btf::KernelBtf;

/// The environment variable that overrides the decision: `1` gates, `0` does not.
pub const GATE_VAR: &str = "MMTRACE_SYSCALL_GATE";

/// Whether to gate, and why (for the debug log and the kernels page).
pub fn syscall_gate(btf: Option<&KernelBtf>) -> (bool, String) {
    if let Ok(v) = std::env::var(GATE_VAR) {
        return (v.trim() == "1", format!("{GATE_VAR}={v}"));
    }
    match btf {
        Some(btf) if !btf.faultable_tracepoints() => {
            return (
                false,
                "syscall tracepoints are not faultable (no tracepoint_ext.faultable in BTF)".into(),
            );
        }
        Some(_) => {}
        // Without BTF we cannot tell; a kernel without BTF is old enough not to fault.
        None => return (false, "no kernel BTF".into()),
    }
    match model() {
        Some((model, source)) => (
            matches!(model.as_str(), "full" | "lazy" | "rt"),
            format!("faultable syscall tracepoints, preemption model {model} ({source})"),
        ),
        None => (
            true,
            "faultable syscall tracepoints and the preemption model is unknown".into(),
        ),
    }
}

/// The running preemption model and where it was read: debugfs, the command line, then
/// the kernel's config.
fn model() -> Option<(String, &'static str)> {
    if let Ok(text) = std::fs::read_to_string(Path::new("/sys/kernel/debug/sched/preempt"))
        && let Some(model) = bracketed(&text)
    {
        return Some((model, "debugfs sched/preempt"));
    }
    if let Ok(cmdline) = std::fs::read_to_string("/proc/cmdline")
        && let Some(model) = cmdline
            .split_whitespace()
            .find_map(|w| w.strip_prefix("preempt="))
    {
        return Some((model.to_owned(), "preempt= on the command line"));
    }
    let config = procfs::kernel_config().ok()?;
    let set = |name: &str| config.contains_key(name);
    let model = if set("CONFIG_PREEMPT_RT") {
        "rt"
    } else if set("CONFIG_PREEMPT_LAZY") {
        "lazy"
    } else if set("CONFIG_PREEMPT") {
        "full"
    } else if set("CONFIG_PREEMPT_VOLUNTARY") {
        "voluntary"
    } else if set("CONFIG_PREEMPT_NONE") {
        "none"
    } else {
        return None;
    };
    Some((model.to_owned(), "the kernel config's default"))
}

/// `none voluntary full (lazy)`: the current model is the one in parentheses.
fn bracketed(text: &str) -> Option<String> {
    let start = text.find('(')? + 1;
    let end = start + text[start..].find(')')?;
    Some(text[start..end].to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_current_model() {
        assert_eq!(
            bracketed("none voluntary full (lazy)\n").as_deref(),
            Some("lazy")
        );
        assert_eq!(bracketed("(none) voluntary full").as_deref(), Some("none"));
        assert_eq!(bracketed("none voluntary"), None);
    }
}
