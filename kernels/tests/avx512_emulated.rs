//! The AVX-512 kernels against the scalar specification on an emulated CPU,
//! for hosts without AVX-512 (where `simd_vs_scalar` must skip them).
//!
//! The cases are those of `simd_vs_scalar`: every scheme, scale dtype and
//! source dtype, group sizes 1 to 256 and per-row groups, every length
//! 0..=3·group+7 in two rows at misaligned starts, the adversarial patterns,
//! rows of 8 and more full groups, many and long rows, and long groups of
//! values near 2^59. Codes, scales and mins must be bit-identical to the
//! scalar run, error statistics equal up to summation order. The AVX2 kernels run on the emulator too, first: they are known to
//! match natively, so a mismatch there is the harness's fault, not a kernel's.
//! On a host with AVX-512 the native test covers it and this one says so.

mod adversarial;
mod emu;
use adversarial::{compare_stats, values, Bits, PATTERNS};
use emu::{emulate_or_skip, Job, Outputs, Owned};

use half::{bf16, f16};
use shrinkray_kernels::{quantize_rows, Isa, QuantFormat, ScaleDtype, Scheme};

/// One quantization to run on every ISA.
struct Case {
    what: String,
    fmt: QuantFormat,
    k: usize,
    input: Owned,
    off: usize,
}

/// The three source dtypes of `v`, each starting at `off`.
fn inputs(v: &[f32]) -> [(Owned, &'static str); 3] {
    [
        (Owned::F32(v.to_vec()), "F32"),
        (
            Owned::F16(v.iter().map(|&a| f16::from_f32(a)).collect()),
            "F16",
        ),
        (
            Owned::BF16(v.iter().map(|&a| bf16::from_f32(a)).collect()),
            "BF16",
        ),
    ]
}

/// `simd_vs_scalar`'s per-length cases for group size `g` (0: one group per row).
fn group_cases(g: usize, max_len: usize, out: &mut Vec<Case>) {
    let mut bits = Bits(g as u64);
    let dts = [ScaleDtype::F16, ScaleDtype::BF16, ScaleDtype::F32];
    for scheme in Scheme::ALL {
        for len in 0..=max_len {
            let kind = (len + scheme as usize) % PATTERNS;
            let fmt = QuantFormat {
                dq: None,
                scheme,
                group: if g == 0 { len.max(1) } else { g },
                scale_dtype: dts[(len / PATTERNS) % 3],
            };
            let off = len % 4;
            let v = values(kind, 2 * len + off, fmt.group, &mut bits);
            for (input, name) in inputs(&v) {
                out.push(Case {
                    what: format!(
                        "{scheme} g{} {:?} {name} len {len} pattern {kind}",
                        fmt.group, fmt.scale_dtype
                    ),
                    fmt,
                    k: len,
                    input,
                    off,
                });
            }
        }
    }
}

/// Rows of 8 and more full groups (the batched paths).
fn batch_cases(g: usize, out: &mut Vec<Case>) {
    let mut bits = Bits(7 + g as u64);
    for k in [8 * g, 8 * g + 7, 9 * g + 8, 16 * g, 17 * g + 3] {
        for kind in 0..PATTERNS {
            for (scheme, dt) in Scheme::ALL
                .into_iter()
                .flat_map(|s| [(s, ScaleDtype::F16), (s, ScaleDtype::F32)])
            {
                let fmt = QuantFormat {
                    dq: None,
                    scheme,
                    group: g,
                    scale_dtype: dt,
                };
                let off = (k + kind) % 4;
                let v = values(kind, 2 * k + off, g, &mut bits);
                for (input, name) in inputs(&v) {
                    out.push(Case {
                        what: format!("{scheme} g{g} k{k} {dt:?} {name} pattern {kind}"),
                        fmt,
                        k,
                        input,
                        off,
                    });
                }
            }
        }
    }
}

/// `simd_vs_scalar`'s many and long rows, and long groups of values just below 2^59
/// (error sums must be flushed to f64).
fn long_cases(out: &mut Vec<Case>) {
    let mut bits = Bits(99);
    for (rows, k, g) in [
        (33, 4096, 64),
        (3, 11008, 11008),
        (17, 344, 64),
        (5, 1000, 128),
    ] {
        let v = values(0, rows * k, g, &mut bits);
        for scheme in Scheme::ALL {
            out.push(Case {
                what: format!("{scheme} {rows}x{k} g{g}"),
                fmt: QuantFormat {
                    dq: None,
                    scheme,
                    group: g,
                    scale_dtype: ScaleDtype::F16,
                },
                k,
                input: Owned::F32(v.clone()),
                off: 0,
            });
        }
    }
    let mut bits = Bits(5);
    let k = 40_000;
    let v: Vec<f32> = (0..2 * k).map(|_| bits.unit() * 5.0e17).collect();
    for g in [k, 64, 4096] {
        for scheme in Scheme::ALL {
            for dt in [ScaleDtype::F16, ScaleDtype::F32] {
                out.push(Case {
                    what: format!("{scheme} g{g} {dt:?} 2x{k} values of 5e17"),
                    fmt: QuantFormat {
                        dq: None,
                        scheme,
                        group: g,
                        scale_dtype: dt,
                    },
                    k,
                    input: Owned::F32(v.clone()),
                    off: 0,
                });
            }
        }
    }
}

/// Runs `cases` on the scalar specification natively and on `isas` under emulation, and compares.
fn check(what: &str, isas: &[Isa], cases: &[Case]) {
    let want: Vec<Outputs> = cases
        .iter()
        .map(|c| {
            let src = c.input.src(c.off);
            let mut o = Outputs::sized(&c.fmt, c.k, src.len());
            let emu::Outputs {
                codes,
                scales,
                mins,
                ..
            } = &mut o;
            o.stats = quantize_rows(
                Isa::Scalar,
                &c.fmt,
                c.k,
                src,
                shrinkray_kernels::RowsOut {
                    codes,
                    scales,
                    mins,
                    super_scales: &mut [],
                    super_mins: &mut [],
                },
            );
            o
        })
        .collect();
    for &isa in isas {
        let mut got: Vec<Outputs> = cases
            .iter()
            .map(|c| Outputs::sized(&c.fmt, c.k, c.input.src(c.off).len()))
            .collect();
        let mut jobs: Vec<Job> = cases
            .iter()
            .zip(got.iter_mut())
            .map(|(c, o)| Job::new(isa, c.fmt, c.k, c.input.src(c.off), o))
            .collect();
        if !emulate_or_skip(&format!("{what} on {isa}"), &mut jobs) {
            return;
        }
        for ((c, w), (g, j)) in cases.iter().zip(&want).zip(got.iter_mut().zip(&jobs)) {
            g.stats = *j.stats();
            assert_eq!(w.codes, g.codes, "{isa} {}: codes", c.what);
            assert_eq!(w.scales, g.scales, "{isa} {}: scales", c.what);
            assert_eq!(w.mins, g.mins, "{isa} {}: mins", c.what);
            compare_stats(isa, &c.what, &w.stats, &g.stats);
        }
    }
}

/// The ISAs to emulate, or none when the host runs AVX-512 itself.
fn emulated_isas() -> Vec<Isa> {
    match Isa::from_name("avx512") {
        Some(isa) if isa.is_available() => {
            eprintln!("this CPU has AVX-512: simd_vs_scalar tests it natively; not emulated");
            vec![]
        }
        Some(isa) => vec![Isa::Avx2, isa],
        None => vec![Isa::Avx2],
    }
}

#[test]
fn every_case_of_simd_vs_scalar_on_the_emulated_cpu() {
    let isas = emulated_isas();
    if isas.is_empty() {
        return;
    }
    let mut cases = Vec::new();
    for g in [1, 2, 7, 8, 16, 24, 32] {
        group_cases(g, 3 * g + 7, &mut cases);
    }
    group_cases(0, 300, &mut cases);
    long_cases(&mut cases);
    check("small, per-row and long groups", &isas, &cases);
    for g in [64, 128, 256] {
        let mut cases = Vec::new();
        group_cases(g, 3 * g + 7, &mut cases);
        check(
            &format!("group {g}, lengths 0..={}", 3 * g + 7),
            &isas,
            &cases,
        );
    }
    for g in [16, 32, 64, 128, 256] {
        let mut cases = Vec::new();
        batch_cases(g, &mut cases);
        check(&format!("rows of full groups of {g}"), &isas, &cases);
    }
}
