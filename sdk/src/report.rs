//! Summaries: markdown tables whose cells are mean ± sd over seeds, the paper's claims as data
//! with their verdicts, and the wall-time footer. Every recipe's `summary.md` is written with
//! these, so "within seed noise" means the same thing everywhere.
//!
//! ```
//! use lmlab_sdk::report::{Claim, Fmt, Table, claims_table};
//!
//! let mut t = Table::new(["method", "accuracy (%)"]);
//! t.row(["ours", &Fmt::Percent(1).cell(&[0.60, 0.64])]);
//! assert!(t.markdown().contains("| ours | 62.0 ± 2.8 |"));
//!
//! let claim = Claim::paired("ours beats theirs", &[0.60, 0.64], &[0.50, 0.58], Fmt::Percent(1));
//! assert!(claim.holds);
//! assert!(claims_table(&[claim]).contains("+8.0 ± 2.8 points"));
//! ```

use std::fmt::Write as _;

use crate::metrics::mean_std;

/// How numbers are shown.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Fmt {
    /// Fractions shown as percentages with this many decimals (`0.625` → `62.5`).
    Percent(usize),
    /// Plain numbers with this many decimals.
    Fixed(usize),
}

impl Fmt {
    fn scale(self) -> f64 {
        match self {
            Fmt::Percent(_) => 100.0,
            Fmt::Fixed(_) => 1.0,
        }
    }

    fn digits(self) -> usize {
        match self {
            Fmt::Percent(d) | Fmt::Fixed(d) => d,
        }
    }

    /// One number.
    pub fn num(self, x: f64) -> String {
        format!("{:.*}", self.digits(), x * self.scale())
    }

    /// One number with its sign (a difference).
    pub fn signed(self, x: f64) -> String {
        format!("{:+.*}", self.digits(), x * self.scale())
    }

    /// `mean ± sd` over `xs` (sample sd; just the value for one seed; `–` for none).
    pub fn cell(self, xs: &[f64]) -> String {
        match xs.len() {
            0 => "–".into(),
            1 => self.num(xs[0]),
            _ => {
                let (m, s) = mean_std(xs);
                format!("{} ± {}", self.num(m), self.num(s))
            }
        }
    }

    /// The unit a difference is stated in.
    fn unit(self) -> &'static str {
        match self {
            Fmt::Percent(_) => " points",
            Fmt::Fixed(_) => "",
        }
    }
}

/// A markdown table.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Table {
    columns: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column headers.
    pub fn new<S: Into<String>>(columns: impl IntoIterator<Item = S>) -> Self {
        Self {
            columns: columns.into_iter().map(Into::into).collect(),
            rows: Vec::new(),
        }
    }

    /// Appends a row (missing cells are left empty, extra ones dropped).
    pub fn row<S: AsRef<str>>(&mut self, cells: impl IntoIterator<Item = S>) -> &mut Self {
        let mut r: Vec<String> = cells
            .into_iter()
            .map(|c| c.as_ref().replace('|', "\\|"))
            .collect();
        r.resize(self.columns.len(), String::new());
        self.rows.push(r);
        self
    }

    /// Whether it has no rows.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The table as markdown (header, separator, rows; a trailing newline).
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let line = |s: &mut String, cells: &[String]| {
            s.push('|');
            for c in cells {
                let _ = write!(s, " {c} |");
            }
            s.push('\n');
        };
        line(&mut s, &self.columns);
        s.push('|');
        s.push_str(&"---|".repeat(self.columns.len()));
        s.push('\n');
        for r in &self.rows {
            line(&mut s, r);
        }
        s
    }
}

/// One value per seed's result (NaN where `f` has none): a column of a [`stat_table`] or a
/// side of a [`Claim`].
pub fn per_seed<R>(results: &[R], f: impl Fn(&R) -> Option<f64>) -> Vec<f64> {
    results.iter().map(|r| f(r).unwrap_or(f64::NAN)).collect()
}

/// A table of per-seed values: `columns` (the first names the row labels), and for each row
/// its label and, per further column, the values over seeds; each cell is `mean ± sd`.
pub fn stat_table<C: AsRef<str>, L: AsRef<str>>(
    columns: &[C],
    rows: impl IntoIterator<Item = (L, Vec<Vec<f64>>)>,
    fmt: Fmt,
) -> String {
    let mut t = Table::new(columns.iter().map(|c| c.as_ref().to_string()));
    for (label, cells) in rows {
        t.row(
            std::iter::once(label.as_ref().to_string()).chain(cells.iter().map(|xs| fmt.cell(xs))),
        );
    }
    t.markdown()
}

/// The training stages of every seed, by position (named as the first seed names them): the
/// mean over seeds of the loss at the start and the end, and of the accuracy at the end.
pub fn fits_table(per_seed: &[&[crate::fit::FitSummary]]) -> String {
    let mut t = Table::new(["stage", "loss at start", "loss at end", "accuracy at end"]);
    let first = per_seed.first().copied().unwrap_or(&[]);
    for (i, f) in first.iter().enumerate() {
        let over = |g: &dyn Fn(&crate::fit::FitSummary) -> f64| {
            mean_std(
                &per_seed
                    .iter()
                    .map(|s| s.get(i).map_or(f64::NAN, g))
                    .collect::<Vec<_>>(),
            )
            .0
        };
        let acc = over(&|f| f.accuracy_end.unwrap_or(f64::NAN));
        t.row([
            f.stage.clone(),
            Fmt::Fixed(4).num(over(&|f| f.loss_start)),
            Fmt::Fixed(4).num(over(&|f| f.loss_end)),
            if acc.is_nan() {
                String::new()
            } else {
                format!("{}%", Fmt::Percent(1).num(acc))
            },
        ]);
    }
    t.markdown()
}

/// The summary's "Training" section: [`fits_table`] over each seed's stages, under its heading.
pub fn fits_section<'a>(
    per_seed: impl IntoIterator<Item = &'a [crate::fit::FitSummary]>,
) -> String {
    let per_seed: Vec<&[crate::fit::FitSummary]> = per_seed.into_iter().collect();
    format!(
        "## Training (mean over seeds; loss over the first and last {} steps)\n\n{}\n",
        crate::stages::SUMMARY_WINDOW,
        fits_table(&per_seed)
    )
}

/// The summary's "Time" section: each stage's seconds per seed (mean ± sd), stages in name
/// order, from each seed's `stage → seconds`.
pub fn time_section<'a>(
    per_seed: impl IntoIterator<Item = &'a std::collections::BTreeMap<String, f64>>,
) -> String {
    let per_seed: Vec<&std::collections::BTreeMap<String, f64>> = per_seed.into_iter().collect();
    let mut stages: Vec<&String> = per_seed.iter().flat_map(|r| r.keys()).collect();
    stages.sort();
    stages.dedup();
    let mut t = Table::new(["stage", "seconds per seed"]);
    for st in stages {
        let v: Vec<f64> = per_seed.iter().filter_map(|r| r.get(st).copied()).collect();
        t.row([st.clone(), Fmt::Fixed(0).cell(&v)]);
    }
    format!("## Time\n\n{}\n", t.markdown())
}

/// Curves over `k` (Best-of-k, pass@k, majority@k …) of several methods, measured on every
/// seed: the table and the plot every such summary shows.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Curves {
    pub ks: Vec<usize>,
    /// `(method, per k, per seed)`.
    pub series: Vec<(String, Vec<Vec<f64>>)>,
}

impl Curves {
    /// The curves `names` from each seed's `name → value per k` map (a missing value is NaN).
    pub fn gather<'a>(
        ks: &[usize],
        names: &[&str],
        seeds: impl IntoIterator<Item = &'a std::collections::BTreeMap<String, Vec<f64>>> + Clone,
    ) -> Self {
        let series = names
            .iter()
            .map(|&name| {
                let per_k = (0..ks.len())
                    .map(|i| {
                        seeds
                            .clone()
                            .into_iter()
                            .map(|m| {
                                m.get(name)
                                    .and_then(|v| v.get(i))
                                    .copied()
                                    .unwrap_or(f64::NAN)
                            })
                            .collect()
                    })
                    .collect();
                (name.to_string(), per_k)
            })
            .collect();
        Self {
            ks: ks.to_vec(),
            series,
        }
    }

    /// The per-seed values of `name` at the `i`-th `k` (empty when unknown).
    pub fn at(&self, name: &str, i: usize) -> Vec<f64> {
        self.series
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| v.get(i).cloned())
            .unwrap_or_default()
    }

    /// The mean over seeds of `name` at the `i`-th `k`.
    pub fn mean(&self, name: &str, i: usize) -> f64 {
        mean_std(&self.at(name, i)).0
    }

    /// The largest mean over seeds of `name` at any `k`.
    pub fn best(&self, name: &str) -> f64 {
        (0..self.ks.len())
            .map(|i| self.mean(name, i))
            .fold(f64::NEG_INFINITY, f64::max)
    }

    /// One row per method, one column per `k`: mean ± sd over seeds.
    pub fn table(&self, fmt: Fmt) -> String {
        let cols: Vec<String> = std::iter::once("method".into())
            .chain(self.ks.iter().map(|k| format!("k = {k}")))
            .collect();
        stat_table(
            &cols,
            self.series.iter().map(|(n, v)| (n.as_str(), v.clone())),
            fmt,
        )
    }

    /// The means against log₂ k, with `flat` baselines as horizontal lines, as an SVG plot.
    pub fn plot(
        &self,
        path: &std::path::Path,
        title: &str,
        y_label: &str,
        flat: &[(&str, f64)],
    ) -> anyhow::Result<()> {
        let x = |k: usize| (k as f64).log2();
        let mut lines: Vec<crate::plot::Series> = self
            .series
            .iter()
            .map(|(name, _)| crate::plot::Series {
                name,
                points: self
                    .ks
                    .iter()
                    .enumerate()
                    .map(|(i, &k)| (x(k), self.mean(name, i)))
                    .collect(),
            })
            .collect();
        for &(name, y) in flat {
            lines.push(crate::plot::Series {
                name,
                points: self.ks.iter().map(|&k| (x(k), y)).collect(),
            });
        }
        crate::plot::line_plot(path, title, "log2 k", y_label, &lines)
    }
}

/// One claim of a paper, tested on measured numbers.
#[derive(Clone, Debug, PartialEq)]
pub struct Claim {
    /// The claim, as the paper makes it.
    pub statement: String,
    /// What was measured (e.g. `26.0% vs 23.3%`).
    pub measured: String,
    /// The paired difference across seeds, when the claim compares two things.
    pub difference: String,
    /// Whether it holds at our scale.
    pub holds: bool,
    /// The difference is no larger than its spread over seeds.
    pub within_noise: bool,
    /// A remark after the verdict.
    pub note: String,
}

/// The rule behind [`Claim::within_noise`]: with more than one seed, a mean difference no
/// larger than its standard deviation over seeds.
pub fn within_seed_noise(diffs: &[f64]) -> bool {
    let (m, s) = mean_std(diffs);
    diffs.len() > 1 && m.abs() <= s
}

impl Claim {
    /// "`a` beats `b`": holds when the mean over seeds of the paired difference `a − b` is
    /// positive; `a[i]` and `b[i]` are the same seed's.
    pub fn paired(statement: impl Into<String>, a: &[f64], b: &[f64], fmt: Fmt) -> Self {
        Self::paired_by(statement, a, b, fmt, 0.0)
    }

    /// "`a` beats `b` by at least `margin`": the mean paired difference is at least `margin`
    /// and larger than its spread over seeds.
    pub fn paired_by(
        statement: impl Into<String>,
        a: &[f64],
        b: &[f64],
        fmt: Fmt,
        margin: f64,
    ) -> Self {
        // Seeds where a side has no value (NaN) are left out of both.
        let seeds = a.len().min(b.len());
        let (a, b): (Vec<f64>, Vec<f64>) = a
            .iter()
            .zip(b)
            .filter(|(x, y)| x.is_finite() && y.is_finite())
            .map(|(x, y)| (*x, *y))
            .unzip();
        let diffs: Vec<f64> = a.iter().zip(&b).map(|(x, y)| x - y).collect();
        let (md, sd) = mean_std(&diffs);
        let noise = within_seed_noise(&diffs);
        // Seeds' differences that cancel leave a mean of ±1e-17 or so: rounding, not a lead.
        let tie = 1e-9 * a.iter().chain(&b).fold(1.0f64, |m, x| m.max(x.abs()));
        let holds = if margin > 0.0 {
            md >= margin && !noise
        } else {
            md > tie
        };
        let suffix = if matches!(fmt, Fmt::Percent(_)) {
            "%"
        } else {
            ""
        };
        Self {
            statement: statement.into(),
            measured: format!(
                "{}{suffix} vs {}{suffix}",
                fmt.num(mean_std(&a).0),
                fmt.num(mean_std(&b).0)
            ),
            difference: format!("{} ± {}{}", fmt.signed(md), fmt.num(sd), fmt.unit()),
            holds: holds && !diffs.is_empty(),
            within_noise: noise,
            note: match diffs.len() {
                0 => "no seed has both values".into(),
                1 => "one seed: no spread to judge noise by".into(),
                n if n < seeds => format!("{n} of {seeds} seeds have both values"),
                _ => String::new(),
            },
        }
    }

    /// "`a` matches `b`": holds when the means differ by no more than the larger of the two
    /// spreads over seeds.
    pub fn matches(statement: impl Into<String>, a: &[f64], b: &[f64], fmt: Fmt) -> Self {
        let ((ma, sa), (mb, sb)) = (mean_std(a), mean_std(b));
        let spread = sa.max(sb);
        let suffix = if matches!(fmt, Fmt::Percent(_)) {
            "%"
        } else {
            ""
        };
        Self {
            statement: statement.into(),
            measured: format!("{}{suffix} vs {}{suffix}", fmt.num(ma), fmt.num(mb)),
            difference: format!(
                "{}{} (seed spread {})",
                fmt.signed(ma - mb),
                fmt.unit(),
                fmt.num(spread)
            ),
            holds: (ma - mb).abs() <= spread,
            within_noise: false,
            note: String::new(),
        }
    }

    /// "`xs` reaches `threshold`": holds when every seed does.
    pub fn at_least(statement: impl Into<String>, xs: &[f64], threshold: f64, fmt: Fmt) -> Self {
        let (m, _) = mean_std(xs);
        let min = xs.iter().copied().fold(f64::INFINITY, f64::min);
        let suffix = if matches!(fmt, Fmt::Percent(_)) {
            "%"
        } else {
            ""
        };
        Self {
            statement: statement.into(),
            measured: format!(
                "{}{suffix} (lowest seed {}{suffix})",
                fmt.num(m),
                fmt.num(min)
            ),
            difference: String::new(),
            holds: !xs.is_empty() && min >= threshold,
            within_noise: false,
            note: if !xs.is_empty() && min < threshold && m >= threshold {
                "holds on average, not for every seed".into()
            } else {
                String::new()
            },
        }
    }

    /// A claim decided by a rule of its own: `holds` with what was `measured`.
    pub fn check(statement: impl Into<String>, measured: impl Into<String>, holds: bool) -> Self {
        Self {
            statement: statement.into(),
            measured: measured.into(),
            difference: String::new(),
            holds,
            within_noise: false,
            note: String::new(),
        }
    }

    /// Adds a remark shown after the verdict.
    pub fn note(mut self, note: impl Into<String>) -> Self {
        let note = note.into();
        self.note = if self.note.is_empty() {
            note
        } else {
            format!("{}; {note}", self.note)
        };
        self
    }

    /// The verdict cell: `holds` / `does not hold`, marked when within seed noise.
    pub fn verdict(&self) -> String {
        let mut v = if self.holds { "holds" } else { "does not hold" }.to_string();
        if self.within_noise {
            v.push_str(" (within seed noise)");
        }
        if !self.note.is_empty() {
            let _ = write!(v, "; {}", self.note);
        }
        v
    }
}

/// The claims as a markdown table, preceded by the rule its verdicts follow.
pub fn claims_table(claims: &[Claim]) -> String {
    let mut t = Table::new(["claim", "measured", "paired difference", "verdict"]);
    for c in claims {
        t.row([
            c.statement.as_str(),
            c.measured.as_str(),
            c.difference.as_str(),
            &format!("**{}**", c.verdict()),
        ]);
    }
    format!(
        "A comparison holds when the mean over seeds of the paired difference is positive; \
         \"within seed noise\" marks a mean difference no larger than its standard deviation over \
         seeds.\n\n{}",
        t.markdown()
    )
}

/// The last line of a summary: the time the units took, what this invocation computed, and
/// that a resumed run read the rest back.
pub fn footer(unit_seconds: f64, units: usize, computed: usize, elapsed: f64) -> String {
    format!(
        "Wall time: {unit_seconds:.0} s over the {units} units of work; this invocation took \
         {elapsed:.0} s and computed {computed} of them{}.\n",
        if computed < units {
            " (a resumed run reads finished units back from `metrics.jsonl`)"
        } else {
            ""
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_show_mean_and_sample_sd() {
        assert_eq!(Fmt::Percent(1).cell(&[0.2, 0.4]), "30.0 ± 14.1");
        assert_eq!(Fmt::Fixed(3).cell(&[1.5]), "1.500");
        assert_eq!(Fmt::Fixed(1).cell(&[]), "–");
    }

    #[test]
    fn paired_claims_mark_noise_and_direction() {
        let c = Claim::paired(
            "a > b",
            &[0.5, 0.3, 0.4],
            &[0.4, 0.4, 0.35],
            Fmt::Percent(1),
        );
        // diffs 0.1, −0.1, 0.05: mean 0.0167 ≤ sd 0.104
        assert!(c.holds && c.within_noise, "{c:?}");
        assert_eq!(c.verdict(), "holds (within seed noise)");
        let c = Claim::paired("a > b", &[0.5, 0.6], &[0.4, 0.45], Fmt::Percent(1));
        assert!(c.holds && !c.within_noise);
        let c = Claim::paired("a > b", &[0.3], &[0.4], Fmt::Percent(1));
        assert!(!c.holds && !c.within_noise && c.note.contains("one seed"));
        let c = Claim::paired_by("a ≫ b", &[0.5, 0.52], &[0.45, 0.46], Fmt::Percent(1), 0.1);
        assert!(!c.holds, "a 5.5-point lead is not a 10-point one");
        // A seed without a value on one side is left out of both.
        let c = Claim::paired(
            "a > b",
            &[0.5, f64::NAN, 0.6],
            &[0.4, 0.9, 0.45],
            Fmt::Percent(1),
        );
        assert_eq!(c.measured, "55.0% vs 42.5%");
        assert!(
            c.holds && c.note == "2 of 3 seeds have both values",
            "{c:?}"
        );
        let c = Claim::paired("a > b", &[f64::NAN], &[0.4], Fmt::Percent(1));
        assert!(!c.holds && c.note == "no seed has both values");
        // Differences 0, −0.1, +0.1 cancel, but in floats their mean is +9e-18: a tie, which
        // does not hold (genrm's summary once said "23.6% vs 23.6%, +0.0 ± 8.3: holds").
        let (a, b) = ([0.1, 0.1, 0.4], [0.1, 0.2, 0.3]);
        let raw: f64 = a.iter().zip(&b).map(|(x, y)| x - y).sum::<f64>() / 3.0;
        assert!(raw > 0.0, "the case needs a rounding residue");
        let c = Claim::paired("a > b", &a, &b, Fmt::Percent(1));
        assert!(!c.holds && c.within_noise, "{c:?}");
        assert_eq!(c.verdict(), "does not hold (within seed noise)");
    }

    #[test]
    fn tables_escape_pipes_and_pad_rows() {
        let mut t = Table::new(["a", "b"]);
        t.row(["x|y"]);
        assert_eq!(t.markdown(), "| a | b |\n|---|---|\n| x\\|y |  |\n");
    }

    #[test]
    fn matches_and_thresholds() {
        assert!(Claim::matches("same", &[0.5, 0.6], &[0.52, 0.58], Fmt::Percent(1)).holds);
        assert!(!Claim::matches("same", &[0.5, 0.5], &[0.7, 0.7], Fmt::Percent(1)).holds);
        let c = Claim::at_least("≥ 95%", &[0.96, 0.90], 0.95, Fmt::Percent(1));
        assert!(!c.holds && c.note.is_empty());
        let c = Claim::at_least("≥ 95%", &[0.99, 0.94], 0.95, Fmt::Percent(1));
        assert!(!c.holds && c.note.contains("on average"));
    }
}
