//! Every SIMD path against the scalar specification: codes, scales and mins
//! bit-identical, error statistics equal up to summation order, over every
//! scheme, scale dtype, source dtype, group size, length 0..=3·group+7,
//! misaligned starts and adversarial values. An instruction set this CPU
//! lacks is reported as SKIPPED on stderr.

use half::{bf16, f16};
use shrinkray_kernels::{
    quantize_rows, ErrorStats, Isa, QuantFormat, RowsOut, ScaleDtype, Scheme, Src,
};

/// A deterministic stream of bits (SplitMix64).
struct Bits(u64);
impl Bits {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
}

const PATTERNS: usize = 11;

/// Values of adversarial pattern `kind` for a group size `g`.
fn values(kind: usize, n: usize, g: usize, bits: &mut Bits) -> Vec<f32> {
    (0..n)
        .map(|i| {
            let u = bits.unit();
            match kind {
                0 => u * (1.0 + 8.0 * u * u * u * u), // heavy-ish tails
                1 => [0.0, -0.0][i % 2],
                2 => 0.375,
                3 => u * 1e-39, // f32 subnormals
                4 => {
                    if i % 3 == 0 {
                        u * 1e30
                    } else {
                        u * 1e-30
                    }
                }
                5 => {
                    if i % g == (i / g * 7) % g {
                        1000.0 * u.signum()
                    } else {
                        u * 0.01
                    }
                }
                6 => [u, f32::NAN, f32::INFINITY, f32::NEG_INFINITY]
                    [(bits.next() % 4) as usize * ((i % 5 == 0) as usize)],
                7 => {
                    // Exact ties once scaled: the group's extreme is 127·2^e, the rest n + 1/2.
                    if i % g == 0 {
                        127.0
                    } else {
                        ((bits.next() % 254) as f32 - 127.0) + 0.5
                    }
                }
                8 => u * 65504.0 * 4.0, // beyond F16 scales for int4/int8 (saturated, flagged)
                9 => u * 1e20,          // squares beyond f32: error sums must not overflow
                _ => u * 1e30,
            }
        })
        .collect()
}

struct Out {
    codes: Vec<u8>,
    scales: Vec<u8>,
    mins: Vec<u8>,
    stats: ErrorStats,
}

fn run(isa: Isa, f: &QuantFormat, k: usize, src: Src<'_>) -> Out {
    let rows = src.len().checked_div(k).unwrap_or(0);
    let mut o = Out {
        codes: vec![0x5A; rows * f.code_bytes_per_row(k)],
        scales: vec![0x5A; rows * f.scale_bytes_per_row(k)],
        mins: vec![0x5A; rows * f.min_bytes_per_row(k)],
        stats: ErrorStats::default(),
    };
    o.stats = quantize_rows(
        isa,
        f,
        k,
        src,
        RowsOut {
            super_scales: &mut [],
            super_mins: &mut [],
            codes: &mut o.codes,
            scales: &mut o.scales,
            mins: &mut o.mins,
        },
    );
    o
}

/// Equal up to summation order (relative 1e-5), plus what squaring in f32 may lose:
/// each square below f32's smallest normal (|e| < 1e-19) can flush to 0.
fn close(a: f64, b: f64, count: u64) -> bool {
    if a.is_finite() != b.is_finite() {
        return false; // an overflowed sum is never "close" to a finite one
    }
    let floor = count as f64 * f32::MIN_POSITIVE as f64;
    a == b || (a - b).abs() <= 1e-5 * a.abs().max(b.abs()) + floor || (a.is_nan() && b.is_nan())
}

fn compare(isa: Isa, what: &str, want: &Out, got: &Out) {
    assert_eq!(want.codes, got.codes, "{isa} {what}: codes");
    assert_eq!(want.scales, got.scales, "{isa} {what}: scales");
    assert_eq!(want.mins, got.mins, "{isa} {what}: mins");
    let (w, g) = (&want.stats, &got.stats);
    assert_eq!(
        (
            w.count,
            w.nonfinite,
            w.first_nonfinite,
            w.overflowed_groups,
            w.zeroed_groups
        ),
        (
            g.count,
            g.nonfinite,
            g.first_nonfinite,
            g.overflowed_groups,
            g.zeroed_groups
        ),
        "{isa} {what}: counts"
    );
    assert_eq!(
        w.max_abs_err.to_bits(),
        g.max_abs_err.to_bits(),
        "{isa} {what}: max abs error"
    );
    assert!(
        close(w.sum_sq_err, g.sum_sq_err, w.count),
        "{isa} {what}: sum sq err {} vs {}",
        w.sum_sq_err,
        g.sum_sq_err
    );
    assert!(
        close(w.sum_sq, g.sum_sq, w.count),
        "{isa} {what}: sum sq {} vs {}",
        w.sum_sq,
        g.sum_sq
    );
}

fn simd_isas() -> Vec<Isa> {
    let mut v = Vec::new();
    for isa in Isa::ALL.into_iter().filter(|&i| i != Isa::Scalar) {
        if isa.is_available() {
            v.push(isa);
        } else {
            eprintln!("SKIPPED: {isa} is not supported by this CPU; its kernels were not tested");
        }
    }
    v
}

/// One group size: every scheme, source dtype and length 0..=3g+7 (two rows each).
fn check_group(g: usize, max_len: usize) {
    let isas = simd_isas();
    let mut bits = Bits(g as u64);
    let dts = [ScaleDtype::F16, ScaleDtype::BF16, ScaleDtype::F32];
    for scheme in Scheme::ALL {
        for len in 0..=max_len {
            let kind = (len + scheme as usize) % PATTERNS;
            let f = QuantFormat {
                dq: None,
                scheme,
                group: if g == 0 { len.max(1) } else { g },
                scale_dtype: dts[(len / PATTERNS) % 3],
            };
            // Two rows of `len`, placed at a misaligned offset inside a larger buffer.
            let off = len % 4;
            let v = values(kind, 2 * len + off, f.group, &mut bits);
            let x = &v[off..];
            let h: Vec<f16> = v.iter().map(|&a| f16::from_f32(a)).collect();
            let b: Vec<bf16> = v.iter().map(|&a| bf16::from_f32(a)).collect();
            for (src, name) in [
                (Src::F32(x), "F32"),
                (Src::F16(&h[off..]), "F16"),
                (Src::BF16(&b[off..]), "BF16"),
            ] {
                let want = run(Isa::Scalar, &f, len, src);
                for &isa in &isas {
                    let got = run(isa, &f, len, src);
                    let what = format!(
                        "{scheme} g{} {:?} {name} len {len} pattern {kind}",
                        f.group, f.scale_dtype
                    );
                    compare(isa, &what, &want, &got);
                }
            }
        }
    }
}

#[test]
fn small_groups() {
    for g in [1, 2, 7, 8, 16, 24] {
        check_group(g, 3 * g + 7);
    }
}

#[test]
fn group_32() {
    check_group(32, 3 * 32 + 7);
}

#[test]
fn group_64() {
    check_group(64, 3 * 64 + 7);
}

#[test]
fn group_128() {
    check_group(128, 3 * 128 + 7);
}

#[test]
fn group_256() {
    check_group(256, 3 * 256 + 7);
}

#[test]
fn per_row_groups() {
    // g = k: one group per row of every length, including ones far off the 8-lane grid.
    check_group(0, 300);
}

#[test]
fn many_rows_and_long_rows() {
    let isas = simd_isas();
    let mut bits = Bits(99);
    for (rows, k, g) in [
        (33, 4096, 64),
        (3, 11008, 11008),
        (17, 344, 64),
        (5, 1000, 128),
    ] {
        let v = values(0, rows * k, g, &mut bits);
        for scheme in Scheme::ALL {
            let f = QuantFormat {
                dq: None,
                scheme,
                group: g,
                scale_dtype: ScaleDtype::F16,
            };
            let want = run(Isa::Scalar, &f, k, Src::F32(&v));
            for &isa in &isas {
                compare(
                    isa,
                    &format!("{scheme} {rows}x{k} g{g}"),
                    &want,
                    &run(isa, &f, k, Src::F32(&v)),
                );
            }
        }
    }
}

/// Rows of 8 or more full groups (the batched paths), with every pattern, source
/// dtype and scheme, F16 and F32 scales, and rows that end in a short group.
#[test]
fn batches_of_full_groups() {
    let isas = simd_isas();
    let mut bits = Bits(7);
    for g in [16, 32, 64, 128, 256] {
        for k in [8 * g, 8 * g + 7, 9 * g + 8, 17 * g + 3] {
            for kind in 0..PATTERNS {
                for scheme in Scheme::ALL {
                    for dt in [ScaleDtype::F16, ScaleDtype::F32] {
                        let f = QuantFormat {
                            dq: None,
                            scheme,
                            group: g,
                            scale_dtype: dt,
                        };
                        let off = (k + kind) % 4;
                        let v = values(kind, 2 * k + off, g, &mut bits);
                        let h: Vec<f16> = v.iter().map(|&a| f16::from_f32(a)).collect();
                        let b: Vec<bf16> = v.iter().map(|&a| bf16::from_f32(a)).collect();
                        for (src, name) in [
                            (Src::F32(&v[off..]), "F32"),
                            (Src::F16(&h[off..]), "F16"),
                            (Src::BF16(&b[off..]), "BF16"),
                        ] {
                            let want = run(Isa::Scalar, &f, k, src);
                            for &isa in &isas {
                                let what =
                                    format!("{scheme} g{g} k{k} {dt:?} {name} pattern {kind}");
                                compare(isa, &what, &want, &run(isa, &f, k, src));
                            }
                        }
                    }
                }
            }
        }
    }
}
