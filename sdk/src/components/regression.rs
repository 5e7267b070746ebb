//! Task `linear-regression`: generated regression data with a known optimum.

use rand::Rng as _;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::registry::ConfigError;
use crate::rng::{Rng, rng};
use crate::{Split, Task};

/// One regression example.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RegressionExample {
    pub x: Vec<f32>,
    pub y: f32,
}

/// A task whose problems are regression examples and whose outputs are predictions.
pub type RegressionTask = dyn Task<Problem = RegressionExample, Output = f32>;

/// Configuration of `linear-regression`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct LinearRegressionConfig {
    /// Input dimension.
    pub dim: usize,
    /// Training examples.
    pub n_train: usize,
    /// Validation examples.
    pub n_validation: usize,
    /// Test examples.
    pub n_test: usize,
    /// Standard deviation of the Gaussian noise added to targets.
    pub noise: f32,
    /// A prediction is correct when within this distance of the target.
    pub tolerance: f32,
}

impl Default for LinearRegressionConfig {
    fn default() -> Self {
        Self {
            dim: 8,
            n_train: 1024,
            n_validation: 256,
            n_test: 512,
            noise: 0.1,
            tolerance: 0.25,
        }
    }
}

/// `y = w·x + b + noise·ε` with `x, w, ε ~ N(0, 1)` and `b ~ N(0, 1)`, all drawn from the
/// seed: the same seed gives the same weights and splits.
pub struct LinearRegression {
    config: LinearRegressionConfig,
    weights: Vec<f32>,
    bias: f32,
    seed: u64,
}

/// A standard normal draw (Box–Muller).
pub fn normal(r: &mut Rng) -> f32 {
    let u1: f64 = r.random::<f64>().max(f64::MIN_POSITIVE);
    let u2: f64 = r.random();
    ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
}

impl LinearRegression {
    /// The task for `config` and `seed`; refuses empty dimensions or splits.
    pub fn new(config: LinearRegressionConfig, seed: u64) -> Result<Self, ConfigError> {
        for (field, v, max) in [
            ("dim", config.dim, 1 << 16),
            ("n_train", config.n_train, 10_000_000),
            ("n_validation", config.n_validation.max(1), 10_000_000),
            ("n_test", config.n_test, 10_000_000),
        ] {
            if v == 0 || v > max {
                return Err(ConfigError {
                    field: Some(field.into()),
                    message: format!("must be between 1 and {max} (got {v})"),
                });
            }
        }
        if !(config.noise >= 0.0 && config.noise.is_finite()) {
            return Err(ConfigError {
                field: Some("noise".into()),
                message: "must be a finite number ≥ 0".into(),
            });
        }
        let mut r = rng(seed, 10);
        let weights = (0..config.dim).map(|_| normal(&mut r)).collect();
        let bias = normal(&mut r);
        Ok(Self {
            config,
            weights,
            bias,
            seed,
        })
    }

    /// The true weights and bias.
    pub fn truth(&self) -> (&[f32], f32) {
        (&self.weights, self.bias)
    }
}

impl Task for LinearRegression {
    type Problem = RegressionExample;
    type Output = f32;

    fn problems(&self, split: Split) -> anyhow::Result<Vec<RegressionExample>> {
        let (n, stream) = match split {
            Split::Train => (self.config.n_train, 11),
            Split::Validation => (self.config.n_validation, 12),
            Split::Test => (self.config.n_test, 13),
        };
        let mut r = rng(self.seed, stream);
        Ok((0..n)
            .map(|_| {
                let x: Vec<f32> = (0..self.config.dim).map(|_| normal(&mut r)).collect();
                let clean: f32 =
                    x.iter().zip(&self.weights).map(|(a, b)| a * b).sum::<f32>() + self.bias;
                RegressionExample {
                    y: clean + self.config.noise * normal(&mut r),
                    x,
                }
            })
            .collect())
    }

    fn check(&self, problem: &RegressionExample, output: &f32) -> bool {
        (problem.y - output).abs() <= self.config.tolerance
    }
}

/// The ordinary-least-squares fit `(w, b)` of `examples` (normal equations, solved by
/// Gaussian elimination with partial pivoting in f64).
pub fn least_squares(examples: &[RegressionExample]) -> Option<(Vec<f64>, f64)> {
    let d = examples.first()?.x.len() + 1;
    // A = Σ z zᵀ, c = Σ z y with z = (x, 1).
    let mut a = vec![vec![0.0f64; d + 1]; d];
    for e in examples {
        let z: Vec<f64> = e.x.iter().map(|&v| v as f64).chain([1.0]).collect();
        for i in 0..d {
            for j in 0..d {
                a[i][j] += z[i] * z[j];
            }
            a[i][d] += z[i] * e.y as f64;
        }
    }
    for col in 0..d {
        let pivot = (col..d).max_by(|&i, &j| a[i][col].abs().total_cmp(&a[j][col].abs()))?;
        if a[pivot][col].abs() < 1e-12 {
            return None;
        }
        a.swap(col, pivot);
        for row in 0..d {
            if row != col {
                let f = a[row][col] / a[col][col];
                for k in col..=d {
                    a[row][k] -= f * a[col][k];
                }
            }
        }
    }
    let sol: Vec<f64> = (0..d).map(|i| a[i][d] / a[i][i]).collect();
    Some((sol[..d - 1].to_vec(), sol[d - 1]))
}

/// Mean squared error of the linear predictor `(w, b)` on `examples`.
pub fn linear_mse(w: &[f64], b: f64, examples: &[RegressionExample]) -> f64 {
    examples
        .iter()
        .map(|e| {
            let p: f64 = e.x.iter().zip(w).map(|(x, w)| *x as f64 * w).sum::<f64>() + b;
            (p - e.y as f64).powi(2)
        })
        .sum::<f64>()
        / examples.len().max(1) as f64
}

crate::register_component! {
    kind: Task,
    name: "linear-regression",
    description: "generated y = w·x + b + noise regression data (SDK self-test; known optimum)",
    config: LinearRegressionConfig,
    build: |config: LinearRegressionConfig, ctx| {
        let task: Box<RegressionTask> = Box::new(LinearRegression::new(config, ctx.seed)?);
        Ok(task)
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn least_squares_recovers_noiseless_weights() {
        let cfg = LinearRegressionConfig {
            dim: 5,
            noise: 0.0,
            n_train: 64,
            ..Default::default()
        };
        let task = LinearRegression::new(cfg, 3).unwrap();
        let (w, b) = least_squares(&task.problems(Split::Train).unwrap()).unwrap();
        let (tw, tb) = task.truth();
        for (a, t) in w.iter().zip(tw) {
            assert!((a - *t as f64).abs() < 1e-3, "{a} vs {t}");
        }
        assert!((b - tb as f64).abs() < 1e-3);
    }

    #[test]
    fn splits_are_deterministic_and_distinct() {
        let t = LinearRegression::new(LinearRegressionConfig::default(), 1).unwrap();
        assert_eq!(
            t.problems(Split::Test).unwrap(),
            t.problems(Split::Test).unwrap()
        );
        assert_ne!(
            t.problems(Split::Test).unwrap()[0],
            t.problems(Split::Train).unwrap()[0]
        );
        let p = &t.problems(Split::Test).unwrap()[0];
        assert!(t.check(p, &(p.y + 0.2)));
        assert!(!t.check(p, &(p.y + 0.3)));
    }

    #[test]
    fn empty_dimension_is_a_config_error() {
        let cfg = LinearRegressionConfig {
            dim: 0,
            ..Default::default()
        };
        let e = LinearRegression::new(cfg, 0).err().unwrap();
        assert_eq!(e.field.as_deref(), Some("dim"));
    }
}
