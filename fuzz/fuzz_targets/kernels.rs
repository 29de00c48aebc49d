//! Arbitrary bytes as F32/F16/BF16 rows under any scheme, group size, scale
//! dtype, method (round to nearest or the search) and double quantization:
//! every kernel this CPU runs must match the scalar specification bit for bit
//! (codes, scales, mins, super-group factors) and in its statistics.
#![no_main]

use half::{bf16, f16};
use libfuzzer_sys::fuzz_target;
use shrinkray_kernels::{
    quantize_rows_by, DoubleQuant, ErrorStats, Isa, Method, QuantFormat, RowsOut, ScaleDtype,
    Scheme, Src,
};

struct Out {
    parts: [Vec<u8>; 5],
    stats: ErrorStats,
}

fn run(isa: Isa, method: Method, f: &QuantFormat, k: usize, src: Src<'_>) -> Out {
    let rows = if k == 0 { 0 } else { src.len() / k };
    let mut parts = f.part_bytes_per_row(k).map(|n| vec![0xAA; rows * n]);
    let [codes, scales, mins, super_scales, super_mins] = &mut parts;
    let stats = quantize_rows_by(
        isa,
        method,
        f,
        k,
        src,
        RowsOut { codes, scales, mins, super_scales, super_mins },
    );
    Out { parts, stats }
}

/// Equal up to summation order: SIMD paths sum squares in f32 lanes before
/// adding them into f64 (the tolerance of `kernels/tests/simd_vs_scalar.rs`).
fn close(a: f64, b: f64, count: u64) -> bool {
    if a.is_finite() != b.is_finite() {
        return false;
    }
    let floor = count as f64 * f32::MIN_POSITIVE as f64;
    a == b || (a - b).abs() <= 1e-5 * a.abs().max(b.abs()) + floor || (a.is_nan() && b.is_nan())
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 6 {
        return;
    }
    let (head, body) = data.split_at(6);
    let scheme = Scheme::ALL[head[0] as usize % Scheme::ALL.len()];
    let scale_dtype = [ScaleDtype::F16, ScaleDtype::BF16, ScaleDtype::F32][head[1] as usize % 3];
    // Group sizes the batched SIMD path takes (multiples of 16 up to 256) and odd ones.
    let group = match head[2] % 4 {
        0 => 16 * (1 + (head[2] as usize >> 2) % 16),
        _ => 1 + head[2] as usize % 97,
    };
    // head[4]: the method; head[5]: double quantization (bits 2..=8, 1..=16 groups) or none.
    let method = if head[4] % 2 == 0 { Method::Rtn } else { Method::Search };
    let dq = (head[5] % 4 != 0).then(|| DoubleQuant {
        bits: 2 + (head[5] as u32 >> 2) % 7,
        groups: 1 + (head[5] as usize >> 5) % 16,
    });
    let f = QuantFormat {
        dq,
        scheme,
        group,
        scale_dtype,
    };
    let dtype = head[3] % 3;
    let esize = if dtype == 0 { 4 } else { 2 };
    let n = body.len() / esize;
    let k = 1 + (head[3] as usize >> 2) % n.max(1);
    let n = n / k * k;
    let f32s: Vec<f32> = body
        .chunks_exact(4)
        .take(n)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let halves: Vec<u16> = body
        .chunks_exact(2)
        .take(n)
        .map(|b| u16::from_le_bytes([b[0], b[1]]))
        .collect();
    let h: Vec<f16> = halves.iter().map(|&b| f16::from_bits(b)).collect();
    let bh: Vec<bf16> = halves.iter().map(|&b| bf16::from_bits(b)).collect();
    let src = match dtype {
        0 => Src::F32(&f32s),
        1 => Src::F16(&h),
        _ => Src::BF16(&bh),
    };
    let want = run(Isa::Scalar, method, &f, k, src);
    for isa in Isa::ALL.into_iter().filter(|i| *i != Isa::Scalar && i.is_available()) {
        let got = run(isa, method, &f, k, src);
        let what = format!(
            "{isa} {scheme} g{group} {scale_dtype} {dq:?} {} dtype {dtype} k {k} n {n}",
            method.name()
        );
        for (p, name) in ["codes", "scales", "mins", "super scales", "super mins"].iter().enumerate() {
            assert_eq!(want.parts[p], got.parts[p], "{what}: {name}");
        }
        let (w, g) = (&want.stats, &got.stats);
        assert_eq!(
            (w.count, w.nonfinite, w.first_nonfinite, w.overflowed_groups, w.zeroed_groups),
            (g.count, g.nonfinite, g.first_nonfinite, g.overflowed_groups, g.zeroed_groups),
            "{what}: counts"
        );
        assert_eq!(w.max_abs_err.to_bits(), g.max_abs_err.to_bits(), "{what}: max error");
        assert!(close(w.sum_sq_err, g.sum_sq_err, w.count), "{what}: {} vs {}", w.sum_sq_err, g.sum_sq_err);
        assert!(close(w.sum_sq, g.sum_sq, w.count), "{what}: {} vs {}", w.sum_sq, g.sum_sq);
    }
});
