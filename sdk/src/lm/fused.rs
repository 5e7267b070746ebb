//! Fused CPU ops for the transformer's hot paths, each with a hand-written backward pass:
//! RMSNorm, SwiGLU, rotary embedding (no matmul), causal grouped-query attention with its
//! softmax (no repeated keys and values) and the log-probability of a target over the
//! vocabulary. They run through burn's backend-extension mechanism ([`FusedOps`]) on the
//! default `cpu` backend (burn's `flex`, with or without autodiff); their kernels are in
//! [`crate::lm::kernels`], parallel over rows.
//!
//! [`enabled`] says whether a tensor can take them: on other backends (libtorch) and other
//! float types the model composes burn's ops as before. On `tch:cpu` attention alone takes
//! libtorch's own fused CPU kernel, forward and backward ([`torch_attention`]), as PyTorch's
//! `scaled_dot_product_attention` does. `LMLAB_FUSED=0` turns them off (for comparisons).
//! Every op is property-tested against the composition it replaces, values and gradients.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Dispatch, Flex, backend_extension};
use burn::tensor::{DType, Device, Int, Tensor, TensorData};

use crate::lm::kernels::{self, AttentionShape, Rope};

#[cfg(feature = "tch")]
mod torch;

/// The fused operations (forward; the autodiff implementation adds the backward passes).
#[backend_extension(Flex, Autodiff)]
pub trait FusedOps: Backend {
    /// RMSNorm over the last dimension of `x` `[N, D]` with weight `w` `[D]`.
    fn fused_rms_norm(x: FloatTensor<Self>, w: FloatTensor<Self>, eps: f32) -> FloatTensor<Self>;
    /// `silu(gate) · up`.
    fn fused_swiglu(gate: FloatTensor<Self>, up: FloatTensor<Self>) -> FloatTensor<Self>;
    /// Rotary embedding of `x` `[B, T, H, D]`.
    fn fused_rope(x: FloatTensor<Self>, table: Arc<Rope>) -> FloatTensor<Self>;
    /// Causal grouped-query attention: `q` `[B, T, Hq, D]`, `k`, `v` `[B, T, Hkv, D]`.
    fn fused_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        shape: Arc<AttentionShape>,
    ) -> FloatTensor<Self>;
    /// `log softmax(x)[target]` of each row of `x` `[N, V]`: `[N]`.
    fn fused_token_logprobs(x: FloatTensor<Self>, targets: Arc<Vec<i64>>) -> FloatTensor<Self>;
}

fn contiguous(t: &FlexTensor) -> FlexTensor {
    assert_eq!(t.dtype(), DType::F32, "fused ops take f32 tensors");
    if t.is_contiguous() && t.layout().start_offset() == 0 {
        t.clone()
    } else {
        t.to_contiguous()
    }
}

/// Runs `f` on the tensor's `f32` elements in row-major order.
fn with<R>(t: &FlexTensor, f: impl FnOnce(&[f32]) -> R) -> R {
    let c = contiguous(t);
    let n = c.layout().num_elements();
    f(&c.as_slice::<f32>().expect("a contiguous f32 tensor")[..n])
}

fn dims(t: &FlexTensor) -> Vec<usize> {
    t.layout().shape().iter().copied().collect()
}

fn flex(data: Vec<f32>, shape: Vec<usize>) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(data, shape))
}

impl FusedOps for Flex {
    fn fused_rms_norm(x: FlexTensor, w: FlexTensor, eps: f32) -> FlexTensor {
        let y = with(&x, |x| with(&w, |w| kernels::rms_norm(x, w, eps)));
        flex(y, dims(&x))
    }
    fn fused_swiglu(gate: FlexTensor, up: FlexTensor) -> FlexTensor {
        let y = with(&gate, |g| with(&up, |u| kernels::swiglu(g, u)));
        flex(y, dims(&gate))
    }
    fn fused_rope(x: FlexTensor, table: Arc<Rope>) -> FlexTensor {
        let heads = dims(&x)[2];
        flex(with(&x, |x| kernels::rope(x, heads, &table, 1.0)), dims(&x))
    }
    fn fused_attention(
        q: FlexTensor,
        k: FlexTensor,
        v: FlexTensor,
        shape: Arc<AttentionShape>,
    ) -> FlexTensor {
        attention_forward(&q, &k, &v, &shape).0
    }
    fn fused_token_logprobs(x: FlexTensor, targets: Arc<Vec<i64>>) -> FlexTensor {
        token_logprobs_forward(&x, &targets).0
    }
}

fn attention_forward(
    q: &FlexTensor,
    k: &FlexTensor,
    v: &FlexTensor,
    s: &AttentionShape,
) -> (FlexTensor, Arc<Vec<f32>>) {
    let (o, lse) = with(q, |q| {
        with(k, |k| with(v, |v| kernels::attention(q, k, v, s)))
    });
    (flex(o, dims(q)), Arc::new(lse))
}

fn token_logprobs_forward(x: &FlexTensor, targets: &[i64]) -> (FlexTensor, Arc<Vec<f32>>) {
    let vocab = *dims(x).last().expect("a [N, V] tensor");
    let (lp, lse) = with(x, |x| kernels::token_logprobs(x, vocab, targets));
    (flex(lp, vec![targets.len()]), Arc::new(lse))
}

/// Registers `grad` for parent `i` of `parents` (when it needs one).
macro_rules! register {
    ($parents:expr, $i:expr, $grads:expr, $grad:expr) => {
        if let Some(node) = &$parents[$i] {
            $grads.register::<Flex>(node.id, $grad);
        }
    };
}

#[derive(Debug)]
struct RmsNormBackward;
impl Backward<Flex, 2> for RmsNormBackward {
    type State = (FlexTensor, FlexTensor, f32);
    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (x, w, eps) = ops.state;
        let dy = grads.consume::<Flex>(&ops.node);
        let (dx, dw) = with(&x, |xs| {
            with(&w, |ws| {
                with(&dy, |dys| kernels::rms_norm_backward(xs, ws, dys, eps))
            })
        });
        register!(ops.parents, 0, grads, flex(dx, dims(&x)));
        register!(ops.parents, 1, grads, flex(dw, dims(&w)));
    }
}

#[derive(Debug)]
struct SwigluBackward;
impl Backward<Flex, 2> for SwigluBackward {
    type State = (FlexTensor, FlexTensor);
    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (g, u) = ops.state;
        let dy = grads.consume::<Flex>(&ops.node);
        let (dg, du) = with(&g, |gs| {
            with(&u, |us| {
                with(&dy, |dys| kernels::swiglu_backward(gs, us, dys))
            })
        });
        register!(ops.parents, 0, grads, flex(dg, dims(&g)));
        register!(ops.parents, 1, grads, flex(du, dims(&u)));
    }
}

#[derive(Debug)]
struct RopeBackward;
impl Backward<Flex, 1> for RopeBackward {
    type State = (Arc<Rope>, Vec<usize>);
    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (table, shape) = ops.state;
        let dy = grads.consume::<Flex>(&ops.node);
        let dx = with(&dy, |dy| kernels::rope(dy, shape[2], &table, -1.0));
        register!(ops.parents, 0, grads, flex(dx, shape));
    }
}

#[derive(Debug)]
struct AttentionBackward;
type AttentionState = (
    FlexTensor,
    FlexTensor,
    FlexTensor,
    FlexTensor,
    Arc<Vec<f32>>,
    Arc<AttentionShape>,
);
impl Backward<Flex, 3> for AttentionBackward {
    type State = AttentionState;
    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (q, k, v, o, lse, s) = ops.state;
        let dout = grads.consume::<Flex>(&ops.node);
        let (dq, dk, dv) = with(&q, |qs| {
            with(&k, |ks| {
                with(&v, |vs| {
                    with(&o, |os| {
                        with(&dout, |ds| {
                            kernels::attention_backward(qs, ks, vs, os, &lse, ds, &s)
                        })
                    })
                })
            })
        });
        register!(ops.parents, 0, grads, flex(dq, dims(&q)));
        register!(ops.parents, 1, grads, flex(dk, dims(&k)));
        register!(ops.parents, 2, grads, flex(dv, dims(&v)));
    }
}

#[derive(Debug)]
struct TokenLogprobsBackward;
impl Backward<Flex, 1> for TokenLogprobsBackward {
    type State = (FlexTensor, Arc<Vec<i64>>, Arc<Vec<f32>>);
    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (x, targets, lse) = ops.state;
        let dy = grads.consume::<Flex>(&ops.node);
        let vocab = *dims(&x).last().expect("[N, V]");
        let dx = with(&x, |xs| {
            with(&dy, |dys| {
                kernels::token_logprobs_backward(xs, vocab, &targets, &lse, dys)
            })
        });
        register!(ops.parents, 0, grads, flex(dx, dims(&x)));
    }
}

type Ad<C> = Autodiff<Flex, C>;

impl<C: CheckpointStrategy> FusedOps for Ad<C> {
    fn fused_rms_norm(x: FloatTensor<Self>, w: FloatTensor<Self>, eps: f32) -> FloatTensor<Self> {
        let prep = RmsNormBackward
            .prepare::<C>([x.node(), w.node()])
            .compute_bound()
            .stateful();
        let (x, w) = (x.into_primitive(), w.into_primitive());
        let y = Flex::fused_rms_norm(x.clone(), w.clone(), eps);
        match prep {
            OpsKind::Tracked(prep) => prep.finish((x, w, eps), y),
            OpsKind::UnTracked(prep) => prep.finish(y),
        }
    }
    fn fused_swiglu(gate: FloatTensor<Self>, up: FloatTensor<Self>) -> FloatTensor<Self> {
        let prep = SwigluBackward
            .prepare::<C>([gate.node(), up.node()])
            .compute_bound()
            .stateful();
        let (g, u) = (gate.into_primitive(), up.into_primitive());
        let y = Flex::fused_swiglu(g.clone(), u.clone());
        match prep {
            OpsKind::Tracked(prep) => prep.finish((g, u), y),
            OpsKind::UnTracked(prep) => prep.finish(y),
        }
    }
    fn fused_rope(x: FloatTensor<Self>, table: Arc<Rope>) -> FloatTensor<Self> {
        let prep = RopeBackward
            .prepare::<C>([x.node()])
            .compute_bound()
            .stateful();
        let x = x.into_primitive();
        let shape = dims(&x);
        let y = Flex::fused_rope(x, table.clone());
        match prep {
            OpsKind::Tracked(prep) => prep.finish((table, shape), y),
            OpsKind::UnTracked(prep) => prep.finish(y),
        }
    }
    fn fused_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        shape: Arc<AttentionShape>,
    ) -> FloatTensor<Self> {
        let prep = AttentionBackward
            .prepare::<C>([q.node(), k.node(), v.node()])
            .compute_bound()
            .stateful();
        let (q, k, v) = (q.into_primitive(), k.into_primitive(), v.into_primitive());
        let (o, lse) = attention_forward(&q, &k, &v, &shape);
        match prep {
            OpsKind::Tracked(prep) => prep.finish((q, k, v, o.clone(), lse, shape), o),
            OpsKind::UnTracked(prep) => prep.finish(o),
        }
    }
    fn fused_token_logprobs(x: FloatTensor<Self>, targets: Arc<Vec<i64>>) -> FloatTensor<Self> {
        let prep = TokenLogprobsBackward
            .prepare::<C>([x.node()])
            .compute_bound()
            .stateful();
        let x = x.into_primitive();
        let (lp, lse) = token_logprobs_forward(&x, &targets);
        match prep {
            OpsKind::Tracked(prep) => prep.finish((x, targets, lse), lp),
            OpsKind::UnTracked(prep) => prep.finish(lp),
        }
    }
}

static SWITCH: AtomicU8 = AtomicU8::new(0);

/// Whether fused ops are on for this process: `LMLAB_FUSED=0` turns them off, and
/// [`set_enabled`] overrides both.
pub fn switched_on() -> bool {
    match SWITCH.load(Ordering::Relaxed) {
        1 => true,
        2 => false,
        _ => {
            let on = std::env::var("LMLAB_FUSED").map_or(true, |v| v != "0");
            SWITCH.store(if on { 1 } else { 2 }, Ordering::Relaxed);
            on
        }
    }
}

/// Turns the fused ops on or off for this process (comparisons and tests).
pub fn set_enabled(on: bool) {
    SWITCH.store(if on { 1 } else { 2 }, Ordering::Relaxed);
}

/// Whether `device` runs burn's `flex` backend (with or without autodiff).
pub fn is_flex(device: &Device) -> bool {
    matches!(
        device.clone().inner().as_dispatch(),
        burn_dispatch::DispatchDevice::Flex(_)
    )
}

/// Whether the fused ops apply to `x`: switched on, on `flex`, in `f32`.
pub fn enabled<const D: usize>(x: &Tensor<D>) -> bool {
    switched_on() && is_flex(&x.device()) && x.dtype() == DType::F32
}

/// Whether attention on `x` takes libtorch's fused CPU kernel ([`torch_attention`]):
/// switched on, on `tch:cpu` (with or without autodiff), in `f32`.
#[allow(deprecated)] // burn marks its libtorch backend deprecated; lmlab keeps it behind `tch`
pub fn torch_enabled<const D: usize>(x: &Tensor<D>) -> bool {
    #[cfg(feature = "tch")]
    {
        switched_on()
            && x.dtype() == DType::F32
            && matches!(
                x.device().inner().as_dispatch(),
                burn_dispatch::DispatchDevice::LibTorch(burn::backend::LibTorchDevice::Cpu)
            )
    }
    #[cfg(not(feature = "tch"))]
    {
        let _ = x;
        false
    }
}

/// Attention on `tch:cpu` through libtorch's fused CPU kernel, forward and backward (see
/// [`torch_enabled`]): `q` `[B, Hq, T, D]` over `k`, `v` `[B, Hkv, S, D]` with `Hq` a multiple
/// of `Hkv` (query head `h` reads key-value head `h / (Hq / Hkv)`; nothing is repeated
/// outside the kernel's call), the additive `bias` broadcast to `[B, Hq, T, S]`, causal when
/// `causal` (then `S == T`), scaled by `scale` (`1/√D` when `None`).
#[cfg(feature = "tch")]
pub fn torch_attention(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    bias: Option<Tensor<4>>,
    causal: bool,
    scale: Option<f64>,
) -> Tensor<4> {
    use torch::TorchOps;
    let (q, k, v) = (q.into_dispatch(), k.into_dispatch(), v.into_dispatch());
    call(match bias {
        Some(bias) => <Dispatch as TorchOps>::torch_attention_biased(
            q,
            k,
            v,
            bias.into_dispatch(),
            causal,
            scale,
        ),
        None => <Dispatch as TorchOps>::torch_attention(q, k, v, causal, scale),
    })
}

fn call<const D: usize>(out: FloatTensor<Dispatch>) -> Tensor<D> {
    Tensor::from_dispatch(out)
}

/// RMSNorm of `x` `[.., D]` (see [`enabled`]).
pub fn rms_norm<const D: usize>(x: Tensor<D>, w: Tensor<1>, eps: f32) -> Tensor<D> {
    let dims = x.dims();
    let d = dims[D - 1];
    let rows = x.shape().num_elements() / d.max(1);
    let x2: Tensor<2> = x.reshape([rows, d]);
    call::<2>(<Dispatch as FusedOps>::fused_rms_norm(
        x2.into_dispatch(),
        w.into_dispatch(),
        eps,
    ))
    .reshape(dims)
}

/// `silu(gate) · up` (see [`enabled`]).
pub fn swiglu<const D: usize>(gate: Tensor<D>, up: Tensor<D>) -> Tensor<D> {
    call(<Dispatch as FusedOps>::fused_swiglu(
        gate.into_dispatch(),
        up.into_dispatch(),
    ))
}

/// Rotary embedding of `x` `[B, T, H, D]` by `table` (see [`enabled`]).
pub fn rope(x: Tensor<4>, table: Arc<Rope>) -> Tensor<4> {
    call(<Dispatch as FusedOps>::fused_rope(x.into_dispatch(), table))
}

/// Causal grouped-query attention, `[B, T, Hq, D]` (see [`enabled`]).
pub fn attention(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    shape: Arc<AttentionShape>,
) -> Tensor<4> {
    call(<Dispatch as FusedOps>::fused_attention(
        q.into_dispatch(),
        k.into_dispatch(),
        v.into_dispatch(),
        shape,
    ))
}

/// `log softmax(x)[target]` of each row of `x` `[N, V]`: `[N]` (see [`enabled`]).
pub fn token_logprobs(x: Tensor<2>, targets: Tensor<1, Int>) -> Tensor<1> {
    let targets: Vec<i64> = targets
        .into_data()
        .convert::<i64>()
        .try_into_vec::<i64>()
        .expect("i64 ids");
    call(<Dispatch as FusedOps>::fused_token_logprobs(
        x.into_dispatch(),
        Arc::new(targets),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lm::kernels::max_abs_diff;
    use burn::tensor::activation::{log_softmax, silu};
    use burn::tensor::module::attention as burn_attention;
    use burn::tensor::ops::AttentionModuleOptions;
    use burn::tensor::{Bool, Distribution};
    use proptest::prelude::*;

    fn device() -> Device {
        Device::flex().autodiff()
    }

    fn random<const D: usize>(shape: [usize; D]) -> Tensor<D> {
        Tensor::random(shape, Distribution::Uniform(-2.0, 2.0), &device()).require_grad()
    }

    fn values<const D: usize>(t: &Tensor<D>) -> Vec<f32> {
        t.clone()
            .into_data()
            .convert::<f32>()
            .try_to_vec::<f32>()
            .expect("f32")
    }

    const TOL: f32 = 1e-4;

    /// Checks `fused(inputs)` against `composed(inputs)`: values, and the gradients of
    /// `Σ out · r` (random `r`) with respect to every input.
    fn check<const D: usize, const O: usize>(
        inputs: Vec<Tensor<D>>,
        fused: impl Fn(Vec<Tensor<D>>) -> Tensor<O>,
        composed: impl Fn(Vec<Tensor<D>>) -> Tensor<O>,
    ) -> Result<(), TestCaseError> {
        let detach = |v: &[Tensor<D>]| -> Vec<Tensor<D>> {
            v.iter()
                .map(|t| t.clone().detach().require_grad())
                .collect()
        };
        let (a, b) = (detach(&inputs), detach(&inputs));
        let fa = fused(a.clone());
        let fb = composed(b.clone());
        let d = max_abs_diff(&values(&fa), &values(&fb));
        prop_assert!(d <= TOL, "values differ by {d}");
        let r = Tensor::<O>::random(fa.dims(), Distribution::Uniform(-1.0, 1.0), &fa.device());
        let ga = (fa * r.clone()).sum().backward();
        let gb = (fb * r).sum().backward();
        for (i, (x, y)) in a.iter().zip(&b).enumerate() {
            let (gx, gy) = (x.grad(&ga), y.grad(&gb));
            let (gx, gy) = (gx.expect("a gradient"), gy.expect("a gradient"));
            let d = max_abs_diff(&values(&gx), &values(&gy));
            prop_assert!(d <= TOL, "gradient of input {i} differs by {d}");
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        #[test]
        fn rms_norm_equals_its_composition(rows in 1usize..40, d in 1usize..70) {
            let (x, w) = (random([rows, d]), random::<2>([1, d]));
            check(
                vec![x, w],
                |v| rms_norm(v[0].clone(), v[1].clone().reshape([d]), 1e-5),
                |v| {
                    let x = v[0].clone();
                    let ms = x.clone().powi_scalar(2).mean_dim(1);
                    x * (ms + 1e-5).sqrt().recip() * v[1].clone()
                },
            )?;
        }

        #[test]
        fn swiglu_equals_its_composition(rows in 1usize..30, f in 1usize..300) {
            check(
                vec![random([rows, f]), random([rows, f])],
                |v| swiglu(v[0].clone(), v[1].clone()),
                |v| silu(v[0].clone()) * v[1].clone(),
            )?;
        }

        #[test]
        fn rope_equals_rotation_by_a_matrix(
            b in 1usize..3, t in 1usize..9, h in 1usize..4, half in 1usize..9, halves: bool,
        ) {
            let d = 2 * half;
            let n = b * t * d;
            let angles: Vec<f32> = (0..b * t * half).map(|i| (i as f32 * 0.37).sin() * 3.0).collect();
            let (mut cos, mut sin) = (vec![0f32; n], vec![0f32; n]);
            let mut swap = vec![0f32; d * d];
            for bt in 0..b * t {
                for j in 0..half {
                    let (pa, pb) = if halves { (j, j + half) } else { (2 * j, 2 * j + 1) };
                    let a = angles[bt * half + j];
                    for p in [pa, pb] {
                        cos[bt * d + p] = a.cos();
                        sin[bt * d + p] = a.sin();
                    }
                    swap[pb * d + pa] = -1.0;
                    swap[pa * d + pb] = 1.0;
                }
            }
            let table = Arc::new(Rope { cos: cos.clone(), sin: sin.clone(), batch: b, len: t, dim: d, halves });
            let dev = device();
            let cos = Tensor::<4>::from_data(TensorData::new(cos, [b, t, 1, d]), &dev);
            let sin = Tensor::<4>::from_data(TensorData::new(sin, [b, t, 1, d]), &dev);
            let swap = Tensor::<2>::from_data(TensorData::new(swap, [d, d]), &dev);
            check(
                vec![random([b, t, h, d])],
                |v| rope(v[0].clone(), table.clone()),
                |v| {
                    let x = v[0].clone();
                    let swapped = x.clone().reshape([b * t * h, d]).matmul(swap.clone()).reshape([b, t, h, d]);
                    x * cos.clone() + swapped * sin.clone()
                },
            )?;
        }

        #[test]
        fn attention_equals_masked_softmax_attention(
            b in 1usize..3, t in 1usize..10, kv in 1usize..3, rep in 1usize..4, hd in 1usize..12,
            pads in proptest::collection::vec(0usize..4, 2), window in proptest::option::of(1usize..6),
        ) {
            let hq = kv * rep;
            let pad: Vec<usize> = pads[..b].iter().map(|&p| p.min(t.saturating_sub(1))).collect();
            let scale = 1.0 / (hd as f32).sqrt();
            let shape = Arc::new(AttentionShape {
                batch: b, len: t, q_heads: hq, kv_heads: kv, head_dim: hd,
                pad: pad.clone(), window, scale,
            });
            let w = window.unwrap_or(usize::MAX);
            let mut m = Vec::new();
            for &p in &pad {
                for qi in 0..t {
                    for kj in 0..t {
                        m.push(kj > qi || (kj != qi && (kj < p || qi - kj >= w)));
                    }
                }
            }
            let mask = Tensor::<4, Bool>::from_data(TensorData::new(m, [b, 1, t, t]), &device())
                .expand([b, hq, t, t]);
            check(
                vec![random([b, t, hq, hd]), random([b, t, kv, hd]), random([b, t, kv, hd])],
                |v| attention(v[0].clone(), v[1].clone(), v[2].clone(), shape.clone()),
                |v| {
                    let grow = |x: Tensor<4>| {
                        x.swap_dims(1, 2).unsqueeze_dim::<5>(2).expand([b, kv, rep, t, hd]).reshape([b, hq, t, hd])
                    };
                    let options = AttentionModuleOptions { scale: Some(scale as f64), softcap: None, is_causal: false };
                    burn_attention(v[0].clone().swap_dims(1, 2), grow(v[1].clone()), grow(v[2].clone()), Some(mask.clone()), None, options)
                        .swap_dims(1, 2)
                },
            )?;
        }

        #[test]
        fn token_logprobs_equal_log_softmax_at_the_target(
            rows in 1usize..20, vocab in 2usize..300, seed: u64,
        ) {
            let targets: Vec<i64> = (0..rows).map(|i| ((seed.wrapping_mul(31).wrapping_add(i as u64 * 7919)) % vocab as u64) as i64).collect();
            let ids = Tensor::<1, Int>::from_data(TensorData::new(targets.clone(), [rows]), &device());
            check(
                vec![random([rows, vocab])],
                |v| token_logprobs(v[0].clone(), ids.clone()),
                |v| log_softmax(v[0].clone(), 1).gather(1, ids.clone().reshape([rows, 1])).reshape([rows]),
            )?;
        }
    }

    #[cfg(feature = "tch")]
    #[allow(deprecated)] // burn marks its libtorch backend deprecated
    fn tch_cpu() -> Device {
        Device::libtorch()
    }

    #[cfg(feature = "tch")]
    proptest! {
        #![proptest_config(ProptestConfig::with_cases(16))]

        #[test]
        fn torch_attention_equals_softmax_attention(
            b in 1usize..3, t in 1usize..10, kv in 1usize..3, rep in 1usize..4, hd in 1usize..12,
            pads in proptest::collection::vec(0usize..4, 2), causal: bool, biased: bool,
            scaled: bool,
        ) {
            let dev = tch_cpu().autodiff();
            let hq = kv * rep;
            let r = |shape: [usize; 4]| {
                Tensor::<4>::random(shape, Distribution::Uniform(-2.0, 2.0), &dev).require_grad()
            };
            // Padding keys hidden from later queries (each query keeps its own key), as the
            // model's bias does.
            let mut m = Vec::new();
            for &p in &pads[..b] {
                let p = p.min(t.saturating_sub(1));
                for qi in 0..t {
                    for kj in 0..t {
                        m.push(if kj != qi && kj < p { -1e30f32 } else { 0.0 });
                    }
                }
            }
            let bias = biased.then(|| {
                Tensor::<4>::from_data(TensorData::new(m, [b, 1, t, t]), &dev).expand([b, hq, t, t])
            });
            let scale = scaled.then_some(0.37);
            check(
                vec![r([b, hq, t, hd]), r([b, kv, t, hd]), r([b, kv, t, hd])],
                |v| torch_attention(v[0].clone(), v[1].clone(), v[2].clone(), bias.clone(), causal, scale),
                |v| {
                    let grow = |x: Tensor<4>| {
                        x.unsqueeze_dim::<5>(2).expand([b, kv, rep, t, hd]).reshape([b, hq, t, hd])
                    };
                    let s = scale.unwrap_or(1.0 / (hd as f64).sqrt());
                    let mut scores = v[0].clone().matmul(grow(v[1].clone()).swap_dims(2, 3)).mul_scalar(s);
                    if let Some(bias) = &bias {
                        scores = scores + bias.clone();
                    }
                    if causal {
                        let future: Vec<f32> = (0..t * t)
                            .map(|i| if i % t > i / t { -1e30 } else { 0.0 })
                            .collect();
                        scores = scores + Tensor::<4>::from_data(TensorData::new(future, [1, 1, t, t]), &dev);
                    }
                    burn::tensor::activation::softmax(scores, 3).matmul(grow(v[2].clone()))
                },
            )?;
        }
    }

    #[test]
    fn only_flex_f32_takes_fused_ops() {
        // nextest runs each test in its own process, so the switch is this test's own.
        set_enabled(true);
        let x = Tensor::<1>::zeros([2], &Device::flex());
        assert!(enabled(&x));
        assert!(enabled(&Tensor::<1>::zeros(
            [2],
            &Device::flex().autodiff()
        )));
        assert!(
            !enabled(&x.clone().cast(DType::F16)),
            "f16 takes burn's ops"
        );
        assert!(!torch_enabled(&x), "flex takes its own fused attention");
        set_enabled(false);
        assert!(!enabled(&x), "switched off");
        set_enabled(true);
    }

    #[cfg(feature = "tch")]
    #[test]
    fn only_tch_cpu_f32_takes_torch_attention() {
        set_enabled(true);
        let x = Tensor::<1>::zeros([2], &tch_cpu());
        assert!(torch_enabled(&x));
        assert!(torch_enabled(&Tensor::<1>::zeros(
            [2],
            &tch_cpu().autodiff()
        )));
        assert!(!enabled(&x), "the flex kernels are not libtorch's");
        assert!(!torch_enabled(&x.clone().cast(DType::F16)));
        set_enabled(false);
        assert!(!torch_enabled(&x), "switched off");
        set_enabled(true);
    }
}
