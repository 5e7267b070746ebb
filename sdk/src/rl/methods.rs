//! RL methods, registered by name (verl's style): each says which objective roles it needs and
//! what it hands them, whether it needs a critic, how many samples per prompt, and its
//! advantage estimator; [`RlMethod::update`] is one learner step on a [`Rollout`]. Adding a
//! method is one `impl` and one [`register_rl_method!`](crate::register_rl_method): the
//! learner, the rollouts and the pipeline are shared.

use burn::tensor::Tensor;

use crate::components::rl::{
    gae, kl_penalised_rewards, online_dpo_pair, penalised_score, rloo_advantages, whiten,
};
use crate::lm::Llama;
use crate::lm::fit::{pad_batch, response_token_logprobs_tensor};
use crate::rl::{RlConfig, Rollout, scatter};
use crate::tensor_map::{t1, t2};
use crate::train::Trainer;
use crate::{LossOutput, Objective, TensorMap};

/// An objective role a method needs: the recipe table's name and the inputs the method hands it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ObjectiveRole {
    pub role: &'static str,
    pub inputs: &'static [&'static str],
    pub about: &'static str,
}

/// What one update works on.
pub struct Update<'a> {
    pub policy: &'a mut Trainer<Llama>,
    pub critic: Option<&'a mut Trainer<Llama>>,
    /// The objective of each of [`RlMethod::roles`], in that order.
    pub objectives: &'a [&'a dyn Objective],
    pub cfg: &'a RlConfig,
    /// The sampling temperature: every log-probability is taken at it.
    pub temperature: f32,
    /// Samples per prompt.
    pub k: usize,
    pub pad: u32,
    pub device: &'a burn::tensor::Device,
}

/// An RL method.
pub trait RlMethod: Send + Sync {
    /// The name in recipes (`methods = ["online-dpo"]`).
    fn name(&self) -> &'static str;
    /// The name in tables.
    fn label(&self) -> &'static str;
    /// The objective roles, in the order [`Update::objectives`] holds them.
    fn roles(&self) -> &'static [ObjectiveRole];
    /// Whether it trains a critic (started from the reward model).
    fn needs_critic(&self) -> bool {
        false
    }
    /// The fewest samples per prompt it works with.
    fn min_samples(&self) -> usize {
        1
    }
    /// Its advantage estimator, for listings.
    fn advantages(&self) -> &'static str;
    /// One learner step on `batch`; returns the objectives' metrics (reduced).
    fn update(
        &self,
        u: &mut Update<'_>,
        batch: &Rollout,
    ) -> anyhow::Result<Vec<(String, Tensor<1>)>>;
}

/// A registered RL method.
pub struct RlMethodFactory {
    pub make: fn() -> Box<dyn RlMethod>,
}

inventory::collect!(RlMethodFactory);

/// Registers an RL method (a unit struct implementing [`RlMethod`]).
#[macro_export]
macro_rules! register_rl_method {
    ($ty:expr) => {
        $crate::inventory::submit! {
            $crate::rl::methods::RlMethodFactory { make: || Box::new($ty) }
        }
    };
}

/// Every registered method, sorted by name.
pub fn all() -> Vec<Box<dyn RlMethod>> {
    let mut v: Vec<Box<dyn RlMethod>> = inventory::iter::<RlMethodFactory>()
        .map(|f| (f.make)())
        .collect();
    v.sort_by_key(|m| m.name());
    v
}

/// The method named `name`, or an error listing the registered ones.
pub fn find(name: &str) -> Result<Box<dyn RlMethod>, String> {
    let mut all = all();
    match all.iter().position(|m| m.name() == name) {
        Some(i) => Ok(all.swap_remove(i)),
        None => {
            let names: Vec<&str> = all.iter().map(|m| m.name()).collect();
            let hint = crate::error::closest(name, names.iter().copied());
            Err(format!(
                "unknown RL method `{name}`{}; registered: {}",
                hint.first()
                    .map(|h| format!(" (did you mean `{h}`?)"))
                    .unwrap_or_default(),
                names.join(", ")
            ))
        }
    }
}

fn finite(out: &LossOutput, what: &str, step: u64) -> anyhow::Result<()> {
    crate::train::finite_loss(&out.loss, what, step).map(|_| ())
}

/// Online DPO (Guo et al. 2024; Noukhovitch et al. 2024): the best and worst of the `K`
/// samples of each prompt by the (EOS-penalised) reward make a pair for the `dpo` objective,
/// with the reference policy as reference.
pub struct OnlineDpo;

impl RlMethod for OnlineDpo {
    fn name(&self) -> &'static str {
        "online-dpo"
    }
    fn label(&self) -> &'static str {
        "online DPO"
    }
    fn roles(&self) -> &'static [ObjectiveRole] {
        &[ObjectiveRole {
            role: "dpo_objective",
            inputs: crate::verifiers::DPO_INPUTS,
            about: "the DPO loss on the best and worst sample of each prompt",
        }]
    }
    fn min_samples(&self) -> usize {
        2
    }
    fn advantages(&self) -> &'static str {
        "none (pairs: argmax / argmin of the reward)"
    }

    fn update(&self, u: &mut Update<'_>, b: &Rollout) -> anyhow::Result<Vec<(String, Tensor<1>)>> {
        let k = u.k;
        let (mut chosen, mut rejected) = (Vec::new(), Vec::new());
        for g in 0..b.sequences.len() / k {
            let s = g * k;
            let (p, q) = online_dpo_pair(&b.rm[s..s + k], &b.finished[s..s + k], u.cfg.eos_penalty)
                .ok_or_else(|| anyhow::anyhow!("online DPO needs at least 2 samples per prompt"))?;
            chosen.push(s + p);
            rejected.push(s + q);
        }
        let seqs: Vec<_> = chosen
            .iter()
            .chain(&rejected)
            .map(|&i| b.sequences[i].clone())
            .collect();
        let (lp, _) =
            response_token_logprobs_tensor(&u.policy.model, &seqs, u.pad, u.temperature, u.device);
        let sums = lp.sum_dim(1).squeeze_dim::<1>(1);
        let m = chosen.len();
        let ref_sum = |ids: &[usize]| -> Vec<f32> {
            ids.iter()
                .map(|&i| b.ref_logprobs[i].iter().sum())
                .collect()
        };
        let out = u.objectives[0].loss(
            &TensorMap::new()
                .with("policy_chosen", sums.clone().narrow(0, 0, m))
                .with("policy_rejected", sums.narrow(0, m, m))
                .with("reference_chosen", t1(ref_sum(&chosen), u.device))
                .with("reference_rejected", t1(ref_sum(&rejected), u.device)),
        )?;
        finite(&out, "the online DPO", u.policy.step)?;
        u.policy.step(out.loss);
        Ok(out.metrics)
    }
}

/// PPO (Schulman et al. 2017) as in Huang et al. 2024: the reward at the last response token,
/// a per-token KL penalty against the reference, GAE over the critic's values, whitened
/// advantages, the clipped policy loss and the clipped value loss.
pub struct Ppo;

impl RlMethod for Ppo {
    fn name(&self) -> &'static str {
        "ppo"
    }
    fn label(&self) -> &'static str {
        "PPO"
    }
    fn roles(&self) -> &'static [ObjectiveRole] {
        &[
            ObjectiveRole {
                role: "ppo_objective",
                inputs: &["logprobs", "old_logprobs", "advantages", "mask"],
                about: "PPO's clipped policy loss",
            },
            ObjectiveRole {
                role: "value_objective",
                inputs: &["values", "old_values", "returns", "mask"],
                about: "PPO's value loss",
            },
        ]
    }
    fn needs_critic(&self) -> bool {
        true
    }
    fn advantages(&self) -> &'static str {
        "GAE (γ, λ) on KL-penalised per-token rewards, whitened"
    }

    fn update(&self, u: &mut Update<'_>, b: &Rollout) -> anyhow::Result<Vec<(String, Tensor<1>)>> {
        let cfg = u.cfg;
        let pairs = &b.sequences;
        let (ids, mask) = pad_batch(pairs, u.pad, u.device);
        let [bs, t] = ids.dims();
        let w = t - 1;
        let zeros = vec![0; bs];
        let lp = u
            .policy
            .model
            .token_logprobs(ids.clone(), &zeros, u.temperature);
        let mask_v = crate::rl::host(mask.clone())?;
        let old = scatter(pairs, &b.old_logprobs);
        let refl = scatter(pairs, &b.ref_logprobs);
        let critic = u
            .critic
            .as_deref_mut()
            .ok_or_else(|| anyhow::anyhow!("PPO without a critic"))?;
        let values = critic
            .model
            .values(critic.model.forward_hidden(ids, &zeros, None))
            .ok_or_else(|| anyhow::anyhow!("the critic has no value head"))?
            .narrow(1, 0, w);
        let old_values = crate::rl::host(values.clone())?;
        let (mut adv, mut ret) = (vec![0.0; bs * w], vec![0.0; bs * w]);
        for i in 0..bs {
            let row = i * w..(i + 1) * w;
            let score = penalised_score(b.rm[i], b.finished[i], cfg.eos_penalty);
            let rewards = kl_penalised_rewards(
                score,
                &old[row.clone()],
                &refl[row.clone()],
                &mask_v[row.clone()],
                cfg.kl_coef,
            );
            let (a, r) = gae(
                &rewards,
                &old_values[row.clone()],
                &mask_v[row.clone()],
                cfg.gamma,
                cfg.lambda,
            );
            adv[row.clone()].copy_from_slice(&a);
            ret[row].copy_from_slice(&r);
        }
        if cfg.whiten_advantages {
            adv = whiten(&adv, &mask_v);
        }
        let d = u.device;
        let out = u.objectives[0].loss(
            &TensorMap::new()
                .with("logprobs", lp)
                .with("old_logprobs", t2(old, bs, w, d))
                .with("advantages", t2(adv, bs, w, d))
                .with("mask", mask.clone()),
        )?;
        let vout = u.objectives[1].loss(
            &TensorMap::new()
                .with("values", values)
                .with("old_values", t2(old_values, bs, w, d))
                .with("returns", t2(ret, bs, w, d))
                .with("mask", mask),
        )?;
        finite(&out, "the PPO policy", u.policy.step)?;
        finite(&vout, "the PPO value", critic.step)?;
        u.policy.step(out.loss);
        critic.step(vout.loss);
        let mut metrics = out.metrics;
        metrics.extend(
            vout.metrics
                .into_iter()
                .map(|(n, v)| (format!("value_{n}"), v)),
        );
        Ok(metrics)
    }
}

/// RLOO (Ahmadian et al. 2024): leave-one-out baselines over the `K` samples of a prompt on
/// the KL-penalised sequence reward, with the PPO-clipped sequence ratio.
pub struct Rloo;

impl RlMethod for Rloo {
    fn name(&self) -> &'static str {
        "rloo"
    }
    fn label(&self) -> &'static str {
        "RLOO"
    }
    fn roles(&self) -> &'static [ObjectiveRole] {
        &[ObjectiveRole {
            role: "rloo_objective",
            inputs: &["logprobs", "old_logprobs", "advantages"],
            about: "RLOO's clipped sequence loss",
        }]
    }
    fn min_samples(&self) -> usize {
        2
    }
    fn advantages(&self) -> &'static str {
        "leave-one-out over the K samples of a prompt, KL-penalised sequence reward"
    }

    fn update(&self, u: &mut Update<'_>, b: &Rollout) -> anyhow::Result<Vec<(String, Tensor<1>)>> {
        let cfg = u.cfg;
        let rewards: Vec<f32> = (0..b.sequences.len())
            .map(|i| {
                let kl: f32 = b.old_logprobs[i]
                    .iter()
                    .zip(&b.ref_logprobs[i])
                    .map(|(o, r)| o - r)
                    .sum();
                penalised_score(b.rm[i], b.finished[i], cfg.eos_penalty) - cfg.kl_coef * kl
            })
            .collect();
        let adv = rloo_advantages(&rewards, u.k)?;
        let (lp, _) = response_token_logprobs_tensor(
            &u.policy.model,
            &b.sequences,
            u.pad,
            u.temperature,
            u.device,
        );
        let old: Vec<f32> = b.old_logprobs.iter().map(|r| r.iter().sum()).collect();
        let out = u.objectives[0].loss(
            &TensorMap::new()
                .with("logprobs", lp.sum_dim(1).squeeze_dim::<1>(1))
                .with("old_logprobs", t1(old, u.device))
                .with("advantages", t1(adv, u.device)),
        )?;
        finite(&out, "the RLOO", u.policy.step)?;
        u.policy.step(out.loss);
        Ok(out.metrics)
    }
}

crate::register_rl_method!(OnlineDpo);
crate::register_rl_method!(Ppo);
crate::register_rl_method!(Rloo);
