#[cfg(target_arch = "wasm32")]
use std::arch::wasm32::*;


#[cfg(target_arch = "wasm32")]
#[target_feature(enable = "simd128")]
pub fn color_convert_line_ycbcr(y_slice: &[u8], cb_slice: &[u8], cr_slice: &[u8], output: &mut [u8]) -> usize {

    assert!(output.len() % 3 == 0);
    let num = output.len() / 3;
    assert!(num <= y_slice.len());
    assert!(num <= cb_slice.len());
    assert!(num <= cr_slice.len());

    let num_vecs = num / 8;

    for i in 0..num_vecs {
        const SHIFT: u32 = 6;
        // Load.
        let y: v128;
        let cb: v128;
        let cr: v128;
        // SAFETY: i is at most `num / 8 - 8`, so the highest v128_load64_zero reads from
        // [num - 8, num). The above asserts ensure this is in-bounds.
        unsafe {
            y = v128_load64_zero(y_slice.as_ptr().wrapping_add(i * 8) as *const _);
            cb = v128_load64_zero(cb_slice.as_ptr().wrapping_add(i * 8) as *const _);
            cr = v128_load64_zero(cr_slice.as_ptr().wrapping_add(i * 8) as *const _);
        }

        // Convert to 16 bit.
        let y = i16x8_shl(i16x8_extend_low_u8x16(y), SHIFT);
        let cb = i16x8_shl(i16x8_extend_low_u8x16(cb), SHIFT);
        let cr = i16x8_shl(i16x8_extend_low_u8x16(cr), SHIFT);

        // Add offsets
        let c128 = i16x8_splat(128 << SHIFT);
        let y = i16x8_add_sat(y, i16x8_splat((1 << SHIFT) >> 1));
        let cb = i16x8_sub_sat(cb, c128);
        let cr = i16x8_sub_sat(cr, c128);

        // Compute cr * 1.402, cb * 0.34414, cr * 0.71414, cb * 1.772
        let cr_140200 = i16x8_add_sat(i16x8_q15mulr_sat(cr, i16x8_splat(13173)), cr);
        let cb_034414 = i16x8_q15mulr_sat(cb, i16x8_splat(11276));
        let cr_071414 = i16x8_q15mulr_sat(cr, i16x8_splat(23401));
        let cb_177200 = i16x8_add_sat(i16x8_q15mulr_sat(cb, i16x8_splat(25297)), cb);

        // Last conversion step.
        let r = i16x8_add_sat(y, cr_140200);
        let g = i16x8_sub_sat(y, i16x8_add_sat(cb_034414, cr_071414));
        let b = i16x8_add_sat(y, cb_177200);

        // Shift back and convert to u8.
        let zero = u8x16_splat(0);
        let r = u8x16_narrow_i16x8(i16x8_shr(r, SHIFT), zero);
        let g = u8x16_narrow_i16x8(i16x8_shr(g, SHIFT), zero);
        let b = u8x16_narrow_i16x8(i16x8_shr(b, SHIFT), zero);

        // Shuffle rrrrrrrrggggggggbbbbbbbb to rgbrgbrgb...

        let rg_lanes = i8x16_shuffle::<0, 16,
                                       1, 17,
                                       2, 18,
                                       3, 19,
                                       4, 20,
                                       5, 21,
                                       6, 22,
                                       7, 23>(r, g);

        let rgb_low = i8x16_shuffle::<0, 1, 16,         // r0, g0, b0
                                      2, 3, 17,         // r1, g1, b1
                                      4, 5, 18,         // r2, g2, b2
                                      6, 7, 19,         // r3, g3, b3
                                      8, 9, 20,         // r4, g4, b4
                                      10>(rg_lanes, b); // r5

        let rgb_hi = i8x16_shuffle::<11, 21, 12,       // g5, b5, r6
                                     13, 22, 14,       // g6, b6, r7
                                     15, 23,  0,       // g7, b7, --
                                      0,  0,  0,       // --, --, --
                                      0,  0,  0,       // --, --, --
                                      0>(rg_lanes, b); // --

        // SAFETY: i is at most `output.len() / 24 - 1` so the highest possible write is to
        // `output.len() - 1`.
        unsafe {
            v128_store(output.as_mut_ptr().wrapping_add(24 * i) as *mut _, rgb_low);
            v128_store64_lane::<0>(rgb_hi, output.as_mut_ptr().wrapping_add(24 * i + 16) as *mut _);
        }
    }

    num_vecs * 8
}
