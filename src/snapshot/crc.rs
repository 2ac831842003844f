//! CRC-32C combination in O(log n): `combine(crc(A), crc(B), |B|) == crc(AB)`.
//!
//! The status hash is assembled from per-leaf CRCs, one combination per leaf. The `crc32c` crate's
//! combine squares 32×32 bit matrices for every call (zlib's old method, ~µs each); this is zlib's
//! newer method: multiply by x^(8·|B|) modulo the polynomial, with the powers x^(2^k) precomputed.

/// CRC-32C (Castagnoli) polynomial, bit-reflected.
const POLY: u32 = 0x82F6_3B78;

/// a·b modulo the polynomial (reflected bit order: bit 31 is x^0).
const fn mult_mod_p(a: u32, mut b: u32) -> u32 {
    let mut m: u32 = 1 << 31;
    let mut p: u32 = 0;
    loop {
        if a & m != 0 {
            p ^= b;
            if a & (m - 1) == 0 {
                return p;
            }
        }
        m >>= 1;
        b = if b & 1 != 0 { (b >> 1) ^ POLY } else { b >> 1 };
    }
}

/// `X2N[k]` = x^(2^k) modulo the polynomial, for every k a byte length can need.
const X2N: [u32; 67] = {
    let mut t = [0u32; 67];
    let mut p: u32 = 1 << 30; // x^1
    t[0] = p;
    let mut k = 1;
    while k < t.len() {
        p = mult_mod_p(p, p);
        t[k] = p;
        k += 1;
    }
    t
};

/// x^(8·n) modulo the polynomial: the operator that appends n zero bytes.
fn x8n_mod_p(mut n: u64) -> u32 {
    let mut p: u32 = 1 << 31; // x^0
    let mut k = 3;
    while n != 0 {
        if n & 1 != 0 {
            p = mult_mod_p(X2N[k], p);
        }
        n >>= 1;
        k += 1;
    }
    p
}

/// crc32c(A ‖ B) from crc32c(A), crc32c(B) and |B|.
pub fn combine(crc_a: u32, crc_b: u32, len_b: u64) -> u32 {
    mult_mod_p(x8n_mod_p(len_b), crc_a) ^ crc_b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn combine_equals_crc_of_concatenation() {
        let data: Vec<u8> = (0..70_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        for (a, b) in [
            (0, 0),
            (0, 1),
            (1, 0),
            (3, 5),
            (100, 4096),
            (5000, 65_000),
            (17, 1),
        ] {
            let (x, y) = (&data[..a], &data[a..a + b]);
            let whole = crc32c::crc32c(&data[..a + b]);
            assert_eq!(
                combine(crc32c::crc32c(x), crc32c::crc32c(y), b as u64),
                whole,
                "{a}+{b}"
            );
            assert_eq!(
                combine(crc32c::crc32c(x), crc32c::crc32c(y), b as u64),
                crc32c::crc32c_combine(crc32c::crc32c(x), crc32c::crc32c(y), b),
            );
        }
    }
}
