//! Load history behind `load*`, `load1` and `hload*`
//! (protocol/multiplexor.md §5.10): per tracked command class, 600 one-second
//! buckets and 24 one-hour buckets, each remembering which second/hour it
//! holds.

use super::Class;

pub const HISTORY_SECONDS: usize = 600;
pub const HISTORY_HOURS: usize = 24;

#[derive(Debug, Clone, Copy, Default)]
struct SecBucket {
    second: i64,
    count: u64,
    busy: u64,
    ms: u64,
    activated: u64,
    reaped: u64,
}

#[derive(Debug, Clone, Copy, Default)]
struct HourBucket {
    hour: i64,
    count: u64,
    busy: u64,
    ms: u64,
    first: i64,
    last: i64,
}

/// Sums over a window of one-second buckets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub count: u64,
    pub busy: u64,
    pub ms: u64,
    pub activated: u64,
    pub reaped: u64,
}

impl Totals {
    /// Average busy workers; `empty` is what upstream prints for no data
    /// (1.0 in `load`, 0.0 elsewhere).
    pub fn avg_busy(&self, empty: f64) -> f64 {
        mean(self.busy, self.count, empty)
    }
    pub fn avg_ms(&self) -> f64 {
        mean(self.ms, self.count, 0.0)
    }
}

/// Sums over a window of hour buckets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HourTotals {
    pub count: u64,
    pub busy: u64,
    pub ms: u64,
    /// Last minus first completion time among the included buckets.
    pub secs: i64,
}

impl HourTotals {
    pub fn avg_busy(&self) -> f64 {
        mean(self.busy, self.count, 0.0)
    }
    pub fn avg_ms(&self) -> f64 {
        mean(self.ms, self.count, 0.0)
    }
}

/// `sum / count`, or `empty` when the window saw no requests.
fn mean(sum: u64, count: u64, empty: f64) -> f64 {
    if count == 0 {
        empty
    } else {
        sum as f64 / count as f64
    }
}

#[derive(Debug, Clone)]
pub struct History {
    secs: Vec<[SecBucket; HISTORY_SECONDS]>,
    hours: Vec<[HourBucket; HISTORY_HOURS]>,
}

impl Default for History {
    fn default() -> Self {
        History {
            secs: vec![[SecBucket::default(); HISTORY_SECONDS]; 4],
            hours: vec![[HourBucket::default(); HISTORY_HOURS]; 4],
        }
    }
}

impl History {
    fn sec_bucket(&mut self, class: usize, now: i64) -> &mut SecBucket {
        let b = &mut self.secs[class][now.rem_euclid(HISTORY_SECONDS as i64) as usize];
        if b.second != now {
            *b = SecBucket {
                second: now,
                ..Default::default()
            };
        }
        b
    }

    fn hour_bucket(&mut self, class: usize, now: i64) -> &mut HourBucket {
        let hour = now.div_euclid(3600);
        let b = &mut self.hours[class][hour.rem_euclid(HISTORY_HOURS as i64) as usize];
        if b.hour != hour || b.count == 0 {
            *b = HourBucket {
                hour,
                first: now,
                last: now,
                ..Default::default()
            };
        }
        b
    }

    /// Records the completion of a tracked command at epoch second `now`.
    pub fn record(&mut self, class: Class, now: i64, busy: usize, ms: u64) {
        let Some(c) = class.tracked_index() else {
            return;
        };
        let b = self.sec_bucket(c, now);
        b.count += 1;
        b.busy += busy as u64;
        b.ms += ms;
        let h = self.hour_bucket(c, now);
        h.count += 1;
        h.busy += busy as u64;
        h.ms += ms;
        h.last = now;
    }

    /// Counts a worker activation (kept in the scan class, as upstream).
    pub fn activated(&mut self, now: i64) {
        self.sec_bucket(0, now).activated += 1;
    }

    /// Counts a reaped worker (kept in the scan class).
    pub fn reaped(&mut self, now: i64) {
        self.sec_bucket(0, now).reaped += 1;
    }

    /// Totals of the seconds `now-window+1 ..= now`.
    pub fn totals(&self, class: Class, now: i64, window: i64) -> Totals {
        let Some(c) = class.tracked_index() else {
            return Totals::default();
        };
        let window = window.clamp(0, HISTORY_SECONDS as i64);
        let mut t = Totals::default();
        for s in (now - window + 1)..=now {
            let b = &self.secs[c][s.rem_euclid(HISTORY_SECONDS as i64) as usize];
            if b.second == s {
                t.count += b.count;
                t.busy += b.busy;
                t.ms += b.ms;
                t.activated += b.activated;
                t.reaped += b.reaped;
            }
        }
        t
    }

    /// Totals of the current clock hour and the `hours-1` before it.
    pub fn hour_totals(&self, class: Class, now: i64, hours: i64) -> HourTotals {
        let Some(c) = class.tracked_index() else {
            return HourTotals::default();
        };
        let cur = now.div_euclid(3600);
        let mut t = HourTotals::default();
        let (mut first, mut last) = (i64::MAX, i64::MIN);
        for h in (cur - hours + 1)..=cur {
            let b = &self.hours[c][h.rem_euclid(HISTORY_HOURS as i64) as usize];
            if b.hour == h && b.count > 0 {
                t.count += b.count;
                t.busy += b.busy;
                t.ms += b.ms;
                first = first.min(b.first);
                last = last.max(b.last);
            }
        }
        if t.count > 0 {
            t.secs = last - first;
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_are_inclusive_and_expire() {
        let mut h = History::default();
        h.record(Class::Scan, 1000, 2, 30);
        h.record(Class::Scan, 1000, 1, 10);
        h.record(Class::Scan, 995, 3, 5);
        h.record(Class::RecipOk, 1000, 1, 1);
        let t = h.totals(Class::Scan, 1000, 10);
        assert_eq!((t.count, t.busy, t.ms), (3, 6, 45));
        assert_eq!(h.totals(Class::Scan, 1000, 1).count, 2);
        assert_eq!(h.totals(Class::Scan, 1009, 10).count, 2);
        assert_eq!(h.totals(Class::Scan, 1010, 10).count, 0);
        assert_eq!(h.totals(Class::Scan, 1004, 10).count, 3);
        // A bucket reused 600 s later does not leak old data.
        h.record(Class::Scan, 1600, 1, 1);
        assert_eq!(h.totals(Class::Scan, 1600, 600).count, 1);
        assert_eq!(h.totals(Class::RecipOk, 1000, 10).count, 1);
        assert_eq!(h.totals(Class::Other, 1000, 10).count, 0);
    }

    #[test]
    fn averages() {
        let t = Totals {
            count: 0,
            ..Default::default()
        };
        assert_eq!(t.avg_busy(1.0), 1.0);
        assert_eq!(t.avg_ms(), 0.0);
        let t = Totals {
            count: 4,
            busy: 6,
            ms: 10,
            ..Default::default()
        };
        assert_eq!(t.avg_busy(1.0), 1.5);
        assert_eq!(t.avg_ms(), 2.5);
    }

    #[test]
    fn hours_are_clock_aligned() {
        let mut h = History::default();
        let base = 3600 * 1000;
        h.record(Class::Scan, base - 100, 1, 10);
        h.record(Class::Scan, base + 5, 1, 10);
        h.record(Class::Scan, base + 65, 1, 10);
        let one = h.hour_totals(Class::Scan, base + 70, 1);
        assert_eq!((one.count, one.secs), (2, 60));
        let four = h.hour_totals(Class::Scan, base + 70, 4);
        assert_eq!((four.count, four.secs), (3, 165));
    }
}
