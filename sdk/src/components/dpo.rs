//! Objectives `dpo` (Direct Preference Optimisation, Rafailov et al., 2023) and `bce` (binary
//! cross-entropy on logits, the outcome-supervised reward model's loss).

use burn::tensor::Tensor;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{LossOutput, Objective, TensorMap};

/// `softplus(x) = log(1 + eˣ)`, computed as `max(x, 0) + log1p(e^{−|x|})` so it is finite and
/// exact for any finite `x` (no overflow at large `|x|`).
pub fn softplus(x: Tensor<1>) -> Tensor<1> {
    x.clone().clamp_min(0.0) + x.abs().neg().exp().log1p()
}

/// Configuration of `dpo`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct DpoConfig {
    /// β: the strength of the implicit KL penalty towards the reference.
    pub beta: f32,
}

impl Default for DpoConfig {
    fn default() -> Self {
        Self { beta: 0.1 }
    }
}

/// The DPO loss over a batch of preference pairs, from the sequence log-probabilities (sums over
/// response tokens) of the chosen `y⁺` and rejected `y⁻` responses under the policy and the
/// frozen reference (inputs `policy_chosen`, `policy_rejected`, `reference_chosen`,
/// `reference_rejected`, each `[B]`):
///
/// ```text
/// Δ = (log π(y⁺|x) − log π_ref(y⁺|x)) − (log π(y⁻|x) − log π_ref(y⁻|x))
/// L = mean_B  −log σ(β Δ) = mean_B softplus(−β Δ)
/// ```
///
/// Metrics: `loss`, `accuracy` (fraction with Δ > 0) and `margin` (mean βΔ).
pub struct Dpo {
    pub beta: f32,
}

impl Dpo {
    /// `Δ` of each pair, `[B]`.
    pub fn delta(batch: &TensorMap) -> anyhow::Result<Tensor<1>> {
        let pc = batch.float1("policy_chosen")?;
        let pr = batch.float1("policy_rejected")?;
        let rc = batch.float1("reference_chosen")?;
        let rr = batch.float1("reference_rejected")?;
        let n = pc.dims()[0];
        for (name, t) in [
            ("policy_rejected", &pr),
            ("reference_chosen", &rc),
            ("reference_rejected", &rr),
        ] {
            anyhow::ensure!(
                t.dims()[0] == n,
                "`{name}` has {} entries, `policy_chosen` {n}",
                t.dims()[0]
            );
        }
        anyhow::ensure!(n > 0, "an empty batch of preference pairs");
        Ok((pc - rc) - (pr - rr))
    }
}

impl Objective for Dpo {
    fn inputs(&self) -> &[&'static str] {
        &[
            "policy_chosen",
            "policy_rejected",
            "reference_chosen",
            "reference_rejected",
        ]
    }

    fn loss(&self, batch: &TensorMap) -> anyhow::Result<LossOutput> {
        let margin = Self::delta(batch)? * self.beta as f64;
        let loss = softplus(margin.clone().neg()).mean();
        let accuracy = margin.clone().greater_elem(0.0).float().mean();
        Ok(LossOutput::reporting(loss, "loss")
            .with_metric("accuracy", accuracy)
            .with_metric("margin", margin.mean()))
    }
}

crate::register_component! {
    kind: Objective,
    name: "dpo",
    description: "Direct Preference Optimisation: −log σ(β[(log π − log π_ref)(y⁺) − (log π − log π_ref)(y⁻)])",
    config: DpoConfig,
    build: |config: DpoConfig, _ctx| {
        if !(config.beta.is_finite() && config.beta > 0.0) {
            return Err(crate::registry::ConfigError { field: Some("beta".into()), message: "must be a positive number".into() }.into());
        }
        Ok(Box::new(Dpo { beta: config.beta }) as Box<dyn Objective>)
    },
}

/// `bce` has no settings.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BceConfig {}

/// Binary cross-entropy on logits: inputs `logits` and `labels` (0 or 1), each `[B]`;
/// `L = mean_B [softplus(z) − y·z]` (= −y log σ(z) − (1−y) log(1−σ(z)), stable at any `z`).
/// Metrics: `loss`, `accuracy` (sign of `z` against the label).
pub struct Bce;

impl Objective for Bce {
    fn inputs(&self) -> &[&'static str] {
        &["logits", "labels"]
    }

    fn loss(&self, batch: &TensorMap) -> anyhow::Result<LossOutput> {
        let z = batch.float1("logits")?;
        let y = batch.float1("labels")?;
        anyhow::ensure!(
            z.dims() == y.dims() && z.dims()[0] > 0,
            "`logits` {:?} and `labels` {:?} must be the same non-empty shape",
            z.dims(),
            y.dims()
        );
        let loss = (softplus(z.clone()) - z.clone() * y.clone()).mean();
        let accuracy = z.greater_elem(0.0).float().equal(y).float().mean();
        Ok(LossOutput::reporting(loss, "loss").with_metric("accuracy", accuracy))
    }
}

crate::register_component! {
    kind: Objective,
    name: "bce",
    description: "binary cross-entropy on logits (outcome-supervised reward models)",
    config: BceConfig,
    build: |_config: BceConfig, _ctx| Ok(Box::new(Bce) as Box<dyn Objective>),
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::TensorData;
    use proptest::prelude::*;

    fn t1(v: Vec<f32>) -> Tensor<1> {
        let n = v.len();
        Tensor::from_data(TensorData::new(v, [n]), &crate::device::test_device())
    }

    /// The loss of one pair given as the four log-probs.
    fn dpo(beta: f32, pc: f32, pr: f32, rc: f32, rr: f32) -> f64 {
        let batch = TensorMap::new()
            .with("policy_chosen", t1(vec![pc]))
            .with("policy_rejected", t1(vec![pr]))
            .with("reference_chosen", t1(vec![rc]))
            .with("reference_rejected", t1(vec![rr]));
        Dpo { beta }.loss(&batch).unwrap().loss.into_scalar::<f32>() as f64
    }

    /// The loss as a function of Δ alone.
    fn dpo_of_delta(beta: f32, delta: f32) -> f64 {
        dpo(beta, delta, 0.0, 0.0, 0.0)
    }

    proptest! {
        #[test]
        fn dpo_properties(
            beta in 0.01f32..2.0,
            pc in -200f32..0.0, pr in -200f32..0.0, rc in -200f32..0.0, rr in -200f32..0.0,
            c in -50f32..50.0,
        ) {
            let l = dpo(beta, pc, pr, rc, rr);
            prop_assert!(l >= 0.0 && l.is_finite());
            // Policy = reference: log 2.
            prop_assert!((dpo(beta, rc, rr, rc, rr) - std::f64::consts::LN_2).abs() < 1e-6);
            // Adding a constant to both policy log-probs changes nothing.
            let shifted = dpo(beta, pc + c, pr + c, rc, rr);
            prop_assert!((shifted - l).abs() <= 1e-4 * l.max(1.0), "{l} vs {shifted}");
        }

        #[test]
        fn dpo_as_a_function_of_delta(beta in 0.01f32..2.0, delta in -100f32..100.0, step in 0.01f32..10.0) {
            let (lp, lm) = (dpo_of_delta(beta, delta), dpo_of_delta(beta, -delta));
            // L(Δ) − L(−Δ) = −βΔ.
            let want = -(beta as f64) * delta as f64;
            prop_assert!((lp - lm - want).abs() <= 1e-5 * want.abs().max(1.0), "{} vs {want}", lp - lm);
            // Strictly decreasing (while the loss is not rounded to 0 in f32).
            let next = dpo_of_delta(beta, delta + step);
            if beta * (delta + step) < 15.0 {
                prop_assert!(next < lp, "L({}) = {next} ≥ L({delta}) = {lp}", delta + step);
            } else {
                prop_assert!(next <= lp);
            }
        }
    }

    #[test]
    fn dpo_is_finite_at_huge_margins() {
        for beta in [0.1f32, 1.0] {
            let big = dpo_of_delta(beta, 1e4);
            let small = dpo_of_delta(beta, -1e4);
            assert!(big.is_finite() && big >= 0.0 && big < 1e-6, "{big}");
            assert!(
                small.is_finite() && (small - beta as f64 * 1e4).abs() < 1.0,
                "{small}"
            );
        }
    }

    #[test]
    fn dpo_gradient_is_finite_at_huge_margins() {
        let device = crate::device::test_device().autodiff();
        let pc: Tensor<1> =
            Tensor::from_data(TensorData::new(vec![1e4f32, -1e4], [2]), &device).require_grad();
        let zeros = Tensor::<1>::zeros([2], &device);
        let batch = TensorMap::new()
            .with("policy_chosen", pc.clone())
            .with("policy_rejected", zeros.clone())
            .with("reference_chosen", zeros.clone())
            .with("reference_rejected", zeros);
        let loss = Dpo { beta: 1.0 }.loss(&batch).unwrap().loss;
        let grads = loss.backward();
        let g = pc
            .grad(&grads)
            .unwrap()
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        assert!(g.iter().all(|x| x.is_finite()), "{g:?}");
        assert!(g[0].abs() < 1e-6 && (g[1] + 0.5).abs() < 1e-5, "{g:?}");
    }

    #[test]
    fn mismatched_batches_are_errors() {
        let batch = TensorMap::new()
            .with("policy_chosen", t1(vec![0.0, 1.0]))
            .with("policy_rejected", t1(vec![0.0]))
            .with("reference_chosen", t1(vec![0.0, 1.0]))
            .with("reference_rejected", t1(vec![0.0, 1.0]));
        assert!(Dpo { beta: 0.1 }.loss(&batch).is_err());
    }

    proptest! {
        #[test]
        fn bce_matches_its_definition(z in -30f32..30.0, y in any::<bool>()) {
            let y = y as u8 as f32;
            let out = Bce.loss(&TensorMap::new().with("logits", t1(vec![z])).with("labels", t1(vec![y]))).unwrap();
            let got = out.loss.into_scalar::<f32>() as f64;
            let s = 1.0 / (1.0 + (-(z as f64)).exp());
            let want = -(y as f64) * s.ln() - (1.0 - y as f64) * (1.0 - s).ln();
            prop_assert!((got - want).abs() <= 1e-4 * want.max(1.0), "{got} vs {want}");
        }
    }
}
