//! Objective `cross-entropy`: multi-class classification from logits.

use burn::tensor::activation::log_softmax;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{LossOutput, Objective, TensorMap};

/// `cross-entropy` has no settings.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CrossEntropyConfig {}

/// Cross-entropy on logits: inputs `logits` `[B, C]` and `labels` `[B]` (integers in
/// `0..C`); `L = −mean_b log softmax(z_b)[y_b]`. Metrics: `loss`, `accuracy` (argmax against
/// the label).
pub struct CrossEntropy;

impl Objective for CrossEntropy {
    fn inputs(&self) -> &[&'static str] {
        &["logits", "labels"]
    }

    fn loss(&self, batch: &TensorMap) -> anyhow::Result<LossOutput> {
        let z = batch.float2("logits")?;
        let y = batch.int1("labels")?;
        let [b, c] = z.dims();
        anyhow::ensure!(
            b > 0 && c > 0 && y.dims() == [b],
            "`logits` {:?} must be [B, C] with B, C > 0 and `labels` {:?} must be [B]",
            z.dims(),
            y.dims()
        );
        let labels: Vec<i64> = y.clone().into_data().convert::<i64>().try_to_vec::<i64>()?;
        if let Some(bad) = labels.iter().find(|&&l| l < 0 || l as usize >= c) {
            anyhow::bail!("label {bad} is outside 0..{c}");
        }
        let picked = log_softmax(z.clone(), 1).gather(1, y.clone().unsqueeze_dim(1));
        let loss = (-picked.mean()).reshape([1]);
        let accuracy = z.argmax(1).squeeze_dim::<1>(1).equal(y).float().mean();
        Ok(LossOutput::reporting(loss, "loss").with_metric("accuracy", accuracy))
    }
}

crate::register_component! {
    kind: Objective,
    name: "cross-entropy",
    description: "multi-class cross-entropy on logits: −mean log softmax(z)[y]",
    config: CrossEntropyConfig,
    build: |_config: CrossEntropyConfig, _ctx| Ok(Box::new(CrossEntropy) as Box<dyn Objective>),
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Int, Tensor, TensorData};
    use proptest::prelude::*;

    fn inputs(z: &[f32], c: usize, y: &[i64]) -> TensorMap {
        let d = crate::device::test_device();
        TensorMap::new()
            .with(
                "logits",
                Tensor::<2>::from_data(TensorData::new(z.to_vec(), [y.len(), c]), &d),
            )
            .with(
                "labels",
                Tensor::<1, Int>::from_data(TensorData::new(y.to_vec(), [y.len()]), &d),
            )
    }

    proptest! {
        #[test]
        fn matches_the_definition_and_ignores_a_shift_per_row(
            rows in proptest::collection::vec((proptest::collection::vec(-8.0f32..8.0, 4), 0i64..4, -50.0f32..50.0), 1..6),
        ) {
            let c = 4;
            let z: Vec<f32> = rows.iter().flat_map(|r| r.0.clone()).collect();
            let shifted: Vec<f32> = rows.iter().flat_map(|r| r.0.iter().map(|v| v + r.2).collect::<Vec<_>>()).collect();
            let y: Vec<i64> = rows.iter().map(|r| r.1).collect();
            let want = rows.iter().map(|(z, y, _)| {
                let lse = z.iter().map(|&v| (v as f64).exp()).sum::<f64>().ln();
                lse - z[*y as usize] as f64
            }).sum::<f64>() / rows.len() as f64;
            let got = CrossEntropy.loss(&inputs(&z, c, &y)).unwrap();
            let l = got.loss.into_scalar::<f32>() as f64;
            prop_assert!((l - want).abs() < 1e-4 * (1.0 + want.abs()), "{l} vs {want}");
            let l2 = CrossEntropy.loss(&inputs(&shifted, c, &y)).unwrap().loss.into_scalar::<f32>() as f64;
            prop_assert!((l2 - want).abs() < 1e-3 * (1.0 + want.abs()), "shifted {l2} vs {want}");
        }
    }

    #[test]
    fn uniform_logits_cost_log_c_and_labels_out_of_range_are_errors() {
        let out = CrossEntropy.loss(&inputs(&[0.0; 10], 10, &[3])).unwrap();
        assert!((out.loss.into_scalar::<f32>() - 10f32.ln()).abs() < 1e-6);
        let err = CrossEntropy
            .loss(&inputs(&[0.0; 4], 4, &[4]))
            .err()
            .unwrap();
        assert!(err.to_string().contains("outside"), "{err}");
    }

    #[test]
    fn accuracy_counts_argmax_hits() {
        let out = CrossEntropy
            .loss(&inputs(&[2.0, 0.0, 0.0, 1.0], 2, &[0, 0]))
            .unwrap();
        assert_eq!(out.metric("accuracy"), Some(0.5));
    }
}
