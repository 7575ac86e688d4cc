//! Small SVG charts, drawn on the server: no script, no library, a few kilobytes each.
//!
//! A line chart puts time on x (a fixed window ending now) and one or more series on y, from
//! 0 to a rounded maximum; a gap in the samples is a gap in the line. A bar chart shows one
//! value per clip.

use std::fmt::Write as _;

/// The drawing's size in SVG units; it scales to its box (CSS `width:100%`).
const WIDTH: f64 = 480.0;
const HEIGHT: f64 = 150.0;
/// Room for the axis labels.
const LEFT: f64 = 46.0;
const RIGHT: f64 = 8.0;
const TOP: f64 = 22.0;
const BOTTOM: f64 = 18.0;

/// One line of a chart.
pub struct Series<'a> {
    pub name: &'a str,
    pub color: &'a str,
    /// (x, y): x in the window's units (seconds), y in the chart's unit.
    pub points: Vec<(f64, f64)>,
}

/// How a chart labels its y axis.
#[derive(Clone, Copy)]
pub enum Unit {
    /// 0–1 shown as 0–100 %.
    Ratio,
    /// Bytes, shown in GiB.
    Bytes,
    /// A plain count or rate.
    Plain,
    /// Seconds.
    Seconds,
}

impl Unit {
    pub fn label(self, value: f64) -> String {
        match self {
            Unit::Ratio => format!("{:.0}%", value * 100.0),
            Unit::Bytes => {
                let gib = value / (1u64 << 30) as f64;
                if gib >= 10.0 || gib == 0.0 {
                    format!("{gib:.0} GiB")
                } else {
                    format!("{gib:.1} GiB")
                }
            }
            Unit::Plain | Unit::Seconds => {
                let suffix = if matches!(self, Unit::Seconds) {
                    " s"
                } else {
                    ""
                };
                if value >= 100.0 || value == 0.0 || value.fract() == 0.0 {
                    format!("{value:.0}{suffix}")
                } else if value >= 1.0 {
                    format!("{value:.1}{suffix}")
                } else {
                    format!("{value:.2}{suffix}")
                }
            }
        }
    }
}

/// A maximum at or above `value` that makes round gridlines: 1, 2 or 5 times a power of ten.
fn nice_max(value: f64) -> f64 {
    if value <= 0.0 || !value.is_finite() {
        return 1.0;
    }
    let power = 10f64.powf(value.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|step| step * power)
        .find(|candidate| *candidate >= value * 0.999_999)
        .unwrap_or(10.0 * power)
}

fn esc(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The frame of a chart: title with the legend, y gridlines with labels, and the x labels.
fn frame(
    out: &mut String,
    id: &str,
    title: &str,
    legend: &[(&str, &str)],
    y_max: f64,
    unit: Unit,
    x_labels: [&str; 3],
) {
    let _ = write!(
        out,
        "<svg class=chart id=\"{id}\" viewBox=\"0 0 {WIDTH} {HEIGHT}\" role=img aria-label=\"{t}\">\
         <text x=\"{LEFT}\" y=\"13\" class=title>{t}</text>",
        id = esc(id),
        t = esc(title),
    );
    let mut x = WIDTH - RIGHT;
    for (name, color) in legend.iter().rev() {
        let _ = write!(
            out,
            "<text x=\"{x:.0}\" y=\"13\" text-anchor=end fill=\"{color}\">{}</text>",
            esc(name)
        );
        x -= 9.0 + 6.5 * name.chars().count() as f64;
    }
    let plot_h = HEIGHT - TOP - BOTTOM;
    for step in 0..=2 {
        let value = y_max * f64::from(step) / 2.0;
        let y = TOP + plot_h * (1.0 - f64::from(step) / 2.0);
        let _ = write!(
            out,
            "<line x1=\"{LEFT}\" x2=\"{x2}\" y1=\"{y:.1}\" y2=\"{y:.1}\" class=grid />\
             <text x=\"{lx}\" y=\"{ty:.1}\" text-anchor=end class=axis>{label}</text>",
            x2 = WIDTH - RIGHT,
            lx = LEFT - 4.0,
            ty = y + 3.5,
            label = esc(&unit.label(value)),
        );
    }
    let bottom = HEIGHT - 4.0;
    let middle = LEFT + (WIDTH - RIGHT - LEFT) / 2.0;
    let _ = write!(
        out,
        "<text x=\"{LEFT}\" y=\"{bottom}\" class=axis>{}</text>\
         <text x=\"{middle}\" y=\"{bottom}\" text-anchor=middle class=axis>{}</text>\
         <text x=\"{r}\" y=\"{bottom}\" text-anchor=end class=axis>{}</text>",
        esc(x_labels[0]),
        esc(x_labels[1]),
        esc(x_labels[2]),
        r = WIDTH - RIGHT,
    );
}

/// A line chart over the window `x_min..x_max`; samples further apart than `max_gap` are not
/// joined. `y_max` is at least the given floor (e.g. 1.0 for a ratio).
#[allow(clippy::too_many_arguments)]
pub fn line_chart(
    id: &str,
    title: &str,
    series: &[Series<'_>],
    x_min: f64,
    x_max: f64,
    max_gap: f64,
    y_floor: f64,
    unit: Unit,
    x_labels: [&str; 3],
) -> String {
    let highest = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .fold(0.0f64, f64::max);
    let y_max = nice_max(highest.max(y_floor));
    let legend: Vec<(&str, &str)> = series.iter().map(|s| (s.name, s.color)).collect();
    let mut out = String::new();
    frame(&mut out, id, title, &legend, y_max, unit, x_labels);
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let span = (x_max - x_min).max(1.0);
    let at = |(x, y): (f64, f64)| {
        (
            LEFT + plot_w * ((x - x_min) / span).clamp(0.0, 1.0),
            TOP + plot_h * (1.0 - (y / y_max).clamp(0.0, 1.0)),
        )
    };
    for line in series {
        let mut path = String::new();
        let mut previous: Option<f64> = None;
        let mut run = 0usize;
        let mut dots = Vec::new();
        for &(x, y) in line.points.iter().filter(|p| p.0 >= x_min && p.0 <= x_max) {
            let (px, py) = at((x, y));
            let joined = previous.is_some_and(|last| x - last <= max_gap);
            if joined {
                let _ = write!(path, "L{px:.1} {py:.1}");
                run += 1;
            } else {
                if run == 1 {
                    dots.push(path.rsplit('M').next().unwrap_or("").to_string());
                }
                let _ = write!(path, "M{px:.1} {py:.1}");
                run = 1;
            }
            previous = Some(x);
        }
        if run == 1 {
            dots.push(path.rsplit('M').next().unwrap_or("").to_string());
        }
        if !path.is_empty() {
            let _ = write!(
                out,
                "<path d=\"{path}\" fill=none stroke=\"{c}\" stroke-width=1.5 />",
                c = line.color
            );
        }
        // A lone sample has no line to show it: a dot does.
        for dot in dots {
            if let Some((x, y)) = dot.split_once(' ') {
                let _ = write!(
                    out,
                    "<circle cx=\"{x}\" cy=\"{y}\" r=2.2 fill=\"{c}\" />",
                    c = line.color
                );
            }
        }
    }
    out.push_str("</svg>");
    out
}

/// A bar per value (clip k at position k), with the mean as a line.
pub fn bar_chart(id: &str, title: &str, values: &[Option<f64>], color: &str, unit: Unit) -> String {
    let known: Vec<f64> = values.iter().flatten().copied().collect();
    let highest = known.iter().copied().fold(0.0f64, f64::max);
    let y_max = nice_max(highest);
    let count = values.len().max(1);
    let last = format!("clip {}", values.len().saturating_sub(1));
    let middle = if values.len() > 2 {
        format!("clip {}", values.len() / 2)
    } else {
        String::new()
    };
    let mut out = String::new();
    frame(
        &mut out,
        id,
        title,
        &[],
        y_max,
        unit,
        ["clip 0", &middle, &last],
    );
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let slot = plot_w / count as f64;
    let bar = (slot * 0.8).max(0.5);
    for (k, value) in values.iter().enumerate() {
        let Some(value) = value else { continue };
        let h = plot_h * (value / y_max).clamp(0.0, 1.0);
        let _ = write!(
            out,
            "<rect class=clipbar x=\"{x:.2}\" y=\"{y:.2}\" width=\"{bar:.2}\" height=\"{h:.2}\" fill=\"{color}\"><title>clip {k}: {v}</title></rect>",
            x = LEFT + slot * k as f64 + (slot - bar) / 2.0,
            y = TOP + plot_h - h,
            v = esc(&unit.label(*value)),
        );
    }
    if !known.is_empty() {
        let mean = known.iter().sum::<f64>() / known.len() as f64;
        let y = TOP + plot_h * (1.0 - (mean / y_max).clamp(0.0, 1.0));
        let _ = write!(
            out,
            "<line x1=\"{LEFT}\" x2=\"{x2}\" y1=\"{y:.1}\" y2=\"{y:.1}\" class=mean><title>mean {m}</title></line>",
            x2 = WIDTH - RIGHT,
            m = esc(&unit.label(mean)),
        );
    }
    out.push_str("</svg>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maxima_are_round() {
        assert_eq!(nice_max(0.0), 1.0);
        assert_eq!(nice_max(0.73), 1.0);
        assert_eq!(nice_max(1.0), 1.0);
        assert_eq!(nice_max(1.2), 2.0);
        assert_eq!(nice_max(37.0), 50.0);
        assert_eq!(nice_max(51.0), 100.0);
    }

    #[test]
    fn gaps_break_the_line_and_lone_points_are_dots() {
        let series = [Series {
            name: "a",
            color: "#123",
            points: vec![(0.0, 1.0), (10.0, 2.0), (100.0, 1.0)],
        }];
        let svg = line_chart(
            "c",
            "t",
            &series,
            0.0,
            100.0,
            15.0,
            0.0,
            Unit::Plain,
            ["a", "b", "c"],
        );
        assert_eq!(svg.matches('M').count(), 2, "two runs: {svg}");
        assert_eq!(svg.matches("<circle").count(), 1, "{svg}");
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
    }

    #[test]
    fn bars_skip_unknown_clips_and_names_are_escaped() {
        let svg = bar_chart(
            "b",
            "<x>",
            &[Some(1.0), None, Some(3.0)],
            "#000",
            Unit::Seconds,
        );
        assert_eq!(svg.matches("<rect").count(), 2);
        assert!(svg.contains("&lt;x&gt;"));
        assert!(svg.contains("mean 2 s"), "{svg}");
    }

    #[test]
    fn labels_fit_their_unit() {
        assert_eq!(Unit::Ratio.label(0.5), "50%");
        assert_eq!(Unit::Bytes.label(80.0 * (1u64 << 30) as f64), "80 GiB");
        assert_eq!(Unit::Seconds.label(1.26), "1.3 s");
        assert_eq!(Unit::Plain.label(0.5), "0.50");
    }
}
