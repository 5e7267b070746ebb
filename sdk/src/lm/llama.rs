//! The Llama-architecture causal transformer (RMSNorm, rotary embeddings on interleaved pairs,
//! SwiGLU MLP, grouped-query attention, tied or untied embeddings), with left-padded batches,
//! a KV cache for incremental decoding, per-token log-probs and an optional scalar value head.
//!
//! Weights are stored `[in, out]` so a linear layer is `x · W`; checkpoint loaders hand
//! [`LlamaWeights`] in the checkpoint's own `[out, in]` layout to [`Llama::from_weights`].

use burn::module::{Module, Param};
use burn::tensor::activation::{log_softmax, silu};
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Bool, Device, Int, Tensor, TensorData};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::components::regression::normal;
use crate::lm::fused;
use crate::lm::kernels::{AttentionShape, Rope};
use crate::rng::Rng;

/// Whether `device` (or the device under its autodiff) is libtorch.
fn is_libtorch(device: &Device) -> bool {
    #[cfg(feature = "tch")]
    {
        matches!(
            device.clone().inner().as_dispatch(),
            burn_dispatch::DispatchDevice::LibTorch(_)
        )
    }
    #[cfg(not(feature = "tch"))]
    {
        let _ = device;
        false
    }
}

/// The attention bias of a hidden key: far below any score, finite (so no `inf − inf`), and
/// still representable in bf16.
const HIDDEN: f32 = -1e30;

/// Architecture hyper-parameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LlamaConfig {
    pub vocab_size: usize,
    /// Model width.
    pub dim: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    /// Key/value heads (grouped-query attention when fewer than `n_heads`).
    pub n_kv_heads: usize,
    /// SwiGLU hidden width.
    pub hidden_dim: usize,
    /// Longest sequence (prompt + generation).
    pub max_seq_len: usize,
    #[serde(default = "default_theta")]
    pub rope_theta: f32,
    #[serde(default = "default_eps")]
    pub norm_eps: f32,
    /// Share the embedding matrix with the output layer.
    #[serde(default = "default_true")]
    pub tie_embeddings: bool,
    /// Add a scalar head on the final hidden state (reward models, PPO critics).
    #[serde(default)]
    pub value_head: bool,
    /// The architecture family (`llama` unless a checkpoint says otherwise).
    #[serde(default)]
    pub arch: Arch,
}

/// Which decoder a [`LlamaConfig`] describes.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Arch {
    /// Llama: RMSNorm before attention and the MLP, rotary embeddings on interleaved pairs,
    /// SwiGLU, `head_dim = dim / n_heads`.
    #[default]
    Llama,
    /// Gemma 3 (see [`Gemma3`]).
    Gemma3(Gemma3),
}

/// What Gemma 3 changes, as its reference implementations (Hugging Face `Gemma3ForCausalLM`,
/// llama.cpp's `gemma3` graph) define it:
///
/// - the embeddings are scaled by `√dim`; the output layer is the (unscaled) embedding;
/// - RMSNorms before *and after* attention and the MLP; their weights are stored as the
///   factor itself (`1 + w` in Hugging Face's parameterisation, as GGUF files store them);
/// - queries and keys get an RMSNorm over each head (QK-norm) before the rotation;
/// - rotary embeddings on the two halves of a head (GPT-NeoX order, not interleaved pairs);
/// - GeGLU (`gelu_tanh(gate) · up`);
/// - the attention logits scaled by `query_scale` instead of `1/√head_dim`;
/// - local layers (sliding-window attention over the last `sliding_window` positions, the
///   query's own included, rotary base `rope_local_theta`) and every `global_every`-th layer
///   global (full causal attention, base [`LlamaConfig::rope_theta`], positions divided by
///   `rope_scale`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Gemma3 {
    /// Width of one attention head (not `dim / n_heads`: 256 for Gemma-3-270M, whose `dim` is
    /// 640 with 4 heads).
    pub head_dim: usize,
    pub sliding_window: usize,
    /// Layers `global_every − 1`, `2·global_every − 1`, … are global (6 in Gemma 3).
    pub global_every: usize,
    pub rope_local_theta: f32,
    /// Linear RoPE scaling of the global layers (1 = none).
    pub rope_scale: f32,
    /// The attention logits' scale (`query_pre_attn_scalar^-½`).
    pub query_scale: f32,
}

impl Gemma3 {
    /// Whether layer `i` is a local (sliding-window) layer.
    pub fn is_local(&self, i: usize) -> bool {
        self.global_every == 0 || i % self.global_every < self.global_every - 1
    }
}

/// [`gelu_tanh`] elementwise.
fn gelu_tanh_tensor<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    const C: f64 = 0.797_884_560_802_865_4; // √(2/π)
    let inner = (x.clone() + x.clone().powi_scalar(3) * 0.044_715) * C;
    x * (inner.tanh() + 1.0) * 0.5
}

/// `gelu(x)` with the tanh approximation (PyTorch's `gelu(approximate="tanh")`).
pub fn gelu_tanh(x: f32) -> f32 {
    const C: f32 = 0.797_884_6; // √(2/π)
    0.5 * x * (1.0 + (C * (x + 0.044_715 * x * x * x)).tanh())
}

fn default_theta() -> f32 {
    10_000.0
}
fn default_eps() -> f32 {
    1e-5
}
fn default_true() -> bool {
    true
}

impl LlamaConfig {
    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        match &self.arch {
            Arch::Llama => self.dim / self.n_heads,
            Arch::Gemma3(g) => g.head_dim,
        }
    }

    /// Width of the queries of all heads (`dim` for Llama).
    pub fn q_dim(&self) -> usize {
        self.n_heads * self.head_dim()
    }

    /// The Gemma 3 settings, when it is one.
    pub fn gemma3(&self) -> Option<&Gemma3> {
        match &self.arch {
            Arch::Gemma3(g) => Some(g),
            Arch::Llama => None,
        }
    }

    /// Rotary base and position scale of layer `i`.
    pub fn rope_of_layer(&self, i: usize) -> (f32, f32) {
        match &self.arch {
            Arch::Gemma3(g) if g.is_local(i) => (g.rope_local_theta, 1.0),
            Arch::Gemma3(g) => (self.rope_theta, g.rope_scale),
            Arch::Llama => (self.rope_theta, 1.0),
        }
    }

    /// The sliding window of layer `i` (`None`: full causal attention).
    pub fn window_of_layer(&self, i: usize) -> Option<usize> {
        self.gemma3()
            .filter(|g| g.is_local(i))
            .map(|g| g.sliding_window)
    }

    /// Checks the shapes fit together.
    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("vocab_size", self.vocab_size),
            ("dim", self.dim),
            ("n_layers", self.n_layers),
            ("n_heads", self.n_heads),
            ("n_kv_heads", self.n_kv_heads),
            ("hidden_dim", self.hidden_dim),
            ("max_seq_len", self.max_seq_len),
        ];
        for (name, v) in positive {
            if v == 0 {
                return Err(format!("{name} must be positive"));
            }
        }
        if let Some(g) = self.gemma3() {
            if g.head_dim == 0 || g.sliding_window == 0 {
                return Err("gemma3 head_dim and sliding_window must be positive".into());
            }
            if !(g.rope_scale > 0.0 && g.query_scale > 0.0 && g.rope_local_theta > 0.0) {
                return Err(
                    "gemma3 rope_scale, query_scale and rope_local_theta must be positive".into(),
                );
            }
        } else if self.dim % self.n_heads != 0 {
            return Err(format!(
                "dim {} is not a multiple of n_heads {}",
                self.dim, self.n_heads
            ));
        }
        if self.n_heads % self.n_kv_heads != 0 {
            return Err(format!(
                "n_heads {} is not a multiple of n_kv_heads {}",
                self.n_heads, self.n_kv_heads
            ));
        }
        if self.head_dim() % 2 != 0 {
            return Err(format!(
                "the head width {} must be even for rotary embeddings",
                self.head_dim()
            ));
        }
        Ok(())
    }

    /// Trainable parameters (value head included when present).
    pub fn num_params(&self) -> usize {
        let (d, h, kv) = (self.dim, self.hidden_dim, self.n_kv_heads * self.head_dim());
        let q = self.q_dim();
        let gemma = if self.gemma3().is_some() {
            2 * d + 2 * self.head_dim()
        } else {
            0
        };
        let layer = 2 * d + d * q * 2 + 2 * d * kv + 3 * d * h + gemma;
        let head = if self.tie_embeddings {
            0
        } else {
            d * self.vocab_size
        };
        self.vocab_size * d
            + self.n_layers * layer
            + d
            + head
            + if self.value_head { d + 1 } else { 0 }
    }
}

/// One layer's weights in checkpoint layout: matrices `[out, in]`, row-major.
#[derive(Clone, Debug, Default)]
pub struct LayerWeights {
    pub attn_norm: Vec<f32>,
    pub wq: Vec<f32>,
    pub wk: Vec<f32>,
    pub wv: Vec<f32>,
    pub wo: Vec<f32>,
    pub ffn_norm: Vec<f32>,
    /// Gate projection (`w1`).
    pub w1: Vec<f32>,
    /// Down projection (`w2`).
    pub w2: Vec<f32>,
    /// Up projection (`w3`).
    pub w3: Vec<f32>,
    /// Gemma 3's extra norms.
    pub gemma: Option<GemmaNorms>,
}

/// Gemma 3's norms beyond Llama's, per layer: QK-norm (`[head_dim]`) and the norms after
/// attention and after the MLP (`[dim]`), each the factor itself (`1 + w`).
#[derive(Clone, Debug, Default)]
pub struct GemmaNorms {
    pub q_norm: Vec<f32>,
    pub k_norm: Vec<f32>,
    pub post_attn_norm: Vec<f32>,
    pub post_ffn_norm: Vec<f32>,
}

/// [`GemmaNorms`] in a burn block.
#[derive(Module, Debug)]
pub struct GemmaBlock {
    pub q_norm: RmsNorm,
    pub k_norm: RmsNorm,
    pub post_attn_norm: RmsNorm,
    pub post_ffn_norm: RmsNorm,
}

/// All weights in checkpoint layout.
#[derive(Clone, Debug, Default)]
pub struct LlamaWeights {
    /// `[vocab, dim]`.
    pub embed: Vec<f32>,
    pub layers: Vec<LayerWeights>,
    pub final_norm: Vec<f32>,
    /// `[vocab, dim]`, absent when tied.
    pub lm_head: Option<Vec<f32>>,
}

/// RMSNorm: `x / sqrt(mean(x²) + eps) · w`.
#[derive(Module, Debug)]
pub struct RmsNorm {
    pub weight: Param<Tensor<1>>,
    #[module(skip)]
    pub eps: f32,
}

impl RmsNorm {
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        if fused::enabled(&x) {
            return fused::rms_norm(x, self.weight.val(), self.eps);
        }
        let ms = x.clone().powi_scalar(2).mean_dim(D - 1);
        let normed = x * (ms + self.eps as f64).sqrt().recip();
        normed * self.weight.val().unsqueeze()
    }
}

/// One transformer block.
#[derive(Module, Debug)]
pub struct Block {
    pub attn_norm: RmsNorm,
    pub wq: Param<Tensor<2>>,
    pub wk: Param<Tensor<2>>,
    pub wv: Param<Tensor<2>>,
    pub wo: Param<Tensor<2>>,
    pub ffn_norm: RmsNorm,
    pub w1: Param<Tensor<2>>,
    pub w2: Param<Tensor<2>>,
    pub w3: Param<Tensor<2>>,
    pub gemma: Option<GemmaBlock>,
}

impl Block {
    /// Queries, keys and values `[B, T, heads, head_dim]` of the residual stream `x`
    /// `[B·T, dim]`, normed first (Gemma 3 also norms each query and key head).
    fn qkv(
        &self,
        x: Tensor<2>,
        b: usize,
        t: usize,
        c: &LlamaConfig,
    ) -> (Tensor<4>, Tensor<4>, Tensor<4>) {
        let (nh, nkv, hd) = (c.n_heads, c.n_kv_heads, c.head_dim());
        let h = self.attn_norm.forward(x);
        let q = h.clone().matmul(self.wq.val()).reshape([b, t, nh, hd]);
        let k = h.clone().matmul(self.wk.val()).reshape([b, t, nkv, hd]);
        let v = h.matmul(self.wv.val()).reshape([b, t, nkv, hd]);
        match &self.gemma {
            Some(g) => (g.q_norm.forward(q), g.k_norm.forward(k), v),
            None => (q, k, v),
        }
    }

    /// The block after attention: its output `o` `[B·T, q_dim]`, projected (Gemma 3: and
    /// normed), is added to the residual stream `x` `[B·T, dim]`, then the gated feed-forward
    /// network (SwiGLU; Gemma 3's GELU gate) is added in turn. `fused_swiglu` takes SwiGLU's
    /// fused kernel (the uncached path on `cpu`).
    fn finish(&self, x: Tensor<2>, o: Tensor<2>, c: &LlamaConfig, fused_swiglu: bool) -> Tensor<2> {
        let o = o.matmul(self.wo.val());
        let o = match &self.gemma {
            Some(g) => g.post_attn_norm.forward(o),
            None => o,
        };
        let x = x + o;
        let h = self.ffn_norm.forward(x.clone());
        let gate = h.clone().matmul(self.w1.val());
        let up = h.matmul(self.w3.val());
        let f = if c.gemma3().is_some() {
            gelu_tanh_tensor(gate) * up
        } else if fused_swiglu {
            fused::swiglu(gate, up)
        } else {
            silu(gate) * up
        }
        .matmul(self.w2.val());
        x + match &self.gemma {
            Some(g) => g.post_ffn_norm.forward(f),
            None => f,
        }
    }
}

/// The transformer.
#[derive(Module, Debug)]
pub struct Llama {
    /// `[vocab, dim]`.
    pub embed: Param<Tensor<2>>,
    pub layers: Vec<Block>,
    pub norm: RmsNorm,
    /// `[dim, vocab]`, absent when tied to `embed`.
    pub lm_head: Option<Param<Tensor<2>>>,
    /// `[dim, 1]` and `[1]`: the scalar value head.
    pub value_w: Option<Param<Tensor<2>>>,
    pub value_b: Option<Param<Tensor<1>>>,
    #[module(skip)]
    pub config: LlamaConfig,
}

/// Keys and values of the positions seen so far, per layer, plus each row's left padding.
#[derive(Clone, Debug)]
pub struct KvCache {
    layers: Vec<Option<(Tensor<4>, Tensor<4>)>>,
    /// Positions cached (padding included).
    pub len: usize,
    /// Left-padding length of each batch row.
    pub pad: Vec<usize>,
    /// Positions the layers' buffers hold (none: each step's keys are concatenated on).
    capacity: Option<usize>,
}

impl KvCache {
    /// An empty cache for rows with the given left padding.
    pub fn new(n_layers: usize, pad: Vec<usize>) -> Self {
        Self {
            layers: vec![None; n_layers],
            len: 0,
            pad,
            capacity: None,
        }
    }

    /// An empty cache whose buffers hold `capacity` positions, allocated at the first step:
    /// each later step writes its keys and values in place (on the CPU backend) instead of
    /// copying the whole cache, which decoding `capacity` tokens would otherwise copy
    /// `capacity` times. Past the capacity it concatenates, as [`new`](Self::new)'s does.
    pub fn with_capacity(n_layers: usize, pad: Vec<usize>, capacity: usize) -> Self {
        Self {
            capacity: Some(capacity),
            ..Self::new(n_layers, pad)
        }
    }

    /// Stores `layer`'s keys and values of positions `start..start + t` and returns those of
    /// positions `0..start + t`.
    fn append(
        &mut self,
        layer: usize,
        k: Tensor<4>,
        v: Tensor<4>,
        start: usize,
    ) -> (Tensor<4>, Tensor<4>) {
        let [b, h, t, d] = k.dims();
        let total = start + t;
        let room = self.capacity.filter(|&c| total <= c);
        let (k, v) = match (self.layers[layer].take(), room) {
            (Some((pk, pv)), Some(cap)) if pk.dims()[2] == cap => {
                let at = [0..b, 0..h, start..total, 0..d];
                (pk.slice_assign(at.clone(), k), pv.slice_assign(at, v))
            }
            (None, Some(cap)) if start == 0 => {
                let device = k.device();
                let buffer = || Tensor::<4>::zeros([b, h, cap, d], &device);
                let at = [0..b, 0..h, 0..t, 0..d];
                (
                    buffer().slice_assign(at.clone(), k),
                    buffer().slice_assign(at, v),
                )
            }
            (Some((pk, pv)), _) => (
                Tensor::cat(vec![pk.narrow(2, 0, start), k], 2),
                Tensor::cat(vec![pv.narrow(2, 0, start), v], 2),
            ),
            (None, _) => (k, v),
        };
        let used = (k.clone().narrow(2, 0, total), v.clone().narrow(2, 0, total));
        self.layers[layer] = Some((k, v));
        used
    }

    /// Replaces the rows by `rows` (indices into the current rows, repeats allowed): one
    /// prompt's cached prefill, copied to each continuation that shares it.
    pub fn select_rows(&mut self, rows: &[usize], device: &Device) {
        let ids: Vec<i64> = rows.iter().map(|&r| r as i64).collect();
        let idx = Tensor::<1, Int>::from_data(TensorData::new(ids, [rows.len()]), device);
        for (k, v) in self.layers.iter_mut().flatten() {
            *k = k.clone().select(0, idx.clone());
            *v = v.clone().select(0, idx.clone());
        }
        self.pad = rows.iter().map(|&r| self.pad[r]).collect();
    }
}

/// The first row of each run of equal consecutive items, and for every row the index of its
/// run: how rows that share a prompt are grouped.
pub fn runs<T: PartialEq>(items: &[T]) -> (Vec<usize>, Vec<usize>) {
    let (mut firsts, mut of) = (Vec::new(), Vec::with_capacity(items.len()));
    for i in 0..items.len() {
        if i == 0 || items[i] != items[i - 1] {
            firsts.push(i);
        }
        of.push(firsts.len() - 1);
    }
    (firsts, of)
}

fn param2(data: Vec<f32>, shape: [usize; 2], device: &Device) -> Param<Tensor<2>> {
    Param::from_tensor(Tensor::from_data(TensorData::new(data, shape), device))
}

fn param1(data: Vec<f32>, device: &Device) -> Param<Tensor<1>> {
    let n = data.len();
    Param::from_tensor(Tensor::from_data(TensorData::new(data, [n]), device))
}

/// `[out, in]` row-major to `[in, out]` row-major.
pub fn transpose(w: &[f32], out: usize, inp: usize) -> Vec<f32> {
    let mut t = vec![0.0; w.len()];
    for o in 0..out {
        for i in 0..inp {
            t[i * out + o] = w[o * inp + i];
        }
    }
    t
}

impl Llama {
    /// A freshly initialised model: weights `N(0, 0.02²)` (output projections scaled by
    /// `1/√(2·n_layers)`), norms at 1, drawn from `rng`.
    pub fn init(config: LlamaConfig, rng: &mut Rng, device: &Device) -> Result<Self, String> {
        config.validate()?;
        let (d, h, v) = (config.dim, config.hidden_dim, config.vocab_size);
        let kv = config.n_kv_heads * config.head_dim();
        let (q, hd) = (config.q_dim(), config.head_dim());
        let gemma = config.gemma3().is_some();
        let mut draw =
            |n: usize, std: f32| -> Vec<f32> { (0..n).map(|_| std * normal(rng)).collect() };
        let proj = 0.02 / (2.0 * config.n_layers as f32).sqrt();
        let layers = (0..config.n_layers)
            .map(|_| LayerWeights {
                attn_norm: vec![1.0; d],
                wq: draw(q * d, 0.02),
                wk: draw(kv * d, 0.02),
                wv: draw(kv * d, 0.02),
                wo: draw(d * q, proj),
                ffn_norm: vec![1.0; d],
                w1: draw(h * d, 0.02),
                w2: draw(d * h, proj),
                w3: draw(h * d, 0.02),
                gemma: gemma.then(|| GemmaNorms {
                    q_norm: vec![1.0; hd],
                    k_norm: vec![1.0; hd],
                    post_attn_norm: vec![1.0; d],
                    post_ffn_norm: vec![1.0; d],
                }),
            })
            .collect();
        let weights = LlamaWeights {
            embed: draw(v * d, 0.02),
            layers,
            final_norm: vec![1.0; d],
            lm_head: (!config.tie_embeddings).then(|| draw(v * d, 0.02)),
        };
        let value_head = config.value_head;
        let model = Self::from_weights(config, weights, device)?;
        Ok(if value_head {
            model.with_value_head(rng, device)
        } else {
            model
        })
    }

    /// This model with a fresh scalar value head (weights `N(0, 0.02²)`, bias 0), replacing any
    /// it had: how a reward model or critic starts from a trained language model.
    pub fn with_value_head(mut self, rng: &mut Rng, device: &Device) -> Self {
        let d = self.config.dim;
        let w: Vec<f32> = (0..d).map(|_| 0.02 * normal(rng)).collect();
        self.value_w = Some(param2(w, [d, 1], device));
        self.value_b = Some(param1(vec![0.0], device));
        self.config.value_head = true;
        self
    }

    /// Adds `delta` to the value head's bias (nothing without a head): how a critic started
    /// from a reward model inherits the reward's normalisation.
    pub fn offset_value(&mut self, delta: f32) {
        if let Some(b) = &self.value_b {
            let device = b.val().device();
            let v: Vec<f32> = b.val().into_data().try_into_vec().unwrap_or_default();
            self.value_b = Some(param1(v.into_iter().map(|x| x + delta).collect(), &device));
        }
    }

    /// A model from checkpoint-layout weights (no value head); checks every size.
    pub fn from_weights(
        config: LlamaConfig,
        w: LlamaWeights,
        device: &Device,
    ) -> Result<Self, String> {
        config.validate()?;
        let (d, h, v) = (config.dim, config.hidden_dim, config.vocab_size);
        let kv = config.n_kv_heads * config.head_dim();
        let (q, hd) = (config.q_dim(), config.head_dim());
        let check = |name: &str, got: usize, want: usize| {
            if got == want {
                Ok(())
            } else {
                Err(format!("{name} has {got} values, expected {want}"))
            }
        };
        check("embedding", w.embed.len(), v * d)?;
        check("final norm", w.final_norm.len(), d)?;
        if w.layers.len() != config.n_layers {
            return Err(format!(
                "{} layers, expected {}",
                w.layers.len(),
                config.n_layers
            ));
        }
        let mut layers = Vec::with_capacity(config.n_layers);
        for (i, l) in w.layers.into_iter().enumerate() {
            check(&format!("layer {i} attention norm"), l.attn_norm.len(), d)?;
            check(&format!("layer {i} wq"), l.wq.len(), q * d)?;
            check(&format!("layer {i} wk"), l.wk.len(), kv * d)?;
            check(&format!("layer {i} wv"), l.wv.len(), kv * d)?;
            check(&format!("layer {i} wo"), l.wo.len(), d * q)?;
            let norm = |w: Vec<f32>| RmsNorm {
                weight: param1(w, device),
                eps: config.norm_eps,
            };
            let gemma = match (config.gemma3().is_some(), l.gemma) {
                (false, None) => None,
                (false, Some(_)) => return Err(format!("layer {i} has Gemma norms in a Llama")),
                (true, None) => return Err(format!("layer {i} lacks Gemma 3's extra norms")),
                (true, Some(g)) => {
                    check(&format!("layer {i} q norm"), g.q_norm.len(), hd)?;
                    check(&format!("layer {i} k norm"), g.k_norm.len(), hd)?;
                    check(
                        &format!("layer {i} post-attention norm"),
                        g.post_attn_norm.len(),
                        d,
                    )?;
                    check(
                        &format!("layer {i} post-MLP norm"),
                        g.post_ffn_norm.len(),
                        d,
                    )?;
                    Some(GemmaBlock {
                        q_norm: norm(g.q_norm),
                        k_norm: norm(g.k_norm),
                        post_attn_norm: norm(g.post_attn_norm),
                        post_ffn_norm: norm(g.post_ffn_norm),
                    })
                }
            };
            check(&format!("layer {i} ffn norm"), l.ffn_norm.len(), d)?;
            check(&format!("layer {i} w1"), l.w1.len(), h * d)?;
            check(&format!("layer {i} w2"), l.w2.len(), d * h)?;
            check(&format!("layer {i} w3"), l.w3.len(), h * d)?;
            layers.push(Block {
                attn_norm: RmsNorm {
                    weight: param1(l.attn_norm, device),
                    eps: config.norm_eps,
                },
                wq: param2(transpose(&l.wq, q, d), [d, q], device),
                wk: param2(transpose(&l.wk, kv, d), [d, kv], device),
                wv: param2(transpose(&l.wv, kv, d), [d, kv], device),
                wo: param2(transpose(&l.wo, d, q), [q, d], device),
                ffn_norm: RmsNorm {
                    weight: param1(l.ffn_norm, device),
                    eps: config.norm_eps,
                },
                w1: param2(transpose(&l.w1, h, d), [d, h], device),
                w2: param2(transpose(&l.w2, d, h), [h, d], device),
                w3: param2(transpose(&l.w3, h, d), [d, h], device),
                gemma,
            });
        }
        let lm_head = match (config.tie_embeddings, w.lm_head) {
            (true, _) => None,
            (false, Some(head)) => {
                check("output layer", head.len(), v * d)?;
                Some(param2(transpose(&head, v, d), [d, v], device))
            }
            (false, None) => return Err("untied embeddings need an output layer".into()),
        };
        Ok(Self {
            embed: param2(w.embed, [v, d], device),
            layers,
            norm: RmsNorm {
                weight: param1(w.final_norm, device),
                eps: config.norm_eps,
            },
            lm_head,
            value_w: None,
            value_b: None,
            config,
        })
    }

    /// A copy of this model, value head included, on `device` through host memory: how an
    /// inference copy becomes trainable again (on an autodiff device), bit for bit.
    pub fn trainable_copy(&self, device: &Device) -> Result<Self, String> {
        let mut m = Self::from_weights(self.config.clone(), self.to_weights(), device)?;
        let copy2 = |p: &Param<Tensor<2>>| {
            Param::from_tensor(Tensor::from_data(p.val().into_data(), device))
        };
        let copy1 = |p: &Param<Tensor<1>>| {
            Param::from_tensor(Tensor::from_data(p.val().into_data(), device))
        };
        m.value_w = self.value_w.as_ref().map(copy2);
        m.value_b = self.value_b.as_ref().map(copy1);
        m.config.value_head = m.value_w.is_some();
        Ok(m)
    }

    /// Back to checkpoint layout (for writing checkpoints).
    pub fn to_weights(&self) -> LlamaWeights {
        let c = &self.config;
        let (d, h, v) = (c.dim, c.hidden_dim, c.vocab_size);
        let kv = c.n_kv_heads * c.head_dim();
        let q = c.q_dim();
        let vec1 = |p: &Param<Tensor<1>>| {
            p.val()
                .into_data()
                .convert::<f32>()
                .try_into_vec::<f32>()
                .expect("f32")
        };
        let vec2 = |p: &Param<Tensor<2>>| {
            p.val()
                .into_data()
                .convert::<f32>()
                .try_into_vec::<f32>()
                .expect("f32")
        };
        LlamaWeights {
            embed: vec2(&self.embed),
            layers: self
                .layers
                .iter()
                .map(|b| LayerWeights {
                    attn_norm: vec1(&b.attn_norm.weight),
                    wq: transpose(&vec2(&b.wq), d, q),
                    wk: transpose(&vec2(&b.wk), d, kv),
                    wv: transpose(&vec2(&b.wv), d, kv),
                    wo: transpose(&vec2(&b.wo), q, d),
                    ffn_norm: vec1(&b.ffn_norm.weight),
                    w1: transpose(&vec2(&b.w1), d, h),
                    w2: transpose(&vec2(&b.w2), h, d),
                    w3: transpose(&vec2(&b.w3), d, h),
                    gemma: b.gemma.as_ref().map(|g| GemmaNorms {
                        q_norm: vec1(&g.q_norm.weight),
                        k_norm: vec1(&g.k_norm.weight),
                        post_attn_norm: vec1(&g.post_attn_norm.weight),
                        post_ffn_norm: vec1(&g.post_ffn_norm.weight),
                    }),
                })
                .collect(),
            final_norm: vec1(&self.norm.weight),
            lm_head: self.lm_head.as_ref().map(|p| transpose(&vec2(p), d, v)),
        }
    }

    /// Rotary tables `[B, 1, T, D]` for rows whose absolute indices run from `start` to
    /// `start + t`, position = (index − pad) / `scale`, base `theta` (llama2.c's f32
    /// arithmetic): the cosine at both members of each pair, the sine negated at the first
    /// member (see [`apply_rope`](Self::apply_rope)). Pairs are interleaved (`2j, 2j+1`) for
    /// Llama and the two halves (`j, j + D/2`) for Gemma 3.
    fn rope(
        &self,
        pad: &[usize],
        start: usize,
        t: usize,
        key: (f32, f32),
        device: &Device,
    ) -> (Tensor<4>, Tensor<4>) {
        let table = self.rope_table(pad, start, t, key);
        let (hd, halves) = (table.dim, table.halves);
        let shape = [pad.len(), 1, t, hd];
        let mut sin = table.sin;
        for row in sin.chunks_mut(hd) {
            for j in 0..hd / 2 {
                row[if halves { j } else { 2 * j }] *= -1.0;
            }
        }
        (
            Tensor::from_data(TensorData::new(table.cos, shape), device),
            Tensor::from_data(TensorData::new(sin, shape), device),
        )
    }

    /// The rotary table of [`rope`](Self::rope) as `[B, T, D]` host rows.
    fn rope_table(
        &self,
        pad: &[usize],
        start: usize,
        t: usize,
        (theta, scale): (f32, f32),
    ) -> Rope {
        let hd = self.config.head_dim();
        let halves = self.config.gemma3().is_some();
        let b = pad.len();
        let freqs: Vec<f32> = (0..hd / 2)
            .map(|j| 1.0f32 / theta.powf((2 * j) as f32 / hd as f32))
            .collect();
        let mut cos = Vec::with_capacity(b * t * hd);
        let mut sin = Vec::with_capacity(b * t * hd);
        let (mut c_row, mut s_row) = (vec![0f32; hd], vec![0f32; hd]);
        for &p in pad {
            for i in start..start + t {
                let pos = i.saturating_sub(p) as f32 / scale;
                for (j, &f) in freqs.iter().enumerate() {
                    let (s, c) = (pos * f).sin_cos();
                    let (a, b) = if halves {
                        (j, j + hd / 2)
                    } else {
                        (2 * j, 2 * j + 1)
                    };
                    (c_row[a], c_row[b], s_row[a], s_row[b]) = (c, c, s, s);
                }
                cos.extend_from_slice(&c_row);
                sin.extend_from_slice(&s_row);
            }
        }
        Rope {
            cos,
            sin,
            batch: b,
            len: t,
            dim: hd,
            halves,
        }
    }

    /// Rotates each pair `(a, b)` of `x` `[B, H, T, D]` by its angle: `(x_a·cos − x_b·sin,
    /// x_b·cos + x_a·sin)`, as `x·cos + flip(x)·sin` with [`rope`](Self::rope)'s signed sine,
    /// where `flip` exchanges the members of each pair (no matrix product).
    fn apply_rope(&self, x: Tensor<4>, cos: &Tensor<4>, sin: &Tensor<4>) -> Tensor<4> {
        let [b, h, t, d] = x.dims();
        let flipped = if self.config.gemma3().is_some() {
            x.clone().reshape([b, h, t, 2, d / 2]).flip([3])
        } else {
            x.clone().reshape([b, h, t, d / 2, 2]).flip([4])
        };
        x * cos.clone() + flipped.reshape([b, h, t, d]) * sin.clone()
    }

    /// Final hidden states `[B, T, dim]` for `tokens` `[B, T]`. Row `b` has `pad[b]` left
    /// padding positions (in the whole sequence, cache included). With a cache, `tokens`
    /// continue the cached positions and the cache is extended.
    pub fn forward_hidden(
        &self,
        tokens: Tensor<2, Int>,
        pad: &[usize],
        mut cache: Option<&mut KvCache>,
    ) -> Tensor<3> {
        if cache.is_none() && fused::enabled(&self.embed.val()) {
            return self.forward_hidden_fused(tokens, pad);
        }
        let device = tokens.device();
        let [b, t] = tokens.dims();
        let c = &self.config;
        let (nh, nkv, hd) = (c.n_heads, c.n_kv_heads, c.head_dim());
        let start = cache.as_ref().map_or(0, |c| c.len);
        let total = start + t;
        // One rotary table per distinct (base, scale): Gemma 3's local and global layers.
        let mut ropes: Vec<((f32, f32), (Tensor<4>, Tensor<4>))> = Vec::new();
        for li in 0..c.n_layers {
            let key = c.rope_of_layer(li);
            if !ropes.iter().any(|(k, _)| *k == key) {
                ropes.push((key, self.rope(pad, start, t, key, &device)));
            }
        }
        // Mask (true = hidden): keys that are padding, in the future, or (sliding-window
        // layers) `window` or more positions back. A padding query keeps its own key so its
        // softmax is defined (its output is never used). On libtorch the keys are hidden by an
        // additive bias instead (0 or −10³⁰, a weight of exactly 0): burn-tch 0.22 hands a
        // boolean mask to libtorch, whose `True` means "attend", the opposite of burn's.
        // Elsewhere the boolean mask is faster.
        let no_pad = pad.iter().all(|&p| p == 0);
        let masks = |window: Option<usize>| -> (Option<Tensor<4, Bool>>, Option<Tensor<4>>, bool) {
            let windowed = window.is_some_and(|w| total > w);
            let mask = if !windowed && no_pad && (start == 0 || t == 1) {
                None
            } else {
                let w = window.unwrap_or(usize::MAX);
                let mut m = Vec::with_capacity(b * t * total);
                for &p in pad {
                    for qi in start..total {
                        for kj in 0..total {
                            m.push(kj > qi || (kj != qi && (kj < p || qi - kj >= w)));
                        }
                    }
                }
                let m = Tensor::<4, Bool>::from_data(TensorData::new(m, [b, 1, t, total]), &device);
                Some(m.expand([b, nh, t, total]))
            };
            let (mask, bias) = match mask {
                Some(m) if is_libtorch(&device) => {
                    let zeros = Tensor::<4>::zeros(m.dims(), &device);
                    (None, Some(zeros.mask_fill(m, HIDDEN)))
                }
                m => (m, None),
            };
            let causal_only = mask.is_none() && bias.is_none() && start == 0;
            (mask, bias, causal_only)
        };
        let full = masks(None);
        let local = c.gemma3().map(|g| masks(Some(g.sliding_window)));
        let scale = c.gemma3().map(|g| g.query_scale as f64);

        // Activations stay `[B·T, dim]` so every projection is one 2-D matrix product (one
        // large GEMM that the backend parallelises), reshaped only around attention.
        let n = b * t;
        let mut x = self.embed_rows(tokens.reshape([n]));
        for (li, layer) in self.layers.iter().enumerate() {
            let (q, k, v) = layer.qkv(x.clone(), b, t, c);
            let (q, k, v) = (q.swap_dims(1, 2), k.swap_dims(1, 2), v.swap_dims(1, 2));
            let key = c.rope_of_layer(li);
            let (_, (cos, sin)) = ropes.iter().find(|(k, _)| *k == key).expect("built above");
            let q = self.apply_rope(q, cos, sin);
            let k = self.apply_rope(k, cos, sin);
            let (k, v) = match cache.as_deref_mut() {
                Some(cache) => cache.append(li, k, v, start),
                None => (k, v),
            };
            let (mask, bias, causal_only) = match (&local, c.window_of_layer(li)) {
                (Some(local), Some(_)) => local,
                _ => &full,
            };
            let options = AttentionModuleOptions {
                scale,
                softcap: None,
                is_causal: *causal_only && t > 1,
            };
            let rep = nh / nkv;
            let o = if rep > 1 && t == 1 {
                // One new position (a decoding step): the `rep` query heads of each key-value
                // head attend as `rep` queries of one head, so the cached keys and values are
                // read as they are instead of being copied `rep` times.
                let [kb, _, tk, _] = k.dims();
                let group = |m: Tensor<4, Bool>| m.reshape([kb, nkv, rep, tk]);
                let o = attention(
                    q.reshape([b, nkv, rep, hd]),
                    k,
                    v,
                    mask.clone().map(group),
                    bias.clone().map(|x| x.reshape([kb, nkv, rep, tk])),
                    options,
                );
                o.reshape([b, nh, 1, hd])
            } else if fused::torch_enabled(&q) {
                // `tch:cpu`: libtorch's fused kernel, keys and values as they are.
                #[cfg(feature = "tch")]
                {
                    fused::torch_attention(q, k, v, bias.clone(), *causal_only && t > 1, scale)
                }
                #[cfg(not(feature = "tch"))]
                unreachable!("torch_enabled needs the tch feature")
            } else {
                let grow = |x: Tensor<4>| {
                    let [b, _, tk, _] = x.dims();
                    x.unsqueeze_dim::<5>(2)
                        .expand([b, nkv, rep, tk, hd])
                        .reshape([b, nh, tk, hd])
                };
                let (k, v) = if rep > 1 { (grow(k), grow(v)) } else { (k, v) };
                attention(q, k, v, mask.clone(), bias.clone(), options)
            };
            x = layer.finish(x, o.swap_dims(1, 2).reshape([n, c.q_dim()]), c, false);
        }
        if let Some(cache) = cache {
            cache.len = total;
        }
        self.norm.forward(x).reshape([b, t, c.dim])
    }

    /// The embeddings `[N, dim]` of `ids` `[N]` (Gemma 3 scales them by √dim).
    fn embed_rows(&self, ids: Tensor<1, Int>) -> Tensor<2> {
        let x = self.embed.val().select(0, ids);
        match self.config.gemma3() {
            Some(_) => x * (self.config.dim as f64).sqrt(),
            None => x,
        }
    }

    /// [`forward_hidden`](Self::forward_hidden) without a cache through the [fused
    /// ops](crate::lm::fused): activations stay `[B, T, heads, head_dim]` around attention, so
    /// nothing is transposed, and keys and values are never repeated.
    fn forward_hidden_fused(&self, tokens: Tensor<2, Int>, pad: &[usize]) -> Tensor<3> {
        let [b, t] = tokens.dims();
        let c = &self.config;
        let (nh, nkv, hd) = (c.n_heads, c.n_kv_heads, c.head_dim());
        let mut tables: Vec<((f32, f32), std::sync::Arc<Rope>)> = Vec::new();
        for li in 0..c.n_layers {
            let key = c.rope_of_layer(li);
            if !tables.iter().any(|(k, _)| *k == key) {
                tables.push((key, std::sync::Arc::new(self.rope_table(pad, 0, t, key))));
            }
        }
        let scale = c
            .gemma3()
            .map_or(1.0 / (hd as f32).sqrt(), |g| g.query_scale);
        let shape = |window: Option<usize>| {
            std::sync::Arc::new(AttentionShape {
                batch: b,
                len: t,
                q_heads: nh,
                kv_heads: nkv,
                head_dim: hd,
                pad: pad.to_vec(),
                window,
                scale,
            })
        };
        let n = b * t;
        let mut x = self.embed_rows(tokens.reshape([n]));
        for (li, layer) in self.layers.iter().enumerate() {
            let (q, k, v) = layer.qkv(x.clone(), b, t, c);
            let key = c.rope_of_layer(li);
            let (_, table) = tables.iter().find(|(k, _)| *k == key).expect("built above");
            let q = fused::rope(q, table.clone());
            let k = fused::rope(k, table.clone());
            let o = fused::attention(q, k, v, shape(c.window_of_layer(li)));
            x = layer.finish(x, o.reshape([n, c.q_dim()]), c, true);
        }
        self.norm.forward(x).reshape([b, t, c.dim])
    }

    /// Logits `[B, T, vocab]` from hidden states.
    pub fn logits(&self, hidden: Tensor<3>) -> Tensor<3> {
        let w = match &self.lm_head {
            Some(head) => head.val(),
            None => self.embed.val().transpose(),
        };
        let [b, t, d] = hidden.dims();
        hidden
            .reshape([b * t, d])
            .matmul(w)
            .reshape([b, t, self.config.vocab_size])
    }

    /// Logits `[B, T, vocab]` for `tokens` (see [`forward_hidden`](Self::forward_hidden)).
    pub fn forward(
        &self,
        tokens: Tensor<2, Int>,
        pad: &[usize],
        cache: Option<&mut KvCache>,
    ) -> Tensor<3> {
        self.logits(self.forward_hidden(tokens, pad, cache))
    }

    /// The value head on hidden states: `[B, T]`. `None` without a value head.
    pub fn values(&self, hidden: Tensor<3>) -> Option<Tensor<2>> {
        let (w, b) = (self.value_w.as_ref()?, self.value_b.as_ref()?);
        let [bs, t, _] = hidden.dims();
        let d = self.config.dim;
        Some((hidden.reshape([bs * t, d]).matmul(w.val()) + b.val().unsqueeze()).reshape([bs, t]))
    }

    /// `log p(tokens[:, i+1] | tokens[:, ..=i])` with logits divided by `temperature`:
    /// `[B, T−1]`.
    pub fn token_logprobs(
        &self,
        tokens: Tensor<2, Int>,
        pad: &[usize],
        temperature: f32,
    ) -> Tensor<2> {
        let [b, t] = tokens.dims();
        let logits = self.forward(tokens.clone().narrow(1, 0, t - 1), pad, None);
        let logits = if temperature > 0.0 && temperature != 1.0 {
            logits / temperature as f64
        } else {
            logits
        };
        let targets = tokens.narrow(1, 1, t - 1);
        if fused::enabled(&logits) {
            let rows = b * (t - 1);
            let v = self.config.vocab_size;
            return fused::token_logprobs(logits.reshape([rows, v]), targets.reshape([rows]))
                .reshape([b, t - 1]);
        }
        let lp = log_softmax(logits, 2);
        lp.gather(2, targets.reshape([b, t - 1, 1]))
            .reshape([b, t - 1])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::rng;
    use proptest::prelude::*;

    fn tiny(seed: u64, n_kv: usize) -> Llama {
        let config = LlamaConfig {
            vocab_size: 23,
            dim: 16,
            n_layers: 2,
            n_heads: 4,
            n_kv_heads: n_kv,
            hidden_dim: 24,
            max_seq_len: 64,
            rope_theta: 10_000.0,
            norm_eps: 1e-5,
            tie_embeddings: seed % 2 == 0,
            value_head: true,
            // Every third seed a Gemma 3 (head width 8 ≠ 16 / 4; a window of 4 positions on
            // the local layer 0, layer 1 global).
            arch: if seed % 3 == 0 {
                Arch::Gemma3(Gemma3 {
                    head_dim: 8,
                    sliding_window: 4,
                    global_every: 2,
                    rope_local_theta: 50.0,
                    rope_scale: 2.0,
                    query_scale: 0.25,
                })
            } else {
                Arch::Llama
            },
        };
        // Larger weights than the default init, so the test sees real attention patterns.
        let mut model =
            Llama::init(config, &mut rng(seed, 0), &crate::device::test_device()).unwrap();
        model = model.map_params_scaled(10.0);
        model
    }

    impl Llama {
        fn map_params_scaled(self, s: f32) -> Self {
            let w = self.to_weights();
            let scale = |v: Vec<f32>| v.into_iter().map(|x| x * s).collect::<Vec<_>>();
            let w = LlamaWeights {
                embed: scale(w.embed),
                layers: w
                    .layers
                    .into_iter()
                    .map(|l| LayerWeights {
                        wq: scale(l.wq),
                        wk: scale(l.wk),
                        w1: scale(l.w1),
                        ..l
                    })
                    .collect(),
                ..w
            };
            let mut scaled =
                Llama::from_weights(self.config.clone(), w, &crate::device::test_device()).unwrap();
            scaled.value_w = self.value_w;
            scaled.value_b = self.value_b;
            scaled
        }
    }

    fn ids(v: &[u32], rows: usize) -> Tensor<2, Int> {
        let data: Vec<i64> = v.iter().map(|&x| x as i64).collect();
        Tensor::from_data(
            TensorData::new(data, [rows, v.len() / rows]),
            &crate::device::test_device(),
        )
    }

    fn to_vec<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .unwrap()
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

        #[test]
        fn kv_cache_decoding_equals_recomputation(
            seed in 0u64..1000, kv in prop::sample::select(vec![1usize, 2, 4]),
            tokens in prop::collection::vec(0u32..23, 2..20), split in 1usize..19,
        ) {
            let model = tiny(seed, kv);
            let t = tokens.len();
            let split = split.min(t - 1);
            let full = to_vec(model.forward(ids(&tokens, 1), &[0], None));
            let n = model.config.n_layers;
            // Growing by concatenation, in a buffer of the whole length, and in one that
            // runs out half way.
            for mut cache in [
                KvCache::new(n, vec![0]),
                KvCache::with_capacity(n, vec![0], t),
                KvCache::with_capacity(n, vec![0], split + (t - split) / 2),
            ] {
                let mut inc = to_vec(model.forward(ids(&tokens[..split], 1), &[0], Some(&mut cache)));
                for i in split..t {
                    inc.extend(to_vec(model.forward(ids(&tokens[i..i + 1], 1), &[0], Some(&mut cache))));
                }
                prop_assert_eq!(full.len(), inc.len());
                let worst = full.iter().zip(&inc).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
                prop_assert!(worst <= 1e-4, "max |Δlogit| = {}", worst);
            }
        }

        #[test]
        fn logprobs_and_values_are_invariant_to_left_padding(
            seed in 0u64..1000, kv in prop::sample::select(vec![1usize, 2, 4]),
            a in prop::collection::vec(0u32..23, 2..12), pad in 1usize..6, filler in 0u32..23,
        ) {
            let model = tiny(seed, kv);
            let alone = to_vec(model.token_logprobs(ids(&a, 1), &[0], 0.7));
            let mut padded = vec![filler; pad];
            padded.extend(&a);
            // A second row without padding, so the batch really is mixed.
            let mut other = a.clone();
            other.extend(std::iter::repeat_n(3, pad));
            let mut both = padded.clone();
            both.extend(&other);
            let batch = to_vec(model.token_logprobs(ids(&both, 2), &[pad, 0], 0.7));
            let width = a.len() + pad - 1;
            let row0 = &batch[pad..width];
            let worst = alone.iter().zip(row0).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
            prop_assert!(worst <= 1e-4, "max |Δlogp| = {}", worst);
            let v_alone = to_vec(model.values(model.forward_hidden(ids(&a, 1), &[0], None)).unwrap());
            let v_pad = to_vec(model.values(model.forward_hidden(ids(&padded, 1), &[pad], None)).unwrap());
            let worst = v_alone.iter().zip(&v_pad[pad..]).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
            prop_assert!(worst <= 1e-4, "max |Δvalue| = {}", worst);
        }
    }

    #[test]
    fn weights_round_trip_through_checkpoint_layout() {
        let m = tiny(3, 2);
        let again = Llama::from_weights(
            m.config.clone(),
            m.to_weights(),
            &crate::device::test_device(),
        )
        .unwrap();
        let t = ids(&[1, 5, 7, 2], 1);
        assert_eq!(
            to_vec(m.forward(t.clone(), &[0], None)),
            to_vec(again.forward(t, &[0], None))
        );
    }

    #[test]
    fn bad_shapes_are_errors() {
        let m = tiny(1, 2);
        let mut w = m.to_weights();
        w.layers[1].wk.pop();
        let e =
            Llama::from_weights(m.config.clone(), w, &crate::device::test_device()).unwrap_err();
        assert!(e.contains("layer 1 wk"), "{e}");
        let mut c = m.config.clone();
        c.n_kv_heads = 3;
        assert!(c.validate().is_err());
    }
}
