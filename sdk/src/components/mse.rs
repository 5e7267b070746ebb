//! Objective `mse`.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{LossOutput, Objective, TensorMap};

/// `mse` has no settings.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MseConfig {}

/// Mean squared error: `mean((prediction − target)²)` over every element of the
/// `[batch, outputs]` tensors `prediction` and `target`.
pub struct Mse;

impl Objective for Mse {
    fn inputs(&self) -> &[&'static str] {
        &["prediction", "target"]
    }

    fn loss(&self, batch: &TensorMap) -> anyhow::Result<LossOutput> {
        let prediction = batch.float2("prediction")?;
        let target = batch.float2("target")?;
        anyhow::ensure!(
            prediction.dims() == target.dims(),
            "prediction {:?} and target {:?} differ in shape",
            prediction.dims(),
            target.dims()
        );
        let loss = (prediction - target).powi_scalar(2).mean();
        Ok(LossOutput::reporting(loss, "mse"))
    }
}

crate::register_component! {
    kind: Objective,
    name: "mse",
    description: "mean squared error between `prediction` and `target`",
    config: MseConfig,
    build: |_config: MseConfig, _ctx| Ok(Box::new(Mse) as Box<dyn Objective>),
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Tensor, TensorData};
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn matches_the_definition(values in proptest::collection::vec((-100f32..100.0, -100f32..100.0), 1..40)) {
            let device = crate::device::test_device();
            let n = values.len();
            let p: Vec<f32> = values.iter().map(|v| v.0).collect();
            let t: Vec<f32> = values.iter().map(|v| v.1).collect();
            let expected = values.iter().map(|(a, b)| ((a - b) as f64).powi(2)).sum::<f64>() / n as f64;
            let batch = TensorMap::new()
                .with("prediction", Tensor::<2>::from_data(TensorData::new(p, [n, 1]), &device))
                .with("target", Tensor::<2>::from_data(TensorData::new(t, [n, 1]), &device));
            let out = Mse.loss(&batch).unwrap();
            let got = out.loss.into_scalar::<f32>() as f64;
            prop_assert!((got - expected).abs() <= 1e-4 * expected.max(1.0), "{got} vs {expected}");
        }
    }

    #[test]
    fn missing_or_mismatched_inputs_are_errors() {
        let device = crate::device::test_device();
        let e = Mse.loss(&TensorMap::new()).unwrap_err().to_string();
        assert!(e.contains("no tensor `prediction`"), "{e}");
        let batch = TensorMap::new()
            .with("prediction", Tensor::<2>::zeros([2, 1], &device))
            .with("target", Tensor::<2>::zeros([3, 1], &device));
        assert!(Mse.loss(&batch).is_err());
    }
}
