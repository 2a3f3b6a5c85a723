//! `mmap-trace report` on recorded traces (tests/fixtures/): the real CLI writes the HTML,
//! headless Chromium renders it, and the page must show one bar per VMA interval of the
//! model. Host-only and unprivileged; needs Debian's `chromium` (`cargo xtask test`
//! installs it). Screenshots land in target/tmp/report-*.png.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    sync::Mutex,
    time::Duration,
};

use mmap_trace_tests::{
    cli::{cli, json_lines, stderr, stdout, workload_path},
    scenarios::FAULT_REGION_PAGES,
};

const CHROMIUM: &str = "/usr/bin/chromium";

/// One Chromium at a time: each is a few hundred MB and the CI machine has two cores.
static CHROMIUM_LOCK: Mutex<()> = Mutex::new(());

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

fn out_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
}

fn report(args: &[&str]) -> Output {
    cli()
        .arg("report")
        .args(args)
        .output()
        .expect("run mmap-trace report")
}

/// `N VMA intervals` summed over the processes of the text report: the model's count.
fn model_bars(trace: &Path, pid: Option<&str>) -> usize {
    let mut args = vec![trace.to_str().unwrap()];
    if let Some(pid) = pid {
        args.extend(["--pid", pid]);
    }
    let run = report(&args);
    assert!(run.status.success(), "text report failed: {}", stderr(&run));
    stdout(&run)
        .lines()
        .filter_map(|l| l.trim().strip_prefix("timeline:"))
        .map(|l| {
            l.split_whitespace()
                .next()
                .unwrap()
                .parse::<usize>()
                .unwrap()
        })
        .sum()
}

/// Runs headless Chromium with `args` after the common flags; kills it after 90 s.
fn chromium(args: &[String]) -> Output {
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is not installed: the report test renders HTML in headless Chromium. \
         Install it with `apt-get install -y chromium` (`cargo xtask test` installs it)."
    );
    let _one = CHROMIUM_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let profile = tempdir("chromium-profile");
    let child = Command::new(CHROMIUM)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            // A container's small /dev/shm must not crash the renderer.
            "--disable-dev-shm-usage",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start chromium");
    // Read its output while it runs (a DOM dump can outgrow the pipe), killed by a
    // watchdog if it hangs.
    let pid = child.id() as libc::pid_t;
    let (finished, finished_rx) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        let hung = finished_rx.recv_timeout(Duration::from_secs(90)).is_err();
        if hung {
            // SAFETY: our own child, not yet reaped (wait_with_output has not returned).
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        hung
    });
    let out = child.wait_with_output().expect("chromium output");
    let _ = finished.send(());
    assert!(
        !watchdog.join().unwrap(),
        "chromium ran for more than 90 s and was killed: {args:?}"
    );
    let _ = std::fs::remove_dir_all(&profile);
    out
}

fn tempdir(what: &str) -> PathBuf {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir =
        std::env::temp_dir().join(format!("mmtrace-report-{what}-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The DOM Chromium built from `html`, after its scripts ran.
struct Dom(String);

impl Dom {
    fn load(html: &Path) -> Self {
        let out = chromium(&[
            "--dump-dom".to_string(),
            format!("file://{}", html.display()),
        ]);
        assert!(
            out.status.success(),
            "chromium --dump-dom failed: {}",
            stderr(&out)
        );
        Self(stdout(&out))
    }

    /// An attribute of `<body>` set by the page's script.
    fn body_attr(&self, name: &str) -> usize {
        let body = &self.0[self.0.find("<body").expect("a body")..];
        let body = &body[..body.find('>').unwrap()];
        let at = body
            .find(&format!("{name}=\""))
            .unwrap_or_else(|| panic!("no {name} on {body}: did the script run?"));
        let value = &body[at + name.len() + 2..];
        value[..value.find('"').unwrap()].parse().unwrap()
    }

    /// Elements whose start tag begins with `prefix` (e.g. `<rect class="vma`).
    fn count(&self, prefix: &str) -> usize {
        self.0.matches(prefix).count()
    }

    /// `<rect class="vma …">` tags whose class list has `class`.
    fn bars_with_class(&self, class: &str) -> usize {
        self.0
            .split("<rect class=\"")
            .skip(1)
            .filter(|tag| {
                tag.starts_with("vma ")
                    && tag[..tag.find('"').unwrap()].split(' ').any(|c| c == class)
            })
            .count()
    }
}

/// Writes the HTML report of `fixture`, renders it, screenshots it; checks the bar count
/// against `expected` and against the model (the text report), and that nothing external
/// is referenced.
fn render(name: &str, extra: &[&str], expected: usize) -> Dom {
    let trace = fixture(name);
    let stem = name.trim_end_matches(".jsonl");
    let suffix = extra.join("");
    let html = out_dir().join(format!("report-{stem}{suffix}.html"));
    let mut args = vec![trace.to_str().unwrap(), "--html", html.to_str().unwrap()];
    args.extend_from_slice(extra);
    let run = report(&args);
    assert!(
        run.status.success(),
        "report --html failed: {}",
        stderr(&run)
    );
    assert!(
        stderr(&run).contains(&format!("{expected} VMA bars")),
        "{}",
        stderr(&run)
    );
    let pid = extra
        .iter()
        .position(|a| *a == "--pid")
        .map(|i| extra[i + 1]);
    assert_eq!(
        model_bars(&trace, pid),
        expected,
        "the text report's model disagrees with the expected count"
    );

    let dom = Dom::load(&html);
    assert_eq!(
        dom.count("<rect class=\"vma "),
        expected,
        "rect.vma elements in the DOM"
    );
    assert_eq!(
        dom.body_attr("data-vma-bars"),
        expected,
        "querySelectorAll('rect.vma')"
    );
    assert_eq!(
        dom.body_attr("data-rendered-bars"),
        expected,
        "bars with a size on screen"
    );
    for external in [
        "<link",
        "<img",
        "<iframe",
        "src=\"http",
        "href=\"http",
        "url(http",
        "@import",
    ] {
        assert!(
            !dom.0.contains(external),
            "the page references something external: {external}"
        );
    }

    let png = out_dir().join(format!("report-{stem}{suffix}.png"));
    let _ = std::fs::remove_file(&png);
    let shot = chromium(&[
        format!("--screenshot={}", png.display()),
        "--window-size=1400,900".to_string(),
        format!("file://{}", html.display()),
    ]);
    assert!(
        shot.status.success(),
        "chromium --screenshot failed: {}",
        stderr(&shot)
    );
    let size = std::fs::metadata(&png).map(|m| m.len()).unwrap_or(0);
    assert!(
        size > 20_000,
        "{} is {size} bytes: an empty page?",
        png.display()
    );
    eprintln!("screenshot: {}", png.display());
    dom
}

/// Hand-written (tests/fixtures/synthetic.jsonl): pid 100 makes 10 intervals (the mmap
/// split by mprotect into 4, a munmap splitting off one more, an mremap move with growth
/// adding 2, a MAP_FIXED replacement 1, the heap's growth and shrink 2), pid 200 one.
#[test]
fn html_synthetic_trace_has_one_bar_per_interval() {
    let dom = render("synthetic.jsonl", &[], 11);
    assert_eq!(dom.count("<section class=\"process\""), 2);
    assert_eq!(
        dom.bars_with_class("mismatch"),
        1,
        "the verify mismatch marks the MAP_FIXED file mapping"
    );
    assert_eq!(dom.count("<g class=\"mm\" data-m="), 1);
    assert_eq!(dom.bars_with_class("k-heap"), 2);
    assert_eq!(dom.bars_with_class("k-file"), 1);
    assert_eq!(
        dom.bars_with_class("p-none"),
        1,
        "the mprotect(PROT_NONE) guard"
    );
    let one = render("synthetic.jsonl", &["--pid", "200"], 1);
    assert_eq!(one.count("<section class=\"process\""), 1);
}

/// The workload traced on this kind of host (syscall probes only).
#[test]
fn html_host_trace_renders_in_chromium() {
    let dom = render("host-workload.jsonl", &[], 15);
    assert_eq!(dom.bars_with_class("k-heap"), 3);
    assert_eq!(dom.bars_with_class("driver"), 0);
}

/// The workload mapping /dev/mmtrace-kmalloc in the guest, all probes: the driver mapping
/// is one highlighted device bar.
#[test]
fn html_guest_driver_trace_highlights_the_driver_mapping() {
    let dom = render("guest-driver.jsonl", &[], 25);
    assert_eq!(dom.bars_with_class("driver"), 1);
    assert_eq!(dom.bars_with_class("k-device"), 1);
    assert!(
        dom.0.contains("mmtrace-kmalloc rw- · driver · pfn 0x61a0"),
        "the driver bar's label"
    );
    assert!(dom.count("<g class=\"exec\"") == 1);
}

/// `verify --plant maps-perms` in the guest: 9 mismatch records, each marked.
#[test]
fn html_verify_trace_marks_mismatches() {
    let dom = render("guest-verify-planted.jsonl", &[], 25);
    assert_eq!(dom.count("<g class=\"mm\" data-m="), 9);
    assert!(
        dom.bars_with_class("mismatch") >= 3,
        "bars under the mismatches are flagged"
    );
    assert!(dom.0.contains("9 verify mismatch(es)"));
}

/// Issue 16: hovering a VMA of a `trace --stacks` trace shows the stack of the call that
/// created it (the page's own hover handler, driven by its `#hover-vma=N` test hook); the
/// text report lists the never-unmapped mapping under its call site.
#[test]
fn html_hover_shows_the_creating_stack() {
    const MARKER: &str = "mmtrace_workload_stack_marker";
    let trace = fixture("host-stacks.jsonl");
    let html = out_dir().join("host-stacks.html");
    let out = report(&[trace.to_str().unwrap(), "--html", html.to_str().unwrap()]);
    assert!(out.status.success(), "report failed: {}", stderr(&out));
    let page = std::fs::read_to_string(&html).unwrap();
    let data = page
        .split(r#"<script type="application/json" id="report-data">"#)
        .nth(1)
        .and_then(|rest| rest.split("</script>").next())
        .expect("the page's data");
    let data: serde_json::Value = serde_json::from_str(data).unwrap();
    // The live 12 KiB mapping the marker made (the fixture's planted leak).
    let vmas = data["vmas"].as_array().unwrap();
    let leak = vmas
        .iter()
        .position(|v| {
            v["size"] == "12 KiB"
                && v["stack"]
                    .as_array()
                    .is_some_and(|s| s.iter().any(|f| f.as_str().unwrap().starts_with(MARKER)))
        })
        .unwrap_or_else(|| panic!("no 12 KiB VMA with the marker's stack in {vmas:#?}"));
    let out = chromium(&[
        "--dump-dom".to_string(),
        format!("file://{}#hover-vma={leak}", html.display()),
    ]);
    assert!(out.status.success(), "chromium failed: {}", stderr(&out));
    let dom = stdout(&out);
    // The tip's element, up to the page data that follows it (which names the marker
    // whatever the hover did).
    let tip = &dom[dom.find(r#"id="tip""#).expect("the tip")..];
    let tip = &tip[..tip
        .find(r#"<script type="application/json""#)
        .expect("the data after the tip")];
    assert!(tip.contains("created by"), "no stack in the tip: {tip}");
    assert!(
        tip.contains(MARKER),
        "the tip does not name the marker: {tip}"
    );
    assert!(tip.contains("mmap_workload::main"), "{tip}");

    let text = report(&[trace.to_str().unwrap()]);
    let text = stdout(&text);
    let leaks = &text[text
        .find("still mapped at exit, by call site:")
        .unwrap_or_else(|| panic!("no leak summary: {text}"))..];
    let site = leaks
        .find("12 KiB in 1 VMA(s), mapped at:")
        .unwrap_or_else(|| panic!("the planted mapping is not listed: {leaks}"));
    assert!(
        leaks[site..]
            .lines()
            .nth(2)
            .is_some_and(|l| l.contains(MARKER)),
        "{leaks}"
    );
}

#[test]
fn text_report_summarises_each_process() {
    let run = report(&[fixture("synthetic.jsonl").to_str().unwrap()]);
    assert!(run.status.success(), "{}", stderr(&run));
    let text = stdout(&run);
    for line in [
        "lost events: 2 (mmap 2): the timeline is incomplete",
        "records of unknown type (ignored): \"note\" 1",
        "pid 100 (synth): 9 events",
        "events:    mmap 2, munmap 2 (1 refused), mprotect 1, mremap 1, brk 3",
        "mapped:    156 KiB",
        "unmapped:  76 KiB",
        "refused:   EINVAL 1 (munmap 1)",
        "timeline:  10 VMA intervals (0 device, 0 driver); at the end 5 VMAs, 80 KiB",
        "mismatches: 1",
        "field=perms expected=r--p found=rw-p",
        "pid 200 (other): 1 events",
    ] {
        assert!(text.contains(line), "missing {line:?} in:\n{text}");
    }
    let run = report(&[fixture("guest-driver.jsonl").to_str().unwrap()]);
    let text = stdout(&run);
    assert!(
        text.contains(
            "16 KiB  0x7fe918eb0000-0x7fe918eb4000  mmap rw- device mmtrace-kmalloc (driver)"
        ),
        "{text}"
    );
    assert!(text.contains("lost events: none"), "{text}");
}

#[test]
fn report_errors_are_clear() {
    let dir = tempdir("errors");
    let check = |args: &[&str], wanted: &str| {
        let run = report(args);
        let err = stderr(&run);
        assert_eq!(
            run.status.code(),
            Some(2),
            "{args:?}: errors exit with 2: {err}"
        );
        assert!(
            err.contains(wanted),
            "{args:?}: wanted {wanted:?} in {err:?}"
        );
        assert!(
            !err.contains("panicked") && !err.contains("internal error"),
            "{err}"
        );
        assert_eq!(err.lines().count(), 1, "one line: {err}");
    };
    let missing = dir.join("missing.jsonl");
    check(&[missing.to_str().unwrap()], "cannot read");
    let bad = dir.join("bad.jsonl");
    let good = std::fs::read_to_string(fixture("synthetic.jsonl")).unwrap();
    let mut lines: Vec<&str> = good.lines().collect();
    lines.insert(3, "{\"type\":\"event\", truncated");
    std::fs::write(&bad, lines.join("\n")).unwrap();
    check(&[bad.to_str().unwrap()], "line 4 is not JSON");
    let empty = dir.join("empty.jsonl");
    std::fs::write(&empty, "").unwrap();
    check(&[empty.to_str().unwrap()], "the trace is empty");
    let synthetic = fixture("synthetic.jsonl");
    check(
        &[synthetic.to_str().unwrap(), "--pid", "4242"],
        "pid 4242 has no events",
    );
    check(
        &[
            synthetic.to_str().unwrap(),
            "--html",
            "/nonexistent-dir/x.html",
        ],
        "cannot write /nonexistent-dir/x.html",
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `trace --faults --json -- mmap-workload --scenario NAME` written to a file: a live
/// trace (root: it loads the eBPF programs), and the workload's own lines.
fn live_fault_trace(name: &str) -> (PathBuf, Vec<serde_json::Value>) {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "the report's fault test records a live trace with eBPF: run it as root \
         (`cargo xtask test` does)"
    );
    let path = out_dir().join(format!("report-faults-{name}.jsonl"));
    let run = cli()
        .args(["trace", "--faults", "--json", "-o"])
        .arg(&path)
        .arg("--")
        .arg(workload_path())
        .args(["--scenario", name])
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", stderr(&run));
    let own = stdout(&run)
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (path, own)
}

/// Renders `trace` to HTML in Chromium and returns the DOM.
fn render_live(trace: &Path) -> Dom {
    let html = trace.with_extension("html");
    let run = report(&[trace.to_str().unwrap(), "--html", html.to_str().unwrap()]);
    assert!(
        run.status.success(),
        "report --html failed: {}",
        stderr(&run)
    );
    Dom::load(&html)
}

/// The value of `name="…"` in the start tag of the first element matching `tag_start`.
fn attr<'a>(dom: &'a Dom, tag_start: &str, name: &str) -> &'a str {
    let at = dom
        .0
        .find(tag_start)
        .unwrap_or_else(|| panic!("no {tag_start} in the page"));
    let tag = &dom.0[at..];
    let tag = &tag[..tag.find('>').unwrap()];
    let key = format!(" {name}=\"");
    let v = &tag[tag
        .find(&key)
        .unwrap_or_else(|| panic!("no {name} in {tag}"))
        + key.len()..];
    &v[..v.find('"').unwrap()]
}

/// Issue 17: a 64 MiB memset's resident-set curve, drawn above its timeline, rises by
/// 64 MiB (the rss probe's records are exact; between them the curve is within one
/// 256 KiB step); the memset's bar says it took 16,384 faults.
#[test]
fn html_rss_curve_of_a_64_mib_memset() {
    let (trace, own) = live_fault_trace("memset-64m");
    let memset = own
        .iter()
        .find(|l| l["observe"] == "memset")
        .expect("the workload's memset line");
    let addr = memset["value"]["addr"].as_u64().unwrap();
    let records = json_lines(&std::fs::read_to_string(&trace).unwrap());
    let mmap_ts = records
        .iter()
        .find(|r| {
            r["probe"] == "mmap" && r["ret_addr"].as_str() == Some(format!("{addr:#x}").as_str())
        })
        .expect("the memset's mmap in the trace")["ts_ns"]
        .as_u64()
        .unwrap();
    let dom = render_live(&trace);
    let ts: Vec<u64> = attr(&dom, "<path class=\"rss-line rss-anon\"", "data-ts")
        .split(' ')
        .map(|t| t.parse().unwrap())
        .collect();
    let values: Vec<i64> = attr(&dom, "<path class=\"rss-line rss-anon\"", "data-bytes")
        .split(' ')
        .map(|b| b.parse().unwrap())
        .collect();
    assert_eq!(ts.len(), values.len());
    let before = ts
        .iter()
        .zip(&values)
        .rfind(|(t, _)| **t < mmap_ts)
        .map_or(0, |(_, b)| *b);
    let peak = *values.iter().max().unwrap();
    const MIB: i64 = 1 << 20;
    assert!(
        (64 * MIB - MIB / 2..=64 * MIB + MIB).contains(&(peak - before)),
        "the anon curve rose by {} bytes (from {before} to {peak}), not 64 MiB",
        peak - before
    );
    let bar = format!("data-start=\"{addr:#x}\"");
    let tag = dom
        .0
        .split("<rect ")
        .find(|t| t.contains(&bar))
        .unwrap_or_else(|| panic!("no bar starts at {addr:#x}"));
    assert!(tag.contains("data-faults=\"16384\""), "{tag}");
}

/// Issue 17: each region's bar carries its fault count for the hover (1, 100, 10,000
/// pages written), and the hover data says so with the first touch.
#[test]
fn html_hover_counts_faults_per_region() {
    let (trace, own) = live_fault_trace("fault-regions");
    let dom = render_live(&trace);
    let touched: Vec<&serde_json::Value> = own
        .iter()
        .filter(|l| l["observe"] == "touched")
        .map(|l| &l["value"])
        .collect();
    assert_eq!(touched.len(), FAULT_REGION_PAGES.len());
    for (region, pages) in touched.iter().zip(FAULT_REGION_PAGES) {
        let start = region["addr"].as_u64().unwrap();
        let end = start + region["len"].as_u64().unwrap();
        let bar = format!("data-start=\"{start:#x}\" data-end=\"{end:#x}\"");
        let tag = dom
            .0
            .split("<rect ")
            .find(|t| t.contains(&bar))
            .unwrap_or_else(|| panic!("no bar {start:#x}-{end:#x}"));
        assert!(
            tag.contains(&format!("data-faults=\"{pages}\"")),
            "{pages} pages written: {tag}"
        );
    }
    // The text summary ranks the regions by faults and by what they made resident.
    let run = report(&[trace.to_str().unwrap()]);
    assert!(run.status.success(), "{}", stderr(&run));
    let text = stdout(&run);
    let after = |heading: &str| {
        text.lines()
            .skip_while(|l| !l.contains(heading))
            .nth(1)
            .unwrap_or_else(|| panic!("no {heading:?} in:\n{text}"))
            .to_string()
    };
    let big = touched[2]["addr"].as_u64().unwrap();
    let top = after("top mappings by faults:");
    assert!(
        top.contains("10000 faults") && top.contains(&format!("{big:#014x}")),
        "{top}"
    );
    let top = after("top mappings by resident growth");
    assert!(
        top.contains("39.1 MiB") && top.contains(&format!("{big:#014x}")),
        "{top}"
    );
    // What exec mapped is not on the timeline. Where trace placed those faults (it reads
    // maps at the first drained batch: a process gone by then leaves them unplaced), the
    // summary lists them by trace's mapping.
    let placed_in_binary = std::fs::read_to_string(&trace)
        .unwrap()
        .lines()
        .any(|l| l.contains("\"probe\":\"fault\"") && l.contains("/mmap-workload\"}"));
    if placed_in_binary {
        let outside = after("top mappings outside the timeline by faults");
        assert!(outside.contains("mmap-workload"), "{outside}");
    }
    // The hover's data: the 10,000-page region's count and its first touch.
    for wanted in [
        "\"faults\":10000",
        "\"faulted_in\":10000",
        "\"major\":0",
        "\"first_touch\":\"+",
    ] {
        assert!(dom.0.contains(wanted), "the hover data lacks {wanted}");
    }
}

/// Issue 17: the text summary says which mapping's faults needed I/O (`file-cold`: a
/// file read page by page with nothing cached and no readahead, 64 major faults).
#[test]
fn text_report_counts_faults_that_needed_io() {
    let (trace, own) = live_fault_trace("file-cold");
    let cold = own
        .iter()
        .find(|l| l["observe"] == "cold")
        .expect("the workload's cold line");
    assert_eq!(
        cold["value"]["cached"], 0,
        "the page cache kept the file: {cold}"
    );
    let addr = cold["value"]["addr"].as_u64().unwrap();
    let run = report(&[trace.to_str().unwrap()]);
    assert!(run.status.success(), "{}", stderr(&run));
    let text = stdout(&run);
    let line = text
        .lines()
        .find(|l| l.contains(&format!("{addr:#014x}")) && l.contains(" faults"))
        .unwrap_or_else(|| panic!("no fault line for {addr:#x} in:\n{text}"));
    assert!(line.contains("64 faults (64 needed I/O)"), "{line}");
}
