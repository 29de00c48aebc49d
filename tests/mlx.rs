//! `quantize --format mlx`: MLX's affine layout and mlx_lm's config block,
//! read back by `verify`, `inspect` and `dequantize`. (Words, scales and biases
//! against MLX's own output are checked in `kernels/tests/mlx_golden.rs`.)

use std::path::{Path, PathBuf};

use predicates::prelude::*;
use safetensors::Dtype;
use serde_json::Value;
use shrinkray::checkpoint::Checkpoint;
use shrinkray::engine::to_f32;
use shrinkray_kernels::mlx::{self, MlxFormat};
use shrinkray_kernels::ScaleDtype;

mod support;
use support::*;

/// A model directory: the BF16 fixture as model.safetensors and a config.json.
fn model_dir(root: &Path) -> PathBuf {
    let d = root.join("model");
    std::fs::create_dir(&d).unwrap();
    std::fs::copy(
        fixture("llama-bf16.safetensors"),
        d.join("model.safetensors"),
    )
    .unwrap();
    std::fs::write(
        d.join("config.json"),
        r#"{"model_type": "llama", "hidden_size": 128}"#,
    )
    .unwrap();
    d
}

#[test]
fn mlx_layout_config_and_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let input = model_dir(dir.path());
    let out_dir = dir.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let out = out_dir.join("model.safetensors");
    let run = shrinkray()
        .args(["quantize", "--format", "mlx", "--json"])
        .args(["--override", "o_proj=int8-asym:128"])
        .arg(&input)
        .arg("-o")
        .arg(&out)
        .assert()
        .success();
    let r = json(&run.get_output().stdout);
    assert_eq!(
        r["totals"]["output_bytes_actual"],
        std::fs::metadata(&out).unwrap().len()
    );
    assert_eq!(
        r["totals"]["output_bytes_actual"],
        r["totals"]["output_bytes_predicted"]
    );

    // The layout: <layer>.weight U32, .scales and .biases in the weight's dtype.
    let orig = Checkpoint::open(&input).unwrap();
    let packed = Checkpoint::open(&out).unwrap();
    let sh = &packed.shards[0];
    assert_eq!(sh.metadata.get("format").map(String::as_str), Some("mlx"));
    let mut quantized = 0;
    for (_, t) in orig.tensors() {
        let k = *t.shape.last().unwrap();
        let (bits, group) = if t.name.contains("o_proj") {
            (8, 128)
        } else {
            (4, 64)
        };
        if t.shape.len() < 2 || k % group != 0 {
            let kept = sh.tensor(&t.name).expect("kept under its name");
            assert_eq!((kept.dtype, &kept.shape), (t.dtype, &t.shape), "{}", t.name);
            assert!(sh.tensor(&t.name.replace(".weight", ".scales")).is_none());
            continue;
        }
        quantized += 1;
        let base = t.name.strip_suffix(".weight").unwrap();
        let w = sh.tensor(&t.name).unwrap();
        let s = sh.tensor(&format!("{base}.scales")).unwrap();
        let b = sh.tensor(&format!("{base}.biases")).unwrap();
        let rows = t.shape[0];
        assert_eq!(
            (w.dtype, w.shape.clone()),
            (Dtype::U32, vec![rows, k * bits / 32]),
            "{}",
            t.name
        );
        assert_eq!(
            (s.dtype, s.shape.clone()),
            (Dtype::BF16, vec![rows, k / group]),
            "{}",
            t.name
        );
        assert_eq!((b.dtype, &b.shape), (Dtype::BF16, &s.shape), "{}", t.name);
        // The stored bytes are the kernel's for the whole tensor.
        let f = MlxFormat {
            bits: bits as u32,
            group,
            dtype: ScaleDtype::BF16,
        };
        let data = orig.shards[0].data(t).unwrap();
        let mut buf = Vec::new();
        let x = to_f32(t.dtype, &data, &mut buf);
        let (mut c, mut sc, mut bi) = (
            vec![0u8; rows * f.code_bytes_per_row(k)],
            vec![0u8; rows * f.scale_bytes_per_row(k)],
            vec![0u8; rows * f.scale_bytes_per_row(k)],
        );
        mlx::quantize_rows(&f, k, x, &mut c, &mut sc, &mut bi);
        assert!(sh.data(w).unwrap()[..] == c[..], "{}: words", t.name);
        assert!(sh.data(s).unwrap()[..] == sc[..], "{}: scales", t.name);
        assert!(sh.data(b).unwrap()[..] == bi[..], "{}: biases", t.name);
    }
    assert_eq!(
        quantized, 14,
        "all 2-D weights but down_proj (K = 344 is not whole groups)"
    );

    // mlx_lm's config block, with the per-layer entry of the override.
    let config: Value =
        serde_json::from_slice(&std::fs::read(out_dir.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["model_type"], "llama");
    let q = &config["quantization"];
    assert_eq!(
        (q["group_size"].as_u64(), q["bits"].as_u64()),
        (Some(64), Some(4))
    );
    assert_eq!(q["mode"], "affine");
    assert_eq!(q["model.layers.0.self_attn.o_proj"]["bits"], 8);
    assert_eq!(q["model.layers.0.self_attn.o_proj"]["group_size"], 128);
    assert_eq!(config["quantization_config"], *q);

    shrinkray()
        .args(["verify", "--max-rel-error", "0.2"])
        .arg(&input)
        .arg(&out)
        .assert()
        .success()
        .stdout(predicate::str::contains("PASS"));
    let i = shrinkray()
        .args(["inspect", "--json"])
        .arg(&out)
        .assert()
        .success();
    let i = json(&i.get_output().stdout);
    assert_eq!(i["by_stored_as"]["mlx-int4 g64 BF16"]["tensors"], 12);
    assert_eq!(i["by_stored_as"]["mlx-int8 g128 BF16"]["tensors"], 2);

    // dequantize: back to BF16 under the original names, equal to MLX's decoding.
    let restored = dir.path().join("restored.safetensors");
    shrinkray()
        .arg("dequantize")
        .arg(&out)
        .arg("-o")
        .arg(&restored)
        .assert()
        .success();
    let back = Checkpoint::open(&restored).unwrap();
    assert_eq!(back.tensors().count(), orig.tensors().count());
    for (_, t) in orig.tensors() {
        let r = back.shards[0].tensor(&t.name).unwrap();
        assert_eq!((r.dtype, &r.shape), (t.dtype, &t.shape), "{}", t.name);
    }
    assert!(
        !back.shards[0].metadata.contains_key("format"),
        "format: mlx is dropped"
    );
}

#[test]
fn what_mlx_cannot_hold_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let input = model_dir(dir.path());
    let out = dir.path().join("q.safetensors");
    shrinkray()
        .args(["quantize", "--format", "mlx", "--scheme", "int4"])
        .arg(&input)
        .arg("-o")
        .arg(&out)
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "--scheme int4 cannot be written in MLX's affine layout",
        ));
    shrinkray()
        .args(["quantize", "--format", "mlx", "--group-size", "48"])
        .arg(&input)
        .arg("-o")
        .arg(&out)
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "MLX groups are 32, 64 or 128 elements, not 48",
        ));
    assert!(!out.exists());
    // The output next to the input: config.json is not written over.
    let inside = input.join("q.safetensors");
    shrinkray()
        .args(["quantize", "--format", "mlx"])
        .arg(input.join("model.safetensors"))
        .arg("-o")
        .arg(&inside)
        .assert()
        .success();
    let config: Value =
        serde_json::from_slice(&std::fs::read(input.join("config.json")).unwrap()).unwrap();
    assert!(
        config.get("quantization").is_none(),
        "the input's config.json is untouched"
    );
}
