//! Interleaved repeated measurement: every case runs for a short slice in turn (A B C A B C
//! …), so slow drifts of a noisy shared machine hit all cases alike, and medians are taken.

use std::time::{Duration, Instant};

/// One thing to measure: one iteration processes `units` (items or bytes).
pub struct Case<'a> {
    /// Name in the report.
    pub name: String,
    /// Units (items, bytes) one iteration processes.
    pub units: f64,
    /// One iteration, returning the time that counts; an error (e.g. a wrong verification
    /// verdict) stops the run.
    run: Box<dyn FnMut() -> anyhow::Result<Duration> + 'a>,
}

impl std::fmt::Debug for Case<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Case")
            .field("name", &self.name)
            .field("units", &self.units)
            .finish_non_exhaustive()
    }
}

impl<'a> Case<'a> {
    /// A case processing `units` per call of `run`, timed as a whole.
    pub fn new(
        name: impl Into<String>,
        units: f64,
        mut run: impl FnMut() -> anyhow::Result<()> + 'a,
    ) -> Self {
        Self::timed(name, units, move || {
            let t = Instant::now();
            run()?;
            Ok(t.elapsed())
        })
    }

    /// A case whose `run` times itself, so it can prepare its input untimed (e.g. copy a
    /// fresh ciphertext in before opening it in place).
    pub fn timed(
        name: impl Into<String>,
        units: f64,
        run: impl FnMut() -> anyhow::Result<Duration> + 'a,
    ) -> Self {
        Case {
            name: name.into(),
            units,
            run: Box::new(run),
        }
    }
}

/// Rates (units per second) of each case, one sample per repetition, in case order.
#[derive(Debug, Clone)]
pub struct Samples {
    /// Case names.
    pub names: Vec<String>,
    /// `rates[case][rep]`.
    pub rates: Vec<Vec<f64>>,
}

impl Samples {
    /// Index of the case called `name`.
    pub fn index(&self, name: &str) -> anyhow::Result<usize> {
        self.names
            .iter()
            .position(|n| n == name)
            .ok_or_else(|| anyhow::anyhow!("no case called {name}"))
    }

    /// Median rate of case `i`.
    pub fn median(&self, i: usize) -> f64 {
        median(&self.rates[i])
    }

    /// Median over repetitions of `rate(a) / rate(b)` taken within each repetition: pairs
    /// measured moments apart share the machine's state, so the ratio is steadier than the
    /// ratio of medians.
    pub fn paired_ratio(&self, a: usize, b: usize) -> f64 {
        let r: Vec<f64> = self.rates[a]
            .iter()
            .zip(&self.rates[b])
            .map(|(x, y)| x / y)
            .collect();
        median(&r)
    }
}

/// The median (mean of the middle two for even lengths); 0 for no samples.
pub fn median(xs: &[f64]) -> f64 {
    let mut v: Vec<f64> = xs.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Smallest and largest finite sample.
pub fn min_max(xs: &[f64]) -> (f64, f64) {
    xs.iter()
        .copied()
        .filter(|x| x.is_finite())
        .fold((f64::INFINITY, 0.0), |(lo, hi), x| (lo.min(x), hi.max(x)))
}

fn rate_for(case: &mut Case<'_>, slice: Duration) -> anyhow::Result<f64> {
    let start = Instant::now();
    let mut iters = 0u64;
    let mut busy = Duration::ZERO;
    loop {
        busy += (case.run)()?;
        iters += 1;
        if start.elapsed() >= slice {
            return Ok(iters as f64 * case.units / busy.as_secs_f64().max(1e-12));
        }
    }
}

/// Warms every case up for `warmup`, then runs `reps` interleaved rounds in which every case
/// runs for at least `slice` (and at least one iteration).
pub fn interleaved(
    cases: &mut [Case<'_>],
    reps: usize,
    slice: Duration,
    warmup: Duration,
) -> anyhow::Result<Samples> {
    for c in cases.iter_mut() {
        rate_for(c, warmup)?;
    }
    let mut rates = vec![Vec::with_capacity(reps); cases.len()];
    for rep in 0..reps.max(1) {
        // Alternate the order so no case always runs right after the same neighbour.
        let order: Vec<usize> = if rep % 2 == 0 {
            (0..cases.len()).collect()
        } else {
            (0..cases.len()).rev().collect()
        };
        for i in order {
            rates[i].push(rate_for(&mut cases[i], slice)?);
        }
        eprint!(".");
    }
    eprintln!();
    Ok(Samples {
        names: cases.iter().map(|c| c.name.clone()).collect(),
        rates,
    })
}

/// `rate(b) / rate(a)` from `pairs` back-to-back single iterations of `a` and `b` (their
/// order alternating), so both sides of each ratio see the machine within milliseconds of
/// each other: a second estimate of a ratio, immune to drifts over seconds that slices of
/// hundreds of milliseconds can straddle (on our shared 2-core machine it turned out no
/// steadier than slices: much of the noise is faster than that).
pub fn tight_pairs(
    cases: &mut [Case<'_>],
    a: usize,
    b: usize,
    pairs: usize,
) -> anyhow::Result<Vec<f64>> {
    anyhow::ensure!(a != b, "a case cannot be paired with itself");
    let mut out = Vec::with_capacity(pairs);
    for i in 0..pairs {
        let (ta, tb) = if i % 2 == 0 {
            let ta = (cases[a].run)()?;
            (ta, (cases[b].run)()?)
        } else {
            let tb = (cases[b].run)()?;
            ((cases[a].run)()?, tb)
        };
        let rate = |c: &Case<'_>, t: Duration| c.units / t.as_secs_f64().max(1e-12);
        out.push(rate(&cases[b], tb) / rate(&cases[a], ta));
    }
    Ok(out)
}

/// The `q` quantile (0..=1) by nearest rank; 0 for no samples.
pub fn quantile(xs: &[f64], q: f64) -> f64 {
    let mut v: Vec<f64> = xs.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * q.clamp(0.0, 1.0)).round() as usize]
}

/// `x` with a metric suffix: 113.2k, 1.20M.
pub fn si(x: f64) -> String {
    if x >= 1e9 {
        format!("{:.2}G", x / 1e9)
    } else if x >= 1e6 {
        format!("{:.2}M", x / 1e6)
    } else if x >= 1e3 {
        format!("{:.1}k", x / 1e3)
    } else {
        format!("{x:.1}")
    }
}

/// "yes" or "**NO**" for a target check.
pub fn holds(ok: bool) -> &'static str {
    if ok {
        "yes"
    } else {
        "**NO**"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tight_pairs_give_the_ratio_of_rates() {
        // b processes twice the units of a in the same time: rate(b) / rate(a) = 2.
        let mut cases = vec![
            Case::timed("a", 1.0, || Ok(Duration::from_millis(4))),
            Case::timed("b", 2.0, || Ok(Duration::from_millis(4))),
        ];
        let r = tight_pairs(&mut cases, 0, 1, 5).unwrap();
        assert_eq!(r.len(), 5);
        assert!(r.iter().all(|x| (x - 2.0).abs() < 1e-9), "{r:?}");
        assert!(tight_pairs(&mut cases, 1, 1, 1).is_err());
    }

    #[test]
    fn quantiles_by_nearest_rank() {
        let xs = [5.0, 1.0, 3.0, 2.0, 4.0];
        assert_eq!(quantile(&xs, 0.0), 1.0);
        assert_eq!(quantile(&xs, 0.5), 3.0);
        assert_eq!(quantile(&xs, 0.25), 2.0);
        assert_eq!(quantile(&xs, 1.0), 5.0);
        assert_eq!(quantile(&[], 0.5), 0.0);
    }
}
