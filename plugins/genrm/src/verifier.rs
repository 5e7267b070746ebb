//! GenRM's verifiers: next-token prediction of " Yes" / " No".
//!
//! - `genrm-direct`: the verifier reads the solution and the question `I`; its score is
//!   r = p(" Yes" | x, y, I).
//! - `genrm-cot`: the verifier reads the solution and the chain-of-thought instruction, samples
//!   K rationales until `I` appears (appended when it does not), and its score is
//!   r@K = (1/K) Σᵢ p(" Yes" | x, y, vᵢ, I).
//! - `llm-judge`: the handed-over model, untrained, asked the Direct question (LLM-as-a-judge).
//!
//! Both fitters train from the handed-over policy with the next-token loss on target tokens
//! only, L = L_SFT(D_verify) + λ · L_SFT(D_correct) ([`joint_loss`]), D_correct being the
//! correct candidates as plain solutions after the solve prompt (λ = 0: verification only).
//! Scores work over any [`Policy`] (trained here, a checkpoint, a server).

use lmlab_sdk::burn::module::Module;
use lmlab_sdk::fit::{FitCx, FitOptions, Fitted};
use lmlab_sdk::lm::Llama;
use lmlab_sdk::lm::Tokenizer;
use lmlab_sdk::lm::fit::sft_loss;
use lmlab_sdk::lm::policy::LmPolicy;
use lmlab_sdk::registry::{ConfigError, InlineObjective};
use lmlab_sdk::tasks::TextProblem;
use lmlab_sdk::train::{OptimConfig, Stage, Trainer};
use lmlab_sdk::verifier::{draw_batch, split_by_problem};
use lmlab_sdk::verifiers::{SelectConfig, fine_tune, fit_selected, stage_of};
use lmlab_sdk::{
    Candidate, Completion, LossOutput, Objective, Policy, SamplingParams, Sequence, Verifier,
    VerifierSpec,
};
use rand::Rng as _;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::critic::cot_target;
use crate::format::{NO, QUESTION, YES, cot_prompt, direct_prompt, question, solve_prompt};

/// How GenRM reads p(" Yes").
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ScoreConfig {
    /// Renormalise over the two answers: p(" Yes") / (p(" Yes") + p(" No")).
    pub renormalise: bool,
    /// Sequences per forward pass (and rationales per sampling call).
    pub batch: usize,
}

impl Default for ScoreConfig {
    fn default() -> Self {
        Self {
            renormalise: false,
            batch: 256,
        }
    }
}

/// How GenRM-CoT samples its rationales.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct CotConfig {
    /// K: rationales per candidate (the score is the mean of their p(" Yes")).
    pub k: usize,
    pub temperature: f32,
    /// Most tokens of a rationale before `I` is appended.
    pub max_new_tokens: usize,
}

impl Default for CotConfig {
    fn default() -> Self {
        Self {
            k: 32,
            temperature: 0.7,
            max_new_tokens: 160,
        }
    }
}

/// p(`target` | prompt, middle) for each (prompt, middle) (token ids, the prompt with BOS
/// first) under `policy`: the exponential of the summed log-probabilities of the target's
/// tokens after them. Consecutive items with the same prompt (the rationales of one
/// candidate) share its forward pass on an in-process model.
pub fn target_probs(
    policy: &dyn Policy,
    items: &[(Vec<u32>, Vec<u32>)],
    target: &[u32],
    batch: usize,
) -> anyhow::Result<Vec<f32>> {
    let mut out = Vec::with_capacity(items.len());
    for chunk in items.chunks(batch.max(1)) {
        let seqs: Vec<Sequence> = chunk
            .iter()
            .map(|(p, m)| Sequence::new(p.clone(), [m.as_slice(), target].concat()))
            .collect();
        for row in policy.log_probs(&seqs, 1.0)?.per_token()? {
            let tail = &row[row.len().saturating_sub(target.len())..];
            out.push(tail.iter().map(|&x| x as f64).sum::<f64>().exp() as f32);
        }
    }
    Ok(out)
}

/// GenRM's score after each (prompt, middle), which ends with the question `I`: p(" Yes"),
/// or p(" Yes") / (p(" Yes") + p(" No")) when `renormalise`.
pub fn yes_probs(
    policy: &dyn Policy,
    items: &[(Vec<u32>, Vec<u32>)],
    s: &ScoreConfig,
) -> anyhow::Result<Vec<f32>> {
    let t = policy.tokenizer();
    let yes = target_probs(policy, items, &t.encode(YES, false), s.batch)?;
    if !s.renormalise {
        return Ok(yes);
    }
    let no = target_probs(policy, items, &t.encode(NO, false), s.batch)?;
    Ok(yes
        .iter()
        .zip(&no)
        .map(|(y, n)| if y + n > 0.0 { y / (y + n) } else { 0.5 })
        .collect())
}

/// The question of each candidate's problem.
fn questions<'a>(problems: &'a [TextProblem], candidates: &[Candidate]) -> Vec<&'a str> {
    candidates
        .iter()
        .map(|c| question(&problems[c.problem].prompt))
        .collect()
}

/// GenRM-Direct's inputs of the candidates, encoded (BOS first), as (prompt, nothing).
pub fn direct_inputs(
    t: &Tokenizer,
    problems: &[TextProblem],
    candidates: &[Candidate],
) -> Vec<(Vec<u32>, Vec<u32>)> {
    questions(problems, candidates)
        .iter()
        .zip(candidates)
        .map(|(q, c)| {
            (
                t.encode(&direct_prompt(q, &c.completion.text), true),
                vec![],
            )
        })
        .collect()
}

/// A sampled rationale as (its prompt, its tokens ending with `I`): the rationale's own when
/// it reached the question, else `I` appended (after a newline when the rationale ends
/// mid-line); a final EOS is dropped.
pub fn rationale_input(t: &Tokenizer, c: &Completion) -> (Vec<u32>, Vec<u32>) {
    let mut ids = match c.token_ids.split_last() {
        Some((&last, rest)) if last == t.eos() => rest.to_vec(),
        _ => c.token_ids.clone(),
    };
    if !c.text.ends_with(QUESTION) {
        let sep = if c.text.is_empty() || c.text.ends_with('\n') {
            ""
        } else {
            "\n"
        };
        ids.extend(t.encode(&format!("{sep}{QUESTION}"), false));
    }
    (c.prompt.clone(), ids)
}

/// GenRM-CoT's judgements: for each candidate, p(" Yes") after each of `cot.k` rationales
/// sampled from `policy` (stopping at `I`) with `seed`, in sampling order. `pb` advances
/// by one per candidate.
pub fn cot_judgements(
    policy: &dyn Policy,
    problems: &[TextProblem],
    candidates: &[Candidate],
    cot: &CotConfig,
    s: &ScoreConfig,
    seed: u64,
    pb: &lmlab_sdk::progress::ProgressBar,
) -> anyhow::Result<Vec<Vec<f32>>> {
    let k = cot.k.max(1);
    let prompts: Vec<String> = questions(problems, candidates)
        .iter()
        .zip(candidates)
        .map(|(q, c)| cot_prompt(q, &c.completion.text))
        .collect();
    let per_call = (s.batch / k).max(1);
    let mut out = Vec::with_capacity(candidates.len());
    for (i, chunk) in prompts.chunks(per_call).enumerate() {
        let params = SamplingParams {
            temperature: cot.temperature,
            max_new_tokens: cot.max_new_tokens,
            n: k,
            stop: vec![QUESTION.to_string()],
            seed: seed.wrapping_add(i as u64),
            ..Default::default()
        };
        let inputs: Vec<(Vec<u32>, Vec<u32>)> = policy
            .generate(chunk, &params)?
            .iter()
            .flatten()
            .map(|c| rationale_input(policy.tokenizer(), c))
            .collect();
        let p = yes_probs(policy, &inputs, s)?;
        out.extend(p.chunks(k).map(<[f32]>::to_vec));
        pb.inc(chunk.len() as u64);
    }
    Ok(out)
}

/// The mean of each candidate's judgements (r@K with all of them).
pub fn mean_scores(judgements: &[Vec<f32>]) -> Vec<f32> {
    judgements
        .iter()
        .map(|j| j.iter().sum::<f32>() / j.len().max(1) as f32)
        .collect()
}

/// Direct or chain-of-thought.
#[derive(Clone, Debug, PartialEq)]
pub enum Mode {
    Direct,
    Cot(CotConfig),
}

/// A generative verifier: a language model asked whether a solution is correct.
pub struct GenRm {
    /// What samples and scores.
    pub scorer: Box<dyn Policy>,
    /// The model, when it is one trained or held here (what a run saves, and what the GenRM's
    /// own generation samples from).
    pub lm: Option<LmPolicy>,
    pub mode: Mode,
    pub score: ScoreConfig,
    /// The seed of its rationale sampling.
    pub seed: u64,
    /// Progress bars of CoT scoring ("seed 0: GenRM-CoT"), and `--quiet`.
    pub label: String,
    pub quiet: bool,
}

impl GenRm {
    /// A verifier on a model trained or held in process.
    pub fn of(lm: LmPolicy, mode: Mode, score: ScoreConfig, seed: u64) -> Self {
        Self {
            scorer: Box::new(lm.clone()),
            lm: Some(lm),
            mode,
            score,
            seed,
            label: "GenRM".into(),
            quiet: true,
        }
    }
}

/// The distinct candidates (by problem and text, in first-seen order) and, for each
/// candidate, the index of its distinct one.
pub fn distinct(candidates: &[Candidate]) -> (Vec<Candidate>, Vec<usize>) {
    let mut seen: std::collections::HashMap<(usize, &str), usize> = Default::default();
    let (mut out, mut of) = (Vec::new(), Vec::with_capacity(candidates.len()));
    for c in candidates {
        let next = out.len();
        let i = *seen
            .entry((c.problem, c.completion.text.as_str()))
            .or_insert(next);
        if i == next {
            out.push(c.clone());
        }
        of.push(i);
    }
    (out, of)
}

impl Verifier for GenRm {
    /// Candidates with the same problem and text are scored once: GenRM reads the text, so
    /// Direct's score is the same, and GenRM-CoT's duplicates share their K rationales (the
    /// same expected score; the largest saving where many samples agree).
    fn scores(
        &self,
        problems: &[TextProblem],
        candidates: &[Candidate],
    ) -> anyhow::Result<Vec<f32>> {
        if let Some(j) = self.sampled_scores(problems, candidates)? {
            return Ok(mean_scores(&j));
        }
        let (unique, of) = distinct(candidates);
        let inputs = direct_inputs(self.scorer.tokenizer(), problems, &unique);
        let scores = yes_probs(self.scorer.as_ref(), &inputs, &self.score)?;
        Ok(of.iter().map(|&i| scores[i]).collect())
    }

    fn sampled_scores(
        &self,
        problems: &[TextProblem],
        candidates: &[Candidate],
    ) -> anyhow::Result<Option<Vec<Vec<f32>>>> {
        let Mode::Cot(cot) = &self.mode else {
            return Ok(None);
        };
        let (unique, of) = distinct(candidates);
        let pb = lmlab_sdk::progress::bar(unique.len() as u64, &self.label, self.quiet);
        let j = cot_judgements(
            self.scorer.as_ref(),
            problems,
            &unique,
            cot,
            &self.score,
            self.seed,
            &pb,
        )?;
        pb.finish_and_clear();
        Ok(Some(of.iter().map(|&i| j[i].clone()).collect()))
    }

    fn policy(&self) -> Option<&LmPolicy> {
        self.lm.as_ref()
    }
}

/// GenRM's loss on one batch of each set: L = L_SFT(D_verify) + λ · L_SFT(D_correct). Only
/// the target tokens count (the SFT objective's mask). With λ = 0, or without a D_correct
/// batch, it is the verification loss alone: D_correct gets no gradient.
pub fn joint_loss(verify: LossOutput, correct: Option<LossOutput>, lambda: f32) -> LossOutput {
    match correct {
        Some(c) if lambda > 0.0 => LossOutput::new(verify.loss + c.loss.clone() * lambda as f64)
            .with_metrics(verify.metrics)
            .with_metric("correct_nll", c.loss),
        _ => verify,
    }
}

/// Configuration of `genrm-direct` and `genrm-cot`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct GenRmConfig {
    /// The next-token loss on target tokens, inline (`{ use = "sft" }`).
    pub objective: InlineObjective,
    /// λ: the weight of the solution-generation loss on the correct candidates (0: pure
    /// verification).
    pub lambda: f32,
    pub steps: u64,
    /// Verification examples per step (and as many D_correct solutions when λ > 0).
    pub batch_size: usize,
    pub optim: OptimConfig,
    /// Half of each batch from correct candidates, half from incorrect ones (the paper's
    /// balanced data).
    pub balanced: bool,
    /// Model selection on held-out problems (AUROC within problems of r; GenRM-CoT's checks
    /// use one greedy rationale).
    pub select: SelectConfig,
    pub score: ScoreConfig,
    /// GenRM-CoT's rationales at test time (ignored by `genrm-direct`).
    pub cot: CotConfig,
}

impl Default for GenRmConfig {
    fn default() -> Self {
        let st = fine_tune(1e-3, 32);
        Self {
            objective: InlineObjective::named("sft"),
            lambda: 0.0,
            steps: st.steps,
            batch_size: st.batch_size,
            optim: st.optim,
            balanced: true,
            select: SelectConfig::default(),
            score: ScoreConfig::default(),
            cot: CotConfig::default(),
        }
    }
}

impl GenRmConfig {
    fn validate(&self) -> Result<Stage, ConfigError> {
        if !(self.lambda.is_finite() && self.lambda >= 0.0) {
            return Err(ConfigError::field(
                "lambda",
                "must be a non-negative number",
            ));
        }
        if self.score.batch == 0 {
            return Err(ConfigError::field("score.batch", "must be at least 1"));
        }
        if self.cot.k == 0 || self.cot.k > 1024 {
            return Err(ConfigError::field("cot.k", "must be between 1 and 1024"));
        }
        if !(self.cot.temperature.is_finite() && self.cot.temperature >= 0.0) {
            return Err(ConfigError::field(
                "cot.temperature",
                "must be 0 (greedy) or positive",
            ));
        }
        if self.cot.max_new_tokens == 0 {
            return Err(ConfigError::field(
                "cot.max_new_tokens",
                "must be at least 1",
            ));
        }
        self.select.validate()?;
        stage_of(self.steps, self.batch_size, &self.optim)
    }
}

/// The fitter of `genrm-direct` and `genrm-cot`.
pub struct GenRmSpec {
    cot: bool,
    config: GenRmConfig,
    objective: Box<dyn Objective>,
    stage: Stage,
}

/// One candidate's verification example: the input (BOS first) and the target's tokens.
fn verify_example(
    t: &Tokenizer,
    cot: bool,
    problem: &TextProblem,
    c: &Candidate,
) -> Option<Sequence> {
    let (q, text) = (question(&problem.prompt), &c.completion.text);
    let (prompt, target) = if cot {
        (cot_prompt(q, text), cot_target(problem, text, c.correct)?)
    } else {
        (
            direct_prompt(q, text),
            if c.correct { YES } else { NO }.to_string(),
        )
    };
    Some(Sequence::new(
        t.encode(&prompt, true),
        t.encode(&target, false),
    ))
}

impl GenRmSpec {
    fn mode(&self) -> Mode {
        if self.cot {
            Mode::Cot(self.config.cot.clone())
        } else {
            Mode::Direct
        }
    }
}

impl VerifierSpec for GenRmSpec {
    fn label(&self) -> String {
        let what = if self.cot {
            "GenRM-CoT"
        } else {
            "GenRM-Direct"
        };
        format!("{what} (λ = {})", self.config.lambda)
    }

    fn fitted(&self) -> bool {
        true
    }

    fn fit(
        &self,
        cx: &mut FitCx<'_>,
        problems: &[TextProblem],
        candidates: &[Candidate],
    ) -> anyhow::Result<Fitted<dyn Verifier>> {
        let (cfg, t) = (&self.config, &cx.init.tokenizer);
        let context = cx.init.model.config.max_seq_len;
        let (train_idx, held_idx, held_problems) =
            split_by_problem(candidates, cfg.select.heldout, cx.rng);
        // D_verify: every training candidate (CoT: those whose re-executed verdict matches
        // the label) that fits the context.
        let (mut verify, mut labels) = (Vec::new(), Vec::new());
        for &i in &train_idx {
            let c = &candidates[i];
            if let Some(s) = verify_example(t, self.cot, &problems[c.problem], c)
                && s.len() <= context
            {
                verify.push(s);
                labels.push(c.correct);
            }
        }
        anyhow::ensure!(
            !verify.is_empty(),
            "{}: none of the {} training candidates gives a verification example within the context of {context} tokens",
            cx.label,
            train_idx.len()
        );
        // D_correct: the correct training candidates as solutions after the solve prompt
        // (the training problems' reference solutions when none is correct).
        let solution = |p: &TextProblem, text: &str| {
            cx.init
                .training_sequence(&solve_prompt(question(&p.prompt)), text.trim_end())
        };
        let mut correct: Vec<Sequence> = train_idx
            .iter()
            .map(|&i| &candidates[i])
            .filter(|c| c.correct)
            .map(|c| solution(&problems[c.problem], &c.completion.text))
            .collect();
        if cfg.lambda > 0.0 && correct.is_empty() {
            tracing::warn!(
                "{}: no training candidate is correct; D_correct is the training problems' reference solutions",
                cx.label
            );
            correct = problems.iter().map(|p| solution(p, &p.solution)).collect();
        }
        let held: Vec<Candidate> = held_idx.iter().map(|&i| candidates[i].clone()).collect();
        let held_labels: Vec<bool> = held.iter().map(|c| c.correct).collect();
        let held_groups: Vec<usize> = held.iter().map(|c| c.problem).collect();
        let (device, pad, st) = (cx.init.device.clone(), t.pad(), &self.stage);
        let inference = cx.init.inference();
        let mut trainer = Trainer::new(cx.init.model.clone(), st.optim.clone(), st.steps);
        let pb = lmlab_sdk::progress::bar(st.steps, cx.label, cx.quiet);
        let what = format!("the {}", cx.label);
        let (b, seed) = (st.batch_size, cx.rng.random::<u64>());
        let greedy = CotConfig {
            k: 1,
            temperature: 0.0,
            ..cfg.cot.clone()
        };
        let mode = if self.cot {
            Mode::Cot(greedy)
        } else {
            Mode::Direct
        };
        let rng = &mut *cx.rng;
        let (log, selection, model) = fit_selected(
            &mut trainer,
            &FitOptions::new(&what).progress(&pb),
            &cfg.select,
            (&held_labels, &held_groups, held_problems),
            |m: &Llama| {
                let v = GenRm::of(
                    inference.with_model(m.valid()),
                    mode.clone(),
                    cfg.score.clone(),
                    seed,
                );
                v.scores(problems, &held)
            },
            |model: &Llama, _| {
                let idx = draw_batch(&labels, b, cfg.balanced, rng);
                let batch: Vec<Sequence> = idx.iter().map(|&i| verify[i].clone()).collect();
                let v = sft_loss(model, self.objective.as_ref(), &batch, pad, &device)?;
                let c = if cfg.lambda > 0.0 {
                    let batch: Vec<Sequence> = (0..b)
                        .map(|_| correct[rng.random_range(0..correct.len())].clone())
                        .collect();
                    Some(sft_loss(
                        model,
                        self.objective.as_ref(),
                        &batch,
                        pad,
                        &device,
                    )?)
                } else {
                    None
                };
                Ok(joint_loss(v, c, cfg.lambda))
            },
        )?;
        pb.finish_and_clear();
        let mut v = GenRm::of(
            inference.with_model(model.valid()),
            self.mode(),
            cfg.score.clone(),
            seed,
        );
        (v.label, v.quiet) = (cx.label.to_string(), cx.quiet);
        Ok(Fitted {
            model: Box::new(v),
            log: Some(log),
            examples: verify.len(),
            selection,
        })
    }
}

fn build(
    cot: bool,
    config: GenRmConfig,
    ctx: &lmlab_sdk::registry::BuildContext,
) -> anyhow::Result<Box<dyn VerifierSpec>> {
    let stage = config.validate()?;
    let objective = config.objective.build(ctx, &["logprobs", "mask"])?;
    Ok(Box::new(GenRmSpec {
        cot,
        config,
        objective,
        stage,
    }))
}

lmlab_sdk::register_component! {
    kind: Verifier,
    name: "genrm-direct",
    description: "GenRM-Direct: next-token verification, r = p(\" Yes\") after the question; trained with L_SFT(D_verify) + λ·L_SFT(D_correct)",
    config: GenRmConfig,
    build: |c: GenRmConfig, ctx| build(false, c, ctx),
}

lmlab_sdk::register_component! {
    kind: Verifier,
    name: "genrm-cot",
    description: "GenRM-CoT: K sampled verification rationales, r@K = mean p(\" Yes\") after each; trained on code-generated rationales with L_SFT(D_verify) + λ·L_SFT(D_correct)",
    config: GenRmConfig,
    build: |c: GenRmConfig, ctx| build(true, c, ctx),
}

/// Configuration of `llm-judge`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct JudgeConfig {
    pub score: ScoreConfig,
}

struct JudgeSpec(ScoreConfig);

impl VerifierSpec for JudgeSpec {
    fn label(&self) -> String {
        "LLM-as-a-judge".into()
    }

    fn fit(
        &self,
        cx: &mut FitCx<'_>,
        _: &[TextProblem],
        _: &[Candidate],
    ) -> anyhow::Result<Fitted<dyn Verifier>> {
        let v = GenRm::of(cx.init.inference(), Mode::Direct, self.0.clone(), 0);
        Ok(Fitted::fixed(Box::new(v)))
    }
}

lmlab_sdk::register_component! {
    kind: Verifier,
    name: "llm-judge",
    description: "LLM-as-a-judge: the handed-over model, untrained, asked GenRM-Direct's question; r = p(\" Yes\")",
    config: JudgeConfig,
    build: |c: JudgeConfig, _ctx| {
        if c.score.batch == 0 { return Err(ConfigError::field("score.batch", "must be at least 1").into()); }
        Ok(Box::new(JudgeSpec(c.score)) as Box<dyn VerifierSpec>)
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tasks::{Kind, WordTask};
    use lmlab_sdk::TensorMap;
    use lmlab_sdk::burn::tensor::{Device, Tensor, TensorData};
    use lmlab_sdk::components::sft::Sft;
    use lmlab_sdk::lm::policy::ModelSize;
    use lmlab_sdk::lm::tokenizer::train_bpe;
    use lmlab_sdk::rng::rng;
    use lmlab_sdk::{SequenceLogProbs, Split, Task};
    use proptest::prelude::*;

    fn problem() -> TextProblem {
        let words = ["apple", "bird"].map(String::from);
        WordTask::problem(Kind::LastLetter, &words)
    }

    /// A small random model over a BPE trained on the task's texts, phrases kept whole.
    fn policy(seed: u64) -> LmPolicy {
        let task = WordTask::new(Kind::LastLetter, Default::default(), 0).unwrap();
        let texts: Vec<String> = task.problems(Split::Train).unwrap()[..50]
            .iter()
            .map(lmlab_sdk::tasks::training_text)
            .chain([crate::format::verdict(true), crate::format::verdict(false)])
            .collect();
        let tokenizer = train_bpe(texts.iter().map(String::as_str), 100)
            .unwrap()
            .with_phrases(&crate::format::PHRASES);
        let size = ModelSize {
            dim: 16,
            n_layers: 1,
            n_heads: 2,
            n_kv_heads: 1,
            hidden_dim: 24,
            max_seq_len: 256,
        };
        let device = lmlab_sdk::device::test_device();
        let model = Llama::init(
            size.llama_config(tokenizer.vocab_size()),
            &mut rng(seed, 0),
            &device,
        )
        .unwrap();
        LmPolicy {
            model,
            tokenizer,
            device,
        }
    }

    fn candidate(p: &LmPolicy, text: &str, correct: bool) -> Candidate {
        Candidate {
            problem: 0,
            completion: Completion {
                prompt: p.tokenizer.encode(&problem().prompt, true),
                token_ids: p.tokenizer.encode(text, false),
                text: text.into(),
                logprobs: vec![],
                finished: true,
            },
            correct,
            answer: crate::tasks::final_answer(text),
        }
    }

    /// Samples the same rationale for every prompt, and scores with the model it wraps: a
    /// policy whose K rationales are known.
    struct Scripted {
        inner: LmPolicy,
        rationale: String,
    }

    impl Policy for Scripted {
        fn tokenizer(&self) -> &Tokenizer {
            &self.inner.tokenizer
        }
        fn num_params(&self) -> usize {
            self.inner.num_params()
        }
        fn generate(
            &self,
            prompts: &[String],
            params: &SamplingParams,
        ) -> anyhow::Result<Vec<Vec<Completion>>> {
            let t = &self.inner.tokenizer;
            Ok(prompts
                .iter()
                .map(|p| {
                    let c = Completion {
                        prompt: t.encode(p, true),
                        token_ids: t.encode(&self.rationale, false),
                        text: self.rationale.clone(),
                        logprobs: vec![],
                        finished: true,
                    };
                    vec![c; params.n]
                })
                .collect())
        }
        fn log_probs(&self, seqs: &[Sequence], t: f32) -> anyhow::Result<SequenceLogProbs> {
            self.inner.log_probs(seqs, t)
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(8))]

        /// r = p(" Yes") is the product of the target tokens' probabilities, in [0, 1];
        /// renormalised, r(Yes) and the same for " No" sum to 1.
        #[test]
        fn scores_are_probabilities_of_yes(seed in 0u64..1000) {
            let p = policy(seed);
            let sol = problem().solution;
            let c = [candidate(&p, &sol, true), candidate(&p, "The answer is x.", false)];
            let plain = GenRm::of(p.clone(), Mode::Direct, ScoreConfig::default(), 0);
            let r = plain.scores(&[problem()], &c).unwrap();
            for (ri, ci) in r.iter().zip(&c) {
                let q = question(&problem().prompt).to_string();
                let seq = Sequence::new(
                    p.tokenizer.encode(&direct_prompt(&q, &ci.completion.text), true),
                    p.tokenizer.encode(YES, false),
                );
                let by_hand = p.log_probs(&[seq], 1.0).unwrap().per_token().unwrap()[0]
                    .iter()
                    .map(|&x| x as f64)
                    .sum::<f64>()
                    .exp();
                prop_assert!((*ri as f64 - by_hand).abs() < 1e-5, "{ri} vs {by_hand}");
                prop_assert!((0.0..=1.0).contains(ri) && *ri > 0.0);
            }
            let renorm = ScoreConfig { renormalise: true, ..Default::default() };
            let inputs = direct_inputs(&p.tokenizer, &[problem()], &c);
            let yes = yes_probs(&p, &inputs, &renorm).unwrap();
            let no_t = p.tokenizer.encode(NO, false);
            let no = target_probs(&p, &inputs, &no_t, 8).unwrap();
            for ((y, n), raw) in yes.iter().zip(&no).zip(&r) {
                // y = raw / (raw + n)
                prop_assert!((y * (raw + n) - raw).abs() < 1e-5, "{y} {n} {raw}");
                prop_assert!(*y > 0.0 && *y < 1.0);
            }
            let cot = GenRm::of(p.clone(), Mode::Cot(CotConfig { k: 3, max_new_tokens: 8, ..Default::default() }), renorm, seed);
            let j = cot.sampled_scores(&[problem()], &c).unwrap().unwrap();
            prop_assert!(j.iter().all(|row| row.len() == 3 && row.iter().all(|x| *x > 0.0 && *x < 1.0)));
            prop_assert_eq!(cot.scores(&[problem()], &c).unwrap(), mean_scores(&j));
        }
    }

    #[test]
    fn duplicates_are_scored_once_and_get_the_same_score() {
        let p = policy(2);
        let sol = problem().solution;
        let mut c = vec![
            candidate(&p, &sol, true),
            candidate(&p, "The answer is x.", false),
            candidate(&p, &sol, true),
        ];
        c.push(Candidate {
            problem: 1,
            ..c[0].clone()
        });
        let (unique, of) = distinct(&c);
        assert_eq!((unique.len(), of), (3, vec![0, 1, 0, 2]));
        let two = [problem(), problem()];
        let direct = GenRm::of(p.clone(), Mode::Direct, ScoreConfig::default(), 0);
        let r = direct.scores(&two, &c).unwrap();
        assert_eq!((r[0], r[3]), (r[2], r[2]));
        let alone = direct.scores(&two, &c[1..2]).unwrap();
        assert!((alone[0] - r[1]).abs() < 1e-6);
        let cot = GenRm::of(
            p,
            Mode::Cot(CotConfig {
                k: 2,
                max_new_tokens: 4,
                ..Default::default()
            }),
            ScoreConfig::default(),
            3,
        );
        let j = cot.sampled_scores(&two, &c).unwrap().unwrap();
        assert_eq!(j[0], j[2]);
    }

    /// With one rationale, GenRM-CoT's score is GenRM-Direct's on the same text: the solution
    /// followed by the instruction and the rationale, then the same suffix `\n` + I.
    #[test]
    fn one_rationale_cot_equals_direct_on_the_same_text() -> anyhow::Result<()> {
        let p = policy(5);
        let prob = problem();
        let sol = prob.solution.clone();
        let steps = "\"apple\" ends with \"e\". Correct.\n\"bird\" ends with \"d\". Correct.";
        for (rationale, renormalise) in [
            (format!("{steps}\n{QUESTION}"), false),
            (steps.to_string(), true),
        ] {
            let score = ScoreConfig {
                renormalise,
                ..Default::default()
            };
            let scripted = Scripted {
                inner: p.clone(),
                rationale,
            };
            let cot = GenRm {
                scorer: Box::new(scripted),
                lm: None,
                mode: Mode::Cot(CotConfig {
                    k: 1,
                    ..Default::default()
                }),
                score: score.clone(),
                seed: 0,
                label: String::new(),
                quiet: true,
            };
            let c = candidate(&p, &sol, true);
            let r_cot = cot.scores(std::slice::from_ref(&prob), &[c])?;
            let text = format!(
                "{}\n{}\n{steps}",
                sol.trim_end(),
                crate::format::COT_INSTRUCTION
            );
            let direct = GenRm::of(p.clone(), Mode::Direct, score, 0);
            let r_direct =
                direct.scores(std::slice::from_ref(&prob), &[candidate(&p, &text, true)])?;
            assert!(
                (r_cot[0] - r_direct[0]).abs() < 1e-6,
                "{r_cot:?} {r_direct:?}"
            );
        }
        Ok(())
    }

    fn leaf(v: Vec<f32>, shape: [usize; 2], d: &Device) -> Tensor<2> {
        Tensor::from_data(TensorData::new(v, shape), d).require_grad()
    }

    fn grad(t: &Tensor<2>, g: &lmlab_sdk::burn::tensor::Gradients) -> Option<Vec<f32>> {
        t.grad(g)
            .map(|x| x.into_data().try_to_vec::<f32>().unwrap())
    }

    proptest! {
        /// L = L_SFT(verify) + λ · L_SFT(correct) on target tokens only: the loss is the
        /// formula, the gradient is zero at every masked-out (prompt, padding) position, and
        /// with λ = 0 D_correct gets no gradient at all.
        #[test]
        fn the_joint_loss_follows_its_definition(
            v in proptest::collection::vec((-5.0f32..0.0, any::<bool>()), 12),
            c in proptest::collection::vec((-5.0f32..0.0, any::<bool>()), 12),
            lambda in prop_oneof![Just(0.0f32), 0.1f32..2.0],
        ) {
            prop_assume!(v.iter().any(|x| x.1) && c.iter().any(|x| x.1));
            let d = lmlab_sdk::device::test_device().autodiff();
            let split = |x: &[(f32, bool)]| -> (Vec<f32>, Vec<f32>) {
                (x.iter().map(|p| p.0).collect(), x.iter().map(|p| p.1 as u8 as f32).collect())
            };
            let ((vl, vm), (cl, cm)) = (split(&v), split(&c));
            let (vx, cx) = (leaf(vl.clone(), [3, 4], &d), leaf(cl.clone(), [3, 4], &d));
            let map = |x: &Tensor<2>, m: &[f32]| TensorMap::new()
                .with("logprobs", x.clone())
                .with("mask", Tensor::<2>::from_data(TensorData::new(m.to_vec(), [3, 4]), &d));
            let out = joint_loss(
                Sft.loss(&map(&vx, &vm)).unwrap(),
                Some(Sft.loss(&map(&cx, &cm)).unwrap()),
                lambda,
            );
            let nll = |l: &[f32], m: &[f32]| -> f64 {
                -l.iter().zip(m).map(|(a, b)| (a * b) as f64).sum::<f64>() / m.iter().sum::<f32>() as f64
            };
            let want = nll(&vl, &vm) + lambda as f64 * nll(&cl, &cm);
            let got = out.loss.clone().into_scalar::<f32>() as f64;
            prop_assert!((got - want).abs() < 1e-4 * (1.0 + want.abs()), "{got} vs {want}");
            let g = out.loss.backward();
            let gv = grad(&vx, &g).unwrap();
            for (gi, mi) in gv.iter().zip(&vm) {
                let ok = if *mi == 0.0 { *gi == 0.0 } else { *gi < 0.0 };
                prop_assert!(ok, "gradient {} at mask {}", gi, mi);
            }
            match grad(&cx, &g) {
                Some(gc) if lambda > 0.0 => {
                    for (gi, mi) in gc.iter().zip(&cm) {
                        let ok = if *mi == 0.0 { *gi == 0.0 } else { *gi < 0.0 };
                prop_assert!(ok, "gradient {} at mask {}", gi, mi);
                    }
                }
                Some(gc) => prop_assert!(gc.iter().all(|x| *x == 0.0), "{gc:?}"),
                None => prop_assert_eq!(lambda, 0.0),
            }
        }
    }

    /// A verification example's loss mask covers exactly its target's tokens: the header,
    /// problem and solution get no gradient.
    #[test]
    fn only_the_target_tokens_are_trained_on() {
        let p = policy(1);
        let prob = problem();
        for (cot, c) in [(false, true), (false, false), (true, true)] {
            let cand = candidate(&p, &prob.solution, c);
            let s = verify_example(&p.tokenizer, cot, &prob, &cand).unwrap();
            let (_, mask) = p.batch(std::slice::from_ref(&s), &p.device);
            let m = mask.into_data().try_to_vec::<f32>().unwrap();
            let ones: Vec<usize> = (0..m.len()).filter(|&i| m[i] == 1.0).collect();
            // Position i predicts token i + 1: the ones are the target's positions.
            let first = s.prompt.len() - 1;
            assert_eq!(ones, (first..first + s.response.len()).collect::<Vec<_>>());
            let target = p.tokenizer.decode(&s.response, None);
            if cot {
                assert!(target.ends_with("Verification: Is the answer correct (Yes/No)? Yes"));
            } else {
                assert_eq!(target, if c { YES } else { NO });
            }
            // The header is one token of this tokenizer.
            assert_eq!(
                p.tokenizer.decode(&s.prompt[1..2], None),
                crate::format::HEADER
            );
        }
    }
}
