//! A license feature's usage over time: per step, the most sessions live at once, the sessions
//! started and the creates refused, from the ledger's history (and, for the present, the seat
//! store's leases and the refusals it has not handed to the ledger yet).
//!
//! History lasts as long as the ledger keeps it: the SQL ledgers keep every session row and event
//! until it is deleted by hand (nothing prunes them); DynamoDB's TTL removes ended sessions and
//! events after `ledger::dynamo::RETENTION_DAYS`.

use crate::domain::{now_ms, Ident, Slot};
use crate::error::{Error, Result};
use crate::service::Service;

/// The shortest step, in seconds.
pub const MIN_STEP_SECONDS: u64 = 60;
/// The longest step, in seconds (ten years): keeps every time in range.
pub const MAX_STEP_SECONDS: u64 = 3_660 * 86_400;
/// The most points one answer holds.
pub const MAX_POINTS: u64 = 10_000;

/// One step of the series.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsagePoint {
    /// The step's start.
    pub at_ms: i64,
    /// The most sessions live at one instant within the step.
    pub peak_active: u64,
    /// Sessions created within the step.
    pub started: u64,
    /// Creates refused for the limit within the step (counted per minute: a minute counts in
    /// the step it starts in).
    pub limit_rejections: u64,
}

/// The steps of `[from_ms, to_ms)`, each `step_ms` long (the last one cut at `to_ms`). `spans`:
/// each session's `[start, end)`; `rejections`: (minute start, count).
pub fn usage_points(
    spans: &[(i64, i64)],
    rejections: &[(i64, u64)],
    from_ms: i64,
    to_ms: i64,
    step_ms: i64,
) -> Vec<UsagePoint> {
    // Ends sort before starts at one instant: a seat handed over is not two seats.
    let mut events: Vec<(i64, i64)> = Vec::with_capacity(spans.len() * 2);
    for &(start, end) in spans.iter().filter(|(s, e)| e > s) {
        events.push((start, 1));
        events.push((end, -1));
    }
    events.sort_unstable();
    let mut starts: Vec<i64> = spans.iter().filter(|(s, e)| e > s).map(|(s, _)| *s).collect();
    starts.sort_unstable();
    let mut refused: Vec<(i64, u64)> = rejections.to_vec();
    refused.sort_unstable();
    let (mut ev, mut live) = (0usize, 0i64);
    let mut points = Vec::new();
    let mut at = from_ms;
    while at < to_ms {
        let end = at.saturating_add(step_ms).min(to_ms);
        // Live at the step's start: everything up to and at that instant applied.
        while ev < events.len() && events[ev].0 <= at {
            live += events[ev].1;
            ev += 1;
        }
        let mut peak = live;
        while ev < events.len() && events[ev].0 < end {
            live += events[ev].1;
            peak = peak.max(live);
            ev += 1;
        }
        let in_step = |t: i64| t >= at && t < end;
        let started = starts.partition_point(|&s| s < end) - starts.partition_point(|&s| s < at);
        let limit_rejections = refused.iter().filter(|(m, _)| in_step(*m)).map(|(_, n)| n).sum();
        points.push(UsagePoint {
            at_ms: at,
            peak_active: peak.max(0) as u64,
            started: started as u64,
            limit_rejections,
        });
        at = end;
    }
    points
}

/// Checks a window and step; the number of points it makes.
pub fn check_window(from_ms: i64, to_ms: i64, step_seconds: u64) -> Result<u64> {
    if from_ms >= to_ms {
        return Err(Error::invalid("from", "from must be before to"));
    }
    if !(MIN_STEP_SECONDS..=MAX_STEP_SECONDS).contains(&step_seconds) {
        return Err(Error::invalid(
            "stepSeconds",
            format!("stepSeconds must be a whole number from {MIN_STEP_SECONDS} to {MAX_STEP_SECONDS}"),
        ));
    }
    let step_ms = step_seconds as i64 * 1000;
    let points = ((to_ms - from_ms) as u64).div_ceil(step_ms as u64);
    if points > MAX_POINTS {
        return Err(Error::invalid(
            "stepSeconds",
            format!(
                "from..to in steps of {step_seconds} s makes {points} points; at most {MAX_POINTS}: \
                 use a larger stepSeconds or a shorter window"
            ),
        ));
    }
    Ok(points)
}

impl Service {
    /// The usage series of one feature of a license over `[from_ms, to_ms)`.
    pub async fn usage(
        &self,
        license: &Ident,
        feature: &Ident,
        from_ms: i64,
        to_ms: i64,
        step_seconds: u64,
    ) -> Result<Vec<UsagePoint>> {
        check_window(from_ms, to_ms, step_seconds)?;
        let l = self
            .ledger
            .license(license)
            .await?
            .ok_or_else(|| Error::NotFound(format!("license {license} not found")))?;
        if !l.features.contains_key(feature) {
            return Err(Error::NotFound(format!("feature {feature} is not part of license {license}")));
        }
        let slot = Slot { license: license.clone(), feature: feature.clone() };
        // History still in the outbox first: a session the ledger has not taken yet counts.
        self.outbox.drain(&slot).await?;
        let history = self.ledger.usage(&slot, from_ms, to_ms).await?;
        let snapshot = self.seats.snapshot(&slot).await?;
        let now = snapshot.now_ms.max(now_ms());
        let spans = super::admin::lived_spans(&history.spans, &snapshot, now);
        let mut rejections = history.rejections;
        // Refusals the sweep has not moved to the ledger yet.
        rejections.extend(self.seats.rejections(&slot).await?.into_iter().filter(|(m, _)| *m >= from_ms && *m < to_ms));
        Ok(usage_points(&spans, &rejections, from_ms, to_ms, step_seconds as i64 * 1000))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(at_ms: i64, peak_active: u64, started: u64, limit_rejections: u64) -> UsagePoint {
        UsagePoint { at_ms, peak_active, started, limit_rejections }
    }

    #[test]
    fn points_cover_each_step_with_zeros_where_nothing_happened() {
        // Steps of 10 over [0, 40): a session [2, 15), one [5, 8), one [30, 50), one before [-5, 1).
        let spans = [(2, 15), (5, 8), (30, 50), (-5, 1)];
        let refused = [(3, 2), (12, 1), (39, 4), (40, 9)];
        let got = usage_points(&spans, &refused, 0, 40, 10);
        assert_eq!(
            got,
            vec![point(0, 2, 2, 2), point(10, 1, 0, 1), point(20, 0, 0, 0), point(30, 1, 1, 4)],
            "the minute at 40 is outside the window"
        );
    }

    #[test]
    fn a_handover_at_one_instant_is_one_seat_and_the_last_step_is_cut() {
        let got = usage_points(&[(0, 10), (10, 20)], &[], 0, 25, 20);
        assert_eq!(got, vec![point(0, 1, 2, 0), point(20, 0, 0, 0)]);
        // A session live across a whole step counts there, started or not.
        assert_eq!(usage_points(&[(0, 100)], &[], 10, 30, 10), vec![point(10, 1, 0, 0), point(20, 1, 0, 0)]);
    }

    #[test]
    fn windows_and_steps_are_bounded() {
        assert_eq!(check_window(0, 3_600_000, 60).unwrap(), 60);
        assert_eq!(check_window(0, 3_600_001, 60).unwrap(), 61);
        assert!(check_window(10, 10, 60).is_err());
        assert!(check_window(0, 1000, 59).is_err());
        assert!(check_window(0, 600_000_001, 60).is_err(), "10,001 points");
        assert_eq!(check_window(0, 600_000_000, 60).unwrap(), 10_000);
    }
}
