//! Stored pixel values from native (decoded) pixel bytes: sample width from Bits Allocated,
//! the Bits Stored / High Bit window of each sample, and two's-complement sign extension.

/// Why the pixel bytes cannot be read as samples.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SampleError {
    /// The bit layout is not one DICOM allows (or one this reader handles).
    #[error(
        "unsupported bit layout: bits allocated {allocated}, bits stored {stored}, high bit {high}"
    )]
    Layout {
        /// Bits Allocated.
        allocated: u16,
        /// Bits Stored.
        stored: u16,
        /// High Bit.
        high: u16,
    },
    /// Fewer bytes than rows × columns × samples need.
    #[error("pixel data too short: {have} bytes, {need} needed")]
    Short {
        /// Bytes present.
        have: usize,
        /// Bytes needed.
        need: usize,
    },
}

/// Bit layout of one sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BitLayout {
    /// Bits Allocated (8, 16 or 32).
    pub allocated: u16,
    /// Bits Stored.
    pub stored: u16,
    /// High Bit (normally `stored − 1`).
    pub high: u16,
    /// Pixel Representation 1: two's complement.
    pub signed: bool,
}

impl BitLayout {
    /// Smallest and largest value a sample can hold.
    pub fn range(&self) -> (i64, i64) {
        if self.signed {
            (
                -(1i64 << (self.stored - 1)),
                (1i64 << (self.stored - 1)) - 1,
            )
        } else {
            (0, (1i64 << self.stored) - 1)
        }
    }

    /// The stored value of one raw sample: only the stored bits
    /// (`high − stored + 1 ..= high`), sign-extended when signed. Call on a checked layout.
    pub fn value(&self, raw: u64) -> i32 {
        let shift = u32::from(self.high + 1 - self.stored);
        let stored = u32::from(self.stored);
        let v = (raw >> shift) & ((1u64 << stored) - 1);
        if self.signed && (v >> (stored - 1)) & 1 == 1 {
            (v as i64 - (1i64 << stored)) as i32
        } else {
            v as i32
        }
    }

    /// Whether DICOM allows this layout and this reader handles it (8, 16 or 32 bits
    /// allocated, the stored bits inside them; values that fit an `i32`, so not 32 unsigned
    /// stored bits, whose upper half would read as negative: the brightest pixels dark).
    pub fn check(&self) -> Result<(), SampleError> {
        let ok = matches!(self.allocated, 8 | 16 | 32)
            && self.stored >= 1
            && self.stored <= self.allocated
            && self.high < self.allocated
            && self.high + 1 >= self.stored
            && (self.signed || self.stored < 32);
        if ok {
            Ok(())
        } else {
            Err(SampleError::Layout {
                allocated: self.allocated,
                stored: self.stored,
                high: self.high,
            })
        }
    }
}

/// Reads `count` samples from native-endian bytes, keeping only the stored bits
/// (`high − stored + 1 ..= high`) and sign-extending them when signed.
pub fn stored_values(
    bytes: &[u8],
    layout: BitLayout,
    count: usize,
) -> Result<Vec<i32>, SampleError> {
    layout.check()?;
    let width = usize::from(layout.allocated / 8);
    let need = count * width;
    if bytes.len() < need {
        return Err(SampleError::Short {
            have: bytes.len(),
            need,
        });
    }
    let convert = |raw: u64| layout.value(raw);
    let out = match width {
        1 => bytes[..need]
            .iter()
            .map(|b| convert(u64::from(*b)))
            .collect(),
        2 => bytes[..need]
            .chunks_exact(2)
            .map(|c| convert(u64::from(u16::from_ne_bytes([c[0], c[1]]))))
            .collect(),
        _ => bytes[..need]
            .chunks_exact(4)
            .map(|c| convert(u64::from(u32::from_ne_bytes([c[0], c[1], c[2], c[3]]))))
            .collect(),
    };
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u16s(v: &[u16]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_ne_bytes()).collect()
    }

    #[test]
    fn twelve_bits_stored_ignores_the_unused_high_bits() {
        let layout = BitLayout {
            allocated: 16,
            stored: 12,
            high: 11,
            signed: false,
        };
        // 0xF000 are overlay/garbage bits outside the stored window.
        let v = stored_values(&u16s(&[0x0FFF, 0xF010, 16 * 255]), layout, 3).unwrap();
        assert_eq!(v, vec![4095, 16, 4080]);
        assert_eq!(layout.range(), (0, 4095));
    }

    #[test]
    fn signed_samples_are_sign_extended_from_bits_stored() {
        let layout = BitLayout {
            allocated: 16,
            stored: 12,
            high: 11,
            signed: true,
        };
        let v = stored_values(&u16s(&[0x0800, 0x0FFF, 0x07FF]), layout, 3).unwrap();
        assert_eq!(v, vec![-2048, -1, 2047]);
    }

    #[test]
    fn high_bit_not_at_the_top_of_stored_shifts() {
        let layout = BitLayout {
            allocated: 16,
            stored: 12,
            high: 15,
            signed: false,
        };
        let v = stored_values(&u16s(&[0xFFF0]), layout, 1).unwrap();
        assert_eq!(v, vec![4095]);
    }

    #[test]
    fn eight_bit_and_short_data() {
        let layout = BitLayout {
            allocated: 8,
            stored: 8,
            high: 7,
            signed: false,
        };
        assert_eq!(
            stored_values(&[0, 7, 255], layout, 3).unwrap(),
            vec![0, 7, 255]
        );
        assert!(matches!(
            stored_values(&[0, 7], layout, 3),
            Err(SampleError::Short { have: 2, need: 3 })
        ));
        let bad = BitLayout {
            allocated: 12,
            ..layout
        };
        assert!(stored_values(&[0], bad, 1).is_err());
    }

    /// 32 unsigned stored bits do not fit the reader's values: refused, not read with the
    /// upper half negative; 32 signed bits, and 31 unsigned, are read.
    #[test]
    fn unsigned_32_bit_samples_are_refused() {
        let layout = |stored: u16, signed: bool| BitLayout {
            allocated: 32,
            stored,
            high: stored - 1,
            signed,
        };
        assert!(layout(32, false).check().is_err());
        assert!(layout(32, true).check().is_ok());
        assert!(layout(31, false).check().is_ok());
        assert_eq!(layout(31, false).value(u64::from(u32::MAX >> 1)), i32::MAX);
    }
}
