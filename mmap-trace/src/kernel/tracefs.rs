//! tracefs: mounted on demand (it is not by default on some hosts), and the record
//! layout of the tracepoints whose fields the eBPF programs read, from their format files.

use std::path::Path;

use anyhow::{Context as _, Result, bail};

const TRACEFS: &str = "/sys/kernel/tracing";

pub fn ensure_mounted() -> Result<()> {
    if Path::new(TRACEFS).join("events").is_dir()
        || Path::new("/sys/kernel/debug/tracing/events").is_dir()
    {
        return Ok(());
    }
    let target = std::ffi::CString::new(TRACEFS)?;
    // SAFETY: valid NUL-terminated strings; no data argument.
    let rc = unsafe {
        libc::mount(
            c"nodev".as_ptr(),
            target.as_ptr(),
            c"tracefs".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        bail!(
            "tracefs is not mounted and mounting it failed ({err}); mount it with \
             `mount -t tracefs nodev {TRACEFS}` and try again"
        );
    }
    log::info!("mounted tracefs on {TRACEFS}");
    Ok(())
}

fn events_dir() -> std::path::PathBuf {
    if Path::new(TRACEFS).join("events").is_dir() {
        Path::new(TRACEFS).join("events")
    } else {
        Path::new("/sys/kernel/debug/tracing/events").to_path_buf()
    }
}

/// Field offsets of `filemap/mm_filemap_add_to_page_cache` on this kernel.
pub fn filemap_format() -> Result<mmap_trace_common::FilemapFormat> {
    let path = events_dir().join("filemap/mm_filemap_add_to_page_cache/format");
    let format =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let field = |name: &str| {
        field_offset(&format, name).with_context(|| format!("{}: no field {name}", path.display()))
    };
    Ok(mmap_trace_common::FilemapFormat {
        pfn: field("pfn")?,
        ino: field("i_ino")?,
        index: field("index")?,
        dev: field("s_dev")?,
        order: field_offset(&format, "order").unwrap_or(0),
        valid: 1,
    })
}

/// Field offsets of `kmem/rss_stat` on this kernel (5.5 and later; `curr` since 5.16).
pub fn rss_format() -> Result<mmap_trace_common::RssFormat> {
    let path = events_dir().join("kmem/rss_stat/format");
    let format = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "reading {} (the resident-set probe needs the kmem/rss_stat trace event, Linux 5.5+)",
            path.display()
        )
    })?;
    let field = |name: &str| {
        field_offset(&format, name).with_context(|| format!("{}: no field {name}", path.display()))
    };
    Ok(mmap_trace_common::RssFormat {
        curr: field("curr")?,
        member: field("member")?,
        size: field("size")?,
        valid: 1,
    })
}

/// `offset:N;` of the field named `name` in a tracepoint format file.
fn field_offset(format: &str, name: &str) -> Option<u32> {
    format.lines().find_map(|line| {
        let decl = line.trim().strip_prefix("field:")?.split(';').next()?;
        let field = decl.split_whitespace().last()?;
        if field != name {
            return None;
        }
        let offset = line.split("offset:").nth(1)?.split(';').next()?;
        offset.trim().parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_format_offsets() {
        let format = "name: sys_enter_mmap\nID: 100\nformat:\n\
            \tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
            \tfield:int __syscall_nr;\toffset:8;\tsize:4;\tsigned:1;\n\
            \tfield:unsigned long addr;\toffset:16;\tsize:8;\tsigned:0;\n";
        assert_eq!(field_offset(format, "addr"), Some(16));
        assert_eq!(field_offset(format, "__syscall_nr"), Some(8));
        assert_eq!(field_offset(format, "len"), None);
    }
}
