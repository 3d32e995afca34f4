//! The bench's report: the results as data ([`results`]) and their three
//! layouts, report.md ([`markdown`]), report.json ([`json`]) and SVG charts
//! ([`svg`]), all written to `target/bench/` by [`write`].

mod json;
mod markdown;
mod results;
mod svg;

use std::path::Path;

use anyhow::{Context as _, Result};

pub use self::{
    markdown::{control_line, markdown, profile_line},
    results::{loadavg, show, Control, Measured, ProfileRow, Results, ScalePoint},
};

/// Writes report.md, report.json and the three SVG charts into `dir`.
pub fn write(r: &Results, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("mkdir {}", dir.display()))?;
    let files = [
        ("report.md", markdown(r)),
        (
            "report.json",
            serde_json::to_string_pretty(&json::to_json(r)).expect("serializable"),
        ),
        ("ratios.svg", svg::ratio_chart(r)),
        (
            "scaling_conn.svg",
            svg::scaling_chart(r, "new connections/s vs published ports", "conn/s", |p| {
                p.conn_s
            }),
        ),
        (
            "scaling_publish.svg",
            svg::scaling_chart(
                r,
                "time to publish one more port vs published ports",
                "ms",
                |p| p.publish_ms,
            ),
        ),
    ];
    for (name, text) in files {
        let path = dir.join(name);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
