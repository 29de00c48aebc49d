//! The cases every SIMD path is checked on against the scalar specification,
//! shared by `simd_vs_scalar` (natively) and `avx512_emulated` (on an emulated
//! CPU), so that both run exactly the same ones: every scheme, scale dtype and
//! source dtype, group sizes 1 to 256 and per-row groups, every length
//! 0..=3·group+7 in two rows at misaligned starts, the adversarial patterns,
//! rows of 8 and more full groups, many and long rows, and long groups of
//! values near 2^59.
#![allow(dead_code)] // each test file uses what it needs

use half::{bf16, f16};
use shrinkray_kernels::{
    quantize_rows, ErrorStats, Isa, QuantFormat, RowsOut, ScaleDtype, Scheme, Src,
};

use crate::adversarial::{compare_stats, values, Bits, PATTERNS};

/// Input elements of one job, owned (where they start is the case's `off`).
pub enum Owned {
    /// F32 elements.
    F32(Vec<f32>),
    /// F16 elements.
    F16(Vec<f16>),
    /// BF16 elements.
    BF16(Vec<bf16>),
}

impl Owned {
    /// Elements `off..` as a kernel source.
    pub fn src(&self, off: usize) -> Src<'_> {
        match self {
            Owned::F32(v) => Src::F32(&v[off..]),
            Owned::F16(v) => Src::F16(&v[off..]),
            Owned::BF16(v) => Src::BF16(&v[off..]),
        }
    }
}

/// The outputs of one quantization.
#[derive(Clone, Debug, PartialEq)]
pub struct Outputs {
    /// Packed codes.
    pub codes: Vec<u8>,
    /// Scales.
    pub scales: Vec<u8>,
    /// Mins.
    pub mins: Vec<u8>,
    /// Error statistics.
    pub stats: ErrorStats,
}

impl Outputs {
    /// Buffers for `len` elements in rows of `k`, filled with a sentinel that no kernel
    /// writes everywhere.
    pub fn sized(f: &QuantFormat, k: usize, len: usize) -> Outputs {
        let rows = len.checked_div(k).unwrap_or(0);
        Outputs {
            codes: vec![0x5A; rows * f.code_bytes_per_row(k)],
            scales: vec![0x5A; rows * f.scale_bytes_per_row(k)],
            mins: vec![0x5A; rows * f.min_bytes_per_row(k)],
            stats: ErrorStats::default(),
        }
    }
}

/// One quantization to run on every ISA.
pub struct Case {
    /// What it is, for failure messages.
    pub what: String,
    /// The format.
    pub fmt: QuantFormat,
    /// Row length.
    pub k: usize,
    /// The input, from `off` on.
    pub input: Owned,
    /// Where the input starts in `input` (a misaligned start).
    pub off: usize,
}

impl Case {
    /// The kernel source.
    pub fn src(&self) -> Src<'_> {
        self.input.src(self.off)
    }

    /// Quantizes it with `isa` (which this CPU must run).
    pub fn run(&self, isa: Isa) -> Outputs {
        let mut o = Outputs::sized(&self.fmt, self.k, self.src().len());
        let Outputs {
            codes,
            scales,
            mins,
            ..
        } = &mut o;
        o.stats = quantize_rows(
            isa,
            &self.fmt,
            self.k,
            self.src(),
            RowsOut {
                codes,
                scales,
                mins,
                super_scales: &mut [],
                super_mins: &mut [],
            },
        );
        o
    }
}

/// Asserts that `got` (from `isa`) equals `want` (the specification's): codes, scales
/// and mins bit for bit, error statistics up to summation order.
pub fn compare(isa: Isa, what: &str, want: &Outputs, got: &Outputs) {
    assert_eq!(want.codes, got.codes, "{isa} {what}: codes");
    assert_eq!(want.scales, got.scales, "{isa} {what}: scales");
    assert_eq!(want.mins, got.mins, "{isa} {what}: mins");
    compare_stats(isa, what, &want.stats, &got.stats);
}

/// `v` in the three source dtypes.
pub fn inputs(v: &[f32]) -> [(Owned, &'static str); 3] {
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

/// Every length 0..=`max_len` in two rows, for group size `g` (0: one group per row).
pub fn group_cases(g: usize, max_len: usize, out: &mut Vec<Case>) {
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
pub fn batch_cases(g: usize, out: &mut Vec<Case>) {
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

/// Many and long rows, and long groups of values just below 2^59 (error sums must be
/// flushed to f64).
pub fn long_cases(out: &mut Vec<Case>) {
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
