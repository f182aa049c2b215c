//! ROC and reliability plots of one finding, as SVG and PNG files. Text (titles, axis
//! labels) is drawn with a TrueType font found on the system; without one the plots are
//! still drawn, without text.

use super::metrics::{Calibration, RocPoint};
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Width and height of every plot, in pixels.
pub const SIZE: (u32, u32) = (640, 560);
/// Largest font file read.
const MAX_FONT_BYTES: u64 = 32 << 20;
/// Fonts tried in order.
const FONT_PATHS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/liberation/LiberationSans-Regular.ttf",
];
const FONT: &str = "sans-serif";

/// Why a plot was not written.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    /// Drawing failed.
    #[error("cannot draw {path}: {message}")]
    Draw {
        /// The plot file.
        path: PathBuf,
        /// The plotting library's message.
        message: String,
    },
    /// Writing the file failed.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The plot file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// Whether a font was found and registered (once per process).
fn have_font() -> bool {
    static FOUND: OnceLock<bool> = OnceLock::new();
    *FOUND.get_or_init(|| {
        FONT_PATHS.iter().any(|p| {
            let small = std::fs::metadata(p).is_ok_and(|m| m.len() <= MAX_FONT_BYTES);
            let Some(bytes) = small.then(|| std::fs::read(p).ok()).flatten() else {
                return false;
            };
            // Registered fonts live for the whole process.
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            plotters::style::register_font(FONT, FontStyle::Normal, bytes).is_ok()
        })
    })
}

/// What one plot shows.
#[derive(Debug, Clone, Copy)]
pub enum Plot<'a> {
    /// The ROC curve with its AUC and the chance diagonal.
    Roc {
        /// The curve.
        points: &'a [RocPoint],
        /// Its AUC and 95% interval, for the legend.
        auc: Option<(f64, f64, f64)>,
    },
    /// Observed frequency against mean predicted probability per bin.
    Reliability(&'a Calibration),
}

type DrawResult<T> = Result<T, Box<dyn std::error::Error>>;

fn draw<DB: DrawingBackend>(
    area: DrawingArea<DB, Shift>,
    plot: Plot,
    title: &str,
    text: bool,
) -> DrawResult<()>
where
    DB::ErrorType: 'static,
{
    area.fill(&WHITE)?;
    let mut builder = ChartBuilder::on(&area);
    builder.margin(16);
    if text {
        builder
            .caption(title, (FONT, 20))
            .x_label_area_size(44)
            .y_label_area_size(56);
    }
    let mut chart = builder.build_cartesian_2d(0f64..1f64, 0f64..1f64)?;
    let (x_desc, y_desc) = match plot {
        Plot::Roc { .. } => ("1 - specificity", "sensitivity"),
        Plot::Reliability(_) => ("mean predicted probability", "observed frequency"),
    };
    let mut mesh = chart.configure_mesh();
    if text {
        mesh.x_desc(x_desc)
            .y_desc(y_desc)
            .label_style((FONT, 14))
            .axis_desc_style((FONT, 15));
    } else {
        mesh.x_labels(0).y_labels(0);
    }
    mesh.draw()?;
    let grey = RGBColor(150, 150, 150);
    chart.draw_series(LineSeries::new(
        [(0.0, 0.0), (1.0, 1.0)],
        grey.stroke_width(1),
    ))?;
    let blue = RGBColor(31, 90, 170);
    match plot {
        Plot::Roc { points, auc } => {
            let series = chart.draw_series(LineSeries::new(
                points.iter().map(|p| (p.fpr, p.tpr)),
                blue.stroke_width(3),
            ))?;
            if let (true, Some((a, lo, hi))) = (text, auc) {
                series.label(format!("AUC {a:.3} (95% CI {lo:.3}-{hi:.3})"));
                chart
                    .configure_series_labels()
                    .position(SeriesLabelPosition::LowerRight)
                    .label_font((FONT, 15))
                    .background_style(WHITE.mix(0.8))
                    .border_style(BLACK)
                    .draw()?;
            }
        }
        Plot::Reliability(cal) => {
            let pts: Vec<(f64, f64)> = cal
                .bins
                .iter()
                .filter_map(|b| Some((b.mean_predicted?, b.observed?)))
                .collect();
            chart.draw_series(LineSeries::new(pts.iter().copied(), blue.stroke_width(2)))?;
            chart.draw_series(pts.iter().map(|&p| Circle::new(p, 5, blue.filled())))?;
            if let (true, Some(ece)) = (text, cal.ece) {
                let label = format!("ECE {ece:.3}");
                chart.draw_series(std::iter::once(Text::new(
                    label,
                    (0.05, 0.92),
                    (FONT, 16).into_font(),
                )))?;
            }
        }
    }
    area.present()?;
    Ok(())
}

/// Writes `<stem>.svg` and `<stem>.png` in `dir`; returns their paths.
pub fn write_plot(
    dir: &Path,
    stem: &str,
    title: &str,
    plot: Plot,
) -> Result<Vec<PathBuf>, PlotError> {
    let text = have_font();
    let svg_path = dir.join(format!("{stem}.svg"));
    let png_path = dir.join(format!("{stem}.png"));
    let failed = |path: &Path| {
        let path = path.to_path_buf();
        move |e: Box<dyn std::error::Error>| PlotError::Draw {
            path,
            message: e.to_string(),
        }
    };
    let mut svg = String::new();
    draw(
        SVGBackend::with_string(&mut svg, SIZE).into_drawing_area(),
        plot,
        title,
        text,
    )
    .map_err(failed(&svg_path))?;
    std::fs::write(&svg_path, svg).map_err(|source| PlotError::Write {
        path: svg_path.clone(),
        source,
    })?;
    let mut rgb = vec![0u8; (SIZE.0 * SIZE.1 * 3) as usize];
    draw(
        BitMapBackend::with_buffer(&mut rgb, SIZE).into_drawing_area(),
        plot,
        title,
        text,
    )
    .map_err(failed(&png_path))?;
    image::save_buffer(
        &png_path,
        &rgb,
        SIZE.0,
        SIZE.1,
        image::ExtendedColorType::Rgb8,
    )
    .map_err(|e| PlotError::Write {
        path: png_path.clone(),
        source: std::io::Error::other(e),
    })?;
    Ok(vec![svg_path, png_path])
}

#[cfg(test)]
mod tests {
    use super::super::metrics::{calibration, roc_curve, Scored};
    use super::*;

    #[test]
    fn roc_and_reliability_plots_are_written_and_drawn() {
        let cases: Vec<Scored> = [(0.9, true), (0.7, true), (0.6, false), (0.2, false)]
            .iter()
            .map(|&(probability, positive)| Scored {
                probability,
                positive,
            })
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let roc = roc_curve(&cases);
        let cal = calibration(&cases);
        let mut files = write_plot(
            dir.path(),
            "roc",
            "ROC",
            Plot::Roc {
                points: &roc,
                auc: Some((1.0, 1.0, 1.0)),
            },
        )
        .unwrap();
        files
            .extend(write_plot(dir.path(), "rel", "Reliability", Plot::Reliability(&cal)).unwrap());
        for f in &files {
            assert!(
                std::fs::metadata(f).unwrap().len() > 1000,
                "{}",
                f.display()
            );
        }
        let svg = std::fs::read_to_string(&files[0]).unwrap();
        assert!(svg.contains("<polyline"), "no curve in the SVG");
        // The PNG has the curve's blue in it, not only a white page.
        let png = image::open(&files[1]).unwrap().to_rgb8();
        assert_eq!(png.dimensions(), SIZE);
        assert!(png.pixels().any(|p| p.0 == [31, 90, 170]));
    }
}
