// Malicious JPEG files can cause operations in the idct to overflow.
// One example is tests/crashtest/images/imagetestsuite/b0b8914cc5f7a6eff409f16d8cc236c5.jpg
// That's why wrapping operators are needed.

// Note: we have many values that are straight from a reference.
// Do not warn on them or try to automatically change them.
#![allow(clippy::excessive_precision)]
// Note: consistency for unrolled, scaled offset loops
#![allow(clippy::erasing_op)]
#![allow(clippy::identity_op)]
use crate::parser::Dimensions;
use core::num::Wrapping;

pub(crate) fn choose_idct_size(full_size: Dimensions, requested_size: Dimensions) -> usize {
    fn scaled(len: u16, scale: usize) -> u16 {
        ((len as u32 * scale as u32 - 1) / 8 + 1) as u16
    }

    for &scale in &[1, 2, 4] {
        if scaled(full_size.width, scale) >= requested_size.width
            || scaled(full_size.height, scale) >= requested_size.height
        {
            return scale;
        }
    }

    8
}

#[test]
fn test_choose_idct_size() {
    assert_eq!(
        choose_idct_size(
            Dimensions {
                width: 5472,
                height: 3648
            },
            Dimensions {
                width: 200,
                height: 200
            }
        ),
        1
    );
    assert_eq!(
        choose_idct_size(
            Dimensions {
                width: 5472,
                height: 3648
            },
            Dimensions {
                width: 500,
                height: 500
            }
        ),
        1
    );
    assert_eq!(
        choose_idct_size(
            Dimensions {
                width: 5472,
                height: 3648
            },
            Dimensions {
                width: 684,
                height: 456
            }
        ),
        1
    );
    assert_eq!(
        choose_idct_size(
            Dimensions {
                width: 5472,
                height: 3648
            },
            Dimensions {
                width: 999,
                height: 456
            }
        ),
        1
    );
    assert_eq!(
        choose_idct_size(
            Dimensions {
                width: 5472,
                height: 3648
            },
            Dimensions {
                width: 684,
                height: 999
            }
        ),
        1
    );
    assert_eq!(
        choose_idct_size(
            Dimensions {
                width: 500,
                height: 333
            },
            Dimensions {
                width: 63,
                height: 42
            }
        ),
        1
    );

    assert_eq!(
        choose_idct_size(
            Dimensions {
                width: 5472,
                height: 3648
            },
            Dimensions {
                width: 685,
                height: 999
            }
        ),
        2
    );
    assert_eq!(
        choose_idct_size(
            Dimensions {
                width: 5472,
                height: 3648
            },
            Dimensions {
                width: 1000,
                height: 1000
            }
        ),
        2
    );
    assert_eq!(
        choose_idct_size(
            Dimensions {
                width: 5472,
                height: 3648
            },
            Dimensions {
                width: 1400,
                height: 1400
            }
        ),
        4
    );

    assert_eq!(
        choose_idct_size(
            Dimensions {
                width: 5472,
                height: 3648
            },
            Dimensions {
                width: 5472,
                height: 3648
            }
        ),
        8
    );
    assert_eq!(
        choose_idct_size(
            Dimensions {
                width: 5472,
                height: 3648
            },
            Dimensions {
                width: 16384,
                height: 16384
            }
        ),
        8
    );
    assert_eq!(
        choose_idct_size(
            Dimensions {
                width: 1,
                height: 1
            },
            Dimensions {
                width: 65535,
                height: 65535
            }
        ),
        8
    );
    assert_eq!(
        choose_idct_size(
            Dimensions {
                width: 5472,
                height: 3648
            },
            Dimensions {
                width: 16384,
                height: 16384
            }
        ),
        8
    );
}

pub(crate) fn dequantize_and_idct_block(
    scale: usize,
    coefficients: &[i16; 64],
    quantization_table: &[u16; 64],
    output_linestride: usize,
    output: &mut [u8],
) {
    match scale {
        8 => dequantize_and_idct_block_8x8(
            coefficients,
            quantization_table,
            output_linestride,
            output,
        ),
        4 => dequantize_and_idct_block_4x4(
            coefficients,
            quantization_table,
            output_linestride,
            output,
        ),
        2 => dequantize_and_idct_block_2x2(
            coefficients,
            quantization_table,
            output_linestride,
            output,
        ),
        1 => dequantize_and_idct_block_1x1(
            coefficients,
            quantization_table,
            output_linestride,
            output,
        ),
        _ => panic!("Unsupported IDCT scale {scale}/8"),
    }
}

/// Dequantizes one block of coefficients (natural order) and writes its 8x8 samples, rows
/// `output_linestride` apart, with libjpeg's accurate integer IDCT ([`islow`]).
pub fn dequantize_and_idct_block_8x8(
    coefficients: &[i16; 64],
    quantization_table: &[u16; 64],
    output_linestride: usize,
    output: &mut [u8],
) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2 (checked just above).
        #[allow(unsafe_code)]
        unsafe {
            if avx2::islow_16bit(coefficients, quantization_table, output_linestride, output) {
                return;
            }
            return islow_avx2(coefficients, quantization_table, output_linestride, output);
        }
    }
    if coefficients[1..].iter().all(|&c| c == 0) {
        return islow_dc_only(coefficients[0], quantization_table[0], output_linestride, output);
    }
    islow(coefficients, quantization_table, output_linestride, output)
}

/// [`islow`] compiled for AVX2 (eight 32-bit lanes per instruction); the same arithmetic.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[allow(unsafe_code)]
unsafe fn islow_avx2(coefficients: &[i16; 64], q: &[u16; 64], stride: usize, output: &mut [u8]) {
    islow(coefficients, q, stride, output)
}

/// [`islow`] of a block whose AC terms are all zero (the smooth areas of an image, most
/// blocks of a radiograph's background): every sample is the same, computed with the two
/// passes' own arithmetic on the one non-zero input (the other terms add zero), so the
/// same value to the bit as the full transform; libjpeg takes the same shortcut per column
/// and per row.
#[inline(always)]
fn islow_dc_only(dc: i16, q: u16, stride: usize, output: &mut [u8]) {
    let descale = |x: i32, shift: u32| x.wrapping_add(1 << (shift - 1)) >> shift;
    let pass1 = descale(
        (i32::from(dc) * i32::from(q)).wrapping_shl(CONST_BITS),
        CONST_BITS - PASS1_BITS,
    );
    let pass2 = descale(pass1.wrapping_shl(CONST_BITS), CONST_BITS + PASS1_BITS + 3);
    let sample = range_limit(pass2);
    for row in output.chunks_mut(stride).take(8) {
        row[..8].fill(sample);
    }
}

/// [`islow`] with 16-bit inputs to each pass, as libjpeg-turbo's SIMD code runs it: each
/// output is a sum of products of two inputs with pair constants (`vpmaddwd`), the C code's
/// products and sums regrouped. Integer addition and multiplication regroup exactly (also
/// where they wrap), and the two descaling shifts are the C code's, so a block gives the
/// same samples to the bit as [`islow`] whenever its inputs fit in 16 bits: every
/// dequantized coefficient and every first-pass output. That holds for every block an 8-bit
/// encoder makes; for a block where it does not (a hostile stream), `islow_16bit` writes
/// nothing and returns `false`, and the 32-bit [`islow`] decodes it.
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod avx2 {
    use super::{
        range_limit, CONST_BITS, FIX_0_298631336, FIX_0_390180644, FIX_0_541196100,
        FIX_0_765366865, FIX_0_899976223, FIX_1_175875602, FIX_1_501321110, FIX_1_847759065,
        FIX_1_961570560, FIX_2_053119869, FIX_2_562915447, FIX_3_072711026, PASS1_BITS,
    };
    use core::arch::x86_64::*;

    /// The constant pair (`a` for the first input of each pair, `b` for the second) of a
    /// `vpmaddwd`: every 32-bit lane computes `x * a + y * b`.
    #[inline(always)]
    unsafe fn pair(a: i32, b: i32) -> __m256i {
        debug_assert!(i16::try_from(a).is_ok() && i16::try_from(b).is_ok());
        _mm256_set1_epi32((((b as u32) << 16) | (a as u32 & 0xffff)) as i32)
    }

    /// The eight 16-bit lanes of `x` and `y` as eight (x, y) pairs, in lane order.
    #[inline(always)]
    unsafe fn zip(x: __m128i, y: __m128i) -> __m256i {
        _mm256_set_m128i(_mm_unpackhi_epi16(x, y), _mm_unpacklo_epi16(x, y))
    }

    /// One one-dimensional islow of eight lanes: `v[k]` holds input `k` of each lane, the
    /// outputs (32 bits, descaled by `2^shift`) go to `out[k]`. The even and odd parts of
    /// `islow_1d`, each product of a sum expanded into products of the inputs.
    #[inline(always)]
    unsafe fn idct_1d(v: &[__m128i; 8], shift: i32, out: &mut [__m256i; 8]) {
        let madd = _mm256_madd_epi16;
        let (add, sub) = (_mm256_add_epi32, _mm256_sub_epi32);
        // Even part.
        let z26 = zip(v[2], v[6]);
        let tmp3 = madd(z26, pair(FIX_0_541196100 + FIX_0_765366865, FIX_0_541196100));
        let tmp2 = madd(z26, pair(FIX_0_541196100, FIX_0_541196100 - FIX_1_847759065));
        let z04 = zip(v[0], v[4]);
        let tmp0 = madd(z04, pair(1 << CONST_BITS, 1 << CONST_BITS));
        let tmp1 = madd(z04, pair(1 << CONST_BITS, -(1 << CONST_BITS)));
        let (tmp10, tmp13) = (add(tmp0, tmp3), sub(tmp0, tmp3));
        let (tmp11, tmp12) = (add(tmp1, tmp2), sub(tmp1, tmp2));
        // Odd part: inputs 7, 5, 3, 1 are the C code's tmp0..tmp3.
        let (z73, z51) = (zip(v[7], v[3]), zip(v[5], v[1]));
        let (z71, z53) = (zip(v[7], v[1]), zip(v[5], v[3]));
        let both = |c: i32| pair(c, c);
        let z3 = add(
            madd(z73, both(FIX_1_175875602 - FIX_1_961570560)),
            madd(z51, both(FIX_1_175875602)),
        );
        let z4 = add(
            madd(z51, both(FIX_1_175875602 - FIX_0_390180644)),
            madd(z73, both(FIX_1_175875602)),
        );
        let t0 = add(
            madd(z71, pair(FIX_0_298631336 - FIX_0_899976223, -FIX_0_899976223)),
            z3,
        );
        let t3 = add(
            madd(z71, pair(-FIX_0_899976223, FIX_1_501321110 - FIX_0_899976223)),
            z4,
        );
        let t1 = add(
            madd(z53, pair(FIX_2_053119869 - FIX_2_562915447, -FIX_2_562915447)),
            z4,
        );
        let t2 = add(
            madd(z53, pair(-FIX_2_562915447, FIX_3_072711026 - FIX_2_562915447)),
            z3,
        );
        let round = _mm256_set1_epi32(1 << (shift - 1));
        let count = _mm_cvtsi32_si128(shift);
        let d = |x: __m256i| _mm256_sra_epi32(_mm256_add_epi32(x, round), count);
        out[0] = d(add(tmp10, t3));
        out[7] = d(sub(tmp10, t3));
        out[1] = d(add(tmp11, t2));
        out[6] = d(sub(tmp11, t2));
        out[2] = d(add(tmp12, t1));
        out[5] = d(sub(tmp12, t1));
        out[3] = d(add(tmp13, t0));
        out[4] = d(sub(tmp13, t0));
    }

    /// Eight 32-bit lanes as 16-bit lanes (saturating), in lane order.
    #[inline(always)]
    unsafe fn narrow(x: __m256i) -> __m128i {
        _mm_packs_epi32(_mm256_castsi256_si128(x), _mm256_extracti128_si256::<1>(x))
    }

    /// The 8x8 matrix of 16-bit lanes `r` transposed: lane `i` of row `k` becomes lane `k`
    /// of row `i`.
    #[inline(always)]
    unsafe fn transpose(r: &[__m128i; 8]) -> [__m128i; 8] {
        let a0 = _mm_unpacklo_epi16(r[0], r[1]);
        let a1 = _mm_unpackhi_epi16(r[0], r[1]);
        let a2 = _mm_unpacklo_epi16(r[2], r[3]);
        let a3 = _mm_unpackhi_epi16(r[2], r[3]);
        let a4 = _mm_unpacklo_epi16(r[4], r[5]);
        let a5 = _mm_unpackhi_epi16(r[4], r[5]);
        let a6 = _mm_unpacklo_epi16(r[6], r[7]);
        let a7 = _mm_unpackhi_epi16(r[6], r[7]);
        let b0 = _mm_unpacklo_epi32(a0, a2);
        let b1 = _mm_unpackhi_epi32(a0, a2);
        let b2 = _mm_unpacklo_epi32(a1, a3);
        let b3 = _mm_unpackhi_epi32(a1, a3);
        let b4 = _mm_unpacklo_epi32(a4, a6);
        let b5 = _mm_unpackhi_epi32(a4, a6);
        let b6 = _mm_unpacklo_epi32(a5, a7);
        let b7 = _mm_unpackhi_epi32(a5, a7);
        [
            _mm_unpacklo_epi64(b0, b4),
            _mm_unpackhi_epi64(b0, b4),
            _mm_unpacklo_epi64(b1, b5),
            _mm_unpackhi_epi64(b1, b5),
            _mm_unpacklo_epi64(b2, b6),
            _mm_unpackhi_epi64(b2, b6),
            _mm_unpacklo_epi64(b3, b7),
            _mm_unpackhi_epi64(b3, b7),
        ]
    }

    /// See the module: the block's samples written, or `false` (nothing written) when an
    /// input to a pass does not fit in 16 bits or `output` is shorter than eight rows.
    ///
    /// # Safety
    /// The CPU must have AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn islow_16bit(
        coefficients: &[i16; 64],
        q: &[u16; 64],
        stride: usize,
        output: &mut [u8],
    ) -> bool {
        if stride < 8 || output.len() < 7 * stride + 8 {
            return false;
        }
        // Dequantize in 16 bits: a table entry above i16::MAX, or a product whose high
        // half is not the sign of its low half, does not fit.
        let mut rows = [_mm_setzero_si128(); 8];
        let mut misfit = _mm_setzero_si128();
        for (k, row) in rows.iter_mut().enumerate() {
            // SAFETY: rows k of 8 lanes lie inside the 64-element arrays.
            let c = _mm_loadu_si128(coefficients.as_ptr().add(8 * k).cast());
            let m = _mm_loadu_si128(q.as_ptr().add(8 * k).cast());
            let low = _mm_mullo_epi16(c, m);
            let high = _mm_mulhi_epi16(c, m);
            misfit = _mm_or_si128(misfit, _mm_srli_epi16::<15>(m));
            misfit = _mm_or_si128(misfit, _mm_xor_si128(high, _mm_srai_epi16::<15>(low)));
            *row = low;
        }
        if _mm_testz_si128(misfit, misfit) == 0 {
            return false;
        }
        // No AC terms (row 0 without its first lane, and every other row, all zero): one
        // value for the whole block.
        let mut ac = _mm_and_si128(rows[0], _mm_set_epi16(-1, -1, -1, -1, -1, -1, -1, 0));
        for row in &rows[1..] {
            ac = _mm_or_si128(ac, *row);
        }
        if _mm_testz_si128(ac, ac) == 1 {
            super::islow_dc_only(coefficients[0], q[0], stride, output);
            return true;
        }
        // Pass 1: columns (lane = column, input k = row k).
        let mut pass1 = [_mm256_setzero_si256(); 8];
        idct_1d(&rows, (CONST_BITS - PASS1_BITS) as i32, &mut pass1);
        let mut narrowed = [_mm_setzero_si128(); 8];
        let mut lost = _mm256_setzero_si256();
        for (n, wide) in narrowed.iter_mut().zip(&pass1) {
            *n = narrow(*wide);
            lost = _mm256_or_si256(lost, _mm256_xor_si256(_mm256_cvtepi16_epi32(*n), *wide));
        }
        if _mm256_testz_si256(lost, lost) == 0 {
            return false;
        }
        // Pass 2: rows (lane = row, input k = column k).
        let mut pass2 = [_mm256_setzero_si256(); 8];
        idct_1d(&transpose(&narrowed), (CONST_BITS + PASS1_BITS + 3) as i32, &mut pass2);
        // Range limit as `range_limit` computes it, then back to rows of samples.
        let mask = _mm256_set1_epi32(1023);
        let sign = _mm256_set1_epi32(512);
        let bias = _mm256_set1_epi32(512 - 128);
        let (lo, hi) = (_mm256_setzero_si256(), _mm256_set1_epi32(255));
        let mut columns = [_mm_setzero_si128(); 8];
        for (column, x) in columns.iter_mut().zip(&pass2) {
            let v = _mm256_xor_si256(_mm256_and_si256(*x, mask), sign);
            let v = _mm256_sub_epi32(v, bias);
            *column = narrow(_mm256_min_epi32(_mm256_max_epi32(v, lo), hi));
        }
        debug_assert_eq!(range_limit(0), 128);
        for (r, row) in transpose(&columns).iter().enumerate() {
            let bytes = _mm_packus_epi16(*row, *row);
            // SAFETY: row r starts at r * stride and has eight bytes: output holds at least
            // 7 * stride + 8 bytes (checked at the top).
            _mm_storel_epi64(output.as_mut_ptr().add(r * stride).cast(), bytes);
        }
        true
    }
}

// libjpeg's fixed point: FIX(x) = round(x * 2^CONST_BITS); PASS1_BITS more bits of
// precision are kept between the two passes.
const CONST_BITS: u32 = 13;
const PASS1_BITS: u32 = 2;
const FIX_0_298631336: i32 = 2446;
const FIX_0_390180644: i32 = 3196;
const FIX_0_541196100: i32 = 4433;
const FIX_0_765366865: i32 = 6270;
const FIX_0_899976223: i32 = 7373;
const FIX_1_175875602: i32 = 9633;
const FIX_1_501321110: i32 = 12299;
const FIX_1_847759065: i32 = 15137;
const FIX_1_961570560: i32 = 16069;
const FIX_2_053119869: i32 = 16819;
const FIX_2_562915447: i32 = 20995;
const FIX_3_072711026: i32 = 25172;

/// libjpeg's post-IDCT range limit: the value taken modulo 1024 as a signed 10-bit number,
/// moved by +128 and clamped to a sample (its table lookup, `& RANGE_MASK`, computed).
#[inline(always)]
fn range_limit(x: i32) -> u8 {
    let v = ((x & 1023) ^ 512) - 512;
    (v + 128).clamp(0, 255) as u8
}

/// The islow one-dimensional IDCT, in libjpeg's order of operations (the even part's
/// rotation, then the odd part's), of eight independent lanes at once: `v[k][i]` is input
/// `k` of lane `i`; the outputs, descaled by `2^shift`, go to `out[k][i]`. One loop over
/// the lanes with the whole butterfly inside, which the compiler vectorises.
#[inline(always)]
fn islow_1d(v: &[[i32; 8]; 8], shift: u32, out: &mut [[i32; 8]; 8]) {
    let round = 1i32 << (shift - 1);
    for i in 0..8 {
        let (z2, z3) = (v[2][i], v[6][i]);
        let z1 = z2.wrapping_add(z3).wrapping_mul(FIX_0_541196100);
        let tmp2 = z1.wrapping_add(z3.wrapping_mul(-FIX_1_847759065));
        let tmp3 = z1.wrapping_add(z2.wrapping_mul(FIX_0_765366865));
        let (z2, z3) = (v[0][i], v[4][i]);
        let tmp0 = z2.wrapping_add(z3).wrapping_shl(CONST_BITS);
        let tmp1 = z2.wrapping_sub(z3).wrapping_shl(CONST_BITS);
        let tmp10 = tmp0.wrapping_add(tmp3);
        let tmp13 = tmp0.wrapping_sub(tmp3);
        let tmp11 = tmp1.wrapping_add(tmp2);
        let tmp12 = tmp1.wrapping_sub(tmp2);
        let (t0, t1, t2, t3) = (v[7][i], v[5][i], v[3][i], v[1][i]);
        let z1 = t0.wrapping_add(t3);
        let z2 = t1.wrapping_add(t2);
        let z3 = t0.wrapping_add(t2);
        let z4 = t1.wrapping_add(t3);
        let z5 = z3.wrapping_add(z4).wrapping_mul(FIX_1_175875602);
        let t0 = t0.wrapping_mul(FIX_0_298631336);
        let t1 = t1.wrapping_mul(FIX_2_053119869);
        let t2 = t2.wrapping_mul(FIX_3_072711026);
        let t3 = t3.wrapping_mul(FIX_1_501321110);
        let z1 = z1.wrapping_mul(-FIX_0_899976223);
        let z2 = z2.wrapping_mul(-FIX_2_562915447);
        let z3 = z3.wrapping_mul(-FIX_1_961570560).wrapping_add(z5);
        let z4 = z4.wrapping_mul(-FIX_0_390180644).wrapping_add(z5);
        let t0 = t0.wrapping_add(z1.wrapping_add(z3));
        let t1 = t1.wrapping_add(z2.wrapping_add(z4));
        let t2 = t2.wrapping_add(z2.wrapping_add(z3));
        let t3 = t3.wrapping_add(z1.wrapping_add(z4));
        let d = |x: i32| x.wrapping_add(round) >> shift;
        out[0][i] = d(tmp10.wrapping_add(t3));
        out[7][i] = d(tmp10.wrapping_sub(t3));
        out[1][i] = d(tmp11.wrapping_add(t2));
        out[6][i] = d(tmp11.wrapping_sub(t2));
        out[2][i] = d(tmp12.wrapping_add(t1));
        out[5][i] = d(tmp12.wrapping_sub(t1));
        out[3][i] = d(tmp13.wrapping_add(t0));
        out[4][i] = d(tmp13.wrapping_sub(t0));
    }
}

/// libjpeg's accurate integer IDCT (`jpeg_idct_islow`, 8-bit samples; after `jidctint.c`
/// of the Independent JPEG Group's software, see DULI-CHANGES.md): the same sums in
/// the same order, so the same samples as libjpeg-turbo (and PIL) to the last bit. Its
/// shortcuts for blocks without AC terms give the same values and are left out.
#[inline(always)]
fn islow(coefficients: &[i16; 64], q: &[u16; 64], stride: usize, output: &mut [u8]) {
    // Pass 1: the eight columns at once (lane = column, input k = row k of the block).
    let mut block = [[0i32; 8]; 8];
    for (k, lanes) in block.iter_mut().enumerate() {
        for (c, v) in lanes.iter_mut().enumerate() {
            *v = i32::from(coefficients[8 * k + c]) * i32::from(q[8 * k + c]);
        }
    }
    let mut pass1 = [[0i32; 8]; 8];
    islow_1d(&block, CONST_BITS - PASS1_BITS, &mut pass1);
    // Pass 2: the eight rows at once (transposed: lane = row, input k = column k).
    for (r, lanes) in pass1.iter().enumerate() {
        for (c, v) in lanes.iter().enumerate() {
            block[c][r] = *v;
        }
    }
    let mut pass2 = [[0i32; 8]; 8];
    islow_1d(&block, CONST_BITS + PASS1_BITS + 3, &mut pass2);
    for (r, row) in output.chunks_mut(stride).take(8).enumerate() {
        for (c, out) in row[..8].iter_mut().enumerate() {
            *out = range_limit(pass2[c][r]);
        }
    }
}

// 4x4 and 2x2 IDCT based on Rakesh Dugad and Narendra Ahuja: "A Fast Scheme for Image Size Change in the Compressed Domain" (2001).
// http://sylvana.net/jpegcrop/jidctred/
fn dequantize_and_idct_block_4x4(
    coefficients: &[i16; 64],
    quantization_table: &[u16; 64],
    output_linestride: usize,
    output: &mut [u8],
) {
    debug_assert_eq!(coefficients.len(), 64);
    let mut temp = [Wrapping(0i32); 4 * 4];

    const CONST_BITS: usize = 12;
    const PASS1_BITS: usize = 2;
    const FINAL_BITS: usize = CONST_BITS + PASS1_BITS + 3;

    // columns
    for i in 0..4 {
        let s0 = Wrapping(coefficients[i + 8 * 0] as i32 * quantization_table[i + 8 * 0] as i32);
        let s1 = Wrapping(coefficients[i + 8 * 1] as i32 * quantization_table[i + 8 * 1] as i32);
        let s2 = Wrapping(coefficients[i + 8 * 2] as i32 * quantization_table[i + 8 * 2] as i32);
        let s3 = Wrapping(coefficients[i + 8 * 3] as i32 * quantization_table[i + 8 * 3] as i32);

        let x0 = (s0 + s2) << PASS1_BITS;
        let x2 = (s0 - s2) << PASS1_BITS;

        let p1 = (s1 + s3) * stbi_f2f(0.541196100);
        let t0 = (p1 + s3 * stbi_f2f(-1.847759065) + Wrapping(512)) >> (CONST_BITS - PASS1_BITS);
        let t2 = (p1 + s1 * stbi_f2f(0.765366865) + Wrapping(512)) >> (CONST_BITS - PASS1_BITS);

        temp[i + 4 * 0] = x0 + t2;
        temp[i + 4 * 3] = x0 - t2;
        temp[i + 4 * 1] = x2 + t0;
        temp[i + 4 * 2] = x2 - t0;
    }

    for i in 0..4 {
        let s0 = temp[i * 4 + 0];
        let s1 = temp[i * 4 + 1];
        let s2 = temp[i * 4 + 2];
        let s3 = temp[i * 4 + 3];

        let x0 = (s0 + s2) << CONST_BITS;
        let x2 = (s0 - s2) << CONST_BITS;

        let p1 = (s1 + s3) * stbi_f2f(0.541196100);
        let t0 = p1 + s3 * stbi_f2f(-1.847759065);
        let t2 = p1 + s1 * stbi_f2f(0.765366865);

        // constants scaled things up by 1<<12, plus we had 1<<2 from first
        // loop, plus horizontal and vertical each scale by sqrt(8) so together
        // we've got an extra 1<<3, so 1<<17 total we need to remove.
        // so we want to round that, which means adding 0.5 * 1<<17,
        // aka 65536. Also, we'll end up with -128 to 127 that we want
        // to encode as 0..255 by adding 128, so we'll add that before the shift
        let x0 = x0 + Wrapping(1 << (FINAL_BITS - 1)) + Wrapping(128 << FINAL_BITS);
        let x2 = x2 + Wrapping(1 << (FINAL_BITS - 1)) + Wrapping(128 << FINAL_BITS);

        let output = &mut output[i * output_linestride..][..4];
        output[0] = stbi_clamp((x0 + t2) >> FINAL_BITS);
        output[3] = stbi_clamp((x0 - t2) >> FINAL_BITS);
        output[1] = stbi_clamp((x2 + t0) >> FINAL_BITS);
        output[2] = stbi_clamp((x2 - t0) >> FINAL_BITS);
    }
}

fn dequantize_and_idct_block_2x2(
    coefficients: &[i16; 64],
    quantization_table: &[u16; 64],
    output_linestride: usize,
    output: &mut [u8],
) {
    debug_assert_eq!(coefficients.len(), 64);

    const SCALE_BITS: usize = 3;

    // Column 0
    let s00 = Wrapping(coefficients[8 * 0] as i32 * quantization_table[8 * 0] as i32);
    let s10 = Wrapping(coefficients[8 * 1] as i32 * quantization_table[8 * 1] as i32);

    let x0 = s00 + s10;
    let x2 = s00 - s10;

    // Column 1
    let s01 = Wrapping(coefficients[8 * 0 + 1] as i32 * quantization_table[8 * 0 + 1] as i32);
    let s11 = Wrapping(coefficients[8 * 1 + 1] as i32 * quantization_table[8 * 1 + 1] as i32);

    let x1 = s01 + s11;
    let x3 = s01 - s11;

    let x0 = x0 + Wrapping(1 << (SCALE_BITS - 1)) + Wrapping(128 << SCALE_BITS);
    let x2 = x2 + Wrapping(1 << (SCALE_BITS - 1)) + Wrapping(128 << SCALE_BITS);

    // Row 0
    output[0] = stbi_clamp((x0 + x1) >> SCALE_BITS);
    output[1] = stbi_clamp((x0 - x1) >> SCALE_BITS);

    // Row 1
    output[output_linestride + 0] = stbi_clamp((x2 + x3) >> SCALE_BITS);
    output[output_linestride + 1] = stbi_clamp((x2 - x3) >> SCALE_BITS);
}

fn dequantize_and_idct_block_1x1(
    coefficients: &[i16; 64],
    quantization_table: &[u16; 64],
    _output_linestride: usize,
    output: &mut [u8],
) {
    debug_assert_eq!(coefficients.len(), 64);

    let s0 = (Wrapping(coefficients[0] as i32 * quantization_table[0] as i32) + Wrapping(128 * 8)) / Wrapping(8);
    output[0] = stbi_clamp(s0);
}

// take a -128..127 value and stbi__clamp it and convert to 0..255
fn stbi_clamp(x: Wrapping<i32>) -> u8 {
    x.0.max(0).min(255) as u8
}

fn stbi_f2f(x: f32) -> Wrapping<i32> {
    Wrapping((x * 4096.0 + 0.5) as i32)
}

#[test]
fn test_dequantize_and_idct_block_8x8() {
    #[rustfmt::skip]
    let coefficients: [i16; 8 * 8] = [
        -14, -39, 58, -2, 3, 3, 0, 1,
        11, 27, 4, -3, 3, 0, 1, 0,
        -6, -13, -9, -1, -2, -1, 0, 0,
        -4, 0, -1, -2, 0, 0, 0, 0,
        3, 0, 0, 0, 0, 0, 0, 0,
        -3, -2, 0, 0, 0, 0, 0, 0,
        0, 0, 0, 0, 0, 0, 0, 0,
        0, 0, 0, 0, 0, 0, 0, 0
    ];

    #[rustfmt::skip]
    let quantization_table: [u16; 8 * 8] = [
        8, 6, 5, 8, 12, 20, 26, 31,
        6, 6, 7, 10, 13, 29, 30, 28,
        7, 7, 8, 12, 20, 29, 35, 28,
        7, 9, 11, 15, 26, 44, 40, 31,
        9, 11, 19, 28, 34, 55, 52, 39,
        12, 18, 28, 32, 41, 52, 57, 46,
        25, 32, 39, 44, 52, 61, 60, 51,
        36, 46, 48, 49, 56, 50, 52, 50
    ];
    let output_linestride: usize = 8;
    let mut output = [0u8; 8 * 8];
    dequantize_and_idct_block_8x8(
        &coefficients,
        &quantization_table,
        output_linestride,
        &mut output,
    );
    #[rustfmt::skip]
    let expected_output = [
        118, 92, 110, 83, 77, 93, 144, 198,
        172, 116, 114, 87, 78, 93, 146, 191,
        194, 107, 91, 76, 71, 93, 160, 198,
        196, 100, 80, 74, 67, 92, 174, 209,
        182, 104, 88, 81, 68, 89, 178, 206,
        105, 64, 59, 59, 63, 94, 183, 201,
        35, 27, 28, 37, 72, 121, 203, 204,
        37, 45, 41, 47, 98, 154, 223, 208
    ];
    for i in 0..64 {
        assert!((output[i] as i16 - expected_output[i] as i16).abs() <= 1);
    }
}

#[test]
fn test_dequantize_and_idct_block_8x8_all_zero() {
    let mut output = [0u8; 8 * 8];
    dequantize_and_idct_block_8x8(&[0; 8 * 8], &[666; 8 * 8], 8, &mut output);
    assert_eq!(&output[..], &[128; 8 * 8][..]);
}

#[test]
fn test_dequantize_and_idct_block_8x8_saturated() {
    // Hostile coefficients wrap as in C instead of panicking; the vectorised copy and the
    // plain one agree.
    let (mut dispatched, mut plain) = ([0u8; 64], [0u8; 64]);
    dequantize_and_idct_block_8x8(&[i16::MAX; 8 * 8], &[u16::MAX; 8 * 8], 8, &mut dispatched);
    islow(&[i16::MAX; 8 * 8], &[u16::MAX; 8 * 8], 8, &mut plain);
    assert_eq!(dispatched, plain);
}

#[test]
fn test_dc_only_blocks_match_the_full_transform() {
    // Extremes included: the arithmetic wraps as C's does, on both paths.
    let dcs = [0i16, 1, -1, 7, -8, 100, -1000, 2047, -2048, i16::MAX, i16::MIN];
    let qs = [1u16, 2, 5, 16, 99, 255, 1000, u16::MAX];
    for &dc in &dcs {
        for &q in &qs {
            let mut coefficients = [0i16; 64];
            coefficients[0] = dc;
            let mut table = [1u16; 64];
            table[0] = q;
            let (mut shortcut, mut full) = ([0u8; 64], [0u8; 64]);
            dequantize_and_idct_block_8x8(&coefficients, &table, 8, &mut shortcut);
            islow(&coefficients, &table, 8, &mut full);
            assert_eq!(shortcut, full, "dc {dc} q {q}");
        }
    }
}

/// A small xorshift generator for the randomised tests below (no dependency).
#[cfg(test)]
fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

#[test]
fn test_the_16_bit_transform_matches_the_32_bit_one_to_the_bit() {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let (mut fast, mut rejected) = (0u32, 0u32);
        for round in 0..300_000u32 {
            let mut coefficients = [0i16; 64];
            let mut table = [0u16; 64];
            // Four kinds of block: as encoders make them (small, decaying with frequency,
            // tables up to 255), the 16-bit limits, anything at all, and no AC terms.
            for i in 0..64 {
                let r = xorshift(&mut state);
                let (c, q) = match round % 4 {
                    3 if i > 0 => (0, 1 + (r >> 32) % 255),
                    3 => {
                        let q = 1 + ((r >> 32) % 255) as i64;
                        (((r % 2048) as i64 - 1024) / q, q as u64)
                    }
                    0 => {
                        // A DCT coefficient of 8-bit samples (at most 2^10 in magnitude,
                        // smaller at higher frequencies) quantized by a table entry.
                        let span = (1024 >> (i / 12)).max(4) as i64;
                        let q = 1 + ((r >> 32) % 255) as i64;
                        (((r % (2 * span as u64)) as i64 - span) / q, q as u64)
                    }
                    1 => {
                        let c = [i16::MIN, i16::MAX, -2048, 2047, 0][(r % 5) as usize];
                        (i64::from(c), [1, 16, 255, 32767][((r >> 8) % 4) as usize])
                    }
                    _ => (i64::from(r as i16), (r >> 16) & 0xffff),
                };
                coefficients[i] = c as i16;
                table[i] = q as u16;
                if r % 7 == 0 && round % 4 != 3 {
                    coefficients[i] = 0;
                }
            }
            let mut reference = [0u8; 64];
            islow(&coefficients, &table, 8, &mut reference);
            let mut out = [0u8; 64];
            #[allow(unsafe_code)]
            // SAFETY: the CPU has AVX2 (checked above).
            let done = unsafe { avx2::islow_16bit(&coefficients, &table, 8, &mut out) };
            if done {
                fast += 1;
                assert_eq!(out, reference, "round {round}: {coefficients:?} {table:?}");
            } else {
                rejected += 1;
                assert_eq!(out, [0u8; 64], "nothing written when rejected");
            }
            let mut dispatched = [0u8; 64];
            dequantize_and_idct_block_8x8(&coefficients, &table, 8, &mut dispatched);
            assert_eq!(dispatched, reference, "round {round}");
        }
        // Encoder-like blocks take the 16-bit path; the wild ones mostly fall back.
        assert!(fast >= 100_000, "{fast} blocks took the 16-bit path");
        assert!(rejected >= 50_000, "{rejected} blocks fell back");
    }
}
