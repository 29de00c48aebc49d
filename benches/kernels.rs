//! Kernel throughput in bytes of input per second, next to a memcpy of the
//! same bytes measured in the same run: `cargo bench --bench kernels`.
//!
//! Ids: `quantize/<scheme>/g<group>/<input dtype>/<path>` and `memcpy/<bytes>`;
//! for the GGUF block kernels on 64 MiB of F32 (`-- ggml`), `ggml/<type>/<path>`
//! and `ggml/memcpy/<bytes>`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use indicatif::ProgressBar;
use safetensors::Dtype;
use shrinkray::engine::{quantize_tensor, Choice, Workspace};
use shrinkray::kernels::ggml::{quantize_blocks_with, GgmlType};
use shrinkray::kernels::{Isa, QuantFormat, ScaleDtype, Scheme};
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

criterion_group!(benches, bench, bench_ggml);
criterion_main!(benches);
