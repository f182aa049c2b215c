//! Drawing the heatmap overlay image: a grayscale radiograph with a colour-mapped heatmap
//! blended over it, a colour legend, and banner text in a small built-in bitmap font (so
//! the appliance needs no font files).

/// An 8-bit RGB image, row-major, 3 bytes per pixel.
#[derive(Debug, Clone, PartialEq)]
pub struct Rgb {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Pixels (R, G, B).
    pub data: Vec<u8>,
}

impl Rgb {
    /// A grayscale image as RGB.
    pub fn from_gray(width: u32, height: u32, gray: &[u8]) -> Rgb {
        let mut data = Vec::with_capacity(gray.len() * 3);
        for &g in gray {
            data.extend_from_slice(&[g, g, g]);
        }
        Rgb {
            width,
            height,
            data,
        }
    }

    fn put(&mut self, x: i64, y: i64, c: [u8; 3]) {
        if x < 0 || y < 0 || x >= i64::from(self.width) || y >= i64::from(self.height) {
            return;
        }
        let i = (y as usize * self.width as usize + x as usize) * 3;
        self.data[i..i + 3].copy_from_slice(&c);
    }

    /// Fills a rectangle (clipped).
    pub fn fill(&mut self, x: i64, y: i64, w: i64, h: i64, c: [u8; 3]) {
        for yy in y..y + h {
            for xx in x..x + w {
                self.put(xx, yy, c);
            }
        }
    }
}

/// The "jet" colour map at `v` in [0, 1].
pub fn jet(v: f32) -> [u8; 3] {
    let v = v.clamp(0.0, 1.0);
    let f = |x: f32| ((1.5 - (4.0 * v - x).abs()).clamp(0.0, 1.0) * 255.0).round() as u8;
    [f(3.0), f(2.0), f(1.0)]
}

/// Blends a heatmap (values in [0, 1], any grid size, bilinearly sampled) over `img`;
/// values below `floor` are left transparent so the anatomy stays visible.
pub fn blend_heatmap(
    img: &mut Rgb,
    heat: &[f32],
    heat_w: u32,
    heat_h: u32,
    alpha: f32,
    floor: f32,
) {
    if heat_w == 0 || heat_h == 0 || heat.len() < (heat_w * heat_h) as usize {
        return;
    }
    let sample = |fx: f32, fy: f32| -> f32 {
        let x = (fx * heat_w as f32 - 0.5).clamp(0.0, (heat_w - 1) as f32);
        let y = (fy * heat_h as f32 - 0.5).clamp(0.0, (heat_h - 1) as f32);
        let (x0, y0) = (x.floor() as u32, y.floor() as u32);
        let (x1, y1) = ((x0 + 1).min(heat_w - 1), (y0 + 1).min(heat_h - 1));
        let (tx, ty) = (x - x0 as f32, y - y0 as f32);
        let at = |xx: u32, yy: u32| heat[(yy * heat_w + xx) as usize];
        let top = at(x0, y0) * (1.0 - tx) + at(x1, y0) * tx;
        let bottom = at(x0, y1) * (1.0 - tx) + at(x1, y1) * tx;
        top * (1.0 - ty) + bottom * ty
    };
    for y in 0..img.height {
        for x in 0..img.width {
            let v = sample(
                (x as f32 + 0.5) / img.width as f32,
                (y as f32 + 0.5) / img.height as f32,
            );
            if v < floor {
                continue;
            }
            let c = jet(v);
            let i = ((y * img.width + x) * 3) as usize;
            for (px, tint) in img.data[i..i + 3].iter_mut().zip(c) {
                *px = (*px as f32 * (1.0 - alpha) + tint as f32 * alpha).round() as u8;
            }
        }
    }
}

/// 5×7 glyphs, one byte per row, bit 4 = leftmost column.
fn glyph(c: char) -> [u8; 7] {
    match c.to_ascii_uppercase() {
        'A' => [0x0E, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11],
        'B' => [0x1E, 0x11, 0x11, 0x1E, 0x11, 0x11, 0x1E],
        'C' => [0x0E, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0E],
        'D' => [0x1E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x1E],
        'E' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x1F],
        'F' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x10],
        'G' => [0x0E, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0F],
        'H' => [0x11, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11],
        'I' => [0x0E, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E],
        'J' => [0x07, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0C],
        'K' => [0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11],
        'L' => [0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1F],
        'M' => [0x11, 0x1B, 0x15, 0x15, 0x11, 0x11, 0x11],
        'N' => [0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11],
        'O' => [0x0E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
        'P' => [0x1E, 0x11, 0x11, 0x1E, 0x10, 0x10, 0x10],
        'Q' => [0x0E, 0x11, 0x11, 0x11, 0x15, 0x12, 0x0D],
        'R' => [0x1E, 0x11, 0x11, 0x1E, 0x14, 0x12, 0x11],
        'S' => [0x0F, 0x10, 0x10, 0x0E, 0x01, 0x01, 0x1E],
        'T' => [0x1F, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04],
        'U' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
        'V' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x0A, 0x04],
        'W' => [0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0A],
        'X' => [0x11, 0x11, 0x0A, 0x04, 0x0A, 0x11, 0x11],
        'Y' => [0x11, 0x11, 0x0A, 0x04, 0x04, 0x04, 0x04],
        'Z' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x10, 0x1F],
        '0' => [0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E],
        '1' => [0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E],
        '2' => [0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F],
        '3' => [0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E],
        '4' => [0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02],
        '5' => [0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E],
        '6' => [0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E],
        '7' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08],
        '8' => [0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E],
        '9' => [0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C],
        '-' => [0x00, 0x00, 0x00, 0x1F, 0x00, 0x00, 0x00],
        '.' => [0x00, 0x00, 0x00, 0x00, 0x00, 0x0C, 0x0C],
        ':' => [0x00, 0x0C, 0x0C, 0x00, 0x0C, 0x0C, 0x00],
        '%' => [0x18, 0x19, 0x02, 0x04, 0x08, 0x13, 0x03],
        '(' => [0x02, 0x04, 0x08, 0x08, 0x08, 0x04, 0x02],
        ')' => [0x08, 0x04, 0x02, 0x02, 0x02, 0x04, 0x08],
        '/' => [0x00, 0x01, 0x02, 0x04, 0x08, 0x10, 0x00],
        '=' => [0x00, 0x00, 0x1F, 0x00, 0x1F, 0x00, 0x00],
        ' ' => [0; 7],
        _ => [0x1F, 0x11, 0x11, 0x11, 0x11, 0x11, 0x1F],
    }
}

/// Width in pixels of `text` drawn at `scale`.
pub fn text_width(text: &str, scale: u32) -> u32 {
    text.chars().count() as u32 * 6 * scale
}

/// Draws `text` with its top-left corner at (x, y), each font pixel `scale` wide.
pub fn draw_text(img: &mut Rgb, x: i64, y: i64, text: &str, scale: u32, c: [u8; 3]) {
    let s = i64::from(scale.max(1));
    for (n, ch) in text.chars().enumerate() {
        let rows = glyph(ch);
        let ox = x + n as i64 * 6 * s;
        for (r, bits) in rows.iter().enumerate() {
            for col in 0..5 {
                if bits & (0x10 >> col) != 0 {
                    img.fill(ox + col * s, y + r as i64 * s, s, s, c);
                }
            }
        }
    }
}

/// Burns the banner, the finding caption and the colour legend into `img`.
pub fn annotate(img: &mut Rgb, caption: &str) {
    let scale = (img.width / 400).clamp(1, 6);
    let band = (7 * scale + 6 * scale) as i64;
    let (w, h) = (i64::from(img.width), i64::from(img.height));
    // Top banner.
    img.fill(0, 0, w, band, [160, 0, 0]);
    draw_text(
        img,
        3 * i64::from(scale),
        3 * i64::from(scale),
        "AI-GENERATED - PRELIMINARY - NOT FOR DIAGNOSTIC USE",
        scale,
        [255, 255, 255],
    );
    // Bottom caption.
    img.fill(0, h - band, w, band, [0, 0, 0]);
    draw_text(
        img,
        3 * i64::from(scale),
        h - band + 3 * i64::from(scale),
        caption,
        scale,
        [255, 255, 255],
    );
    // Legend: a vertical colour bar on the right, high at the top.
    let bar_w = 8 * i64::from(scale);
    let bar_h = (h - 2 * band - 20 * i64::from(scale)).max(10);
    let bx = w - bar_w - 4 * i64::from(scale);
    let by = band + 10 * i64::from(scale);
    for i in 0..bar_h {
        let v = 1.0 - i as f32 / bar_h as f32;
        img.fill(bx, by + i, bar_w, 1, jet(v));
    }
    let label_x = bx - text_width("HIGH", scale) as i64 - 2 * i64::from(scale);
    draw_text(img, label_x, by, "HIGH", scale, [255, 255, 255]);
    draw_text(
        img,
        label_x,
        by + bar_h - 7 * i64::from(scale),
        "LOW",
        scale,
        [255, 255, 255],
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jet_goes_from_blue_to_red() {
        assert_eq!(jet(0.0), [0, 0, 128]);
        assert_eq!(jet(1.0), [128, 0, 0]);
        assert!(jet(0.5)[1] > 200);
    }

    #[test]
    fn heat_above_the_floor_tints_and_text_is_drawn() {
        let mut img = Rgb::from_gray(100, 100, &vec![100u8; 100 * 100]);
        // hot in the left half only
        let heat = [1.0, 0.0, 1.0, 0.0];
        blend_heatmap(&mut img, &heat, 2, 2, 0.5, 0.2);
        fn px(img: &Rgb, x: usize, y: usize) -> [u8; 3] {
            let i = (y * img.width as usize + x) * 3;
            [img.data[i], img.data[i + 1], img.data[i + 2]]
        }
        assert_ne!(px(&img, 5, 50), [100, 100, 100]);
        assert_eq!(px(&img, 95, 50), [100, 100, 100]);
        annotate(&mut img, "PNEUMONIA 87%");
        assert_eq!(px(&img, 0, 0), [160, 0, 0]);
        assert!(img.data.chunks(3).any(|p| p == [255, 255, 255]));
    }
}
