//! The visual report: one self-contained HTML file (no scripts, no network)
//! with SVG charts drawn by plotters, and the terminal tables.
//!
//! Charts: (a) bytes per tensor group before and after, the after bar stacked
//! into codes, scales, mins and kept tensors; (b) the naive, predicted and
//! actual ratios; (c) relative error per tensor against its layer index;
//! (d) a histogram of per-tensor SQNR.

use plotters::prelude::*;

use crate::report::{ErrorSummary, PieceBytes, Report};
use crate::verify::VerifyReport;

/// One tensor, as the charts see it.
#[derive(Clone, Debug, PartialEq)]
pub struct ChartTensor {
    /// Name.
    pub name: String,
    /// Input bytes.
    pub input_bytes: u64,
    /// Output bytes by kind.
    pub bytes: PieceBytes,
    /// Relative error (quantized tensors with a measurement).
    pub rel_error: Option<f64>,
    /// SQNR in dB (`Some(inf)` when exact).
    pub sqnr_db: Option<f64>,
}

impl ChartTensor {
    /// A chart row from a report row's fields.
    pub fn new(
        name: &str,
        input_bytes: u64,
        bytes: PieceBytes,
        error: Option<&ErrorSummary>,
    ) -> Self {
        ChartTensor {
            name: name.to_string(),
            input_bytes,
            bytes,
            rel_error: error.map(|e| e.rel_error),
            sqnr_db: error.map(|e| e.sqnr_db.unwrap_or(f64::INFINITY)),
        }
    }
}

/// Everything the page shows.
#[derive(Clone, Debug, PartialEq)]
pub struct ChartData {
    /// Page title.
    pub title: String,
    /// One line under the title.
    pub subtitle: String,
    /// Tensors in model order.
    pub tensors: Vec<ChartTensor>,
    /// Named ratios (naive, predicted, actual).
    pub ratios: Vec<(String, f64)>,
    /// The terminal report, shown as text.
    pub text: String,
}

/// The group a tensor belongs to, from its name.
pub fn tensor_group(name: &str) -> &'static str {
    let n = name.to_ascii_lowercase();
    let has = |keys: &[&str]| keys.iter().any(|k| n.contains(k));
    if has(&["norm", "ln_", ".ln", "layernorm"]) {
        "norms"
    } else if has(&[
        "embed",
        "wte",
        "wpe",
        "lm_head",
        "tok_embeddings",
        "output.weight",
    ]) {
        "embeddings"
    } else if has(&[
        "attn",
        "attention",
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "query",
        "key",
        "value",
        "qkv",
    ]) {
        "attention"
    } else if has(&[
        "mlp",
        "ffn",
        "feed_forward",
        "gate_proj",
        "up_proj",
        "down_proj",
        "fc1",
        "fc2",
        "experts",
    ]) {
        "MLP"
    } else {
        "other"
    }
}

/// The layer index in a name (`model.layers.12.mlp…` → 12), if any.
pub fn layer_index(name: &str) -> Option<u32> {
    name.split('.').find_map(|p| p.parse().ok())
}

const GROUPS: [&str; 5] = ["embeddings", "attention", "MLP", "norms", "other"];
const CODES: RGBColor = RGBColor(31, 119, 180);
const SCALES: RGBColor = RGBColor(255, 127, 14);
const MINS: RGBColor = RGBColor(44, 160, 44);
const KEPT: RGBColor = RGBColor(127, 127, 127);
const INPUT: RGBColor = RGBColor(200, 200, 200);
const GROUP_COLORS: [RGBColor; 5] = [
    RGBColor(148, 103, 189),
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(127, 127, 127),
    RGBColor(140, 86, 75),
];

impl From<&Report> for ChartData {
    fn from(r: &Report) -> Self {
        let mut ratios = vec![
            ("naive".to_string(), r.totals.ratio_naive),
            ("predicted".to_string(), r.totals.ratio_predicted),
        ];
        if let Some(a) = r.totals.ratio_actual {
            ratios.push(("actual".to_string(), a));
        }
        ChartData {
            title: format!("shrinkray quantize: {}", r.input),
            subtitle: format!(
                "default {} g{} with {} scales; kernels {}; {} threads",
                r.scheme, r.group_size, r.scale_dtype, r.isa, r.threads
            ),
            tensors: r
                .tensors
                .iter()
                .map(|t| ChartTensor::new(&t.name, t.input_bytes, t.bytes, t.error.as_ref()))
                .collect(),
            ratios,
            text: r.render(usize::MAX),
        }
    }
}

impl From<&VerifyReport> for ChartData {
    fn from(r: &VerifyReport) -> Self {
        let naive_bytes: f64 = r
            .tensors
            .iter()
            .map(|t| t.params as f64 * t.naive_bits as f64 / 8.0)
            .sum();
        let input_tensor_bytes: u64 = r.tensors.iter().map(|t| t.input_bytes).sum();
        ChartData {
            title: format!("shrinkray verify: {} against {}", r.packed, r.original),
            subtitle: format!(
                "{}; packed files {} bytes, the format rules give {}",
                if r.passed { "PASS" } else { "FAIL" },
                r.output_bytes_actual,
                r.output_bytes_expected
            ),
            tensors: r
                .tensors
                .iter()
                .map(|t| ChartTensor::new(&t.name, t.input_bytes, t.bytes, t.error.as_ref()))
                .collect(),
            ratios: vec![
                (
                    "naive".to_string(),
                    input_tensor_bytes as f64 / naive_bytes.max(1.0),
                ),
                (
                    "predicted".to_string(),
                    r.input_bytes as f64 / r.output_bytes_expected.max(1) as f64,
                ),
                ("actual".to_string(), r.ratio_actual),
            ],
            text: r.render(usize::MAX),
        }
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

type DrawResult = Result<(), Box<dyn std::error::Error>>;

/// A byte unit for an axis whose largest value is `max`.
fn unit(max: f64) -> (f64, &'static str) {
    [
        (1024f64.powi(3), "GiB"),
        (1024f64.powi(2), "MiB"),
        (1024.0, "KiB"),
    ]
    .into_iter()
    .find(|(u, _)| max >= *u)
    .unwrap_or((1.0, "B"))
}

/// (a) Bytes per tensor group, before and after.
fn bytes_chart(d: &ChartData, svg: &mut String) -> DrawResult {
    let mut rows = Vec::new();
    for g in GROUPS {
        let ts: Vec<&ChartTensor> = d
            .tensors
            .iter()
            .filter(|t| tensor_group(&t.name) == g)
            .collect();
        if ts.is_empty() {
            continue;
        }
        let sum = |f: &dyn Fn(&ChartTensor) -> u64| ts.iter().map(|t| f(t)).sum::<u64>() as f64;
        rows.push((
            g,
            sum(&|t| t.input_bytes),
            [
                ("codes", CODES, sum(&|t| t.bytes.codes)),
                ("scales", SCALES, sum(&|t| t.bytes.scales)),
                ("mins", MINS, sum(&|t| t.bytes.mins)),
                ("kept", KEPT, sum(&|t| t.bytes.kept)),
            ],
        ));
    }
    let max = rows
        .iter()
        .map(|r| r.1.max(r.2.iter().map(|p| p.2).sum()))
        .fold(1.0, f64::max);
    let (u, uname) = unit(max);
    let root = SVGBackend::with_string(svg, (900, 380)).into_drawing_area();
    root.fill(&WHITE)?;
    let n = rows.len().max(1) as f64;
    let names: Vec<&str> = rows.iter().map(|r| r.0).collect();
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "bytes per tensor group: input (grey) and output",
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(70)
        .build_cartesian_2d(-0.5f64..(3.0 * n - 1.5), 0f64..max / u * 1.08)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(3 * rows.len())
        .x_label_formatter(&|x| {
            let i = x.round() as i64;
            if (x - i as f64).abs() > 0.01 || i < 0 {
                return String::new();
            }
            match (names.get(i as usize / 3), i % 3) {
                (Some(g), 0) => format!("{g}: in"),
                (Some(_), 1) => "out".into(),
                _ => String::new(),
            }
        })
        .y_desc(uname)
        .draw()?;
    chart
        .draw_series(rows.iter().enumerate().map(|(i, r)| {
            let x = 3.0 * i as f64;
            Rectangle::new([(x - 0.4, 0.0), (x + 0.4, r.1 / u)], INPUT.filled())
        }))?
        .label("input")
        .legend(|(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], INPUT.filled()));
    for k in 0..4 {
        let (label, color, _) = rows.first().map(|r| r.2[k]).unwrap_or(("", CODES, 0.0));
        chart
            .draw_series(rows.iter().enumerate().map(|(i, r)| {
                let x = 3.0 * i as f64 + 1.0;
                let below: f64 = r.2[..k].iter().map(|p| p.2).sum();
                Rectangle::new(
                    [(x - 0.4, below / u), (x + 0.4, (below + r.2[k].2) / u)],
                    r.2[k].1.filled(),
                )
            }))?
            .label(label)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled()));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

/// (b) Naive, predicted and actual ratios.
fn ratio_chart(d: &ChartData, svg: &mut String) -> DrawResult {
    let root = SVGBackend::with_string(svg, (520, 320)).into_drawing_area();
    root.fill(&WHITE)?;
    let max = d
        .ratios
        .iter()
        .map(|r| r.1)
        .filter(|v| v.is_finite())
        .fold(1.0, f64::max);
    let names: Vec<String> = d
        .ratios
        .iter()
        .map(|r| format!("{} {:.2}x", r.0, r.1))
        .collect();
    let mut chart = ChartBuilder::on(&root)
        .caption("compression ratio", ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(50)
        .build_cartesian_2d(-0.5f64..(d.ratios.len() as f64 - 0.5), 0f64..max * 1.15)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(d.ratios.len())
        .x_label_formatter(&|x| {
            let i = x.round();
            if (x - i).abs() > 0.01 || i < 0.0 {
                String::new()
            } else {
                names.get(i as usize).cloned().unwrap_or_default()
            }
        })
        .y_desc("input bytes / output bytes")
        .draw()?;
    let colors = [INPUT, CODES, MINS];
    chart.draw_series(
        d.ratios
            .iter()
            .enumerate()
            .filter(|(_, r)| r.1.is_finite())
            .map(|(i, r)| {
                let x = i as f64;
                Rectangle::new([(x - 0.3, 0.0), (x + 0.3, r.1)], colors[i % 3].filled())
            }),
    )?;
    root.present()?;
    Ok(())
}

/// (c) Relative error per tensor against its layer index.
fn error_chart(d: &ChartData, svg: &mut String) -> DrawResult {
    let points: Vec<(&ChartTensor, f64)> = d
        .tensors
        .iter()
        .filter_map(|t| t.rel_error.map(|e| (t, e)))
        .collect();
    let last = d
        .tensors
        .iter()
        .filter_map(|t| layer_index(&t.name))
        .max()
        .unwrap_or(0) as f64;
    let x_of = |t: &ChartTensor| match layer_index(&t.name) {
        Some(l) => l as f64,
        None if tensor_group(&t.name) == "embeddings" && !t.name.contains("lm_head") => -1.0,
        None => last + 1.0,
    };
    let ymax = points
        .iter()
        .map(|p| p.1)
        .filter(|v| v.is_finite())
        .fold(0.0, f64::max)
        .max(1e-9);
    let root = SVGBackend::with_string(svg, (900, 360)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "relative error ‖W−Ŵ‖/‖W‖ per tensor, by layer",
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(70)
        .build_cartesian_2d(-1.5f64..last + 1.5, 0f64..ymax * 1.1)?;
    chart
        .configure_mesh()
        .x_labels(last as usize + 4)
        .x_label_formatter(&|x| {
            let i = x.round();
            if (x - i).abs() < 0.01 {
                format!("{i}")
            } else {
                String::new()
            }
        })
        .x_desc("layer (−1: embeddings, last + 1: output head and other tensors outside layers)")
        .y_desc("relative error")
        .y_label_formatter(&|v| format!("{v:.3}"))
        .draw()?;
    for (gi, g) in GROUPS.iter().enumerate() {
        let pts: Vec<(f64, f64)> = points
            .iter()
            .filter(|(t, e)| tensor_group(&t.name) == *g && e.is_finite())
            .map(|(t, e)| (x_of(t), *e))
            .collect();
        if pts.is_empty() {
            continue;
        }
        let color = GROUP_COLORS[gi];
        chart
            .draw_series(pts.into_iter().map(|p| Circle::new(p, 4, color.filled())))?
            .label(*g)
            .legend(move |(x, y)| Rectangle::new([(x, y - 4), (x + 8, y + 4)], color.filled()));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

/// (d) Histogram of per-tensor SQNR (exact tensors counted in the caption).
fn sqnr_chart(d: &ChartData, svg: &mut String) -> DrawResult {
    let values: Vec<f64> = d
        .tensors
        .iter()
        .filter_map(|t| t.sqnr_db)
        .filter(|v| v.is_finite())
        .collect();
    let exact = d
        .tensors
        .iter()
        .filter(|t| t.sqnr_db == Some(f64::INFINITY))
        .count();
    let lo = values.iter().copied().fold(f64::INFINITY, f64::min).floor();
    let hi = values
        .iter()
        .copied()
        .fold(f64::NEG_INFINITY, f64::max)
        .floor()
        + 1.0;
    let (lo, hi) = if values.is_empty() {
        (0.0, 1.0)
    } else {
        (lo, hi)
    };
    let bins = (hi - lo).max(1.0) as usize;
    let mut counts = vec![0u32; bins];
    for v in &values {
        counts[(((v - lo).floor()) as usize).min(bins - 1)] += 1;
    }
    let root = SVGBackend::with_string(svg, (520, 320)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("per-tensor SQNR ({exact} exact tensors not shown)"),
            ("sans-serif", 16),
        )
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(40)
        .build_cartesian_2d(
            lo..hi,
            0f64..(*counts.iter().max().unwrap_or(&1)).max(1) as f64 * 1.15,
        )?;
    chart
        .configure_mesh()
        .x_desc("SQNR, dB (1 dB bins)")
        .y_desc("tensors")
        .draw()?;
    chart.draw_series(
        counts
            .iter()
            .enumerate()
            .filter(|(_, c)| **c > 0)
            .map(|(i, c)| {
                Rectangle::new(
                    [
                        (lo + i as f64 + 0.05, 0.0),
                        (lo + i as f64 + 0.95, *c as f64),
                    ],
                    CODES.filled(),
                )
            }),
    )?;
    root.present()?;
    Ok(())
}

/// Renders the page.
pub fn render(d: &ChartData) -> Result<String, String> {
    let mut figures = String::new();
    type Chart = fn(&ChartData, &mut String) -> DrawResult;
    let charts: [(&str, &str, Chart); 4] = [
        ("bytes-by-group", "Bytes per tensor group before (input) and after (output, stacked by kind).", bytes_chart),
        ("ratios", "The naive claim (parameters at their code bits, nothing else) beside the plan's prediction and the bytes on disk.", ratio_chart),
        ("error-by-layer", "Relative reconstruction error of every quantized tensor, placed at its layer: a bad layer stands out.", error_chart),
        ("sqnr-histogram", "How many tensors reach each signal-to-quantization-noise ratio.", sqnr_chart),
    ];
    for (id, caption, draw) in charts {
        let mut svg = String::new();
        draw(d, &mut svg).map_err(|e| format!("drawing the {id} chart: {e}"))?;
        figures.push_str(&format!(
            "<figure id=\"{id}\">\n{svg}\n<figcaption>{}</figcaption>\n</figure>\n",
            escape(caption)
        ));
    }
    Ok(format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>{title}</title>\n<style>\n\
         body {{ font-family: sans-serif; max-width: 1200px; margin: 2em auto; color: #222; }}\n\
         figure {{ margin: 1.5em 0; display: inline-block; vertical-align: top; }}\n\
         figcaption {{ font-size: 0.9em; color: #555; max-width: 880px; }}\n\
         pre {{ font-size: 12px; overflow-x: auto; background: #f6f6f6; padding: 1em; }}\n\
         </style>\n</head>\n<body>\n<h1>{title}</h1>\n<p>{subtitle}</p>\n{figures}<h2>Tables</h2>\n<pre>{text}</pre>\n</body>\n</html>\n",
        title = escape(&d.title),
        subtitle = escape(&d.subtitle),
        text = escape(&d.text),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_and_layers_from_names() {
        assert_eq!(tensor_group("model.embed_tokens.weight"), "embeddings");
        assert_eq!(tensor_group("lm_head.weight"), "embeddings");
        assert_eq!(
            tensor_group("model.layers.3.self_attn.q_proj.weight"),
            "attention"
        );
        assert_eq!(tensor_group("model.layers.3.mlp.down_proj.weight"), "MLP");
        assert_eq!(
            tensor_group("model.layers.3.input_layernorm.weight"),
            "norms"
        );
        assert_eq!(tensor_group("odd.k100"), "other");
        assert_eq!(layer_index("model.layers.12.mlp.up_proj.weight"), Some(12));
        assert_eq!(layer_index("lm_head.weight"), None);
    }
}
