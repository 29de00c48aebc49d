//! Every SIMD path against the scalar specification: codes, scales and mins
//! bit-identical, error statistics equal up to summation order, over every
//! scheme, scale dtype, source dtype, group size, length 0..=3·group+7,
//! misaligned starts and adversarial values. An instruction set this CPU
//! lacks is reported as SKIPPED on stderr.

mod adversarial;
use adversarial::{compare_stats, simd_isas, values, Bits, PATTERNS};

use half::{bf16, f16};
use shrinkray_kernels::{
    quantize_rows, ErrorStats, Isa, QuantFormat, RowsOut, ScaleDtype, Scheme, Src,
};

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

fn compare(isa: Isa, what: &str, want: &Out, got: &Out) {
    assert_eq!(want.codes, got.codes, "{isa} {what}: codes");
    assert_eq!(want.scales, got.scales, "{isa} {what}: scales");
    assert_eq!(want.mins, got.mins, "{isa} {what}: mins");
    compare_stats(isa, what, &want.stats, &got.stats);
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

/// Long groups of values just below the magnitude (2^59) from which kernels sum
/// error squares in f64: a kernel that summed a whole group in f32 would overflow.
#[test]
fn long_groups_of_large_values() {
    let isas = simd_isas();
    let mut bits = Bits(5);
    let k = 40_000;
    let v: Vec<f32> = (0..2 * k).map(|_| bits.unit() * 5.0e17).collect();
    for g in [k, 64, 4096] {
        for scheme in Scheme::ALL {
            for dt in [ScaleDtype::F16, ScaleDtype::F32] {
                let f = QuantFormat {
                    dq: None,
                    scheme,
                    group: g,
                    scale_dtype: dt,
                };
                let want = run(Isa::Scalar, &f, k, Src::F32(&v));
                assert!(want.stats.sum_sq.is_finite() && want.stats.sum_sq > 1e39);
                for &isa in &isas {
                    let what = format!("{scheme} g{g} {dt:?} 2x{k} values of 5e17");
                    compare(isa, &what, &want, &run(isa, &f, k, Src::F32(&v)));
                }
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
