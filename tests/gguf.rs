//! `quantize --format gguf`: the file's header, its blocks, its kept tensors,
//! `verify` on it, and the refusals. (Block bytes against gguf-py's reference
//! are checked in `kernels/tests/ggml_golden.rs`; the header layout against a
//! file gguf-py wrote, in `src/gguf.rs`.)

use std::path::Path;

use predicates::prelude::*;
use safetensors::Dtype;
use shrinkray::checkpoint::Checkpoint;
use shrinkray::engine::to_f32;
use shrinkray::gguf::{self, TensorType};
use shrinkray_kernels::ggml::{self, GgmlType};

mod support;
use support::*;

/// Checks every tensor of `file` against the checkpoint `input`: blocks equal
/// the kernel's output for the whole tensor, other tensors are byte-identical,
/// and the types are the ones the rules give. Returns the header.
fn check_file(
    input: &Path,
    file: &Path,
    expect: impl Fn(&str, &[usize]) -> TensorType,
) -> gguf::Header {
    let bytes = std::fs::read(file).unwrap();
    let h = gguf::read_header(&bytes).unwrap();
    let ckpt = Checkpoint::open(input).unwrap();
    let names: Vec<_> = ckpt.tensors().map(|(_, t)| t.name.clone()).collect();
    let got: Vec<_> = h.tensors.iter().map(|t| t.name.clone()).collect();
    assert_eq!(got, names, "every tensor, in checkpoint order");
    for ((si, t), g) in ckpt.tensors().zip(&h.tensors) {
        assert_eq!(g.shape, t.shape, "{}", t.name);
        assert_eq!(g.start % 32, 0, "{}: aligned", t.name);
        assert_eq!(g.ty, expect(&t.name, &t.shape), "{}", t.name);
        let stored = &bytes[g.start as usize..(g.start + g.nbytes) as usize];
        let data = ckpt.shards[si].data(t).unwrap();
        match g.ty {
            TensorType::Block(ty) => {
                let mut buf = Vec::new();
                let x = to_f32(t.dtype, &data, &mut buf);
                let mut want = vec![0u8; x.len() / 32 * ty.block_bytes()];
                ggml::quantize_blocks(ty, x, &mut want);
                assert!(stored == want, "{}: blocks", t.name);
            }
            _ => assert!(stored == &data[..], "{}: kept bytes", t.name),
        }
    }
    let last = h.tensors.last().unwrap();
    assert_eq!(
        bytes.len() as u64,
        (last.start + last.nbytes).next_multiple_of(32)
    );
    h
}

#[test]
fn a_single_file_becomes_one_gguf_with_ggml_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let input = fixture("llama-bf16.safetensors");
    let out = dir.path().join("m.gguf"); // the extension picks the format, q4_0 by default
    let r = quantize_json(&input, &out, &[]);
    assert_eq!(r["scheme"], "q4_0");
    let size = std::fs::metadata(&out).unwrap().len();
    assert_eq!(r["totals"]["output_bytes_actual"], size);
    assert_eq!(r["totals"]["output_bytes_predicted"], size);
    let h = check_file(&input, &out, |name, shape| {
        // 1-D tensors are kept, and so are rows of K = 344 (not a multiple of 32).
        if shape.len() < 2 || name.contains("down_proj") {
            TensorType::Plain(Dtype::BF16)
        } else {
            TensorType::Block(GgmlType::Q4_0)
        }
    });
    assert_eq!(h.version, 3);
    assert_eq!(
        h.get("general.architecture"),
        Some(&gguf::Value::Str("unknown".into()))
    );
    assert_eq!(h.get("general.file_type"), Some(&gguf::Value::U32(2)));
    assert_eq!(
        h.get("general.quantization_version"),
        Some(&gguf::Value::U32(2))
    );
    assert_eq!(
        h.get("format"),
        Some(&gguf::Value::Str("pt".into())),
        "safetensors metadata"
    );
    // The report's accounting: 18-byte blocks = 16 bytes of codes + a 2-byte scale.
    let lm = &r["tensors"][0];
    assert_eq!(lm["name"], "lm_head.weight");
    assert_eq!(lm["bytes"]["codes"], 256 * 128 / 2);
    assert_eq!(lm["bytes"]["scales"], 256 * 128 / 32 * 2);
    let down = r["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "model.layers.0.mlp.down_proj.weight")
        .unwrap();
    assert_eq!(down["keep_reason"], "row not a multiple of 32");

    let v = shrinkray()
        .args(["verify", "--json", "--max-rel-error", "0.2"])
        .arg(&input)
        .arg(&out)
        .assert()
        .success();
    let v = json(&v.get_output().stdout);
    assert_eq!(v["passed"], true);
    assert_eq!(v["output_bytes_expected"], size);
    let (a, b) = (
        v["error"]["rmse"].as_f64().unwrap(),
        r["totals"]["error"]["rmse"].as_f64().unwrap(),
    );
    // Equal up to summation order (the SIMD kernels sum squares in f32 lanes first).
    assert!((a - b).abs() <= 1e-6 * b, "verify {a} vs quantize {b}");
}

#[test]
fn a_sharded_checkpoint_becomes_one_gguf_with_overrides_and_architecture() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("ckpt");
    std::fs::create_dir(&ckpt).unwrap();
    for e in std::fs::read_dir(fixture("llama-f16")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), ckpt.join(e.file_name())).unwrap();
    }
    std::fs::write(ckpt.join("config.json"), r#"{"model_type": "llama"}"#).unwrap();
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    shrinkray()
        .args(["quantize", "--format", "gguf", "--scheme", "q8_0"])
        .args(["--override", "q_proj=q4_1", "--keep", "embed_tokens"])
        .arg(&ckpt)
        .arg("-o")
        .arg(&out)
        .assert()
        .success();
    let file = out.join("model.gguf");
    let h = check_file(&ckpt, &file, |name, shape| {
        if name.contains("embed_tokens") || shape.len() < 2 || name.contains("down_proj") {
            TensorType::Plain(Dtype::F16)
        } else if name.contains("q_proj") {
            TensorType::Block(GgmlType::Q4_1)
        } else {
            TensorType::Block(GgmlType::Q8_0)
        }
    });
    assert_eq!(
        h.get("general.architecture"),
        Some(&gguf::Value::Str("llama".into()))
    );
    assert_eq!(h.get("general.file_type"), Some(&gguf::Value::U32(7)));
    shrinkray()
        .args(["verify", "--max-rel-error", "0.2"])
        .arg(&ckpt)
        .arg(&file)
        .assert()
        .success()
        .stdout(predicate::str::contains("PASS"));
}

#[test]
fn what_gguf_cannot_hold_is_refused_naming_the_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("q.gguf");
    let odd = fixture("odd-shapes.safetensors");
    // Scheme families do not mix.
    shrinkray()
        .args(["quantize", "--format", "gguf", "--scheme", "int4"])
        .arg(&odd)
        .arg("-o")
        .arg(&out)
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "--scheme int4 is not a GGUF block type",
        ));
    shrinkray()
        .args(["quantize", "--scheme", "q4_0", "--format", "safetensors"])
        .arg(&odd)
        .arg("-o")
        .arg(dir.path().join("q.safetensors"))
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "--scheme q4_0 is a GGUF block type",
        ));
    shrinkray()
        .args(["quantize", "--override", "lm_head=int8"])
        .arg(fixture("llama-bf16.safetensors"))
        .arg("-o")
        .arg(&out)
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "tensor `lm_head.weight`: --override scheme int8 cannot be written to GGUF",
        ));
    // GGUF has no U8 or BOOL type.
    shrinkray()
        .arg("quantize")
        .arg(&odd)
        .arg("-o")
        .arg(&out)
        .assert()
        .code(1)
        .stderr(predicate::str::contains("odd-shapes.safetensors"))
        .stderr(predicate::str::contains("GGUF has no"));
    // A block whose F16 scale would be infinite (ggml would store Inf).
    let input = dir.path().join("big.safetensors");
    let mut v: Vec<f32> = (0..2 * 64).map(|i| (i as f32 * 0.1).sin()).collect();
    v[70] = 1.0e6;
    shrinkray::synth::write(
        &input,
        &[(
            "w".into(),
            Dtype::F32,
            vec![2, 64],
            shrinkray::synth::encode(&v, Dtype::F32),
        )],
        &[],
    )
    .unwrap();
    shrinkray()
        .arg("quantize")
        .arg(&input)
        .arg("-o")
        .arg(&out)
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "tensor `w`: 1 block(s) need a scale or min beyond F16's range",
        ));
    let mut names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        vec!["big.safetensors"],
        "no output, no temporary file"
    );
    // q8_0 keeps it: 1e6 / 127 fits F16.
    shrinkray()
        .args(["quantize", "--scheme", "q8_0"])
        .arg(&input)
        .arg("-o")
        .arg(&out)
        .assert()
        .success();
}

#[test]
fn inspect_and_dequantize_read_gguf_files() {
    let dir = tempfile::tempdir().unwrap();
    let input = fixture("llama-bf16.safetensors");
    let out = dir.path().join("m.gguf");
    shrinkray()
        .args(["quantize", "--scheme", "q4_1"])
        .arg(&input)
        .arg("-o")
        .arg(&out)
        .assert()
        .success();
    let i = shrinkray()
        .args(["inspect", "--json"])
        .arg(&out)
        .assert()
        .success();
    let i = json(&i.get_output().stdout);
    assert_eq!(i["gguf_version"], 3);
    assert_eq!(i["by_stored_as"]["q4_1"]["tensors"], 14);
    assert_eq!(i["metadata"]["general.file_type"], "3");
    // Restored as F32: every block decodes to what the kernel's decoder gives.
    let restored = dir.path().join("r.safetensors");
    shrinkray()
        .arg("dequantize")
        .arg(&out)
        .arg("-o")
        .arg(&restored)
        .assert()
        .success();
    let bytes = std::fs::read(&out).unwrap();
    let h = gguf::read_header(&bytes).unwrap();
    let back = Checkpoint::open(&restored).unwrap();
    assert_eq!(back.tensors().count(), h.tensors.len());
    for g in &h.tensors {
        let t = back.shards[0]
            .tensor(&g.name)
            .expect("every tensor restored");
        assert_eq!(t.shape, g.shape, "{}", g.name);
        let stored = &bytes[g.start as usize..(g.start + g.nbytes) as usize];
        let data = back.shards[0].data(t).unwrap();
        match g.ty {
            TensorType::Block(ty) => {
                assert_eq!(t.dtype, Dtype::F32);
                let mut want = vec![0f32; t.numel()];
                ggml::dequantize_blocks(ty, stored, &mut want);
                let mut buf = Vec::new();
                assert!(
                    to_f32(Dtype::F32, &data, &mut buf) == &want[..],
                    "{}",
                    t.name
                );
            }
            _ => assert!(&data[..] == stored, "{}", t.name),
        }
    }
    assert_eq!(
        back.shards[0]
            .metadata
            .get("general.architecture")
            .map(String::as_str),
        Some("unknown")
    );
}

/// GGUF in, GGUF out: the drop-in for `llama-quantize --pure`. The expected
/// files were written by gguf-py (`fixtures/gguf/make_model.py`) under the rule
/// shrinkray implements: every key-value kept in order, quantization version
/// and file type set, llama.cpp's choice of tensors to quantize.
#[test]
fn a_gguf_input_gives_exactly_the_file_gguf_py_writes() {
    let dir = tempfile::tempdir().unwrap();
    let input = fixture("gguf/tiny-llama-f16.gguf");
    for ty in ["q8_0", "q4_0", "q4_1"] {
        let out = dir.path().join(format!("{ty}.gguf"));
        let run = shrinkray()
            .args(["quantize", "--json", "--scheme", ty])
            .arg(&input)
            .arg("-o")
            .arg(&out)
            .assert()
            .success();
        let r = json(&run.get_output().stdout);
        let want = std::fs::read(fixture(&format!("gguf/tiny-llama-{ty}.expected.gguf"))).unwrap();
        let got = std::fs::read(&out).unwrap();
        assert!(
            got == want,
            "{ty}: differs from gguf-py's file ({} vs {} bytes)",
            got.len(),
            want.len()
        );
        assert_eq!(r["totals"]["output_bytes_predicted"], want.len());
        let keep = |name: &str| {
            r["tensors"]
                .as_array()
                .unwrap()
                .iter()
                .find(|t| t["name"] == name)
                .unwrap()["keep_reason"]
                .clone()
        };
        assert_eq!(keep("blk.0.ffn_gate_inp.weight"), "llama.cpp keeps it");
        assert_eq!(keep("blk.0.odd.weight"), "row not a multiple of 32");
        assert_eq!(keep("blk.0.attn_norm.weight"), "1-D");
        shrinkray()
            .args(["verify", "--max-rel-error", "0.2"])
            .arg(&input)
            .arg(&out)
            .assert()
            .success();
    }
    // A GGUF input is written as GGUF.
    shrinkray()
        .args(["quantize", "--format", "safetensors"])
        .arg(&input)
        .arg("-o")
        .arg(dir.path().join("x.safetensors"))
        .assert()
        .code(1)
        .stderr(predicate::str::contains("a GGUF input is written as GGUF"));
    // An already quantized GGUF is refused, naming the tensor.
    shrinkray()
        .arg("quantize")
        .arg(fixture("gguf/tiny-ref.gguf"))
        .arg("-o")
        .arg(dir.path().join("y.gguf"))
        .assert()
        .code(1)
        .stderr(predicate::str::contains("tiny-ref.gguf"))
        .stderr(predicate::str::contains(
            "tensor `tiny.q4_0_2d` is already quantized (q4_0)",
        ));
}

#[test]
fn every_kernel_implementation_writes_the_same_gguf() {
    let dir = tempfile::tempdir().unwrap();
    let input = fixture("gguf/tiny-llama-f16.gguf");
    for ty in ["q8_0", "q4_0", "q4_1"] {
        let mut files = Vec::new();
        for isa in shrinkray_kernels::Isa::available() {
            let out = dir.path().join(format!("{ty}-{}.gguf", isa.name()));
            shrinkray()
                .env("SHRINKRAY_ISA", isa.name())
                .args(["quantize", "--scheme", ty])
                .arg(&input)
                .arg("-o")
                .arg(&out)
                .assert()
                .success();
            files.push(std::fs::read(&out).unwrap());
        }
        if files.len() < 2 {
            eprintln!("SKIPPED: only the scalar kernels run on this CPU");
        }
        assert!(
            files.windows(2).all(|w| w[0] == w[1]),
            "{ty}: kernels disagree"
        );
        let want = std::fs::read(fixture(&format!("gguf/tiny-llama-{ty}.expected.gguf"))).unwrap();
        assert!(files[0] == want, "{ty}");
    }
}

/// Found by the `checkpoint` fuzz target: an empty tensor last, after a tensor
/// whose size is not a multiple of 32, left the file short of its padding.
#[test]
fn an_empty_last_tensor_still_gets_the_final_padding() {
    let dir = tempfile::tempdir().unwrap();
    let tensors = vec![
        gguf::OutTensor {
            name: "a.weight".into(),
            shape: vec![2, 32],
            ty: TensorType::Plain(Dtype::F32),
            nbytes: 256,
        },
        gguf::OutTensor {
            name: "norm".into(),
            shape: vec![5],
            ty: TensorType::Plain(Dtype::F32),
            nbytes: 20,
        },
        gguf::OutTensor {
            name: "empty".into(),
            shape: vec![0, 4],
            ty: TensorType::Plain(Dtype::F32),
            nbytes: 0,
        },
    ];
    let kvs = vec![(
        "general.architecture".to_string(),
        gguf::Value::Str("x".into()),
    )];
    let l = gguf::layout(&kvs, &tensors).unwrap();
    let mut bytes = l.header.clone();
    bytes.resize(l.total as usize, 0);
    for (i, v) in (0..64).map(|i| (i as f32 * 0.3).sin()).enumerate() {
        let at = l.offsets[0] as usize + 4 * i;
        bytes[at..at + 4].copy_from_slice(&v.to_le_bytes());
    }
    let input = dir.path().join("in.gguf");
    std::fs::write(&input, &bytes).unwrap();
    let out = dir.path().join("out.gguf");
    shrinkray()
        .arg("quantize")
        .arg(&input)
        .arg("-o")
        .arg(&out)
        .assert()
        .success();
    let got = std::fs::read(&out).unwrap();
    let h = gguf::read_header(&got).unwrap();
    assert_eq!(h.tensors[0].ty, TensorType::Block(GgmlType::Q4_0));
    assert_eq!(got.len() % 32, 0);
    shrinkray()
        .arg("verify")
        .arg(&input)
        .arg(&out)
        .assert()
        .success();
}

#[test]
fn plan_of_a_gguf_input_predicts_the_gguf_files() {
    let run = shrinkray()
        .args(["plan", "--json"])
        .arg(fixture("gguf/tiny-llama-f16.gguf"))
        .assert()
        .success();
    let r = json(&run.get_output().stdout);
    for ty in ["q8_0", "q4_0", "q4_1"] {
        let row = r["rows"]
            .as_array()
            .unwrap()
            .iter()
            .find(|row| row["format"] == ty)
            .unwrap_or_else(|| panic!("no {ty} row in {r}"));
        let want = std::fs::metadata(fixture(&format!("gguf/tiny-llama-{ty}.expected.gguf")))
            .unwrap()
            .len();
        assert_eq!(row["bytes"], want, "{ty}");
    }
}

#[test]
fn malformed_gguf_inputs_are_refused_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let good = std::fs::read(fixture("gguf/tiny-llama-f16.gguf")).unwrap();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "cut",
            good[..good.len() - 100].to_vec(),
            "runs past the end of the file",
        ),
        (
            "count",
            [&good[..8], &u64::MAX.to_le_bytes()[..], &good[16..]].concat(),
            "tensors cannot fit",
        ),
        (
            "version",
            [&good[..4], &9u32.to_le_bytes()[..], &good[8..]].concat(),
            "GGUF version 9",
        ),
        ("short", good[..6].to_vec(), "needs 4 bytes"),
    ];
    for (name, bytes, want) in cases {
        let input = dir.path().join(format!("{name}.gguf"));
        std::fs::write(&input, &bytes).unwrap();
        let out = dir.path().join(format!("{name}-out.gguf"));
        for cmd in ["quantize", "inspect"] {
            let mut c = shrinkray();
            c.arg(cmd).arg(&input);
            if cmd == "quantize" {
                c.arg("-o").arg(&out);
            }
            c.assert()
                .code(1)
                .stderr(predicate::str::contains(format!("{name}.gguf")))
                .stderr(predicate::str::contains("not a valid GGUF file"))
                .stderr(predicate::str::contains(want));
        }
        assert!(!out.exists(), "{name}");
        assert_eq!(
            std::fs::read(&input).unwrap(),
            bytes,
            "{name}: input unchanged"
        );
    }
    let names = listing(dir.path());
    assert!(
        names.iter().all(|n| !n.contains("shrinkray-tmp")),
        "{names:?}"
    );
}
