//! Round trips through the packed format, checked with an independent reader
//! (`tests/common`) written from FORMAT.md alone.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use common::*;
use safetensors::{Dtype, SafeTensors};
use serde_json::Value;
use shrinkray::dequantize::{dequantize, DequantizeOptions};
use shrinkray::kernels::{ScaleDtype, Scheme};
use shrinkray::plan::{GroupSize, Rules};
use shrinkray::quantize::{dry_run, quantize, QuantizeOptions};
use shrinkray::report::Report;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

fn opts(
    scheme: Scheme,
    group: GroupSize,
    scale_dtype: ScaleDtype,
    threads: usize,
) -> QuantizeOptions {
    QuantizeOptions {
        rules: Rules {
            scheme,
            group,
            scale_dtype,
            keep: vec![],
            overrides: vec![],
            ..Rules::default()
        },
        threads: Some(threads),
        ..Default::default()
    }
}

/// The metadata name of a scheme, its bits and symmetry, per FORMAT.md.
fn scheme_spec(s: Scheme) -> (&'static str, u64, bool) {
    match s {
        Scheme::Int8Sym => ("int8", 8, true),
        Scheme::Int8Asym => ("int8-asym", 8, false),
        Scheme::Int4Sym => ("int4", 4, true),
        Scheme::Int4Asym => ("int4-asym", 4, false),
    }
}

fn scale_name(d: ScaleDtype) -> &'static str {
    match d {
        ScaleDtype::F16 => "F16",
        ScaleDtype::BF16 => "BF16",
        ScaleDtype::F32 => "F32",
    }
}

const SCHEMES: [Scheme; 4] = [
    Scheme::Int8Sym,
    Scheme::Int8Asym,
    Scheme::Int4Sym,
    Scheme::Int4Asym,
];

/// The matrix run on every fixture.
fn configs() -> Vec<(Scheme, GroupSize, ScaleDtype)> {
    let mut v = Vec::new();
    for s in SCHEMES {
        for g in [
            GroupSize::Fixed(32),
            GroupSize::Fixed(64),
            GroupSize::Row,
            GroupSize::Fixed(7),
        ] {
            v.push((s, g, ScaleDtype::F16));
        }
        for g in [GroupSize::Fixed(64), GroupSize::Fixed(7)] {
            v.push((s, g, ScaleDtype::F32));
        }
    }
    v.push((Scheme::Int4Asym, GroupSize::Fixed(32), ScaleDtype::BF16));
    v.push((Scheme::Int8Sym, GroupSize::Row, ScaleDtype::BF16));
    v
}

/// Where to write the output of `input` inside `dir`.
fn output_path(input: &Path, dir: &Path) -> PathBuf {
    if input.is_dir() {
        dir.join("packed")
    } else {
        dir.join("packed.safetensors")
    }
}

fn disk_bytes(path: &Path) -> u64 {
    safetensors_files(path)
        .iter()
        .map(|f| std::fs::metadata(f).unwrap().len())
        .sum()
}

fn rel_close(a: f64, b: f64, rel: f64) -> bool {
    a == b || (a - b).abs() <= rel * a.abs().max(b.abs())
}

/// Quantizes `input` with one configuration and checks the output against
/// the independent reader. Returns the number of quantized tensors.
fn check_one(input: &Path, scheme: Scheme, group: GroupSize, sdt: ScaleDtype) -> usize {
    let ctx = format!(
        "{} {scheme:?} group {group} scales {sdt:?}",
        input.file_name().unwrap().to_string_lossy()
    );
    let o = opts(scheme, group, sdt, 2);
    let tmp = tempfile::tempdir().unwrap();
    let out = output_path(input, tmp.path());

    // (a) sizes: dry run == report == bytes on disk.
    let predicted: Report = dry_run(input, Some(&out), &o).expect("dry run");
    assert!(predicted.dry_run, "{ctx}");
    assert_eq!(predicted.totals.output_bytes_actual, None, "{ctx}");
    assert!(!out.exists(), "{ctx}: the dry run wrote {}", out.display());
    let report = quantize(input, &out, &o).unwrap_or_else(|e| panic!("{ctx}: {e}"));
    assert!(!report.dry_run, "{ctx}");
    let disk = disk_bytes(&out);
    assert_eq!(
        disk, predicted.totals.output_bytes_predicted,
        "{ctx}: bytes on disk vs dry-run prediction"
    );
    assert_eq!(
        report.totals.output_bytes_predicted, predicted.totals.output_bytes_predicted,
        "{ctx}: report prediction vs dry-run prediction"
    );
    assert_eq!(
        report.totals.output_bytes_actual,
        Some(disk),
        "{ctx}: report actual bytes vs disk"
    );

    // Output files mirror the input files.
    let in_files: Vec<String> = safetensors_files(input)
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    let out_files = safetensors_files(&out);
    if input.is_dir() {
        let names: Vec<String> = out_files
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, in_files, "{ctx}: shard names");
        assert!(out.join(INDEX_FILE).is_file(), "{ctx}: no output index");
    }

    // (b) every file opens with the safetensors crate.
    for f in &out_files {
        SafeTensors::deserialize(&read(f))
            .unwrap_or_else(|e| panic!("{ctx}: {} does not open: {e}", f.display()));
    }

    // (c), (d) values and kept tensors.
    let originals = load_all(input);
    let decoded = decode_packed(&out);
    assert_eq!(
        decoded.keys().collect::<Vec<_>>(),
        originals.keys().collect::<Vec<_>>(),
        "{ctx}: original tensor names"
    );
    let rows: BTreeMap<&str, _> = report
        .tensors
        .iter()
        .map(|r| (r.name.as_str(), r))
        .collect();
    assert_eq!(rows.len(), originals.len(), "{ctx}: report rows");
    let (name_s, bits, symmetric) = scheme_spec(scheme);
    let (mut all_sse, mut all_n, mut all_max) = (0f64, 0u64, 0f32);
    let mut n_quantized = 0;
    for (name, orig) in &originals {
        let tctx = format!("{ctx}: {name}");
        let d = &decoded[name];
        let row = rows
            .get(name.as_str())
            .unwrap_or_else(|| panic!("{tctx}: no report row"));
        assert_eq!(d.dtype, orig.dtype, "{tctx}: dtype");
        assert_eq!(d.shape, orig.shape, "{tctx}: shape");
        if input.is_dir() {
            assert_eq!(d.file, orig.file, "{tctx}: in another shard than its input");
        }
        assert_eq!(row.output_bytes, d.out_bytes, "{tctx}: report output bytes");
        if default_rules_quantize(&orig.dtype, &orig.shape) {
            n_quantized += 1;
            let q = d
                .quant
                .as_ref()
                .unwrap_or_else(|| panic!("{tctx}: not quantized"));
            let k = *orig.shape.last().unwrap();
            let g = match group {
                GroupSize::Fixed(g) => g,
                GroupSize::Row => k,
            };
            assert_eq!(q.scheme, name_s, "{tctx}: scheme");
            assert_eq!(q.bits as u64, bits, "{tctx}: bits");
            assert_eq!(q.symmetric, symmetric, "{tctx}: symmetric");
            assert_eq!(q.group_size, g, "{tctx}: group size");
            assert_eq!(q.scale_dtype, scale_name(sdt), "{tctx}: scale dtype");
            assert_eq!(row.action, name_s, "{tctx}: report action");
            let x = orig.f32();
            let (sse, max) = error_of(&x, &d.values);
            let err = row
                .error
                .as_ref()
                .unwrap_or_else(|| panic!("{tctx}: no error in the report"));
            let rmse = (sse / x.len() as f64).sqrt();
            assert!(
                rel_close(rmse, err.rmse, 1e-6),
                "{tctx}: rmse from the decoded file {rmse:e}, report {:e}",
                err.rmse
            );
            assert!(
                within_one_ulp(max, err.max_abs_error as f32),
                "{tctx}: max abs error from the decoded file {max:e}, report {:e}",
                err.max_abs_error
            );
            all_sse += sse;
            all_n += x.len() as u64;
            all_max = all_max.max(max);
        } else {
            assert!(d.quant.is_none(), "{tctx}: quantized, should be kept");
            assert_eq!(
                d.kept.as_deref(),
                Some(orig.data.as_slice()),
                "{tctx}: kept bytes differ"
            );
            assert_eq!(row.action, "keep", "{tctx}: report action");
            assert!(row.error.is_none(), "{tctx}: kept tensor with an error");
        }
    }
    match &report.totals.error {
        Some(e) => {
            let rmse = (all_sse / all_n as f64).sqrt();
            assert!(
                rel_close(rmse, e.rmse, 1e-6),
                "{ctx}: total rmse {rmse:e}, report {:e}",
                e.rmse
            );
            assert!(
                within_one_ulp(all_max, e.max_abs_error as f32),
                "{ctx}: total max abs error {all_max:e}, report {:e}",
                e.max_abs_error
            );
        }
        None => assert_eq!(n_quantized, 0, "{ctx}: no total error in the report"),
    }

    // (e) metadata: input entries kept, `shrinkray` added and describing the tensors of its file.
    let mut described = BTreeSet::new();
    for f in &out_files {
        let fname = f.file_name().unwrap().to_string_lossy().into_owned();
        let fctx = format!("{ctx}: {fname}");
        let in_file = if input.is_dir() {
            input.join(&fname)
        } else {
            input.to_path_buf()
        };
        let in_md = file_metadata(&read(&in_file));
        let out_md = file_metadata(&read(f));
        for (k, v) in &in_md {
            assert_eq!(
                out_md.get(k),
                Some(v),
                "{fctx}: input metadata `{k}` not kept"
            );
        }
        let mut extra: Vec<&String> = out_md.keys().filter(|k| !in_md.contains_key(*k)).collect();
        extra.sort();
        assert_eq!(extra, vec![METADATA_KEY], "{fctx}: added metadata keys");
        let meta: Value = serde_json::from_str(&out_md[METADATA_KEY]).unwrap();
        assert_eq!(meta["format"], Value::from(1), "{fctx}: format");
        let tensors = meta["tensors"].as_object().expect("tensors object");
        for (name, e) in tensors {
            let tctx = format!("{fctx}: metadata of {name}");
            let orig = originals
                .get(name)
                .unwrap_or_else(|| panic!("{tctx}: no such input tensor"));
            if input.is_dir() {
                assert_eq!(orig.file, fname, "{tctx}: described in the wrong shard");
            }
            let k = *orig.shape.last().unwrap();
            let g = match group {
                GroupSize::Fixed(g) => g,
                GroupSize::Row => k,
            };
            assert_eq!(e["scheme"], Value::from(name_s), "{tctx}");
            assert_eq!(e["bits"], Value::from(bits), "{tctx}");
            assert_eq!(e["symmetric"], Value::from(symmetric), "{tctx}");
            assert_eq!(e["group_size"], Value::from(g), "{tctx}");
            assert_eq!(e["dtype"], Value::from(orig.dtype.as_str()), "{tctx}");
            assert_eq!(e["shape"], serde_json::json!(orig.shape), "{tctx}");
            assert_eq!(e["scale_dtype"], Value::from(scale_name(sdt)), "{tctx}");
            assert!(described.insert(name.clone()), "{tctx}: described twice");
        }
    }
    let expected: BTreeSet<String> = originals
        .values()
        .filter(|t| default_rules_quantize(&t.dtype, &t.shape))
        .map(|t| t.name.clone())
        .collect();
    assert_eq!(
        described, expected,
        "{ctx}: tensors in `shrinkray` metadata"
    );
    n_quantized
}

fn check_matrix(input: &str) {
    let input = fixture(input);
    let mut runs = 0;
    for (s, g, d) in configs() {
        let n = check_one(&input, s, g, d);
        assert!(n > 0, "nothing quantized");
        runs += 1;
    }
    assert_eq!(runs, configs().len());
}

#[test]
fn matrix_llama_bf16() {
    check_matrix("llama-bf16.safetensors");
}

#[test]
fn matrix_llama_f32() {
    check_matrix("llama-f32.safetensors");
}

#[test]
fn matrix_llama_f16_sharded() {
    check_matrix("llama-f16");
}

#[test]
fn matrix_odd_shapes() {
    check_matrix("odd-shapes.safetensors");
}

/// Int4 packing of odd rows: `P = ceil(K/2)`, last high nibble 0, on the odd-shapes fixture.
#[test]
fn int4_odd_k_packing() {
    let input = fixture("odd-shapes.safetensors");
    let originals = load_all(&input);
    for scheme in [Scheme::Int4Sym, Scheme::Int4Asym] {
        for group in [GroupSize::Fixed(7), GroupSize::Fixed(64), GroupSize::Row] {
            let tmp = tempfile::tempdir().unwrap();
            let out = tmp.path().join("o.safetensors");
            quantize(&input, &out, &opts(scheme, group, ScaleDtype::F16, 1)).unwrap();
            let bytes = read(&out);
            let st = SafeTensors::deserialize(&bytes).unwrap();
            let mut odd_seen = 0;
            for (name, t) in &originals {
                if !default_rules_quantize(&t.dtype, &t.shape) {
                    continue;
                }
                let k = *t.shape.last().unwrap();
                let q = st.tensor(&format!("{name}.qweight")).unwrap();
                assert_eq!(q.dtype(), Dtype::U8, "{name}");
                assert_eq!(*q.shape().last().unwrap(), k.div_ceil(2), "{name}: P");
                assert_eq!(
                    &q.shape()[..q.shape().len() - 1],
                    &t.shape[..t.shape.len() - 1]
                );
                if k % 2 == 1 {
                    odd_seen += 1;
                    let p = k.div_ceil(2);
                    for (r, row) in q.data().chunks_exact(p).enumerate() {
                        assert_eq!(
                            row[p - 1] & 0xf0,
                            0,
                            "{scheme:?} {group}: {name} row {r}: last high nibble not 0"
                        );
                    }
                }
            }
            assert!(odd_seen >= 2, "fixture lost its odd-K tensors");
        }
    }
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Writes one F32 tensor `w` of `shape` and quantizes it with group 5.
fn quantize_hand_made(
    tmp: &Path,
    values: &[f32],
    shape: Vec<usize>,
    scheme: Scheme,
) -> BTreeMap<String, Vec<u8>> {
    let input = tmp.join(format!("in-{scheme:?}.safetensors"));
    shrinkray::synth::write(
        &input,
        &[("w".to_string(), Dtype::F32, shape, f32_bytes(values))],
        &[("k", "v")],
    )
    .unwrap();
    let out = tmp.join(format!("out-{scheme:?}.safetensors"));
    quantize(
        &input,
        &out,
        &opts(scheme, GroupSize::Fixed(5), ScaleDtype::F16, 1),
    )
    .unwrap();
    let bytes = read(&out);
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut m = BTreeMap::new();
    for (name, v) in st.tensors() {
        m.insert(
            format!("{name} {} {:?}", v.dtype(), v.shape()),
            v.data().to_vec(),
        );
    }
    // The independent reader gives the inputs back exactly.
    let d = decode_packed(&out);
    assert_eq!(d["w"].values, values, "{scheme:?}: decoded values");
    m
}

/// Exact bytes for inputs whose codes are known by hand: every value is on
/// the grid of a unique exact (scale, min), so any sensible quantizer finds it.
#[test]
fn hand_made_exact_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let h = |x: f32| half::f16::from_f32(x).to_le_bytes().to_vec();

    // int4-asym, K = 5, group 5: row 0 is min −2, scale 1, codes [0,15,3,8,1];
    // row 1 is min 1, scale 0.5, codes [15,0,7,2,9].
    let m = quantize_hand_made(
        tmp.path(),
        &[-2.0, 13.0, 1.0, 6.0, -1.0, 8.5, 1.0, 4.5, 2.0, 5.5],
        vec![2, 5],
        Scheme::Int4Asym,
    );
    let want: BTreeMap<String, Vec<u8>> = [
        (
            "w.qweight U8 [2, 3]".to_string(),
            vec![0xF0, 0x83, 0x01, 0x0F, 0x27, 0x09],
        ),
        ("w.scales F16 [2, 1]".to_string(), [h(1.0), h(0.5)].concat()),
        ("w.mins F16 [2, 1]".to_string(), [h(-2.0), h(1.0)].concat()),
    ]
    .into_iter()
    .collect();
    assert_eq!(m, want, "int4-asym");

    // int4 symmetric: w = (c − 8)·scale; the only exact choice for values in
    // [−8, 7] with a step of 1 is scale 1, codes c = w + 8 = [0,15,8,11,7].
    // (Values ±7 would not do: a quantizer may pick scale ±7/8 for them.)
    let m = quantize_hand_made(
        tmp.path(),
        &[-8.0, 7.0, 0.0, 3.0, -1.0],
        vec![1, 5],
        Scheme::Int4Sym,
    );
    let want: BTreeMap<String, Vec<u8>> = [
        ("w.qweight U8 [1, 3]".to_string(), vec![0xF0, 0xB8, 0x07]),
        ("w.scales F16 [1, 1]".to_string(), h(1.0)),
    ]
    .into_iter()
    .collect();
    assert_eq!(m, want, "int4");

    // int8 symmetric: absmax 127 → scale 1, codes = values as i8.
    let m = quantize_hand_made(
        tmp.path(),
        &[-127.0, 127.0, 0.0, 5.0, -3.0],
        vec![1, 5],
        Scheme::Int8Sym,
    );
    let want: BTreeMap<String, Vec<u8>> = [
        (
            "w.qweight I8 [1, 5]".to_string(),
            [-127i8, 127, 0, 5, -3].iter().map(|c| *c as u8).collect(),
        ),
        ("w.scales F16 [1, 1]".to_string(), h(1.0)),
    ]
    .into_iter()
    .collect();
    assert_eq!(m, want, "int8");

    // int8-asym: min −2, scale 1, codes [0,255,2,100,3].
    let m = quantize_hand_made(
        tmp.path(),
        &[-2.0, 253.0, 0.0, 98.0, 1.0],
        vec![1, 5],
        Scheme::Int8Asym,
    );
    let want: BTreeMap<String, Vec<u8>> = [
        ("w.qweight U8 [1, 5]".to_string(), vec![0, 255, 2, 100, 3]),
        ("w.scales F16 [1, 1]".to_string(), h(1.0)),
        ("w.mins F16 [1, 1]".to_string(), h(-2.0)),
    ]
    .into_iter()
    .collect();
    assert_eq!(m, want, "int8-asym");
}

/// Dequantizes `packed` into `restored` and checks every original tensor
/// against the independent reader's values, converted to the original dtype.
fn check_dequantize(input: &Path, packed: &Path, restored: &Path) {
    let summary = dequantize(packed, restored, &DequantizeOptions::default())
        .unwrap_or_else(|e| panic!("dequantize {}: {e}", packed.display()));
    let originals = load_all(input);
    let decoded = decode_packed(packed);
    let back = load_all(restored);
    assert_eq!(
        back.keys().collect::<Vec<_>>(),
        originals.keys().collect::<Vec<_>>(),
        "restored tensor names"
    );
    let mut n_restored = 0;
    for (name, orig) in &originals {
        let b = &back[name];
        let d = &decoded[name];
        assert_eq!(b.dtype, orig.dtype, "{name}: restored dtype");
        assert_eq!(b.shape, orig.shape, "{name}: restored shape");
        if input.is_dir() {
            assert_eq!(b.file, orig.file, "{name}: restored into another shard");
        }
        if d.is_quantized() {
            n_restored += 1;
            let want = from_f32(&orig.dtype, &d.values);
            assert!(
                b.data == want,
                "{name}: restored values differ from the independent decoding \
                 (first differing element {:?})",
                b.f32()
                    .iter()
                    .zip(to_f32(&orig.dtype, &want))
                    .position(|(a, w)| a.to_bits() != w.to_bits())
            );
        } else {
            assert_eq!(b.data, orig.data, "{name}: kept tensor changed");
        }
    }
    assert_eq!(summary.tensors_restored, n_restored, "summary: restored");
    assert_eq!(
        summary.tensors_copied,
        originals.len() - n_restored,
        "summary: copied"
    );
    // The restored checkpoint keeps the input's metadata, is no longer packed
    // and can be quantized again.
    for f in safetensors_files(restored) {
        let fname = f.file_name().unwrap().to_string_lossy().into_owned();
        let in_file = if input.is_dir() {
            input.join(&fname)
        } else {
            input.to_path_buf()
        };
        let md = file_metadata(&read(&f));
        assert!(!md.contains_key(METADATA_KEY), "{fname}: still packed");
        for (k, v) in file_metadata(&read(&in_file)) {
            assert_eq!(md.get(&k), Some(&v), "{fname}: metadata `{k}` lost");
        }
    }
    let again = restored.parent().unwrap().join("again");
    let again = if input.is_dir() {
        again
    } else {
        again.with_extension("safetensors")
    };
    quantize(restored, &again, &QuantizeOptions::default())
        .unwrap_or_else(|e| panic!("quantizing the restored checkpoint again: {e}"));
}

/// Sharded output: its index, then dequantize back to the original names, shapes and dtypes.
#[test]
fn sharded_round_trip() {
    let input = fixture("llama-f16");
    let in_index: Value =
        serde_json::from_slice(&read(&input.join(INDEX_FILE))).expect("input index");
    for (scheme, group, sdt) in [
        (Scheme::Int4Asym, GroupSize::Fixed(64), ScaleDtype::F16),
        (Scheme::Int8Sym, GroupSize::Fixed(7), ScaleDtype::F32),
    ] {
        let ctx = format!("{scheme:?} {group} {sdt:?}");
        let tmp = tempfile::tempdir().unwrap();
        let packed = tmp.path().join("packed");
        quantize(&input, &packed, &opts(scheme, group, sdt, 2)).unwrap();

        let index: Value =
            serde_json::from_slice(&read(&packed.join(INDEX_FILE))).expect("output index");
        let wm = index["weight_map"].as_object().expect("weight_map");
        let mut listed = BTreeMap::new();
        let mut data_total = 0u64;
        for f in safetensors_files(&packed) {
            let fname = f.file_name().unwrap().to_string_lossy().into_owned();
            let bytes = read(&f);
            let st = SafeTensors::deserialize(&bytes).unwrap();
            let tensor_bytes: usize = st.tensors().iter().map(|(_, v)| v.data().len()).sum();
            let after_header = bytes.len() - 8 - header_len(&bytes);
            assert_eq!(
                tensor_bytes, after_header,
                "{ctx}: {fname}: data section is not exactly the tensors"
            );
            data_total += tensor_bytes as u64;
            for name in st.names() {
                listed.insert(name.to_string(), Value::from(fname.clone()));
            }
        }
        let wm: BTreeMap<String, Value> = wm.clone().into_iter().collect();
        assert_eq!(wm, listed, "{ctx}: weight_map vs shard contents");
        assert_eq!(
            index["metadata"]["total_size"],
            Value::from(data_total),
            "{ctx}: metadata.total_size"
        );
        // Other index metadata entries are kept.
        for (k, v) in in_index["metadata"].as_object().unwrap() {
            if k != "total_size" {
                assert_eq!(&index["metadata"][k], v, "{ctx}: index metadata `{k}`");
            }
        }

        let restored = tmp.path().join("restored");
        check_dequantize(&input, &packed, &restored);
        let r_index: Value =
            serde_json::from_slice(&read(&restored.join(INDEX_FILE))).expect("restored index");
        let orig_wm: BTreeMap<String, Value> = in_index["weight_map"]
            .as_object()
            .unwrap()
            .clone()
            .into_iter()
            .collect();
        let r_wm: BTreeMap<String, Value> = r_index["weight_map"]
            .as_object()
            .unwrap()
            .clone()
            .into_iter()
            .collect();
        assert_eq!(r_wm, orig_wm, "{ctx}: restored weight_map");
        assert_eq!(
            r_index["metadata"]["total_size"], in_index["metadata"]["total_size"],
            "{ctx}: restored total_size"
        );
    }
}

/// Dequantize of a single file with every awkward shape.
#[test]
fn odd_shapes_dequantize() {
    let input = fixture("odd-shapes.safetensors");
    for scheme in SCHEMES {
        let tmp = tempfile::tempdir().unwrap();
        let packed = tmp.path().join("packed.safetensors");
        quantize(
            &input,
            &packed,
            &opts(scheme, GroupSize::Fixed(7), ScaleDtype::F16, 2),
        )
        .unwrap();
        check_dequantize(&input, &packed, &tmp.path().join("restored.safetensors"));
    }
}

/// More than one engine chunk per tensor: 1 and 2 threads write identical bytes.
#[test]
fn parallel_equals_serial() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("big.safetensors");
    let mut rng = shrinkray::synth::Rng::new(1);
    let (rows, cols) = (300, 1000);
    let w = shrinkray::synth::weights(&mut rng, rows, cols, 0.02, &[], 1.0);
    assert!(w.len() > 4 * 65536);
    let w2 = shrinkray::synth::weights(&mut rng, 130, 1001, 0.02, &[3], 8.0);
    shrinkray::synth::write(
        &input,
        &[
            ("a".to_string(), Dtype::F32, vec![rows, cols], f32_bytes(&w)),
            ("b".to_string(), Dtype::F32, vec![130, 1001], f32_bytes(&w2)),
        ],
        &[],
    )
    .unwrap();
    for (scheme, group) in [
        (Scheme::Int4Asym, GroupSize::Fixed(64)),
        (Scheme::Int8Sym, GroupSize::Row),
        (Scheme::Int4Sym, GroupSize::Fixed(7)),
    ] {
        let mut files = Vec::new();
        let mut reports = Vec::new();
        for threads in [1, 2] {
            let out = tmp.path().join(format!("{scheme:?}-{threads}.safetensors"));
            reports.push(
                quantize(&input, &out, &opts(scheme, group, ScaleDtype::F16, threads)).unwrap(),
            );
            files.push(read(&out));
        }
        assert!(
            files[0] == files[1],
            "{scheme:?} {group}: 1 and 2 threads wrote different files (sizes {} and {})",
            files[0].len(),
            files[1].len()
        );
        for (r1, r2) in reports[0].tensors.iter().zip(&reports[1].tensors) {
            let (e1, e2) = (r1.error.as_ref().unwrap(), r2.error.as_ref().unwrap());
            assert!(rel_close(e1.rmse, e2.rmse, 1e-12), "{}: rmse", r1.name);
            assert_eq!(e1.max_abs_error, e2.max_abs_error, "{}: max abs", r1.name);
        }
        // And the file decodes to something close to the input.
        let out = tmp.path().join(format!("{scheme:?}-1.safetensors"));
        let d = decode_packed(&out);
        let (sse, _) = error_of(&w, &d["a"].values);
        let rms_x = (w.iter().map(|x| (*x as f64).powi(2)).sum::<f64>() / w.len() as f64).sqrt();
        let rmse = (sse / w.len() as f64).sqrt();
        assert!(rmse < 0.2 * rms_x, "{scheme:?}: rmse {rmse} vs rms {rms_x}");
    }
}

/// Awkward magnitudes: scales that round to F16/BF16 subnormals or to zero,
/// mins far from zero, outliers, negative zeros, each in its own tensor.
/// Whatever codes the quantizer picks, the report's error must be the error
/// of the file as FORMAT.md decodes it.
#[test]
fn awkward_values_error_matches_decoding() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("awkward.safetensors");
    let (rows, k) = (2, 48);
    let mut rng = shrinkray::synth::Rng::new(7);
    let mut tensors: Vec<(String, Vec<f32>)> = Vec::new();
    for (i, mag) in [1e-9f32, 1e-7, 1e-6, 3e-5, 1.0, 1000.0]
        .into_iter()
        .enumerate()
    {
        let w = shrinkray::synth::weights(&mut rng, rows, k, 1.0, &[], 1.0);
        tensors.push((format!("mag{i}"), w.iter().map(|x| x * mag).collect()));
    }
    // Far from zero with a tiny spread (asymmetric mins matter).
    let w = shrinkray::synth::weights(&mut rng, rows, k, 1.0, &[], 1.0);
    tensors.push((
        "offset".into(),
        w.iter().map(|x| 100.0 + x * 1e-3).collect(),
    ));
    // Negative zeros and one outlier per row.
    tensors.push((
        "outlier".into(),
        (0..rows * k)
            .map(|i| if i % k == 5 { -50.0 } else { -0.0 })
            .collect(),
    ));
    let raw: Vec<_> = tensors
        .iter()
        .map(|(n, v)| (n.clone(), Dtype::F32, vec![rows, k], f32_bytes(v)))
        .collect();
    shrinkray::synth::write(&input, &raw, &[]).unwrap();
    let mut written = 0;
    for scheme in SCHEMES {
        for sdt in [ScaleDtype::F16, ScaleDtype::BF16, ScaleDtype::F32] {
            for group in [GroupSize::Fixed(16), GroupSize::Row] {
                let ctx = format!("{scheme:?} {group} {sdt:?}");
                let out = tmp
                    .path()
                    .join(format!("{scheme:?}-{group}-{sdt:?}.safetensors"));
                let report = match quantize(&input, &out, &opts(scheme, group, sdt, 1)) {
                    Ok(r) => r,
                    // Refusing is allowed; writing a partial file is not.
                    Err(e) => {
                        assert!(
                            !out.exists(),
                            "{ctx}: failed ({e}) but left {}",
                            out.display()
                        );
                        continue;
                    }
                };
                written += 1;
                let d = decode_packed(&out);
                for (row, (name, v)) in report.tensors.iter().zip(&tensors) {
                    assert_eq!(&row.name, name);
                    let (sse, max) = error_of(v, &d[name].values);
                    let e = row.error.as_ref().unwrap();
                    let rmse = (sse / v.len() as f64).sqrt();
                    assert!(
                        rel_close(rmse, e.rmse, 1e-6),
                        "{ctx}: {name}: rmse from the decoded file {rmse:e}, report {:e}",
                        e.rmse
                    );
                    assert!(
                        within_one_ulp(max, e.max_abs_error as f32),
                        "{ctx}: {name}: max abs error from the decoded file {max:e}, report {:e}",
                        e.max_abs_error
                    );
                    assert!(
                        d[name].values.iter().all(|x| x.is_finite()),
                        "{ctx}: {name}: non-finite decoded value"
                    );
                }
            }
        }
    }
    assert_eq!(written, 24, "every configuration fits these values");
}
