//! The summary of `ordered-memory`: the setup, the results by set and by length, the induced
//! trees' F1 against the branching baselines, the plots, and the paper's claims.

use std::path::Path;

use lmlab_sdk::RunContext;
use lmlab_sdk::metrics::mean_std;
use lmlab_sdk::plot::{Series, line_plot};
use lmlab_sdk::report::{Claim, Fmt, Table, claims_table, footer};
use lmlab_sdk::train::LrSchedule;

use crate::tree::{BracketScore, left_branching, right_branching};
use crate::{EvalSets, LENGTH_BUCKETS, ModelResult, OrderedMemoryConfig, SetResult, listops};

pub(crate) struct Summary<'a> {
    pub(crate) cfg: &'a OrderedMemoryConfig,
    pub(crate) task: &'a listops::ListOpsConfig,
    pub(crate) results: &'a [ModelResult],
    pub(crate) n_train: usize,
    pub(crate) n_validation: usize,
    pub(crate) sets: &'a EvalSets,
    pub(crate) missing: &'a [String],
    pub(crate) lstm_hidden: usize,
    pub(crate) gen_seconds: f64,
    pub(crate) computed: usize,
}

const MODELS: [(&str, &str); 2] = [("ordered-memory", "Ordered Memory"), ("lstm", "LSTM")];

impl Summary<'_> {
    fn of(&self, model: &str) -> Vec<&ModelResult> {
        self.results.iter().filter(|r| r.model == model).collect()
    }

    /// Per seed (in seed order), `f` of `model`'s result on `set`.
    fn per_seed(&self, model: &str, set: &str, f: impl Fn(&SetResult) -> Option<f64>) -> Vec<f64> {
        self.of(model)
            .iter()
            .filter_map(|r| r.sets.iter().find(|s| s.name == set).and_then(&f))
            .collect()
    }

    /// The root operators in `model`'s validation curves, in their first record's order.
    fn operators(&self, model: &str) -> Vec<String> {
        let mut ops: Vec<String> = Vec::new();
        for r in self.of(model) {
            for (_, row) in &r.operator_curve {
                for (o, _) in row {
                    if !ops.contains(o) {
                        ops.push(o.clone());
                    }
                }
            }
        }
        ops
    }

    /// `model`'s mean over seeds of a per-step value, at the steps every seed recorded.
    fn mean_curve(
        &self,
        model: &str,
        f: impl Fn(&ModelResult, u64) -> Option<f64>,
    ) -> Vec<(u64, f64)> {
        let runs = self.of(model);
        let Some(first) = runs.first() else {
            return Vec::new();
        };
        first
            .curve
            .iter()
            .filter_map(|&(step, _)| {
                let v: Vec<f64> = runs.iter().filter_map(|r| f(r, step)).collect();
                (v.len() == runs.len()).then(|| (step, mean_std(&v).0))
            })
            .collect()
    }

    /// Validation accuracy on root operator `op`, mean over `model`'s seeds, per step.
    fn operator_curve(&self, model: &str, op: &str) -> Vec<(u64, f64)> {
        self.mean_curve(model, |r, step| {
            r.operator_curve
                .iter()
                .find(|(s, _)| *s == step)
                .and_then(|(_, row)| row.iter().find(|(o, _)| o == op))
                .map(|(_, a)| *a)
                .filter(|a| a.is_finite())
        })
    }

    /// The learning curves as a table: validation accuracy (mean over seeds) of both models,
    /// Ordered Memory's by root operator, and its training seconds, at up to `rows` steps
    /// spread over the run (the last always).
    fn learning_table(&self, rows: usize) -> String {
        let pct = Fmt::Percent(1);
        let om = self.mean_curve("ordered-memory", |r, step| {
            r.curve.iter().find(|c| c.0 == step).map(|c| c.1)
        });
        if om.is_empty() {
            return String::new();
        }
        let lstm = self.mean_curve("lstm", |r, step| {
            r.curve.iter().find(|c| c.0 == step).map(|c| c.1)
        });
        let secs = self.mean_curve("ordered-memory", |r, step| {
            r.time_curve.iter().find(|c| c.0 == step).map(|c| c.1)
        });
        let ops = self.operators("ordered-memory");
        let op_curves: Vec<Vec<(u64, f64)>> = ops
            .iter()
            .map(|o| self.operator_curve("ordered-memory", o))
            .collect();
        let cols = ["step".to_string(), "Ordered Memory".into(), "LSTM".into()]
            .into_iter()
            .chain(ops.iter().map(|o| format!("OM root {o}")))
            .chain(["OM training time (s)".into()]);
        let mut table = Table::new(cols);
        let stride = om.len().div_ceil(rows.max(1)).max(1);
        for (k, &(step, acc)) in om.iter().enumerate() {
            if !(k % stride == stride - 1 || k + 1 == om.len()) {
                continue;
            }
            let at = |c: &[(u64, f64)]| {
                c.iter()
                    .find(|x| x.0 == step)
                    .map_or("—".to_string(), |x| pct.num(x.1))
            };
            table.row(
                [step.to_string(), pct.num(acc), at(&lstm)]
                    .into_iter()
                    .chain(op_curves.iter().map(|c| at(c)))
                    .chain([secs
                        .iter()
                        .find(|x| x.0 == step)
                        .map_or("—".to_string(), |x| format!("{:.0}", x.1))]),
            );
        }
        table.markdown()
    }

    pub(crate) fn plots(&self, dir: &Path) -> anyhow::Result<()> {
        let mut named = Vec::new();
        for (model, label) in MODELS {
            for r in self.of(model) {
                named.push((
                    format!("{label} (seed {})", r.seed),
                    r.curve
                        .iter()
                        .map(|&(s, a)| (s as f64, 100.0 * a))
                        .collect::<Vec<_>>(),
                ));
            }
        }
        plot(
            &dir.join("learning_curves.svg"),
            "ListOps validation accuracy",
            "step",
            named,
        )?;
        let mut named = Vec::new();
        for (model, label) in MODELS {
            for op in self.operators(model) {
                let xs: Vec<(f64, f64)> = self
                    .operator_curve(model, &op)
                    .into_iter()
                    .map(|(s, a)| (s as f64, 100.0 * a))
                    .collect();
                if !xs.is_empty() {
                    named.push((format!("{label}, root {op}"), xs));
                }
            }
        }
        plot(
            &dir.join("operator_curves.svg"),
            "ListOps validation accuracy by root operator (mean over seeds)",
            "step",
            named,
        )?;
        let mut named = Vec::new();
        for ((model, label), (set, _, _)) in MODELS
            .iter()
            .flat_map(|m| self.sets.iter().map(move |s| (m, s)))
        {
            let bucket = |b: &str| {
                self.per_seed(model, set, |s| {
                    s.by_length.iter().find(|x| x.0 == b).map(|x| x.2)
                })
            };
            let xs: Vec<(f64, f64)> = LENGTH_BUCKETS
                .iter()
                .enumerate()
                .filter_map(|(i, (_, _, b))| {
                    Some(bucket(b))
                        .filter(|v| !v.is_empty())
                        .map(|v| (i as f64, 100.0 * mean_std(&v).0))
                })
                .collect();
            if !xs.is_empty() {
                named.push((format!("{label}, {set}"), xs));
            }
        }
        let title =
            "Accuracy by length bucket (0: ≤20, 1: 21–60, 2: 61–150, 3: 151–400, 4: >400 tokens)";
        plot(
            &dir.join("accuracy_by_length.svg"),
            title,
            "length bucket",
            named,
        )
    }

    pub(crate) fn markdown(&self, ctx: &RunContext) -> anyhow::Result<String> {
        let (cfg, tc, pct) = (self.cfg, self.task, Fmt::Percent(1));
        let t = &cfg.train;
        let mut s = format!("# {} — Ordered Memory vs LSTM on ListOps\n\n", ctx.recipe);
        s += "Paper: Shen et al., 2019, \"Ordered Memory\" (NeurIPS). Claims tested: Ordered Memory solves ListOps (99.97% in the paper) far better than an LSTM (71.5% in the paper's table), degrades less on longer inputs, and its pointer induces the gold trees.\n\n## Setup\n\n";
        let params = |m: &str| self.of(m).first().map(|r| r.params).unwrap_or(0);
        let ranges = format!(
            "{}–{} arguments; {}–{} tokens without parentheses",
            tc.min_args, tc.max_args, tc.min_len, tc.max_len
        );
        s += &format!(
            "- Data: generated ListOps (the original generator, `MAX_DEPTH = {}`, so operators nest at most {} deep; {ranges}): {} training and {} validation expressions, all distinct from the test sets (generated in {:.1} s).\n",
            tc.max_depth,
            tc.max_depth - 1,
            self.n_train,
            self.n_validation,
            self.gen_seconds
        );
        for (name, ex, long) in self.sets {
            let depth = ex.iter().map(|e| e.depth).max().unwrap_or(0);
            let maxlen = ex.iter().map(|e| e.tokens.len()).max().unwrap_or(0);
            let what = match name.as_str() {
                "test" => "in-distribution test".to_string(),
                "long" => format!(
                    "longer generated inputs ({}–{} tokens, `MAX_DEPTH = {}`)",
                    tc.long_min_len, tc.long_max_len, tc.long_max_depth
                ),
                _ => "real test set (evaluation only)".to_string(),
            };
            let slots = cfg
                .eval_slots
                .filter(|_| *long)
                .map(|n| format!("; Ordered Memory evaluated with {n} slots"))
                .unwrap_or_default();
            s += &format!(
                "- `{name}`: {what}, {} examples, up to {maxlen} tokens and depth {depth}{slots}.\n",
                ex.len()
            );
        }
        for m in self.missing {
            s += &format!("- Not evaluated: {m}.\n");
        }
        let om = format!(
            "D = {}, {} slots, cell hidden {}, {} parameters",
            cfg.om.hidden,
            cfg.om.slots,
            cfg.om.cell_hidden.unwrap_or(4 * cfg.om.hidden),
            params("ordered-memory")
        );
        let lstm = format!(
            "embedding {}, hidden {} (the largest with at most Ordered Memory's parameter count unless set), {} parameters",
            cfg.lstm.embed.unwrap_or(cfg.om.hidden),
            self.lstm_hidden,
            params("lstm")
        );
        s += &format!("- Ordered Memory: {om}. LSTM: {lstm}.\n");
        let plateau = if t.optim.schedule == LrSchedule::Plateau {
            format!(
                " on validation accuracy ({} examples) every {} steps, ×{} after more than {} such checks without improvement",
                self.n_validation,
                if t.optim.plateau_every > 0 {
                    t.optim.plateau_every
                } else {
                    t.eval_every
                },
                t.optim.plateau_factor,
                t.optim.plateau_patience
            )
        } else {
            String::new()
        };
        let clip = t
            .optim
            .grad_clip_norm
            .map_or("none".to_string(), |v| format!("at norm {v}"));
        let dropout = format!(
            "OM: cell {}, memory {}, input {}, output {}; LSTM: input {}, output {}",
            cfg.om.dropout,
            cfg.om.dropout_memory,
            cfg.om.dropout_input,
            cfg.om.dropout_output,
            cfg.lstm.dropout_input,
            cfg.lstm.dropout_output
        );
        s += &format!(
            "- Same budget for both: {} steps of batch {} (length-bucketed), Adam(β₁ = {}, β₂ = {}) lr {} ({:?} schedule{plateau}), gradient clipping {clip}, dropout ({dropout}). The final model is evaluated.\n",
            t.steps, t.batch_size, t.optim.beta1, t.optim.beta2, t.optim.lr, t.optim.schedule
        );
        s += &format!(
            "- Seeds: {:?} (offsets from the run's seed {}); the data are the same for every seed.\n\n",
            cfg.seeds, ctx.seed
        );

        let names: Vec<&str> = self.sets.iter().map(|x| x.0.as_str()).collect();
        let cols = std::iter::once("model".to_string())
            .chain(names.iter().map(|n| format!("accuracy `{n}` (%)")))
            .chain(names.iter().map(|n| format!("parse F1 `{n}` (%)")))
            .chain(["train time (s)".into()]);
        let mut table = Table::new(cols);
        for (model, label) in MODELS {
            let acc = names
                .iter()
                .map(|n| pct.cell(&self.per_seed(model, n, |r| Some(r.accuracy))));
            let f1 = names
                .iter()
                .map(|n| pct.cell(&self.per_seed(model, n, |r| r.f1)));
            let secs: Vec<f64> = self.of(model).iter().map(|r| r.train_seconds).collect();
            table.row(
                std::iter::once(label.to_string())
                    .chain(acc)
                    .chain(f1)
                    .chain([Fmt::Fixed(1).cell(&secs)]),
            );
        }
        for (label, f) in [
            (
                "left-branching trees",
                left_branching as fn(usize) -> Vec<(usize, usize)>,
            ),
            ("right-branching trees", right_branching),
        ] {
            let f1 = self.sets.iter().map(|(_, ex, _)| {
                let mut b = BracketScore::default();
                ex.iter().for_each(|e| b.add(&f(e.tokens.len()), &e.gold));
                b.f1().map_or("—".to_string(), |v| pct.num(v))
            });
            table.row(
                std::iter::once(format!("{label} (no model)"))
                    .chain(names.iter().map(|_| "—".to_string()))
                    .chain(f1)
                    .chain(["—".to_string()]),
            );
        }
        s += &format!(
            "## Results (mean ± std over {} seeds)\n\n{}\n",
            self.of("ordered-memory").len(),
            table.markdown()
        );
        s += "Parse F1: unlabeled brackets of the tree induced by Ordered Memory's pointer (`d_t = argmax p_t`, greedy bracketing as the reference code's `build_tree`) against the gold tree, micro-averaged as EVALB does (the whole-expression bracket included). The gold trees bracket each operator's arguments left to right, so the left-branching baseline is strong. The LSTM induces no tree.\n\n";
        let mut table = Table::new(
            ["seed".to_string(), "model".into()]
                .into_iter()
                .chain(names.iter().map(|n| format!("acc `{n}`")))
                .chain(["final train loss".into(), "steps".into()]),
        );
        for r in self.results {
            let acc = names.iter().map(|n| {
                r.sets
                    .iter()
                    .find(|x| &x.name == n)
                    .map_or("—".to_string(), |x| pct.num(x.accuracy))
            });
            table.row(
                [r.seed.to_string(), r.model.clone()]
                    .into_iter()
                    .chain(acc)
                    .chain([format!("{:.3}", r.final_train_loss), r.steps.to_string()]),
            );
        }
        s += &format!("### Per seed\n\n{}\n", table.markdown());
        let cols = ["model".to_string(), "set".into()]
            .into_iter()
            .chain(LENGTH_BUCKETS.iter().map(|b| b.2.to_string()));
        let mut table = Table::new(cols);
        for ((model, label), name) in MODELS
            .iter()
            .flat_map(|m| names.iter().map(move |n| (m, n)))
        {
            let cells = LENGTH_BUCKETS.iter().map(|(_, _, b)| {
                let v = self.per_seed(model, name, |r| {
                    r.by_length.iter().find(|x| x.0 == *b).map(|x| x.2)
                });
                let n = self
                    .of(model)
                    .first()
                    .and_then(|r| r.sets.iter().find(|x| &x.name == name))
                    .and_then(|x| x.by_length.iter().find(|x| x.0 == *b))
                    .map(|x| x.1);
                n.map_or("—".to_string(), |n| {
                    format!("{} (n={n})", pct.num(mean_std(&v).0))
                })
            });
            table.row(
                [label.to_string(), format!("`{name}`")]
                    .into_iter()
                    .chain(cells),
            );
        }
        s += &format!(
            "### Accuracy by length (mean over seeds, %)\n\n{}\n",
            table.markdown()
        );
        // Which operator or depth is learned, in distribution (the first set).
        if let Some(set) = names.first() {
            let first = |model: &str| {
                self.of(model)
                    .first()
                    .and_then(|r| r.sets.iter().find(|x| &x.name == set))
                    .cloned()
            };
            let ops: Vec<String> = MODELS
                .iter()
                .filter_map(|(m, _)| first(m))
                .flat_map(|r| r.by_operator.into_iter().map(|x| x.0))
                .fold(Vec::new(), |mut v, o| {
                    if !v.contains(&o) {
                        v.push(o);
                    }
                    v
                });
            let depths: Vec<usize> = MODELS
                .iter()
                .filter_map(|(m, _)| first(m))
                .flat_map(|r| r.by_depth.into_iter().map(|x| x.0))
                .fold(Vec::new(), |mut v, d| {
                    if !v.contains(&d) {
                        v.push(d);
                    }
                    v
                });
            if !ops.is_empty() {
                let cols = std::iter::once("model".to_string())
                    .chain(ops.iter().map(|o| format!("root {o}")))
                    .chain(depths.iter().map(|d| format!("depth {d}")));
                let mut table = Table::new(cols);
                for (model, label) in MODELS {
                    let op_cells = ops.iter().map(|o| {
                        let v = self.per_seed(model, set, |r| {
                            r.by_operator.iter().find(|x| &x.0 == o).map(|x| x.2)
                        });
                        if v.is_empty() {
                            "—".to_string()
                        } else {
                            pct.num(mean_std(&v).0)
                        }
                    });
                    let depth_cells = depths.iter().map(|d| {
                        let v = self.per_seed(model, set, |r| {
                            r.by_depth.iter().find(|x| x.0 == *d).map(|x| x.2)
                        });
                        if v.is_empty() {
                            "—".to_string()
                        } else {
                            pct.num(mean_std(&v).0)
                        }
                    });
                    table.row(
                        std::iter::once(label.to_string())
                            .chain(op_cells)
                            .chain(depth_cells),
                    );
                }
                s += &format!(
                    "### Accuracy by root operator and by depth on `{set}` (mean over seeds, %)\n\n{}\n",
                    table.markdown()
                );
            }
        }
        let curve = self.learning_table(12);
        if !curve.is_empty() {
            s += &format!(
                "### Learning curves (validation, {} examples; mean over seeds, %)\n\n{curve}\n",
                self.n_validation
            );
        }
        s += &format!(
            "## Claims at our scale\n\n{}\n",
            claims_table(&self.claims())
        );
        s += "Plots: `plots/learning_curves.svg` (validation accuracy per seed), `plots/operator_curves.svg` (validation accuracy by root operator), `plots/accuracy_by_length.svg`.\n\n";
        let total: f64 = self.results.iter().map(|r| r.train_seconds).sum();
        s += &footer(total, self.results.len(), self.computed, ctx.elapsed_secs());
        Ok(s)
    }

    fn claims(&self) -> Vec<Claim> {
        let pct = Fmt::Percent(1);
        let acc = |m: &str, set: &str| self.per_seed(m, set, |r| Some(r.accuracy));
        let (om, lstm) = (acc("ordered-memory", "test"), acc("lstm", "test"));
        let mut claims = vec![Claim::at_least(
            "Ordered Memory reaches ≥ 95% in distribution",
            &om,
            0.95,
            pct,
        )];
        let better = Claim::paired("", &om, &lstm, pct);
        let mut much = Claim::paired_by(
            "Ordered Memory ≫ LSTM (in distribution, by ≥ 10 points)",
            &om,
            &lstm,
            pct,
            0.10,
        );
        if !much.holds && better.holds && !better.within_noise {
            much = much.note("Ordered Memory is better, by less than 10 points");
        }
        claims.push(much);
        for (name, _, _) in self.sets.iter().filter(|x| x.2) {
            let drop = |m: &str| {
                acc(m, "test")
                    .iter()
                    .zip(acc(m, name))
                    .map(|(a, b)| a - b)
                    .collect::<Vec<f64>>()
            };
            let what = format!(
                "Ordered Memory degrades less with length (`test` → `{name}`: accuracy drop of the LSTM minus Ordered Memory's)"
            );
            claims.push(Claim::paired(
                what,
                &drop("lstm"),
                &drop("ordered-memory"),
                pct,
            ));
        }
        let f1 = self.per_seed("ordered-memory", "test", |r| r.f1);
        if !f1.is_empty() {
            let mut left = BracketScore::default();
            if let Some((_, ex, _)) = self.sets.iter().find(|(n, _, _)| n == "test") {
                ex.iter()
                    .for_each(|e| left.add(&left_branching(e.tokens.len()), &e.gold));
            }
            let (fm, lf) = (mean_std(&f1).0, left.f1().unwrap_or(0.0));
            let measured = format!(
                "parse F1 {}% in distribution, left-branching trees {}%",
                pct.num(fm),
                pct.num(lf)
            );
            let mut c = Claim::check(
                "the pointer induces the gold trees (parse F1 ≥ 95%)",
                measured,
                fm >= 0.95,
            );
            if !c.holds && fm > lf {
                c = c.note("partly: better than the left-branching baseline, not the gold trees");
            }
            claims.push(c);
        }
        claims
    }
}

/// An accuracy plot of named series.
fn plot(
    path: &Path,
    title: &str,
    x: &str,
    named: Vec<(String, Vec<(f64, f64)>)>,
) -> anyhow::Result<()> {
    let series: Vec<Series> = named
        .iter()
        .map(|(n, p)| Series {
            name: n,
            points: p.clone(),
        })
        .collect();
    line_plot(path, title, x, "accuracy (%)", &series)
}
