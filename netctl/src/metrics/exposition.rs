//! The Prometheus text exposition format (version 0.0.4): metric families
//! as plain data, and their rendering. Nothing here knows where the values
//! come from, so the format's rules (escaping, `# HELP` and `# TYPE` once
//! per family, a stable order) are tested on their own.

use std::{collections::BTreeMap, fmt::Write as _};

/// The `Content-Type` of what [`render`] writes.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What a family's samples mean to Prometheus.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Only ever goes up (until the datapath is reloaded); named `*_total`.
    Counter,
    /// A value of now.
    Gauge,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        }
    }
}

/// One metric family: a name, its help, its kind and its samples, each
/// keyed by its label values (in the order of `labels`). Adding to a
/// sample that exists sums, so two sources of the same series (two rules
/// that read alike) make one line, never a duplicate series.
#[derive(Clone, Debug)]
pub struct Family {
    pub name: &'static str,
    pub help: &'static str,
    pub kind: Kind,
    pub labels: &'static [&'static str],
    samples: BTreeMap<Vec<String>, u64>,
}

impl Family {
    pub fn new(
        name: &'static str,
        kind: Kind,
        labels: &'static [&'static str],
        help: &'static str,
    ) -> Family {
        debug_assert!(
            (kind == Kind::Counter) == name.ends_with("_total"),
            "{name}: counters, and only they, end in _total"
        );
        Family {
            name,
            help,
            kind,
            labels,
            samples: BTreeMap::new(),
        }
    }

    /// Adds `value` to the sample with these label values (one per label).
    pub fn add<S: Into<String>>(&mut self, values: impl IntoIterator<Item = S>, value: u64) {
        let values: Vec<String> = values.into_iter().map(Into::into).collect();
        debug_assert_eq!(
            values.len(),
            self.labels.len(),
            "{}: label values",
            self.name
        );
        *self.samples.entry(values).or_default() += value;
    }

    /// Makes the sample exist (at zero if nothing is added to it): a
    /// series present from the first scrape lets `rate()` see its first
    /// increase.
    pub fn touch<S: Into<String>>(&mut self, values: impl IntoIterator<Item = S>) {
        self.add(values, 0);
    }

    /// The value of one sample, if it exists (for tests and callers that
    /// read back what they built).
    pub fn get(&self, values: &[&str]) -> Option<u64> {
        self.samples
            .iter()
            .find(|(k, _)| k.iter().map(String::as_str).eq(values.iter().copied()))
            .map(|(_, v)| *v)
    }
}

/// The families as exposition text: sorted by name, each with its
/// `# HELP` and `# TYPE` lines then its samples sorted by label values,
/// so two scrapes of the same host list the same lines in the same order.
/// A family without samples still gets its HELP and TYPE lines.
pub fn render(families: &[Family]) -> String {
    let mut sorted: Vec<&Family> = families.iter().collect();
    sorted.sort_by_key(|f| f.name);
    let mut out = String::new();
    for family in sorted {
        let _ = writeln!(out, "# HELP {} {}", family.name, escape_help(family.help));
        let _ = writeln!(out, "# TYPE {} {}", family.name, family.kind.as_str());
        for (values, value) in &family.samples {
            out.push_str(family.name);
            if !family.labels.is_empty() {
                let pairs: Vec<String> = family
                    .labels
                    .iter()
                    .zip(values)
                    .map(|(label, value)| format!("{label}=\"{}\"", escape_label_value(value)))
                    .collect();
                let _ = write!(out, "{{{}}}", pairs.join(","));
            }
            let _ = writeln!(out, " {value}");
        }
    }
    out
}

/// A label value inside its double quotes: `\`, `"` and line feeds escaped.
pub fn escape_label_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// A help text: `\` and line feeds escaped (quotes stay as they are).
fn escape_help(help: &str) -> String {
    help.replace('\\', "\\\\").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label_value(r#"a"b\c"#), r#"a\"b\\c"#);
        assert_eq!(escape_label_value("two\nlines"), "two\\nlines");
        assert_eq!(escape_label_value("plain-name_1.2"), "plain-name_1.2");
        let mut family = Family::new("netctl_x_total", Kind::Counter, &["container"], "X.");
        family.add(["we\"b\\1\n"], 3);
        assert_eq!(
            render(&[family]),
            "# HELP netctl_x_total X.\n# TYPE netctl_x_total counter\n\
             netctl_x_total{container=\"we\\\"b\\\\1\\n\"} 3\n"
        );
    }

    #[test]
    fn each_family_has_help_and_type_once_even_without_samples() {
        let mut a = Family::new("netctl_a", Kind::Gauge, &[], "Help with \\ and\nnewline.");
        a.add(Vec::<String>::new(), 7);
        let b = Family::new("netctl_b_total", Kind::Counter, &["reason"], "B.");
        assert_eq!(
            render(&[a, b]),
            "# HELP netctl_a Help with \\\\ and\\nnewline.\n# TYPE netctl_a gauge\nnetctl_a 7\n\
             # HELP netctl_b_total B.\n# TYPE netctl_b_total counter\n"
        );
    }

    #[test]
    fn order_is_stable_and_equal_series_are_summed() {
        let build = |order: &[(&str, &str, u64)]| {
            let mut f = Family::new("netctl_c_total", Kind::Counter, &["x", "y"], "C.");
            for (x, y, v) in order {
                f.add([*x, *y], *v);
            }
            let g = Family::new("netctl_b", Kind::Gauge, &[], "B.");
            render(&[f, g])
        };
        let one = build(&[("b", "1", 1), ("a", "2", 2), ("b", "1", 4), ("a", "1", 0)]);
        let other = build(&[("a", "1", 0), ("b", "1", 5), ("a", "2", 2)]);
        assert_eq!(one, other);
        assert_eq!(
            one,
            "# HELP netctl_b B.\n# TYPE netctl_b gauge\n\
             # HELP netctl_c_total C.\n# TYPE netctl_c_total counter\n\
             netctl_c_total{x=\"a\",y=\"1\"} 0\n\
             netctl_c_total{x=\"a\",y=\"2\"} 2\n\
             netctl_c_total{x=\"b\",y=\"1\"} 5\n"
        );
    }
}
