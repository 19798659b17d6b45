//! Open-loop pacing: one pacer per worker thread.
//!
//! tokio's timer has millisecond granularity (its wheel ticks once a
//! millisecond and the runtime parks with a millisecond `epoll_wait`
//! timeout), so a connection that sleeps with `sleep_until` sends up to a
//! millisecond late, more on a busy box. Spinning fixes that but takes the
//! CPU the peer needs on a small box.
//!
//! Instead each worker runs one pacer task that owns the schedule: a
//! min-heap of (next send time, connection) over the worker's connections.
//! It waits with a Linux `timerfd` (an hrtimer on `CLOCK_MONOTONIC`)
//! registered in the worker's own runtime, so an expiry wakes the
//! runtime's `epoll_wait` directly: no extra thread, no cross-thread wake,
//! no spinning. While sends are near the timer ticks every `TICK_NS`
//! (periodic in the kernel: no system call per tick); a longer gap is
//! skipped with one re-arm. On each tick the pacer wakes only the
//! connections that are due (each waits on its own `Notify`), which then
//! pack and write their requests in the same turn. A connection that
//! finds its send due on another wake (an answer) sends at once and its
//! heap entry goes stale.
//!
//! Elsewhere than on Linux there is no pacer and connections fall back to
//! tokio's timer.

use std::cell::{Cell, RefCell};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use super::conn::Plan;

/// No send requested.
const NONE: u64 = u64::MAX;
/// The timer is ticking (see `Pacer::state`).
const TICKING: u64 = 0;
/// The pacer's tick while sends are near, ns: a send waits at most this
/// for its tick, plus the wake-up latency. The tick is periodic in the
/// kernel, so no system call re-arms it: re-arming a timerfd for every
/// send was measured at ~35 µs of system time per call on a 2-core VM,
/// and the most of its CPU.
const TICK_NS: u64 = 50_000;
/// A gap to the next send longer than this is skipped with one re-arm
/// instead of ticking through it (low rates).
const GAP_NS: u64 = 1_000_000;

/// The schedule of one worker's connections (by their index within the
/// worker).
pub struct Pacer {
    /// (send time in ns from the plan's start, connection); entries whose
    /// time is no longer the connection's `due` are stale and skipped.
    heap: RefCell<BinaryHeap<Reverse<(u64, usize)>>>,
    due: Vec<Cell<u64>>,
    wake: Vec<Notify>,
    /// A send was requested earlier than the timer's next expiry.
    rearm: Notify,
    /// The timer: `NONE` disarmed, `TICKING` ticking every `TICK_NS`, or
    /// else the time it is armed to start ticking at.
    state: Cell<u64>,
    timer: timer::Timer,
}

impl Pacer {
    /// `None` where there is no precise timer (not Linux, or the timerfd
    /// could not be made); connections then use tokio's timer.
    pub fn new(plan: &Plan, connections: usize) -> Option<Rc<Pacer>> {
        let timer = timer::Timer::new(plan).ok()?;
        Some(Rc::new(Pacer {
            heap: RefCell::new(BinaryHeap::with_capacity(connections * 2)),
            due: (0..connections).map(|_| Cell::new(NONE)).collect(),
            wake: (0..connections).map(|_| Notify::new()).collect(),
            rearm: Notify::new(),
            state: Cell::new(NONE),
            timer,
        }))
    }

    /// Connection `slot` wants to send at `at` (ns from the plan's start);
    /// `due` then completes at that time. Asking again for the same time
    /// is free.
    pub fn request(&self, slot: usize, at: u64) {
        if self.due[slot].get() == at {
            return;
        }
        self.due[slot].set(at);
        self.heap.borrow_mut().push(Reverse((at, slot)));
        let state = self.state.get();
        if state == NONE || (state != TICKING && at < state) {
            self.rearm.notify_one();
        }
    }

    /// Completes when the pacer finds connection `slot`'s requested send
    /// due (possibly at once, for an earlier wake it has not consumed).
    pub async fn due(&self, slot: usize) {
        self.wake[slot].notified().await;
    }

    /// Runs for as long as the worker's runtime: spawn it on the worker's
    /// `LocalSet`, which drops it at the end.
    pub async fn run(self: Rc<Self>, plan: Arc<Plan>) {
        loop {
            let now = plan.now();
            let next = {
                let mut heap = self.heap.borrow_mut();
                while let Some(&Reverse((at, slot))) = heap.peek() {
                    if at > now && self.due[slot].get() == at {
                        break;
                    }
                    // Due, or stale (the connection sent meanwhile, on
                    // another wake, and asked for a later time).
                    heap.pop();
                    if self.due[slot].get() == at {
                        self.due[slot].set(NONE);
                        self.wake[slot].notify_one();
                    }
                }
                heap.peek().map_or(NONE, |Reverse((at, _))| *at)
            };
            // Tick on while sends are near; skip a long gap with one
            // re-arm (low rates); stop when nothing is scheduled.
            let state = self.state.get();
            let want = if next == NONE {
                NONE
            } else if next > now + GAP_NS {
                next.div_ceil(TICK_NS) * TICK_NS
            } else if state == NONE || (state != TICKING && next < state) {
                // Idle, or waiting for a later start than this send.
                TICKING
            } else {
                state
            };
            if want != state {
                let first = match want {
                    NONE => NONE,
                    TICKING => next.div_ceil(TICK_NS) * TICK_NS,
                    at => at,
                };
                if self.timer.arm(first, TICK_NS).is_err() {
                    // Can not happen with valid times; do not spin on it.
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    continue;
                }
                self.state.set(want);
            }
            tokio::select! {
                biased;
                _ = self.rearm.notified() => {}
                r = self.timer.wait() => {
                    if r.is_err() {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    // Past its start, an armed timer ticks on.
                    if self.state.get() != NONE {
                        self.state.set(TICKING);
                    }
                }
            }
        }
    }
}

#[cfg(target_os = "linux")]
mod timer {
    use std::io;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    use tokio::io::unix::AsyncFd;

    use super::super::conn::Plan;

    /// A non-blocking `CLOCK_MONOTONIC` timerfd in the worker's runtime.
    pub struct Timer {
        fd: AsyncFd<OwnedFd>,
        /// `CLOCK_MONOTONIC` at the plan's start, ns.
        base: i128,
    }

    fn monotonic_ns() -> io::Result<i128> {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid, writable timespec.
        if unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128)
    }

    impl Timer {
        pub fn new(plan: &Plan) -> io::Result<Timer> {
            // SAFETY: plain syscall; the result is checked.
            let raw = unsafe {
                libc::timerfd_create(
                    libc::CLOCK_MONOTONIC,
                    libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
                )
            };
            if raw < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: `raw` is a new descriptor that nothing else owns.
            let owned = unsafe { OwnedFd::from_raw_fd(raw) };
            // std's `Instant` is CLOCK_MONOTONIC on Linux: read both to
            // place the plan's start on the timerfd's clock (to within the
            // few ns between the two reads).
            // The start may still be ahead (`Plan::now` then reads 0).
            let at = std::time::Instant::now();
            let mono = monotonic_ns()?;
            let since = match at.checked_duration_since(plan.start) {
                Some(d) => d.as_nanos() as i128,
                None => -((plan.start - at).as_nanos() as i128),
            };
            // SAFETY: the `OwnedFd` keeps the descriptor open, and always
            // the same one, for as long as the `AsyncFd` holds it.
            let fd =
                unsafe { AsyncFd::register_with_interest(owned, tokio::io::Interest::READABLE) }?;
            Ok(Timer {
                fd,
                base: mono - since,
            })
        }

        /// Fires at `at` (ns from the plan's start; at once if past) and
        /// then every `every` ns (0: once); `u64::MAX` disarms.
        pub fn arm(&self, at: u64, every: u64) -> io::Result<()> {
            let value = if at == u64::MAX {
                libc::timespec {
                    tv_sec: 0,
                    tv_nsec: 0,
                }
            } else {
                // At least 1 ns: an all-zero value would disarm.
                let abs = (self.base + at as i128).max(1);
                libc::timespec {
                    tv_sec: (abs / 1_000_000_000) as libc::time_t,
                    tv_nsec: (abs % 1_000_000_000) as libc::c_long,
                }
            };
            let spec = libc::itimerspec {
                it_interval: libc::timespec {
                    tv_sec: (every / 1_000_000_000) as libc::time_t,
                    tv_nsec: (every % 1_000_000_000) as libc::c_long,
                },
                it_value: value,
            };
            // SAFETY: valid descriptor and itimerspec; old value not wanted.
            let r = unsafe {
                libc::timerfd_settime(
                    self.fd.as_raw_fd(),
                    libc::TFD_TIMER_ABSTIME,
                    &spec,
                    std::ptr::null_mut(),
                )
            };
            if r != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        }

        /// Waits for an expiry and consumes it.
        pub async fn wait(&self) -> io::Result<()> {
            loop {
                let mut guard = self.fd.readable().await?;
                let mut expirations = 0u64;
                // SAFETY: reads 8 bytes into a u64 the call owns.
                let n = unsafe {
                    libc::read(
                        guard.get_inner().as_raw_fd(),
                        (&mut expirations as *mut u64).cast(),
                        std::mem::size_of::<u64>(),
                    )
                };
                // One read takes every expiry so far: the timer is not
                // readable until its next tick. Saying so to tokio now
                // saves the `read` that would only find that out (EAGAIN),
                // one per tick (20k a second) otherwise. Only the readiness
                // already seen is cleared: a tick since still wakes us.
                guard.clear_ready();
                if n >= 0 {
                    return Ok(());
                }
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::WouldBlock {
                    return Err(e);
                }
                // Not readable after all (re-armed meanwhile): wait on.
            }
        }
    }
}

#[cfg(not(target_os = "linux"))]
mod timer {
    use std::io;

    use super::super::conn::Plan;

    pub struct Timer;

    impl Timer {
        pub fn new(_: &Plan) -> io::Result<Timer> {
            Err(io::Error::other("no precise timer on this platform"))
        }
        pub fn arm(&self, _: u64, _: u64) -> io::Result<()> {
            Ok(())
        }
        pub async fn wait(&self) -> io::Result<()> {
            std::future::pending().await
        }
    }
}
