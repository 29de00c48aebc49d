//! Kernel throughput in bytes of input per second, next to a memcpy of the
//! same bytes measured in the same run: `cargo bench --bench kernels`.
//!
//! Ids: `quantize/<scheme>/g<group>/<input dtype>/<path>` and `memcpy/<bytes>`;
//! for the GGUF block kernels on 64 MiB of F32 (`-- ggml`), `ggml/<type>/<path>`
//! and `ggml/memcpy/<bytes>`; for the error-minimising search and double
//! quantization on 4 MiB of F32 (`-- search`),
//! `search/<scheme>/g<group>[/dq<bits>x<groups>]/<rtn|search>/<path>`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use indicatif::ProgressBar;
use safetensors::Dtype;
use shrinkray::engine::{quantize_tensor, Choice, Workspace};
use shrinkray::kernels::ggml::{quantize_blocks_with, GgmlType};
use shrinkray::kernels::{
    quantize_rows_by, DoubleQuant, Isa, Method, QuantFormat, RowsOut, ScaleDtype, Scheme, Src,
};
use shrinkray::synth::{encode, Rng};

const ROWS: usize = 1024;
const K: usize = 4096; // 4 Mi elements: 16 MiB of F32, beyond the L2 cache

fn data() -> Vec<f32> {
    // Heavy-tailed enough to exercise clamping; uniform is cheaper to make than Student-t.
    let mut rng = Rng::new(7);
    (0..ROWS * K)
        .map(|_| ((rng.uniform() - 0.5) * (rng.uniform() * 4.0).exp2()) as f32)
        .collect()
}

fn bench(c: &mut Criterion) {
    let values = data();
    let pb = ProgressBar::hidden();
    for dtype in [Dtype::F32, Dtype::F16, Dtype::BF16] {
        let bytes = encode(&values, dtype);
        let mut g = c.benchmark_group("quantize");
        g.throughput(Throughput::Bytes(bytes.len() as u64));
        g.sample_size(10);
        let mut dst = vec![0u8; bytes.len()];
        g.bench_function(BenchmarkId::new("memcpy", bytes.len()), |b| {
            b.iter(|| dst.copy_from_slice(black_box(&bytes)))
        });
        for scheme in Scheme::ALL {
            let f = QuantFormat {
                dq: None,
                scheme,
                group: 64,
                scale_dtype: ScaleDtype::F16,
            };
            for isa in Isa::available() {
                let id = format!("{}/g64/{dtype}/{isa}", scheme.name());
                let mut ws = Workspace::default();
                g.bench_function(id, |b| {
                    b.iter(|| {
                        quantize_tensor(
                            &mut ws,
                            black_box(&bytes),
                            dtype,
                            ROWS,
                            K,
                            &f,
                            isa,
                            Choice::default(),
                            &pb,
                            &|_| {},
                        )
                        .stats
                    })
                });
            }
        }
        g.finish();
    }
}

/// Elements of the GGUF block benchmark: 64 MiB of F32.
const GGML_ELEMS: usize = 16 << 20;

/// The GGUF block kernels alone (one thread, no engine), next to a memcpy of the same bytes.
fn bench_ggml(c: &mut Criterion) {
    let mut rng = Rng::new(11);
    let x: Vec<f32> = (0..GGML_ELEMS)
        .map(|_| ((rng.uniform() - 0.5) * (rng.uniform() * 4.0).exp2()) as f32)
        .collect();
    let mut g = c.benchmark_group("ggml");
    g.throughput(Throughput::Bytes((x.len() * 4) as u64));
    g.sample_size(10);
    let mut dst = vec![0f32; x.len()];
    g.bench_function(BenchmarkId::new("memcpy", x.len() * 4), |b| {
        b.iter(|| dst.copy_from_slice(black_box(&x)))
    });
    for ty in GgmlType::ALL {
        let mut out = vec![0u8; ty.row_bytes(x.len())];
        for isa in Isa::available() {
            g.bench_function(format!("{}/{isa}", ty.name()), |b| {
                b.iter(|| quantize_blocks_with(isa, ty, black_box(&x), &mut out))
            });
        }
    }
    g.finish();
}

/// Rows of the search benchmark: 1 Mi elements (4 MiB of F32) in rows of `K`.
const SEARCH_ROWS: usize = 256;

/// The error-minimising search (`--optimize search`) and double quantization
/// (round-to-nearest and search) on F32 input, one thread, every kernel side by side.
fn bench_search(c: &mut Criterion) {
    let all = data();
    let values = &all[..SEARCH_ROWS * K];
    let mut g = c.benchmark_group("search");
    g.throughput(Throughput::Bytes((values.len() * 4) as u64));
    g.sample_size(10);
    let dq = |bits, groups| Some(DoubleQuant { bits, groups });
    let f = |scheme, group, dq| QuantFormat {
        scheme,
        group,
        scale_dtype: ScaleDtype::F16,
        dq,
    };
    for (fmt, methods) in [
        (f(Scheme::Int4Asym, 64, None), &[Method::Search][..]),
        (f(Scheme::Int4Asym, 32, None), &[Method::Search]),
        (f(Scheme::Int4Sym, 32, None), &[Method::Search]),
        (f(Scheme::Int4Sym, 64, None), &[Method::Search]),
        (
            f(Scheme::Int4Asym, 32, dq(6, 8)),
            &[Method::Rtn, Method::Search],
        ),
        (
            f(Scheme::Int4Sym, 32, dq(6, 8)),
            &[Method::Rtn, Method::Search],
        ),
    ] {
        let rows = SEARCH_ROWS;
        let mut codes = vec![0u8; rows * fmt.code_bytes_per_row(K)];
        let mut scales = vec![0u8; rows * fmt.scale_bytes_per_row(K)];
        let mut mins = vec![0u8; rows * fmt.min_bytes_per_row(K)];
        let mut supers = vec![0u8; rows * fmt.super_bytes_per_row(K)];
        let mut super_mins = vec![0u8; rows * fmt.super_min_bytes_per_row(K)];
        let dq_name = fmt
            .dq
            .map_or(String::new(), |d| format!("/dq{}x{}", d.bits, d.groups));
        for &method in methods {
            for isa in Isa::available() {
                let id = format!(
                    "{}/g{}{dq_name}/{}/{isa}",
                    fmt.scheme.name(),
                    fmt.group,
                    method.name()
                );
                g.bench_function(id, |b| {
                    b.iter(|| {
                        quantize_rows_by(
                            isa,
                            method,
                            &fmt,
                            K,
                            Src::F32(black_box(values)),
                            RowsOut {
                                codes: &mut codes,
                                scales: &mut scales,
                                mins: &mut mins,
                                super_scales: &mut supers,
                                super_mins: &mut super_mins,
                            },
                        )
                    })
                });
            }
        }
    }
    g.finish();
}

criterion_group!(benches, bench, bench_ggml, bench_search);
criterion_main!(benches);
