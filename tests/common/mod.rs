//! An independent reader of the packed format (versions 1 and 2), written from
//! `FORMAT.md` and the README's version-2 section alone (it shares no code with `src/decode.rs`, `src/verify.rs`
//! or the kernels): it opens files with the `safetensors` crate, checks every
//! structural rule of the format and dequantizes with the rules of the spec
//! in f32 arithmetic.
//!
//! Every format violation is a panic naming the file and tensor.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use safetensors::SafeTensors;
use serde_json::Value;

/// The metadata key of the packed format.
pub const METADATA_KEY: &str = "shrinkray";
/// The index file of a sharded checkpoint.
pub const INDEX_FILE: &str = "model.safetensors.index.json";

/// How one original tensor is stored in a packed file.
#[derive(Clone, Debug)]
pub struct QuantInfo {
    /// `int8`, `int8-asym`, `int4` or `int4-asym`, as written in the metadata.
    pub scheme: String,
    /// Code bits, as written in the metadata.
    pub bits: u32,
    /// Symmetric scheme, as written in the metadata.
    pub symmetric: bool,
    /// Group size `g`, as written in the metadata.
    pub group_size: usize,
    /// Dtype of scales and mins (`F16`, `BF16`, `F32`), as written in the metadata.
    pub scale_dtype: String,
    /// Raw bytes of `NAME.qweight`.
    pub qweight: Vec<u8>,
    /// Shape of `NAME.qweight`.
    pub qweight_shape: Vec<usize>,
    /// Raw bytes of `NAME.scales`.
    pub scales_raw: Vec<u8>,
    /// Raw bytes of `NAME.mins` (asymmetric schemes).
    pub mins_raw: Option<Vec<u8>>,
    /// Scales as f32, rows × G.
    pub scales: Vec<f32>,
    /// Mins as f32, rows × G (asymmetric schemes).
    pub mins: Option<Vec<f32>>,
    /// The unpacked integer codes, rows × K (int8 symmetric codes as i8 values, others as unsigned).
    pub codes: Vec<i32>,
    /// The whole metadata entry of the tensor.
    pub meta: Value,
}

/// One original tensor as read back from a packed checkpoint.
#[derive(Clone, Debug)]
pub struct Decoded {
    /// Original name.
    pub name: String,
    /// The output file that holds it (file name only).
    pub file: String,
    /// Original dtype (`F32`, `BF16`, …).
    pub dtype: String,
    /// Original shape.
    pub shape: Vec<usize>,
    /// Values in f32: dequantized for quantized tensors, converted for kept
    /// float tensors, empty for kept non-float tensors.
    pub values: Vec<f32>,
    /// Raw bytes of a kept tensor.
    pub kept: Option<Vec<u8>>,
    /// Storage details of a quantized tensor.
    pub quant: Option<QuantInfo>,
    /// Data bytes this tensor takes in the output (all its pieces).
    pub out_bytes: u64,
}

impl Decoded {
    /// Whether the tensor was quantized.
    pub fn is_quantized(&self) -> bool {
        self.quant.is_some()
    }
}

/// The safetensors files of a checkpoint: the file itself, or the `*.safetensors` files of a directory, sorted.
pub fn safetensors_files(path: &Path) -> Vec<PathBuf> {
    if path.is_dir() {
        let mut v: Vec<PathBuf> = std::fs::read_dir(path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .map(|e| e.expect("dir entry").path())
            .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
            .collect();
        v.sort();
        v
    } else {
        vec![path.to_path_buf()]
    }
}

/// Reads a whole file.
pub fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The `__metadata__` of a safetensors file (empty when absent).
pub fn file_metadata(bytes: &[u8]) -> HashMap<String, String> {
    let (_, md) = SafeTensors::read_metadata(bytes).expect("valid safetensors header");
    md.metadata().clone().unwrap_or_default()
}

/// Header length (the JSON, without the 8-byte prefix) of a safetensors file.
pub fn header_len(bytes: &[u8]) -> usize {
    let (n, _) = SafeTensors::read_metadata(bytes).expect("valid safetensors header");
    n
}

/// Whether `d` is one of the float dtypes the quantizer reads.
pub fn is_float(d: &str) -> bool {
    matches!(d, "F32" | "F16" | "BF16")
}

/// Little-endian F32/F16/BF16 bytes as f32.
pub fn to_f32(dtype: &str, bytes: &[u8]) -> Vec<f32> {
    match dtype {
        "F32" => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        "F16" => bytes
            .chunks_exact(2)
            .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        "BF16" => bytes
            .chunks_exact(2)
            .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        other => panic!("not a float dtype: {other}"),
    }
}

/// f32 values as little-endian `dtype` bytes, rounding to nearest even.
pub fn from_f32(dtype: &str, values: &[f32]) -> Vec<u8> {
    match dtype {
        "F32" => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        "F16" => values
            .iter()
            .flat_map(|v| f16::from_f32(*v).to_le_bytes())
            .collect(),
        "BF16" => values
            .iter()
            .flat_map(|v| bf16::from_f32(*v).to_le_bytes())
            .collect(),
        other => panic!("not a float dtype: {other}"),
    }
}

/// One tensor of an original (unpacked) checkpoint.
#[derive(Clone, Debug)]
pub struct RawTensor {
    /// Name.
    pub name: String,
    /// The file that holds it (file name only).
    pub file: String,
    /// Dtype name.
    pub dtype: String,
    /// Shape.
    pub shape: Vec<usize>,
    /// Data bytes.
    pub data: Vec<u8>,
}

impl RawTensor {
    /// Elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// The values as f32 (float dtypes only).
    pub fn f32(&self) -> Vec<f32> {
        to_f32(&self.dtype, &self.data)
    }
}

/// Every tensor of a safetensors checkpoint (a file or a directory of shards), by name.
pub fn load_all(path: &Path) -> BTreeMap<String, RawTensor> {
    let mut out = BTreeMap::new();
    for f in safetensors_files(path) {
        let bytes = read(&f);
        let st = SafeTensors::deserialize(&bytes)
            .unwrap_or_else(|e| panic!("{}: not a safetensors file: {e}", f.display()));
        let file = f.file_name().unwrap().to_string_lossy().into_owned();
        for (name, view) in st.tensors() {
            let t = RawTensor {
                name: name.clone(),
                file: file.clone(),
                dtype: view.dtype().to_string(),
                shape: view.shape().to_vec(),
                data: view.data().to_vec(),
            };
            assert!(
                out.insert(name.clone(), t).is_none(),
                "{name} appears in two files of {}",
                path.display()
            );
        }
    }
    out
}

/// One tensor of a checkpoint (file or shard directory).
pub fn load_raw(path: &Path, name: &str) -> RawTensor {
    load_all(path)
        .remove(name)
        .unwrap_or_else(|| panic!("{}: no tensor {name}", path.display()))
}

/// An original F32/F16/BF16 tensor as f32.
pub fn load_f32(path: &Path, name: &str) -> Vec<f32> {
    load_raw(path, name).f32()
}

/// Names of the tensors of a checkpoint.
pub fn tensor_names(path: &Path) -> BTreeSet<String> {
    load_all(path).into_keys().collect()
}

/// Whether the default rules quantize a tensor: float, at least 2 dimensions, not empty.
pub fn default_rules_quantize(dtype: &str, shape: &[usize]) -> bool {
    is_float(dtype) && shape.len() >= 2 && shape.iter().product::<usize>() > 0
}

fn get<'a>(v: &'a Value, key: &str, ctx: &str) -> &'a Value {
    v.get(key)
        .unwrap_or_else(|| panic!("{ctx}: metadata entry has no `{key}`"))
}

fn scheme_props(scheme: &str) -> (u32, bool) {
    match scheme {
        "int8" => (8, true),
        "int8-asym" => (8, false),
        "int4" => (4, true),
        "int4-asym" => (4, false),
        other => panic!("unknown scheme `{other}`"),
    }
}

fn take_piece<'a>(
    st: &SafeTensors<'a>,
    claimed: &mut BTreeSet<String>,
    name: &str,
    ctx: &str,
) -> (String, Vec<usize>, &'a [u8]) {
    let v = st
        .tensor(name)
        .unwrap_or_else(|e| panic!("{ctx}: missing `{name}`: {e}"));
    assert!(
        claimed.insert(name.to_string()),
        "{ctx}: `{name}` claimed twice"
    );
    (v.dtype().to_string(), v.shape().to_vec(), v.data())
}

/// Decodes one packed safetensors file.
pub fn decode_packed_file(path: &Path) -> BTreeMap<String, Decoded> {
    let bytes = read(path);
    let st = SafeTensors::deserialize(&bytes)
        .unwrap_or_else(|e| panic!("{}: not a safetensors file: {e}", path.display()));
    let file = path.file_name().unwrap().to_string_lossy().into_owned();
    let md = file_metadata(&bytes);
    let packed: Value = match md.get(METADATA_KEY) {
        Some(s) => serde_json::from_str(s)
            .unwrap_or_else(|e| panic!("{}: `{METADATA_KEY}` is not JSON: {e}", path.display())),
        None => serde_json::json!({"format": 1, "tensors": {}}),
    };
    // Version 2 adds double-quantized scales; a file without them is version 1.
    let version = packed.get("format").and_then(Value::as_u64);
    assert!(
        version == Some(1) || version == Some(2),
        "{}: format version {version:?}",
        path.display()
    );
    let entries = get(&packed, "tensors", &path.display().to_string())
        .as_object()
        .unwrap_or_else(|| panic!("{}: `tensors` is not an object", path.display()));

    let mut out = BTreeMap::new();
    let mut claimed = BTreeSet::new();
    for (name, e) in entries {
        let ctx = format!("{}: {name}", path.display());
        let scheme = get(e, "scheme", &ctx)
            .as_str()
            .unwrap_or_else(|| panic!("{ctx}: scheme is not a string"))
            .to_string();
        let (bits, symmetric) = scheme_props(&scheme);
        assert_eq!(
            get(e, "bits", &ctx).as_u64(),
            Some(bits as u64),
            "{ctx}: bits"
        );
        assert_eq!(
            get(e, "symmetric", &ctx).as_bool(),
            Some(symmetric),
            "{ctx}: symmetric"
        );
        let g = get(e, "group_size", &ctx)
            .as_u64()
            .unwrap_or_else(|| panic!("{ctx}: group_size")) as usize;
        assert!(g > 0, "{ctx}: group size 0");
        let dtype = get(e, "dtype", &ctx).as_str().unwrap().to_string();
        assert!(is_float(&dtype), "{ctx}: original dtype {dtype}");
        let shape: Vec<usize> = get(e, "shape", &ctx)
            .as_array()
            .unwrap_or_else(|| panic!("{ctx}: shape is not an array"))
            .iter()
            .map(|d| d.as_u64().expect("dimension") as usize)
            .collect();
        assert!(!shape.is_empty(), "{ctx}: quantized scalar");
        let scale_dtype = get(e, "scale_dtype", &ctx).as_str().unwrap().to_string();
        assert!(is_float(&scale_dtype), "{ctx}: scale dtype {scale_dtype}");
        // Version 2: `scale_bits` b and `super_group` S, both or neither.
        let dq = match (e.get("scale_bits"), e.get("super_group")) {
            (None, None) => None,
            (Some(b), Some(sg)) => {
                assert_eq!(version, Some(2), "{ctx}: double quantization in version 1");
                let (b, sg) = (b.as_u64().unwrap() as usize, sg.as_u64().unwrap() as usize);
                assert!(
                    (2..=8).contains(&b) && sg >= 1,
                    "{ctx}: scale_bits {b}, super_group {sg}"
                );
                Some((b, sg))
            }
            _ => panic!("{ctx}: scale_bits without super_group or the reverse"),
        };

        let k = *shape.last().unwrap();
        let rows: usize = shape[..shape.len() - 1].iter().product();
        let groups = k.div_ceil(g);
        let p = if bits == 8 { k } else { k.div_ceil(2) };
        let lead = &shape[..shape.len() - 1];
        let with_last = |n: usize| [lead, &[n]].concat();
        let scale_bytes = if scale_dtype == "F32" { 4 } else { 2 };

        let (qd, qs, qdata) = take_piece(&st, &mut claimed, &format!("{name}.qweight"), &ctx);
        let want_qd = if scheme == "int8" { "I8" } else { "U8" };
        assert_eq!(qd, want_qd, "{ctx}: qweight dtype");
        assert_eq!(qs, with_last(p), "{ctx}: qweight shape");
        assert_eq!(qdata.len(), rows * p, "{ctx}: qweight bytes");

        let (sd, ss, sdata) = take_piece(&st, &mut claimed, &format!("{name}.scales"), &ctx);
        let mins_name = format!("{name}.mins");
        let mut extra_bytes = 0;
        let (scales, mins_raw, mins) = match dq {
            None => {
                assert_eq!(sd, scale_dtype, "{ctx}: scales dtype");
                assert_eq!(ss, with_last(groups), "{ctx}: scales shape");
                assert_eq!(
                    sdata.len(),
                    rows * groups * scale_bytes,
                    "{ctx}: scales bytes"
                );
                let scales = to_f32(&sd, sdata);
                let (mins_raw, mins) = if symmetric {
                    assert!(
                        st.tensor(&mins_name).is_err(),
                        "{ctx}: symmetric scheme with a `.mins` tensor"
                    );
                    (None, None)
                } else {
                    let (md_, ms, mdata) = take_piece(&st, &mut claimed, &mins_name, &ctx);
                    assert_eq!(md_, scale_dtype, "{ctx}: mins dtype");
                    assert_eq!(ms, with_last(groups), "{ctx}: mins shape");
                    (Some(mdata.to_vec()), Some(to_f32(&md_, mdata)))
                };
                (scales, mins_raw, mins)
            }
            Some((b, sg)) => {
                // Codes packed LSB first per row; factors per super-group of sg groups.
                let per_row = (groups * b).div_ceil(8);
                let supers = groups.div_ceil(sg);
                assert_eq!(sd, "U8", "{ctx}: scale codes dtype");
                assert_eq!(ss, with_last(per_row), "{ctx}: scale codes shape");
                let (fd, fs, fdata) =
                    take_piece(&st, &mut claimed, &format!("{name}.super_scales"), &ctx);
                assert_eq!(fd, scale_dtype, "{ctx}: super_scales dtype");
                assert_eq!(fs, with_last(supers), "{ctx}: super_scales shape");
                let f = to_f32(&fd, fdata);
                extra_bytes += fdata.len();
                let field = |bytes: &[u8], r: usize, j: usize| -> u32 {
                    let row = &bytes[r * per_row..(r + 1) * per_row];
                    // Little-endian bit window over the bytes the field touches.
                    let first = j * b / 8;
                    let mut window = 0u32;
                    for (i, &byte) in row[first..row.len().min(first + 2)].iter().enumerate() {
                        window |= (byte as u32) << (8 * i);
                    }
                    let v = (window >> (j * b % 8)) & ((1 << b) - 1);
                    if j == groups - 1 {
                        let used = groups * b - 8 * (per_row - 1);
                        if used < 8 {
                            assert_eq!(
                                row[per_row - 1] >> used,
                                0,
                                "{ctx}: row {r}: padding bits not 0"
                            );
                        }
                    }
                    v
                };
                let mut scales = Vec::with_capacity(rows * groups);
                for r in 0..rows {
                    for j in 0..groups {
                        let c = field(sdata, r, j) as i32;
                        let c = if symmetric && c >= 1 << (b - 1) {
                            c - (1 << b)
                        } else {
                            c
                        };
                        if symmetric {
                            assert!(c > -(1 << (b - 1)), "{ctx}: scale code {c} out of range");
                        }
                        scales.push(c as f32 * f[r * supers + j / sg]);
                    }
                }
                let (mins_raw, mins) = if symmetric {
                    for n in [&mins_name, &format!("{name}.super_mins")] {
                        assert!(st.tensor(n).is_err(), "{ctx}: symmetric scheme with `{n}`");
                    }
                    (None, None)
                } else {
                    let (md_, ms, mdata) = take_piece(&st, &mut claimed, &mins_name, &ctx);
                    assert_eq!(md_, "U8", "{ctx}: min codes dtype");
                    assert_eq!(ms, with_last(per_row), "{ctx}: min codes shape");
                    let (gd, gs, gdata) =
                        take_piece(&st, &mut claimed, &format!("{name}.super_mins"), &ctx);
                    assert_eq!(gd, scale_dtype, "{ctx}: super_mins dtype");
                    assert_eq!(gs, with_last(supers), "{ctx}: super_mins shape");
                    let m = to_f32(&gd, gdata);
                    extra_bytes += gdata.len();
                    let mut mins = Vec::with_capacity(rows * groups);
                    for r in 0..rows {
                        for j in 0..groups {
                            mins.push(-(field(mdata, r, j) as f32 * m[r * supers + j / sg]));
                        }
                    }
                    (Some(mdata.to_vec()), Some(mins))
                };
                (scales, mins_raw, mins)
            }
        };

        let mut codes = Vec::with_capacity(rows * k);
        let mut values = Vec::with_capacity(rows * k);
        for r in 0..rows {
            let row = &qdata[r * p..(r + 1) * p];
            for j in 0..k {
                let c: i32 = match (bits, symmetric) {
                    (8, true) => {
                        let c = row[j] as i8 as i32;
                        assert!(c >= -127, "{ctx}: int8 code -128 at row {r}, element {j}");
                        c
                    }
                    (8, false) => row[j] as i32,
                    _ => {
                        let b = row[j / 2];
                        (if j % 2 == 0 { b & 0x0f } else { b >> 4 }) as i32
                    }
                };
                let gi = r * groups + j / g;
                let scale = scales[gi];
                let w = match (bits, symmetric) {
                    (8, true) => c as f32 * scale,
                    (4, true) => (c - 8) as f32 * scale,
                    _ => c as f32 * scale + mins.as_ref().unwrap()[gi],
                };
                codes.push(c);
                values.push(w);
            }
            if bits == 4 && k % 2 == 1 {
                assert_eq!(
                    row[p - 1] >> 4,
                    0,
                    "{ctx}: odd K = {k}: the last high nibble of row {r} is not 0"
                );
            }
        }
        let out_bytes =
            (qdata.len() + sdata.len() + mins_raw.as_ref().map_or(0, |m| m.len()) + extra_bytes)
                as u64;
        let d = Decoded {
            name: name.clone(),
            file: file.clone(),
            dtype,
            shape,
            values,
            kept: None,
            quant: Some(QuantInfo {
                scheme,
                bits,
                symmetric,
                group_size: g,
                scale_dtype,
                qweight: qdata.to_vec(),
                qweight_shape: qs,
                scales_raw: sdata.to_vec(),
                mins_raw,
                scales,
                mins,
                codes,
                meta: e.clone(),
            }),
            out_bytes,
        };
        out.insert(name.clone(), d);
    }

    for (name, view) in st.tensors() {
        if claimed.contains(&name) {
            continue;
        }
        assert!(
            !out.contains_key(&name),
            "{}: `{name}` is both a kept tensor and a quantized tensor",
            path.display()
        );
        let dtype = view.dtype().to_string();
        let data = view.data().to_vec();
        let values = if is_float(&dtype) {
            to_f32(&dtype, &data)
        } else {
            Vec::new()
        };
        out.insert(
            name.clone(),
            Decoded {
                name: name.clone(),
                file: file.clone(),
                dtype,
                shape: view.shape().to_vec(),
                values,
                out_bytes: data.len() as u64,
                kept: Some(data),
                quant: None,
            },
        );
    }
    out
}

/// Decodes a packed checkpoint: one file, or a directory of packed shards.
pub fn decode_packed(path: &Path) -> BTreeMap<String, Decoded> {
    let mut out = BTreeMap::new();
    for f in safetensors_files(path) {
        for (name, d) in decode_packed_file(&f) {
            let file = d.file.clone();
            if let Some(prev) = out.insert(name.clone(), d) {
                panic!("{name} is in both {} and {file}", prev.file);
            }
        }
    }
    out
}

/// Names of the kept (not quantized) tensors of a decoded checkpoint.
pub fn kept_names(decoded: &BTreeMap<String, Decoded>) -> Vec<String> {
    decoded
        .values()
        .filter(|d| d.kept.is_some())
        .map(|d| d.name.clone())
        .collect()
}

/// Names of the quantized tensors of a decoded checkpoint.
pub fn quantized_names(decoded: &BTreeMap<String, Decoded>) -> Vec<String> {
    decoded
        .values()
        .filter(|d| d.quant.is_some())
        .map(|d| d.name.clone())
        .collect()
}

/// Σ (x − x̂)² in f64 and max |x − x̂| in f32, with `x − x̂` computed in f32.
pub fn error_of(original: &[f32], decoded: &[f32]) -> (f64, f32) {
    assert_eq!(original.len(), decoded.len(), "element counts differ");
    let mut sse = 0f64;
    let mut max = 0f32;
    for (x, y) in original.iter().zip(decoded) {
        let e = x - y;
        sse += e as f64 * e as f64;
        max = max.max(e.abs());
    }
    (sse, max)
}

/// Whether two f32 values are equal or adjacent (1 ulp apart), for non-negative finite values.
pub fn within_one_ulp(a: f32, b: f32) -> bool {
    (a.to_bits() as i64 - b.to_bits() as i64).abs() <= 1
}
