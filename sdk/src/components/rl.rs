//! RLHF building blocks shared by every method that learns from sampled responses:
//!
//! - pure functions of numbers, computed on rollout data before the loss: online-DPO pairing
//!   ([`online_dpo_pair`]), the per-token KL-penalised reward with the score at the EOS token
//!   ([`kl_penalised_rewards`]), generalised advantage estimation ([`gae`]), advantage
//!   whitening ([`whiten`]) and RLOO's leave-one-out advantages ([`rloo_advantages`]);
//! - objectives of tensors: `ppo` (clipped policy ratio), `clipped-value` (PPO's clipped value
//!   loss), `rloo` (PPO-clipped sequence ratio) and `bradley-terry` (the reward model's loss).
//!   Online DPO uses the `dpo` objective on the pairs [`online_dpo_pair`] picks.
//!
//! Definitions follow Schulman et al. 2017 (PPO), Schulman et al. 2016 (GAE), Huang et al. 2024
//! ("The N+ implementation details of RLHF with PPO"), Ahmadian et al. 2024 (RLOO) and
//! Noukhovitch et al. 2024 (online DPO in asynchronous RLHF).

use burn::tensor::Tensor;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::components::dpo::softplus;
use crate::{LossOutput, Objective, TensorMap};

/// The score a sample is ranked by: its reward when it finished (EOS), `penalty` when not.
pub fn penalised_score(score: f32, finished: bool, penalty: f32) -> f32 {
    if finished { score } else { penalty }
}

/// Online DPO's pair among the `K` samples of one prompt: `y⁺` = the first sample of highest
/// penalised score, `y⁻` = the last sample of lowest penalised score (a sample that did not
/// finish scores `penalty`). With `K ≥ 2` the two are always different samples (when every
/// score ties, the first and the last). `None` when `K < 2` or the slices differ in length.
pub fn online_dpo_pair(scores: &[f32], finished: &[bool], penalty: f32) -> Option<(usize, usize)> {
    if scores.len() < 2 || scores.len() != finished.len() {
        return None;
    }
    let s: Vec<f32> = scores
        .iter()
        .zip(finished)
        .map(|(&x, &f)| penalised_score(x, f, penalty))
        .collect();
    let mut best = 0;
    let mut worst = s.len() - 1;
    for i in 0..s.len() {
        if s[i] > s[best] {
            best = i;
        }
        let j = s.len() - 1 - i;
        if s[j] < s[worst] {
            worst = j;
        }
    }
    Some((best, worst))
}

/// The per-token reward of one response under a KL penalty (Ziegler et al. 2019; Huang et al.
/// 2024): `r_t = −β (log π_old(y_t) − log π_ref(y_t))` on every response token, plus `score` on
/// the last response token (the EOS token when the response finished). Positions where
/// `mask` is 0 get 0. All slices are one response's positions.
pub fn kl_penalised_rewards(
    score: f32,
    old_logprobs: &[f32],
    ref_logprobs: &[f32],
    mask: &[f32],
    beta: f32,
) -> Vec<f32> {
    let mut r: Vec<f32> = old_logprobs
        .iter()
        .zip(ref_logprobs)
        .zip(mask)
        .map(|((&o, &f), &m)| if m > 0.0 { -beta * (o - f) } else { 0.0 })
        .collect();
    if let Some(last) = mask.iter().rposition(|&m| m > 0.0) {
        r[last] += score;
    }
    r
}

/// Generalised advantage estimation over one sequence's valid positions (`mask` 1), in order:
/// `δ_t = r_t + γ V_{t+1} − V_t` (with `V` after the last valid position 0) and
/// `A_t = δ_t + γ λ A_{t+1}`. Returns `(advantages, returns = A + V)`; masked positions get 0
/// in both.
pub fn gae(
    rewards: &[f32],
    values: &[f32],
    mask: &[f32],
    gamma: f32,
    lambda: f32,
) -> (Vec<f32>, Vec<f32>) {
    let n = rewards.len();
    let mut adv = vec![0.0; n];
    let mut ret = vec![0.0; n];
    let (mut next_value, mut next_adv) = (0.0f32, 0.0f32);
    for t in (0..n).rev() {
        if mask[t] <= 0.0 {
            continue;
        }
        let delta = rewards[t] + gamma * next_value - values[t];
        next_adv = delta + gamma * lambda * next_adv;
        adv[t] = next_adv;
        ret[t] = next_adv + values[t];
        next_value = values[t];
    }
    (adv, ret)
}

/// `(x − mean) / √(var + 1e-8)` with mean and (population) variance over the positions where
/// `mask` is 1; masked positions get 0. Unchanged when no position is valid.
pub fn whiten(xs: &[f32], mask: &[f32]) -> Vec<f32> {
    let valid: Vec<f64> = xs
        .iter()
        .zip(mask)
        .filter(|(_, m)| **m > 0.0)
        .map(|(x, _)| *x as f64)
        .collect();
    if valid.is_empty() {
        return xs.to_vec();
    }
    let n = valid.len() as f64;
    let mean = valid.iter().sum::<f64>() / n;
    let var = valid.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
    let sd = (var + 1e-8).sqrt();
    xs.iter()
        .zip(mask)
        .map(|(&x, &m)| {
            if m > 0.0 {
                ((x as f64 - mean) / sd) as f32
            } else {
                0.0
            }
        })
        .collect()
}

/// RLOO's advantages: `rewards` holds consecutive groups of `k` samples of the same prompt;
/// `A_i = R_i − mean_{j≠i} R_j` within each group. Errors when `k < 2` or the length is not a
/// multiple of `k`.
pub fn rloo_advantages(rewards: &[f32], k: usize) -> anyhow::Result<Vec<f32>> {
    anyhow::ensure!(k >= 2, "RLOO needs at least 2 samples per prompt, got {k}");
    anyhow::ensure!(
        rewards.len().is_multiple_of(k),
        "{} rewards are not groups of {k}",
        rewards.len()
    );
    let mut out = Vec::with_capacity(rewards.len());
    for g in rewards.chunks(k) {
        let total: f64 = g.iter().map(|&x| x as f64).sum();
        for &r in g {
            let others = (total - r as f64) / (k - 1) as f64;
            out.push((r as f64 - others) as f32);
        }
    }
    Ok(out)
}

/// How far a minibatch is off-policy: `KL(π_gen ‖ π_learn)` estimated from the minibatch's
/// own samples (drawn from `π_gen`), given per response token the generating policy's
/// log-probabilities `old` and the learner's `new` (both at the sampling temperature).
/// Returns `(k1, k3)`: the mean over sequences of `Σ_t (log π_gen − log π_learn)` (unbiased,
/// nats per sequence), and the mean over tokens of `k3 = (r − 1) − log r` with
/// `r = π_learn / π_gen` (never negative, lower variance; Schulman's estimator). Both are 0
/// when the two policies agree. Errors when the shapes differ.
pub fn behaviour_kl(old: &[Vec<f32>], new: &[Vec<f32>]) -> anyhow::Result<(f64, f64)> {
    anyhow::ensure!(
        old.len() == new.len(),
        "{} sequences of old log-probs, {} of new",
        old.len(),
        new.len()
    );
    let (mut k1, mut k3, mut tokens) = (0.0f64, 0.0f64, 0usize);
    for (o, n) in old.iter().zip(new) {
        anyhow::ensure!(
            o.len() == n.len(),
            "{} old log-probs, {} new",
            o.len(),
            n.len()
        );
        for (&a, &b) in o.iter().zip(n) {
            let log_r = b as f64 - a as f64;
            k1 -= log_r;
            k3 += log_r.exp() - 1.0 - log_r;
            tokens += 1;
        }
    }
    Ok((k1 / old.len().max(1) as f64, k3 / tokens.max(1) as f64))
}

/// The clip range of a ratio objective.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ClipConfig {
    /// ε: ratios (or value changes) are clipped to `[1 − ε, 1 + ε]` (`[−ε, ε]`).
    pub clip: f32,
}

impl Default for ClipConfig {
    fn default() -> Self {
        Self { clip: 0.2 }
    }
}

fn check_clip(config: &ClipConfig) -> anyhow::Result<f32> {
    if !(config.clip.is_finite() && config.clip > 0.0 && config.clip < 1.0) {
        return Err(crate::registry::ConfigError {
            field: Some("clip".into()),
            message: "must be in (0, 1)".into(),
        }
        .into());
    }
    Ok(config.clip)
}

/// The clipped surrogate per element: `max(−A·ρ, −A·clip(ρ, 1−ε, 1+ε))` with
/// `ρ = exp(logprobs − old_logprobs)`; also returns whether each element was clipped.
fn clipped_surrogate<const D: usize>(
    logprobs: Tensor<D>,
    old_logprobs: Tensor<D>,
    advantages: Tensor<D>,
    clip: f32,
) -> (Tensor<D>, Tensor<D>, Tensor<D>) {
    let log_ratio = logprobs - old_logprobs;
    let ratio = log_ratio.clone().exp();
    let unclipped = advantages.clone().neg() * ratio.clone();
    let clipped = advantages.neg() * ratio.clamp(1.0 - clip as f64, 1.0 + clip as f64);
    let was_clipped = clipped.clone().greater(unclipped.clone()).float();
    (unclipped.max_pair(clipped), was_clipped, log_ratio)
}

fn masked_mean(x: Tensor<2>, mask: &Tensor<2>) -> anyhow::Result<Tensor<1>> {
    let count = mask.clone().sum();
    anyhow::ensure!(
        count.clone().into_scalar::<f32>() > 0.0,
        "the mask selects no token"
    );
    Ok(x.mask_fill(mask.clone().equal_elem(0.0), 0.0).sum() / count)
}

fn same_shape(batch: &TensorMap, names: &[&str]) -> anyhow::Result<Vec<Tensor<2>>> {
    let ts: Vec<Tensor<2>> = names
        .iter()
        .map(|n| batch.float2(n))
        .collect::<anyhow::Result<_>>()?;
    for (n, t) in names.iter().zip(&ts).skip(1) {
        anyhow::ensure!(
            t.dims() == ts[0].dims(),
            "`{n}` is {:?}, `{}` {:?}",
            t.dims(),
            names[0],
            ts[0].dims()
        );
    }
    Ok(ts)
}

/// PPO's clipped policy loss over tokens (inputs `logprobs`, `old_logprobs`, `advantages`,
/// `mask`, each `[B, T]`):
///
/// ```text
/// ρ_t = exp(log π(y_t) − log π_old(y_t))
/// L   = mean over mask of max(−A_t ρ_t, −A_t clip(ρ_t, 1−ε, 1+ε))
/// ```
///
/// Metrics: `loss`, `clipfrac` (fraction of tokens where the clip is active) and `approx_kl`
/// (mean of `½ (log ρ)²` over the mask).
pub struct Ppo {
    pub clip: f32,
}

impl Objective for Ppo {
    fn inputs(&self) -> &[&'static str] {
        &["logprobs", "old_logprobs", "advantages", "mask"]
    }

    fn loss(&self, batch: &TensorMap) -> anyhow::Result<LossOutput> {
        let mut t = same_shape(batch, self.inputs())?.into_iter();
        let (lp, old, adv, mask) = (
            t.next().expect("4"),
            t.next().expect("4"),
            t.next().expect("4"),
            t.next().expect("4"),
        );
        let (per_token, clipped, log_ratio) = clipped_surrogate(lp, old, adv, self.clip);
        let loss = masked_mean(per_token, &mask)?;
        let clipfrac = masked_mean(clipped, &mask)?;
        let approx_kl = masked_mean(log_ratio.powi_scalar(2) * 0.5, &mask)?;
        Ok(LossOutput::reporting(loss, "loss")
            .with_metric("clipfrac", clipfrac)
            .with_metric("approx_kl", approx_kl))
    }
}

/// PPO's clipped value loss (inputs `values`, `old_values`, `returns`, `mask`, each `[B, T]`):
/// `½ · mean over mask of max((V − R)², (V_old + clip(V − V_old, −ε, ε) − R)²)`.
/// Metrics: `loss`, `clipfrac`.
pub struct ClippedValue {
    pub clip: f32,
}

impl Objective for ClippedValue {
    fn inputs(&self) -> &[&'static str] {
        &["values", "old_values", "returns", "mask"]
    }

    fn loss(&self, batch: &TensorMap) -> anyhow::Result<LossOutput> {
        let mut t = same_shape(batch, self.inputs())?.into_iter();
        let (v, old, ret, mask) = (
            t.next().expect("4"),
            t.next().expect("4"),
            t.next().expect("4"),
            t.next().expect("4"),
        );
        let eps = self.clip as f64;
        let v_clipped = old.clone() + (v.clone() - old).clamp(-eps, eps);
        let a = (v - ret.clone()).powi_scalar(2);
        let b = (v_clipped - ret).powi_scalar(2);
        let clipped = b.clone().greater(a.clone()).float();
        let loss = masked_mean(a.max_pair(b), &mask)? * 0.5;
        Ok(LossOutput::reporting(loss, "loss")
            .with_metric("clipfrac", masked_mean(clipped, &mask)?))
    }
}

/// RLOO's loss on whole sequences (inputs `logprobs`, `old_logprobs` — the summed response
/// log-probs — and `advantages`, each `[B]`): the PPO-clipped surrogate of the sequence ratio
/// `ρ = exp(log π(y) − log π_old(y))`, averaged over the batch. The advantages come from
/// [`rloo_advantages`] on KL-penalised sequence rewards. Metrics: `loss`, `clipfrac`.
pub struct Rloo {
    pub clip: f32,
}

impl Objective for Rloo {
    fn inputs(&self) -> &[&'static str] {
        &["logprobs", "old_logprobs", "advantages"]
    }

    fn loss(&self, batch: &TensorMap) -> anyhow::Result<LossOutput> {
        let lp = batch.float1("logprobs")?;
        let old = batch.float1("old_logprobs")?;
        let adv = batch.float1("advantages")?;
        anyhow::ensure!(
            lp.dims() == old.dims() && lp.dims() == adv.dims() && lp.dims()[0] > 0,
            "`logprobs` {:?}, `old_logprobs` {:?} and `advantages` {:?} must be the same non-empty shape",
            lp.dims(),
            old.dims(),
            adv.dims()
        );
        let (per_seq, clipped, _) = clipped_surrogate(lp, old, adv, self.clip);
        let loss = per_seq.mean();
        Ok(LossOutput::reporting(loss, "loss").with_metric("clipfrac", clipped.mean()))
    }
}

/// `bradley-terry` has no settings.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BradleyTerryConfig {}

/// The reward model's pairwise loss (inputs `chosen`, `rejected`: the rewards `[B]` of the
/// preferred and the other response): `mean −log σ(r_c − r_r)`. Metrics: `loss`, `accuracy`
/// (fraction with `r_c > r_r`).
pub struct BradleyTerry;

impl Objective for BradleyTerry {
    fn inputs(&self) -> &[&'static str] {
        &["chosen", "rejected"]
    }

    fn loss(&self, batch: &TensorMap) -> anyhow::Result<LossOutput> {
        let c = batch.float1("chosen")?;
        let r = batch.float1("rejected")?;
        anyhow::ensure!(
            c.dims() == r.dims() && c.dims()[0] > 0,
            "`chosen` {:?} and `rejected` {:?} must be the same non-empty shape",
            c.dims(),
            r.dims()
        );
        let margin = c - r;
        let loss = softplus(margin.clone().neg()).mean();
        Ok(LossOutput::reporting(loss, "loss")
            .with_metric("accuracy", margin.greater_elem(0.0).float().mean()))
    }
}

crate::register_component! {
    kind: Objective,
    name: "ppo",
    description: "PPO's clipped policy loss over tokens: mean max(−Aρ, −A·clip(ρ, 1±ε))",
    config: ClipConfig,
    build: |config: ClipConfig, _ctx| Ok(Box::new(Ppo { clip: check_clip(&config)? }) as Box<dyn Objective>),
}

crate::register_component! {
    kind: Objective,
    name: "clipped-value",
    description: "PPO's clipped value loss: ½ mean max((V − R)², (V_old + clip(V − V_old, ±ε) − R)²)",
    config: ClipConfig,
    build: |config: ClipConfig, _ctx| Ok(Box::new(ClippedValue { clip: check_clip(&config)? }) as Box<dyn Objective>),
}

crate::register_component! {
    kind: Objective,
    name: "rloo",
    description: "REINFORCE leave-one-out with a PPO-clipped sequence ratio",
    config: ClipConfig,
    build: |config: ClipConfig, _ctx| Ok(Box::new(Rloo { clip: check_clip(&config)? }) as Box<dyn Objective>),
}

crate::register_component! {
    kind: Objective,
    name: "bradley-terry",
    description: "the reward model's pairwise loss −log σ(r_chosen − r_rejected)",
    config: BradleyTerryConfig,
    build: |_config: BradleyTerryConfig, _ctx| Ok(Box::new(BradleyTerry) as Box<dyn Objective>),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scalar(t: Tensor<1>) -> f64 {
        t.into_scalar::<f32>() as f64
    }
    use burn::tensor::{Device, TensorData};
    use proptest::prelude::*;

    fn t2(v: &[f32], b: usize, t: usize, device: &Device) -> Tensor<2> {
        Tensor::from_data(TensorData::new(v.to_vec(), [b, t]), device)
    }

    fn t1(v: &[f32], device: &Device) -> Tensor<1> {
        Tensor::from_data(TensorData::new(v.to_vec(), [v.len()]), device)
    }

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol * (1.0 + a.abs().max(b.abs()))
    }

    fn ppo_loss(lp: &[f32], old: &[f32], adv: &[f32], clip: f32) -> f64 {
        let d = crate::device::test_device();
        let n = lp.len();
        let batch = TensorMap::new()
            .with("logprobs", t2(lp, 1, n, &d))
            .with("old_logprobs", t2(old, 1, n, &d))
            .with("advantages", t2(adv, 1, n, &d))
            .with("mask", t2(&vec![1.0; n], 1, n, &d));
        scalar(Ppo { clip }.loss(&batch).unwrap().loss)
    }

    /// d loss / d logprobs of a single-token PPO loss, on the autodiff device.
    fn ppo_grad(lp: f32, old: f32, adv: f32, clip: f32) -> f32 {
        let d = crate::device::test_device().autodiff();
        let x = t2(&[lp], 1, 1, &d).require_grad();
        let batch = TensorMap::new()
            .with("logprobs", x.clone())
            .with("old_logprobs", t2(&[old], 1, 1, &d))
            .with("advantages", t2(&[adv], 1, 1, &d))
            .with("mask", t2(&[1.0], 1, 1, &d));
        let loss = Ppo { clip }.loss(&batch).unwrap().loss;
        let grads = loss.backward();
        x.grad(&grads).unwrap().into_scalar::<f32>()
    }

    #[test]
    fn behaviour_kl_follows_its_definition() {
        // Two sequences: log r = new − old per token.
        let old = vec![vec![-1.0f32, -2.0], vec![-0.5]];
        let new = vec![vec![-1.5f32, -1.0], vec![-0.5]];
        let (k1, k3) = behaviour_kl(&old, &new).unwrap();
        let lr = [-0.5f64, 1.0, 0.0];
        assert!(close(k1, -(lr[0] + lr[1]) / 2.0, 1e-9), "{k1}");
        let want = lr.iter().map(|x| x.exp() - 1.0 - x).sum::<f64>() / 3.0;
        assert!(close(k3, want, 1e-9), "{k3}");
        assert_eq!(behaviour_kl(&old, &old).unwrap(), (0.0, 0.0));
        assert!(behaviour_kl(&old, &new[..1]).is_err());
        assert!(behaviour_kl(&old, &[vec![0.0], vec![0.0]]).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        /// k3 is never negative, and both estimators vanish when nothing moved.
        #[test]
        fn behaviour_kl_k3_is_non_negative(xs in prop::collection::vec((-5.0f32..0.0, -5.0f32..0.0), 1..20)) {
            let old = vec![xs.iter().map(|p| p.0).collect::<Vec<f32>>()];
            let new = vec![xs.iter().map(|p| p.1).collect::<Vec<f32>>()];
            let (_, k3) = behaviour_kl(&old, &new).unwrap();
            prop_assert!(k3 >= 0.0);
            prop_assert_eq!(behaviour_kl(&old, &old).unwrap(), (0.0, 0.0));
        }

        #[test]
        fn online_dpo_pairs_rank_and_differ(scores in prop::collection::vec(-3.0f32..3.0, 2..9),
                                            fin in prop::collection::vec(any::<bool>(), 9),
                                            penalty in -2.0f32..0.0) {
            let finished = &fin[..scores.len()];
            let (p, n) = online_dpo_pair(&scores, finished, penalty).unwrap();
            let s = |i: usize| penalised_score(scores[i], finished[i], penalty);
            prop_assert!(s(p) >= s(n));
            prop_assert_ne!(p, n);
            for i in 0..scores.len() {
                prop_assert!(s(p) >= s(i) && s(n) <= s(i));
                // A penalised sample never beats one scoring above the penalty.
                if finished[i] && scores[i] > penalty {
                    prop_assert!(finished[p], "unfinished {p} chosen over {i}");
                }
            }
        }

        #[test]
        fn ppo_at_ratio_one_is_minus_the_advantage(lp in prop::collection::vec(-5.0f32..0.0, 1..8),
                                                   adv in prop::collection::vec(-3.0f32..3.0, 8),
                                                   clip in 0.05f32..0.5) {
            let adv = &adv[..lp.len()];
            let mean_adv = adv.iter().map(|&a| a as f64).sum::<f64>() / adv.len() as f64;
            prop_assert!(close(ppo_loss(&lp, &lp, adv, clip), -mean_adv, 1e-5));
        }

        #[test]
        fn clipped_objective_never_above_unclipped(lp in -3.0f32..0.0, old in -3.0f32..0.0,
                                                   adv in -3.0f32..3.0, clip in 0.05f32..0.5) {
            let ratio = ((lp - old) as f64).exp();
            // loss = −objective; the clipped objective min(ρA, clip(ρ)A) ≤ ρA.
            prop_assert!(-ppo_loss(&[lp], &[old], &[adv], clip) <= ratio * adv as f64 + 1e-5);
        }

        #[test]
        fn ppo_gradient_vanishes_only_where_clipped(old in -3.0f32..-0.5, excess in 0.01f32..1.0,
                                                    adv in 0.1f32..3.0, clip in 0.05f32..0.4) {
            let up = old + (1.0 + clip).ln() + excess;
            let down = old + (1.0 - clip).ln() - excess;
            prop_assert_eq!(ppo_grad(up, old, adv, clip), 0.0);
            prop_assert_eq!(ppo_grad(down, old, -adv, clip), 0.0);
            // Inside the trust region the gradient is −A·ρ.
            let g = ppo_grad(old, old, adv, clip) as f64;
            prop_assert!(close(g, -(adv as f64), 1e-4), "{g}");
            // Clipping is one-sided: moving towards the advantage's sign is not stopped.
            prop_assert!(ppo_grad(down, old, adv, clip) != 0.0);
        }

        #[test]
        fn gae_with_lambda_zero_is_the_td_error(r in prop::collection::vec(-2.0f32..2.0, 1..10),
                                                v in prop::collection::vec(-2.0f32..2.0, 10),
                                                gamma in 0.5f32..1.0) {
            let n = r.len();
            let v = &v[..n];
            let mask = vec![1.0; n];
            let (a, ret) = gae(&r, v, &mask, gamma, 0.0);
            for t in 0..n {
                let next = if t + 1 < n { v[t + 1] } else { 0.0 };
                prop_assert!(close(a[t] as f64, (r[t] + gamma * next - v[t]) as f64, 1e-5));
                prop_assert!(close(ret[t] as f64, (a[t] + v[t]) as f64, 1e-5));
            }
        }

        #[test]
        fn gae_with_unit_discount_and_zero_values_is_the_suffix_sum(
            r in prop::collection::vec(-2.0f32..2.0, 1..12),
            m in prop::collection::vec(any::<bool>(), 12)) {
            let n = r.len();
            let mask: Vec<f32> = m[..n].iter().map(|&b| b as u8 as f32).collect();
            let (a, _) = gae(&r, &vec![0.0; n], &mask, 1.0, 1.0);
            for t in 0..n {
                if mask[t] == 0.0 {
                    prop_assert_eq!(a[t], 0.0);
                } else {
                    let suffix: f32 = (t..n).filter(|&j| mask[j] > 0.0).map(|j| r[j]).sum();
                    prop_assert!(close(a[t] as f64, suffix as f64, 1e-5));
                }
            }
        }

        #[test]
        fn whitening_gives_mean_zero_variance_one(x in prop::collection::vec(-50.0f32..50.0, 3..20),
                                                  m in prop::collection::vec(any::<bool>(), 20)) {
            let n = x.len();
            let mut mask: Vec<f32> = m[..n].iter().map(|&b| b as u8 as f32).collect();
            mask[0] = 1.0;
            mask[1] = 1.0;
            let valid: Vec<f32> = x.iter().zip(&mask).filter(|(_, m)| **m > 0.0).map(|(x, _)| *x).collect();
            let spread = valid.iter().cloned().fold(f32::MIN, f32::max) - valid.iter().cloned().fold(f32::MAX, f32::min);
            prop_assume!(spread > 1e-2);
            let w = whiten(&x, &mask);
            let vw: Vec<f64> = w.iter().zip(&mask).filter(|(_, m)| **m > 0.0).map(|(x, _)| *x as f64).collect();
            let mean = vw.iter().sum::<f64>() / vw.len() as f64;
            let var = vw.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / vw.len() as f64;
            prop_assert!(mean.abs() < 1e-4 && (var - 1.0).abs() < 1e-3, "{mean} {var}");
            prop_assert!(w.iter().zip(&mask).all(|(x, m)| *m > 0.0 || *x == 0.0));
        }

        #[test]
        fn rloo_advantages_sum_to_zero_and_ignore_shifts(r in prop::collection::vec(-3.0f32..3.0, 12),
                                                         k in 2usize..5, shift in -10.0f32..10.0) {
            let n = (12 / k) * k;
            let r = &r[..n];
            let a = rloo_advantages(r, k).unwrap();
            for g in a.chunks(k) {
                prop_assert!(g.iter().map(|&x| x as f64).sum::<f64>().abs() < 1e-4);
            }
            let shifted: Vec<f32> = r.iter().map(|x| x + shift).collect();
            let b = rloo_advantages(&shifted, k).unwrap();
            for (x, y) in a.iter().zip(&b) {
                prop_assert!((x - y).abs() < 1e-4);
            }
        }

        #[test]
        fn rloo_with_two_samples_is_the_difference(r1 in -3.0f32..3.0, r2 in -3.0f32..3.0) {
            let a = rloo_advantages(&[r1, r2], 2).unwrap();
            prop_assert!((a[0] - (r1 - r2)).abs() < 1e-5 && (a[1] + a[0]).abs() < 1e-6);
        }

        #[test]
        fn bradley_terry_ignores_a_shared_shift(c in prop::collection::vec(-3.0f32..3.0, 1..6),
                                                r in prop::collection::vec(-3.0f32..3.0, 6),
                                                shift in -20.0f32..20.0) {
            let d = crate::device::test_device();
            let r = &r[..c.len()];
            let loss = |s: f32| {
                let cs: Vec<f32> = c.iter().map(|x| x + s).collect();
                let rs: Vec<f32> = r.iter().map(|x| x + s).collect();
                let b = TensorMap::new().with("chosen", t1(&cs, &d)).with("rejected", t1(&rs, &d));
                scalar(BradleyTerry.loss(&b).unwrap().loss)
            };
            prop_assert!(close(loss(0.0), loss(shift), 1e-4));
            // And it is −log σ of the margin, by definition.
            let direct = c.iter().zip(r).map(|(a, b)| (1.0 + (-(a - b) as f64).exp()).ln()).sum::<f64>() / c.len() as f64;
            prop_assert!(close(loss(0.0), direct, 1e-4));
        }
    }

    #[test]
    fn kl_penalty_on_every_token_and_the_score_at_the_last() {
        let r = kl_penalised_rewards(
            2.0,
            &[-1.0, -2.0, -0.5, 9.0],
            &[-1.5, -1.0, -0.5, 9.0],
            &[1.0, 1.0, 1.0, 0.0],
            0.1,
        );
        let want = [-0.05, 0.1, 2.0, 0.0];
        for (a, b) in r.iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{r:?}");
        }
    }

    #[test]
    fn clipped_value_loss_by_hand() {
        let d = crate::device::test_device();
        let b = TensorMap::new()
            .with("values", t2(&[1.0, 0.0], 1, 2, &d))
            .with("old_values", t2(&[0.0, 0.0], 1, 2, &d))
            .with("returns", t2(&[1.0, 3.0], 1, 2, &d))
            .with("mask", t2(&[1.0, 1.0], 1, 2, &d));
        // Token 1: max(0, (0.2 − 1)²) = 0.64; token 2: max(9, 9) = 9. ½·mean = 2.41.
        let l = scalar(ClippedValue { clip: 0.2 }.loss(&b).unwrap().loss);
        assert!((l - 2.41).abs() < 1e-5, "{l}");
    }

    #[test]
    fn rloo_loss_at_ratio_one_is_minus_the_mean_advantage() {
        let d = crate::device::test_device();
        let b = TensorMap::new()
            .with("logprobs", t1(&[-3.0, -1.0], &d))
            .with("old_logprobs", t1(&[-3.0, -1.0], &d))
            .with("advantages", t1(&[1.0, -3.0], &d));
        assert!((scalar(Rloo { clip: 0.2 }.loss(&b).unwrap().loss) - 1.0).abs() < 1e-6);
    }
}
