#[cfg(target_arch = "x86")]
use std::arch::x86::*;
#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;


#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
#[target_feature(enable = "ssse3")]
pub unsafe fn color_convert_line_ycbcr(y: &[u8], cb: &[u8], cr: &[u8], output: &mut [u8]) -> usize {
    assert!(output.len() % 3 == 0);
    let num = output.len() / 3;
    assert!(num <= y.len());
    assert!(num <= cb.len());
    assert!(num <= cr.len());
    // _mm_loadu_si64 generates incorrect code for Rust <1.58. To circumvent this, we use a full
    // 128-bit load, but that requires leaving an extra vector of border to the scalar code.
    // From Rust 1.58 on, the _mm_loadu_si128 can be replaced with _mm_loadu_si64 and this
    // .saturating_sub() can be removed.
    let num_vecs = (num / 8).saturating_sub(1);

    for i in 0..num_vecs {
        const SHIFT: i32 = 6;
        // Load.
        let y = _mm_loadu_si128(y.as_ptr().wrapping_add(i * 8) as *const _);
        let cb = _mm_loadu_si128(cb.as_ptr().wrapping_add(i * 8) as *const _);
        let cr = _mm_loadu_si128(cr.as_ptr().wrapping_add(i * 8) as *const _);

        // Convert to 16 bit.
        let shuf16 = _mm_setr_epi8(
            0, -0x7F, 1, -0x7F, 2, -0x7F, 3, -0x7F, 4, -0x7F, 5, -0x7F, 6, -0x7F, 7, -0x7F,
        );
        let y = _mm_slli_epi16(_mm_shuffle_epi8(y, shuf16), SHIFT);
        let cb = _mm_slli_epi16(_mm_shuffle_epi8(cb, shuf16), SHIFT);
        let cr = _mm_slli_epi16(_mm_shuffle_epi8(cr, shuf16), SHIFT);

        // Add offsets
        let c128 = _mm_set1_epi16(128 << SHIFT);
        let y = _mm_adds_epi16(y, _mm_set1_epi16((1 << SHIFT) >> 1));
        let cb = _mm_subs_epi16(cb, c128);
        let cr = _mm_subs_epi16(cr, c128);

        // Compute cr * 1.402, cb * 0.34414, cr * 0.71414, cb * 1.772
        let cr_140200 = _mm_adds_epi16(_mm_mulhrs_epi16(cr, _mm_set1_epi16(13173)), cr);
        let cb_034414 = _mm_mulhrs_epi16(cb, _mm_set1_epi16(11276));
        let cr_071414 = _mm_mulhrs_epi16(cr, _mm_set1_epi16(23401));
        let cb_177200 = _mm_adds_epi16(_mm_mulhrs_epi16(cb, _mm_set1_epi16(25297)), cb);

        // Last conversion step.
        let r = _mm_adds_epi16(y, cr_140200);
        let g = _mm_subs_epi16(y, _mm_adds_epi16(cb_034414, cr_071414));
        let b = _mm_adds_epi16(y, cb_177200);

        // Shift back and convert to u8.
        let zero = _mm_setzero_si128();
        let r = _mm_packus_epi16(_mm_srai_epi16(r, SHIFT), zero);
        let g = _mm_packus_epi16(_mm_srai_epi16(g, SHIFT), zero);
        let b = _mm_packus_epi16(_mm_srai_epi16(b, SHIFT), zero);

        // Shuffle rrrrrrrrggggggggbbbbbbbb to rgbrgbrgb...

        // Control vectors for _mm_shuffle_epi8. -0x7F is selected so that the resulting position
        // after _mm_shuffle_epi8 will be filled with 0, so that the r, g, and b vectors can then
        // be OR-ed together.
        let shufr = _mm_setr_epi8(
            0, -0x7F, -0x7F, 1, -0x7F, -0x7F, 2, -0x7F, -0x7F, 3, -0x7F, -0x7F, 4, -0x7F, -0x7F, 5,
        );
        let shufg = _mm_setr_epi8(
            -0x7F, 0, -0x7F, -0x7F, 1, -0x7F, -0x7F, 2, -0x7F, -0x7F, 3, -0x7F, -0x7F, 4, -0x7F,
            -0x7F,
        );
        let shufb = _mm_alignr_epi8(shufg, shufg, 15);

        let rgb_low = _mm_or_si128(
            _mm_shuffle_epi8(r, shufr),
            _mm_or_si128(_mm_shuffle_epi8(g, shufg), _mm_shuffle_epi8(b, shufb)),
        );

        // For the next part of the rgb vectors, we need to select R values from 6 up, G and B from
        // 5 up. The highest bit of -0x7F + 6 is still set, so the corresponding location will
        // still be 0.
        let shufr1 = _mm_add_epi8(shufb, _mm_set1_epi8(6));
        let shufg1 = _mm_add_epi8(shufr, _mm_set1_epi8(5));
        let shufb1 = _mm_add_epi8(shufg, _mm_set1_epi8(5));

        let rgb_hi = _mm_or_si128(
            _mm_shuffle_epi8(r, shufr1),
            _mm_or_si128(_mm_shuffle_epi8(g, shufg1), _mm_shuffle_epi8(b, shufb1)),
        );

        let mut data = [0u8; 32];
        _mm_storeu_si128(data.as_mut_ptr() as *mut _, rgb_low);
        _mm_storeu_si128(data.as_mut_ptr().wrapping_add(16) as *mut _, rgb_hi);
        std::ptr::copy_nonoverlapping::<u8>(
            data.as_ptr(),
            output.as_mut_ptr().wrapping_add(24 * i),
            24,
        );
    }

    num_vecs * 8
}
