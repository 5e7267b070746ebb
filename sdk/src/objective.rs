//! The [`Objective`] trait: a loss as a pure function of tensors.

use burn::tensor::Tensor;

use crate::TensorMap;

/// A scalar loss and the named numbers worth logging with it.
#[derive(Clone, Debug)]
pub struct LossOutput {
    /// The loss, shape `[1]`; differentiable when its inputs are.
    pub loss: Tensor<1>,
    /// Named metrics (already reduced to numbers), logged to `metrics.jsonl`.
    pub metrics: Vec<(String, f64)>,
}

/// A loss as a pure function from the tensors a trainer hands it (policy log-probs, reference
/// log-probs, rewards, values, masks, predictions, targets) to a scalar and named metrics.
///
/// Objectives hold only hyper-parameters, never models: that keeps every loss
/// property-testable against its formula, and adding a loss never means copying a trainer.
///
/// # Example
///
/// ```
/// use lmlab_sdk::{LossOutput, Objective, TensorMap};
/// use lmlab_sdk::burn::tensor::{Device, Tensor};
///
/// /// Mean absolute error between `prediction` and `target`.
/// struct Mae;
///
/// impl Objective for Mae {
///     fn inputs(&self) -> &[&'static str] {
///         &["prediction", "target"]
///     }
///     fn loss(&self, batch: &TensorMap) -> anyhow::Result<LossOutput> {
///         let diff = batch.float2("prediction")? - batch.float2("target")?;
///         let loss = diff.abs().mean();
///         let value = loss.clone().into_scalar::<f32>();
///         Ok(LossOutput { loss, metrics: vec![("mae".into(), value as f64)] })
///     }
/// }
///
/// let device = Device::flex();
/// let batch = TensorMap::new()
///     .with("prediction", Tensor::<2>::from_floats([[1.0], [2.0]], &device))
///     .with("target", Tensor::<2>::from_floats([[0.0], [4.0]], &device));
/// let out = Mae.loss(&batch).unwrap();
/// assert_eq!(out.loss.into_scalar::<f32>(), 1.5);
/// ```
pub trait Objective: Send + Sync {
    /// The names of the tensors [`loss`](Self::loss) reads, for error messages and wiring.
    fn inputs(&self) -> &[&'static str];

    /// The loss of one batch.
    fn loss(&self, batch: &TensorMap) -> anyhow::Result<LossOutput>;
}
