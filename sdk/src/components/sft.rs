//! Objective `sft`: masked negative log-likelihood of response tokens.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{LossOutput, Objective, TensorMap};

/// `sft` has no settings.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SftConfig {}

/// `−Σ mask·logprobs / Σ mask` over a batch: the mean NLL of the response tokens, where
/// `logprobs` `[B, T]` are the policy's per-token log-probs of the targets and `mask` `[B, T]`
/// is 1 on response tokens and 0 on prompt and padding positions (whose values are ignored).
pub struct Sft;

impl Objective for Sft {
    fn inputs(&self) -> &[&'static str] {
        &["logprobs", "mask"]
    }

    fn loss(&self, batch: &TensorMap) -> anyhow::Result<LossOutput> {
        let lp = batch.float2("logprobs")?;
        let mask = batch.float2("mask")?;
        anyhow::ensure!(
            lp.dims() == mask.dims(),
            "logprobs {:?} and mask {:?} differ in shape",
            lp.dims(),
            mask.dims()
        );
        // An empty mask gives a NaN loss, which the fit loop reports with its step; the LM
        // batching (`lm::fit::sft_loss`) refuses batches without response tokens up front.
        let count = mask.clone().sum();
        // mask_fill keeps masked-out values (even NaN or −inf) out of the sum.
        let selected = lp.mask_fill(mask.equal_elem(0.0), 0.0);
        let loss = -(selected.sum() / count.clone());
        Ok(LossOutput::reporting(loss, "nll").with_metric("tokens", count))
    }
}

crate::register_component! {
    kind: Objective,
    name: "sft",
    description: "masked NLL of response tokens (prompt and padding ignored)",
    config: SftConfig,
    build: |_config: SftConfig, _ctx| Ok(Box::new(Sft) as Box<dyn Objective>),
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Tensor, TensorData};
    use proptest::prelude::*;

    fn t2(v: Vec<f32>, r: usize, c: usize) -> Tensor<2> {
        Tensor::from_data(TensorData::new(v, [r, c]), &crate::device::test_device())
    }

    proptest! {
        #[test]
        fn masked_positions_change_nothing(
            rows in 1usize..4, cols in 1usize..8,
            seed in prop::collection::vec((-10f32..0.0, any::<bool>(), -1e6f32..0.0), 32),
        ) {
            let n = rows * cols;
            let lp: Vec<f32> = (0..n).map(|i| seed[i % 32].0).collect();
            let mut mask: Vec<f32> = (0..n).map(|i| seed[i % 32].1 as u8 as f32).collect();
            mask[0] = 1.0;
            let expected = -lp.iter().zip(&mask).map(|(l, m)| (l * m) as f64).sum::<f64>() / mask.iter().sum::<f32>() as f64;
            let other: Vec<f32> = lp.iter().zip(&mask).enumerate().map(|(i, (l, m))| if *m == 0.0 { seed[(i + 7) % 32].2 } else { *l }).collect();
            let a = Sft.loss(&TensorMap::new().with("logprobs", t2(lp, rows, cols)).with("mask", t2(mask.clone(), rows, cols))).unwrap();
            let b = Sft.loss(&TensorMap::new().with("logprobs", t2(other, rows, cols)).with("mask", t2(mask, rows, cols))).unwrap();
            let (a, b) = (a.loss.into_scalar::<f32>() as f64, b.loss.into_scalar::<f32>() as f64);
            prop_assert!((a - expected).abs() <= 1e-4 * expected.abs().max(1.0));
            prop_assert_eq!(a, b);
        }
    }

    #[test]
    fn an_empty_mask_gives_a_nan_loss_for_the_fit_loop_to_report() {
        // No host read inside the loss: the fit loop's finite check names the step instead.
        let out = Sft
            .loss(
                &TensorMap::new()
                    .with("logprobs", t2(vec![-1.0; 4], 2, 2))
                    .with("mask", t2(vec![0.0; 4], 2, 2)),
            )
            .unwrap();
        assert!(out.loss.into_scalar::<f32>().is_nan());
    }
}
