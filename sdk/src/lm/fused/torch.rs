//! Attention on `tch:cpu` through libtorch's fused CPU kernel (the one PyTorch's
//! `scaled_dot_product_attention` takes on the CPU), forward and backward, as a burn backend
//! extension. burn's autodiff composes attention from a dozen ops over `[B, H, T, S]` scores
//! (scale, mask, max, exp, sum, divide and their backward passes); this op runs libtorch's
//! flash kernel instead, which never materialises the scores. Grouped-query keys and values
//! are repeated for the kernel (it takes as many key-value heads as query heads) and their
//! gradients summed back over each group.
#![allow(deprecated)] // burn marks the libtorch backend deprecated; lmlab keeps it behind `tch`.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::libtorch::TchTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, LibTorch, backend_extension};

/// The libtorch-only fused operations.
#[backend_extension(LibTorch, Autodiff)]
pub trait TorchOps: Backend {
    /// Attention of `q` `[B, Hq, T, D]` over `k`, `v` `[B, Hkv, S, D]` (`Hq` a multiple of
    /// `Hkv`; query head `h` reads key-value head `h / (Hq / Hkv)`), plus the additive `bias`
    /// (broadcast to `[B, Hq, T, S]`), causal (`S == T`) when `causal`, scaled by `scale`
    /// (`1/√D` when `None`).
    fn torch_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        causal: bool,
        scale: Option<f64>,
    ) -> FloatTensor<Self>;
    /// [`torch_attention`](Self::torch_attention) plus the additive `bias`, broadcast to
    /// `[B, Hq, T, S]` (the extension macro takes no optional tensors).
    fn torch_attention_biased(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        causal: bool,
        scale: Option<f64>,
    ) -> FloatTensor<Self>;
}

/// Keys or values with each head repeated `rep` times, as the kernel reads them. A clone
/// shares the tensor's storage record, so burn never writes in place to what the backward
/// pass keeps.
fn repeat_heads(x: &TchTensor, rep: i64) -> TchTensor {
    if rep == 1 {
        x.clone()
    } else {
        TchTensor::new(x.tensor.repeat_interleave_self_int(rep, Some(1), None))
    }
}

/// The gradient of [`repeat_heads`]: each group of `rep` heads summed into its own.
fn sum_heads(g: tch::Tensor, rep: i64) -> tch::Tensor {
    if rep == 1 {
        return g;
    }
    let s = g.size();
    g.reshape([s[0], s[1] / rep, rep, s[2], s[3]])
        .sum_dim_intlist(Some([2i64].as_slice()), false, g.kind())
}

struct Forward {
    out: TchTensor,
    logsumexp: TchTensor,
    k: TchTensor,
    v: TchTensor,
    rep: i64,
}

fn forward(
    q: &TchTensor,
    k: &TchTensor,
    v: &TchTensor,
    bias: Option<&TchTensor>,
    causal: bool,
    scale: Option<f64>,
) -> Forward {
    let rep = q.tensor.size()[1] / k.tensor.size()[1];
    let (k, v) = (repeat_heads(k, rep), repeat_heads(v, rep));
    let (out, logsumexp) = tch::Tensor::internal_scaled_dot_product_flash_attention_for_cpu(
        &q.tensor,
        &k.tensor,
        &v.tensor,
        0.0,
        causal,
        bias.map(|b| &b.tensor),
        scale,
    );
    Forward {
        out: TchTensor::new(out),
        logsumexp: TchTensor::new(logsumexp),
        k,
        v,
        rep,
    }
}

impl TorchOps for LibTorch {
    fn torch_attention(
        q: TchTensor,
        k: TchTensor,
        v: TchTensor,
        causal: bool,
        scale: Option<f64>,
    ) -> TchTensor {
        forward(&q, &k, &v, None, causal, scale).out
    }
    fn torch_attention_biased(
        q: TchTensor,
        k: TchTensor,
        v: TchTensor,
        bias: TchTensor,
        causal: bool,
        scale: Option<f64>,
    ) -> TchTensor {
        forward(&q, &k, &v, Some(&bias), causal, scale).out
    }
}

/// What the backward pass needs: the query, the repeated keys and values, the output and its
/// log-sum-exp (libtorch tensors share storage; nothing is copied), the bias and the options.
#[derive(Debug, Clone)]
struct AttentionState {
    q: TchTensor,
    k: TchTensor,
    v: TchTensor,
    out: TchTensor,
    logsumexp: TchTensor,
    bias: Option<TchTensor>,
    causal: bool,
    scale: Option<f64>,
    rep: i64,
}

#[derive(Debug)]
struct AttentionBackward;

impl Backward<LibTorch, 3> for AttentionBackward {
    type State = AttentionState;
    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let s = ops.state;
        let dout = grads.consume::<LibTorch>(&ops.node);
        let (dq, dk, dv) =
            tch::Tensor::internal_scaled_dot_product_flash_attention_for_cpu_backward(
                &dout.tensor,
                &s.q.tensor,
                &s.k.tensor,
                &s.v.tensor,
                &s.out.tensor,
                &s.logsumexp.tensor,
                0.0,
                s.causal,
                s.bias.as_ref().map(|b| &b.tensor),
                s.scale,
            );
        let grads_of = [dq, sum_heads(dk, s.rep), sum_heads(dv, s.rep)];
        for (parent, g) in ops.parents.iter().zip(grads_of) {
            if let Some(node) = parent {
                grads.register::<LibTorch>(node.id, TchTensor::new(g));
            }
        }
    }
}

impl<C: CheckpointStrategy> TorchOps for Autodiff<LibTorch, C> {
    fn torch_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        causal: bool,
        scale: Option<f64>,
    ) -> FloatTensor<Self> {
        tracked_attention::<C>(q, k, v, None, causal, scale)
    }
    fn torch_attention_biased(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        causal: bool,
        scale: Option<f64>,
    ) -> FloatTensor<Self> {
        tracked_attention::<C>(q, k, v, Some(bias), causal, scale)
    }
}

/// The forward pass under autodiff: the bias is a constant (no gradient).
fn tracked_attention<C: CheckpointStrategy>(
    q: FloatTensor<Autodiff<LibTorch, C>>,
    k: FloatTensor<Autodiff<LibTorch, C>>,
    v: FloatTensor<Autodiff<LibTorch, C>>,
    bias: Option<FloatTensor<Autodiff<LibTorch, C>>>,
    causal: bool,
    scale: Option<f64>,
) -> FloatTensor<Autodiff<LibTorch, C>> {
    let prep = AttentionBackward
        .prepare::<C>([q.node(), k.node(), v.node()])
        .compute_bound()
        .stateful();
    let (q, k, v) = (q.into_primitive(), k.into_primitive(), v.into_primitive());
    let bias = bias.map(|b| b.into_primitive());
    let f = forward(&q, &k, &v, bias.as_ref(), causal, scale);
    let out = f.out.clone();
    match prep {
        OpsKind::Tracked(prep) => {
            let state = AttentionState {
                q,
                k: f.k,
                v: f.v,
                out: f.out,
                logsumexp: f.logsumexp,
                bias,
                causal,
                scale,
                rep: f.rep,
            };
            prep.finish(state, out)
        }
        OpsKind::UnTracked(prep) => prep.finish(out),
    }
}
