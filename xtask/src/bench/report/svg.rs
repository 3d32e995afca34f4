//! The charts, written by hand as SVG: the ratios to the ceiling per path
//! and metric, and the scaling with published ports.

use std::fmt::Write as _;

use super::results::{Results, ScalePoint, CEILING};

const COLORS: [&str; 6] = [
    "#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#b07aa1", "#76b7b2",
];

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn svg_open(w: f64, h: f64, title: &str) -> String {
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" \
         viewBox=\"0 0 {w} {h}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{}\" y=\"20\" text-anchor=\"middle\" font-size=\"15\">{}</text>\n",
        w / 2.0,
        escape(title)
    )
}

fn legend(svg: &mut String, names: &[&str], x: f64, y: f64) {
    for (i, name) in names.iter().enumerate() {
        let x = x + i as f64 * 110.0;
        let _ = writeln!(
            svg,
            "<rect x=\"{x}\" y=\"{}\" width=\"12\" height=\"12\" fill=\"{}\"/>\
             <text x=\"{}\" y=\"{}\">{}</text>",
            y - 10.0,
            COLORS[i % COLORS.len()],
            x + 16.0,
            y,
            escape(name)
        );
    }
}

/// Bars: ratio to the ceiling per (path, metric), one bar per configuration.
pub(super) fn ratio_chart(r: &Results) -> String {
    let configs: Vec<&str> = r
        .configs
        .iter()
        .map(String::as_str)
        .filter(|c| *c != CEILING)
        .collect();
    let rows = r.rows();
    let (left, top, plot_h) = (50.0, 60.0, 260.0);
    let group_w = (configs.len().max(1) as f64) * 22.0 + 30.0;
    let w = (left + group_w * rows.len().max(1) as f64 + 20.0).max(500.0);
    let h = top + plot_h + 90.0;
    let ratios: Vec<Vec<Option<f64>>> = rows
        .iter()
        .map(|(p, m)| configs.iter().map(|c| r.ratio(c, p, m, CEILING)).collect())
        .collect();
    let max = ratios
        .iter()
        .flatten()
        .flatten()
        .fold(1.0f64, |a, &b| a.max(b))
        .max(1.0)
        * 1.1;
    let y = |v: f64| top + plot_h - v / max * plot_h;
    let mut svg = svg_open(w, h, "ratio to the no-NAT ceiling (veth), median");
    legend(&mut svg, &configs, left, 42.0);
    let mut tick = 0.0;
    while tick <= max {
        let _ = writeln!(
            svg,
            "<line x1=\"{left}\" x2=\"{}\" y1=\"{y0}\" y2=\"{y0}\" stroke=\"#ddd\"/>\
             <text x=\"{}\" y=\"{}\" text-anchor=\"end\">{tick:.2}</text>",
            w - 20.0,
            left - 4.0,
            y(tick) + 4.0,
            y0 = y(tick)
        );
        tick += 0.25;
    }
    let _ = writeln!(
        svg,
        "<line x1=\"{left}\" x2=\"{}\" y1=\"{y1}\" y2=\"{y1}\" stroke=\"black\" stroke-dasharray=\"4 3\"/>",
        w - 20.0,
        y1 = y(1.0)
    );
    for (g, ((path, metric), values)) in rows.iter().zip(&ratios).enumerate() {
        let x0 = left + g as f64 * group_w + 15.0;
        for (i, v) in values.iter().enumerate() {
            let Some(v) = v else { continue };
            let x = x0 + i as f64 * 22.0;
            let _ = writeln!(
                svg,
                "<rect x=\"{x}\" y=\"{}\" width=\"18\" height=\"{}\" fill=\"{}\">\
                 <title>{} {v:.2}</title></rect>",
                y(*v),
                top + plot_h - y(*v),
                COLORS[i % COLORS.len()],
                escape(configs[i])
            );
        }
        let cx = x0 + (configs.len() as f64 * 22.0) / 2.0;
        let short_metric = match *metric {
            "gbit1" => "Gbit/s ×1",
            "gbit4" => "Gbit/s ×4",
            "udp_pps" => "UDP pps",
            "rr" => "rr/s",
            _ => "conn/s",
        };
        let _ = writeln!(
            svg,
            "<text x=\"{cx}\" y=\"{}\" text-anchor=\"middle\">{}</text>\
             <text x=\"{cx}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
            top + plot_h + 18.0,
            escape(path),
            top + plot_h + 34.0,
            escape(short_metric)
        );
    }
    svg.push_str("</svg>\n");
    svg
}

/// Lines: one per configuration, x = ports present (evenly spaced levels).
pub(super) fn scaling_chart(
    r: &Results,
    title: &str,
    unit: &str,
    value: fn(&ScalePoint) -> f64,
) -> String {
    let mut levels: Vec<usize> = r.scaling.iter().map(|p| p.ports).collect();
    levels.sort_unstable();
    levels.dedup();
    let mut configs: Vec<&str> = Vec::new();
    for p in &r.scaling {
        if !configs.contains(&p.config.as_str()) {
            configs.push(&p.config);
        }
    }
    let (left, top, plot_w, plot_h) = (70.0, 60.0, 420.0, 240.0);
    let (w, h) = (left + plot_w + 30.0, top + plot_h + 60.0);
    let max = r.scaling.iter().map(value).fold(0.0f64, f64::max).max(1.0) * 1.1;
    let x = |i: usize| left + plot_w * (i as f64 + 0.5) / levels.len().max(1) as f64;
    let y = |v: f64| top + plot_h - v / max * plot_h;
    let mut svg = svg_open(w, h, title);
    legend(&mut svg, &configs, left, 42.0);
    for k in 0..=4 {
        let v = max * f64::from(k) / 4.0;
        let _ = writeln!(
            svg,
            "<line x1=\"{left}\" x2=\"{}\" y1=\"{y0}\" y2=\"{y0}\" stroke=\"#ddd\"/>\
             <text x=\"{}\" y=\"{}\" text-anchor=\"end\">{v:.0}</text>",
            left + plot_w,
            left - 4.0,
            y(v) + 4.0,
            y0 = y(v)
        );
    }
    let _ = writeln!(
        svg,
        "<text x=\"14\" y=\"{}\" transform=\"rotate(-90 14 {})\" text-anchor=\"middle\">{}</text>",
        top + plot_h / 2.0,
        top + plot_h / 2.0,
        escape(unit)
    );
    for (i, l) in levels.iter().enumerate() {
        let _ = writeln!(
            svg,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{l}</text>",
            x(i),
            top + plot_h + 18.0
        );
    }
    let _ = writeln!(
        svg,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">published ports present</text>",
        left + plot_w / 2.0,
        top + plot_h + 40.0
    );
    for (ci, c) in configs.iter().enumerate() {
        let color = COLORS[ci % COLORS.len()];
        let points: Vec<(f64, f64)> = levels
            .iter()
            .enumerate()
            .filter_map(|(i, l)| {
                r.scaling
                    .iter()
                    .find(|p| p.config == *c && p.ports == *l)
                    .map(|p| (x(i), y(value(p))))
            })
            .collect();
        let line: Vec<String> = points
            .iter()
            .map(|(a, b)| format!("{a:.1},{b:.1}"))
            .collect();
        let _ = writeln!(
            svg,
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{}\"/>",
            line.join(" ")
        );
        for (a, b) in points {
            let _ = writeln!(
                svg,
                "<circle cx=\"{a:.1}\" cy=\"{b:.1}\" r=\"3\" fill=\"{color}\"/>"
            );
        }
    }
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::{super::results::example, *};

    #[test]
    fn charts_are_whole_svg_documents() {
        let r = example();
        for svg in [ratio_chart(&r), scaling_chart(&r, "t", "u", |p| p.conn_s)] {
            assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
            assert!(!svg.contains("NaN"));
        }
    }
}
