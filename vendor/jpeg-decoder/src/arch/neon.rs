#[cfg(all(feature = "nightly_aarch64_neon", target_arch = "aarch64"))]
use core::arch::aarch64::*;


#[cfg(all(feature = "nightly_aarch64_neon", target_arch = "aarch64"))]
#[target_feature(enable = "neon")]
pub unsafe fn color_convert_line_ycbcr(y: &[u8], cb: &[u8], cr: &[u8], output: &mut [u8]) -> usize {
    assert!(output.len() % 3 == 0);
    let num = output.len() / 3;
    assert!(num <= y.len());
    assert!(num <= cb.len());
    assert!(num <= cr.len());
    let num_vecs = num / 8;

    for i in 0..num_vecs {
        const SHIFT: i32 = 6;
        // Load.
        let y = vld1_u8(y.as_ptr().wrapping_add(i * 8));
        let cb = vld1_u8(cb.as_ptr().wrapping_add(i * 8));
        let cr = vld1_u8(cr.as_ptr().wrapping_add(i * 8));

        // Convert to 16 bit and shift.
        let y = vreinterpretq_s16_u16(vshll_n_u8(y, SHIFT));
        let cb = vreinterpretq_s16_u16(vshll_n_u8(cb, SHIFT));
        let cr = vreinterpretq_s16_u16(vshll_n_u8(cr, SHIFT));

        // Add offsets
        let y = vqaddq_s16(y, vdupq_n_s16((1 << SHIFT) >> 1));
        let c128 = vdupq_n_s16(128 << SHIFT);
        let cb = vqsubq_s16(cb, c128);
        let cr = vqsubq_s16(cr, c128);

        // Compute cr * 1.402, cb * 0.34414, cr * 0.71414, cb * 1.772
        let cr_140200 = vqaddq_s16(vqrdmulhq_n_s16(cr, 13173), cr);
        let cb_034414 = vqrdmulhq_n_s16(cb, 11276);
        let cr_071414 = vqrdmulhq_n_s16(cr, 23401);
        let cb_177200 = vqaddq_s16(vqrdmulhq_n_s16(cb, 25297), cb);

        // Last conversion step.
        let r = vqaddq_s16(y, cr_140200);
        let g = vqsubq_s16(y, vqaddq_s16(cb_034414, cr_071414));
        let b = vqaddq_s16(y, cb_177200);

        // Shift back and convert to u8.
        let r = vqshrun_n_s16(r, SHIFT);
        let g = vqshrun_n_s16(g, SHIFT);
        let b = vqshrun_n_s16(b, SHIFT);

        // Shuffle + store.
        vst3_u8(
            output.as_mut_ptr().wrapping_add(24 * i),
            uint8x8x3_t(r, g, b),
        );
    }

    num_vecs * 8
}
