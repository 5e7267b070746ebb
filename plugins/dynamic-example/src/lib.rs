//! A plugin loaded at run time: `lmlab --plugin target/debug/liblmlab_plugin_dynamic_example.so`.
//!
//! It registers the task `sum-regression` (targets are the sum of the inputs), which the
//! built-in `supervised` scheduler can fit like any task. It is deliberately *not* linked into
//! the `lmlab` runner: the only way the runner knows it is by loading the library.

use lmlab_sdk::components::regression::{RegressionExample, RegressionTask, normal};
use lmlab_sdk::registry::ConfigError;
use lmlab_sdk::rng::rng;
use lmlab_sdk::{Split, Task};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Configuration of `sum-regression`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct SumConfig {
    /// Input dimension.
    pub dim: usize,
    /// Examples per split.
    pub n: usize,
}

impl Default for SumConfig {
    fn default() -> Self {
        Self { dim: 4, n: 256 }
    }
}

/// `y = Σ xᵢ` with `x ~ N(0, I)`; a prediction is correct within 0.1.
pub struct SumRegression {
    config: SumConfig,
    seed: u64,
}

impl Task for SumRegression {
    type Problem = RegressionExample;
    type Output = f32;

    fn problems(&self, split: Split) -> anyhow::Result<Vec<RegressionExample>> {
        let stream = match split {
            Split::Train => 21,
            Split::Validation => 22,
            Split::Test => 23,
        };
        let mut r = rng(self.seed, stream);
        Ok((0..self.config.n)
            .map(|_| {
                let x: Vec<f32> = (0..self.config.dim).map(|_| normal(&mut r)).collect();
                RegressionExample {
                    y: x.iter().sum(),
                    x,
                }
            })
            .collect())
    }

    fn check(&self, problem: &RegressionExample, output: &f32) -> bool {
        (problem.y - output).abs() <= 0.1
    }
}

lmlab_sdk::register_component! {
    kind: Task,
    name: "sum-regression",
    description: "y = sum of the inputs (a dynamically loaded example task)",
    config: SumConfig,
    build: |config: SumConfig, ctx| {
        if config.dim == 0 || config.n == 0 {
            return Err(ConfigError { field: None, message: "dim and n must be at least 1".into() }.into());
        }
        Ok(Box::new(SumRegression { config, seed: ctx.seed }) as Box<RegressionTask>)
    },
}

lmlab_sdk::export_plugin!();
