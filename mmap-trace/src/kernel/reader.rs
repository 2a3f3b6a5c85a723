//! The ring buffer's reader for the commands that stream (`trace`, `agent`): wait for a
//! wake-up from the probes or the drain timer, whichever comes first; the caller then
//! drains with [`crate::kernel::decode`]'s one drain policy.

use std::time::Duration;

use anyhow::{Context as _, Result};
use aya::maps::{MapData, RingBuf};
use tokio::io::unix::AsyncFd;

/// How long a record may sit in the ring buffer below the probes' wake-up threshold.
pub const DRAIN_INTERVAL: Duration = Duration::from_millis(10);

/// Why [`RingReader::wait`] returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wake {
    /// The probes woke us (the buffer filled past their threshold).
    Readable,
    /// [`DRAIN_INTERVAL`] passed.
    Tick,
}

pub struct RingReader {
    ring: AsyncFd<RingBuf<MapData>>,
    tick: tokio::time::Interval,
}

impl RingReader {
    /// Inside the event loop's runtime.
    pub fn new(ring: RingBuf<MapData>) -> Result<Self> {
        // SAFETY: the AsyncFd owns the descriptor, so it stays open while registered.
        let ring = unsafe { AsyncFd::register(ring) }
            .map_err(|e| e.into_parts().1)
            .context("polling the ring buffer")?;
        // The syscall probes wake us only once the buffer fills past a threshold
        // (emit.rs): drain on a short timer as well, so no record waits longer.
        let mut tick = tokio::time::interval(DRAIN_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Ok(Self { ring, tick })
    }

    /// Until records may be waiting. Cancel-safe (for `select!`).
    pub async fn wait(&mut self) -> Result<Wake> {
        tokio::select! {
            guard = self.ring.readable_mut() => {
                // Cleared before the caller drains: a wake-up that arrives while it
                // drains must bring it back (the probes wake once per threshold crossing).
                guard?.clear_ready();
                Ok(Wake::Readable)
            }
            _ = self.tick.tick() => Ok(Wake::Tick),
        }
    }

    /// The ring, to drain.
    pub fn ring(&mut self) -> &mut RingBuf<MapData> {
        self.ring.get_mut()
    }
}
