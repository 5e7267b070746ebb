#![doc = include_str!("../README.md")]

use std::collections::BTreeMap;

use lmlab_sdk::eval::{
    auroc_of, auroc_within_of, best_of_k_of, correct_sequences, ks, majority_and_oracle, pass_at_1,
};
use lmlab_sdk::experiment::{Experiment, Seed, UnitCx, seeds};
use lmlab_sdk::fit::{FitSummary, Selection};
use lmlab_sdk::lm::Tokenizer;
use lmlab_sdk::metrics::mean_std;
use lmlab_sdk::report::{
    Claim, Curves, Fmt, Table, claims_table, fits_section, footer, per_seed, stat_table,
};
use lmlab_sdk::rng::rng;
use lmlab_sdk::stages::{SUMMARY_WINDOW, Stages};
use lmlab_sdk::tasks::{TextProblem, TextTask, prompt_text, training_text};
use lmlab_sdk::train::Stage;
use lmlab_sdk::verifiers::{Likelihood, SCORE_VARIANTS, score_variants};
use lmlab_sdk::{
    Candidate, Components, Objective, PolicyInit, Role, RunContext, Sampler, Scheduler, Sequence,
    Verifier, VerifierSpec,
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

const WHO: &str = "scheduler `v-star`";

/// Configuration of `v-star`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct VStarConfig {
    /// Training seeds (added to the recipe's seed); results are mean ± std over them.
    pub seeds: Vec<u64>,
    /// T: self-improvement iterations (the `[sampler]`'s `n` is k, samples per query problem
    /// and iteration; the `[test_sampler]`'s `n` is N, candidates per test problem).
    pub rounds: usize,
    /// D_SFT: this many training problems, with their reference solutions.
    pub sft_problems: usize,
    /// D_query: this many training problems are sampled in each iteration (the first
    /// `sft_problems` of them are D_SFT's).
    pub query_problems: usize,
    /// Test problems (from the task's test split).
    pub test_problems: usize,
    /// Random k-subsets per problem for majority vote@k.
    pub majority_subsets: usize,
    /// The largest k of the Best-of-k tables (powers of two up to it; 0: N). With k < N every
    /// Best-of-k is an average over many k-subsets of the N candidates, not one ranking.
    pub max_k: usize,
    /// Every generator fine-tuning (SFT, RFT, each iteration), always from the base model.
    pub generator: Stage,
}

impl Default for VStarConfig {
    fn default() -> Self {
        Self {
            seeds: vec![0, 1, 2],
            rounds: 3,
            sft_problems: 4000,
            query_problems: 500,
            test_problems: 100,
            majority_subsets: 256,
            max_k: 0,
            generator: Stage::default(),
        }
    }
}

/// What one seed measured.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SeedResult {
    pub seed: u64,
    /// Method → value at each k of [`ks`].
    pub curves: BTreeMap<String, Vec<f64>>,
    /// Pass@1 (mean fraction of correct candidates) per generator.
    pub pass1: BTreeMap<String, f64>,
    /// Fraction of correct training samples per iteration.
    pub train_accuracy: Vec<f64>,
    /// Size of D_GEN after each iteration; the verifier's training examples (D_pref pairs for
    /// DPO) on D_VER and on the one-round samples.
    pub d_gen: Vec<usize>,
    pub d_pref: usize,
    pub d_pref_one_round: usize,
    /// The verifier's training accuracy over its last 20 steps (DPO: pairs ranked right).
    pub verifier_accuracy: Option<f64>,
    /// How each training stage went (loss over its first and last 20 steps).
    pub fits: Vec<FitSummary>,
    /// Verifier (a method name) → its scores side by side, on the test candidates.
    #[serde(default)]
    pub verifiers: BTreeMap<String, VerifierScores>,
    pub seconds: f64,
}

/// One verifier's test results under each of its scores, and how it was chosen.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct VerifierScores {
    /// Score ([`SCORE_VARIANTS`], or `value head`) → Best-of-k at each k of [`ks`].
    pub curves: BTreeMap<String, Vec<f64>>,
    /// Score → AUROC (correct against incorrect) over the test candidates.
    pub auroc: BTreeMap<String, Option<f64>>,
    /// Score → the mean over test problems of each problem's own AUROC (how well it re-ranks
    /// a problem's candidates, which is what Best-of-k uses).
    #[serde(default)]
    pub auroc_within: BTreeMap<String, Option<f64>>,
    /// Its selection on held-out training problems (fitted verifiers).
    pub selection: Option<Selection>,
}

/// Method names, in table order.
pub const SFT: &str = "SFT";
pub const RFT: &str = "RFT";
pub const STAR: &str = "STaR";
pub const MAJORITY: &str = "majority vote";
pub const ORM: &str = "ORM Best-of-k";
pub const VSTAR1: &str = "V-STaR[1 round] Best-of-k";
pub const VSTAR: &str = "V-STaR Best-of-k";
pub const ORACLE: &str = "pass@k (STaR generator, oracle)";
pub const UNTRAINED: &str = "G_SFT log-likelihood Best-of-k (the verifier before DPO)";
const METHODS: [&str; 6] = [VSTAR, VSTAR1, UNTRAINED, ORM, MAJORITY, ORACLE];
const GENERATORS: [(&str, &str); 3] = [
    (SFT, "SFT pass@1"),
    (RFT, "RFT pass@1"),
    (STAR, "STaR pass@1"),
];

/// The scheduler.
pub struct VStar {
    config: VStarConfig,
}

/// The recipe's components, as the seeds share them.
struct Parts {
    task: Box<TextTask>,
    init: Box<dyn PolicyInit>,
    objective: Box<dyn Objective>,
    sampler: Box<dyn Sampler>,
    test_sampler: Box<dyn Sampler>,
    verifier: Box<dyn VerifierSpec>,
    orm: Box<dyn VerifierSpec>,
    /// The plugins of `[verifier]` and `[orm]`.
    names: [String; 2],
    tokenizer: Tokenizer,
}

/// The train and test problems.
type Data<'a> = (&'a [TextProblem], &'a [TextProblem]);

impl VStar {
    /// The k of the Best-of-k tables: powers of two up to N, or up to `max_k`.
    fn ks(&self, test_sampler: &dyn Sampler) -> Vec<usize> {
        let n = test_sampler.n().unwrap_or(1);
        let max = if self.config.max_k == 0 {
            n
        } else {
            self.config.max_k.min(n)
        };
        ks(max)
    }

    fn run_seed(
        &self,
        p: &Parts,
        seed: u64,
        data: Data,
        cx: &UnitCx,
    ) -> anyhow::Result<SeedResult> {
        let (cfg, (train, test)) = (&self.config, data);
        let started = std::time::Instant::now();
        let mut st = Stages::for_seed(p.task.as_ref(), seed, cx);
        let base = p
            .init
            .init(&p.tokenizer, &mut rng(seed, 1), &st.train_device())?;
        let queries = &train[..cfg.query_problems.min(train.len())];
        let d_sft: Vec<Sequence> = train[..cfg.sft_problems.min(train.len())]
            .iter()
            .map(|q| base.training_sequence(&prompt_text(q), &q.solution))
            .collect();
        let mut res = SeedResult {
            seed,
            ..Default::default()
        };
        let (obj, stage) = (p.objective.as_ref(), &cfg.generator);
        // The sampling stream of each call (as the first implementation drew them).
        let s = |i: u64| (seed * 100 + i).wrapping_mul(1_000_003);

        // 1. G_SFT, and one round: T·k samples per query problem from it (its first k per
        //    problem are iteration 1's); RFT fine-tunes once on D_SFT ∪ the correct ones.
        let g_sft = st.sft(&base, obj, &d_sft, stage, SFT)?;
        let (k, t) = (p.sampler.n().unwrap_or(1), cfg.rounds);
        let one_round = st.draw(p.sampler.scaled(t).as_ref(), &g_sft, queries, s(1), "SFT")?;
        let mut rft_data = d_sft.clone();
        rft_data.extend(correct_sequences(&one_round));
        let g_rft = st.sft(&base, obj, &rft_data, stage, RFT)?;

        // 2. Iterations (STaR†); candidates keep their query problem's index, so they group in
        //    D_VER.
        let (mut d_gen, mut d_ver, mut g_t) = (d_sft.clone(), Vec::new(), g_sft.clone());
        for round in 1..=t {
            let samples: Vec<Candidate> = if round == 1 {
                let first_k = |(i, c): (usize, &Candidate)| (i % (k * t) < k).then(|| c.clone());
                one_round.iter().enumerate().filter_map(first_k).collect()
            } else {
                g_t = st.sft(&base, obj, &d_gen, stage, &format!("generator {round}"))?;
                st.draw(
                    p.sampler.as_ref(),
                    &g_t,
                    queries,
                    s(round as u64),
                    &round.to_string(),
                )?
            };
            res.train_accuracy.push(pass_at_1(&samples));
            d_gen.extend(correct_sequences(&samples));
            res.d_gen.push(d_gen.len());
            d_ver.extend(samples);
        }

        // 3. The verifier (on D_VER and on the one-round samples) and the ORM, all from G_SFT.
        let (vs, name) = (p.verifier.as_ref(), p.verifier.label());
        let v = st.verifier(vs, &g_sft, queries, &d_ver, &name)?;
        let name1 = format!("{name} [1 round]");
        let v1 = st.verifier(vs, &g_sft, queries, &one_round, &name1)?;
        let orm = st.verifier(p.orm.as_ref(), &g_sft, queries, &d_ver, &p.orm.label())?;
        (res.d_pref, res.d_pref_one_round) = (v.examples, v1.examples);
        let summary = v.log.as_ref().map(|l| l.summary("", SUMMARY_WINDOW));
        res.verifier_accuracy = summary.and_then(|x| x.accuracy_end);

        // 4. Test candidates, scores and curves.
        let ts = p.test_sampler.as_ref();
        let cand_sft = st.draw(ts, &g_sft, test, s(51), "test (SFT)")?;
        let cand_rft = st.draw(ts, &g_rft, test, s(52), "test (RFT)")?;
        let cand = st.draw(ts, &g_t, test, s(53), "test (STaR)")?;
        let g_sft_likelihood = Likelihood::summed(g_sft.inference());
        let (n, kk) = (test.len(), self.ks(ts));
        let sft_sums = g_sft_likelihood.scores(test, &cand)?;
        let sft_sums_rft = g_sft_likelihood.scores(test, &cand_rft)?;
        // Each verifier under each of its scores: a language-model verifier's summed, implicit
        // reward (against G_SFT) and length-normalised log-likelihood; others their own score.
        let mut scored = |name: &str,
                          fitted: Option<Option<Selection>>,
                          verifier: &dyn Verifier,
                          c: &[Candidate],
                          reference: Option<&[f32]>|
         -> anyhow::Result<Vec<f32>> {
            let mut out = VerifierScores {
                selection: fitted.flatten(),
                ..Default::default()
            };
            let primary = verifier.scores(test, c)?;
            let variants: Vec<(String, Vec<f32>)> = match verifier.policy() {
                Some(policy) => {
                    let sums = Likelihood::summed(policy.clone()).scores(test, c)?;
                    let lengths: Vec<usize> =
                        c.iter().map(|x| x.completion.token_ids.len()).collect();
                    SCORE_VARIANTS
                        .iter()
                        .zip(score_variants(&sums, reference, &lengths))
                        .filter_map(|(v, s)| s.map(|s| (v.to_string(), s)))
                        .collect()
                }
                None if name == ORM => vec![("value head".to_string(), primary.clone())],
                None => vec![("own score".to_string(), primary.clone())],
            };
            for (variant, sc) in variants {
                out.curves
                    .insert(variant.clone(), best_of_k_of(c, n, &sc, &kk));
                out.auroc_within
                    .insert(variant.clone(), auroc_within_of(c, &sc));
                out.auroc.insert(variant, auroc_of(c, &sc));
            }
            res.verifiers.insert(name.into(), out);
            res.curves
                .insert(name.into(), best_of_k_of(c, n, &primary, &kk));
            Ok(primary)
        };
        scored(
            VSTAR,
            Some(v.selection.clone()),
            v.model.as_ref(),
            &cand,
            Some(&sft_sums),
        )?;
        scored(UNTRAINED, None, &g_sft_likelihood, &cand, None)?;
        scored(
            VSTAR1,
            Some(v1.selection.clone()),
            v1.model.as_ref(),
            &cand_rft,
            Some(&sft_sums_rft),
        )?;
        scored(
            ORM,
            Some(orm.selection.clone()),
            orm.model.as_ref(),
            &cand,
            None,
        )?;
        let [majority, oracle] = majority_and_oracle(&cand, test, &kk, cfg.majority_subsets, seed);
        res.curves
            .extend([(MAJORITY.into(), majority), (ORACLE.into(), oracle)]);
        for (name, c) in [(SFT, &cand_sft), (RFT, &cand_rft), (STAR, &cand)] {
            res.pass1.insert(name.into(), pass_at_1(c));
        }
        for (name, policy) in [("generator", Some(&g_t)), ("verifier", v.model.policy())] {
            policy.map(|p| cx.save_policy(name, p)).transpose()?;
        }
        res.fits = st.fits;
        res.seconds = started.elapsed().as_secs_f64();
        Ok(res)
    }
}

impl Scheduler for VStar {
    fn roles(&self) -> Vec<Role> {
        vec![
            Role::task::<TextTask>("task", "problems, reference solutions, exact checker"),
            Role::policy("policy", "G_base, what every generator is fine-tuned from"),
            Role::objective("objective", &["logprobs", "mask"], "the fine-tuning loss"),
            Role::sampler(
                "sampler",
                "k samples per query problem and iteration (n = k)",
            ),
            Role::sampler("test_sampler", "N candidates per test problem (n = N)"),
            Role::verifier("verifier", "trained on D_VER (`dpo` in the paper)"),
            Role::verifier("orm", "the outcome-reward-model baseline"),
        ]
    }

    fn run(&mut self, ctx: &mut RunContext, c: &mut Components) -> anyhow::Result<()> {
        let cfg = self.config.clone();
        let task: Box<TextTask> = c.take("task", WHO)?;
        let (train, test) = lmlab_sdk::task::train_and_test(task.as_ref(), WHO)?;
        let (have, need) = (train.len(), cfg.query_problems.max(cfg.sft_problems));
        anyhow::ensure!(
            have >= need,
            "{WHO}: {have} training problems, {need} needed"
        );
        let test: Vec<TextProblem> = test.into_iter().take(cfg.test_problems).collect();
        let init: Box<dyn PolicyInit> = c.take("policy", WHO)?;
        let tokenizer = init.tokenizer(&mut || train.iter().map(training_text).collect())?;
        let names = ["verifier", "orm"].map(|r| c.plugin(r).unwrap_or("?").to_string());
        let p = Parts {
            names,
            task,
            tokenizer,
            init,
            objective: c.take("objective", WHO)?,
            sampler: c.take("sampler", WHO)?,
            test_sampler: c.take("test_sampler", WHO)?,
            verifier: c.take("verifier", WHO)?,
            orm: c.take("orm", WHO)?,
        };
        let sizes = (p.init.summary(&p.tokenizer)?, train.len(), test.len());
        let units = seeds(ctx.seed, &cfg.seeds);
        let data = (train.as_slice(), test.as_slice());
        let out = Experiment::new("seed").run(ctx, &units, |u: &Seed, cx| {
            self.run_seed(&p, u.seed, data, cx)
        })?;
        let results: Vec<SeedResult> = out.results.into_iter().map(|(_, r)| r).collect();
        self.report(ctx, &p, &results, out.computed, sizes)
    }
}

impl VStar {
    fn report(
        &self,
        ctx: &mut RunContext,
        p: &Parts,
        results: &[SeedResult],
        computed: usize,
        sizes: (String, usize, usize),
    ) -> anyhow::Result<()> {
        let (cfg, pct, mean) = (&self.config, Fmt::Percent(1), |x: &[f64]| mean_std(x).0);
        let kk = self.ks(p.test_sampler.as_ref());
        let curves = Curves::gather(&kk, &METHODS, results.iter().map(|r| &r.curves));
        let pass1 = |m: &str| per_seed(results, |r| r.pass1.get(m).copied());
        let flat = GENERATORS.map(|(m, l)| (l, mean(&pass1(m))));
        let path = ctx.run.plots_dir().join("best_of_k.svg");
        curves.plot(&path, "Best-of-k on held-out problems", "accuracy", &flat)?;

        let (n, (policy, n_train, n_test)) = (kk.last().copied().unwrap_or(1), sizes);
        let seed_list: Vec<u64> = results.iter().map(|r| r.seed).collect();
        let mut s = format!(
            "# {} — V-STaR: verifiers for self-taught reasoners\n\nGenerator: {policy}. {n_train} training problems ({} with reference solutions in D_SFT, {} sampled per iteration), {n_test} held-out test problems. T = {}, k = {}, N = {} candidates per test problem, Best-of-k for k ≤ {n}. Verifier: `{}` ({}); ORM baseline: `{}`. Seeds: {seed_list:?}.\n\n",
            ctx.recipe,
            cfg.sft_problems,
            cfg.query_problems,
            cfg.rounds,
            p.sampler.n().unwrap_or(1),
            p.test_sampler.n().unwrap_or(1),
            p.names[0],
            p.verifier.label(),
            p.names[1]
        );
        s += "Differences from the paper, all of scale: the base model is trained from scratch (not a pretrained LLaMA 2), fine-tuning updates every weight (not LoRA), each iteration samples the first `query_problems` training problems (the paper samples all of them), and the task is generated arithmetic rather than GSM8K or MBPP. The algorithm, the DPO loss, the verifier's score (log V(ŷ|x)) and the metrics follow the paper. Pass@1 is the fraction of correct candidates among the N samples; majority vote@k averages `majority_subsets` random k-subsets per problem.\n\n";
        let rows = GENERATORS.map(|(m, _)| (m, vec![pass1(m)]));
        let table = stat_table(&["generator", "pass@1 (%)"], rows, pct);
        s += &format!("## Pass@1 (mean ± std over seeds)\n\n{table}\n");
        s += &format!(
            "## Best-of-k (mean ± std over seeds, %)\n\n{}\n",
            curves.table(pct)
        );
        s += &verifier_section(results, &kk);
        s += &fits_section(results.iter().map(|r| r.fits.as_slice()));
        let cols = [
            "seed",
            "correct training samples per iteration",
            "D_GEN size per iteration",
            "verifier training examples (D_pref pairs)",
            "same, [1 round]",
            "verifier training accuracy (last 20 steps)",
            "seconds",
        ];
        let mut t = Table::new(cols);
        let list = |v: Vec<String>| v.join(", ");
        for r in results {
            t.row([
                r.seed.to_string(),
                list(r.train_accuracy.iter().map(|a| pct.num(*a) + "%").collect()),
                list(r.d_gen.iter().map(|n| n.to_string()).collect()),
                r.d_pref.to_string(),
                r.d_pref_one_round.to_string(),
                r.verifier_accuracy
                    .map_or("–".into(), |a| format!("{a:.2}")),
                format!("{:.0}", r.seconds),
            ]);
        }
        s += &format!("## Data\n\n{}\n", t.markdown());

        // The paper's claims, tested on these numbers.
        let last = kk.len() - 1;
        let at = |m: &str| curves.at(m, last);
        let (v0, vn) = (curves.mean(VSTAR, 0), curves.mean(VSTAR, last));
        let (o0, on) = (curves.mean(ORM, 0), curves.mean(ORM, last));
        let rises = vn >= v0 && (on < curves.best(ORM) || (on - o0) < (vn - v0));
        let beats = |what: String, other: Vec<f64>| {
            let what = format!("V-STaR Best-of-{n} beats {what}");
            Claim::paired(what, &at(VSTAR), &other, pct)
        };
        let [v0, vn, o0, on, ob] = [v0, vn, o0, on, curves.best(ORM)].map(|x| pct.num(x));
        let shape =
            format!("V-STaR {v0}% → {vn}%, ORM {o0}% → {on}% (best {ob}%) from k = 1 to {n}");
        let claims = [
            beats("STaR pass@1".into(), pass1(STAR)),
            beats(format!("majority vote@{n}"), at(MAJORITY)),
            beats(format!("ORM Best-of-{n}"), at(ORM)),
            beats(
                format!("V-STaR[1 round] Best-of-{n} (iterating beats one round)"),
                at(VSTAR1),
            ),
            Claim::check(
                "verifier Best-of-k rises with k where the ORM flattens",
                shape,
                rises,
            ),
            beats(
                format!(
                    "its initialisation, G_SFT's own log-likelihood, at Best-of-{n} (sanity check of the verifier's training, not a paper claim)"
                ),
                at(UNTRAINED),
            ),
        ];
        s += &format!(
            "## The paper's claims at this scale\n\n{}\nPlot: `plots/best_of_k.svg`.\n\n",
            claims_table(&claims)
        );
        let seconds = results.iter().map(|r| r.seconds).sum();
        s += &footer(seconds, results.len(), computed, ctx.elapsed_secs());
        ctx.run.write_summary(&s)?;
        Ok(())
    }
}

/// Mean ± std over the finite values ("–" when none).
fn cell(fmt: Fmt, xs: &[f64]) -> String {
    let v: Vec<f64> = xs.iter().copied().filter(|x| x.is_finite()).collect();
    fmt.cell(&v)
}

/// The verifiers side by side: Best-of-N and test AUROC under each score, and the held-out
/// selection of the fitted ones.
fn verifier_section(results: &[SeedResult], kk: &[usize]) -> String {
    let (pct, n) = (Fmt::Percent(1), kk.last().copied().unwrap_or(1));
    let mut t = Table::new([
        "verifier".to_string(),
        "score".into(),
        format!("Best-of-{n} (%)"),
        "test AUROC, pooled (%)".into(),
        "test AUROC within problems (%)".into(),
        "held-out AUROC within problems, chosen model (%)".into(),
        "chosen at step (of steps trained)".into(),
    ]);
    for name in [VSTAR, VSTAR1, UNTRAINED, ORM] {
        let of = |r: &SeedResult| r.verifiers.get(name).cloned().unwrap_or_default();
        let mut variants: Vec<String> = Vec::new();
        for r in results {
            for v in of(r).curves.keys() {
                if !variants.contains(v) {
                    variants.push(v.clone());
                }
            }
        }
        variants.sort_by_key(|v| SCORE_VARIANTS.iter().position(|x| x == v).unwrap_or(9));
        for (i, v) in variants.iter().enumerate() {
            let bon = per_seed(results, |r| {
                of(r).curves.get(v).and_then(|c| c.last().copied())
            });
            let auc = per_seed(results, |r| of(r).auroc.get(v).copied().flatten());
            let within = per_seed(results, |r| of(r).auroc_within.get(v).copied().flatten());
            let (held, at) = if i == 0 {
                let sel: Vec<Option<Selection>> = results.iter().map(|r| of(r).selection).collect();
                let held: Vec<f64> = sel
                    .iter()
                    .map(|s| s.as_ref().map_or(f64::NAN, |s| s.best))
                    .collect();
                let at: Vec<String> = sel
                    .iter()
                    .flatten()
                    .map(|s| format!("{} ({})", s.best_step, s.steps))
                    .collect();
                (
                    cell(pct, &held),
                    if at.is_empty() {
                        "–".into()
                    } else {
                        at.join(", ")
                    },
                )
            } else {
                (String::new(), String::new())
            };
            t.row([
                if i == 0 {
                    name.to_string()
                } else {
                    String::new()
                },
                v.clone(),
                cell(pct, &bon),
                cell(pct, &auc),
                cell(pct, &within),
                held,
                at,
            ]);
        }
    }
    let heldout = results
        .iter()
        .find_map(|r| r.verifiers.get(VSTAR).and_then(|v| v.selection.clone()));
    let how = heldout.map_or(String::new(), |s| {
        format!(
            " Fitted verifiers are chosen by their AUROC within problems (the mean over problems of each one's AUROC: how well the score re-ranks a problem's candidates, blind to how scores compare across problems) on the candidates of {} held-out training problems ({} candidates in seed {}), checked through training (step 0 is the initial model), with early stopping.",
            s.heldout_problems, s.heldout, results[0].seed
        )
    });
    format!(
        "## Verifier scores side by side (mean ± std over seeds)\n\nEach language-model verifier V scores a candidate ŷ by its summed log-likelihood log V(ŷ|x) (the paper's score), by the implicit reward log V(ŷ|x) − log G_SFT(ŷ|x), and by the length-normalised log V(ŷ|x)/|ŷ|; the ORM by its value head. The pooled test AUROC ranks all test candidates together; the AUROC within problems averages each test problem's own.{how}\n\n{}\n",
        t.markdown()
    )
}

lmlab_sdk::register_component! {
    kind: Scheduler,
    name: "v-star",
    description: "V-STaR: iterated self-improvement plus a trained verifier, with SFT, RFT, STaR, majority, ORM and one-round baselines",
    config: VStarConfig,
    build: |config: VStarConfig, _ctx| {
        use lmlab_sdk::registry::ConfigError;
        ConfigError::at_least_one(&[("seeds", config.seeds.len()), ("rounds", config.rounds), ("sft_problems", config.sft_problems), ("query_problems", config.query_problems), ("test_problems", config.test_problems), ("majority_subsets", config.majority_subsets)])?;
        if config.rounds > 10 { return Err(ConfigError::field("rounds", "must be between 1 and 10").into()); }
        config.generator.validate().map_err(|e| e.within("generator"))?;
        Ok(Box::new(VStar { config }) as Box<dyn Scheduler>)
    },
}
