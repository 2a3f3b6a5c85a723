//! Part 4: the loop in the Debian guest with every probe the guest supports attached
//! (the syscall tracepoints and the `mmap_region`/`remap_pfn_range` kprobes), untraced and
//! traced in alternation, in one boot. Under TCG only the ratio means anything.

use anyhow::{Context as _, Result, bail};

use super::Spread;
use crate::build::Artifacts;
use crate::qemu::{self, Markers, Options};
use crate::setup::Ready;

/// Prefix of the lines the guest script prints for us.
const TAG: &str = "MMTRACE-BENCH";

pub struct Guest {
    pub iterations: u64,
    pub untraced_secs: Vec<f64>,
    pub traced_secs: Vec<f64>,
    /// The loop's mmap/munmap calls in each trace, and its mmap_region events.
    pub kept: Vec<u64>,
    pub region_kept: Vec<u64>,
    /// `lost_total` of each trace's summary.
    pub lost: Vec<u64>,
    /// The probes the guest's mmap-trace attached (its ready line).
    pub probes: String,
    pub cpu: String,
}

impl Guest {
    pub fn ratio(&self) -> Spread {
        let ratios: Vec<f64> = self
            .traced_secs
            .iter()
            .zip(&self.untraced_secs)
            .map(|(t, u)| t / u)
            .collect();
        Spread::of(&ratios)
    }
}

/// Same held-loop scheme as the host (a fifo instead of a pipe); busybox `date` has no
/// %N, so times come from /proc/uptime (10 ms steps: keep the loop long).
fn script(rounds: usize, iterations: u64) -> String {
    format!(
        r#"N={iterations}
W="$MMTRACE_WORKLOAD"
now() {{ cut -d' ' -f1 /proc/uptime; }}
held() {{ rm -f /tmp/go; mkfifo /tmp/go; sh -c 'read _ < /tmp/go && exec "$0" "$@"' $W --loop $N & }}
echo "{TAG} cpu $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)"
for r in $(seq 1 {rounds}); do
  held; P=$!
  t0=$(now); echo go > /tmp/go; wait $P || exit 1; t1=$(now)
  echo "{TAG} untraced $t0 $t1"
  held; P=$!
  # A stale ready line from the last round must not release the loop early.
  rm -f /tmp/bench.err /tmp/bench.jsonl
  "$MMTRACE_CLI" trace --json --output /tmp/bench.jsonl --pid $P 2>/tmp/bench.err & T=$!
  until grep -q 'mmap-trace: ready' /tmp/bench.err 2>/dev/null; do
    kill -0 $T 2>/dev/null || {{ cat /tmp/bench.err; exit 1; }}
    sleep 0.05
  done
  t0=$(now); echo go > /tmp/go; wait $P || exit 1; t1=$(now)
  wait $T || {{ cat /tmp/bench.err; exit 1; }}
  kept=$(grep '"len":"0x4000"' /tmp/bench.jsonl | grep -c -E '"probe":"(mmap|munmap)",')
  region=$(grep '"len":"0x4000"' /tmp/bench.jsonl | grep -c '"probe":"mmap_region",')
  lost=$(tail -n1 /tmp/bench.jsonl | sed -n 's/.*"lost_total":\([0-9]*\).*/\1/p')
  echo "{TAG} traced $t0 $t1 $kept $region $lost"
  echo "{TAG} ready $(grep 'mmap-trace: ready' /tmp/bench.err | sed 's/.*attached (\([^)]*\)).*/\1/')"
done
"#
    )
}

pub fn run(
    ready: &Ready,
    artifacts: &Artifacts,
    rounds: usize,
    iterations: u64,
    opts: &Options,
) -> Result<Guest> {
    let markers = Markers::new();
    let outcome = qemu::run_in_guest(
        ready.guest(),
        artifacts,
        script(rounds, iterations),
        &markers,
        opts,
    )?;
    let code = outcome.report();
    if code != 0 {
        bail!("the guest bench failed (exit {code}); its console is above");
    }
    let mut g = Guest {
        iterations,
        untraced_secs: Vec::new(),
        traced_secs: Vec::new(),
        kept: Vec::new(),
        region_kept: Vec::new(),
        lost: Vec::new(),
        probes: String::new(),
        cpu: String::new(),
    };
    for line in &outcome.console {
        let Some(rest) = line.split_once(&format!("{TAG} ")).map(|(_, r)| r) else {
            continue;
        };
        let words: Vec<&str> = rest.split_whitespace().collect();
        let num = |i: usize| -> Result<f64> {
            words
                .get(i)
                .and_then(|w| w.parse().ok())
                .with_context(|| format!("guest bench line without field {i}: {line}"))
        };
        match words.first().copied() {
            Some("cpu") => g.cpu = words[1..].join(" "),
            Some("ready") => g.probes = words[1..].join(" "),
            Some("untraced") => g.untraced_secs.push(num(2)? - num(1)?),
            Some("traced") => {
                g.traced_secs.push(num(2)? - num(1)?);
                g.kept.push(num(3)? as u64);
                g.region_kept.push(num(4)? as u64);
                g.lost.push(num(5).unwrap_or(f64::NAN) as u64);
            }
            _ => {}
        }
    }
    if g.traced_secs.len() != rounds || g.untraced_secs.len() != rounds {
        bail!(
            "the guest reported {} traced and {} untraced runs of {rounds}",
            g.traced_secs.len(),
            g.untraced_secs.len()
        );
    }
    Ok(g)
}
