//! `--target-bpw`: a format per tensor, from a fixed candidate set, that
//! minimises the parameter-weighted squared relative error of the whole
//! model under a size budget.
//!
//! 1. The plan without a budget says which tensors are quantized; those the
//!    user fixed (`--keep`, `--override`) and the kept ones are fixed costs.
//! 2. Each free tensor is measured under every candidate ([`CANDIDATES`]) on
//!    a sample of its rows (evenly spaced, about [`SAMPLE_ELEMS`] elements),
//!    with the run's own method (`--optimize`) and kernels: its squared
//!    relative error `e = ‖W − Ŵ‖² / ‖W‖²` on the sample, and its exact
//!    stored bytes for the whole tensor.
//! 3. The cost of a tensor is `n · e` (`n` its parameters). Every tensor
//!    starts at its cheapest candidate; then upgrades (moves to the next
//!    candidate on the lower convex hull of its bytes–cost points) are taken
//!    in order of cost removed per byte, while they fit the budget. This is
//!    the classic greedy for a multiple-choice knapsack: exact for the
//!    relaxed problem, and within one upgrade of the optimum.
//! 4. The last upgrade taken sets the price `λ` (cost removed per byte): every
//!    upgrade left would remove less per byte than `λ`, or no longer fits.
//!
//! The budget is `target_bpw · (all parameters) / 8` bytes of tensor data:
//! kept tensors count, file headers do not.

use std::collections::BTreeMap;

use rayon::prelude::*;
use serde::Serialize;
use shrinkray_kernels::{
    quantize_rows_by, DoubleQuant, ErrorStats, Isa, Method, QuantFormat, RowsOut, ScaleDtype,
    Scheme, Src,
};

use crate::checkpoint::Checkpoint;
use crate::engine::to_f32;
use crate::format::describe;
use crate::plan::{Plan, Rules};
use crate::units::{bytes, count, sci, Table};
use crate::{Error, Result};

/// Elements measured per tensor and candidate (whole rows, evenly spaced).
pub const SAMPLE_ELEMS: usize = 1 << 18;

/// The candidate formats: scheme, group size, scale-code bits (super-groups of 8).
pub const CANDIDATES: [(Scheme, usize, Option<u32>); 9] = [
    (Scheme::Int4Sym, 64, Some(6)),
    (Scheme::Int4Sym, 32, Some(6)),
    (Scheme::Int4Sym, 16, Some(5)),
    (Scheme::Int4Asym, 64, Some(6)),
    (Scheme::Int4Asym, 32, Some(6)),
    (Scheme::Int4Asym, 16, Some(6)),
    (Scheme::Int8Sym, 64, Some(6)),
    (Scheme::Int8Asym, 32, Some(6)),
    (Scheme::Int8Asym, 32, None),
];

/// The candidate formats with scales (or super-group factors) of `dt`.
pub fn candidates(dt: ScaleDtype) -> Vec<QuantFormat> {
    CANDIDATES
        .iter()
        .map(|&(scheme, group, bits)| QuantFormat {
            scheme,
            group,
            scale_dtype: dt,
            dq: bits.map(|bits| DoubleQuant { bits, groups: 8 }),
        })
        .collect()
}

/// One candidate as measured on one tensor.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Tried {
    /// The format.
    #[serde(skip)]
    pub fmt: QuantFormat,
    /// Its label (`int4-asym g32 dq6/8 F16`).
    pub format: String,
    /// Bytes it stores for the whole tensor.
    pub bytes: u64,
    /// Bits per weight of the tensor.
    pub bits_per_weight: f64,
    /// Squared relative error on the sample.
    pub rel_sq_error: f64,
    /// Whether it is on the lower convex hull (only those are ever chosen).
    pub on_hull: bool,
}

/// The choice for one tensor.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TensorChoice {
    /// Tensor name.
    pub name: String,
    /// Parameters.
    pub params: u64,
    /// Elements measured.
    pub sampled: u64,
    /// Every candidate, cheapest first.
    pub options: Vec<Tried>,
    /// Index of the chosen one in `options`.
    pub chosen: usize,
    /// The cost removed per byte by the next upgrade on the hull, if any
    /// (below `price`, or it did not fit).
    pub next_gain_per_byte: Option<f64>,
}

/// The allocation of a budget.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Allocation {
    /// The budget asked for (`--target-bpw 4.5`, `--target-size 3.50 GiB`).
    pub target: String,
    /// The budget in bytes of tensor data (for `--target-size`: less the headers).
    pub budget_bytes: u64,
    /// Bytes of tensors not allocated (kept, or fixed by --keep/--override).
    pub fixed_bytes: u64,
    /// Bytes of tensor data chosen, fixed ones included.
    pub chosen_bytes: u64,
    /// Bits per weight reached (tensor data over all parameters).
    pub achieved_bpw: f64,
    /// Parameter-weighted squared relative error of the allocated tensors, estimated on the samples.
    pub est_rel_sq_error: f64,
    /// The price `λ`: cost (parameters × squared relative error) removed per
    /// byte by the last upgrade taken (0 when none was).
    pub price: f64,
    /// Per allocated tensor, in checkpoint order.
    pub tensors: Vec<TensorChoice>,
}

impl Allocation {
    /// The chosen format of each allocated tensor.
    pub fn assigned(&self) -> BTreeMap<String, QuantFormat> {
        self.tensors
            .iter()
            .map(|t| (t.name.clone(), t.options[t.chosen].fmt))
            .collect()
    }
}

impl Allocation {
    /// The human-readable allocation: formats used, then per tensor (at most
    /// `top`, the largest first) the choice, the cheaper and the next option.
    pub fn render(&self, top: usize) -> String {
        let mut out = format!(
            "allocation for {}: {:.3} bpw of tensor data ({} of a {} budget; {} kept or fixed), estimated relative error {:.4} (RMS over parameters, on samples of ≤ {} elements per tensor)\n",
            self.target,
            self.achieved_bpw,
            bytes(self.chosen_bytes),
            bytes(self.budget_bytes),
            bytes(self.fixed_bytes),
            self.est_rel_sq_error.sqrt(),
            count(SAMPLE_ELEMS as u64),
        );
        out.push_str(&format!(
            "why: upgrades were taken by error removed per byte (parameters × squared relative error); the last one taken removed {} per byte, and each tensor's next upgrade removes less or did not fit\n",
            sci(self.price)
        ));
        let mut by: BTreeMap<&str, (u64, u64, u64)> = BTreeMap::new();
        for t in &self.tensors {
            let o = &t.options[t.chosen];
            let e = by.entry(&o.format).or_default();
            *e = (e.0 + 1, e.1 + t.params, e.2 + o.bytes);
        }
        let mut f = Table::new(&["format", "tensors", "params", "bytes", "bpw"]);
        for (name, (n, p, b)) in &by {
            f.row(vec![
                name.to_string(),
                n.to_string(),
                count(*p),
                bytes(*b),
                format!("{:.3}", *b as f64 * 8.0 / (*p).max(1) as f64),
            ]);
        }
        out.push_str(&f.render());
        let mut order: Vec<&TensorChoice> = self.tensors.iter().collect();
        order.sort_by(|a, b| b.params.cmp(&a.params).then(a.name.cmp(&b.name)));
        let mut t = Table::new(&[
            "tensor",
            "chosen",
            "bpw",
            "rel err",
            "one step cheaper (rel err)",
            "next step (rel err, gain/byte)",
        ]);
        for c in order.iter().take(top) {
            let o = &c.options[c.chosen];
            let hull: Vec<&Tried> = c.options.iter().filter(|o| o.on_hull).collect();
            let at = hull.iter().position(|h| h.format == o.format).unwrap_or(0);
            let cheaper = at
                .checked_sub(1)
                .map(|i| format!("{} ({:.4})", hull[i].format, hull[i].rel_sq_error.sqrt()))
                .unwrap_or_else(|| "-".into());
            let next = hull
                .get(at + 1)
                .map(|h| {
                    format!(
                        "{} ({:.4}, {})",
                        h.format,
                        h.rel_sq_error.sqrt(),
                        c.next_gain_per_byte.map_or("-".into(), sci)
                    )
                })
                .unwrap_or_else(|| "-".into());
            t.row(vec![
                c.name.clone(),
                o.format.clone(),
                format!("{:.3}", o.bits_per_weight),
                format!("{:.4}", o.rel_sq_error.sqrt()),
                cheaper,
                next,
            ]);
        }
        out.push_str(&t.render());
        if order.len() > top {
            out.push_str(&format!(
                "({} of {} tensors shown, the largest; all are in --json)\n",
                top,
                order.len()
            ));
        }
        out
    }
}

/// A size budget: bits per weight over all parameters, or total bytes of the output files.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Budget {
    /// `--target-bpw`: tensor data over all parameters (kept tensors count, headers do not).
    Bpw(f64),
    /// `--target-size`: the output files, headers included.
    Size(u64),
}

/// Every free tensor measured under every candidate: what [`choose`] allocates.
#[derive(Clone, Debug)]
pub struct Measurements {
    /// Parameters of the whole checkpoint.
    pub params: u64,
    /// Bytes of the tensors not allocated (kept, or fixed by --keep/--override).
    pub fixed_bytes: u64,
    /// The free tensors, in checkpoint order.
    pub tensors: Vec<TensorChoice>,
}

/// Measures every free tensor of `plan`'s checkpoint under every candidate;
/// `plan` is the plan without a budget.
pub fn measure_all(
    ckpt: &Checkpoint,
    plan: &Plan,
    rules: &Rules,
    isa: Isa,
) -> Result<Measurements> {
    let cands = candidates(rules.scale_dtype);
    let user_fixed = |name: &str| {
        rules.keep.iter().any(|p| p.is_match(name))
            || rules.overrides.iter().any(|o| o.pattern.is_match(name))
    };
    let (free, fixed): (Vec<_>, Vec<_>) = plan
        .tensors()
        .partition(|t| t.format().is_some() && !user_fixed(&t.entry.name));
    let tensors = free
        .par_iter()
        .map(|t| measure(ckpt, t, &cands, rules.optimize, isa))
        .collect::<Result<Vec<_>>>()?;
    Ok(Measurements {
        params: plan.tensors().map(|t| t.params()).sum(),
        fixed_bytes: fixed.iter().map(|t| t.out_bytes()).sum(),
        tensors,
    })
}

/// Allocates `data_budget` bytes of tensor data (fixed tensors included) over
/// the measured tensors; `budget` is what the user asked for, for the report.
pub fn choose(m: &Measurements, budget: Budget, data_budget: u64) -> Result<Allocation> {
    let mut tensors = m.tensors.clone();
    for t in &mut tensors {
        t.chosen = t
            .options
            .iter()
            .position(|o| o.on_hull)
            .expect("the cheapest is on the hull");
    }
    let cheapest: u64 = tensors.iter().map(|t| t.options[t.chosen].bytes).sum();
    let asked = match budget {
        Budget::Bpw(x) => format!("--target-bpw {x}"),
        Budget::Size(s) => format!("--target-size {}", bytes(s)),
    };
    if m.fixed_bytes + cheapest > data_budget {
        let floor = (m.fixed_bytes + cheapest) as f64 * 8.0 / m.params.max(1) as f64;
        return Err(Error::Other(format!(
            "{asked}: the smallest candidate for every tensor already needs {floor:.3} bits per weight, {} of tensor data ({} kept or fixed)",
            bytes(m.fixed_bytes + cheapest),
            bytes(m.fixed_bytes)
        )));
    }
    let price = greedy(&mut tensors, data_budget - m.fixed_bytes - cheapest);
    let chosen: u64 = tensors.iter().map(|t| t.options[t.chosen].bytes).sum();
    let (mut cost, mut n) = (0.0, 0.0);
    for t in &tensors {
        cost += t.params as f64 * t.options[t.chosen].rel_sq_error;
        n += t.params as f64;
    }
    Ok(Allocation {
        target: asked,
        budget_bytes: data_budget,
        fixed_bytes: m.fixed_bytes,
        chosen_bytes: chosen + m.fixed_bytes,
        achieved_bpw: (chosen + m.fixed_bytes) as f64 * 8.0 / m.params.max(1) as f64,
        est_rel_sq_error: if n > 0.0 { cost / n } else { 0.0 },
        price,
        tensors,
    })
}

/// The tensor-data budget of a bits-per-weight target over `params` parameters.
pub fn bpw_budget(target_bpw: f64, params: u64) -> Result<u64> {
    if !(target_bpw.is_finite() && target_bpw > 0.0) {
        return Err(Error::Other(format!(
            "--target-bpw {target_bpw}: not a positive number"
        )));
    }
    Ok((target_bpw * params as f64 / 8.0).floor() as u64)
}

/// One tensor under every candidate, on a sample of its rows.
fn measure(
    ckpt: &Checkpoint,
    t: &crate::plan::TensorPlan,
    cands: &[QuantFormat],
    method: Method,
    isa: Isa,
) -> Result<TensorChoice> {
    let (rows, k) = (t.rows, t.k);
    let data = ckpt.shards[t.input].data(&t.entry)?;
    let esize = t.entry.dtype.bitsize() / 8;
    let take = SAMPLE_ELEMS.div_ceil(k.max(1)).clamp(1, rows.max(1));
    let mut sample = Vec::with_capacity(take * k);
    let mut buf = Vec::new();
    for i in 0..take {
        // Rows evenly spaced, the first and the last included.
        let r = if take == 1 {
            0
        } else {
            i * (rows - 1) / (take - 1)
        };
        let bytes = &data[r * k * esize..(r + 1) * k * esize];
        sample.extend_from_slice(to_f32(t.entry.dtype, bytes, &mut buf));
    }
    ckpt.shards[t.input].release(&data);
    let mut options: Vec<Tried> = cands
        .iter()
        .map(|f| {
            let st = run(f, k, &sample, method, isa);
            let bytes = (rows * f.bytes_per_row(k)) as u64;
            Tried {
                fmt: *f,
                format: describe(f),
                bytes,
                bits_per_weight: bytes as f64 * 8.0 / t.params().max(1) as f64,
                rel_sq_error: if st.sum_sq > 0.0 {
                    st.sum_sq_err / st.sum_sq
                } else {
                    0.0
                },
                on_hull: false,
            }
        })
        .collect();
    options.sort_by(|a, b| {
        a.bytes
            .cmp(&b.bytes)
            .then(a.rel_sq_error.total_cmp(&b.rel_sq_error))
    });
    mark_hull(&mut options, t.params() as f64);
    Ok(TensorChoice {
        name: t.entry.name.clone(),
        params: t.params(),
        sampled: sample.len() as u64,
        options,
        chosen: 0, // set by `choose`
        next_gain_per_byte: None,
    })
}

/// Quantizes `x` (whole rows of `k`) with `f` into scratch buffers; only the statistics are kept.
fn run(f: &QuantFormat, k: usize, x: &[f32], method: Method, isa: Isa) -> ErrorStats {
    let rows = x.len() / k.max(1);
    let mut v = f.part_bytes_per_row(k).map(|n| vec![0u8; rows * n]);
    let [c, s, m, ss, sm] = &mut v;
    let out = RowsOut::from_parts([c, s, m, ss, sm]);
    quantize_rows_by(isa, method, f, k, Src::F32(x), out)
}

/// Marks the options (sorted by bytes) on the lower convex hull of
/// (bytes, n · error): the cheapest, then each point that removes cost at a
/// falling rate per byte.
fn mark_hull(options: &mut [Tried], n: f64) {
    let cost = |o: &Tried| n * o.rel_sq_error;
    let mut hull: Vec<usize> = Vec::new();
    for i in 0..options.len() {
        // Only strictly better options can follow on the hull.
        if let Some(&last) = hull.last() {
            if cost(&options[i]) >= cost(&options[last]) {
                continue;
            }
            if options[i].bytes == options[last].bytes {
                hull.pop();
            }
        }
        while hull.len() >= 2 {
            let (a, b) = (hull[hull.len() - 2], hull[hull.len() - 1]);
            let slope = |p: usize, q: usize| {
                (cost(&options[p]) - cost(&options[q]))
                    / (options[q].bytes - options[p].bytes) as f64
            };
            // b is not on the hull if going a → i removes more per byte than a → b.
            if slope(a, i) >= slope(a, b) {
                hull.pop();
            } else {
                break;
            }
        }
        hull.push(i);
    }
    for i in hull {
        options[i].on_hull = true;
    }
}

/// Takes upgrades along each tensor's hull, best cost removed per byte
/// first, within `spare` bytes; returns the price of the last one taken.
fn greedy(tensors: &mut [TensorChoice], mut spare: u64) -> f64 {
    let next = |t: &TensorChoice| -> Option<(usize, f64, u64)> {
        let j = (t.chosen + 1..t.options.len()).find(|&j| t.options[j].on_hull)?;
        let (a, b) = (&t.options[t.chosen], &t.options[j]);
        let d = b.bytes - a.bytes;
        let gain = t.params as f64 * (a.rel_sq_error - b.rel_sq_error);
        Some((j, gain / d.max(1) as f64, d))
    };
    let mut price = 0.0;
    let mut blocked = vec![false; tensors.len()];
    loop {
        let best = tensors
            .iter()
            .enumerate()
            .filter(|(i, _)| !blocked[*i])
            .filter_map(|(i, t)| next(t).map(|n| (i, n)))
            .max_by(|a, b| a.1 .1.total_cmp(&b.1 .1).then(b.0.cmp(&a.0)));
        let Some((i, (j, ratio, d))) = best else {
            break;
        };
        if d > spare {
            blocked[i] = true; // this tensor stays; smaller upgrades elsewhere may still fit
            continue;
        }
        spare -= d;
        tensors[i].chosen = j;
        price = ratio;
    }
    for t in tensors.iter_mut() {
        t.next_gain_per_byte = next(t).map(|n| n.1);
    }
    price
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opt(bytes: u64, e: f64) -> Tried {
        Tried {
            fmt: candidates(ScaleDtype::F16)[0],
            format: format!("{bytes}"),
            bytes,
            bits_per_weight: 0.0,
            rel_sq_error: e,
            on_hull: false,
        }
    }

    #[test]
    fn the_hull_drops_dominated_and_non_convex_points() {
        // (100, 0.10) (110, 0.09) is a poor step; (120, 0.05) makes it non-convex;
        // (130, 0.06) is dominated; (200, 0.01) stays.
        let mut o = vec![
            opt(100, 0.10),
            opt(110, 0.09),
            opt(120, 0.05),
            opt(130, 0.06),
            opt(200, 0.01),
        ];
        mark_hull(&mut o, 1.0);
        let on: Vec<u64> = o.iter().filter(|x| x.on_hull).map(|x| x.bytes).collect();
        assert_eq!(on, vec![100, 120, 200]);
    }

    #[test]
    fn greedy_spends_the_budget_where_it_removes_most_error_per_byte() {
        let tensor = |name: &str, params: u64, opts: Vec<Tried>| {
            let mut options = opts;
            mark_hull(&mut options, params as f64);
            TensorChoice {
                name: name.into(),
                params,
                sampled: params,
                options,
                chosen: 0,
                next_gain_per_byte: None,
            }
        };
        // Upgrading `a` removes 1000·0.05 = 50 per 10 bytes; `b` 1000·0.01 = 10 per 10 bytes.
        let mut t = vec![
            tensor("a", 1000, vec![opt(100, 0.10), opt(110, 0.05)]),
            tensor("b", 1000, vec![opt(100, 0.10), opt(110, 0.09)]),
        ];
        let price = greedy(&mut t, 15);
        assert_eq!((t[0].chosen, t[1].chosen), (1, 0));
        assert_eq!(price, 5.0);
        assert!((t[1].next_gain_per_byte.unwrap() - 1.0).abs() < 1e-12);
        // With room for both, both are upgraded.
        let mut t2 = t.clone();
        t2[0].chosen = 0;
        greedy(&mut t2, 20);
        assert_eq!((t2[0].chosen, t2[1].chosen), (1, 1));
    }
}
