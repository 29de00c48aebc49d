//! MLX's affine layout against bytes MLX 0.32.4 itself produced on the CPU
//! (`fixtures/mlx/make_golden.py`): packed words, scales and biases, and the
//! dequantized values, for F32, F16 and BF16 weights, 4 and 8 bits, groups of
//! 32, 64 and 128.

use serde_json::Value;
use shrinkray_kernels::mlx::{dequantize_rows, quantize_rows, MlxFormat};
use shrinkray_kernels::ScaleDtype;

fn golden() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures/mlx/golden.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn dtype(name: &str) -> ScaleDtype {
    match name {
        "float32" => ScaleDtype::F32,
        "float16" => ScaleDtype::F16,
        "bfloat16" => ScaleDtype::BF16,
        other => panic!("dtype {other}"),
    }
}

/// Hex bit patterns of `dt` (8 or 4 digits each) as f32 values.
fn values(dt: ScaleDtype, hex: &str) -> Vec<f32> {
    let w = 2 * dt.size();
    (0..hex.len() / w)
        .map(|i| {
            let bits = u32::from_str_radix(&hex[i * w..(i + 1) * w], 16).unwrap();
            match dt {
                ScaleDtype::F32 => f32::from_bits(bits),
                ScaleDtype::F16 => half::f16::from_bits(bits as u16).to_f32(),
                ScaleDtype::BF16 => half::bf16::from_bits(bits as u16).to_f32(),
            }
        })
        .collect()
}

/// Little-endian bytes of `dt` values as the golden file's hex.
fn hex_of(dt: ScaleDtype, bytes: &[u8]) -> String {
    bytes
        .chunks_exact(dt.size())
        .map(|c| match dt {
            ScaleDtype::F32 => format!("{:08x}", u32::from_le_bytes(c.try_into().unwrap())),
            _ => format!("{:04x}", u16::from_le_bytes(c.try_into().unwrap())),
        })
        .collect()
}

fn num(v: &Value) -> usize {
    v.as_u64()
        .map(|n| n as usize)
        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
        .unwrap()
}

fn shape(v: &Value) -> Vec<usize> {
    match v {
        Value::Array(a) => a.iter().map(num).collect(),
        Value::String(s) => serde_json::from_str::<Vec<usize>>(s).unwrap(),
        _ => panic!("shape {v}"),
    }
}

#[test]
fn every_case_is_bit_identical_to_mlx() {
    let g = golden();
    let inputs = g["inputs"].as_array().unwrap();
    let cases = g["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 90);
    let mut checked = 0;
    for c in cases {
        let dt = dtype(c["dtype"].as_str().unwrap());
        let input = inputs
            .iter()
            .find(|i| i["name"] == c["input"] && i["dtype"] == c["dtype"])
            .unwrap();
        let x = values(dt, input["bits"].as_str().unwrap());
        let sh = shape(&c["shape"]);
        let k = *sh.last().unwrap();
        let rows = x.len() / k;
        let f = MlxFormat {
            bits: num(&c["bits"]) as u32,
            group: num(&c["group_size"]),
            dtype: dt,
        };
        let what = format!("{} {:?} bits {} group {}", c["input"], dt, f.bits, f.group);
        let mut codes = vec![0u8; rows * f.code_bytes_per_row(k)];
        let mut scales = vec![0u8; rows * f.scale_bytes_per_row(k)];
        let mut biases = vec![0u8; scales.len()];
        let st = quantize_rows(&f, k, &x, &mut codes, &mut scales, &mut biases);
        let words: String = codes
            .chunks_exact(4)
            .map(|w| format!("{:08x}", u32::from_le_bytes(w.try_into().unwrap())))
            .collect();
        assert_eq!(words, c["weight"].as_str().unwrap(), "{what}: weight");
        assert_eq!(
            hex_of(dt, &scales),
            c["scales"].as_str().unwrap(),
            "{what}: scales"
        );
        assert_eq!(
            hex_of(dt, &biases),
            c["biases"].as_str().unwrap(),
            "{what}: biases"
        );
        let mut d = vec![0f32; x.len()];
        dequantize_rows(&f, k, &codes, &scales, &biases, &mut d);
        let want = values(dt, c["dequant"].as_str().unwrap());
        for (i, (a, b)) in d.iter().zip(&want).enumerate() {
            assert!(
                a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()),
                "{what}: dequant[{i}] {a} vs {b}"
            );
        }
        assert_eq!(st.count, x.len() as u64);
        checked += 1;
    }
    assert_eq!(checked, 90);
}
