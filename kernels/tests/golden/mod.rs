//! Reading `fixtures/gguf/golden.json` (bytes made by gguf-py 0.19.0), shared
//! by the tests that check the GGUF kernels against it.
#![allow(dead_code)] // each test file uses what it needs

use serde_json::Value;
use shrinkray_kernels::ggml::GgmlType;

/// The parsed golden file.
pub fn golden() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures/gguf/golden.json");
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).expect("golden.json parses")
}

/// Bytes of a hex string.
pub fn hex(s: &str) -> Vec<u8> {
    assert!(s.len().is_multiple_of(2));
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// A case's input values (f32 bit patterns in hex).
pub fn input(case: &Value) -> Vec<f32> {
    case["input_f32_bits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| f32::from_bits(u32::from_str_radix(v.as_str().unwrap(), 16).unwrap()))
        .collect()
}

/// Clears the sign bit of the f16 `d` and `m` of every Q4_1 block (the cases
/// whose zero signs gguf-py leaves to numpy's reduction order).
pub fn mask_q4_1_signs(bytes: &mut [u8]) {
    for b in bytes.chunks_exact_mut(GgmlType::Q4_1.block_bytes()) {
        b[1] &= 0x7F;
        b[3] &= 0x7F;
    }
}
