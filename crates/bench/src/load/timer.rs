//! A sleep to the microsecond inside a tokio runtime. Tokio's own timers tick in milliseconds,
//! too coarse for an arrival schedule whose sends count as late a millisecond after their time;
//! a blocking sleep on a thread of its own costs a thread wake-up and a hand-off to the runtime
//! per request. A Linux timerfd in the runtime's own poll wakes the thread that sends, receives
//! and paces at once, so under load one wake-up serves answers and sends together.

use std::io;
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use rustix::time::{
    Itimerspec, TimerfdClockId, TimerfdFlags, TimerfdTimerFlags, Timespec, timerfd_create, timerfd_settime,
};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// A one-shot timer for the runtime of the thread that made it.
#[derive(Debug)]
pub struct PreciseTimer {
    fd: AsyncFd<OwnedFd>,
}

impl PreciseTimer {
    /// # Errors
    /// When the kernel refuses a timerfd, or no tokio runtime with I/O is current.
    pub fn new() -> io::Result<Self> {
        let fd = timerfd_create(TimerfdClockId::Monotonic, TimerfdFlags::NONBLOCK | TimerfdFlags::CLOEXEC)?;
        // The replacement, `register_with_interest`, is unsafe: it asks that the descriptor stay
        // open and the same while registered, which an `OwnedFd` owned by the `AsyncFd`
        // guarantees. The workspace forbids unsafe code, so the safe constructor stays.
        #[allow(deprecated)]
        let fd = AsyncFd::with_interest(fd, Interest::READABLE)?;
        Ok(Self { fd })
    }

    /// Returns at `when`, or at once when it has passed.
    ///
    /// # Errors
    /// When the timer cannot be set or read.
    pub async fn sleep_until(&self, when: Instant) -> io::Result<()> {
        let Some(wait) = when.checked_duration_since(Instant::now()).filter(|w| !w.is_zero()) else {
            return Ok(());
        };
        timerfd_settime(self.fd.get_ref(), TimerfdTimerFlags::empty(), &once_after(wait))?;
        loop {
            let mut ready = self.fd.readable().await?;
            // The expiry count, which is read to re-arm readiness; its value does not matter.
            let mut count = [0_u8; 8];
            match ready.try_io(|fd| rustix::io::read(fd.get_ref(), &mut count).map_err(io::Error::from)) {
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(error)) => return Err(error),
                // Not expired yet: readiness was stale.
                Err(_would_block) => {}
            }
        }
    }
}

fn once_after(wait: Duration) -> Itimerspec {
    let zero = Timespec { tv_sec: 0, tv_nsec: 0 };
    let value =
        Timespec { tv_sec: i64::try_from(wait.as_secs()).unwrap_or(i64::MAX), tv_nsec: i64::from(wait.subsec_nanos()) };
    Itimerspec { it_interval: zero, it_value: value }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn wakes_at_its_time_and_not_before() {
        let timer = PreciseTimer::new().unwrap();
        for wait in [Duration::from_micros(300), Duration::from_micros(1500), Duration::from_millis(5)] {
            let start = Instant::now();
            timer.sleep_until(start + wait).await.unwrap();
            let slept = start.elapsed();
            assert!(slept >= wait, "woke after {slept:?}, before {wait:?}");
        }
        // A time that has passed returns at once, and leaves the timer usable.
        timer.sleep_until(Instant::now() - Duration::from_millis(1)).await.unwrap();
        let start = Instant::now();
        timer.sleep_until(start + Duration::from_micros(200)).await.unwrap();
        assert!(start.elapsed() >= Duration::from_micros(200));
    }
}
