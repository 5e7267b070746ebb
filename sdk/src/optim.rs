//! AdamW as one fused pass over all parameters, with global-norm gradient clipping in the same
//! pass: what PyTorch's multi-tensor (`foreach`) AdamW and `clip_grad_norm_` do, for models on
//! the default `cpu` backend (burn's `flex`, see [`host_device`]). Each parameter's update reads its
//! value, gradient and two moments once and writes them once, on every core, where burn's
//! per-parameter AdamW runs about ten tensor ops. The arithmetic is burn's `AdamW`, operation
//! for operation in `f32`, so the two agree to rounding (a property test holds them to 1e-6).

use std::collections::HashMap;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::{DType, Device, Tensor, TensorData};
use rayon::prelude::*;

/// AdamW's constants (as burn's `AdamWConfig`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWSettings {
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
}

/// One parameter's moments and its step count.
#[derive(Clone, Debug, Default, PartialEq)]
struct Moments {
    m: Vec<f32>,
    v: Vec<f32>,
    time: i32,
}

/// The fused AdamW and its state.
#[derive(Clone, Debug)]
pub struct FusedAdamW {
    settings: AdamWSettings,
    state: HashMap<ParamId, Moments>,
}

/// Whether the fused optimiser takes a model on `device`: burn's `flex` (host memory). On
/// `tch:cpu` the copies to and from libtorch cost more than they save (measured: 268 against
/// 250 ms per step on the sft-arith bench model), and CUDA tensors are not on the host.
pub fn host_device(device: &Device) -> bool {
    crate::lm::fused::is_flex(device)
}

fn host(t: Tensor<1>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .expect("f32 data")
}

impl FusedAdamW {
    pub fn new(settings: AdamWSettings) -> Self {
        Self {
            settings,
            state: HashMap::new(),
        }
    }

    /// One step at learning rate `lr`: clips the gradients to global norm `max_norm` (when
    /// given; scale `min(1, max_norm / (‖g‖ + 1e-6))`), then updates every parameter that has a
    /// gradient. Returns the model and the norm before clipping.
    pub fn step<M: Module>(
        &mut self,
        lr: f64,
        model: M,
        mut grads: GradientsParams,
        max_norm: Option<f32>,
    ) -> (M, Option<f32>) {
        // The gradients on the host, in the model's parameter order.
        struct Collect<'a> {
            grads: &'a mut GradientsParams,
            host: Vec<(ParamId, Vec<f32>)>,
        }
        impl ModuleVisitor for Collect<'_> {
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
                if let Some(g) = self.grads.remove::<D>(param.id) {
                    let n = g.shape().num_elements();
                    self.host.push((param.id, host(g.reshape([n]))));
                }
            }
        }
        let mut collect = Collect {
            grads: &mut grads,
            host: Vec::new(),
        };
        model.visit(&mut collect);
        let (norm, scale) = match max_norm {
            Some(max) => {
                // Σ g² in fixed chunks, added in the model's parameter order: the same
                // number whatever the thread count.
                let total: f32 = collect
                    .host
                    .iter()
                    .map(|(_, g)| {
                        g.par_chunks(16 * 1024)
                            .map(|c| c.iter().map(|x| x * x).sum::<f32>())
                            .collect::<Vec<f32>>()
                            .into_iter()
                            .sum::<f32>()
                    })
                    .sum();
                let norm = total.sqrt();
                (Some(norm), (max / (norm + 1e-6)).min(1.0))
            }
            None => (None, 1.0),
        };
        let mut host_grads: HashMap<ParamId, Vec<f32>> = collect.host.into_iter().collect();
        let mut update = Update {
            optim: self,
            grads: &mut host_grads,
            lr,
            scale,
        };
        (model.map(&mut update), norm)
    }

    /// The state as named `f32` arrays (`<param id>.m`, `.v`) and each parameter's step count.
    pub fn to_bytes(&self) -> anyhow::Result<Vec<u8>> {
        let mut arrays: Vec<(String, Vec<u8>, usize)> = Vec::new();
        let mut meta = HashMap::new();
        let mut ids: Vec<&ParamId> = self.state.keys().collect();
        ids.sort_by_key(|id| id.val());
        for id in ids {
            let s = &self.state[id];
            meta.insert(id.val().to_string(), s.time.to_string());
            for (name, xs) in [("m", &s.m), ("v", &s.v)] {
                let bytes: Vec<u8> = xs.iter().flat_map(|x| x.to_le_bytes()).collect();
                arrays.push((format!("{}.{name}", id.val()), bytes, xs.len()));
            }
        }
        let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = arrays
            .iter()
            .map(|(name, bytes, n)| {
                let view =
                    safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![*n], bytes)
                        .expect("a consistent view");
                (name.clone(), view)
            })
            .collect();
        Ok(safetensors::serialize(views, Some(meta))?)
    }

    /// Restores the state written by [`to_bytes`](Self::to_bytes).
    pub fn load_bytes(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        let (_, header) = safetensors::SafeTensors::read_metadata(bytes)?;
        let tensors = safetensors::SafeTensors::deserialize(bytes)?;
        let mut state = HashMap::new();
        for (id, time) in header.metadata().clone().unwrap_or_default() {
            let value: u64 = id
                .parse()
                .map_err(|_| anyhow::anyhow!("bad parameter id `{id}`"))?;
            let read = |part: &str| -> anyhow::Result<Vec<f32>> {
                let view = tensors.tensor(&format!("{id}.{part}"))?;
                Ok(view
                    .data()
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect())
            };
            let moments = Moments {
                m: read("m")?,
                v: read("v")?,
                time: time.parse()?,
            };
            state.insert(ParamId::from(value), moments);
        }
        self.state = state;
        Ok(())
    }
}

struct Update<'a> {
    optim: &'a mut FusedAdamW,
    grads: &'a mut HashMap<ParamId, Vec<f32>>,
    lr: f64,
    scale: f32,
}

impl ModuleMapper for Update<'_> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let (id, tensor, mapper) = param.consume();
        let Some(mut g) = self.grads.remove(&id) else {
            return Param::from_mapped_value(id, tensor, mapper);
        };
        let (shape, device, grad) = (tensor.shape(), tensor.device(), tensor.is_require_grad());
        let dtype = tensor.dtype();
        let n = shape.num_elements();
        let mut p = host(tensor.reshape([n]));
        let moments = self.optim.state.entry(id).or_default();
        if moments.m.len() != n {
            *moments = Moments {
                m: vec![0.0; n],
                v: vec![0.0; n],
                time: 0,
            };
        }
        moments.time += 1;
        let s = self.optim.settings;
        adamw_update(&mut p, &mut g, moments, s, self.lr, self.scale);
        let mut t = Tensor::<1>::from_data(TensorData::new(p, [n]), &device);
        if dtype != DType::F32 {
            t = t.cast(dtype);
        }
        let t = t.reshape(shape).set_require_grad(grad);
        Param::from_mapped_value(id, t, mapper)
    }
}

/// burn's AdamW update of one parameter, in one pass: `g ← g·scale`;
/// `m ← β₁m + (1−β₁)g`; `v ← β₂v + (1−β₂)g²`; `p ← p(1 − lr·λ) − lr·m̂/(√v̂ + ε)` with
/// `m̂ = m/(1−β₁ᵗ)`, `v̂ = v/(1−β₂ᵗ)`.
fn adamw_update(
    p: &mut [f32],
    g: &mut [f32],
    moments: &mut Moments,
    s: AdamWSettings,
    lr: f64,
    scale: f32,
) {
    let t = moments.time;
    let (f1, f2) = (1.0 - s.beta1, 1.0 - s.beta2);
    let (c1, c2) = (1f32 - s.beta1.powi(t), 1f32 - s.beta2.powi(t));
    let decay = (1.0 - lr * s.weight_decay as f64) as f32;
    let decayed = lr * s.weight_decay as f64 != 0.0;
    let lr = lr as f32;
    let first = t == 1;
    const CHUNK: usize = 16 * 1024;
    p.par_chunks_mut(CHUNK)
        .zip(g.par_chunks_mut(CHUNK))
        .zip(
            moments
                .m
                .par_chunks_mut(CHUNK)
                .zip(moments.v.par_chunks_mut(CHUNK)),
        )
        .for_each(|((p, g), (m, v))| {
            for i in 0..p.len() {
                let gi = if scale == 1.0 { g[i] } else { g[i] * scale };
                // burn starts the moments from the first gradient itself.
                if first {
                    m[i] = gi * f1;
                    v[i] = gi * gi * f2;
                } else {
                    m[i] = m[i] * s.beta1 + gi * f1;
                    v[i] = v[i] * s.beta2 + gi * gi * f2;
                }
                let delta = (m[i] / c1) / ((v[i] / c2).sqrt() + s.eps);
                let kept = if decayed { p[i] * decay } else { p[i] };
                p[i] = kept - delta * lr;
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::clip_global_norm;
    use burn::nn::{Linear, LinearConfig};
    use burn::optim::AdamWConfig;
    use burn::tensor::Distribution;
    use proptest::prelude::*;

    #[derive(Module, Debug)]
    struct Net {
        a: Linear,
        b: Linear,
    }

    fn net(device: &Device) -> Net {
        Net {
            a: LinearConfig::new(7, 13).init(device),
            b: LinearConfig::new(13, 3).init(device),
        }
    }

    fn loss(net: &Net, x: Tensor<2>) -> Tensor<1> {
        net.b.forward(net.a.forward(x).tanh()).powi_scalar(2).mean()
    }

    fn params(net: &Net) -> Vec<f32> {
        [
            net.a.weight.val().reshape([-1]),
            net.b.weight.val().reshape([-1]),
        ]
        .into_iter()
        .chain(net.a.bias.as_ref().map(|b| b.val()))
        .chain(net.b.bias.as_ref().map(|b| b.val()))
        .flat_map(|t| {
            t.into_data()
                .convert::<f32>()
                .try_into_vec::<f32>()
                .unwrap()
        })
        .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(16))]

        /// Five steps of the fused update equal global-norm clipping followed by burn's AdamW.
        #[test]
        fn fused_adamw_equals_clipping_then_burns_adamw(
            lr in 1e-4f64..3e-2, wd in 0f32..0.3, clip in proptest::option::of(0.01f32..2.0),
            beta2 in 0.9f32..0.999,
        ) {
            let device = Device::flex().autodiff();
            let x = Tensor::<2>::random([5, 7], Distribution::Normal(0.0, 2.0), &device);
            let s = AdamWSettings { beta1: 0.9, beta2, eps: 1e-8, weight_decay: wd };
            let mut ours = FusedAdamW::new(s);
            let mut reference = AdamWConfig::new()
                .with_beta_1(s.beta1)
                .with_beta_2(s.beta2)
                .with_epsilon(s.eps)
                .with_weight_decay(s.weight_decay)
                .init();
            let mut a = net(&device);
            let mut b = a.clone();
            for _ in 0..5 {
                let ga = GradientsParams::from_grads(loss(&a, x.clone()).backward(), &a);
                let (next, norm) = ours.step(lr, a, ga, clip);
                a = next;
                let mut gb = GradientsParams::from_grads(loss(&b, x.clone()).backward(), &b);
                let reference_norm = clip.and_then(|c| clip_global_norm(&b, &mut gb, c));
                if let (Some(n), Some(r)) = (norm, reference_norm) {
                    let r = r.into_scalar::<f32>();
                    prop_assert!((n - r).abs() <= 1e-5 * r.max(1.0), "norm {n} vs {r}");
                }
                b = reference.step(lr, b, gb);
                let d = crate::lm::kernels::max_abs_diff(&params(&a), &params(&b));
                prop_assert!(d <= 1e-6, "parameters differ by {d}");
            }
        }
    }

    #[test]
    fn state_round_trips_through_bytes() {
        let device = Device::flex().autodiff();
        let s = AdamWSettings {
            beta1: 0.9,
            beta2: 0.99,
            eps: 1e-8,
            weight_decay: 0.1,
        };
        let mut optim = FusedAdamW::new(s);
        let model = net(&device);
        let x = Tensor::<2>::random([5, 7], Distribution::Normal(0.0, 1.0), &device);
        let grads = GradientsParams::from_grads(loss(&model, x).backward(), &model);
        optim.step(1e-3, model, grads, Some(1.0));
        let mut back = FusedAdamW::new(s);
        back.load_bytes(&optim.to_bytes().unwrap()).unwrap();
        assert_eq!(back.state, optim.state);
        assert_eq!(back.state.len(), 4);
        assert!(back.load_bytes(b"not a state").is_err());
    }
}
