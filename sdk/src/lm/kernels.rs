//! The CPU kernels behind [`crate::lm::fused`]: the transformer's element-wise hot paths and
//! their backward passes on `f32` slices, parallel over rows with rayon. Each is the
//! composition of burn ops it replaces (see the property tests in `fused`), computed in one
//! pass per row instead of one pass per op, and on every core instead of one. Every kernel is
//! deterministic: work is split into fixed chunks and partial sums are added in order, so a
//! run gives the same numbers whatever the thread count or scheduling.

use rayon::prelude::*;

/// Rows handed to one rayon task at least: below this the split costs more than it saves.
fn min_rows(row_len: usize) -> usize {
    (4096 / row_len.max(1)).max(1)
}

/// `Σ a·b` with eight independent accumulators (so the compiler vectorises it).
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0f32; 8];
    let chunks = n / 8;
    for c in 0..chunks {
        let (x, y) = (&a[c * 8..c * 8 + 8], &b[c * 8..c * 8 + 8]);
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    let mut s = 0f32;
    for i in chunks * 8..n {
        s += a[i] * b[i];
    }
    acc.iter().sum::<f32>() + s
}

/// The largest `|a[i] − b[i]|`: how tests compare a kernel's output with its reference.
///
/// # Panics
/// If the lengths differ (the two sides are not comparable).
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(
        a.len(),
        b.len(),
        "max_abs_diff of slices of different lengths"
    );
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// `y += α·x`.
#[inline]
pub fn axpy(alpha: f32, x: &[f32], y: &mut [f32]) {
    for (y, x) in y.iter_mut().zip(x) {
        *y += alpha * x;
    }
}

/// A raw pointer handed to rayon tasks that write disjoint parts of one buffer.
#[derive(Clone, Copy)]
struct Shared(*mut f32);
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}
impl Shared {
    /// The `len` elements from `at`. Safety: no two live slices overlap.
    #[allow(clippy::mut_from_ref)]
    unsafe fn slice(&self, at: usize, len: usize) -> &mut [f32] {
        unsafe { std::slice::from_raw_parts_mut(self.0.add(at), len) }
    }
}

/// RMSNorm over rows of `d`: `y = x / √(mean(x²) + eps) · w`.
pub fn rms_norm(x: &[f32], w: &[f32], eps: f32) -> Vec<f32> {
    let d = w.len();
    let mut y = vec![0f32; x.len()];
    y.par_chunks_mut(d)
        .zip(x.par_chunks(d))
        .with_min_len(min_rows(d))
        .for_each(|(y, x)| {
            let r = 1.0 / (dot(x, x) / d as f32 + eps).sqrt();
            for ((y, x), w) in y.iter_mut().zip(x).zip(w) {
                *y = x * r * w;
            }
        });
    y
}

/// RMSNorm's backward: `(dx, dw)` for the upstream gradient `dy`.
pub fn rms_norm_backward(x: &[f32], w: &[f32], dy: &[f32], eps: f32) -> (Vec<f32>, Vec<f32>) {
    let d = w.len();
    let mut dx = vec![0f32; x.len()];
    let rows = min_rows(d).max(16);
    let dw = dx
        .par_chunks_mut(d * rows)
        .zip(x.par_chunks(d * rows).zip(dy.par_chunks(d * rows)))
        .map(|(dx, (x, dy))| {
            let mut dw = vec![0f32; d];
            let mut g = vec![0f32; d];
            for ((dx, x), dy) in dx.chunks_mut(d).zip(x.chunks(d)).zip(dy.chunks(d)) {
                let r = 1.0 / (dot(x, x) / d as f32 + eps).sqrt();
                // g = dy·w; dx = r·(g − x̂·mean(g·x̂)) with x̂ = x·r.
                for ((g, dy), w) in g.iter_mut().zip(dy).zip(w) {
                    *g = dy * w;
                }
                let m = dot(&g, x) * r / d as f32;
                for (((dx, g), x), (dw, dy)) in
                    dx.iter_mut().zip(&g).zip(x).zip(dw.iter_mut().zip(dy))
                {
                    let xh = x * r;
                    *dx = r * (g - xh * m);
                    *dw += dy * xh;
                }
            }
            dw
        })
        .collect::<Vec<_>>()
        // Summed in order, so the result does not depend on how rayon split the work.
        .into_iter()
        .fold(vec![0f32; d], |mut a, b| {
            axpy(1.0, &b, &mut a);
            a
        });
    (dx, dw)
}

#[inline]
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// SwiGLU's product: `silu(gate) · up`.
pub fn swiglu(gate: &[f32], up: &[f32]) -> Vec<f32> {
    let mut y = vec![0f32; gate.len()];
    y.par_chunks_mut(4096)
        .zip(gate.par_chunks(4096).zip(up.par_chunks(4096)))
        .for_each(|(y, (g, u))| {
            for ((y, &g), &u) in y.iter_mut().zip(g).zip(u) {
                *y = g * sigmoid(g) * u;
            }
        });
    y
}

/// SwiGLU's backward: `(dgate, dup)`.
pub fn swiglu_backward(gate: &[f32], up: &[f32], dy: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let mut dg = vec![0f32; gate.len()];
    let mut du = vec![0f32; gate.len()];
    dg.par_chunks_mut(4096)
        .zip(du.par_chunks_mut(4096))
        .zip(
            gate.par_chunks(4096)
                .zip(up.par_chunks(4096))
                .zip(dy.par_chunks(4096)),
        )
        .for_each(|((dg, du), ((g, u), dy))| {
            for i in 0..g.len() {
                let s = sigmoid(g[i]);
                dg[i] = dy[i] * u[i] * s * (1.0 + g[i] * (1.0 - s));
                du[i] = dy[i] * g[i] * s;
            }
        });
    (dg, du)
}

/// The rotary table of a batch: `cos` and `sin` `[B, T, D]`, equal at the two members of each
/// pair, which are interleaved (`2j, 2j+1`) or halves (`j, j + D/2`).
#[derive(Clone, Debug)]
pub struct Rope {
    pub cos: Vec<f32>,
    pub sin: Vec<f32>,
    pub batch: usize,
    pub len: usize,
    pub dim: usize,
    pub halves: bool,
}

/// Rotates the pairs of `x` `[B, T, H, D]` by the table (`sign` −1: by minus its angles, which
/// is the backward pass): `y_a = x_a·cos − x_b·sin`, `y_b = x_b·cos + x_a·sin`.
pub fn rope(x: &[f32], heads: usize, table: &Rope, sign: f32) -> Vec<f32> {
    let d = table.dim;
    let mut y = vec![0f32; x.len()];
    let half = d / 2;
    y.par_chunks_mut(heads * d)
        .zip(x.par_chunks(heads * d))
        .enumerate()
        .with_min_len(min_rows(heads * d))
        .for_each(|(bt, (y, x))| {
            let (c, s) = (&table.cos[bt * d..][..d], &table.sin[bt * d..][..d]);
            for (y, x) in y.chunks_mut(d).zip(x.chunks(d)) {
                for j in 0..half {
                    let (a, b) = if table.halves {
                        (j, j + half)
                    } else {
                        (2 * j, 2 * j + 1)
                    };
                    let (sa, sb) = (sign * s[a], sign * s[b]);
                    y[a] = x[a] * c[a] - x[b] * sa;
                    y[b] = x[b] * c[b] + x[a] * sb;
                }
            }
        });
    y
}

/// The shape and masking of a causal attention: `q` `[B, T, Hq, D]`, `k` and `v`
/// `[B, T, Hkv, D]`. Row `b` has `pad[b]` left padding positions; a query attends to the keys
/// from `max(pad, i + 1 − window)` to itself (a padding query only to itself).
#[derive(Clone, Debug)]
pub struct AttentionShape {
    pub batch: usize,
    pub len: usize,
    pub q_heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub pad: Vec<usize>,
    pub window: Option<usize>,
    pub scale: f32,
}

impl AttentionShape {
    /// The first key query `i` of row `b` sees.
    #[inline]
    fn first_key(&self, b: usize, i: usize) -> usize {
        let p = self.pad[b];
        if i < p {
            i
        } else {
            let w = self.window.map_or(0, |w| (i + 1).saturating_sub(w));
            p.max(w)
        }
    }
    fn q_at(&self, b: usize, i: usize, h: usize) -> usize {
        ((b * self.len + i) * self.q_heads + h) * self.head_dim
    }
    fn kv_at(&self, b: usize, j: usize, h: usize) -> usize {
        ((b * self.len + j) * self.kv_heads + h) * self.head_dim
    }
}

/// Causal grouped-query attention with the softmax fused in: the output `[B, T, Hq, D]` and
/// each query's log-sum-exp `[B, Hq, T]` (which the backward pass needs). Keys and values are
/// read per key-value head, never repeated.
pub fn attention(q: &[f32], k: &[f32], v: &[f32], s: &AttentionShape) -> (Vec<f32>, Vec<f32>) {
    let (t, hd, hq, hkv) = (s.len, s.head_dim, s.q_heads, s.kv_heads);
    let rep = hq / hkv;
    let mut o = vec![0f32; q.len()];
    let mut lse = vec![0f32; s.batch * hq * t];
    let (op, lp) = (Shared(o.as_mut_ptr()), Shared(lse.as_mut_ptr()));
    (0..s.batch * hkv).into_par_iter().for_each(|task| {
        let (b, hk) = (task / hkv, task % hkv);
        let mut p = vec![0f32; t];
        for h in hk * rep..(hk + 1) * rep {
            // SAFETY: task (b, hk) writes only its own heads' rows of `o` and `lse`.
            let lse = unsafe { lp.slice((b * hq + h) * t, t) };
            for i in 0..t {
                let qi = &q[s.q_at(b, i, h)..][..hd];
                let lo = s.first_key(b, i);
                let mut m = f32::NEG_INFINITY;
                for j in lo..=i {
                    let x = s.scale * dot(qi, &k[s.kv_at(b, j, hk)..][..hd]);
                    p[j] = x;
                    m = m.max(x);
                }
                let mut sum = 0f32;
                for x in &mut p[lo..=i] {
                    *x = (*x - m).exp();
                    sum += *x;
                }
                let oi = unsafe { op.slice(s.q_at(b, i, h), hd) };
                let inv = 1.0 / sum;
                for j in lo..=i {
                    axpy(p[j] * inv, &v[s.kv_at(b, j, hk)..][..hd], oi);
                }
                lse[i] = m + sum.ln();
            }
        }
    });
    (o, lse)
}

/// Attention's backward: `(dq, dk, dv)` from the upstream `dout`, the output and its
/// log-sum-exps (the probabilities are recomputed, not stored).
pub fn attention_backward(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    out: &[f32],
    lse: &[f32],
    dout: &[f32],
    s: &AttentionShape,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let (t, hd, hq, hkv) = (s.len, s.head_dim, s.q_heads, s.kv_heads);
    let rep = hq / hkv;
    let mut dq = vec![0f32; q.len()];
    let mut dk = vec![0f32; k.len()];
    let mut dv = vec![0f32; v.len()];
    let (dqp, dkp, dvp) = (
        Shared(dq.as_mut_ptr()),
        Shared(dk.as_mut_ptr()),
        Shared(dv.as_mut_ptr()),
    );
    (0..s.batch * hkv).into_par_iter().for_each(|task| {
        let (b, hk) = (task / hkv, task % hkv);
        for h in hk * rep..(hk + 1) * rep {
            let lse = &lse[(b * hq + h) * t..][..t];
            for i in 0..t {
                let at = s.q_at(b, i, h);
                let (qi, doi) = (&q[at..][..hd], &dout[at..][..hd]);
                let di = dot(doi, &out[at..][..hd]);
                // SAFETY: task (b, hk) writes only its query heads' rows of `dq` and its own
                // key-value head's rows of `dk` and `dv`.
                let dqi = unsafe { dqp.slice(at, hd) };
                for j in s.first_key(b, i)..=i {
                    let kv = s.kv_at(b, j, hk);
                    let (kj, vj) = (&k[kv..][..hd], &v[kv..][..hd]);
                    let p = (s.scale * dot(qi, kj) - lse[i]).exp();
                    axpy(p, doi, unsafe { dvp.slice(kv, hd) });
                    let ds = p * (dot(doi, vj) - di) * s.scale;
                    axpy(ds, kj, dqi);
                    axpy(ds, qi, unsafe { dkp.slice(kv, hd) });
                }
            }
        }
    });
    (dq, dk, dv)
}

/// `log softmax(x)[target]` of each row of `x` `[N, V]`, and each row's log-sum-exp.
pub fn token_logprobs(x: &[f32], vocab: usize, targets: &[i64]) -> (Vec<f32>, Vec<f32>) {
    let rows = targets.len();
    let mut lp = vec![0f32; rows];
    let mut lse = vec![0f32; rows];
    lp.par_iter_mut()
        .zip(lse.par_iter_mut())
        .zip(x.par_chunks(vocab).zip(targets))
        .for_each(|((lp, lse), (x, &t))| {
            let m = x.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
            let sum: f32 = x.iter().map(|&v| (v - m).exp()).sum();
            *lse = m + sum.ln();
            *lp = x[t as usize] - *lse;
        });
    (lp, lse)
}

/// Its backward: `dx = dy · (onehot(target) − softmax(x))` per row.
pub fn token_logprobs_backward(
    x: &[f32],
    vocab: usize,
    targets: &[i64],
    lse: &[f32],
    dy: &[f32],
) -> Vec<f32> {
    let mut dx = vec![0f32; x.len()];
    dx.par_chunks_mut(vocab)
        .zip(x.par_chunks(vocab))
        .zip(targets.par_iter().zip(lse.par_iter().zip(dy)))
        .for_each(|((dx, x), (&t, (&lse, &g)))| {
            for (dx, &x) in dx.iter_mut().zip(x) {
                *dx = -g * (x - lse).exp();
            }
            dx[t as usize] += g;
        });
    dx
}
