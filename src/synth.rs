//! Synthetic checkpoints whose weights look like real ones: heavy-tailed
//! (Student-t), with a few outlier input columns, Llama-shaped names and
//! shapes. Bit-for-bit deterministic on every platform: only IEEE-exact
//! operations (add, multiply, divide, sqrt) are used, no libm functions.
//!
//! `cargo run --release --example make_fixtures` writes the fixtures with
//! these functions; a test checks the committed files are what they make.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use safetensors::tensor::TensorView;
use safetensors::Dtype;

/// A small deterministic generator (SplitMix64).
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Approximately N(0, 1): the Irwin–Hall sum of 12 uniforms, minus 6.
    pub fn normal(&mut self) -> f64 {
        (0..12).map(|_| self.uniform()).sum::<f64>() - 6.0
    }

    /// Student-t with `nu` degrees of freedom: heavy tails like trained weights.
    pub fn student_t(&mut self, nu: u32) -> f64 {
        let z = self.normal();
        let chi2: f64 = (0..nu)
            .map(|_| {
                let n = self.normal();
                n * n
            })
            .sum();
        z / (chi2 / nu as f64).sqrt()
    }
}

/// A tensor to write: name, shape and f32 values.
#[derive(Clone, Debug)]
pub struct SynthTensor {
    /// Name.
    pub name: String,
    /// Shape.
    pub shape: Vec<usize>,
    /// Values, row-major.
    pub values: Vec<f32>,
}

/// Heavy-tailed weights `rows × cols` with standard scale `std` and `outliers` input columns ×`boost`.
pub fn weights(
    rng: &mut Rng,
    rows: usize,
    cols: usize,
    std: f64,
    outliers: &[usize],
    boost: f64,
) -> Vec<f32> {
    let mut v = Vec::with_capacity(rows * cols);
    for _ in 0..rows {
        for c in 0..cols {
            let b = if outliers.contains(&c) { boost } else { 1.0 };
            v.push((rng.student_t(5) * std * b) as f32);
        }
    }
    v
}

/// The sizes of a Llama-style decoder.
#[derive(Clone, Copy, Debug)]
pub struct LlamaShape {
    /// Vocabulary size.
    pub vocab: usize,
    /// Hidden size.
    pub hidden: usize,
    /// MLP intermediate size.
    pub intermediate: usize,
    /// Decoder layers.
    pub layers: usize,
    /// Attention heads.
    pub heads: usize,
    /// Key/value heads (grouped-query attention).
    pub kv_heads: usize,
}

/// The fixture model: small, but with a last dimension (344) that is not a multiple of 64.
pub const TINY_LLAMA: LlamaShape = LlamaShape {
    vocab: 256,
    hidden: 128,
    intermediate: 344,
    layers: 2,
    heads: 4,
    kv_heads: 2,
};

/// The tensors of a Llama-style model with Hugging Face names, in model order.
pub fn llama(shape: LlamaShape, seed: u64) -> Vec<SynthTensor> {
    let mut rng = Rng::new(seed);
    let h = shape.hidden;
    let kv = h / shape.heads * shape.kv_heads;
    // Hidden-state channels with large activations: the columns that read them carry outliers.
    let hot = [h / 7, h / 2 + 3];
    let mut out = Vec::new();
    let mut push = |name: String, shape: Vec<usize>, values: Vec<f32>| {
        out.push(SynthTensor {
            name,
            shape,
            values,
        })
    };
    push(
        "model.embed_tokens.weight".into(),
        vec![shape.vocab, h],
        weights(&mut rng, shape.vocab, h, 0.02, &[], 1.0),
    );
    for l in 0..shape.layers {
        let p = format!("model.layers.{l}");
        let norm = |rng: &mut Rng| {
            (0..h)
                .map(|_| (1.0 + 0.1 * rng.normal()) as f32)
                .collect::<Vec<_>>()
        };
        push(
            format!("{p}.input_layernorm.weight"),
            vec![h],
            norm(&mut rng),
        );
        for (n, rows) in [("q_proj", h), ("k_proj", kv), ("v_proj", kv)] {
            push(
                format!("{p}.self_attn.{n}.weight"),
                vec![rows, h],
                weights(&mut rng, rows, h, 0.02, &hot, 8.0),
            );
        }
        push(
            format!("{p}.self_attn.o_proj.weight"),
            vec![h, h],
            weights(&mut rng, h, h, 0.02, &[], 1.0),
        );
        push(
            format!("{p}.post_attention_layernorm.weight"),
            vec![h],
            norm(&mut rng),
        );
        for n in ["gate_proj", "up_proj"] {
            push(
                format!("{p}.mlp.{n}.weight"),
                vec![shape.intermediate, h],
                weights(&mut rng, shape.intermediate, h, 0.02, &hot, 8.0),
            );
        }
        push(
            format!("{p}.mlp.down_proj.weight"),
            vec![h, shape.intermediate],
            weights(&mut rng, h, shape.intermediate, 0.015, &[5], 4.0),
        );
    }
    push(
        "model.norm.weight".into(),
        vec![h],
        (0..h).map(|_| (1.0 + 0.1 * rng.normal()) as f32).collect(),
    );
    push(
        "lm_head.weight".into(),
        vec![shape.vocab, h],
        weights(&mut rng, shape.vocab, h, 0.02, &[], 1.0),
    );
    out
}

/// Encodes f32 values as little-endian `dtype` bytes (F32, F16 or BF16).
pub fn encode(values: &[f32], dtype: Dtype) -> Vec<u8> {
    let mut out = vec![0u8; values.len() * dtype.bitsize() / 8];
    crate::engine::from_f32(dtype, values, &mut out);
    out
}

/// A tensor ready to serialize: name, dtype, shape, bytes.
pub type Raw = (String, Dtype, Vec<usize>, Vec<u8>);

/// Writes tensors with the safetensors crate's own serializer (an independent writer).
pub fn write(path: &Path, tensors: &[Raw], metadata: &[(&str, &str)]) -> std::io::Result<()> {
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|(n, d, s, b)| {
            (
                n.clone(),
                TensorView::new(*d, s.clone(), b).expect("consistent tensor"),
            )
        })
        .collect();
    let md: HashMap<String, String> = metadata
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    safetensors::serialize_to_file(views, Some(md), path).map_err(std::io::Error::other)
}

fn as_raw(ts: &[SynthTensor], dtype: Dtype) -> Vec<Raw> {
    ts.iter()
        .map(|t| {
            (
                t.name.clone(),
                dtype,
                t.shape.clone(),
                encode(&t.values, dtype),
            )
        })
        .collect()
}

/// Tensors with awkward shapes and values: odd K, 1-D, scalar, empty, integer, zeros, constants.
pub fn odd_shapes(seed: u64) -> Vec<Raw> {
    let mut rng = Rng::new(seed);
    let mut w = |rows, cols| weights(&mut rng, rows, cols, 0.05, &[], 1.0);
    let mut t = vec![
        (
            "odd.k100".to_string(),
            Dtype::F32,
            vec![7, 100],
            encode(&w(7, 100), Dtype::F32),
        ),
        (
            "odd.k33".to_string(),
            Dtype::BF16,
            vec![5, 33],
            encode(&w(5, 33), Dtype::BF16),
        ),
        (
            "odd.rank3".to_string(),
            Dtype::F16,
            vec![2, 3, 70],
            encode(&w(6, 70), Dtype::F16),
        ),
        (
            "odd.k1".to_string(),
            Dtype::F32,
            vec![9, 1],
            encode(&w(9, 1), Dtype::F32),
        ),
        (
            "odd.vector".to_string(),
            Dtype::F32,
            vec![10],
            encode(&w(1, 10), Dtype::F32),
        ),
        (
            "odd.scalar".to_string(),
            Dtype::F32,
            vec![],
            encode(&[0.125], Dtype::F32),
        ),
        (
            "odd.empty_rows".to_string(),
            Dtype::F32,
            vec![0, 64],
            vec![],
        ),
        ("odd.empty_k".to_string(), Dtype::BF16, vec![4, 0], vec![]),
        (
            "odd.zeros".to_string(),
            Dtype::F32,
            vec![4, 64],
            encode(&[0.0; 256], Dtype::F32),
        ),
        (
            "odd.constant".to_string(),
            Dtype::F16,
            vec![2, 64],
            encode(&[0.5; 128], Dtype::F16),
        ),
    ];
    let ids: Vec<u8> = [3i64, -1, 1 << 40]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    t.push(("odd.ids".to_string(), Dtype::I64, vec![3], ids));
    t.push((
        "odd.mask".to_string(),
        Dtype::BOOL,
        vec![2, 2],
        vec![1, 0, 0, 1],
    ));
    t.push((
        "odd.bytes".to_string(),
        Dtype::U8,
        vec![5],
        vec![0, 1, 2, 254, 255],
    ));
    t
}

/// The seed of every fixture.
pub const FIXTURE_SEED: u64 = 20261123;

/// Writes every fixture into `dir` and returns the paths written.
pub fn make_fixtures(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    // One metadata entry only: the safetensors crate writes metadata from a HashMap, in random order.
    let md = [("format", "pt")];
    let model = llama(TINY_LLAMA, FIXTURE_SEED);
    let mut written = Vec::new();
    for (file, dtype) in [
        ("llama-bf16.safetensors", Dtype::BF16),
        ("llama-f32.safetensors", Dtype::F32),
    ] {
        let p = dir.join(file);
        write(&p, &as_raw(&model, dtype), &md)?;
        written.push(p);
    }
    // F16, sharded in two: embeddings and layer 0 in the first shard, the rest in the second.
    let sharded = dir.join("llama-f16");
    std::fs::create_dir_all(&sharded)?;
    let (first, second): (Vec<_>, Vec<_>) = model
        .iter()
        .cloned()
        .partition(|t| t.name.starts_with("model.embed") || t.name.starts_with("model.layers.0."));
    let mut weight_map = serde_json::Map::new();
    let mut total = 0usize;
    for (i, part) in [first, second].iter().enumerate() {
        let name = format!("model-{:05}-of-00002.safetensors", i + 1);
        let raw = as_raw(part, Dtype::F16);
        for r in &raw {
            weight_map.insert(r.0.clone(), name.clone().into());
            total += r.3.len();
        }
        let p = sharded.join(&name);
        write(&p, &raw, &md)?;
        written.push(p);
    }
    let index =
        serde_json::json!({ "metadata": { "total_size": total }, "weight_map": weight_map });
    let p = sharded.join(crate::checkpoint::INDEX_FILE);
    std::fs::write(&p, serde_json::to_string_pretty(&index)? + "\n")?;
    written.push(p);
    let p = dir.join("odd-shapes.safetensors");
    write(&p, &odd_shapes(FIXTURE_SEED + 1), &md)?;
    written.push(p);
    Ok(written)
}
