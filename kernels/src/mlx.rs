//! MLX's affine quantization (`mx.quantize`, mode "affine"), the layout that
//! `mlx_lm.convert -q` writes: per group of `g` elements a scale and a bias in
//! the weight's own dtype, codes packed into `u32` words least-significant
//! bits first. This scalar code is the specification for this format.

use crate::{ErrorStats, ScaleDtype};

/// Bits and group size of an MLX-quantized tensor, and the dtype of its scales and biases.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MlxFormat {
    /// 4 or 8.
    pub bits: u32,
    /// 32, 64 or 128 elements per group; a row is a whole number of groups.
    pub group: usize,
    /// The dtype of scales and biases: the source tensor's.
    pub dtype: ScaleDtype,
}

impl MlxFormat {
    /// Bytes of packed codes per row of `k` elements.
    pub fn code_bytes_per_row(&self, k: usize) -> usize {
        k * self.bits as usize / 8
    }

    /// Bytes of scales (or of biases) per row of `k` elements.
    pub fn scale_bytes_per_row(&self, k: usize) -> usize {
        k / self.group * self.dtype.size()
    }
}

/// Rounds an f32 to `dt` (nearest even) and back.
#[inline]
fn to_dtype(dt: ScaleDtype, v: f32) -> f32 {
    match dt {
        ScaleDtype::F32 => v,
        ScaleDtype::F16 => half::f16::from_f32(v).to_f32(),
        ScaleDtype::BF16 => half::bf16::from_f32(v).to_f32(),
    }
}

/// Writes `v` (exactly representable in `dt`) as little-endian bytes of `dt`.
#[inline]
fn put(dt: ScaleDtype, v: f32, out: &mut [u8]) {
    match dt {
        ScaleDtype::F32 => out.copy_from_slice(&v.to_le_bytes()),
        ScaleDtype::F16 => out.copy_from_slice(&half::f16::from_f32(v).to_le_bytes()),
        ScaleDtype::BF16 => out.copy_from_slice(&half::bf16::from_f32(v).to_le_bytes()),
    }
}

/// Reads element `i` of little-endian `dt` values.
#[inline]
fn get(dt: ScaleDtype, bytes: &[u8], i: usize) -> f32 {
    match dt {
        ScaleDtype::F32 => f32::from_le_bytes(bytes[4 * i..4 * i + 4].try_into().expect("4")),
        ScaleDtype::F16 => half::f16::from_le_bytes([bytes[2 * i], bytes[2 * i + 1]]).to_f32(),
        ScaleDtype::BF16 => half::bf16::from_le_bytes([bytes[2 * i], bytes[2 * i + 1]]).to_f32(),
    }
}

/// The scale and bias MLX chooses for a group spanning `[lo, hi]`, in f32
/// (before rounding to the weight's dtype), as `mx.quantize` does on the CPU:
/// the side of larger magnitude is the "edge" (the max on a tie), the scale
/// is stretched so that the edge is an exact multiple of it (then the bias is
/// the edge), or, when the edge rounds to code 0, the bias is 0.
#[inline]
pub fn group_params(bits: u32, lo: f32, hi: f32) -> (f32, f32) {
    let n_bins = ((1u32 << bits) - 1) as f32;
    let min_side = lo.abs() > hi.abs();
    let mut s = ((hi - lo) / n_bins).max(1e-7);
    if !min_side {
        s = -s;
    }
    let edge = if min_side { lo } else { hi };
    let q0 = (edge / s).round_ties_even();
    if q0 != 0.0 {
        (edge / q0, edge)
    } else {
        (s, 0.0)
    }
}

/// Quantizes whole rows of `k` elements (`k` a multiple of `fmt.group`) from
/// `x` into MLX's layout: `codes` (`k · bits / 8` bytes per row, the
/// little-endian bit stream of the u32 words), `scales` and `biases`
/// (`k / group` values of `fmt.dtype` per row), bit-identical to
/// `mx.quantize(w, group_size, bits)` on MLX 0.32's CPU device.
///
/// NaN and ±Inf are counted and read as 0. A group whose scale overflows
/// `fmt.dtype` is counted in `overflowed_groups` (its stored scale is ±Inf, as
/// MLX would store it; the caller refuses the tensor). The error statistics
/// use the decoding MLX does, in `fmt.dtype`: `T(T(scale · q) + bias)`.
///
/// # Panics
/// If the slices do not have the sizes above, or `bits` is not 4 or 8.
pub fn quantize_rows(
    fmt: &MlxFormat,
    k: usize,
    x: &[f32],
    codes: &mut [u8],
    scales: &mut [u8],
    biases: &mut [u8],
) -> ErrorStats {
    assert!(fmt.bits == 4 || fmt.bits == 8, "MLX bits must be 4 or 8");
    assert!(
        k.is_multiple_of(fmt.group) && x.len().is_multiple_of(k.max(1)),
        "whole rows of whole groups"
    );
    let rows = x.len().checked_div(k).unwrap_or(0);
    let (g, dt, size) = (fmt.group, fmt.dtype, fmt.dtype.size());
    assert_eq!(codes.len(), rows * fmt.code_bytes_per_row(k), "codes size");
    assert_eq!(
        scales.len(),
        rows * fmt.scale_bytes_per_row(k),
        "scales size"
    );
    assert_eq!(biases.len(), scales.len(), "biases size");
    let n_bins = ((1u32 << fmt.bits) - 1) as f32;
    let mut st = ErrorStats {
        count: x.len() as u64,
        ..ErrorStats::default()
    };
    let mut q = vec![0u8; g];
    for (gi, group) in x.chunks_exact(g).enumerate() {
        let mut lo = f32::INFINITY;
        let mut hi = f32::NEG_INFINITY;
        for (i, &v) in group.iter().enumerate() {
            let v = if v.is_finite() {
                v
            } else {
                st.nonfinite += 1;
                st.first_nonfinite.get_or_insert((gi * g + i) as u64);
                0.0
            };
            lo = lo.min(v);
            hi = hi.max(v);
        }
        let (s, bias) = group_params(fmt.bits, lo, hi);
        let (s_t, bias_t) = (to_dtype(dt, s), to_dtype(dt, bias));
        let overflowed = !s_t.is_finite();
        st.overflowed_groups += overflowed as u64;
        st.zeroed_groups += (s_t == 0.0 && hi > lo) as u64;
        put(dt, s_t, &mut scales[gi * size..(gi + 1) * size]);
        put(dt, bias_t, &mut biases[gi * size..(gi + 1) * size]);
        for (c, &v) in q.iter_mut().zip(group) {
            let v = if v.is_finite() { v } else { 0.0 };
            let r = ((v - bias) / s).round_ties_even().clamp(0.0, n_bins);
            *c = if r.is_nan() { 0 } else { r as u8 };
            let d = to_dtype(dt, to_dtype(dt, s_t * *c as f32) + bias_t);
            st.sum_sq += (v as f64) * (v as f64);
            if !overflowed {
                let e = v - d;
                st.sum_sq_err += (e as f64) * (e as f64);
                st.max_abs_err = st.max_abs_err.max(e.abs());
            }
        }
        let at = gi * g * fmt.bits as usize / 8;
        if fmt.bits == 8 {
            codes[at..at + g].copy_from_slice(&q);
        } else {
            for (o, pair) in codes[at..at + g / 2].iter_mut().zip(q.chunks_exact(2)) {
                *o = pair[0] | (pair[1] << 4);
            }
        }
    }
    st
}

/// Decodes whole rows of `k` elements from MLX's layout into `out`, as
/// `mx.dequantize` does: `T(T(scale · q) + bias)` in the scales' dtype `T`.
///
/// # Panics
/// If the slices do not have the sizes [`quantize_rows`] gives.
pub fn dequantize_rows(
    fmt: &MlxFormat,
    k: usize,
    codes: &[u8],
    scales: &[u8],
    biases: &[u8],
    out: &mut [f32],
) {
    let rows = out.len().checked_div(k).unwrap_or(0);
    assert_eq!(codes.len(), rows * fmt.code_bytes_per_row(k), "codes size");
    assert_eq!(
        scales.len(),
        rows * fmt.scale_bytes_per_row(k),
        "scales size"
    );
    assert_eq!(biases.len(), scales.len(), "biases size");
    let (g, dt) = (fmt.group, fmt.dtype);
    for (i, o) in out.iter_mut().enumerate() {
        let gi = i / g;
        let c = if fmt.bits == 8 {
            codes[i]
        } else {
            (codes[i / 2] >> (4 * (i % 2))) & 0xF
        };
        let (s, b) = (get(dt, scales, gi), get(dt, biases, gi));
        *o = to_dtype(dt, to_dtype(dt, s * c as f32) + b);
    }
}
