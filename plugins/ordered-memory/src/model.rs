//! The Ordered Memory encoder (Shen et al., 2019) and the LSTM baseline, as burn modules.
//!
//! Notation follows the paper; slot 0 is the lowest level of the memory and slot `n−1` the
//! root. For token `t`:
//!
//! - input `x_t = LN(W x_t)`;
//! - attention `β_t^i = [wᵀ ReLU(LN(W_q x_t) + LN(W_k M̂_{t−1}^i)) + b]/√D`,
//!   `p_t^i ∝ exp(β_t^i)·mask_i` with `mask_i = π→_{t−1}^{i+1}` (0 where below 1e-5) and
//!   `mask_{n−1} = 1`; at `t = 1`, `p = 0`, `π→ = 0`, `π← = 1` ([`pointer`]);
//! - `π→_t^i = Σ_{j≤i} p^j`, `π←_t^i = Σ_{j≥i} p^j`;
//! - memory `M_t = M_{t−1} ⊙ (1 − π←_t) + M̂_{t−1} ⊙ π←_t` ([`memory_update`]);
//! - candidates `h_{−1} = x_t`, `h_i = x_t ⊙ (1 − π→_t^i) + cell(h_{i−1}, M_t^i) ⊙ π→_t^i`,
//!   `M̂_t^i = h_i`, output `o_t = h_{n−1}`;
//! - Gated Recursive Cell `[g_v; g_h; g_c; c] = W₂ ReLU(W₁[v; h] + b₁) + b₂`,
//!   `cell(v, h) = LN(σ(g_v)⊙v + σ(g_h)⊙h + σ(g_c)⊙c)`.
//!
//! As in the reference code, one layer norm serves the input projection and the cell, the
//! cell's hidden layer is `4D` wide by default, and a slot whose `π→` is exactly 0 for the
//! whole batch skips the cell (its candidate is `x_t` either way), which makes a sharp pointer
//! cheap. Going further than the reference, when at most ¾ of the rows have a positive `π→` at
//! a slot, the cell runs on those rows only and is added back into `x_t`'s (the same values
//! and gradients, for less arithmetic). The classifier reads the output at each sequence's last token.

use lmlab_sdk::burn::module::{Module, Param};
use lmlab_sdk::burn::nn::{LayerNorm, LayerNormConfig};
use lmlab_sdk::burn::tensor::activation::{relu, sigmoid};
use lmlab_sdk::burn::tensor::{Device, IndexingUpdateOp, Int, Tensor, TensorData};
use lmlab_sdk::components::regression::normal;
use lmlab_sdk::components::supervised::Dense;
use lmlab_sdk::rng::Rng;
use rand::Rng as _;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::listops::{Example, PAD, VOCAB};

/// The number of classes (ListOps values 0–9).
pub const CLASSES: usize = 10;

/// Attention mass below this (in the cumulative pointer) masks a slot.
pub const MASK_EPS: f32 = 1e-5;

/// Ordered Memory's settings. The defaults are the reference ListOps hyper-parameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct OmConfig {
    /// Slot size `D` (also the embedding size).
    pub hidden: usize,
    /// Memory slots `n`.
    pub slots: usize,
    /// Width of the cell's hidden layer (none: `4D`, as the reference).
    pub cell_hidden: Option<usize>,
    /// Dropout on the cell's input and hidden layer.
    pub dropout: f64,
    /// Dropout on the attention's query, keys and hidden layer.
    pub dropout_memory: f64,
    /// Dropout on the embeddings.
    pub dropout_input: f64,
    /// Dropout before the classifier.
    pub dropout_output: f64,
    /// Run a slot's cell only on the rows whose `π→` there is positive when at most ¾ of them
    /// are (false: on the whole batch, as the reference; the values are the same).
    pub gather_rows: bool,
}

impl Default for OmConfig {
    fn default() -> Self {
        Self {
            hidden: 128,
            slots: 21,
            cell_hidden: None,
            dropout: 0.1,
            dropout_memory: 0.3,
            dropout_input: 0.1,
            dropout_output: 0.2,
            gather_rows: true,
        }
    }
}

/// The LSTM baseline's settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct LstmConfig {
    /// Hidden size (none: the largest whose parameter count does not exceed Ordered
    /// Memory's).
    pub hidden: Option<usize>,
    /// Embedding size (none: Ordered Memory's `hidden`).
    pub embed: Option<usize>,
    pub dropout_input: f64,
    pub dropout_output: f64,
}

impl Default for LstmConfig {
    fn default() -> Self {
        Self {
            hidden: None,
            embed: None,
            dropout_input: 0.1,
            dropout_output: 0.2,
        }
    }
}

/// Inverted dropout with masks drawn from `r` (so runs are reproducible); identity when `r`
/// is `None` (evaluation) or `rate` is 0.
pub fn dropout<const D: usize>(x: Tensor<D>, rate: f64, r: &mut Option<&mut Rng>) -> Tensor<D> {
    let Some(r) = r.as_deref_mut() else {
        return x;
    };
    if rate <= 0.0 {
        return x;
    }
    let shape = x.shape();
    let keep = 1.0 - rate;
    let scale = (1.0 / keep) as f32;
    let mask: Vec<f32> = (0..shape.num_elements())
        .map(|_| if r.random::<f64>() < keep { scale } else { 0.0 })
        .collect();
    let mask = Tensor::<D>::from_data(TensorData::new(mask, shape), &x.device());
    x * mask
}

/// A right-padded batch of token ids.
pub struct Batch {
    /// `[B, T]`, padded with [`PAD`].
    pub ids: Tensor<2, Int>,
    /// Each sequence's length.
    pub lengths: Vec<usize>,
    /// `[B]` labels.
    pub labels: Tensor<1, Int>,
}

impl Batch {
    pub fn new(examples: &[&Example], device: &Device) -> Self {
        let b = examples.len();
        let t = examples
            .iter()
            .map(|e| e.tokens.len())
            .max()
            .unwrap_or(1)
            .max(1);
        let mut ids = vec![PAD as i64; b * t];
        for (i, e) in examples.iter().enumerate() {
            for (j, &tok) in e.tokens.iter().enumerate() {
                ids[i * t + j] = tok as i64;
            }
        }
        let labels: Vec<i64> = examples.iter().map(|e| e.label as i64).collect();
        Self {
            ids: Tensor::from_data(TensorData::new(ids, [b, t]), device),
            lengths: examples.iter().map(|e| e.tokens.len().max(1)).collect(),
            labels: Tensor::from_data(TensorData::new(labels, [b]), device),
        }
    }

    /// `[B, 1, D]` indices of each sequence's last position, for `gather` on `[B, T, D]`.
    fn last_index(&self, d: usize, device: &Device) -> Tensor<3, Int> {
        let idx: Vec<i64> = self
            .lengths
            .iter()
            .flat_map(|&l| std::iter::repeat_n(l as i64 - 1, d))
            .collect();
        Tensor::from_data(TensorData::new(idx, [self.lengths.len(), 1, d]), device)
    }
}

/// A tensor's values on the host, row-major.
pub fn host<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .expect("converted to f32 above")
}

/// `[V, E]` embeddings drawn from `N(0, 1)`.
fn embedding(v: usize, e: usize, r: &mut Rng, device: &Device) -> Param<Tensor<2>> {
    let w: Vec<f32> = (0..v * e).map(|_| normal(r)).collect();
    Param::from_tensor(Tensor::from_data(TensorData::new(w, [v, e]), device))
}

/// `[B, T, E]` embeddings of `ids`.
fn embed(table: &Param<Tensor<2>>, ids: &Tensor<2, Int>) -> Tensor<3> {
    let [b, t] = ids.dims();
    let e = table.val().dims()[1];
    table
        .val()
        .select(0, ids.clone().reshape([b * t]))
        .reshape([b, t, e])
}

fn layer_norm(d: usize, device: &Device) -> LayerNorm {
    LayerNormConfig::new(d).init(device)
}

/// The pointer distribution of one step from the attention scores `beta` `[B, n]` and the
/// previous step's `π→` (none at `t = 1`): `(p, π→, π←)`, each `[B, n]`.
pub fn pointer(beta: Tensor<2>, prev_fwd: Option<Tensor<2>>) -> (Tensor<2>, Tensor<2>, Tensor<2>) {
    let [b, n] = beta.dims();
    let device = beta.device();
    let Some(prev) = prev_fwd else {
        let zeros = Tensor::zeros([b, n], &device);
        return (zeros.clone(), zeros, Tensor::ones([b, n], &device));
    };
    // mask_i = π→_{t−1}^{i+1} (cut below MASK_EPS), mask_{n−1} = 1.
    let shifted = Tensor::cat(
        vec![prev.narrow(1, 1, n - 1), Tensor::ones([b, 1], &device)],
        1,
    );
    let off = shifted.clone().lower_elem(MASK_EPS);
    let mask = shifted.mask_fill(off.clone(), 0.0);
    // The max over unmasked slots only, so the normaliser is at least mask_{argmax} ≥ 1e-5.
    let max = beta.clone().mask_fill(off, f32::MIN).max_dim(1);
    let x = (beta - max).exp() * mask;
    let p = x.clone() / x.sum_dim(1);
    let (fwd, bwd) = cumulative(p.clone());
    (p, fwd, bwd)
}

/// `(π→, π←)`: `π→^i = Σ_{j≤i} p^j` and `π←^i = Σ_{j≥i} p^j`, as products with triangular
/// matrices (cheap for the few slots a memory has, and differentiable everywhere).
pub fn cumulative(p: Tensor<2>) -> (Tensor<2>, Tensor<2>) {
    let n = p.dims()[1];
    let device = p.device();
    let upper: Vec<f32> = (0..n * n)
        .map(|k| if k / n <= k % n { 1.0 } else { 0.0 })
        .collect();
    let upper = Tensor::<2>::from_data(TensorData::new(upper, [n, n]), &device);
    let fwd = p.clone().matmul(upper.clone());
    let bwd = p.matmul(upper.transpose());
    (fwd, bwd)
}

/// `M_t = M_{t−1} ⊙ (1 − π←_t) + M̂_{t−1} ⊙ π←_t`, with `π←` `[B, n]` and memories
/// `[B, n, D]`.
pub fn memory_update(m_prev: Tensor<3>, m_hat_prev: Tensor<3>, bwd: Tensor<2>) -> Tensor<3> {
    let w = bwd.unsqueeze_dim::<3>(2);
    m_prev * (w.clone().neg() + 1.0) + m_hat_prev * w
}

/// The recurrent state between tokens.
#[derive(Clone, Debug)]
pub struct State {
    /// `M_t`, `[B, n, D]`.
    pub m: Tensor<3>,
    /// `M̂_t`, `[B, n, D]`.
    pub m_hat: Tensor<3>,
    /// `π→_t` (none before the first token).
    pub fwd: Option<Tensor<2>>,
}

/// One step's pointer, for tests and tree induction.
#[derive(Clone, Debug)]
pub struct StepTrace {
    pub p: Tensor<2>,
    pub fwd: Tensor<2>,
    pub bwd: Tensor<2>,
}

/// Ordered Memory with an embedding and a classifier.
#[derive(Module, Debug)]
pub struct OrderedMemory {
    pub embed: Param<Tensor<2>>,
    pub input: Dense,
    /// Shared by the input projection and the cell, as in the reference.
    pub ln: LayerNorm,
    pub query: Dense,
    pub query_ln: LayerNorm,
    pub key: Dense,
    pub key_ln: LayerNorm,
    /// `w` and `b` of the attention score.
    pub score: Dense,
    /// `W₁` split into its `v` and `h` halves (`W₁[v; h] = W₁ᵥ v + W₁ₕ h`), `b₁` on `W₁ᵥ`.
    pub cell_v: Dense,
    pub cell_h: Param<Tensor<2>>,
    /// `W₂`, `b₂` to `[g_v; g_h; g_c; c]`.
    pub cell_out: Dense,
    pub classifier: Dense,
    hidden: usize,
    slots: usize,
    dropout: f64,
    dropout_memory: f64,
    dropout_input: f64,
    dropout_output: f64,
    /// Compute a slot's cell only on the rows whose `π→` there is positive, when few are
    /// (off: on the whole batch, as the reference; the results are the same).
    gather_rows: bool,
}

impl OrderedMemory {
    pub fn init(cfg: &OmConfig, r: &mut Rng, device: &Device) -> Self {
        let d = cfg.hidden;
        let c = cfg.cell_hidden.unwrap_or(4 * d);
        // W₁ is one layer over [v; h]: its init scale is that of a 2D-input layer.
        let w1 = Dense::init(2 * d, c, r, device);
        let half = |start: usize| {
            Tensor::<2>::from_data(w1.weight.val().narrow(0, start, d).into_data(), device)
        };
        let (w1v, w1h) = (half(0), half(d));
        Self {
            embed: embedding(VOCAB, d, r, device),
            input: Dense::init(d, d, r, device),
            ln: layer_norm(d, device),
            query: Dense::init(d, d, r, device),
            query_ln: layer_norm(d, device),
            key: Dense::init(d, d, r, device),
            key_ln: layer_norm(d, device),
            score: Dense::init(d, 1, r, device),
            cell_v: Dense {
                weight: Param::from_tensor(w1v),
                bias: w1.bias,
            },
            cell_h: Param::from_tensor(w1h),
            cell_out: Dense::init(c, 4 * d, r, device),
            classifier: Dense::init(d, CLASSES, r, device),
            hidden: d,
            slots: cfg.slots,
            dropout: cfg.dropout,
            dropout_memory: cfg.dropout_memory,
            dropout_input: cfg.dropout_input,
            dropout_output: cfg.dropout_output,
            gather_rows: cfg.gather_rows,
        }
    }

    /// The same model computing every slot's cell on the whole batch (`false`) or only on
    /// the rows where it matters (`true`, the default).
    pub fn with_row_gathering(mut self, on: bool) -> Self {
        self.gather_rows = on;
        self
    }

    /// Memory slots.
    pub fn slots(&self) -> usize {
        self.slots
    }

    /// The same weights with `n` memory slots (no parameter depends on the slot count).
    pub fn with_slots(mut self, n: usize) -> Self {
        self.slots = n.max(1);
        self
    }

    /// `x_t = LN(W x_t)` for every token: `[B, T, D]`.
    pub fn inputs(&self, ids: &Tensor<2, Int>, drop: &mut Option<&mut Rng>) -> Tensor<3> {
        let [b, t] = ids.dims();
        let e = dropout(embed(&self.embed, ids), self.dropout_input, drop);
        let x = self.input.forward(e.reshape([b * t, self.hidden]));
        self.ln.forward(x).reshape([b, t, self.hidden])
    }

    /// `LN(W_q x_t)` for every token: `[B, T, D]`.
    pub fn queries(&self, x: Tensor<3>, drop: &mut Option<&mut Rng>) -> Tensor<3> {
        let [b, t, d] = x.dims();
        let x = dropout(x, self.dropout_memory, drop).reshape([b * t, d]);
        self.query_ln
            .forward(self.query.forward(x))
            .reshape([b, t, d])
    }

    /// The zero state of a batch of `b`.
    pub fn initial_state(&self, b: usize, device: &Device) -> State {
        let zeros = Tensor::zeros([b, self.slots, self.hidden], device);
        State {
            m: zeros.clone(),
            m_hat: zeros,
            fwd: None,
        }
    }

    /// The attention scores `β_t` `[B, n]` of query `q` `[B, D]` against `M̂_{t−1}`.
    pub fn scores(&self, q: Tensor<2>, m_hat: Tensor<3>, drop: &mut Option<&mut Rng>) -> Tensor<2> {
        let [b, n, d] = m_hat.dims();
        let keys = dropout(m_hat, self.dropout_memory, drop).reshape([b * n, d]);
        let keys = self
            .key_ln
            .forward(self.key.forward(keys))
            .reshape([b, n, d]);
        let s = relu(keys + q.unsqueeze_dim::<3>(1));
        let s = dropout(s, self.dropout_memory, drop).reshape([b * n, d]);
        self.score.forward(s).reshape([b, n]) / (d as f64).sqrt()
    }

    /// The cell's gates `σ([g_v; g_h; g_c])` `[B, 3D]` and candidate `c` `[B, D]`, from `v`
    /// and the memory's `W₁ₕ h` (precomputed for all slots at once).
    fn gates(
        &self,
        v: Tensor<2>,
        h_proj: Tensor<2>,
        drop: &mut Option<&mut Rng>,
    ) -> (Tensor<2>, Tensor<2>) {
        let d = self.hidden;
        let v = dropout(v, self.dropout, drop);
        let a = relu(self.cell_v.forward(v) + h_proj);
        let a = dropout(a, self.dropout, drop);
        let g = self.cell_out.forward(a);
        (
            sigmoid(g.clone().narrow(1, 0, 3 * d)),
            g.narrow(1, 3 * d, d),
        )
    }

    /// `cell(v, h)` for `v`, `h` `[B, D]`.
    pub fn cell(&self, v: Tensor<2>, h: Tensor<2>) -> Tensor<2> {
        let h_proj = h.clone().matmul(self.cell_h.val());
        self.cell_with(v, h, h_proj, &mut None)
    }

    /// The gates `σ([g_v; g_h; g_c])` of `cell(v, h)`, `[B, 3D]`.
    pub fn cell_gates(&self, v: Tensor<2>, h: Tensor<2>) -> Tensor<2> {
        let h_proj = h.matmul(self.cell_h.val());
        self.gates(v, h_proj, &mut None).0
    }

    fn cell_with(
        &self,
        v: Tensor<2>,
        h: Tensor<2>,
        h_proj: Tensor<2>,
        drop: &mut Option<&mut Rng>,
    ) -> Tensor<2> {
        let d = self.hidden;
        let (gates, c) = self.gates(v.clone(), h_proj, drop);
        let gv = gates.clone().narrow(1, 0, d);
        let gh = gates.clone().narrow(1, d, d);
        let gc = gates.narrow(1, 2 * d, d);
        self.ln.forward(gv * v + gh * h + gc * c)
    }

    /// One step from `state` on input `x` and query `q` (`[B, D]`); `forced` replaces the
    /// attention's pointer `p` (tests). Returns the new state, the output `o_t` and the pointer.
    pub fn step(
        &self,
        x: Tensor<2>,
        q: Tensor<2>,
        state: &State,
        forced: Option<Tensor<2>>,
        drop: &mut Option<&mut Rng>,
    ) -> (State, Tensor<2>, StepTrace) {
        let [b, n, d] = state.m.dims();
        let (p, fwd, bwd) = match forced {
            Some(p) => {
                let (fwd, bwd) = cumulative(p.clone());
                (p, fwd, bwd)
            }
            None => match &state.fwd {
                None => pointer(Tensor::zeros([b, n], &x.device()), None),
                Some(prev) => {
                    let beta = self.scores(q, state.m_hat.clone(), drop);
                    pointer(beta, Some(prev.clone()))
                }
            },
        };
        let m = memory_update(state.m.clone(), state.m_hat.clone(), bwd.clone());
        // W₁ₕ M_t^i for every slot at once; dropout on the cell's input covers h as well.
        let m_in = dropout(m.clone(), self.dropout, drop);
        let h_proj = m_in
            .clone()
            .reshape([b * n, d])
            .matmul(self.cell_h.val())
            .reshape([b, n, self.cell_h.val().dims()[1]]);
        let fwd_host = host(fwd.clone());
        let device = x.device();
        let ch = h_proj.dims()[2];
        let mut h = x.clone();
        let mut cands = Vec::with_capacity(n);
        for i in 0..n {
            // The rows whose π→ at slot i is positive: elsewhere the candidate is x_t exactly.
            let rows: Vec<usize> = (0..b).filter(|&k| fwd_host[k * n + i] > 0.0).collect();
            let w = fwd.clone().narrow(1, i, 1);
            let mi = m.clone().narrow(1, i, 1).reshape([b, d]);
            let pi = h_proj.clone().narrow(1, i, 1).reshape([b, ch]);
            if rows.is_empty() {
                h = x.clone();
            } else if !self.gather_rows || rows.len() * 4 > b * 3 {
                let c = self.cell_with(h, mi, pi, drop);
                h = x.clone() * (w.clone().neg() + 1.0) + c * w;
            } else {
                // Few rows active (a sharp pointer): the cell on those rows only, added back
                // as h_i = x_t + (cell − x_t) ⊙ π→ on them.
                let idx: Vec<i64> = rows.iter().map(|&k| k as i64).collect();
                let idx = Tensor::<1, Int>::from_data(TensorData::new(idx, [rows.len()]), &device);
                let pick = |t: Tensor<2>| t.select(0, idx.clone());
                let xr = pick(x.clone());
                let c = self.cell_with(pick(h), pick(mi), pick(pi), drop);
                let delta = (c - xr) * pick(w);
                h = x
                    .clone()
                    .select_assign(0, idx, delta, IndexingUpdateOp::Add);
            }
            cands.push(h.clone());
        }
        let m_hat = Tensor::stack::<3>(cands, 1);
        let state = State {
            m,
            m_hat,
            fwd: Some(fwd.clone()),
        };
        (state, h, StepTrace { p, fwd, bwd })
    }

    /// Class logits `[B, 10]`; with `traces`, also each step's pointer.
    pub fn forward(
        &self,
        batch: &Batch,
        drop: &mut Option<&mut Rng>,
        mut traces: Option<&mut Vec<StepTrace>>,
    ) -> Tensor<2> {
        let device = batch.ids.device();
        let [b, t] = batch.ids.dims();
        let x = self.inputs(&batch.ids, drop);
        let q = self.queries(x.clone(), drop);
        let d = self.hidden;
        let mut state = self.initial_state(b, &device);
        let mut outs = Vec::with_capacity(t);
        for s in 0..t {
            let xs = x.clone().narrow(1, s, 1).reshape([b, d]);
            let qs = q.clone().narrow(1, s, 1).reshape([b, d]);
            let (next, o, trace) = self.step(xs, qs, &state, None, drop);
            state = next;
            outs.push(o);
            if let Some(tr) = traces.as_deref_mut() {
                tr.push(trace);
            }
        }
        let last = Tensor::stack::<3>(outs, 1)
            .gather(1, batch.last_index(d, &device))
            .reshape([b, d]);
        self.classifier
            .forward(dropout(last, self.dropout_output, drop))
    }

    /// Logits and, per sequence, the distances `d_t = argmax_i p_t^i` (with `d_1 = n`).
    pub fn forward_with_distances(&self, batch: &Batch) -> (Tensor<2>, Vec<Vec<usize>>) {
        let mut traces = Vec::new();
        let logits = self.forward(batch, &mut None, Some(&mut traces));
        let n = self.slots;
        let mut dist: Vec<Vec<usize>> = batch
            .lengths
            .iter()
            .map(|&l| Vec::with_capacity(l))
            .collect();
        for (s, tr) in traces.iter().enumerate() {
            let p = host(tr.p.clone());
            for (k, dk) in dist.iter_mut().enumerate() {
                if s >= batch.lengths[k] {
                    continue;
                }
                if s == 0 {
                    dk.push(n);
                    continue;
                }
                let row = &p[k * n..(k + 1) * n];
                let mut best = 0;
                for i in 1..n {
                    if row[i] > row[best] {
                        best = i;
                    }
                }
                dk.push(best);
            }
        }
        (logits, dist)
    }
}

/// An LSTM classifier: embedding, one LSTM layer, a classifier on the last hidden state.
#[derive(Module, Debug)]
pub struct LstmClassifier {
    pub embed: Param<Tensor<2>>,
    /// Input to the four gates `[i; f; u; o]`.
    pub wx: Dense,
    /// Hidden state to the gates.
    pub wh: Param<Tensor<2>>,
    pub classifier: Dense,
    hidden: usize,
    dropout_input: f64,
    dropout_output: f64,
}

impl LstmClassifier {
    pub fn init(
        cfg: &LstmConfig,
        embed_dim: usize,
        hidden: usize,
        r: &mut Rng,
        device: &Device,
    ) -> Self {
        let wh = Dense::init(hidden, 4 * hidden, r, device);
        Self {
            embed: embedding(VOCAB, embed_dim, r, device),
            wx: Dense::init(embed_dim, 4 * hidden, r, device),
            wh: wh.weight,
            classifier: Dense::init(hidden, CLASSES, r, device),
            hidden,
            dropout_input: cfg.dropout_input,
            dropout_output: cfg.dropout_output,
        }
    }

    /// Parameters of an LSTM classifier with these sizes.
    pub fn count_params(embed_dim: usize, hidden: usize) -> usize {
        VOCAB * embed_dim
            + embed_dim * 4 * hidden
            + 4 * hidden
            + hidden * 4 * hidden
            + hidden * CLASSES
            + CLASSES
    }

    /// The largest hidden size whose parameter count does not exceed `budget`.
    pub fn matched_hidden(embed_dim: usize, budget: usize) -> usize {
        let mut h = 1;
        while Self::count_params(embed_dim, h + 1) <= budget {
            h += 1;
        }
        h
    }

    /// Class logits `[B, 10]`.
    pub fn forward(&self, batch: &Batch, drop: &mut Option<&mut Rng>) -> Tensor<2> {
        let device = batch.ids.device();
        let [b, t] = batch.ids.dims();
        let hd = self.hidden;
        let e = dropout(embed(&self.embed, &batch.ids), self.dropout_input, drop);
        let ed = e.dims()[2];
        let gx = self
            .wx
            .forward(e.reshape([b * t, ed]))
            .reshape([b, t, 4 * hd]);
        let mut h = Tensor::<2>::zeros([b, hd], &device);
        let mut c = Tensor::<2>::zeros([b, hd], &device);
        let mut outs = Vec::with_capacity(t);
        for s in 0..t {
            let g = gx.clone().narrow(1, s, 1).reshape([b, 4 * hd]) + h.matmul(self.wh.val());
            let ifo = sigmoid(g.clone().narrow(1, 0, 3 * hd));
            let u = g.narrow(1, 3 * hd, hd).tanh();
            let i = ifo.clone().narrow(1, 0, hd);
            let f = ifo.clone().narrow(1, hd, hd);
            let o = ifo.narrow(1, 2 * hd, hd);
            c = f * c + i * u;
            h = o * c.clone().tanh();
            outs.push(h.clone());
        }
        let last = Tensor::stack::<3>(outs, 1)
            .gather(1, batch.last_index(hd, &device))
            .reshape([b, hd]);
        self.classifier
            .forward(dropout(last, self.dropout_output, drop))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lmlab_sdk::rng::rng;
    use proptest::prelude::*;

    fn t2(v: Vec<f32>, b: usize, n: usize) -> Tensor<2> {
        Tensor::from_data(TensorData::new(v, [b, n]), &Device::flex())
    }

    /// A previous step's `π→` from a random distribution over slots (some slots exactly 0,
    /// some tiny, as a sharp pointer leaves them).
    fn prev_fwd(raw: &[f32], zeros: &[bool]) -> Vec<f32> {
        let w: Vec<f32> = raw
            .iter()
            .zip(zeros)
            .map(|(&r, &z)| if z { 0.0 } else { r })
            .collect();
        let total: f32 = w.iter().sum::<f32>().max(1e-12);
        let mut c = 0.0;
        w.iter()
            .map(|x| {
                c += x / total;
                c.min(1.0)
            })
            .collect()
    }

    proptest! {
        #[test]
        fn the_pointer_is_a_distribution_with_monotone_cumulatives(
            n in 2usize..10,
            beta in proptest::collection::vec(-20.0f32..20.0, 10),
            raw in proptest::collection::vec(prop_oneof![Just(1e-7f32), 0.0f32..1.0], 10),
            zeros in proptest::collection::vec(any::<bool>(), 10),
        ) {
            let mut raw = raw[..n].to_vec();
            raw[n - 1] = raw[n - 1].max(0.1); // mass somewhere
            let prev = prev_fwd(&raw, &zeros[..n]);
            let (p, fwd, bwd) = pointer(t2(beta[..n].to_vec(), 1, n), Some(t2(prev.clone(), 1, n)));
            let (p, fwd, bwd) = (host(p), host(fwd), host(bwd));
            let sum: f32 = p.iter().sum();
            prop_assert!((sum - 1.0).abs() < 1e-5, "Σp = {sum}");
            for i in 0..n {
                prop_assert!(p[i] >= 0.0);
                let mask = if i == n - 1 { 1.0 } else { prev[i + 1] };
                if mask < MASK_EPS { prop_assert_eq!(p[i], 0.0, "slot {} is masked", i); }
                prop_assert!((-1e-6..=1.0 + 1e-5).contains(&fwd[i]));
                prop_assert!((fwd[i] + bwd[i] - 1.0 - p[i]).abs() < 1e-5, "π→ + π← = 1 + p");
                if i > 0 {
                    prop_assert!(fwd[i] >= fwd[i - 1] - 1e-6, "π→ non-decreasing");
                    prop_assert!(bwd[i] <= bwd[i - 1] + 1e-6, "π← non-increasing");
                }
            }
            prop_assert!((fwd[n - 1] - 1.0).abs() < 1e-5);
            prop_assert!((bwd[0] - 1.0).abs() < 1e-5);
        }

        #[test]
        fn each_memory_slot_is_a_convex_combination(
            m in proptest::collection::vec(-5.0f32..5.0, 24),
            mh in proptest::collection::vec(-5.0f32..5.0, 24),
            p in proptest::collection::vec(0.0f32..1.0, 4),
        ) {
            let d = Device::flex();
            let total: f32 = p.iter().sum::<f32>().max(1e-6);
            let p: Vec<f32> = p.iter().map(|x| x / total).collect();
            let (_, bwd) = cumulative(t2(p, 1, 4));
            let w = host(bwd.clone());
            let t3 = |v: Vec<f32>| Tensor::<3>::from_data(TensorData::new(v, [1, 4, 6]), &d);
            let out = host(memory_update(t3(m.clone()), t3(mh.clone()), bwd));
            for i in 0..4 {
                prop_assert!((0.0..=1.0 + 1e-6).contains(&w[i]));
                for k in 0..6 {
                    let j = i * 6 + k;
                    let want = m[j] * (1.0 - w[i]) + mh[j] * w[i];
                    prop_assert!((out[j] - want).abs() < 1e-5);
                    prop_assert!(out[j] >= m[j].min(mh[j]) - 1e-5 && out[j] <= m[j].max(mh[j]) + 1e-5);
                }
            }
        }

        #[test]
        fn a_forced_one_hot_pointer_is_discrete_shift_reduce(
            seed in 0u64..1000,
            moves in proptest::collection::vec(0usize..4, 1..12),
        ) {
            let device = Device::flex();
            let (n, dim) = (6, 8);
            let cfg = OmConfig { hidden: dim, slots: n, cell_hidden: Some(12), ..Default::default() };
            let model = OrderedMemory::init(&cfg, &mut rng(seed, 0), &device);
            let mut r = rng(seed, 1);
            let mut x = || {
                let v: Vec<f32> = (0..dim).map(|_| normal(&mut r)).collect();
                t2(v, 1, dim)
            };
            // Pointer positions: slot n−1 at t = 2 (the mask allows nothing else), then at
            // most one slot below the previous pointer (the mask), anywhere above it.
            let mut pointers = vec![n - 1];
            for &mv in &moves {
                let prev = *pointers.last().unwrap();
                let lo = prev.saturating_sub(1);
                pointers.push(lo + mv % (n - lo));
            }
            // The reference: slots as a list; at pointer d the previous candidates at and below
            // d are committed, tokens below d are x, and from d up each slot reduces.
            let zeros = Tensor::<2>::zeros([1, dim], &device);
            let mut mem = vec![zeros.clone(); n];
            let mut cand = vec![zeros; n];
            let mut state = model.initial_state(1, &device);
            for t in 0..=pointers.len() {
                let xt = x();
                let d = if t == 0 { None } else { Some(pointers[t - 1]) };
                // The reference step.
                let commit = d.unwrap_or(n - 1);
                for i in 0..=commit { mem[i] = cand[i].clone(); }
                let mut h = xt.clone();
                for i in 0..n {
                    if d.is_some_and(|d| i >= d) { h = model.cell(h, mem[i].clone()); }
                    cand[i] = h.clone();
                }
                // The model's step with the pointer forced.
                let forced = d.map(|d| {
                    let mut p = vec![0.0f32; n];
                    p[d] = 1.0;
                    t2(p, 1, n)
                });
                let q = xt.clone();
                let (next, out, _) = model.step(xt, q, &state, forced, &mut None);
                state = next;
                let got_m = host(state.m.clone());
                let got_hat = host(state.m_hat.clone());
                for i in 0..n {
                    prop_assert_eq!(got_m[i * dim..(i + 1) * dim].to_vec(), host(mem[i].clone()), "M_t slot {} at t = {}", i, t + 1);
                    prop_assert_eq!(got_hat[i * dim..(i + 1) * dim].to_vec(), host(cand[i].clone()), "M̂_t slot {} at t = {}", i, t + 1);
                }
                prop_assert_eq!(host(out), host(cand[n - 1].clone()));
            }
        }

        #[test]
        fn cell_gates_are_in_the_open_unit_interval(seed in 0u64..1000, scale in 0.1f32..5.0) {
            let device = Device::flex();
            let cfg = OmConfig { hidden: 8, slots: 4, ..Default::default() };
            let model = OrderedMemory::init(&cfg, &mut rng(seed, 0), &device);
            let mut r = rng(seed, 1);
            let v: Vec<f32> = (0..24).map(|_| scale * normal(&mut r)).collect();
            let h: Vec<f32> = (0..24).map(|_| scale * normal(&mut r)).collect();
            let g = host(model.cell_gates(t2(v, 3, 8), t2(h, 3, 8)));
            prop_assert_eq!(g.len(), 3 * 24);
            prop_assert!(g.iter().all(|&x| x > 0.0 && x < 1.0), "{:?}", g);
        }
    }

    #[test]
    fn the_first_step_has_no_pointer() {
        let (p, fwd, bwd) = pointer(t2(vec![3.0, -1.0, 2.0], 1, 3), None);
        assert_eq!(host(p), vec![0.0; 3]);
        assert_eq!(host(fwd), vec![0.0; 3]);
        assert_eq!(host(bwd), vec![1.0; 3]);
        // At t = 2 only the root is unmasked.
        let (p, _, _) = pointer(t2(vec![3.0, -1.0, 2.0], 1, 3), Some(t2(vec![0.0; 3], 1, 3)));
        assert_eq!(host(p), vec![0.0, 0.0, 1.0]);
    }

    #[test]
    fn the_lstm_budget_matches_ordered_memory() {
        let device = Device::flex();
        let cfg = OmConfig {
            hidden: 32,
            slots: 8,
            ..Default::default()
        };
        let om = OrderedMemory::init(&cfg, &mut rng(0, 0), &device);
        let budget = om.num_params();
        let h = LstmClassifier::matched_hidden(32, budget);
        let lstm = LstmClassifier::init(&LstmConfig::default(), 32, h, &mut rng(0, 1), &device);
        assert_eq!(lstm.num_params(), LstmClassifier::count_params(32, h));
        assert!(lstm.num_params() <= budget && LstmClassifier::count_params(32, h + 1) > budget);
    }

    /// Running a slot's cell on the active rows only gives the dense computation's outputs
    /// and gradients: 8 rows whose forced pointers walk differently (one-hot or split between
    /// two slots), so at many slots only some rows are active.
    #[test]
    fn gathered_rows_give_the_dense_values_and_gradients() {
        let device = Device::flex().autodiff();
        let (b, n, dim) = (8, 6, 8);
        let cfg = OmConfig {
            hidden: dim,
            slots: n,
            cell_hidden: Some(12),
            ..Default::default()
        };
        let dense = OrderedMemory::init(&cfg, &mut rng(5, 0), &device).with_row_gathering(false);
        let gather = dense.clone().with_row_gathering(true);
        let mut r = rng(5, 1);
        let steps = 10;
        let xs: Vec<Tensor<2>> = (0..steps)
            .map(|_| {
                let v: Vec<f32> = (0..b * dim).map(|_| normal(&mut r)).collect();
                Tensor::from_data(TensorData::new(v, [b, dim]), &device)
            })
            .collect();
        // Per row a pointer walk (as the mask allows: at most one slot below the last).
        let mut pos = vec![n - 1; b];
        let mut forced = Vec::new();
        let mut partial = 0;
        for t in 0..steps {
            if t == 0 {
                forced.push(None);
                continue;
            }
            let mut p = vec![0.0f32; b * n];
            for (k, d) in pos.iter_mut().enumerate() {
                if t > 1 {
                    let lo = d.saturating_sub(1);
                    *d = lo + r.random_range(0..n - lo);
                }
                if k % 2 == 0 && *d + 1 < n {
                    p[k * n + *d] = 0.7;
                    p[k * n + *d + 1] = 0.3;
                } else {
                    p[k * n + *d] = 1.0;
                }
            }
            for i in 0..n {
                let active = pos.iter().filter(|&&d| d <= i).count();
                partial += (active > 0 && 4 * active <= 3 * b) as usize;
            }
            forced.push(Some(Tensor::<2>::from_data(
                TensorData::new(p, [b, n]),
                &device,
            )));
        }
        assert!(
            partial > 5,
            "the walk should leave slots partly active ({partial})"
        );
        let run = |m: &OrderedMemory| {
            let mut state = m.initial_state(b, &device);
            let mut outs = Vec::new();
            for (x, f) in xs.iter().zip(&forced) {
                let (next, o, _) = m.step(x.clone(), x.clone(), &state, f.clone(), &mut None);
                state = next;
                outs.push(o);
            }
            let out = Tensor::cat(outs, 0);
            let coef = Tensor::<2>::from_data(
                TensorData::new(
                    (0..out.shape().num_elements())
                        .map(|k| ((k % 7) as f32 - 3.0) / 3.0)
                        .collect::<Vec<f32>>(),
                    out.shape(),
                ),
                &device,
            );
            let loss = (out.clone() * coef).sum();
            let grads = loss.backward();
            let g = |p: &Param<Tensor<2>>| host(p.val().grad(&grads).expect("a gradient"));
            (
                host(out),
                g(&m.cell_h),
                g(&m.cell_v.weight),
                g(&m.cell_out.weight),
            )
        };
        let (a, b2) = (run(&dense), run(&gather));
        let close = |x: &[f32], y: &[f32], what: &str| {
            assert_eq!(x.len(), y.len());
            for (u, v) in x.iter().zip(y) {
                assert!(
                    (u - v).abs() <= 1e-4 * (1.0 + u.abs()),
                    "{what}: {u} vs {v}"
                );
            }
        };
        close(&a.0, &b2.0, "outputs");
        close(&a.1, &b2.1, "∂W₁ₕ");
        close(&a.2, &b2.2, "∂W₁ᵥ");
        close(&a.3, &b2.3, "∂W₂");
    }

    #[test]
    fn padding_does_not_change_a_sequence_s_logits() {
        let device = Device::flex();
        let cfg = OmConfig {
            hidden: 16,
            slots: 5,
            dropout: 0.0,
            dropout_memory: 0.0,
            dropout_input: 0.0,
            dropout_output: 0.0,
            ..Default::default()
        };
        let om = OrderedMemory::init(&cfg, &mut rng(3, 0), &device);
        let lstm = LstmClassifier::init(&LstmConfig::default(), 16, 12, &mut rng(3, 1), &device);
        let short = crate::listops::parse_line("9\t( ( ( [MAX 2 ) 9 ) ] )").unwrap();
        let long =
            crate::listops::parse_line("1\t( ( ( [MIN ( ( ( [SM 4 ) 7 ) ] ) ) 3 ) ] )").unwrap();
        let alone = Batch::new(&[&short], &device);
        let padded = Batch::new(&[&short, &long], &device);
        let a = host(om.forward(&alone, &mut None, None));
        let b = host(om.forward(&padded, &mut None, None));
        for k in 0..CLASSES {
            assert!((a[k] - b[k]).abs() < 1e-5, "OM {a:?} vs {b:?}");
        }
        let a = host(lstm.forward(&alone, &mut None));
        let b = host(lstm.forward(&padded, &mut None));
        for k in 0..CLASSES {
            assert!((a[k] - b[k]).abs() < 1e-5, "LSTM {a:?} vs {b:?}");
        }
    }
}
