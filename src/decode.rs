//! Reading packed files: finding each quantized tensor's codes, scales and
//! mins, checking them against the format, and decoding them to f32.
//!
//! The decoding here is written from the format description alone and
//! shares no arithmetic with the kernels, so `verify` can catch writer bugs.

use std::borrow::Cow;
use std::collections::HashSet;

use safetensors::Dtype;
use shrinkray_kernels::{QuantFormat, ScaleDtype, Scheme};

use crate::checkpoint::{is_quantizable, Checkpoint, TensorEntry};
use crate::format::{
    mins_name, qweight_name, scales_name, super_mins_name, super_scales_name, PackedMeta,
    PackedTensor,
};
use crate::plan::{scale_safetensors_dtype, MLX_METADATA_KEY};
use shrinkray_kernels::mlx::MlxFormat;

/// A packed file breaks the format.
#[derive(Debug, thiserror::Error)]
#[error("{file}: tensor `{tensor}`: {reason}")]
pub struct FormatError {
    /// The packed file.
    pub file: String,
    /// The tensor concerned.
    pub tensor: String,
    /// The rule broken.
    pub reason: String,
}

/// One quantized tensor of a packed checkpoint, checked against the format.
#[derive(Clone, Debug)]
pub struct Quantized<'a> {
    /// The original tensor's name.
    pub name: String,
    /// Its metadata entry.
    pub info: PackedTensor,
    /// Its quantization format.
    pub fmt: QuantFormat,
    /// The original dtype.
    pub dtype: Dtype,
    /// The original shape.
    pub shape: Vec<usize>,
    /// Rows.
    pub rows: usize,
    /// Elements per row.
    pub k: usize,
    /// Index of the shard holding it.
    pub shard: usize,
    /// The codes tensor.
    pub codes: &'a TensorEntry,
    /// The scales tensor.
    pub scales: &'a TensorEntry,
    /// The mins tensor (asymmetric schemes).
    pub mins: Option<&'a TensorEntry>,
    /// The super-group scale factors (version 2, double quantization).
    pub super_scales: Option<&'a TensorEntry>,
    /// The super-group min factors (version 2, asymmetric schemes).
    pub super_mins: Option<&'a TensorEntry>,
}

impl<'a> Quantized<'a> {
    /// Its stored tensors: codes, scales, then those present of mins, super scales, super mins.
    pub fn entries(&self) -> impl Iterator<Item = &'a TensorEntry> {
        [
            Some(self.codes),
            Some(self.scales),
            self.mins,
            self.super_scales,
            self.super_mins,
        ]
        .into_iter()
        .flatten()
    }

    /// Bytes stored for this tensor (codes + scales + mins, and super-group factors).
    pub fn stored_bytes(&self) -> u64 {
        self.entries().map(|t| t.nbytes() as u64).sum()
    }

    /// Reads its stored bytes from the checkpoint it was listed from.
    pub fn read(&self, ckpt: &'a Checkpoint) -> crate::Result<StoredRows<'a>> {
        let shard = &ckpt.shards[self.shard];
        let get = |t: Option<&TensorEntry>| -> crate::Result<Cow<'a, [u8]>> {
            Ok(match t {
                Some(t) => shard.data(t)?,
                None => Cow::Borrowed(&[][..]),
            })
        };
        Ok(StoredRows {
            fmt: self.fmt,
            k: self.k,
            parts: [
                get(Some(self.codes))?,
                get(Some(self.scales))?,
                get(self.mins)?,
                get(self.super_scales)?,
                get(self.super_mins)?,
            ],
        })
    }
}

/// The stored bytes of a quantized tensor, ready to decode by rows.
#[derive(Debug)]
pub struct StoredRows<'a> {
    fmt: QuantFormat,
    k: usize,
    /// Codes, scales, mins, super scales, super mins (empty when absent).
    parts: [Cow<'a, [u8]>; 5],
}

impl StoredRows<'_> {
    /// Decodes rows `r0..r1` into `out` (`(r1 − r0) × k` values).
    pub fn decode(&self, r0: usize, r1: usize, out: &mut [f32]) {
        let (f, k) = (&self.fmt, self.k);
        let per_row = f.part_bytes_per_row(k);
        let s: [&[u8]; 5] =
            std::array::from_fn(|i| &self.parts[i][r0 * per_row[i]..r1 * per_row[i]]);
        decode_rows(f, k, s, out);
    }
}

/// One tensor of shrinkray's MLX output, checked against MLX's layout.
#[derive(Clone, Debug)]
pub struct MlxQuantized<'a> {
    /// The original tensor's name (`<layer>.weight`).
    pub name: String,
    /// Bits, group size, and the dtype of scales and biases.
    pub fmt: MlxFormat,
    /// The original dtype.
    pub dtype: Dtype,
    /// The original shape.
    pub shape: Vec<usize>,
    /// Rows.
    pub rows: usize,
    /// Elements per row.
    pub k: usize,
    /// Index of the shard holding it.
    pub shard: usize,
    /// The packed words (`<layer>.weight`, U32).
    pub codes: &'a TensorEntry,
    /// `<layer>.scales`.
    pub scales: &'a TensorEntry,
    /// `<layer>.biases`.
    pub biases: &'a TensorEntry,
}

impl MlxQuantized<'_> {
    /// Bytes stored for this tensor (words + scales + biases).
    pub fn stored_bytes(&self) -> u64 {
        (self.codes.nbytes() + self.scales.nbytes() + self.biases.nbytes()) as u64
    }
}

/// A tensor of a packed checkpoint, as the original model knew it.
#[derive(Clone, Debug)]
pub enum Item<'a> {
    /// Quantized.
    Quantized(Box<Quantized<'a>>),
    /// Quantized in MLX's affine layout.
    Mlx(Box<MlxQuantized<'a>>),
    /// Stored as is.
    Kept {
        /// Index of the shard holding it.
        shard: usize,
        /// The tensor.
        entry: &'a TensorEntry,
    },
}

impl Item<'_> {
    /// The original tensor name.
    pub fn name(&self) -> &str {
        match self {
            Item::Quantized(q) => &q.name,
            Item::Mlx(q) => &q.name,
            Item::Kept { entry, .. } => &entry.name,
        }
    }
}

/// Lists the tensors of a packed checkpoint (or of a plain one: all kept), in file order.
pub fn read_items(ckpt: &Checkpoint) -> Result<Vec<Item<'_>>, FormatError> {
    let mut items = Vec::new();
    for (si, shard) in ckpt.shards.iter().enumerate() {
        let file = shard.path.display().to_string();
        let err = |tensor: &str, reason: String| FormatError {
            file: file.clone(),
            tensor: tensor.to_string(),
            reason,
        };
        let meta = match PackedMeta::from_metadata(&shard.metadata) {
            None => PackedMeta::default(),
            Some(m) => m.map_err(|r| err("__metadata__", r))?,
        };
        let mut pieces: HashSet<String> = HashSet::new();
        let mut mlx = std::collections::HashMap::new();
        for (name, fmt) in mlx_formats(&shard.metadata).map_err(|r| err(MLX_METADATA_KEY, r))? {
            let q = check_mlx(ckpt, si, &name, fmt).map_err(|r| err(&name, r))?;
            pieces.insert(q.scales.name.clone());
            pieces.insert(q.biases.name.clone());
            mlx.insert(q.codes.name.clone(), q);
        }
        let mut quantized = std::collections::HashMap::new();
        for (name, info) in &meta.tensors {
            let q = check_quantized(ckpt, si, name, info).map_err(|r| err(name, r))?;
            for t in q.entries() {
                pieces.insert(t.name.clone());
            }
            quantized.insert(q.codes.name.clone(), q);
        }
        for t in &shard.tensors {
            if let Some(q) = mlx.remove(&t.name) {
                items.push(Item::Mlx(Box::new(q)));
            } else if let Some(q) = quantized.remove(&t.name) {
                items.push(Item::Quantized(Box::new(q)));
            } else if !pieces.contains(&t.name) {
                items.push(Item::Kept {
                    shard: si,
                    entry: t,
                });
            }
        }
    }
    Ok(items)
}

/// A tensor of shrinkray's MLX output as its metadata records it: name, format, original dtype.
pub type MlxEntry = (String, (MlxFormat, Dtype));

/// The per-tensor formats recorded under [`MLX_METADATA_KEY`] (none without the key).
pub fn mlx_formats(
    md: &std::collections::BTreeMap<String, String>,
) -> Result<Vec<MlxEntry>, String> {
    let Some(raw) = md.get(MLX_METADATA_KEY) else {
        return Ok(Vec::new());
    };
    let v: serde_json::Value = serde_json::from_str(raw).map_err(|e| format!("not JSON: {e}"))?;
    let tensors = v["tensors"]
        .as_object()
        .ok_or_else(|| "no `tensors` object".to_string())?;
    let mut out = Vec::new();
    for (name, t) in tensors {
        let num = |k: &str| {
            t[k].as_u64()
                .ok_or_else(|| format!("`{name}`: no number `{k}`"))
        };
        let (bits, group) = (num("bits")? as u32, num("group_size")? as usize);
        if !(bits == 4 || bits == 8) || ![32, 64, 128].contains(&group) {
            return Err(format!("`{name}`: bits {bits}, group size {group}"));
        }
        let dtype = t["dtype"]
            .as_str()
            .and_then(crate::format::parse_dtype)
            .filter(|d| is_quantizable(*d))
            .ok_or_else(|| format!("`{name}`: dtype is not F32, F16 or BF16"))?;
        let sdt = match dtype {
            Dtype::F16 => ScaleDtype::F16,
            Dtype::BF16 => ScaleDtype::BF16,
            _ => ScaleDtype::F32,
        };
        out.push((
            name.clone(),
            (
                MlxFormat {
                    bits,
                    group,
                    dtype: sdt,
                },
                dtype,
            ),
        ));
    }
    Ok(out)
}

fn check_mlx<'a>(
    ckpt: &'a Checkpoint,
    si: usize,
    name: &str,
    (fmt, dtype): (MlxFormat, Dtype),
) -> Result<MlxQuantized<'a>, String> {
    let shard = &ckpt.shards[si];
    let base = name.strip_suffix(".weight").unwrap_or(name);
    let get = |n: String| {
        shard
            .tensor(&n)
            .ok_or_else(|| format!("`{n}` is missing from this file"))
    };
    let (codes, scales, biases) = (
        get(format!("{base}.weight"))?,
        get(format!("{base}.scales"))?,
        get(format!("{base}.biases"))?,
    );
    let (&groups, lead) = scales
        .shape
        .split_last()
        .ok_or_else(|| format!("`{}` is a scalar", scales.name))?;
    let k = groups
        .checked_mul(fmt.group)
        .ok_or_else(|| "shape overflows".to_string())?;
    let rows = lead
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| "shape overflows".to_string())?;
    let sdt = scale_safetensors_dtype(fmt.dtype);
    let want = |t: &TensorEntry, dt: Dtype, last: usize| {
        let shape: Vec<usize> = [lead, &[last]].concat();
        if t.dtype == dt && t.shape == shape {
            Ok(())
        } else {
            Err(format!(
                "`{}` is {} {:?}, MLX's layout gives {dt} {shape:?}",
                t.name, t.dtype, t.shape
            ))
        }
    };
    want(codes, Dtype::U32, k * fmt.bits as usize / 32)?;
    want(biases, sdt, groups)?;
    if scales.dtype != sdt {
        return Err(format!("`{}` is {}, not {sdt}", scales.name, scales.dtype));
    }
    Ok(MlxQuantized {
        name: name.to_string(),
        fmt,
        dtype,
        shape: [lead, &[k]].concat(),
        rows,
        k,
        shard: si,
        codes,
        scales,
        biases,
    })
}

fn check_quantized<'a>(
    ckpt: &'a Checkpoint,
    si: usize,
    name: &str,
    info: &PackedTensor,
) -> Result<Quantized<'a>, String> {
    let shard = &ckpt.shards[si];
    let fmt = info.quant_format().ok_or_else(|| {
        format!(
            "unknown quantization ({} bits={} symmetric={} group_size={} scale_dtype={} scale_bits={:?} super_group={:?})",
            info.scheme,
            info.bits,
            info.symmetric,
            info.group_size,
            info.scale_dtype,
            info.scale_bits,
            info.super_group
        )
    })?;
    let dtype = info
        .original_dtype()
        .filter(|d| is_quantizable(*d))
        .ok_or_else(|| format!("original dtype `{}` is not F32, F16 or BF16", info.dtype))?;
    let (&k, lead) = info
        .shape
        .split_last()
        .ok_or_else(|| "original shape is a scalar".to_string())?;
    let rows = lead
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| "original shape overflows".to_string())?;
    let find = |n: String, dtype: Dtype, last: usize| -> Result<&'a TensorEntry, String> {
        let t = shard
            .tensor(&n)
            .ok_or_else(|| format!("`{n}` is missing from this file"))?;
        let want: Vec<usize> = [lead, &[last]].concat();
        if t.dtype != dtype || t.shape != want {
            return Err(format!(
                "`{n}` is {} {:?}, the format says {dtype} {want:?}",
                t.dtype, t.shape
            ));
        }
        Ok(t)
    };
    let cdt = if fmt.scheme == Scheme::Int8Sym {
        Dtype::I8
    } else {
        Dtype::U8
    };
    let sdt = scale_safetensors_dtype(fmt.scale_dtype);
    // Version 2 (double quantization): scales and mins are U8 bit fields, and
    // the super-group factors have the scale dtype.
    let (pdt, plast) = match fmt.dq {
        None => (sdt, fmt.groups_per_row(k)),
        Some(d) => (
            Dtype::U8,
            (fmt.groups_per_row(k) * d.bits as usize).div_ceil(8),
        ),
    };
    let asym = !fmt.scheme.symmetric();
    let dq = fmt.dq.is_some();
    let optional = |present: bool, n: String, dt: Dtype, last: usize, why: &str| {
        if present {
            find(n, dt, last).map(Some)
        } else if shard.tensor(&n).is_some() {
            Err(format!("`{n}` present {why}"))
        } else {
            Ok(None)
        }
    };
    let codes = find(qweight_name(name), cdt, fmt.code_bytes_per_row(k))?;
    let scales = find(scales_name(name), pdt, plast)?;
    let mins = optional(asym, mins_name(name), pdt, plast, "for a symmetric scheme")?;
    let supers = fmt
        .groups_per_row(k)
        .div_ceil(fmt.dq.map_or(1, |d| d.groups));
    let super_scales = optional(
        dq,
        super_scales_name(name),
        sdt,
        supers,
        "without `scale_bits`",
    )?;
    let super_mins = optional(
        dq && asym,
        super_mins_name(name),
        sdt,
        supers,
        "for a symmetric scheme or without `scale_bits`",
    )?;
    Ok(Quantized {
        name: name.to_string(),
        info: info.clone(),
        fmt,
        dtype,
        shape: info.shape.clone(),
        rows,
        k,
        shard: si,
        codes,
        scales,
        mins,
        super_scales,
        super_mins,
    })
}

/// Reads stored scale `i` of `bytes`.
fn scale_at(dt: ScaleDtype, bytes: &[u8], i: usize) -> f32 {
    match dt {
        ScaleDtype::F16 => half::f16::from_le_bytes([bytes[2 * i], bytes[2 * i + 1]]).to_f32(),
        ScaleDtype::BF16 => half::bf16::from_le_bytes([bytes[2 * i], bytes[2 * i + 1]]).to_f32(),
        ScaleDtype::F32 => f32::from_le_bytes(bytes[4 * i..4 * i + 4].try_into().expect("4 bytes")),
    }
}

/// Reads the `bits`-bit field `i` of a row's packed scale or min codes (LSB first).
fn field(bytes: &[u8], bits: usize, i: usize) -> u32 {
    let mut v = 0u32;
    for b in 0..bits {
        let at = i * bits + b;
        v |= u32::from((bytes[at / 8] >> (at % 8)) & 1) << b;
    }
    v
}

/// Decodes whole rows of `k` elements into `out` (`out.len()` = rows × k).
///
/// `parts` are the codes, scales, mins, super-group scale factors and
/// super-group min factors of the same rows, laid out as in the file (empty
/// when the format has none).
pub fn decode_rows(fmt: &QuantFormat, k: usize, parts: [&[u8]; 5], out: &mut [f32]) {
    if k == 0 {
        return;
    }
    let [codes, scales, mins, super_scales, super_mins] = parts;
    let p = fmt.code_bytes_per_row(k);
    let g = fmt.groups_per_row(k);
    let asym = !fmt.scheme.symmetric();
    let row_bytes = |n: usize| match fmt.dq {
        Some(d) => (n * d.bits as usize).div_ceil(8),
        None => 0,
    };
    for (r, row) in out.chunks_exact_mut(k).enumerate() {
        // Scale and min are read once per group, not once per element.
        for (gj, group) in row.chunks_mut(fmt.group).enumerate() {
            let gi = r * g + gj;
            let (scale, min) = match fmt.dq {
                None => (
                    scale_at(fmt.scale_dtype, scales, gi),
                    if asym {
                        scale_at(fmt.scale_dtype, mins, gi)
                    } else {
                        0.0
                    },
                ),
                Some(d) => {
                    let bits = d.bits as usize;
                    let si = r * g.div_ceil(d.groups) + gj / d.groups;
                    let at = r * row_bytes(g);
                    let cs = field(&scales[at..at + row_bytes(g)], bits, gj);
                    // Symmetric schemes: a signed (two's complement) scale code.
                    let cs = if !asym && cs >= 1 << (bits - 1) {
                        cs as i32 - (1 << bits)
                    } else {
                        cs as i32
                    };
                    let scale = cs as f32 * scale_at(fmt.scale_dtype, super_scales, si);
                    let min = if asym {
                        let cm = field(&mins[at..at + row_bytes(g)], bits, gj);
                        -(cm as f32 * scale_at(fmt.scale_dtype, super_mins, si))
                    } else {
                        0.0
                    };
                    (scale, min)
                }
            };
            for (jj, w) in group.iter_mut().enumerate() {
                let j = gj * fmt.group + jj;
                let c = if fmt.scheme.bits() == 8 {
                    codes[r * p + j]
                } else {
                    let byte = codes[r * p + j / 2];
                    if j.is_multiple_of(2) {
                        byte & 0x0F
                    } else {
                        byte >> 4
                    }
                };
                *w = match fmt.scheme {
                    Scheme::Int8Sym => f32::from(c as i8) * scale,
                    Scheme::Int4Sym => (f32::from(c) - 8.0) * scale,
                    Scheme::Int8Asym | Scheme::Int4Asym => f32::from(c) * scale + min,
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shrinkray_kernels::DoubleQuant;

    fn f16s(v: &[f32]) -> Vec<u8> {
        v.iter()
            .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
            .collect()
    }

    /// A version-2 row worked out by hand from the README's description:
    /// 3-bit fields packed LSB first, one of them across a byte boundary.
    #[test]
    fn double_quantized_rows_decode_as_the_format_describes() {
        let fmt = QuantFormat {
            scheme: Scheme::Int4Asym,
            group: 2,
            scale_dtype: ScaleDtype::F16,
            dq: Some(DoubleQuant { bits: 3, groups: 2 }),
        };
        // Codes 1 2 | 3 4 | 5 15; scale codes 7 1 5; min codes 2 0 6;
        // super-groups {0, 1} and {2}: scale factors 0.5, 0.25; min factors 1, 2.
        let codes = [0x21, 0x43, 0xF5];
        let scales = [0b0100_1111, 0b1];
        let mins = [0b1000_0010, 0b1];
        let (ss, sm) = (f16s(&[0.5, 0.25]), f16s(&[1.0, 2.0]));
        let mut out = [0.0f32; 6];
        decode_rows(&fmt, 6, [&codes, &scales, &mins, &ss, &sm], &mut out);
        assert_eq!(out, [1.5, 5.0, 1.5, 2.0, -5.75, 6.75]);

        // Symmetric: signed scale codes −3 (0b101) and 2 (0b010), one group per super-group.
        let fmt = QuantFormat {
            scheme: Scheme::Int4Sym,
            group: 2,
            scale_dtype: ScaleDtype::F16,
            dq: Some(DoubleQuant { bits: 3, groups: 1 }),
        };
        let mut out = [0.0f32; 4];
        let ss = f16s(&[0.5, 1.0]);
        decode_rows(
            &fmt,
            4,
            [&[0xF0, 0x98], &[0b0001_0101], &[], &ss, &[]],
            &mut out,
        );
        assert_eq!(out, [12.0, -10.5, 0.0, 2.0]);
    }
}
