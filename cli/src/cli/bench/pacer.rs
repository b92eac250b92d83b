//! Even pacing for `--rate`, on the runtime.
//!
//! Tokio's timers tick in whole milliseconds, so a producer sleeping until each message is
//! due sends 5,000 msg/s as bursts of five every millisecond. A thread of its own sleeping
//! with the OS timer spaces them evenly, but then every message crosses from that thread to
//! the runtime, a wake-up no application task publishing from the runtime would pay (and
//! on two shared cores the costliest step of the run). On Linux the pacer is a periodic
//! `timerfd` registered with Tokio's reactor: the producer task wakes on the runtime at
//! each tick, as a task woken by the network would. Elsewhere it falls back to Tokio's
//! millisecond timer.

use std::time::Duration;

/// Ticks every `interval`; each [`tick`](Pacer::tick) says how many ticks passed since the
/// last (more than one when the producer fell behind).
pub struct Pacer {
    #[cfg(target_os = "linux")]
    timer: tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>,
    #[cfg(not(target_os = "linux"))]
    ticks: tokio::time::Interval,
}

impl Pacer {
    /// A pacer whose first tick comes one interval from now.
    #[cfg(target_os = "linux")]
    pub fn new(interval: Duration) -> std::io::Result<Pacer> {
        use std::os::fd::FromRawFd;
        // SAFETY: timerfd_create takes no pointers; a non-negative result is a new
        // descriptor that nothing else owns.
        let fd = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` was just created and is owned by nothing else.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
        let period = timespec(interval.max(Duration::from_nanos(1)));
        let spec = libc::itimerspec {
            it_interval: period,
            it_value: period,
        };
        use std::os::fd::AsRawFd;
        // SAFETY: `spec` is a valid itimerspec for the call's duration; the old value is
        // not asked for.
        let set = unsafe { libc::timerfd_settime(fd.as_raw_fd(), 0, &spec, std::ptr::null_mut()) };
        if set < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let interest = tokio::io::Interest::READABLE;
        // SAFETY: an `OwnedFd` keeps its descriptor open, and always the same one, until
        // it is dropped with the `AsyncFd` that owns it.
        let timer = unsafe { tokio::io::unix::AsyncFd::register_with_interest(fd, interest) }
            .map_err(std::io::Error::from)?;
        Ok(Pacer { timer })
    }

    /// Waits for the next tick; returns the ticks that passed (at least 1).
    #[cfg(target_os = "linux")]
    pub async fn tick(&mut self) -> std::io::Result<u64> {
        use std::os::fd::AsRawFd;
        loop {
            let mut ready = self.timer.readable().await?;
            let mut expirations = [0u8; 8];
            // SAFETY: reads at most 8 bytes into an 8-byte buffer that outlives the call.
            let read = unsafe {
                libc::read(
                    ready.get_inner().as_raw_fd(),
                    expirations.as_mut_ptr().cast(),
                    expirations.len(),
                )
            };
            if read == 8 {
                return Ok(u64::from_ne_bytes(expirations));
            }
            let err = std::io::Error::last_os_error();
            if err.kind() != std::io::ErrorKind::WouldBlock {
                return Err(err);
            }
            ready.clear_ready();
        }
    }

    /// A pacer whose first tick comes one interval from now.
    #[cfg(not(target_os = "linux"))]
    pub fn new(interval: Duration) -> std::io::Result<Pacer> {
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        Ok(Pacer { ticks })
    }

    /// Waits for the next tick; returns the ticks that passed (at least 1).
    #[cfg(not(target_os = "linux"))]
    pub async fn tick(&mut self) -> std::io::Result<u64> {
        self.ticks.tick().await;
        Ok(1)
    }
}

#[cfg(target_os = "linux")]
fn timespec(duration: Duration) -> libc::timespec {
    libc::timespec {
        tv_sec: duration.as_secs() as libc::time_t,
        tv_nsec: duration.subsec_nanos() as libc::c_long,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn ticks_come_at_the_rate_asked_for() {
        let interval = Duration::from_micros(500);
        let mut pacer = Pacer::new(interval).unwrap();
        let start = std::time::Instant::now();
        let mut ticks = 0;
        while ticks < 40 {
            ticks += pacer.tick().await.unwrap();
        }
        // 40 ticks of 0.5 ms cannot have come in less than 20 ms.
        assert!(start.elapsed() >= interval * 39, "{:?}", start.elapsed());
    }
}
