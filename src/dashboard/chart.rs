//! What the dashboard remembers, in the CLI process (or the worker, with
//! `--ui`): every 5 s ([`super::workers::sample`]) how many calls had ended
//! ok and not, per worker and per queue, for the last ten minutes; and the
//! small SVG charts of those as rates.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

/// How often samples are taken.
pub(crate) const EVERY: Duration = Duration::from_secs(5);
/// Samples kept per series: ten minutes.
const KEPT: usize = 120;

/// One sample: seconds since the epoch, calls ended ok so far, and not.
pub(crate) type Sample = (u64, u64, u64);

/// Series of samples by name (`worker:URL`, `queue:ADDRESS`).
#[derive(Debug, Default)]
pub(crate) struct History(Mutex<HashMap<String, VecDeque<Sample>>>);

impl History {
    /// The series (what a panicking holder left is still samples).
    fn lock(&self) -> MutexGuard<'_, HashMap<String, VecDeque<Sample>>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Add a sample to `series`, forgetting the oldest past [`KEPT`].
    pub(crate) fn record(&self, series: &str, sample: Sample) {
        let mut all = self.lock();
        let samples = all.entry(series.to_owned()).or_default();
        samples.push_back(sample);
        while samples.len() > KEPT {
            samples.pop_front();
        }
    }

    /// The chart of `series`, `width` × `height` pixels, if it has samples.
    pub(crate) fn chart(&self, series: &str, width: u32, height: u32) -> Option<String> {
        self.lock().get(series).map(|s| chart(s, width, height))
    }
}

/// Per-second rates between samples: (ok, failed).
fn rates(samples: &VecDeque<Sample>) -> Vec<(f64, f64)> {
    samples
        .iter()
        .zip(samples.iter().skip(1))
        .map(|((t0, ok0, bad0), (t1, ok1, bad1))| {
            let dt = t1.saturating_sub(*t0).max(1) as f64;
            (
                ok1.saturating_sub(*ok0) as f64 / dt,
                bad1.saturating_sub(*bad0) as f64 / dt,
            )
        })
        .collect()
}

/// Calls ended ok (blue) and not (red) per second, newest at the right.
fn chart(samples: &VecDeque<Sample>, width: u32, height: u32) -> String {
    let rates = rates(samples);
    if rates.is_empty() {
        return "<span class=\"muted\">collecting…</span>".into();
    }
    let top = rates
        .iter()
        .map(|(ok, bad)| ok.max(*bad))
        .fold(1.0, f64::max);
    let (w, h) = (f64::from(width), f64::from(height));
    let step = w / (KEPT - 1) as f64;
    let line = |pick: fn(&(f64, f64)) -> f64| {
        rates
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let x = w - (rates.len() - 1 - i) as f64 * step;
                format!("{x:.1},{:.1}", h - pick(r) / top * (h - 2.0))
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    let (ok, bad) = rates.last().copied().unwrap_or_default();
    let minutes = KEPT * EVERY.as_secs() as usize / 60;
    let legend = if height >= 40 {
        format!("{ok:.1} ok, {bad:.1} failed per second (peak {top:.1}, last {minutes} min)")
    } else {
        format!("{ok:.1}/s ok, {bad:.1}/s failed")
    };
    format!(
        "<svg width=\"{width}\" height=\"{height}\" role=\"img\" aria-label=\"calls ended per second\">\
         <rect width=\"{width}\" height=\"{height}\" fill=\"#fff\" stroke=\"#e3e6eb\"/>\
         <polyline fill=\"none\" stroke=\"#2d6cdf\" stroke-width=\"1.5\" points=\"{}\"/>\
         <polyline fill=\"none\" stroke=\"#c2342f\" stroke-width=\"1.5\" points=\"{}\"/></svg> \
         <span class=\"muted\">{legend}</span>",
        line(|r| r.0),
        line(|r| r.1),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chart_plots_ok_and_failed_calls_per_second_between_samples() {
        let samples: VecDeque<Sample> = [(0, 0, 0), (5, 50, 5), (10, 50, 5)].into();
        assert_eq!(rates(&samples), [(10.0, 1.0), (0.0, 0.0)]);
        let svg = chart(&samples, 360, 60);
        // 10/s then 0/s ok: the first point at the top, the second at the bottom.
        assert!(svg.contains("points=\"357.0,2.0 360.0,60.0\""), "{svg}");
        assert!(
            svg.contains("0.0 ok, 0.0 failed per second (peak 10.0"),
            "{svg}"
        );
        assert!(chart(&[(0, 0, 0)].into(), 360, 60).contains("collecting"));
        assert!(chart(&samples, 160, 24).contains("0.0/s ok, 0.0/s failed"));
        // A counter that went back (a restarted worker) is no negative rate.
        assert_eq!(rates(&[(0, 9, 9), (5, 0, 0)].into()), [(0.0, 0.0)]);
    }

    #[test]
    fn history_keeps_ten_minutes() {
        let h = History::default();
        for i in 0..200 {
            h.record("s", (i, i, 0));
        }
        assert_eq!(h.lock()["s"].len(), KEPT);
        assert!(h.chart("s", 100, 20).is_some() && h.chart("other", 100, 20).is_none());
    }
}
