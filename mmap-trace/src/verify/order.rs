//! The order a checkpoint's batch is applied in. Calls of different threads that overlap
//! in time reach sys_exit in an order that need not be the one in which they changed the
//! address space: the mm's write lock decides, one writer at a time. Each record carries
//! when its call first held that lock (the catch-all notes it under verify), so the batch
//! is applied in lock order: exactly the kernel's. A unit that never took the lock
//! changed nothing and goes where it exited.
//!
//! Without the catch-all (or for a call whose lock was not seen) there are no lock times:
//! then the batch is tried in exit order first and, if the kernel disagrees, in each
//! other order that keeps every thread's own order and real time (a call that exited
//! before another entered stays first).

use crate::kernel::decode::Event;

/// A thread's syscall event with the kernel-probe events its call produced before it.
pub struct Unit {
    pub events: Vec<Event>,
    tid: u32,
    enter_ns: u64,
    exit_ns: u64,
    /// When its call first held the mm's write lock (0: never, or not known).
    lock_ns: u64,
    /// exec replaces the whole address space: never reordered by the search.
    pinned: bool,
}

/// When the call behind `event` first held its mm's write lock (0: never, or not known).
fn lock_ns(event: &Event) -> u64 {
    match event {
        Event::Syscall(e) => e.lock_ts_ns,
        Event::Mmap(e) => e.call.lock_ts_ns,
        Event::MmChange(e) => e.lock_ts_ns,
        Event::Fork(e) => e.lock_ts_ns,
        _ => 0,
    }
}

pub fn units(events: &[Event]) -> Vec<Unit> {
    let mut waiting: Vec<(u32, Vec<Event>)> = Vec::new();
    let mut units = Vec::new();
    for event in events {
        let h = event.header();
        let mut taken = || {
            waiting
                .iter()
                .position(|(t, _)| *t == h.tid)
                .map(|i| waiting.swap_remove(i).1)
                .unwrap_or_default()
        };
        match event {
            Event::Syscall(_) | Event::Mmap(_) | Event::MmChange(_) => {
                let enter_ns = event.syscall().map_or(h.ts_ns, |s| s.enter_ts_ns);
                let mut evs = taken();
                evs.push(*event);
                units.push(Unit {
                    events: evs,
                    tid: h.tid,
                    enter_ns,
                    exit_ns: h.ts_ns,
                    lock_ns: lock_ns(event),
                    pinned: false,
                });
            }
            Event::Exec(_) | Event::Fork(_) => {
                let mut evs = taken();
                evs.push(*event);
                units.push(Unit {
                    events: evs,
                    tid: h.tid,
                    enter_ns: h.ts_ns,
                    exit_ns: h.ts_ns,
                    lock_ns: lock_ns(event),
                    pinned: true,
                });
            }
            _ => match waiting.iter_mut().find(|(t, _)| *t == h.tid) {
                Some((_, evs)) => evs.push(*event),
                None => waiting.push((h.tid, vec![*event])),
            },
        }
    }
    for (tid, evs) in waiting {
        let ts = evs[0].header().ts_ns;
        units.push(Unit {
            events: evs,
            tid,
            enter_ns: ts,
            exit_ns: ts,
            lock_ns: 0,
            pinned: false,
        });
    }
    units
}

/// The orders to try `units` in. `lock_times`: the records carry lock times (the
/// catch-all ran), so the one lock order is the kernel's. Otherwise the orders that
/// respect each thread's order and real time, exit order first; only the exit order for
/// batches too large to search or holding an exec.
pub fn serial_orders(units: &[Unit], lock_times: bool) -> Vec<Vec<usize>> {
    if lock_times {
        let mut order: Vec<usize> = (0..units.len()).collect();
        // Stable: a thread's own calls, and units that took no lock, keep exit order.
        order.sort_by_key(|&u| match units[u].lock_ns {
            0 => units[u].exit_ns,
            t => t,
        });
        return vec![order];
    }
    const MAX_ORDERS: usize = 720;
    let identity: Vec<usize> = (0..units.len()).collect();
    if units.len() > 6 || units.iter().any(|u| u.pinned) {
        return vec![identity];
    }
    // i must come before j (i < j in exit order) when the same thread made both, or i
    // had returned before j was entered.
    let before = |i: usize, j: usize| {
        i < j && (units[i].tid == units[j].tid || units[i].exit_ns < units[j].enter_ns)
    };
    let mut orders = Vec::new();
    let mut current = Vec::new();
    let mut used = vec![false; units.len()];
    fn search(
        n: usize,
        before: &dyn Fn(usize, usize) -> bool,
        current: &mut Vec<usize>,
        used: &mut Vec<bool>,
        orders: &mut Vec<Vec<usize>>,
    ) {
        if orders.len() >= MAX_ORDERS {
            return;
        }
        if current.len() == n {
            orders.push(current.clone());
            return;
        }
        for j in 0..n {
            if used[j] || (0..n).any(|i| !used[i] && i != j && before(i, j)) {
                continue;
            }
            used[j] = true;
            current.push(j);
            search(n, before, current, used, orders);
            current.pop();
            used[j] = false;
        }
    }
    search(units.len(), &before, &mut current, &mut used, &mut orders);
    orders
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(tid: u32, enter_ns: u64, exit_ns: u64) -> Unit {
        Unit {
            events: Vec::new(),
            tid,
            enter_ns,
            exit_ns,
            lock_ns: 0,
            pinned: false,
        }
    }

    #[test]
    fn lock_times_give_the_one_kernel_order() {
        // Thread 2 took the lock first though it exited last; thread 3 took none.
        let mut a = unit(1, 0, 10);
        a.lock_ns = 6;
        let mut b = unit(2, 1, 12);
        b.lock_ns = 3;
        let c = unit(3, 2, 8);
        assert_eq!(serial_orders(&[a, b, c], true), [vec![1, 0, 2]]);
    }

    #[test]
    fn only_overlapping_calls_of_different_threads_are_reordered() {
        // Two threads' calls overlap in time: both orders, exit order first.
        assert_eq!(
            serial_orders(&[unit(1, 0, 10), unit(2, 5, 8)], false),
            [vec![0, 1], vec![1, 0]]
        );
        // The first returned before the second began: one order.
        assert_eq!(
            serial_orders(&[unit(1, 0, 4), unit(2, 5, 8)], false),
            [vec![0, 1]]
        );
        // One thread's calls keep their order however the times look.
        assert_eq!(
            serial_orders(&[unit(1, 0, 10), unit(1, 5, 8)], false),
            [vec![0, 1]]
        );
        // An exec pins the batch.
        let mut exec = unit(1, 0, 10);
        exec.pinned = true;
        assert_eq!(serial_orders(&[exec, unit(2, 5, 8)], false).len(), 1);
    }
}
