//! `ken bench --plot FILE`: the throughput measurement at several loads, and the SVG of the
//! curve it traces (turns per second and bytes per turn against turns per commit).
//!
//! Each point is one unkeyed throughput run ([`super::throughput`], without the latency
//! probe) at one of [`LOADS`]: from one sender keeping one message unacknowledged (each
//! commit holds about one turn) to eight senders keeping 256 each (hundreds of turns per
//! commit, as far as the disk makes the receiver batch). The SVG is drawn by the `plotters`
//! crate (its SVG backend only): two panels sharing a logarithmic x axis, turns per commit.

use std::path::Path;

use anyhow::Context;
use plotters::prelude::*;
use serde::Serialize;

/// The curve's loads: (simulated senders, unacknowledged messages per sender), lightest
/// first. Fixed, whatever `--senders` and `--outstanding` say, so that curves from
/// different runs and machines compare.
pub const LOADS: [(u32, u32); 5] = [(1, 1), (2, 4), (8, 4), (8, 32), (8, 256)];

/// One point of the curve: one throughput run at one load.
#[derive(Debug, Clone, Serialize)]
pub struct CurvePoint {
    pub senders: u32,
    pub outstanding_per_sender: u32,
    pub window_secs: f64,
    /// Durable turns per second at the receiver over the window (its store's `meta`).
    pub turns_per_sec: f64,
    /// Turns per commit over the same window.
    pub turns_per_commit: f64,
    pub commits_per_sec: f64,
    /// Bytes the receiver's store wrote per durable turn over its whole run (its own
    /// syscall counters, [`super::node::NodeWrites`]), and the turns per commit of that
    /// same run, which the bytes panel plots them against.
    pub bytes_per_turn: f64,
    pub run_turns_per_commit: f64,
}

/// What the title says about the machine (no date: two runs on one machine compare).
#[derive(Debug, Clone)]
pub struct Machine<'a> {
    pub fsync_per_sec: f64,
    pub cpus: usize,
    pub filesystem: Option<&'a str>,
    pub quick: bool,
}

/// The x axis label of both panels (the tests look for it).
pub const X_LABEL: &str = "turns per commit (log)";
/// The y axis labels of the two panels.
pub const Y_TURNS_LABEL: &str = "durable turns per second";
pub const Y_BYTES_LABEL: &str = "store bytes written per turn (log)";

/// A logarithmic axis range holding every value: `below` and `above` times the lowest and
/// highest apart from them.
fn log_range(values: impl Iterator<Item = f64>, below: f64, above: f64) -> std::ops::Range<f64> {
    let (lo, hi) = values
        .filter(|v| v.is_finite() && *v > 0.0)
        .fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if lo > hi {
        return 1.0..10.0;
    }
    (lo / below)..(hi * above)
}

/// The SVG of the curve.
pub fn svg(points: &[CurvePoint], machine: &Machine) -> anyhow::Result<String> {
    let mut out = String::new();
    draw(points, machine, &mut out).map_err(|e| anyhow::anyhow!("cannot draw the curve: {e}"))?;
    Ok(out)
}

fn draw(
    points: &[CurvePoint],
    machine: &Machine,
    out: &mut String,
) -> Result<(), Box<dyn std::error::Error>> {
    let root = SVGBackend::with_string(out, (900, 820)).into_drawing_area();
    root.fill(&WHITE)?;
    let title = format!(
        "ken bench{}: one receiver, load from 1 to {} messages in flight",
        if machine.quick { " --quick" } else { "" },
        LOADS.iter().map(|(s, o)| s * o).max().unwrap_or(1)
    );
    let facts = format!(
        "raw fsync {:.0}/s, {} CPUs, {}",
        machine.fsync_per_sec,
        machine.cpus,
        machine.filesystem.unwrap_or("filesystem unknown")
    );
    let root = root.titled(&title, ("sans-serif", 22))?;
    let (facts_area, root) = root.split_vertically(24);
    facts_area.draw(&Text::new(
        facts,
        (60, 4),
        ("sans-serif", 15).into_font().color(&BLACK.mix(0.7)),
    ))?;
    let (top, bottom) = root.split_vertically(380);
    let label = |p: &CurvePoint| format!("{}x{}", p.senders, p.outstanding_per_sender);

    // One x range for both panels, so that a load sits at the same x in each.
    let x = log_range(
        points
            .iter()
            .flat_map(|p| [p.turns_per_commit, p.run_turns_per_commit]),
        1.6,
        // Room for the rightmost point's label.
        3.5,
    );
    let y_max = points.iter().map(|p| p.turns_per_sec).fold(1.0, f64::max) * 1.15;
    let mut chart = ChartBuilder::on(&top)
        .caption(
            "durable turns per second against turns per commit",
            ("sans-serif", 17),
        )
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(80)
        .build_cartesian_2d(x.clone().log_scale(), 0.0..y_max)?;
    chart
        .configure_mesh()
        .light_line_style(WHITE)
        .x_desc(X_LABEL)
        .y_desc(Y_TURNS_LABEL)
        .y_label_formatter(&|v| format!("{v:.0}"))
        .x_label_formatter(&|v| format!("{v:.0}"))
        .draw()?;
    chart.draw_series(LineSeries::new(
        points.iter().map(|p| (p.turns_per_commit, p.turns_per_sec)),
        BLUE.stroke_width(2),
    ))?;
    chart.draw_series(points.iter().map(|p| {
        EmptyElement::at((p.turns_per_commit, p.turns_per_sec))
            + Circle::new((0, 0), 4, BLUE.filled())
            + Text::new(
                format!("{}: {:.0}/s", label(p), p.turns_per_sec),
                (6, -16),
                ("sans-serif", 12),
            )
    }))?;

    // Whole decades: plotters labels a log axis only from its lower end's decade up.
    let y = log_range(points.iter().map(|p| p.bytes_per_turn), 1.1, 1.1);
    let y = 10f64.powf(y.start.log10().floor())..10f64.powf(y.end.log10().ceil());
    let mut chart = ChartBuilder::on(&bottom)
        .caption(
            "store bytes written per turn against turns per commit",
            ("sans-serif", 17),
        )
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(80)
        .build_cartesian_2d(x.log_scale(), y.log_scale())?;
    chart
        .configure_mesh()
        .light_line_style(WHITE)
        .x_desc(X_LABEL)
        .y_desc(Y_BYTES_LABEL)
        .y_labels(12)
        .y_label_formatter(&|v| format!("{v:.0}"))
        .x_label_formatter(&|v| format!("{v:.0}"))
        .draw()?;
    chart.draw_series(LineSeries::new(
        points
            .iter()
            .map(|p| (p.run_turns_per_commit, p.bytes_per_turn)),
        RED.stroke_width(2),
    ))?;
    chart.draw_series(points.iter().map(|p| {
        EmptyElement::at((p.run_turns_per_commit, p.bytes_per_turn))
            + Circle::new((0, 0), 4, RED.filled())
            + Text::new(
                format!("{}: {:.0} B", label(p), p.bytes_per_turn),
                (6, -16),
                ("sans-serif", 12),
            )
    }))?;
    root.present()?;
    Ok(())
}

/// Fails, in one line, unless a file can be written at `path`: checked before the bench
/// runs, so a typo costs no measurement.
pub fn check_writable(path: &Path) -> anyhow::Result<()> {
    if path.is_dir() {
        anyhow::bail!(
            "--plot {}: is a directory; give the path of the SVG file to write",
            path.display()
        );
    }
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if !parent.is_dir() {
        anyhow::bail!(
            "--plot {}: directory {} does not exist; create it or write the plot elsewhere",
            path.display(),
            parent.display()
        );
    }
    tempfile::NamedTempFile::new_in(parent)
        .map(drop)
        .map_err(|e| {
            anyhow::anyhow!(
                "--plot {}: cannot write in {} ({e}); write the plot elsewhere",
                path.display(),
                parent.display()
            )
        })
}

/// Writes the SVG of `points` to `path`.
pub fn write(path: &Path, points: &[CurvePoint], machine: &Machine) -> anyhow::Result<()> {
    let svg = svg(points, machine)?;
    std::fs::write(path, svg).with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(i: u32) -> CurvePoint {
        let tpc = 4f64.powi(i as i32);
        CurvePoint {
            senders: 1 + i,
            outstanding_per_sender: 1 << i,
            window_secs: 1.0,
            turns_per_sec: 1000.0 * tpc.sqrt(),
            turns_per_commit: tpc,
            commits_per_sec: 1000.0 / tpc.sqrt(),
            bytes_per_turn: 25_000.0 / tpc,
            run_turns_per_commit: tpc,
        }
    }

    #[test]
    fn the_svg_has_its_labels_and_one_marker_per_point_and_panel() {
        let points: Vec<CurvePoint> = (0..4).map(point).collect();
        let machine = Machine {
            fsync_per_sec: 1234.0,
            cpus: 2,
            filesystem: Some("ext4 on /dev/x, mounted at /"),
            quick: false,
        };
        let svg = svg(&points, &machine).unwrap();
        assert!(svg.starts_with("<svg"), "{svg}");
        for text in [
            X_LABEL,
            Y_TURNS_LABEL,
            Y_BYTES_LABEL,
            "raw fsync 1234/s, 2 CPUs, ext4 on /dev/x",
            "4x8: 8000/s",
            "4x8: 391 B",
        ] {
            assert!(svg.contains(text), "{text} missing from {svg}");
        }
        assert_eq!(svg.matches("<circle").count(), 2 * points.len(), "{svg}");
    }

    #[test]
    fn a_missing_or_read_only_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert!(check_writable(&dir.path().join("curve.svg")).is_ok());
        let e = check_writable(&dir.path().join("no-such-dir/curve.svg")).unwrap_err();
        assert!(e.to_string().contains("does not exist"), "{e}");
        let e = check_writable(dir.path()).unwrap_err();
        assert!(e.to_string().contains("is a directory"), "{e}");
    }
}
