//! Reinforcement learning from a reward model, for any method registered in [`methods`]:
//! rollouts (samples of a policy for random training prompts, scored by the reward model, with
//! the sampling and the reference policy's log-probabilities), the learner that takes one
//! method update per minibatch, and [`train`], which runs both through
//! [`pipeline`](crate::pipeline) synchronously or overlapped with bounded staleness. Also the
//! evaluation every RLHF recipe reports: a gold reward against reference responses and the KL
//! to the reference policy, and the Best-of-n baseline.
//!
//! The pure functions of numbers (online-DPO pairing, KL-penalised rewards, GAE, whitening,
//! RLOO advantages) and the losses are in [`crate::components::rl`].

pub mod methods;
pub mod rlhf;

use burn::module::Module;
use std::collections::BTreeMap;

use burn::tensor::{Device, Tensor};
use rand::Rng as _;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::lm::Llama;
use crate::lm::fit::response_token_logprobs;
use crate::lm::policy::LmPolicy;
use crate::pipeline::{self, Generator, Learner, LoopMode, PipelineConfig, PipelineReport, Tagged};
use crate::policy::{Completion, Sequence};
use crate::progress::ProgressBar;
use crate::reward::RewardModel;
use crate::rng::rng;
use crate::sampler::Sampler;
use crate::tasks::{TextProblem, TextTask};
use crate::train::{LrSchedule, OptimConfig, Trainer};
use crate::verifier::Candidate;
use crate::{Objective, components::rl::penalised_score};
use methods::{RlMethod, Update};

/// The RL stage's settings (the sampling is the `[sampler]`'s).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RlConfig {
    /// Learner updates per run.
    pub updates: u64,
    /// Prompts per minibatch (one update); each gets the sampler's `n` samples.
    pub prompts_per_minibatch: usize,
    /// The score of a response without EOS (Huang et al. 2024's EOS trick), for every method.
    pub eos_penalty: f32,
    /// β of the KL penalty −β(log π_old − log π_ref) (PPO per token, RLOO per sequence).
    pub kl_coef: f32,
    /// GAE's γ and λ (PPO).
    pub gamma: f32,
    pub lambda: f32,
    /// Whiten PPO's advantages over the minibatch's response tokens.
    pub whiten_advantages: bool,
    /// The policy's optimiser.
    pub optim: OptimConfig,
    /// The critic's optimiser (PPO).
    pub value_optim: OptimConfig,
}

impl Default for RlConfig {
    fn default() -> Self {
        let constant = |lr: f64| OptimConfig {
            lr,
            weight_decay: 0.0,
            warmup_steps: 0,
            schedule: LrSchedule::Constant,
            ..OptimConfig::default()
        };
        Self {
            updates: 512,
            prompts_per_minibatch: 32,
            eos_penalty: -1.0,
            kl_coef: 0.05,
            gamma: 1.0,
            lambda: 0.95,
            whiten_advantages: true,
            optim: constant(3e-5),
            value_optim: constant(1e-4),
        }
    }
}

impl RlConfig {
    /// Errors naming the field.
    pub fn validate(&self) -> Result<(), crate::registry::ConfigError> {
        use crate::registry::ConfigError;
        if self.updates == 0 {
            return Err(ConfigError::field("updates", "must be at least 1"));
        }
        if self.prompts_per_minibatch == 0 {
            return Err(ConfigError::field(
                "prompts_per_minibatch",
                "must be at least 1",
            ));
        }
        self.optim.validate().map_err(|e| e.within("optim"))?;
        self.value_optim
            .validate()
            .map_err(|e| e.within("value_optim"))
    }
}

/// One minibatch of rollouts: `K` consecutive samples per prompt.
#[derive(Clone, Debug)]
pub struct Rollout {
    /// The problem (index into the training problems) of each sample.
    pub problems: Vec<usize>,
    pub sequences: Vec<Sequence>,
    pub finished: Vec<bool>,
    /// The reward model's score.
    pub rm: Vec<f32>,
    /// The gold reward, when there is one (else empty).
    pub gold: Vec<f32>,
    /// Per response token, at the sampling temperature: the generating policy's and the
    /// reference's log-probs.
    pub old_logprobs: Vec<Vec<f32>>,
    pub ref_logprobs: Vec<Vec<f32>>,
}

/// The flat `[B, T−1]` positions of [`pad_batch`](crate::lm::fit::pad_batch), filled from
/// per-response-token rows: token `k` of sequence `i` is at `i·(T−1) + |prompt_i| + k − 1`.
pub fn scatter(seqs: &[Sequence], rows: &[Vec<f32>]) -> Vec<f32> {
    let w = width(seqs);
    let mut out = vec![0.0; seqs.len() * w];
    for (i, (s, row)) in seqs.iter().zip(rows).enumerate() {
        for (k, &x) in row.iter().enumerate() {
            out[i * w + s.prompt.len() + k - 1] = x;
        }
    }
    out
}

/// The inverse of [`scatter`].
pub fn gather(seqs: &[Sequence], flat: &[f32]) -> Vec<Vec<f32>> {
    let w = width(seqs);
    seqs.iter()
        .enumerate()
        .map(|(i, s)| {
            (0..s.response.len())
                .map(|k| flat[i * w + s.prompt.len() + k - 1])
                .collect()
        })
        .collect()
}

fn width(seqs: &[Sequence]) -> usize {
    seqs.iter()
        .map(|s| s.prompt.len() + s.response.len())
        .max()
        .unwrap_or(2)
        .max(2)
        - 1
}

/// A tensor's values on the host.
pub fn host<const D: usize>(t: Tensor<D>) -> anyhow::Result<Vec<f32>> {
    t.into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .map_err(|e| anyhow::anyhow!("{e:?}"))
}

/// Candidates of `problems[problem[i]]`, unchecked (what a reward model scores).
fn candidates(problem: &[usize], comps: Vec<Completion>) -> Vec<Candidate> {
    problem
        .iter()
        .zip(comps)
        .map(|(&p, completion)| Candidate {
            problem: p,
            completion,
            correct: false,
            answer: None,
        })
        .collect()
}

/// The generator: samples with the published policy, scores with the reward model (and the
/// gold reward), and computes the reference's log-probs.
pub struct RolloutGenerator<'a> {
    pub problems: &'a [TextProblem],
    pub tokenizer: &'a crate::lm::Tokenizer,
    pub sampler: &'a dyn Sampler,
    pub reward: &'a dyn RewardModel,
    pub gold: Option<&'a dyn RewardModel>,
    /// The reference policy (inference).
    pub reference: &'a LmPolicy,
    pub prompts_per_minibatch: usize,
    /// Minibatches per round.
    pub n: usize,
    pub seed: u64,
    /// The inference device.
    pub device: Device,
}

impl Generator for RolloutGenerator<'_> {
    type Weights = Llama;
    type Batch = Rollout;

    /// Minibatch `u` (counting over rounds) draws its prompts and its sampling seed from
    /// stream `1_000_000 + u` of the seed.
    fn generate(&mut self, round: u64, weights: &Llama) -> anyhow::Result<Vec<Rollout>> {
        let policy = LmPolicy {
            model: weights.clone(),
            tokenizer: self.tokenizer.clone(),
            device: self.device.clone(),
        };
        let temperature = self.sampler.temperature();
        let mut out = Vec::with_capacity(self.n);
        for i in 0..self.n {
            let unit = round * self.n as u64 + i as u64;
            let mut r = rng(self.seed, 1_000_000 + unit);
            let docs: Vec<usize> = (0..self.prompts_per_minibatch)
                .map(|_| r.random_range(0..self.problems.len()))
                .collect();
            let prompts: Vec<String> = docs
                .iter()
                .map(|&d| crate::tasks::prompt_text(&self.problems[d]))
                .collect();
            let sampled =
                self.sampler
                    .sample(&policy, &prompts, r.random(), &ProgressBar::hidden())?;
            let mut problem = Vec::new();
            let mut comps = Vec::new();
            for (&d, cs) in docs.iter().zip(sampled.completions) {
                for c in cs {
                    problem.push(d);
                    comps.push(c);
                }
            }
            let cands = candidates(&problem, comps);
            let sequences: Vec<Sequence> = cands.iter().map(|c| c.completion.sequence()).collect();
            let rm = self.reward.rewards(self.problems, &cands)?;
            let gold = match self.gold {
                Some(g) => g.rewards(self.problems, &cands)?,
                None => Vec::new(),
            };
            let ref_logprobs = response_token_logprobs(
                &self.reference.model,
                &sequences,
                self.tokenizer.pad(),
                temperature,
                &self.device,
            )?;
            out.push(Rollout {
                problems: problem,
                finished: cands.iter().map(|c| c.completion.finished).collect(),
                old_logprobs: cands.into_iter().map(|c| c.completion.logprobs).collect(),
                sequences,
                rm,
                gold,
                ref_logprobs,
            });
        }
        Ok(out)
    }
}

/// The learner: one method update per minibatch, and one record per update.
pub struct RlLearner<'a> {
    pub method: &'a dyn RlMethod,
    pub policy: Trainer<Llama>,
    pub critic: Option<Trainer<Llama>>,
    pub objectives: Vec<&'a dyn Objective>,
    pub cfg: RlConfig,
    pub temperature: f32,
    pub k: usize,
    pub pad: u32,
    /// The training (autodiff) device.
    pub device: Device,
    /// Per-update records.
    pub records: Vec<serde_json::Value>,
    /// Mean gold reward of each update's samples.
    pub gold: Vec<f64>,
}

impl Learner for RlLearner<'_> {
    type Weights = Llama;
    type Batch = Rollout;

    fn learn(&mut self, batch: Tagged<Rollout>, staleness: u64) -> anyhow::Result<()> {
        let step = self.policy.step;
        let b = &batch.data;
        // How off-policy this minibatch is: the learner, as it is now, against the policy
        // that generated it (one inference pass; 0 up to rounding when nothing is stale).
        let learner = self.policy.model.valid();
        let inner = learner.embed.val().device();
        let now =
            response_token_logprobs(&learner, &b.sequences, self.pad, self.temperature, &inner)?;
        let (behaviour_kl, behaviour_k3) =
            crate::components::rl::behaviour_kl(&b.old_logprobs, &now)?;
        let mut u = Update {
            policy: &mut self.policy,
            critic: self.critic.as_mut(),
            objectives: &self.objectives,
            cfg: &self.cfg,
            temperature: self.temperature,
            k: self.k,
            pad: self.pad,
            device: &self.device,
        };
        let metrics = self.method.update(&mut u, b)?;
        let mean = |x: &mut dyn Iterator<Item = f64>, n: usize| x.sum::<f64>() / n.max(1) as f64;
        let gold = mean(&mut b.gold.iter().map(|&g| g as f64), b.gold.len());
        let kl = mean(
            &mut b
                .old_logprobs
                .iter()
                .zip(&b.ref_logprobs)
                .map(|(o, r)| o.iter().zip(r).map(|(a, b)| (a - b) as f64).sum::<f64>()),
            b.sequences.len(),
        );
        let penalty = self.cfg.eos_penalty;
        let proxy = mean(
            &mut b
                .rm
                .iter()
                .zip(&b.finished)
                .map(|(&r, &f)| penalised_score(r, f, penalty) as f64),
            b.rm.len(),
        );
        self.gold.push(gold);
        let mut rec = serde_json::json!({
            "step": step, "round": batch.round, "version": batch.version, "staleness": staleness,
            "train_gold": gold, "train_rm": proxy, "train_kl": kl,
            "behaviour_kl": behaviour_kl, "behaviour_kl_k3": behaviour_k3,
        });
        for (n, v) in metrics {
            rec[n] = serde_json::json!(host(v)?[0] as f64);
        }
        self.records.push(rec);
        Ok(())
    }

    fn weights(&self) -> Llama {
        self.policy.model.valid()
    }
}

/// One RL run's inputs.
pub struct RlRun<'a> {
    pub method: &'a dyn RlMethod,
    /// The objectives of the method's roles, in order.
    pub objectives: Vec<&'a dyn Objective>,
    pub cfg: &'a RlConfig,
    pub pipeline: PipelineConfig,
    /// The starting policy and the reference (inference copies; usually the same SFT model).
    pub init: &'a LmPolicy,
    pub reference: &'a LmPolicy,
    pub sampler: &'a dyn Sampler,
    pub reward: &'a dyn RewardModel,
    pub gold: Option<&'a dyn RewardModel>,
    pub problems: &'a [TextProblem],
    pub seed: u64,
    /// The training (autodiff) device.
    pub train_device: Device,
}

/// What an RL run did.
pub struct RlOutcome {
    pub report: PipelineReport,
    /// One record per update (with the cores of the learner's step and of the generation of
    /// its minibatch).
    pub records: Vec<serde_json::Value>,
    /// Mean gold reward of each update's samples.
    pub gold: Vec<f64>,
    /// The trained policy (inference).
    pub policy: LmPolicy,
}

/// Runs `run.pipeline.rounds` rounds of generation and learning.
pub fn train(run: &RlRun<'_>) -> anyhow::Result<RlOutcome> {
    let m = run.method;
    let k = run.sampler.n().ok_or_else(|| {
        anyhow::anyhow!("RL needs a sampler with a fixed number of samples per prompt")
    })?;
    anyhow::ensure!(
        k >= m.min_samples(),
        "{} needs at least {} samples per prompt, the sampler draws {k}",
        m.label(),
        m.min_samples()
    );
    let critic = if m.needs_critic() {
        let c = run.reward.critic(&run.train_device).ok_or_else(|| {
            anyhow::anyhow!(
                "{} starts its critic from a learned reward model; this one has none",
                m.label()
            )
        })??;
        Some(Trainer::new(
            c,
            run.cfg.value_optim.clone(),
            run.cfg.updates,
        ))
    } else {
        None
    };
    let policy = run
        .init
        .model
        .trainable_copy(&run.train_device)
        .map_err(|e| anyhow::anyhow!(e))?;
    let mut learner = RlLearner {
        method: m,
        policy: Trainer::new(policy, run.cfg.optim.clone(), run.cfg.updates),
        critic,
        objectives: run.objectives.clone(),
        cfg: run.cfg.clone(),
        temperature: run.sampler.temperature(),
        k,
        pad: run.init.tokenizer.pad(),
        device: run.train_device.clone(),
        records: Vec::new(),
        gold: Vec::new(),
    };
    let mut generator = RolloutGenerator {
        problems: run.problems,
        tokenizer: &run.init.tokenizer,
        sampler: run.sampler,
        reward: run.reward,
        gold: run.gold,
        reference: run.reference,
        prompts_per_minibatch: run.cfg.prompts_per_minibatch,
        n: run.pipeline.minibatches,
        seed: run.seed,
        device: run.init.device.clone(),
    };
    let report = pipeline::run(&run.pipeline, &mut generator, &mut learner)?;
    for (rec, c) in learner.records.iter_mut().zip(&report.consumed) {
        rec["learner_cpu"] = serde_json::json!(c.cpu);
        rec["generator_cpu"] = serde_json::json!(
            report
                .generated
                .iter()
                .find(|g| g.round == c.round)
                .and_then(|g| g.cpu)
        );
    }
    let mut policy = run.init.inference();
    policy.model = learner.policy.model.valid();
    Ok(RlOutcome {
        report,
        records: learner.records,
        gold: learner.gold,
        policy,
    })
}

/// A pipeline of `updates / n` rounds of `n` minibatches.
pub fn pipeline_config(
    mode: LoopMode,
    updates: u64,
    n: usize,
    max_staleness: u64,
    threads: (usize, usize),
    pin_cores: bool,
) -> PipelineConfig {
    PipelineConfig {
        mode,
        rounds: updates / n as u64,
        minibatches: n,
        max_staleness,
        generator_threads: threads.0,
        learner_threads: threads.1,
        pin_cores,
    }
}

/// A policy judged by a gold reward on held-out prompts.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Eval {
    /// Fraction of prompts where the sample's gold reward beats the reference response's (ties
    /// count ½).
    pub win_rate: f64,
    /// Mean over samples of log π(y) − log π_ref(y): KL(π ‖ π_ref) estimated on π's samples.
    pub kl: f64,
    /// Mean gold reward.
    pub gold: f64,
    /// Fraction of samples that ended with EOS.
    pub finished: f64,
    /// Fraction the task's checker accepts.
    pub exact: f64,
}

/// What the evaluations share: the problems, their reference responses' gold rewards, the
/// gold reward, the task and the sampler.
pub struct Judge<'a> {
    pub problems: &'a [TextProblem],
    /// The gold reward of each problem's reference response.
    pub reference_gold: Vec<f32>,
    pub gold: &'a dyn RewardModel,
    pub task: &'a TextTask,
    /// One sample per prompt (its `n` is the number drawn; Best-of-n scales it).
    pub sampler: &'a dyn Sampler,
}

impl Judge<'_> {
    /// Adds candidate `c` (of its problem) to the tallies of `e`.
    fn tally(&self, e: &mut Eval, c: &Candidate, gold: f32) {
        let rg = self.reference_gold[c.problem];
        e.win_rate += if gold > rg {
            1.0
        } else if gold == rg {
            0.5
        } else {
            0.0
        };
        e.gold += gold as f64;
        e.finished += c.completion.finished as u8 as f64;
        e.exact += (c.completion.finished
            && self
                .task
                .check(&self.problems[c.problem], &c.completion.text)) as u8
            as f64;
    }

    fn mean(mut e: Eval, n: usize) -> Eval {
        let n = n.max(1) as f64;
        e.win_rate /= n;
        e.kl /= n;
        e.gold /= n;
        e.finished /= n;
        e.exact /= n;
        e
    }

    fn draw(
        &self,
        sampler: &dyn Sampler,
        policy: &LmPolicy,
        seed: u64,
    ) -> anyhow::Result<Vec<Candidate>> {
        let prompts = crate::sampling::prompts(self.problems);
        let sampled = sampler.sample(policy, &prompts, seed, &ProgressBar::hidden())?;
        Ok(crate::sampling::label(
            self.task,
            self.problems,
            sampled.completions,
        ))
    }

    /// Win rate against the references, KL to `reference`, gold reward, EOS and exactness of
    /// one sample per problem from `policy`, drawn with `seed`.
    pub fn evaluate(
        &self,
        policy: &LmPolicy,
        reference: &LmPolicy,
        seed: u64,
    ) -> anyhow::Result<Eval> {
        let cands = self.draw(self.sampler, policy, seed)?;
        let seqs: Vec<Sequence> = cands.iter().map(|c| c.completion.sequence()).collect();
        let ref_lp = response_token_logprobs(
            &reference.model,
            &seqs,
            reference.tokenizer.pad(),
            self.sampler.temperature(),
            &reference.device,
        )?;
        let gold = self.gold.rewards(self.problems, &cands)?;
        let mut e = Eval::default();
        for ((c, g), r) in cands.iter().zip(gold).zip(&ref_lp) {
            self.tally(&mut e, c, g);
            e.kl += (c.completion.logprobs.iter().sum::<f32>() - r.iter().sum::<f32>()) as f64;
        }
        Ok(Self::mean(e, cands.len()))
    }

    /// Best-of-`n` samples of `policy` per problem, ranked by `reward` (EOS-penalised), judged
    /// like [`evaluate`](Self::evaluate); its KL is the analytic `log n − (n − 1)/n`.
    pub fn best_of(
        &self,
        policy: &LmPolicy,
        reward: &dyn RewardModel,
        n: usize,
        eos_penalty: f32,
        seed: u64,
    ) -> anyhow::Result<Eval> {
        let sampler = self.sampler.scaled(n);
        let cands = self.draw(sampler.as_ref(), policy, seed)?;
        let scores = reward.rewards(self.problems, &cands)?;
        let gold = self.gold.rewards(self.problems, &cands)?;
        let mut best: BTreeMap<usize, usize> = BTreeMap::new();
        for (i, c) in cands.iter().enumerate() {
            let pen =
                |j: usize| penalised_score(scores[j], cands[j].completion.finished, eos_penalty);
            match best.get(&c.problem) {
                Some(&b) if pen(b) >= pen(i) => {}
                _ => {
                    best.insert(c.problem, i);
                }
            }
        }
        let mut e = Eval::default();
        for &i in best.values() {
            self.tally(&mut e, &cands[i], gold[i]);
        }
        let mut e = Self::mean(e, best.len());
        e.kl = (n as f64).ln() - (n as f64 - 1.0) / n as f64;
        Ok(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lm::fit::pad_batch;

    #[test]
    fn scatter_and_gather_address_the_response_positions() {
        let seqs = vec![
            Sequence::new(vec![1, 5, 6], vec![7, 8, 2]),
            Sequence::new(vec![1, 4], vec![9]),
        ];
        let rows = vec![vec![0.1, 0.2, 0.3], vec![0.4]];
        let flat = scatter(&seqs, &rows);
        let (_, mask) = pad_batch(&seqs, 0, &Device::flex());
        let mask = host(mask).unwrap();
        for (x, m) in flat.iter().zip(&mask) {
            assert_eq!(*x != 0.0, *m > 0.0);
        }
        assert_eq!(gather(&seqs, &flat), rows);
    }

    #[test]
    fn methods_are_registered_with_their_roles() {
        let names: Vec<&str> = methods::all().iter().map(|m| m.name()).collect();
        assert_eq!(names, vec!["online-dpo", "ppo", "rloo"]);
        let ppo = methods::find("ppo").unwrap();
        assert!(ppo.needs_critic());
        assert_eq!(
            ppo.roles().iter().map(|r| r.role).collect::<Vec<_>>(),
            vec!["ppo_objective", "value_objective"]
        );
        let e = methods::find("ppoo").err().unwrap();
        assert!(e.contains("did you mean `ppo`"), "{e}");
    }
}
