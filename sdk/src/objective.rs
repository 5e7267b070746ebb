//! The [`Objective`] trait: a loss as a pure function of tensors.

use burn::tensor::Tensor;

use crate::TensorMap;

/// A scalar loss and the named numbers worth logging with it.
///
/// Metrics stay tensors (shape `[1]`) until they are logged: reading a value on the host is a
/// device sync, which the [fit loop](crate::fit::fit) does once every few steps for all of
/// them together.
#[derive(Clone, Debug)]
pub struct LossOutput {
    /// The loss, shape `[1]`; differentiable when its inputs are.
    pub loss: Tensor<1>,
    /// Named metrics, each a `[1]` tensor, logged to `metrics.jsonl`.
    pub metrics: Vec<(String, Tensor<1>)>,
}

impl LossOutput {
    /// A loss without metrics.
    pub fn new(loss: Tensor<1>) -> Self {
        Self {
            loss,
            metrics: Vec::new(),
        }
    }

    /// With one more metric (detached from the graph).
    pub fn with_metric(mut self, name: impl Into<String>, value: Tensor<1>) -> Self {
        self.metrics
            .push((name.into(), value.detach().reshape([1])));
        self
    }

    /// With these metrics appended.
    pub fn with_metrics(mut self, metrics: Vec<(String, Tensor<1>)>) -> Self {
        self.metrics.extend(metrics);
        self
    }

    /// The loss with itself as the metric `name`: the common case.
    pub fn reporting(loss: Tensor<1>, name: &str) -> Self {
        Self::new(loss.clone()).with_metric(name, loss)
    }

    /// The value of metric `name`, read on the host (tests and one-off reports; a trainer lets
    /// the fit loop read them).
    pub fn metric(&self, name: &str) -> Option<f64> {
        self.metrics
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, t)| t.clone().into_scalar::<f32>() as f64)
    }
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
///         Ok(LossOutput::reporting(diff.abs().mean(), "mae"))
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
