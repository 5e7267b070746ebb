//! Named tensors: what a trainer hands an [`Objective`](crate::Objective).

use std::collections::BTreeMap;

use anyhow::{Context, anyhow};
use burn::tensor::{Int, Tensor};

/// A tensor of rank 1 to 3, float or integer: one entry of a [`TensorMap`].
#[derive(Clone, Debug)]
pub enum AnyTensor {
    F1(Tensor<1>),
    F2(Tensor<2>),
    F3(Tensor<3>),
    I1(Tensor<1, Int>),
    I2(Tensor<2, Int>),
}

macro_rules! any_tensor_from {
    ($($variant:ident => $ty:ty),*) => {$(
        impl From<$ty> for AnyTensor {
            fn from(t: $ty) -> Self {
                AnyTensor::$variant(t)
            }
        }
    )*};
}
any_tensor_from!(F1 => Tensor<1>, F2 => Tensor<2>, F3 => Tensor<3>, I1 => Tensor<1, Int>, I2 => Tensor<2, Int>);

impl AnyTensor {
    fn describe(&self) -> &'static str {
        match self {
            AnyTensor::F1(_) => "a float tensor of rank 1",
            AnyTensor::F2(_) => "a float tensor of rank 2",
            AnyTensor::F3(_) => "a float tensor of rank 3",
            AnyTensor::I1(_) => "an integer tensor of rank 1",
            AnyTensor::I2(_) => "an integer tensor of rank 2",
        }
    }
}

/// Tensors by name, e.g. `"logprobs"`, `"ref_logprobs"`, `"mask"`, `"rewards"`,
/// `"prediction"`, `"target"`. Objectives read what they declare in
/// [`Objective::inputs`](crate::Objective::inputs); a missing or mis-shaped entry is an error
/// that names it.
#[derive(Clone, Debug, Default)]
pub struct TensorMap {
    entries: BTreeMap<String, AnyTensor>,
}

macro_rules! getter {
    ($name:ident, $variant:ident, $ty:ty, $what:literal) => {
        #[doc = concat!("The entry `name` as ", $what, ".")]
        pub fn $name(&self, name: &str) -> anyhow::Result<$ty> {
            match self.get(name)? {
                AnyTensor::$variant(t) => Ok(t.clone()),
                other => Err(anyhow!(
                    "tensor `{name}` is {}, expected {}",
                    other.describe(),
                    $what
                )),
            }
        }
    };
}

impl TensorMap {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) an entry; returns `self` for chaining.
    pub fn with(mut self, name: impl Into<String>, tensor: impl Into<AnyTensor>) -> Self {
        self.insert(name, tensor);
        self
    }

    /// Adds (or replaces) an entry.
    pub fn insert(&mut self, name: impl Into<String>, tensor: impl Into<AnyTensor>) {
        self.entries.insert(name.into(), tensor.into());
    }

    /// Whether an entry exists.
    pub fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    /// Entry names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    /// The raw entry.
    pub fn get(&self, name: &str) -> anyhow::Result<&AnyTensor> {
        self.entries.get(name).with_context(|| {
            format!(
                "no tensor `{name}` in the objective's inputs (have: {})",
                self.entries.keys().cloned().collect::<Vec<_>>().join(", ")
            )
        })
    }

    getter!(float1, F1, Tensor<1>, "a float tensor of rank 1");
    getter!(float2, F2, Tensor<2>, "a float tensor of rank 2");
    getter!(float3, F3, Tensor<3>, "a float tensor of rank 3");
    getter!(int1, I1, Tensor<1, Int>, "an integer tensor of rank 1");
    getter!(int2, I2, Tensor<2, Int>, "an integer tensor of rank 2");
}
/// A `[n]` float tensor of `values` on `device`.
pub fn t1(values: Vec<f32>, device: &burn::tensor::Device) -> Tensor<1> {
    let n = values.len();
    Tensor::from_data(burn::tensor::TensorData::new(values, [n]), device)
}

/// A `[rows, cols]` float tensor of row-major `values` on `device`.
pub fn t2(values: Vec<f32>, rows: usize, cols: usize, device: &burn::tensor::Device) -> Tensor<2> {
    Tensor::from_data(burn::tensor::TensorData::new(values, [rows, cols]), device)
}
