//! Block-quantized CPU decoding for the Llama architecture: the weights stay in ggml's blocks
//! (a GGUF file's own Q8_0 / Q4_1 blocks, kept in the file's buffer without a copy, or f32
//! weights quantized to Q8_0 on load) and are dequantized inside the matrix-vector product.
//!
//! Decoding one token reads every weight once, so it is bound by memory bandwidth: f32 weights
//! cost 4 bytes per parameter, Q8_0 1.06 and Q4_1 0.63. As in llama.cpp, the activation vector
//! is quantized to 8-bit blocks of 32 (scale `d = max|x| / 127`) so each block's dot product is
//! an integer one: `Σ (d_w q_w)(d_x q_x) = d_w d_x Σ q_w q_x` for Q8_0, and for Q4_1
//! (`w = d_w q_w + m_w`) `d_w d_x Σ q_w q_x + m_w d_x Σ q_x`. Rows are split over rayon's
//! threads; on x86-64 the kernels are compiled for AVX2 as well and chosen at run time.
//!
//! This path is for inference (decoding, Best-of-n scoring is the burn model's job): training
//! and batched scoring use [`Llama`](crate::lm::Llama) on a burn device.

use std::sync::{Arc, OnceLock};

use rayon::prelude::*;

use crate::lm::gguf::{Gguf, QK_K, q4k_scale_min, q5_0_values, q6_k_values, spread_bits};
use crate::lm::llama::{GemmaNorms, LlamaConfig, LlamaWeights, gelu_tanh};
use crate::lm::sample::{Sequence, logprob_at, sample_next};
use crate::policy::SamplingParams;
use crate::rng::Rng;

/// Values per quantization block.
pub const QK: usize = 32;

/// How a matrix's values are stored (ggml's names).
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QKind {
    /// Plain f32 (also what F16 / BF16 tensors become).
    F32,
    /// 32 values: an f16 scale `d`, 32 × i8 `q`; `x = d·q`.
    Q8_0,
    /// 32 values: f16 scale `d`, f16 minimum `m`, 16 bytes of nibbles (low nibbles are values
    /// 0..16, high nibbles 16..32); `x = d·q + m`.
    Q4_1,
    /// 32 values of 5 bits: f16 `d`, the fifth bits, nibbles; `x = d·(q − 16)`.
    Q5_0,
    /// 256 values in 8 sub-blocks of 32 with 6-bit scales and minimums; `x = d·s_j·q − m·m_j`.
    Q4_K,
    /// 256 values of 6 bits in 16 groups of 16 with i8 scales; `x = d·s_g·(q − 32)`.
    Q6_K,
}

impl QKind {
    /// The ggml name.
    pub fn name(self) -> &'static str {
        match self {
            QKind::F32 => "f32",
            QKind::Q8_0 => "q8_0",
            QKind::Q4_1 => "q4_1",
            QKind::Q5_0 => "q5_0",
            QKind::Q4_K => "q4_k",
            QKind::Q6_K => "q6_k",
        }
    }

    /// Parses `f32`, `q8_0` or `q4_1` (what f32 weights can be quantized to on load).
    pub fn parse(name: &str) -> Result<Self, String> {
        match name {
            "f32" => Ok(QKind::F32),
            "q8_0" => Ok(QKind::Q8_0),
            "q4_1" => Ok(QKind::Q4_1),
            other => Err(format!(
                "unknown weight type `{other}`: use f32, q8_0 or q4_1"
            )),
        }
    }

    fn block_bytes(self) -> usize {
        match self {
            QKind::F32 => 4 * QK,
            QKind::Q8_0 => 2 + QK,
            QKind::Q4_1 => 4 + QK / 2,
            QKind::Q5_0 => 6 + QK / 2,
            QKind::Q4_K => 144,
            QKind::Q6_K => 210,
        }
    }

    /// Values per block: 32, or 256 for the K-quants.
    fn block_values(self) -> usize {
        match self {
            QKind::Q4_K | QKind::Q6_K => QK_K,
            _ => QK,
        }
    }

    /// Bytes of a row of `cols` values.
    fn row_bytes(self, cols: usize) -> usize {
        cols / self.block_values() * self.block_bytes()
    }

    /// From the ggml type id (the kinds kept as blocks).
    fn from_ggml(ty: u32) -> Option<Self> {
        match ty {
            8 => Some(QKind::Q8_0),
            3 => Some(QKind::Q4_1),
            6 => Some(QKind::Q5_0),
            12 => Some(QKind::Q4_K),
            14 => Some(QKind::Q6_K),
            _ => None,
        }
    }

    /// The ggml type id.
    fn ggml(self) -> u32 {
        match self {
            QKind::F32 => 0,
            QKind::Q8_0 => 8,
            QKind::Q4_1 => 3,
            QKind::Q5_0 => 6,
            QKind::Q4_K => 12,
            QKind::Q6_K => 14,
        }
    }
}

/// Every f16 bit pattern as f32 (ggml's table): block scales are read per block, and a
/// software conversion would cost as much as the block's arithmetic.
fn f16_table() -> &'static [f32] {
    static TABLE: OnceLock<Vec<f32>> = OnceLock::new();
    TABLE.get_or_init(|| {
        (0..=u16::MAX)
            .map(|b| half::f16::from_bits(b).to_f32())
            .collect()
    })
}

#[inline(always)]
fn f16_at(table: &[f32], b: &[u8]) -> f32 {
    table[u16::from_le_bytes([b[0], b[1]]) as usize]
}

#[derive(Clone, Debug)]
enum Store {
    F32(Vec<f32>),
    /// Row-major blocks starting at `start` in a shared buffer (a GGUF file's, or our own).
    Blocks {
        buf: Arc<Vec<u8>>,
        start: usize,
    },
}

/// A `[rows, cols]` row-major matrix whose rows are runs of blocks along `cols` (a multiple of
/// 32 for the quantized kinds): `y = W x` is one dot product per row.
#[derive(Clone, Debug)]
pub struct QMatrix {
    pub rows: usize,
    pub cols: usize,
    pub kind: QKind,
    store: Store,
}

/// An activation vector quantized to 8-bit blocks: values, per-block scale `d`, and `d·Σq`.
#[derive(Clone, Debug, Default)]
pub struct Q8Vector {
    q: Vec<i8>,
    d: Vec<f32>,
    s: Vec<f32>,
}

impl Q8Vector {
    /// Quantizes `x` (its length a multiple of 32) in place of the previous contents: per
    /// block of 32, `d = max |x| / 127` and `q = x / d` rounded to the nearest integer, ties to
    /// even (as llama.cpp's AVX2 path rounds). Decoding quantizes every layer's activations
    /// four times on the calling thread, so the blocks go through AVX2 where the CPU has it.
    pub fn quantize(&mut self, x: &[f32]) {
        let nb = x.len() / QK;
        self.q.resize(nb * QK, 0);
        self.d.resize(nb, 0.0);
        self.s.resize(nb, 0.0);
        for b in 0..nb {
            let xs = &x[b * QK..(b + 1) * QK];
            let q = &mut self.q[b * QK..(b + 1) * QK];
            #[cfg(target_arch = "x86_64")]
            let (d, sum) = if has_avx2() {
                // SAFETY: the CPU has AVX2, FMA and F16C (checked).
                unsafe { avx2::quantize_block(xs, q) }
            } else {
                quantize_block(xs, q)
            };
            #[cfg(not(target_arch = "x86_64"))]
            let (d, sum) = quantize_block(xs, q);
            self.d[b] = d;
            self.s[b] = d * sum as f32;
        }
    }
}

/// One block of [`Q8Vector::quantize`] (portable code): writes `q`, returns `d` and `Σ q`.
fn quantize_block(xs: &[f32], q: &mut [i8]) -> (f32, i32) {
    let amax = xs.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
    let mut sum = 0i32;
    for (q, &v) in q.iter_mut().zip(xs) {
        *q = (v * inv).round_ties_even() as i8;
        sum += *q as i32;
    }
    (d, sum)
}

/// Quantizes a row-major `[rows, cols]` f32 matrix to `kind` blocks.
pub(crate) fn quantize_rows(w: &[f32], kind: QKind) -> Vec<u8> {
    let mut out = Vec::with_capacity(w.len() / QK * kind.block_bytes());
    for xs in w.chunks_exact(QK) {
        match kind {
            QKind::Q8_0 => {
                let amax = xs.iter().fold(0f32, |m, v| m.max(v.abs()));
                let d = amax / 127.0;
                let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
                out.extend(half::f16::from_f32(d).to_le_bytes());
                out.extend(xs.iter().map(|&v| (v * inv).round() as i8 as u8));
            }
            QKind::Q4_1 => {
                let min = xs.iter().fold(f32::INFINITY, |m, &v| m.min(v));
                let max = xs.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
                let d = (max - min) / 15.0;
                let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
                out.extend(half::f16::from_f32(d).to_le_bytes());
                out.extend(half::f16::from_f32(min).to_le_bytes());
                let q = |v: f32| (((v - min) * inv).round() as i32).clamp(0, 15) as u8;
                out.extend((0..QK / 2).map(|j| q(xs[j]) | (q(xs[j + QK / 2]) << 4)));
            }
            QKind::F32 | QKind::Q5_0 | QKind::Q4_K | QKind::Q6_K => {
                unreachable!("only Q8_0 and Q4_1 are quantized to (QKind::parse)")
            }
        }
    }
    out
}

/// `Σ_b d_w d_x Σ q_w q_x` over one Q8_0 row.
#[inline(always)]
fn dot_q8_0(table: &[f32], row: &[u8], x: &Q8Vector) -> f32 {
    let mut acc = 0f32;
    for (b, blk) in row.chunks_exact(2 + QK).enumerate() {
        let d = f16_at(table, blk);
        let qs = &blk[2..2 + QK];
        let xs = &x.q[b * QK..(b + 1) * QK];
        let mut s = 0i32;
        for i in 0..QK {
            s += (qs[i] as i8 as i32) * (xs[i] as i32);
        }
        acc += d * x.d[b] * s as f32;
    }
    acc
}

/// `Σ_b d_w d_x Σ q_w q_x + m_w d_x Σ q_x` over one Q4_1 row.
#[inline(always)]
fn dot_q4_1(table: &[f32], row: &[u8], x: &Q8Vector) -> f32 {
    let mut acc = 0f32;
    for (b, blk) in row.chunks_exact(4 + QK / 2).enumerate() {
        let (d, m) = (f16_at(table, blk), f16_at(table, &blk[2..]));
        let qs = &blk[4..4 + QK / 2];
        let xs = &x.q[b * QK..(b + 1) * QK];
        let mut s = 0i32;
        for j in 0..QK / 2 {
            s += (qs[j] & 0x0f) as i32 * xs[j] as i32 + (qs[j] >> 4) as i32 * xs[j + QK / 2] as i32;
        }
        acc += d * x.d[b] * s as f32 + m * x.s[b];
    }
    acc
}

#[inline(always)]
fn dot_i8(a: &[i8], b: &[i8]) -> i32 {
    // i16 products summed in i32 lanes of 16: what `pmaddwd` does.
    let mut acc = [0i32; 16];
    for (ca, cb) in a.chunks_exact(16).zip(b.chunks_exact(16)) {
        for l in 0..16 {
            acc[l] += ca[l] as i16 as i32 * cb[l] as i16 as i32;
        }
    }
    let tail: i32 = a
        .chunks_exact(16)
        .remainder()
        .iter()
        .zip(b.chunks_exact(16).remainder())
        .map(|(&x, &y)| x as i32 * y as i32)
        .sum();
    acc.iter().sum::<i32>() + tail
}

/// `Σ_b d_w d_x Σ (q_w − 16) q_x` over one Q5_0 row.
#[inline(always)]
fn dot_q5_0(table: &[f32], row: &[u8], x: &Q8Vector) -> f32 {
    let mut acc = 0f32;
    let mut q = [0i8; QK];
    for (b, blk) in row.chunks_exact(6 + QK / 2).enumerate() {
        q5_0_values(blk, &mut q);
        let s = dot_i8(&q, &x.q[b * QK..(b + 1) * QK]);
        acc += f16_at(table, blk) * x.d[b] * s as f32;
    }
    acc
}

/// `Σ_j d·s_j·d_x Σ q_w q_x − m·m_j·d_x Σ q_x` over the sub-blocks of one Q4_K row (each
/// sub-block of 32 is one block of the activations).
#[inline(always)]
fn dot_q4_k(table: &[f32], row: &[u8], x: &Q8Vector) -> f32 {
    let mut acc = 0f32;
    for (sb, blk) in row.chunks_exact(144).enumerate() {
        let (d, dmin) = (f16_at(table, blk), f16_at(table, &blk[2..]));
        let (scales, qs) = (&blk[4..16], &blk[16..144]);
        for j in 0..8 {
            let (sc, m) = q4k_scale_min(j, scales);
            let b = sb * 8 + j;
            let q: &[u8; 32] = qs[32 * (j / 2)..32 * (j / 2) + 32].try_into().expect("32");
            let xs = &x.q[b * QK..(b + 1) * QK];
            // Unpacked first (a constant shift per half), so both loops vectorise.
            let mut w = [0i8; 32];
            if j % 2 == 0 {
                for l in 0..32 {
                    w[l] = (q[l] & 0xf) as i8;
                }
            } else {
                for l in 0..32 {
                    w[l] = (q[l] >> 4) as i8;
                }
            }
            let s = dot_i8(&w, xs);
            acc += d * sc as f32 * x.d[b] * s as f32 - dmin * m as f32 * x.s[b];
        }
    }
    acc
}

/// `Σ_g d·s_g·d_x Σ (q_w − 32) q_x` over the groups of 16 of one Q6_K row.
#[inline(always)]
fn dot_q6_k(table: &[f32], row: &[u8], x: &Q8Vector) -> f32 {
    let mut acc = 0f32;
    let mut q = [0i8; QK_K];
    for (sb, blk) in row.chunks_exact(210).enumerate() {
        q6_k_values(blk, &mut q);
        let d = f16_at(table, &blk[208..]);
        let scales = &blk[192..208];
        for g in 0..16 {
            let at = sb * QK_K + 16 * g;
            let s = dot_i8(&q[16 * g..16 * g + 16], &x.q[at..at + 16]);
            acc += d * (scales[g] as i8) as f32 * x.d[at / QK] * s as f32;
        }
    }
    acc
}

#[inline(always)]
fn dot_f32(row: &[f32], x: &[f32]) -> f32 {
    // Eight partial sums over fixed-size chunks, so the loop vectorises.
    let mut acc = [0f32; 8];
    let (rc, xc) = (row.chunks_exact(8), x.chunks_exact(8));
    let tail: f32 = rc
        .remainder()
        .iter()
        .zip(xc.remainder())
        .map(|(a, b)| a * b)
        .sum();
    for (r, v) in rc.zip(xc) {
        let (r, v): (&[f32; 8], &[f32; 8]) = (r.try_into().unwrap(), v.try_into().unwrap());
        for l in 0..8 {
            acc[l] += r[l] * v[l];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Rows `first..first + y.len()` of `W x` into `y` (portable code).
fn rows_generic(m: &QMatrix, first: usize, x: &[f32], xq: &Q8Vector, y: &mut [f32]) {
    let table = f16_table();
    match &m.store {
        Store::F32(w) => {
            for (i, out) in y.iter_mut().enumerate() {
                let r = first + i;
                *out = dot_f32(&w[r * m.cols..(r + 1) * m.cols], x);
            }
        }
        Store::Blocks { buf, start } => {
            let rb = m.kind.row_bytes(m.cols);
            for (i, out) in y.iter_mut().enumerate() {
                let at = start + (first + i) * rb;
                let row = &buf[at..at + rb];
                *out = match m.kind {
                    QKind::Q8_0 => dot_q8_0(table, row, xq),
                    QKind::Q4_1 => dot_q4_1(table, row, xq),
                    QKind::Q5_0 => dot_q5_0(table, row, xq),
                    QKind::Q4_K => dot_q4_k(table, row, xq),
                    QKind::Q6_K => dot_q6_k(table, row, xq),
                    QKind::F32 => unreachable!("f32 matrices are not blocks"),
                };
            }
        }
    }
}

/// AVX2 kernels, as llama.cpp's: 32 weights × 32 activations per block through
/// `maddubs` (u8 × i8 pairs to i16) and `madd` (to i32), scaled and accumulated in f32 lanes.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{Q8Vector, QK, QKind, QMatrix, Store, dot_f32};

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_hadd_ps(s, s);
        _mm_cvtss_f32(_mm_hadd_ps(s, s))
    }

    /// How far ahead of the block being read the weights are prefetched, in bytes (past page
    /// boundaries, where the hardware prefetcher stops).
    const PREFETCH: usize = 4096;

    /// [`super::quantize_block`] with eight lanes at a time: the same `d`, the same rounding
    /// (to nearest, ties to even), the same integers.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub fn quantize_block(xs: &[f32], q: &mut [i8]) -> (f32, i32) {
        assert!(xs.len() == QK && q.len() == QK, "a block of {QK}");
        // SAFETY: 32 readable floats at `xs` (asserted).
        let v = unsafe { [0, 8, 16, 24].map(|i| _mm256_loadu_ps(xs.as_ptr().add(i))) };
        let sign = _mm256_set1_ps(-0.0);
        let abs = v.map(|x| _mm256_andnot_ps(sign, x));
        let m = _mm256_max_ps(_mm256_max_ps(abs[0], abs[1]), _mm256_max_ps(abs[2], abs[3]));
        let m = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        let m = _mm_max_ss(m, _mm_movehdup_ps(m));
        let d = _mm_cvtss_f32(m) / 127.0;
        let inv = _mm256_set1_ps(if d > 0.0 { 1.0 / d } else { 0.0 });
        let i = v.map(|x| {
            _mm256_cvtps_epi32(_mm256_round_ps::<
                { _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC },
            >(_mm256_mul_ps(x, inv)))
        });
        let sum = _mm256_add_epi32(_mm256_add_epi32(i[0], i[1]), _mm256_add_epi32(i[2], i[3]));
        let sum = _mm_add_epi32(
            _mm256_castsi256_si128(sum),
            _mm256_extracti128_si256(sum, 1),
        );
        let sum = _mm_add_epi32(sum, _mm_shuffle_epi32(sum, 0b01_00_11_10));
        let sum = _mm_add_epi32(sum, _mm_shuffle_epi32(sum, 0b10_11_00_01));
        // i32 → i16 → i8 packs within 128-bit lanes; the permute puts the lanes back in order.
        let p = _mm256_packs_epi16(
            _mm256_packs_epi32(i[0], i[1]),
            _mm256_packs_epi32(i[2], i[3]),
        );
        let p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        // SAFETY: 32 writable bytes at `q` (asserted).
        unsafe { _mm256_storeu_si256(q.as_mut_ptr() as *mut __m256i, p) };
        (d, _mm_cvtsi128_si32(sum))
    }

    /// An f16 (little-endian bytes at `p`) as f32, in hardware.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn f16_at(p: *const u8) -> f32 {
        // SAFETY: the caller guarantees two readable bytes.
        let bits = unsafe { (p as *const u16).read_unaligned() };
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    fn dot_q8_0(row: &[u8], x: &Q8Vector) -> f32 {
        let nb = row.len() / (2 + QK);
        assert!(x.q.len() >= nb * QK && x.d.len() >= nb);
        let ones = _mm256_set1_epi16(1);
        let mut acc = _mm256_setzero_ps();
        let (mut w, mut xq) = (row.as_ptr(), x.q.as_ptr());
        for b in 0..nb {
            // SAFETY: block `b` of the row and of `x` are in bounds (asserted above).
            unsafe {
                let d = f16_at(w) * *x.d.get_unchecked(b);
                // A prefetch of an address past the end is harmless, but computing it with `add`
                // would be undefined behaviour: `wrapping_add`.
                _mm_prefetch::<_MM_HINT_T0>(w.wrapping_add(PREFETCH) as *const i8);
                let wv = _mm256_loadu_si256(w.add(2) as *const __m256i);
                let xv = _mm256_loadu_si256(xq as *const __m256i);
                // |w| · (x · sign(w)) = w · x, the unsigned operand first as maddubs wants.
                let p16 = _mm256_maddubs_epi16(_mm256_sign_epi8(wv, wv), _mm256_sign_epi8(xv, wv));
                let p32 = _mm256_madd_epi16(p16, ones);
                acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(p32), acc);
                w = w.add(2 + QK);
                xq = xq.add(QK);
            }
        }
        hsum(acc)
    }

    /// `Σ w·x` of 32 signed weights and 32 activations in eight i32 lanes (lane k: bytes
    /// 4k..4k+4), through the sign trick: |w| · (x · sign(w)).
    #[inline]
    #[target_feature(enable = "avx2")]
    fn dot32(wv: __m256i, xv: __m256i) -> __m256i {
        let p16 = _mm256_maddubs_epi16(_mm256_sign_epi8(wv, wv), _mm256_sign_epi8(xv, wv));
        _mm256_madd_epi16(p16, _mm256_set1_epi16(1))
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    fn dot_q5_0(row: &[u8], x: &Q8Vector) -> f32 {
        let nb = row.len() / 22;
        assert!(x.q.len() >= nb * QK && x.d.len() >= nb && row.len() >= nb * 22);
        let spread = super::spread_bits();
        let low = _mm_set1_epi8(0x0f);
        let sixteen = _mm256_set1_epi8(16);
        let mut acc = _mm256_setzero_ps();
        for b in 0..nb {
            let blk = &row[22 * b..22 * b + 22];
            // SAFETY: the block's 22 bytes and the activations' block `b` are in bounds.
            unsafe {
                let d = f16_at(blk.as_ptr()) * *x.d.get_unchecked(b);
                let q = _mm_loadu_si128(blk.as_ptr().add(6) as *const __m128i);
                let lo = _mm_and_si128(q, low);
                let hi = _mm_and_si128(_mm_srli_epi16(q, 4), low);
                let fifth = _mm256_set_epi64x(
                    spread[blk[5] as usize] as i64,
                    spread[blk[4] as usize] as i64,
                    spread[blk[3] as usize] as i64,
                    spread[blk[2] as usize] as i64,
                );
                let wv = _mm256_sub_epi8(_mm256_or_si256(_mm256_set_m128i(hi, lo), fifth), sixteen);
                let xv = _mm256_loadu_si256(x.q.as_ptr().add(b * QK) as *const __m256i);
                acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(dot32(wv, xv)), acc);
            }
        }
        hsum(acc)
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    fn dot_q4_k(row: &[u8], x: &Q8Vector) -> f32 {
        let nsb = row.len() / 144;
        assert!(x.q.len() >= nsb * 256 && x.d.len() >= nsb * 8 && x.s.len() >= nsb * 8);
        let low = _mm256_set1_epi8(0x0f);
        let ones = _mm256_set1_epi16(1);
        let mut acc = _mm256_setzero_ps();
        let mut mins = 0f32;
        for sb in 0..nsb {
            let blk = &row[144 * sb..144 * sb + 144];
            // SAFETY: the super-block's 144 bytes and the activations' blocks are in bounds.
            unsafe {
                let d = f16_at(blk.as_ptr());
                let dmin = f16_at(blk.as_ptr().add(2));
                let scales = &blk[4..16];
                for pair in 0..4 {
                    let q = _mm256_loadu_si256(blk.as_ptr().add(16 + 32 * pair) as *const __m256i);
                    for (half, wv) in [
                        _mm256_and_si256(q, low),
                        _mm256_and_si256(_mm256_srli_epi16(q, 4), low),
                    ]
                    .into_iter()
                    .enumerate()
                    {
                        let j = 2 * pair + half;
                        let (sc, m) = super::q4k_scale_min(j, scales);
                        let b = sb * 8 + j;
                        let xv = _mm256_loadu_si256(x.q.as_ptr().add(b * QK) as *const __m256i);
                        // Unsigned nibbles first, as maddubs wants.
                        let p32 = _mm256_madd_epi16(_mm256_maddubs_epi16(wv, xv), ones);
                        let scale = d * sc as f32 * *x.d.get_unchecked(b);
                        acc = _mm256_fmadd_ps(_mm256_set1_ps(scale), _mm256_cvtepi32_ps(p32), acc);
                        mins += dmin * m as f32 * *x.s.get_unchecked(b);
                    }
                }
            }
        }
        hsum(acc) - mins
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    fn dot_q6_k(row: &[u8], x: &Q8Vector) -> f32 {
        let nsb = row.len() / 210;
        assert!(x.q.len() >= nsb * 256 && x.d.len() >= nsb * 8);
        let low = _mm256_set1_epi8(0x0f);
        let three = _mm256_set1_epi8(3);
        let thirty_two = _mm256_set1_epi8(32);
        let mut acc = _mm256_setzero_ps();
        for sb in 0..nsb {
            let blk = &row[210 * sb..210 * sb + 210];
            // SAFETY: the super-block's 210 bytes and the activations' blocks are in bounds.
            unsafe {
                let d = f16_at(blk.as_ptr().add(208));
                let scales = &blk[192..208];
                for half in 0..2 {
                    let p = blk.as_ptr();
                    let ql0 = _mm256_loadu_si256(p.add(64 * half) as *const __m256i);
                    let ql1 = _mm256_loadu_si256(p.add(64 * half + 32) as *const __m256i);
                    let qh = _mm256_loadu_si256(p.add(128 + 32 * half) as *const __m256i);
                    let planes = [
                        (_mm256_and_si256(ql0, low), qh),
                        (_mm256_and_si256(ql1, low), _mm256_srli_epi16(qh, 2)),
                        (
                            _mm256_and_si256(_mm256_srli_epi16(ql0, 4), low),
                            _mm256_srli_epi16(qh, 4),
                        ),
                        (
                            _mm256_and_si256(_mm256_srli_epi16(ql1, 4), low),
                            _mm256_srli_epi16(qh, 6),
                        ),
                    ];
                    for (plane, (nib, bits)) in planes.into_iter().enumerate() {
                        let hi = _mm256_slli_epi16(_mm256_and_si256(bits, three), 4);
                        let wv = _mm256_sub_epi8(_mm256_or_si256(nib, hi), thirty_two);
                        // Output values 128·half + 32·plane .. + 32: activation block b.
                        let b = sb * 8 + 4 * half + plane;
                        let xv = _mm256_loadu_si256(x.q.as_ptr().add(b * QK) as *const __m256i);
                        let g = 8 * half + 2 * plane;
                        let (sa, sb_) = (scales[g] as i8 as f32, scales[g + 1] as i8 as f32);
                        let s = _mm256_set_ps(sb_, sb_, sb_, sb_, sa, sa, sa, sa);
                        let scale = _mm256_mul_ps(s, _mm256_set1_ps(d * *x.d.get_unchecked(b)));
                        acc = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(dot32(wv, xv)), acc);
                    }
                }
            }
        }
        hsum(acc)
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    fn dot_q4_1(row: &[u8], x: &Q8Vector) -> f32 {
        let nb = row.len() / (4 + QK / 2);
        assert!(x.q.len() >= nb * QK && x.d.len() >= nb && x.s.len() >= nb);
        let ones = _mm256_set1_epi16(1);
        let low = _mm_set1_epi8(0x0f);
        let mut acc = _mm256_setzero_ps();
        let mut mins = _mm_setzero_ps();
        let (mut w, mut xq) = (row.as_ptr(), x.q.as_ptr());
        for b in 0..nb {
            // SAFETY: block `b` of the row and of `x` are in bounds (asserted above).
            unsafe {
                let d = f16_at(w) * *x.d.get_unchecked(b);
                let m = f16_at(w.add(2)) * *x.s.get_unchecked(b);
                // A prefetch of an address past the end is harmless, but computing it with `add`
                // would be undefined behaviour: `wrapping_add`.
                _mm_prefetch::<_MM_HINT_T0>(w.wrapping_add(PREFETCH) as *const i8);
                let q = _mm_loadu_si128(w.add(4) as *const __m128i);
                let lo = _mm_and_si128(q, low);
                let hi = _mm_and_si128(_mm_srli_epi16(q, 4), low);
                let wv = _mm256_set_m128i(hi, lo);
                let xv = _mm256_loadu_si256(xq as *const __m256i);
                let p32 = _mm256_madd_epi16(_mm256_maddubs_epi16(wv, xv), ones);
                acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(p32), acc);
                mins = _mm_add_ss(mins, _mm_set_ss(m));
                w = w.add(4 + QK / 2);
                xq = xq.add(QK);
            }
        }
        hsum(acc) + _mm_cvtss_f32(mins)
    }

    /// `super::rows_generic` with these kernels.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) fn rows(m: &QMatrix, first: usize, x: &[f32], xq: &Q8Vector, y: &mut [f32]) {
        match &m.store {
            Store::F32(w) => {
                for (i, out) in y.iter_mut().enumerate() {
                    let r = first + i;
                    *out = dot_f32(&w[r * m.cols..(r + 1) * m.cols], x);
                }
            }
            Store::Blocks { buf, start } => {
                let rb = m.kind.row_bytes(m.cols);
                for (i, out) in y.iter_mut().enumerate() {
                    let at = start + (first + i) * rb;
                    let row = &buf[at..at + rb];
                    *out = match m.kind {
                        QKind::Q8_0 => dot_q8_0(row, xq),
                        QKind::Q4_1 => dot_q4_1(row, xq),
                        QKind::Q5_0 => dot_q5_0(row, xq),
                        QKind::Q4_K => dot_q4_k(row, xq),
                        QKind::Q6_K => dot_q6_k(row, xq),
                        QKind::F32 => unreachable!("f32 matrices are not blocks"),
                    };
                }
            }
        }
    }
}

/// Whether this CPU runs the AVX2 kernels.
fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static AVX2: OnceLock<bool> = OnceLock::new();
        *AVX2.get_or_init(|| {
            std::is_x86_feature_detected!("avx2")
                && std::is_x86_feature_detected!("fma")
                && std::is_x86_feature_detected!("f16c")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

fn rows(m: &QMatrix, first: usize, x: &[f32], xq: &Q8Vector, y: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU has AVX2, FMA and F16C (checked).
        return unsafe { avx2::rows(m, first, x, xq, y) };
    }
    rows_generic(m, first, x, xq, y)
}

impl QMatrix {
    /// `w` (`[rows, cols]` row-major) stored as `kind`. Quantized kinds need `cols` to be a
    /// multiple of 32; other matrices stay f32.
    pub fn from_f32(w: Vec<f32>, rows: usize, cols: usize, kind: QKind) -> Self {
        assert_eq!(w.len(), rows * cols, "matrix data does not match its shape");
        if kind == QKind::F32 || cols % QK != 0 {
            return Self {
                rows,
                cols,
                kind: QKind::F32,
                store: Store::F32(w),
            };
        }
        Self {
            rows,
            cols,
            kind,
            store: Store::Blocks {
                buf: Arc::new(quantize_rows(&w, kind)),
                start: 0,
            },
        }
    }

    /// Bytes the weights occupy.
    pub fn bytes(&self) -> usize {
        match &self.store {
            Store::F32(w) => 4 * w.len(),
            Store::Blocks { .. } => self.rows * self.kind.row_bytes(self.cols),
        }
    }

    /// Row `r`, dequantized.
    pub fn row(&self, r: usize) -> Vec<f32> {
        match &self.store {
            Store::F32(w) => w[r * self.cols..(r + 1) * self.cols].to_vec(),
            Store::Blocks { buf, start } => {
                let rb = self.kind.row_bytes(self.cols);
                let at = start + r * rb;
                crate::lm::gguf::dequantize(self.kind.ggml(), &buf[at..at + rb], self.cols)
                    .expect("a row holds whole blocks")
            }
        }
    }

    /// `y = W x`, with `xq` the quantized `x` (used by quantized kinds). Rows are split over
    /// rayon's threads.
    pub fn matvec(&self, x: &[f32], xq: &Q8Vector, y: &mut [f32]) {
        matvec_on(None, &mut [(self, y)], x, xq);
    }
}

/// `y_i = W_i x` for matrices that share `x` (q, k and v; gate and up), in one parallel
/// region on rayon's threads.
pub fn matvec_many(jobs: &mut [(&QMatrix, &mut [f32])], x: &[f32], xq: &Q8Vector) {
    matvec_on(None, jobs, x, xq)
}

/// `Y = X Wᵀ` for `t` activation rows at once (`xs` `[t, cols]` with their quantized rows
/// `xq`, `ys` `[t, rows]`): a matrix–matrix product. Rows of `W` are split into chunks over
/// rayon's threads, and each chunk, small enough to stay in cache, meets every activation row
/// before the next is read, so the weights are read from memory once for all `t` positions
/// (a matrix–vector product per position reads them `t` times).
pub fn matmat(m: &QMatrix, xs: &[f32], xq: &[Q8Vector], ys: &mut [f32]) {
    let t = xq.len();
    assert_eq!(
        (xs.len(), ys.len()),
        (t * m.cols, t * m.rows),
        "matrix-matrix shapes"
    );
    // Rows per chunk: ~16 KiB of weights (an L1's worth), at least 4 rows.
    let bytes_per_row = match m.kind {
        QKind::F32 => 4 * m.cols,
        k => k.row_bytes(m.cols),
    };
    let per = (16 * 1024 / bytes_per_row.max(1)).clamp(4, 256);
    let mut transposed = vec![0f32; m.rows * t];
    transposed
        .par_chunks_mut(per * t)
        .enumerate()
        .for_each(|(c, out)| {
            let first = c * per;
            let n = out.len() / t;
            let mut y = vec![0f32; n];
            for (p, q) in xq.iter().enumerate() {
                rows(m, first, &xs[p * m.cols..(p + 1) * m.cols], q, &mut y);
                for (r, &v) in y.iter().enumerate() {
                    out[r * t + p] = v;
                }
            }
        });
    for (r, col) in transposed.chunks_exact(t).enumerate() {
        for (p, &v) in col.iter().enumerate() {
            ys[p * m.rows + r] = v;
        }
    }
}

/// Each `width`-wide row of `xs` quantized.
fn quantize_rows_of(xs: &[f32], width: usize) -> Vec<Q8Vector> {
    xs.par_chunks(width)
        .map(|x| {
            let mut q = Q8Vector::default();
            q.quantize(x);
            q
        })
        .collect()
}

/// One task of a parallel matrix-vector product: rows `first..first + len` of `m` into the
/// `len` floats at `out`.
struct RowTask<'a> {
    m: &'a QMatrix,
    first: usize,
    out: *mut f32,
    len: usize,
}

/// The tasks of one product. Each task is claimed by exactly one thread (an atomic counter),
/// so the disjoint output slices behind the raw pointers are never shared.
struct RowTasks<'a>(Vec<RowTask<'a>>);

// SAFETY: see `RowTasks`: every output slice is written by the one thread that claims it.
unsafe impl Sync for RowTasks<'_> {}

impl RowTasks<'_> {
    fn get(&self, i: usize) -> Option<&RowTask<'_>> {
        self.0.get(i)
    }
}

/// [`matvec_many`] on `team`'s spinning threads when given, else on rayon's.
fn matvec_on(
    team: Option<&SpinTeam>,
    jobs: &mut [(&QMatrix, &mut [f32])],
    x: &[f32],
    xq: &Q8Vector,
) {
    for (m, y) in jobs.iter() {
        assert_eq!((x.len(), y.len()), (m.cols, m.rows), "matrix-vector shapes");
    }
    let threads = team
        .map_or_else(rayon::current_num_threads, SpinTeam::threads)
        .max(1);
    let total: usize = jobs.iter().map(|(m, _)| m.rows * m.cols).sum();
    if threads == 1 || total < 1 << 14 {
        for (m, y) in jobs.iter_mut() {
            rows(m, 0, x, xq, y);
        }
        return;
    }
    // Several tasks per thread: a thread that starts late still finds work, so both cores
    // stay busy (one contiguous half per thread measured ~15% slower with rayon).
    let task = (total / (8 * threads)).max(1 << 13);
    match team {
        Some(team) => {
            let mut tasks = Vec::new();
            for (m, y) in jobs.iter_mut() {
                let per = (task / m.cols).max(1);
                for (c, ys) in y.chunks_mut(per).enumerate() {
                    tasks.push(RowTask {
                        m,
                        first: c * per,
                        out: ys.as_mut_ptr(),
                        len: ys.len(),
                    });
                }
            }
            let tasks = RowTasks(tasks);
            let next = std::sync::atomic::AtomicUsize::new(0);
            team.run(&|_| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(t) = tasks.get(i) else { break };
                    // SAFETY: task `i` is claimed once; its slice lies inside one `y`.
                    let ys = unsafe { std::slice::from_raw_parts_mut(t.out, t.len) };
                    rows(t.m, t.first, x, xq, ys);
                }
            });
        }
        None => {
            let mut tasks: Vec<(&QMatrix, usize, &mut [f32])> = Vec::new();
            for (m, y) in jobs.iter_mut() {
                let per = (task / m.cols).max(1);
                for (c, ys) in y.chunks_mut(per).enumerate() {
                    tasks.push((*m, c * per, ys));
                }
            }
            tasks
                .into_par_iter()
                .for_each(|(m, first, ys)| rows(m, first, x, xq, ys));
        }
    }
}

/// Threads that spin between jobs, for decoding: a token is ~120 short matrix products, and
/// rayon's workers fall asleep between them and take tens of µs to wake (llama.cpp's threads
/// spin the same way). The caller is thread 0; helpers `1..threads` run inside
/// [`SpinTeam::with`]'s scope and stop when it ends.
pub struct SpinTeam {
    threads: usize,
    epoch: std::sync::atomic::AtomicUsize,
    pending: std::sync::atomic::AtomicUsize,
    stop: std::sync::atomic::AtomicBool,
    failed: std::sync::atomic::AtomicBool,
    /// The current job: a pointer to a `&(dyn Fn(usize) + Sync)` on the caller's stack.
    job: std::sync::atomic::AtomicPtr<()>,
    /// Held by the [`run`](SpinTeam::run) in progress: one job at a time.
    busy: std::sync::Mutex<()>,
}

type Job<'a> = &'a (dyn Fn(usize) + Sync);

impl SpinTeam {
    /// Runs `body` with a team of `threads` threads (the caller and `threads − 1` helpers).
    pub fn with<R>(threads: usize, body: impl FnOnce(&SpinTeam) -> R) -> R {
        use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize};
        let team = SpinTeam {
            threads: threads.max(1),
            epoch: AtomicUsize::new(0),
            pending: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            failed: AtomicBool::new(false),
            job: AtomicPtr::new(std::ptr::null_mut()),
            busy: std::sync::Mutex::new(()),
        };
        /// Stops the helpers however `body` ends, so the scope can join them.
        struct Stop<'a>(&'a SpinTeam);
        impl Drop for Stop<'_> {
            fn drop(&mut self) {
                self.0
                    .stop
                    .store(true, std::sync::atomic::Ordering::Release);
            }
        }
        std::thread::scope(|s| {
            for i in 1..team.threads {
                let team = &team;
                s.spawn(move || team.help(i));
            }
            let _stop = Stop(&team);
            body(&team)
        })
    }

    /// Threads in the team, the caller included.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Runs `f(i)` on every thread `i` of the team and returns when all have finished. Calls
    /// from several threads take turns. A panic in any share, the caller's included, is
    /// re-raised here only after every helper has finished with the job (so no helper runs on
    /// a frame that has unwound).
    pub fn run(&self, f: &(dyn Fn(usize) + Sync)) {
        use std::sync::atomic::Ordering::{Acquire, Release};
        let _turn = self.busy.lock().unwrap_or_else(|p| p.into_inner());
        let job: Job<'_> = f;
        let slot: *const Job<'_> = &job;
        self.job.store(slot as *mut (), Release);
        self.pending.store(self.threads - 1, Release);
        self.epoch.fetch_add(1, Release);
        let mine = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(0)));
        while self.pending.load(Acquire) != 0 {
            std::hint::spin_loop();
        }
        if let Err(payload) = mine {
            std::panic::resume_unwind(payload);
        }
        if self.failed.swap(false, Acquire) {
            panic!("a decoding thread panicked (see its message above)");
        }
    }

    fn help(&self, i: usize) {
        use std::sync::atomic::Ordering::{Acquire, Release};
        let mut seen = 0;
        loop {
            let mut spins = 0u32;
            loop {
                let e = self.epoch.load(Acquire);
                if e != seen {
                    seen = e;
                    break;
                }
                if self.stop.load(Acquire) {
                    return;
                }
                spins = spins.wrapping_add(1);
                if spins % (1 << 16) == 0 {
                    // Another process may want this core; between tokens a brief yield is free.
                    std::thread::yield_now();
                } else {
                    std::hint::spin_loop();
                }
            }
            let slot = self.job.load(Acquire) as *const Job<'_>;
            // SAFETY: `run` published the slot before bumping the epoch (release/acquire) and
            // keeps the job alive until `pending` reaches 0, which this thread has not yet
            // signalled.
            let f: Job<'_> = unsafe { *slot };
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(i))).is_err() {
                self.failed.store(true, Release);
            }
            self.pending.fetch_sub(1, Release);
        }
    }
}

/// One layer of [`QLlama`].
#[derive(Clone, Debug)]
pub struct QLayer {
    pub attn_norm: Vec<f32>,
    pub wq: QMatrix,
    pub wk: QMatrix,
    pub wv: QMatrix,
    pub wo: QMatrix,
    pub ffn_norm: Vec<f32>,
    pub w1: QMatrix,
    pub w2: QMatrix,
    pub w3: QMatrix,
    /// Gemma 3's extra norms.
    pub gemma: Option<GemmaNorms>,
}

/// A Llama (or Gemma 3) for block-quantized CPU decoding (the same arithmetic as
/// [`Llama`](crate::lm::Llama): RMSNorm, interleaved rotary pairs, grouped-query attention,
/// SwiGLU).
#[derive(Clone, Debug)]
pub struct QLlama {
    pub config: LlamaConfig,
    /// `[vocab, dim]`.
    pub embed: QMatrix,
    pub layers: Vec<QLayer>,
    pub norm: Vec<f32>,
    /// `[vocab, dim]`; `None` when tied to `embed`.
    pub lm_head: Option<QMatrix>,
}

impl QLlama {
    /// From f32 weights in checkpoint layout, every matrix quantized to `kind`.
    pub fn from_weights(config: LlamaConfig, w: LlamaWeights, kind: QKind) -> Self {
        let (d, h, v) = (config.dim, config.hidden_dim, config.vocab_size);
        let kv = config.n_kv_heads * config.head_dim();
        let q = config.q_dim();
        let layers = w
            .layers
            .into_iter()
            .map(|l| QLayer {
                attn_norm: l.attn_norm,
                wq: QMatrix::from_f32(l.wq, q, d, kind),
                wk: QMatrix::from_f32(l.wk, kv, d, kind),
                wv: QMatrix::from_f32(l.wv, kv, d, kind),
                wo: QMatrix::from_f32(l.wo, d, q, kind),
                ffn_norm: l.ffn_norm,
                w1: QMatrix::from_f32(l.w1, h, d, kind),
                w2: QMatrix::from_f32(l.w2, d, h, kind),
                w3: QMatrix::from_f32(l.w3, h, d, kind),
                gemma: l.gemma,
            })
            .collect();
        Self {
            embed: QMatrix::from_f32(w.embed, v, d, kind),
            layers,
            norm: w.final_norm,
            lm_head: w.lm_head.map(|head| QMatrix::from_f32(head, v, d, kind)),
            config,
        }
    }

    /// From a GGUF file, keeping its Q8_0 / Q4_1 / Q5_0 / Q4_K / Q6_K blocks where they are
    /// (the file's buffer is shared, not copied); other tensor types are read as f32.
    pub fn from_gguf(g: Gguf) -> Result<Self, String> {
        let config = g.config()?;
        let (d, h, v) = (config.dim, config.hidden_dim, config.vocab_size);
        let kv = config.n_kv_heads * config.head_dim();
        let (q, hd) = (config.q_dim(), config.head_dim());
        // Which tensors stay as blocks, and where; the rest are dequantized now.
        let mut plan = Vec::new();
        let mut mats = std::collections::HashMap::new();
        let mut want = vec![("token_embd.weight".to_string(), v, d)];
        if !config.tie_embeddings {
            want.push(("output.weight".into(), v, d));
        }
        for i in 0..config.n_layers {
            for (n, rows, cols) in [
                ("attn_q", q, d),
                ("attn_k", kv, d),
                ("attn_v", kv, d),
                ("attn_output", d, q),
                ("ffn_gate", h, d),
                ("ffn_down", d, h),
                ("ffn_up", h, d),
            ] {
                want.push((format!("blk.{i}.{n}.weight"), rows, cols));
            }
        }
        for (name, rows, cols) in &want {
            let (ty, at) = g.raw(name, &[*cols as u64, *rows as u64])?;
            match QKind::from_ggml(ty) {
                Some(kind) if cols % kind.block_values() == 0 => {
                    plan.push((name.clone(), *rows, *cols, kind, at))
                }
                _ => {
                    let w = g.tensor(name, &[*cols as u64, *rows as u64])?;
                    mats.insert(name.clone(), QMatrix::from_f32(w, *rows, *cols, QKind::F32));
                }
            }
        }
        type Norms = (Vec<f32>, Vec<f32>, Option<GemmaNorms>);
        let norms: Vec<Norms> = (0..config.n_layers)
            .map(|i| {
                let t =
                    |n: &str, len: usize| g.tensor(&format!("blk.{i}.{n}.weight"), &[len as u64]);
                let gemma = match config.gemma3() {
                    None => None,
                    Some(_) => Some(GemmaNorms {
                        q_norm: t("attn_q_norm", hd)?,
                        k_norm: t("attn_k_norm", hd)?,
                        post_attn_norm: t("post_attention_norm", d)?,
                        post_ffn_norm: t("post_ffw_norm", d)?,
                    }),
                };
                Ok((t("attn_norm", d)?, t("ffn_norm", d)?, gemma))
            })
            .collect::<Result<_, String>>()?;
        let norm = g.tensor("output_norm.weight", &[d as u64])?;
        let buf = Arc::new(g.into_bytes());
        for (name, rows, cols, kind, start) in plan {
            let m = QMatrix {
                rows,
                cols,
                kind,
                store: Store::Blocks {
                    buf: Arc::clone(&buf),
                    start,
                },
            };
            mats.insert(name, m);
        }
        let mut take = |name: &str| {
            mats.remove(name)
                .ok_or(format!("tensor `{name}` is missing"))
        };
        let mut layers = Vec::with_capacity(config.n_layers);
        for (i, (attn_norm, ffn_norm, gemma)) in norms.into_iter().enumerate() {
            let mut t = |n: &str| take(&format!("blk.{i}.{n}.weight"));
            layers.push(QLayer {
                attn_norm,
                wq: t("attn_q")?,
                wk: t("attn_k")?,
                wv: t("attn_v")?,
                wo: t("attn_output")?,
                ffn_norm,
                w1: t("ffn_gate")?,
                w2: t("ffn_down")?,
                w3: t("ffn_up")?,
                gemma,
            });
        }
        Ok(Self {
            embed: take("token_embd.weight")?,
            lm_head: if config.tie_embeddings {
                None
            } else {
                Some(take("output.weight")?)
            },
            layers,
            norm,
            config,
        })
    }

    /// Bytes the weights occupy in memory.
    pub fn weight_bytes(&self) -> usize {
        let vecs = |v: &Vec<f32>| 4 * v.len();
        self.embed.bytes()
            + self.lm_head.as_ref().map_or(0, QMatrix::bytes)
            + vecs(&self.norm)
            + self
                .layers
                .iter()
                .map(|l| {
                    vecs(&l.attn_norm)
                        + vecs(&l.ffn_norm)
                        + [&l.wq, &l.wk, &l.wv, &l.wo, &l.w1, &l.w2, &l.w3]
                            .iter()
                            .map(|m| m.bytes())
                            .sum::<usize>()
                })
                .sum::<usize>()
    }

    /// The storage of the layers' matrices (`q4_1` for SmolLM2's file, say).
    pub fn weight_kind(&self) -> QKind {
        self.layers.first().map_or(self.embed.kind, |l| l.wq.kind)
    }

    /// A fresh decoding state (empty KV cache) whose products run on rayon's threads.
    pub fn session(&self) -> QSession<'_> {
        self.session_on(None)
    }

    /// A fresh decoding state whose products run on `team` (or rayon's threads).
    pub fn session_on<'a>(&'a self, team: Option<&'a SpinTeam>) -> QSession<'a> {
        let c = &self.config;
        let kv = c.n_kv_heads * c.head_dim();
        QSession {
            model: self,
            team,
            keys: vec![Vec::new(); c.n_layers],
            values: vec![Vec::new(); c.n_layers],
            pos: 0,
            x: vec![0.0; c.dim],
            h: vec![0.0; c.dim],
            t: vec![0.0; c.dim.max(c.head_dim())],
            q: vec![0.0; c.q_dim()],
            k: vec![0.0; kv],
            v: vec![0.0; kv],
            att: vec![0.0; c.q_dim()],
            gate: vec![0.0; c.hidden_dim],
            up: vec![0.0; c.hidden_dim],
            scores: Vec::new(),
            angles: Vec::new(),
            hq: Q8Vector::default(),
            logits: vec![0.0; c.vocab_size],
        }
    }

    /// Samples a continuation of `prompt` (one row; BOS included if wanted): up to
    /// `params.max_new_tokens` tokens (and the context length), stopping after any of
    /// `stop_ids`. Greedy at temperature 0.
    pub fn generate(
        &self,
        prompt: &[u32],
        params: &SamplingParams,
        stop_ids: &[u32],
        rng: &mut Rng,
    ) -> Sequence {
        self.generate_until(prompt, params, stop_ids, &|_| false, rng)
    }

    /// [`generate`](Self::generate), also stopping when `stop(tokens so far)` says so (stop
    /// strings).
    pub fn generate_until(
        &self,
        prompt: &[u32],
        params: &SamplingParams,
        stop_ids: &[u32],
        stop: &dyn Fn(&[u32]) -> bool,
        rng: &mut Rng,
    ) -> Sequence {
        SpinTeam::with(rayon::current_num_threads(), |team| {
            self.generate_on(team, prompt, params, stop_ids, stop, rng)
        })
    }

    fn generate_on(
        &self,
        team: &SpinTeam,
        prompt: &[u32],
        params: &SamplingParams,
        stop_ids: &[u32],
        stop: &dyn Fn(&[u32]) -> bool,
        rng: &mut Rng,
    ) -> Sequence {
        let mut s = self.session_on(Some(team));
        let mut out = Sequence {
            tokens: Vec::new(),
            logprobs: Vec::new(),
            finished: false,
        };
        let room = self.config.max_seq_len.saturating_sub(prompt.len());
        let Some((&last, head)) = prompt.split_last() else {
            return out;
        };
        for &t in head {
            s.feed(t);
        }
        let mut next = last;
        for _ in 0..params.max_new_tokens.min(room) {
            let logits = s.feed(next);
            let tok = sample_next(logits, params, rng);
            out.logprobs
                .push(logprob_at(logits, params.temperature, tok));
            out.tokens.push(tok as u32);
            next = tok as u32;
            if stop_ids.contains(&next) || stop(&out.tokens) {
                out.finished = true;
                break;
            }
        }
        out
    }
}

/// Most rows in one forward pass of [`QLlama::score_many`].
const SCORE_ROWS: usize = 1024;

/// The key/value cache of one sequence for [`QLlama::forward_batch`]: per layer,
/// `[positions, kv_heads · head_dim]`.
#[derive(Clone, Debug, Default)]
pub struct QCache {
    keys: Vec<Vec<f32>>,
    values: Vec<Vec<f32>>,
    len: usize,
}

impl QCache {
    /// Positions cached so far.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl QLlama {
    /// An empty cache for [`forward_batch`](Self::forward_batch).
    pub fn cache(&self) -> QCache {
        QCache {
            keys: vec![Vec::new(); self.config.n_layers],
            values: vec![Vec::new(); self.config.n_layers],
            len: 0,
        }
    }

    /// `log p(tokens[i] | tokens[..i])` for `i` in `from..tokens.len()` (`from ≥ 1`), logits
    /// divided by `temperature` (≤ 0 or 1: the model's own distribution): the whole sequence
    /// in one batch ([`forward_batch`](Self::forward_batch)). The same arithmetic as feeding
    /// the tokens one by one to a [`QSession`], position for position.
    pub fn score(&self, tokens: &[u32], from: usize, temperature: f32) -> Result<Vec<f32>, String> {
        let t = tokens.len();
        if from == 0 || from > t {
            return Err(format!("scoring from position {from} of {t}"));
        }
        let mut caches = [self.cache()];
        let rows: Vec<(usize, u32)> = tokens.iter().map(|&id| (0, id)).collect();
        let wanted: Vec<usize> = (from - 1..t - 1).collect();
        let mut out = Vec::with_capacity(t - from);
        self.forward_batch(&mut caches, &rows, &wanted, &mut |row, logits| {
            out.push(logprob_at(logits, temperature, tokens[row + 1] as usize));
        })?;
        Ok(out)
    }

    /// [`score`](Self::score) of several `(tokens, from)` at once: their longest common prefix
    /// (up to the first scored position) is fed once and its cache forked, and the rest of
    /// every sequence goes through shared forward passes of at most `SCORE_ROWS` rows. The
    /// same arithmetic per row, so the same values as scoring each alone.
    pub fn score_many(
        &self,
        seqs: &[(&[u32], usize)],
        temperature: f32,
    ) -> Result<Vec<Vec<f32>>, String> {
        for &(tokens, from) in seqs {
            if from == 0 || from > tokens.len() {
                return Err(format!("scoring from position {from} of {}", tokens.len()));
            }
        }
        let Some(&(first, _)) = seqs.first() else {
            return Ok(Vec::new());
        };
        // The shared prefix ends before every sequence's first scored logits.
        let shared = seqs.iter().fold(first.len(), |l, &(t, from)| {
            let common = first.iter().zip(t).take_while(|(a, b)| a == b).count();
            l.min(common).min(from - 1)
        });
        let mut prefix = self.cache();
        if shared > 0 {
            let rows: Vec<(usize, u32)> = first[..shared].iter().map(|&id| (0, id)).collect();
            self.forward_batch(
                std::slice::from_mut(&mut prefix),
                &rows,
                &[],
                &mut |_, _| {},
            )?;
        }
        let mut out: Vec<Vec<f32>> = seqs
            .iter()
            .map(|(t, from)| Vec::with_capacity(t.len() - from))
            .collect();
        let mut start = 0;
        while start < seqs.len() {
            // As many whole sequences as fit `SCORE_ROWS` rows (at least one).
            let mut end = start;
            let mut n_rows = 0;
            while end < seqs.len()
                && (end == start || n_rows + seqs[end].0.len() - shared <= SCORE_ROWS)
            {
                n_rows += seqs[end].0.len() - shared;
                end += 1;
            }
            let mut caches = vec![prefix.clone(); end - start];
            let (mut rows, mut wanted, mut owner) = (Vec::new(), Vec::new(), Vec::new());
            for (k, &(tokens, from)) in seqs[start..end].iter().enumerate() {
                for (p, &id) in tokens.iter().enumerate().skip(shared) {
                    if p + 1 >= from && p + 1 < tokens.len() {
                        wanted.push(rows.len());
                        owner.push((start + k, tokens[p + 1]));
                    }
                    rows.push((k, id));
                }
            }
            let mut next = 0;
            self.forward_batch(&mut caches, &rows, &wanted, &mut |_, logits| {
                let (i, target) = owner[next];
                out[i].push(logprob_at(logits, temperature, target as usize));
                next += 1;
            })?;
            start = end;
        }
        Ok(out)
    }

    /// One forward pass over `rows`, each a `(cache, token)`: the token goes at the next
    /// position of `caches[cache]` (rows of one cache in position order), so one call can
    /// prefill a prompt (many rows of one cache), decode one step of many sequences (one row
    /// each), or both. Every projection is a matrix–matrix product ([`matmat`]) over all rows;
    /// each row attends to its own cache up to its own position (windowed on Gemma 3's local
    /// layers). `logits(row, logits)` is called for each row in `wanted` (ascending), a few
    /// rows at a time (a 262K vocabulary is 1 MiB of logits per row). Per row, the same
    /// arithmetic as [`QSession::feed`].
    pub fn forward_batch(
        &self,
        caches: &mut [QCache],
        rows: &[(usize, u32)],
        wanted: &[usize],
        logits: &mut dyn FnMut(usize, &[f32]),
    ) -> Result<(), String> {
        let c = &self.config;
        let t = rows.len();
        // Each row's position; every check before anything is written.
        let mut next: Vec<usize> = caches.iter().map(QCache::len).collect();
        let mut pos = Vec::with_capacity(t);
        for &(ci, id) in rows {
            let Some(p) = next.get_mut(ci) else {
                return Err(format!("row of cache {ci}; there are {}", caches.len()));
            };
            if *p >= c.max_seq_len {
                return Err(format!(
                    "{} tokens exceed the context of {}",
                    *p + 1,
                    c.max_seq_len
                ));
            }
            if id as usize >= c.vocab_size {
                return Err(format!(
                    "token id {id} is outside the vocabulary of {}",
                    c.vocab_size
                ));
            }
            pos.push(*p);
            *p += 1;
        }
        if wanted.windows(2).any(|w| w[0] >= w[1]) || wanted.last().is_some_and(|&w| w >= t) {
            return Err("wanted rows must ascend and exist".into());
        }
        if caches.iter().any(|k| k.keys.len() != c.n_layers) {
            return Err("a cache of another model".into());
        }
        let (d, nh, nkv, hd) = (c.dim, c.n_heads, c.n_kv_heads, c.head_dim());
        let (qd, kvd, hid) = (c.q_dim(), nkv * hd, c.hidden_dim);
        let gemma = c.gemma3();
        let mut x: Vec<f32> = Vec::with_capacity(t * d);
        for &(_, id) in rows {
            x.extend(self.embed.row(id as usize));
        }
        if gemma.is_some() {
            let scale = (d as f32).sqrt();
            x.iter_mut().for_each(|v| *v *= scale);
        }
        let norm_rows = |x: &[f32], w: &[f32]| -> Vec<f32> {
            let mut out = vec![0f32; x.len()];
            for (o, r) in out.chunks_exact_mut(w.len()).zip(x.chunks_exact(w.len())) {
                rms_norm(r, w, c.norm_eps, o);
            }
            out
        };
        let norm_in_place = |x: &mut [f32], w: &[f32]| {
            let mut scratch = vec![0f32; w.len()];
            rms_norm_each(x, w, c.norm_eps, &mut scratch);
        };
        // Rotary tables per (base, scale), for each row's position.
        let mut tables: Vec<((f32, f32), Vec<Vec<(f32, f32)>>)> = Vec::new();
        for li in 0..c.n_layers {
            let key = c.rope_of_layer(li);
            if !tables.iter().any(|(k, _)| *k == key) {
                let per_row = pos
                    .iter()
                    .map(|&p| {
                        let mut v = Vec::new();
                        rope_table(hd, p, key, &mut v);
                        v
                    })
                    .collect();
                tables.push((key, per_row));
            }
        }
        let scale = gemma.map_or(1.0 / (hd as f32).sqrt(), |g| g.query_scale);
        let (mut q, mut k, mut v) = (vec![0f32; t * qd], vec![0f32; t * kvd], vec![0f32; t * kvd]);
        let mut att = vec![0f32; t * qd];
        let (mut gate, mut up) = (vec![0f32; t * hid], vec![0f32; t * hid]);
        let mut o = vec![0f32; t * d];
        for (li, l) in self.layers.iter().enumerate() {
            let h = norm_rows(&x, &l.attn_norm);
            let hq = quantize_rows_of(&h, d);
            matmat(&l.wq, &h, &hq, &mut q);
            matmat(&l.wk, &h, &hq, &mut k);
            matmat(&l.wv, &h, &hq, &mut v);
            if let Some(g) = &l.gemma {
                norm_in_place(&mut q, &g.q_norm);
                norm_in_place(&mut k, &g.k_norm);
            }
            let key = c.rope_of_layer(li);
            let (_, table) = tables.iter().find(|(k, _)| *k == key).expect("built above");
            for r in 0..t {
                rope(&mut q[r * qd..(r + 1) * qd], &table[r], gemma.is_some());
                rope(&mut k[r * kvd..(r + 1) * kvd], &table[r], gemma.is_some());
            }
            for (r, &(ci, _)) in rows.iter().enumerate() {
                caches[ci].keys[li].extend_from_slice(&k[r * kvd..(r + 1) * kvd]);
                caches[ci].values[li].extend_from_slice(&v[r * kvd..(r + 1) * kvd]);
            }
            let window = c.window_of_layer(li);
            let geometry = Heads {
                n_heads: nh,
                group: nh / nkv,
                head_dim: hd,
                kv_dim: kvd,
                scale,
            };
            let cached: &[QCache] = caches;
            att.par_chunks_mut(qd).enumerate().for_each(|(r, out)| {
                let (ci, p) = (rows[r].0, pos[r]);
                let from = window.map_or(0, |w| (p + 1).saturating_sub(w));
                let kv = &cached[ci];
                let keys = &kv.keys[li][from * kvd..(p + 1) * kvd];
                let values = &kv.values[li][from * kvd..(p + 1) * kvd];
                let mut scores = Vec::new();
                let qrow = &q[r * qd..(r + 1) * qd];
                for head in 0..nh {
                    geometry.attend(
                        head,
                        qrow,
                        keys,
                        values,
                        &mut scores,
                        &mut out[head * hd..(head + 1) * hd],
                    );
                }
            });
            let aq = quantize_rows_of(&att, qd);
            matmat(&l.wo, &att, &aq, &mut o);
            if let Some(g) = &l.gemma {
                norm_in_place(&mut o, &g.post_attn_norm);
            }
            x.iter_mut().zip(&o).for_each(|(a, b)| *a += b);
            let h = norm_rows(&x, &l.ffn_norm);
            let hq = quantize_rows_of(&h, d);
            matmat(&l.w1, &h, &hq, &mut gate);
            matmat(&l.w3, &h, &hq, &mut up);
            if gemma.is_some() {
                gate.iter_mut()
                    .zip(&up)
                    .for_each(|(g, &u)| *g = gelu_tanh(*g) * u);
            } else {
                gate.iter_mut()
                    .zip(&up)
                    .for_each(|(g, &u)| *g = *g / (1.0 + (-*g).exp()) * u);
            }
            let gq = quantize_rows_of(&gate, hid);
            matmat(&l.w2, &gate, &gq, &mut o);
            if let Some(g) = &l.gemma {
                norm_in_place(&mut o, &g.post_ffn_norm);
            }
            x.iter_mut().zip(&o).for_each(|(a, b)| *a += b);
        }
        for (ci, n) in next.into_iter().enumerate() {
            caches[ci].len = n;
        }
        // The output layer over a few wanted rows at a time.
        let head = self.lm_head.as_ref().unwrap_or(&self.embed);
        let vocab = c.vocab_size;
        for chunk in wanted.chunks(8) {
            let normed: Vec<f32> = chunk
                .iter()
                .flat_map(|&r| {
                    let mut n = vec![0f32; d];
                    rms_norm(&x[r * d..(r + 1) * d], &self.norm, c.norm_eps, &mut n);
                    n
                })
                .collect();
            let nq = quantize_rows_of(&normed, d);
            let mut out = vec![0f32; chunk.len() * vocab];
            matmat(head, &normed, &nq, &mut out);
            for (i, &r) in chunk.iter().enumerate() {
                logits(r, &out[i * vocab..(i + 1) * vocab]);
            }
        }
        Ok(())
    }
}

/// A decoding state: the KV cache and scratch buffers.
pub struct QSession<'a> {
    model: &'a QLlama,
    team: Option<&'a SpinTeam>,
    /// Per layer, `[positions, kv_heads · head_dim]`.
    keys: Vec<Vec<f32>>,
    values: Vec<Vec<f32>>,
    /// Positions fed so far.
    pub pos: usize,
    x: Vec<f32>,
    h: Vec<f32>,
    /// Scratch for the norms applied in place (Gemma 3's QK- and post-norms).
    t: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    att: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    scores: Vec<f32>,
    angles: Vec<(f32, f32)>,
    hq: Q8Vector,
    logits: Vec<f32>,
}

/// `x / sqrt(mean(x²) + eps) · w` into `out`.
fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let ms = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    let r = (ms + eps).sqrt().recip();
    for ((o, &v), &g) in out.iter_mut().zip(x).zip(w) {
        *o = v * r * g;
    }
}

/// The rotary angles' `(sin, cos)` at `pos / scale` for a head of width `hd` (llama2.c's
/// f32 arithmetic, as [`Llama`](crate::lm::Llama)).
fn rope_table(hd: usize, pos: usize, (theta, scale): (f32, f32), out: &mut Vec<(f32, f32)>) {
    out.clear();
    let pos = pos as f32 / scale;
    out.extend((0..hd / 2).map(|j| {
        let f = 1.0f32 / theta.powf((2 * j) as f32 / hd as f32);
        (pos * f).sin_cos()
    }));
}

/// Rotates the pairs of each head of `x` by `table`'s angles: interleaved pairs `(2j, 2j+1)`,
/// or with `halves` the pairs `(j, j + hd/2)` (GPT-NeoX order, Gemma 3's).
fn rope(x: &mut [f32], table: &[(f32, f32)], halves: bool) {
    let half = table.len();
    for head in x.chunks_exact_mut(2 * half) {
        for (j, &(s, c)) in table.iter().enumerate() {
            let (ia, ib) = if halves {
                (j, j + half)
            } else {
                (2 * j, 2 * j + 1)
            };
            let (a, b) = (head[ia], head[ib]);
            head[ia] = a * c - b * s;
            head[ib] = a * s + b * c;
        }
    }
}

/// RMSNorm of each `w.len()`-wide piece of `x` in place, with `scratch` as room.
fn rms_norm_each(x: &mut [f32], w: &[f32], eps: f32, scratch: &mut [f32]) {
    let n = w.len();
    for piece in x.chunks_exact_mut(n) {
        scratch[..n].copy_from_slice(piece);
        rms_norm(&scratch[..n], w, eps, piece);
    }
}

/// The attention geometry of one layer.
struct Heads {
    n_heads: usize,
    /// Query heads per key/value head.
    group: usize,
    head_dim: usize,
    kv_dim: usize,
    scale: f32,
}

impl Heads {
    /// Head `head`'s attention output over every cached position (`keys` and `values` are
    /// `[positions, kv_dim]`) into `out`, with `scores` as scratch.
    fn attend(
        &self,
        head: usize,
        q: &[f32],
        keys: &[f32],
        values: &[f32],
        scores: &mut Vec<f32>,
        out: &mut [f32],
    ) {
        debug_assert!(head < self.n_heads);
        let (hd, kvd) = (self.head_dim, self.kv_dim);
        let kvh = head / self.group;
        let n = keys.len() / kvd;
        let q = &q[head * hd..(head + 1) * hd];
        scores.resize(n, 0.0);
        let mut max = f32::NEG_INFINITY;
        for (t, s) in scores.iter_mut().enumerate() {
            let k = &keys[t * kvd + kvh * hd..t * kvd + (kvh + 1) * hd];
            *s = dot_f32(q, k) * self.scale;
            max = max.max(*s);
        }
        let mut total = 0.0;
        for s in scores.iter_mut() {
            *s = (*s - max).exp();
            total += *s;
        }
        out.fill(0.0);
        for (t, &p) in scores.iter().enumerate() {
            let v = &values[t * kvd + kvh * hd..t * kvd + (kvh + 1) * hd];
            let w = p / total;
            for (o, &x) in out.iter_mut().zip(v) {
                *o += w * x;
            }
        }
    }
}

/// A pointer to floats that threads write disjoint parts of.
struct SyncPtr(*mut f32);

// SAFETY: users hand each thread disjoint ranges (see `slice`).
unsafe impl Sync for SyncPtr {}

impl SyncPtr {
    /// # Safety
    /// `at..at + len` must lie inside the allocation and be written by no other thread.
    #[allow(clippy::mut_from_ref)]
    unsafe fn slice(&self, at: usize, len: usize) -> &mut [f32] {
        // SAFETY: guaranteed by the caller.
        unsafe { std::slice::from_raw_parts_mut(self.0.add(at), len) }
    }
}

impl QSession<'_> {
    /// Feeds one token at the next position; returns the logits for the token after it.
    pub fn feed(&mut self, token: u32) -> &[f32] {
        // On one of rayon's own threads, each matrix product is split by work stealing
        // between spinning workers; from any other thread every product would be a round trip
        // through the pool's sleep/wake-up (two context switches, tens of µs, ~200 per token).
        if self.team.is_none() && rayon::current_thread_index().is_none() {
            rayon::scope(|_| {
                self.forward(token);
            });
        } else {
            self.forward(token);
        }
        &self.logits
    }

    fn forward(&mut self, token: u32) {
        let m = self.model;
        let team = self.team;
        let c = &m.config;
        let (nh, nkv, hd) = (c.n_heads, c.n_kv_heads, c.head_dim());
        let kvd = nkv * hd;
        let pos = self.pos;
        let gemma = c.gemma3();
        self.x = m.embed.row(token as usize);
        if gemma.is_some() {
            let scale = (c.dim as f32).sqrt();
            self.x.iter_mut().for_each(|v| *v *= scale);
        }
        let scale = gemma.map_or(1.0 / (hd as f32).sqrt(), |g| g.query_scale);
        let mut rope_key = None;
        for (li, l) in m.layers.iter().enumerate() {
            rms_norm(&self.x, &l.attn_norm, c.norm_eps, &mut self.h);
            self.hq.quantize(&self.h);
            matvec_many(
                &mut [
                    (&l.wq, &mut self.q),
                    (&l.wk, &mut self.k),
                    (&l.wv, &mut self.v),
                ],
                &self.h,
                &self.hq,
            );
            if let Some(g) = &l.gemma {
                rms_norm_each(&mut self.q, &g.q_norm, c.norm_eps, &mut self.t);
                rms_norm_each(&mut self.k, &g.k_norm, c.norm_eps, &mut self.t);
            }
            let key = c.rope_of_layer(li);
            if rope_key != Some(key) {
                rope_table(hd, pos, key, &mut self.angles);
                rope_key = Some(key);
            }
            rope(&mut self.q, &self.angles, gemma.is_some());
            rope(&mut self.k, &self.angles, gemma.is_some());
            self.keys[li].extend_from_slice(&self.k);
            self.values[li].extend_from_slice(&self.v);
            // A sliding-window layer sees the last `window` positions, its own included.
            let seen = self.keys[li].len() / kvd;
            let from = c.window_of_layer(li).map_or(0, |w| seen.saturating_sub(w));
            let (keys, values) = (&self.keys[li][from * kvd..], &self.values[li][from * kvd..]);
            let geometry = Heads {
                n_heads: nh,
                group: nh / nkv,
                head_dim: hd,
                kv_dim: kvd,
                scale,
            };
            match team {
                Some(team) if team.threads() > 1 => {
                    // Heads split over the team; each writes only its own slice of `att`.
                    let out = SyncPtr(self.att.as_mut_ptr());
                    let q = &self.q[..];
                    team.run(&|i| {
                        let mut scores = Vec::new();
                        for head in (i..nh).step_by(team.threads()) {
                            // SAFETY: heads are disjoint `hd`-wide slices of `att`, and each
                            // head is handled by exactly one thread.
                            let o = unsafe { out.slice(head * hd, hd) };
                            geometry.attend(head, q, keys, values, &mut scores, o);
                        }
                    });
                }
                _ => {
                    for head in 0..nh {
                        let o = &mut self.att[head * hd..(head + 1) * hd];
                        geometry.attend(head, &self.q, keys, values, &mut self.scores, o);
                    }
                }
            }
            self.hq.quantize(&self.att);
            matvec_on(team, &mut [(&l.wo, &mut self.h)], &self.att, &self.hq);
            if let Some(g) = &l.gemma {
                rms_norm_each(&mut self.h, &g.post_attn_norm, c.norm_eps, &mut self.t);
            }
            for (x, &o) in self.x.iter_mut().zip(&self.h) {
                *x += o;
            }
            rms_norm(&self.x, &l.ffn_norm, c.norm_eps, &mut self.h);
            self.hq.quantize(&self.h);
            matvec_on(
                team,
                &mut [(&l.w1, &mut self.gate), (&l.w3, &mut self.up)],
                &self.h,
                &self.hq,
            );
            if gemma.is_some() {
                for (g, &u) in self.gate.iter_mut().zip(&self.up) {
                    *g = gelu_tanh(*g) * u;
                }
            } else {
                for (g, &u) in self.gate.iter_mut().zip(&self.up) {
                    *g = *g / (1.0 + (-*g).exp()) * u;
                }
            }
            self.hq.quantize(&self.gate);
            matvec_on(team, &mut [(&l.w2, &mut self.h)], &self.gate, &self.hq);
            if let Some(g) = &l.gemma {
                rms_norm_each(&mut self.h, &g.post_ffn_norm, c.norm_eps, &mut self.t);
            }
            for (x, &o) in self.x.iter_mut().zip(&self.h) {
                *x += o;
            }
        }
        rms_norm(&self.x, &m.norm, c.norm_eps, &mut self.h);
        self.hq.quantize(&self.h);
        let head = m.lm_head.as_ref().unwrap_or(&m.embed);
        matvec_on(team, &mut [(head, &mut self.logits)], &self.h, &self.hq);
        self.pos += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_in_the_callers_share_waits_for_every_helper() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let done = AtomicUsize::new(0);
        SpinTeam::with(3, |team| {
            let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                team.run(&|i| {
                    if i == 0 {
                        panic!("the caller's share fails");
                    }
                    std::thread::sleep(std::time::Duration::from_millis(30));
                    done.fetch_add(1, Ordering::SeqCst);
                })
            }));
            assert!(caught.is_err(), "the panic reaches the caller");
            assert_eq!(
                done.load(Ordering::SeqCst),
                2,
                "after both helpers finished"
            );
            // The team still works afterwards.
            let after = AtomicUsize::new(0);
            team.run(&|_| {
                after.fetch_add(1, Ordering::SeqCst);
            });
            assert_eq!(after.load(Ordering::SeqCst), 3);
        });
    }

    #[test]
    fn concurrent_runs_take_turns() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        SpinTeam::with(2, |team| {
            std::thread::scope(|s| {
                for k in 1..=4usize {
                    s.spawn(move || {
                        for _ in 0..50 {
                            let sum = AtomicUsize::new(0);
                            team.run(&|i| {
                                sum.fetch_add(k * (i + 1), Ordering::SeqCst);
                            });
                            assert_eq!(
                                sum.load(Ordering::SeqCst),
                                3 * k,
                                "each call sees its own job"
                            );
                        }
                    });
                }
            });
        });
    }
    use crate::lm::Llama;
    use burn::tensor::{Device, Int, Tensor, TensorData};
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]

        /// Each quantized product equals the dot product of the dequantized row with the
        /// dequantized activations, up to f32 rounding.
        #[test]
        fn block_products_match_their_definition(
            seed in 0u64..1000,
            rows in 1usize..40,
            blocks in 1usize..5,
            q4 in any::<bool>(),
        ) {
            let cols = blocks * QK;
            let mut r = crate::rng::rng(seed, 0);
            let w: Vec<f32> = (0..rows * cols).map(|_| crate::components::regression::normal(&mut r)).collect();
            let x: Vec<f32> = (0..cols).map(|_| 3.0 * crate::components::regression::normal(&mut r)).collect();
            let kind = if q4 { QKind::Q4_1 } else { QKind::Q8_0 };
            let m = QMatrix::from_f32(w.clone(), rows, cols, kind);
            let mut xq = Q8Vector::default();
            xq.quantize(&x);
            let xd: Vec<f32> = (0..cols).map(|i| xq.d[i / QK] * xq.q[i] as f32).collect();
            let mut y = vec![0.0; rows];
            m.matvec(&x, &xq, &mut y);
            let mut portable = vec![0.0; rows];
            rows_generic(&m, 0, &x, &xq, &mut portable);
            for (i, &got) in y.iter().enumerate() {
                let row = m.row(i);
                let want: f64 = row.iter().zip(&xd).map(|(a, b)| *a as f64 * *b as f64).sum();
                let size: f64 = row.iter().zip(&xd).map(|(a, b)| (*a as f64 * *b as f64).abs()).sum();
                prop_assert!((got as f64 - want).abs() <= 1e-5 * size.max(1.0), "row {i}: {got} vs {want}");
                // The SIMD kernels (where this CPU has them) agree with the portable ones.
                prop_assert!((got - portable[i]).abs() as f64 <= 1e-5 * size.max(1.0));
                // And the quantized row is close to the original one.
                let step = if q4 { 0.6 } else { 0.03 };
                for (a, b) in row.iter().zip(&w[i * cols..(i + 1) * cols]) {
                    prop_assert!((a - b).abs() <= step, "{a} vs {b}");
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        /// The Q5_0, Q4_K and Q6_K products (the file's blocks, as Gemma 3's GGUF holds them)
        /// equal the dot product of the dequantized row with the dequantized activations.
        /// The blocks are random bytes with small f16 scales.
        #[test]
        fn k_quant_products_match_their_dequantization(
            seed in 0u64..1000,
            rows in 1usize..12,
            blocks in 1usize..3,
            kind in prop::sample::select(vec![QKind::Q5_0, QKind::Q4_K, QKind::Q6_K]),
        ) {
            let cols = blocks * QK_K;
            let mut r = crate::rng::rng(seed, 0);
            let mut bytes: Vec<u8> = (0..rows * kind.row_bytes(cols))
                .map(|_| rand::Rng::random::<u8>(&mut r))
                .collect();
            // Scales: f16 values in ±[2⁻⁸, 2⁻²] (random bytes could be NaN or huge).
            let scale_at: &[usize] = match kind {
                QKind::Q5_0 => &[0],
                QKind::Q4_K => &[0, 2],
                _ => &[208],
            };
            for blk in bytes.chunks_exact_mut(kind.block_bytes()) {
                for &at in scale_at {
                    let v = (1.0 + (blk[at] as f32) / 64.0) / 256.0 * if blk[at + 1] & 1 == 0 { 1.0 } else { -1.0 };
                    blk[at..at + 2].copy_from_slice(&half::f16::from_f32(v).to_le_bytes());
                }
            }
            let m = QMatrix { rows, cols, kind, store: Store::Blocks { buf: Arc::new(bytes), start: 0 } };
            let x: Vec<f32> = (0..cols).map(|_| 3.0 * crate::components::regression::normal(&mut r)).collect();
            let mut xq = Q8Vector::default();
            xq.quantize(&x);
            let xd: Vec<f32> = (0..cols).map(|i| xq.d[i / QK] * xq.q[i] as f32).collect();
            let mut y = vec![0.0; rows];
            m.matvec(&x, &xq, &mut y);
            let mut portable = vec![0.0; rows];
            rows_generic(&m, 0, &x, &xq, &mut portable);
            for (i, &got) in y.iter().enumerate() {
                let row = m.row(i);
                let want: f64 = row.iter().zip(&xd).map(|(a, b)| *a as f64 * *b as f64).sum();
                let size: f64 = row.iter().zip(&xd).map(|(a, b)| (*a as f64 * *b as f64).abs()).sum();
                prop_assert!((got as f64 - want).abs() <= 1e-5 * size.max(1.0), "{kind:?} row {i}: {got} vs {want}");
                prop_assert!((got - portable[i]).abs() as f64 <= 1e-5 * size.max(1.0));
            }
        }
    }

    /// Q4_K's packed 6-bit scales and Q6_K's bit planes, on blocks built by hand.
    #[test]
    fn k_quant_blocks_dequantize_by_definition() {
        // Q4_K: d = 1, dmin = 0.5; sub-block j has scale j + 1 and minimum 2j (6 bits:
        // the low 6 bits of bytes 0..8 for j < 4, nibbles of bytes 8..12 plus the top two
        // bits of bytes 0..8 for j ≥ 4); every nibble of byte l is (l % 16).
        let mut blk = vec![0u8; 144];
        blk[0..2].copy_from_slice(&half::f16::from_f32(1.0).to_le_bytes());
        blk[2..4].copy_from_slice(&half::f16::from_f32(0.5).to_le_bytes());
        let (sc, mn): (Vec<u8>, Vec<u8>) = (0..8).map(|j| (j as u8 + 1, 2 * j as u8)).unzip();
        let scales = &mut blk[4..16];
        for j in 0..4 {
            scales[j] = sc[j] | ((sc[j + 4] >> 4) << 6);
            scales[j + 4] = mn[j] | ((mn[j + 4] >> 4) << 6);
            scales[j + 8] = (sc[j + 4] & 0xf) | ((mn[j + 4] & 0xf) << 4);
        }
        for l in 0..128 {
            blk[16 + l] = ((l % 16) as u8) | (((l % 16) as u8) << 4);
        }
        let v = crate::lm::gguf::dequantize(12, &blk, 256).unwrap();
        for (i, &x) in v.iter().enumerate() {
            let j = i / 32;
            let q = (i % 32) % 16;
            let want = sc[j] as f32 * q as f32 - 0.5 * mn[j] as f32;
            assert_eq!(x, want, "Q4_K value {i}");
        }
        // Q6_K: d = 0.25, group g has scale g − 8; value i's 6-bit q is i % 64, split into the
        // low nibble (ql) and the top two bits (qh) of its plane.
        let mut blk = vec![0u8; 210];
        for i in 0..256 {
            let q = (i % 64) as u8;
            let (half, r) = (i / 128, i % 128);
            let (plane, l) = (r / 32, r % 32);
            let ql = 64 * half + l + if plane % 2 == 1 { 32 } else { 0 };
            blk[ql] |= (q & 0xf) << if plane >= 2 { 4 } else { 0 };
            blk[128 + 32 * half + l] |= (q >> 4) << (2 * plane);
        }
        for g in 0..16 {
            blk[192 + g] = (g as i8 - 8) as u8;
        }
        blk[208..210].copy_from_slice(&half::f16::from_f32(0.25).to_le_bytes());
        let v = crate::lm::gguf::dequantize(14, &blk, 256).unwrap();
        for (i, &x) in v.iter().enumerate() {
            let want = 0.25 * (i / 16) as f32 - 2.0;
            let want = want * ((i % 64) as f32 - 32.0);
            assert_eq!(x, want, "Q6_K value {i}");
        }
    }

    fn tiny() -> Llama {
        tiny_of(Default::default())
    }

    fn tiny_of(arch: crate::lm::llama::Arch) -> Llama {
        let config = LlamaConfig {
            vocab_size: 50,
            dim: 64,
            n_layers: 2,
            n_heads: 4,
            n_kv_heads: 2,
            hidden_dim: 96,
            max_seq_len: 32,
            rope_theta: 10_000.0,
            norm_eps: 1e-5,
            tie_embeddings: false,
            value_head: false,
            arch,
        };
        Llama::init(config, &mut crate::rng::rng(3, 0), &Device::flex()).unwrap()
    }

    /// A tiny Gemma 3: head width 32 (≠ 64 / 4), a window of 3 positions on layer 0 and a
    /// global layer 1 with its own rotary base and scale.
    pub(crate) fn tiny_gemma() -> crate::lm::llama::Arch {
        crate::lm::llama::Arch::Gemma3(crate::lm::llama::Gemma3 {
            head_dim: 32,
            sliding_window: 3,
            global_every: 2,
            rope_local_theta: 100.0,
            rope_scale: 2.0,
            query_scale: 0.3,
        })
    }

    /// Activations quantize by the definition (`d = max |x| / 127`, `q = x / d` rounded to
    /// nearest with ties to even, `s = d Σ q`), and the AVX2 kernel gives the portable one's
    /// bits: random blocks, a zero block, and blocks full of exact ties.
    #[test]
    fn activations_quantize_by_definition_in_both_kernels() {
        let mut r = crate::rng::rng(5, 0);
        let mut blocks: Vec<Vec<f32>> = (0..200)
            .map(|i| {
                let scale = [1e-3f32, 1.0, 300.0][i % 3];
                (0..QK)
                    .map(|_| (rand::Rng::random::<f32>(&mut r) * 2.0 - 1.0) * scale)
                    .collect()
            })
            .collect();
        blocks.push(vec![0.0; QK]);
        // max |x| = 127, so d = 1 and every x / d is a tie: k + 0.5 for k in −16..16.
        let mut ties: Vec<f32> = (0..QK).map(|k| k as f32 - 16.0 + 0.5).collect();
        ties[0] = 127.0;
        blocks.push(ties.clone());
        blocks.push(ties.iter().map(|v| -v).collect());
        for x in &blocks {
            let mut v = Q8Vector::default();
            v.quantize(x);
            let amax = x.iter().fold(0f32, |m, a| m.max(a.abs()));
            let d = amax / 127.0;
            assert_eq!(v.d[0], d);
            let mut sum = 0;
            for (q, &a) in v.q.iter().zip(x) {
                let want = if d > 0.0 {
                    (a * (1.0 / d)).round_ties_even()
                } else {
                    0.0
                };
                assert_eq!(*q as f32, want, "{a} / {d}");
                sum += *q as i32;
            }
            assert_eq!(v.s[0], d * sum as f32);
            let mut portable = [0i8; QK];
            let got = quantize_block(x, &mut portable);
            assert_eq!(got, (d, sum));
            assert_eq!(&portable[..], &v.q[..]);
            #[cfg(target_arch = "x86_64")]
            if has_avx2() {
                let mut fast = [0i8; QK];
                // SAFETY: the CPU has AVX2, FMA and F16C (checked).
                let got = unsafe { avx2::quantize_block(x, &mut fast) };
                assert_eq!(got, (d, sum));
                assert_eq!(fast, portable);
            }
        }
        // Ties go to even: 0.5 → 0, 1.5 → 2, −2.5 → −2.
        let mut v = Q8Vector::default();
        v.quantize(&ties);
        assert_eq!(&v.q[14..19], &[-2, -0, 0, 2, 2]);
    }

    /// The f32 kind computes exactly what the burn model computes, position by position; Q8_0
    /// stays close to it.
    #[test]
    fn decoding_matches_the_burn_model() {
        for model in [tiny(), gemma_with_norms()] {
            decoding_matches(model);
        }
    }

    /// The tiny Gemma 3 with its norms away from 1, so each one matters.
    fn gemma_with_norms() -> Llama {
        let model = tiny_of(tiny_gemma());
        let mut w = model.to_weights();
        let mut r = crate::rng::rng(9, 0);
        let mut jitter = |v: &mut Vec<f32>| {
            v.iter_mut()
                .for_each(|x| *x += 0.5 * crate::components::regression::normal(&mut r))
        };
        for l in &mut w.layers {
            let g = l.gemma.as_mut().expect("gemma norms");
            jitter(&mut g.q_norm);
            jitter(&mut g.k_norm);
            jitter(&mut g.post_attn_norm);
            jitter(&mut g.post_ffn_norm);
        }
        Llama::from_weights(model.config.clone(), w, &Device::flex()).unwrap()
    }

    fn decoding_matches(model: Llama) {
        let ids: Vec<u32> = vec![1, 7, 3, 44, 9, 12, 30, 2];
        let t = ids.len();
        let tokens = Tensor::<2, Int>::from_data(
            TensorData::new(ids.iter().map(|&i| i as i64).collect(), [1, t]),
            &Device::flex(),
        );
        let want: Vec<f32> = model
            .forward(tokens, &[0], None)
            .into_data()
            .try_into_vec::<f32>()
            .unwrap();
        for (kind, tol) in [(QKind::F32, 1e-4), (QKind::Q8_0, 0.05)] {
            let q = QLlama::from_weights(model.config.clone(), model.to_weights(), kind);
            let mut s = q.session();
            for (p, &id) in ids.iter().enumerate() {
                let got = s.feed(id).to_vec();
                let w = &want[p * 50..(p + 1) * 50];
                let scale = w.iter().fold(0f32, |m, v| m.max(v.abs()));
                let diff = got
                    .iter()
                    .zip(w)
                    .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
                assert!(
                    diff <= tol * scale.max(1.0),
                    "{kind:?} position {p}: {diff}"
                );
            }
        }
    }

    /// Scoring a sequence in one batch (matrix–matrix products) gives what feeding it token by
    /// token gives, for Llama and Gemma 3 (whose window of 3 the 9 tokens exceed), at two
    /// temperatures; bad input is an error.
    #[test]
    fn batched_scoring_equals_decoding_position_by_position() {
        let ids: Vec<u32> = vec![1, 7, 3, 44, 9, 12, 30, 2, 17];
        for model in [tiny(), gemma_with_norms()] {
            let q = QLlama::from_weights(model.config.clone(), model.to_weights(), QKind::Q8_0);
            for temperature in [1.0f32, 0.7] {
                let got = q.score(&ids, 2, temperature).unwrap();
                let mut s = q.session();
                let mut want = Vec::new();
                for (p, &id) in ids[..ids.len() - 1].iter().enumerate() {
                    let logits = s.feed(id);
                    if p + 1 >= 2 {
                        want.push(logprob_at(logits, temperature, ids[p + 1] as usize));
                    }
                }
                assert_eq!(got.len(), want.len());
                for (a, b) in got.iter().zip(&want) {
                    assert!((a - b).abs() <= 1e-5, "{a} vs {b}");
                }
            }
            assert!(q.score(&ids, 0, 1.0).is_err());
            assert!(
                q.score(&[1, 99], 1, 1.0)
                    .unwrap_err()
                    .contains("vocabulary")
            );
            assert!(q.score(&[1; 40], 1, 1.0).unwrap_err().contains("context"));
        }
    }

    /// Scoring several sequences together (their common prefix fed once, the rest batched)
    /// gives what scoring each alone gives, whatever the prefix they share, including none.
    #[test]
    fn scoring_many_equals_scoring_each() {
        let q = QLlama::from_weights(tiny().config.clone(), tiny().to_weights(), QKind::Q8_0);
        let seqs: Vec<(Vec<u32>, usize)> = vec![
            (vec![1, 7, 3, 44, 9, 12, 30], 5),
            (vec![1, 7, 3, 44, 2, 17], 3),
            (vec![1, 7, 3, 44, 9, 12, 30, 5], 7),
            (vec![1, 7, 8], 1),
        ];
        for take in [1, 2, 3, 4] {
            let some: Vec<(&[u32], usize)> = seqs[..take]
                .iter()
                .map(|(t, f)| (t.as_slice(), *f))
                .collect();
            let got = q.score_many(&some, 0.8).unwrap();
            for ((t, from), g) in some.iter().zip(&got) {
                let want = q.score(t, *from, 0.8).unwrap();
                assert_eq!(g.len(), want.len());
                for (a, b) in g.iter().zip(&want) {
                    assert!((a - b).abs() <= 1e-5, "{a} vs {b}");
                }
            }
        }
        assert!(q.score_many(&[(&[1, 2][..], 0)], 1.0).is_err());
        assert!(q.score_many(&[], 1.0).unwrap().is_empty());
    }

    #[test]
    fn generate_stops_and_respects_limits() {
        let model = tiny();
        let q = QLlama::from_weights(model.config.clone(), model.to_weights(), QKind::Q8_0);
        let params = SamplingParams {
            temperature: 0.0,
            max_new_tokens: 10,
            ..Default::default()
        };
        let mut r = crate::rng::rng(0, 0);
        let a = q.generate(&[1, 2], &params, &[], &mut r);
        assert_eq!(
            (a.tokens.len(), a.logprobs.len(), a.finished),
            (10, 10, false)
        );
        let first = a.tokens[0];
        let b = q.generate(&[1, 2], &params, &[first], &mut r);
        assert_eq!((b.tokens.clone(), b.finished), (vec![first], true));
        assert!(q.generate(&[], &params, &[], &mut r).tokens.is_empty());
        // A spinning team computes exactly what rayon's threads compute.
        SpinTeam::with(3, |team| {
            let (mut a, mut b) = (q.session(), q.session_on(Some(team)));
            for id in [1, 2, 30, 4] {
                assert_eq!(a.feed(id), b.feed(id));
            }
        });
        // Q8_0 weights take about a quarter of f32's.
        let f = QLlama::from_weights(model.config.clone(), model.to_weights(), QKind::F32);
        assert!(q.weight_bytes() * 3 < f.weight_bytes());
    }
}
