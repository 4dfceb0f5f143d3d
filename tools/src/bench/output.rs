//! Latency distributions to files: HdrHistogram's percentile format (`--hgrm`) and an SVG
//! plot of latency by percentile on a log scale (`--plot`), as HdrHistogram's own plotter
//! draws them, several runs overlaid.

use hdrhistogram::Histogram;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Recorded values are nanoseconds; files show milliseconds, as HdrHistogram's tools do.
const NANOS_PER_MS: f64 = 1_000_000.0;
/// Percentile steps per halving of the distance to 100 % (HdrHistogram's default is 5).
const TICKS_PER_HALF_DISTANCE: u32 = 5;

/// One distribution to write or draw.
#[derive(Debug)]
pub struct Series<'a> {
    /// e.g. "127.0.0.1:11211 get".
    pub label: String,
    pub histogram: &'a Histogram<u64>,
}

/// The file for server `n`'s operation `op`, of `count` distributions in all: `path` itself
/// when there is one, else `<path without .hgrm>.<n>.<op>.hgrm`.
pub fn hgrm_path(path: &Path, n: usize, op: &str, count: usize) -> PathBuf {
    if count == 1 {
        return path.to_path_buf();
    }
    let base = match path.extension() {
        Some(e) if e == "hgrm" => path.with_extension(""),
        _ => path.to_path_buf(),
    };
    let mut name = base.into_os_string();
    name.push(format!(".{n}.{op}.hgrm"));
    PathBuf::from(name)
}

/// The percentile distribution in HdrHistogram's text format (values in milliseconds).
pub fn hgrm(histogram: &Histogram<u64>) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:>12} {:>14} {:>10} {:>14}\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    );
    let mut total = 0;
    for step in histogram.iter_quantiles(TICKS_PER_HALF_DISTANCE) {
        total += step.count_since_last_iteration();
        let quantile = step.quantile_iterated_to();
        let inverse = if quantile < 1.0 {
            format!("{:>14.2}", 1.0 / (1.0 - quantile))
        } else {
            String::new()
        };
        let _ = writeln!(
            out,
            "{:>12.3} {:>14.12} {:>10} {inverse}",
            step.value_iterated_to() as f64 / NANOS_PER_MS,
            quantile,
            total,
        );
    }
    let _ = writeln!(
        out,
        "#[Mean    = {:>12.3}, StdDeviation   = {:>12.3}]",
        histogram.mean() / NANOS_PER_MS,
        histogram.stdev() / NANOS_PER_MS
    );
    let _ = writeln!(
        out,
        "#[Max     = {:>12.3}, Total count    = {:>12}]",
        histogram.max() as f64 / NANOS_PER_MS,
        histogram.len()
    );
    out
}

/// Plot geometry.
const WIDTH: f64 = 900.0;
const HEIGHT: f64 = 520.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 220.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 60.0;
/// The x axis runs to 99.999 %: five "nines" of 1/(1-p), log scale.
const NINES: f64 = 5.0;
const COLOURS: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];

fn x_of(quantile: f64) -> f64 {
    let nines = if quantile >= 1.0 {
        NINES
    } else {
        (1.0 / (1.0 - quantile)).log10().min(NINES)
    };
    LEFT + nines / NINES * (WIDTH - LEFT - RIGHT)
}

/// A "nice" axis top at or above `value`: 1, 2 or 5 times a power of ten.
fn nice_ceiling(value: f64) -> f64 {
    if value <= 0.0 {
        return 1.0;
    }
    let power = 10f64.powf(value.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * power)
        .find(|&v| v >= value)
        .unwrap_or(10.0 * power)
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Latency (µs, linear) by percentile (log scale of 1/(1-p)), one line per series.
pub fn plot_svg(title: &str, series: &[Series<'_>]) -> String {
    let max_us = series
        .iter()
        .map(|s| s.histogram.max() as f64 / 1000.0)
        .fold(0.0, f64::max);
    let top_us = nice_ceiling(max_us);
    let plot_h = HEIGHT - TOP - BOTTOM;
    let y_of = |us: f64| TOP + plot_h - us / top_us * plot_h;
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        svg,
        r#"<text x="{LEFT}" y="22" font-size="15">{}</text>"#,
        escape(title)
    );
    // Axes and grid.
    for (i, label) in ["0%", "90%", "99%", "99.9%", "99.99%", "99.999%"]
        .iter()
        .enumerate()
    {
        let x = LEFT + i as f64 / NINES * (WIDTH - LEFT - RIGHT);
        let _ = writeln!(
            svg,
            r##"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{:.1}" stroke="#ddd"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{label}</text>"##,
            TOP + plot_h,
            TOP + plot_h + 18.0
        );
    }
    for i in 0..=5 {
        let us = top_us * f64::from(i) / 5.0;
        let y = y_of(us);
        let _ = writeln!(
            svg,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{us}</text>"##,
            WIDTH - RIGHT,
            LEFT - 6.0,
            y + 4.0
        );
    }
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">percentile</text>"#,
        LEFT + (WIDTH - LEFT - RIGHT) / 2.0,
        HEIGHT - 15.0
    );
    let _ = writeln!(
        svg,
        r#"<text transform="translate(20 {:.1}) rotate(-90)" text-anchor="middle">latency (µs)</text>"#,
        TOP + plot_h / 2.0
    );
    // One polyline per series, and the legend.
    for (i, s) in series.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let mut points = String::new();
        for step in s.histogram.iter_quantiles(TICKS_PER_HALF_DISTANCE) {
            let x = x_of(step.quantile_iterated_to());
            let y = y_of(step.value_iterated_to() as f64 / 1000.0);
            let _ = write!(points, "{x:.1},{y:.1} ");
        }
        let _ = writeln!(
            svg,
            r#"<polyline fill="none" stroke="{colour}" stroke-width="2" points="{}"/>"#,
            points.trim_end()
        );
        let ly = TOP + 10.0 + 20.0 * i as f64;
        let lx = WIDTH - RIGHT + 15.0;
        let _ = writeln!(
            svg,
            r#"<line x1="{lx}" y1="{ly}" x2="{:.1}" y2="{ly}" stroke="{colour}" stroke-width="3"/><text x="{:.1}" y="{:.1}">{}</text>"#,
            lx + 20.0,
            lx + 26.0,
            ly + 4.0,
            escape(&s.label)
        );
    }
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;

    fn histogram() -> Histogram<u64> {
        let mut h = Histogram::<u64>::new_with_bounds(1, 100_000_000_000, 3).unwrap();
        for us in 1..=1000u64 {
            h.record(us * 1000).unwrap();
        }
        h
    }

    #[test]
    fn hgrm_lists_rising_percentiles_and_the_totals() {
        let text = hgrm(&histogram());
        let rows: Vec<(f64, f64, u64)> = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty() && !l.contains("Value"))
            .map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (
                    f[0].parse().unwrap(),
                    f[1].parse().unwrap(),
                    f[2].parse().unwrap(),
                )
            })
            .collect();
        assert!(rows.len() > 10);
        assert!(
            rows.windows(2)
                .all(|w| w[0].0 <= w[1].0 && w[0].1 <= w[1].1 && w[0].2 <= w[1].2)
        );
        // The median of 1..=1000 µs is about 0.5 ms; the last row holds every value.
        let median = rows.iter().find(|r| r.1 >= 0.5).unwrap();
        assert!((median.0 - 0.5).abs() < 0.01, "{median:?}");
        assert_eq!(rows.last().unwrap().2, 1000);
        assert!(text.contains("Total count    =         1000"));
    }

    #[test]
    fn several_series_get_their_own_files() {
        let p = Path::new("out/lat.hgrm");
        assert_eq!(hgrm_path(p, 0, "get", 1), PathBuf::from("out/lat.hgrm"));
        assert_eq!(
            hgrm_path(p, 1, "set", 4),
            PathBuf::from("out/lat.1.set.hgrm")
        );
    }

    #[test]
    fn the_plot_has_a_line_and_a_legend_entry_per_series() {
        let (a, b) = (histogram(), histogram());
        let svg = plot_svg(
            "t <1>",
            &[
                Series {
                    label: "memcached get".into(),
                    histogram: &a,
                },
                Series {
                    label: "terrace get".into(),
                    histogram: &b,
                },
            ],
        );
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains("memcached get") && svg.contains("terrace get"));
        assert!(svg.contains("t &lt;1&gt;"), "titles are escaped");
        assert_eq!(nice_ceiling(730.0), 1000.0);
        assert_eq!(nice_ceiling(1200.0), 2000.0);
    }
}
