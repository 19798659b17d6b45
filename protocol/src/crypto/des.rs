//! DES (FIPS 46-3) by table lookups, for the retail MAC, TDES and DUKPT.
//!
//! Why not the `des` crate: measured on this project's machine its block
//! costs about 300 ns, so one retail MAC over a 0200 (some 25 blocks) is
//! 7 µs, and a request with MACs both ways makes four of them: card
//! security alone would cost the switch three times what the rest of a
//! transaction does. Here each round is the S-boxes and P fused into eight
//! lookups (the "SP boxes", 2 KB) with E falling out of R kept rotated by
//! one bit, so a round is two XORs with its key; IP and FP are five
//! register swaps each, and [`Block`] lets a chain of DES operations skip
//! them between blocks. PC-1 and PC-2 (the key schedule only) are one
//! lookup per input byte in tables built once from their definitions. The
//! tables are built at first use from the standard's tables below; the
//! `des` crate stays as the oracle of the tests.
//!
//! The lookups are indexed by key-dependent data, as every table-driven
//! DES is; a payment HSM does this in hardware, and the soft HSM's threat
//! model (see `security::hsm::soft`) is the process's own memory.

use std::sync::LazyLock;

use zeroize::Zeroize;

/// The standard's IP: the tests check the register swaps against it.
#[cfg(test)]
const IP: [u8; 64] = [
    58, 50, 42, 34, 26, 18, 10, 2, 60, 52, 44, 36, 28, 20, 12, 4, 62, 54, 46, 38, 30, 22, 14, 6,
    64, 56, 48, 40, 32, 24, 16, 8, 57, 49, 41, 33, 25, 17, 9, 1, 59, 51, 43, 35, 27, 19, 11, 3, 61,
    53, 45, 37, 29, 21, 13, 5, 63, 55, 47, 39, 31, 23, 15, 7,
];

const P: [u8; 32] = [
    16, 7, 20, 21, 29, 12, 28, 17, 1, 15, 23, 26, 5, 18, 31, 10, 2, 8, 24, 14, 32, 27, 3, 9, 19,
    13, 30, 6, 22, 11, 4, 25,
];

const PC1: [u8; 56] = [
    57, 49, 41, 33, 25, 17, 9, 1, 58, 50, 42, 34, 26, 18, 10, 2, 59, 51, 43, 35, 27, 19, 11, 3, 60,
    52, 44, 36, 63, 55, 47, 39, 31, 23, 15, 7, 62, 54, 46, 38, 30, 22, 14, 6, 61, 53, 45, 37, 29,
    21, 13, 5, 28, 20, 12, 4,
];

const PC2: [u8; 48] = [
    14, 17, 11, 24, 1, 5, 3, 28, 15, 6, 21, 10, 23, 19, 12, 4, 26, 8, 16, 7, 27, 20, 13, 2, 41, 52,
    31, 37, 47, 55, 30, 40, 51, 45, 33, 48, 44, 49, 39, 56, 34, 53, 46, 42, 50, 36, 29, 32,
];

const SHIFTS: [u32; 16] = [1, 1, 2, 2, 2, 2, 2, 2, 1, 2, 2, 2, 2, 2, 2, 1];

const S: [[[u8; 16]; 4]; 8] = [
    [
        [14, 4, 13, 1, 2, 15, 11, 8, 3, 10, 6, 12, 5, 9, 0, 7],
        [0, 15, 7, 4, 14, 2, 13, 1, 10, 6, 12, 11, 9, 5, 3, 8],
        [4, 1, 14, 8, 13, 6, 2, 11, 15, 12, 9, 7, 3, 10, 5, 0],
        [15, 12, 8, 2, 4, 9, 1, 7, 5, 11, 3, 14, 10, 0, 6, 13],
    ],
    [
        [15, 1, 8, 14, 6, 11, 3, 4, 9, 7, 2, 13, 12, 0, 5, 10],
        [3, 13, 4, 7, 15, 2, 8, 14, 12, 0, 1, 10, 6, 9, 11, 5],
        [0, 14, 7, 11, 10, 4, 13, 1, 5, 8, 12, 6, 9, 3, 2, 15],
        [13, 8, 10, 1, 3, 15, 4, 2, 11, 6, 7, 12, 0, 5, 14, 9],
    ],
    [
        [10, 0, 9, 14, 6, 3, 15, 5, 1, 13, 12, 7, 11, 4, 2, 8],
        [13, 7, 0, 9, 3, 4, 6, 10, 2, 8, 5, 14, 12, 11, 15, 1],
        [13, 6, 4, 9, 8, 15, 3, 0, 11, 1, 2, 12, 5, 10, 14, 7],
        [1, 10, 13, 0, 6, 9, 8, 7, 4, 15, 14, 3, 11, 5, 2, 12],
    ],
    [
        [7, 13, 14, 3, 0, 6, 9, 10, 1, 2, 8, 5, 11, 12, 4, 15],
        [13, 8, 11, 5, 6, 15, 0, 3, 4, 7, 2, 12, 1, 10, 14, 9],
        [10, 6, 9, 0, 12, 11, 7, 13, 15, 1, 3, 14, 5, 2, 8, 4],
        [3, 15, 0, 6, 10, 1, 13, 8, 9, 4, 5, 11, 12, 7, 2, 14],
    ],
    [
        [2, 12, 4, 1, 7, 10, 11, 6, 8, 5, 3, 15, 13, 0, 14, 9],
        [14, 11, 2, 12, 4, 7, 13, 1, 5, 0, 15, 10, 3, 9, 8, 6],
        [4, 2, 1, 11, 10, 13, 7, 8, 15, 9, 12, 5, 6, 3, 0, 14],
        [11, 8, 12, 7, 1, 14, 2, 13, 6, 15, 0, 9, 10, 4, 5, 3],
    ],
    [
        [12, 1, 10, 15, 9, 2, 6, 8, 0, 13, 3, 4, 14, 7, 5, 11],
        [10, 15, 4, 2, 7, 12, 9, 5, 6, 1, 13, 14, 0, 11, 3, 8],
        [9, 14, 15, 5, 2, 8, 12, 3, 7, 0, 4, 10, 1, 13, 11, 6],
        [4, 3, 2, 12, 9, 5, 15, 10, 11, 14, 1, 7, 6, 0, 8, 13],
    ],
    [
        [4, 11, 2, 14, 15, 0, 8, 13, 3, 12, 9, 7, 5, 10, 6, 1],
        [13, 0, 11, 7, 4, 9, 1, 10, 14, 3, 5, 12, 2, 15, 8, 6],
        [1, 4, 11, 13, 12, 3, 7, 14, 10, 15, 6, 8, 0, 5, 9, 2],
        [6, 11, 13, 8, 1, 4, 10, 7, 9, 5, 0, 15, 14, 2, 3, 12],
    ],
    [
        [13, 2, 8, 4, 6, 15, 11, 1, 10, 9, 3, 14, 5, 0, 12, 7],
        [1, 15, 13, 8, 10, 3, 7, 4, 12, 5, 6, 11, 0, 14, 9, 2],
        [7, 11, 4, 1, 9, 12, 14, 2, 0, 6, 10, 13, 15, 3, 5, 8],
        [2, 1, 14, 7, 4, 10, 8, 13, 15, 12, 9, 0, 3, 5, 6, 11],
    ],
];

/// A bit permutation as one lookup per input byte: `table[j][v]` is what
/// input byte `j` (from the most significant) holding `v` contributes to
/// the output. Bits are numbered from 1 at the most significant end of the
/// `8 * N` input bits, as the standard numbers them; the output is
/// right-aligned.
struct BytePerm<const N: usize> {
    table: [[u64; 256]; N],
}

impl<const N: usize> BytePerm<N> {
    fn new(map: &[u8]) -> Box<BytePerm<N>> {
        let out_bits = map.len() as u32;
        let mut p = Box::new(BytePerm {
            table: [[0u64; 256]; N],
        });
        for (j, t) in p.table.iter_mut().enumerate() {
            for (v, slot) in t.iter_mut().enumerate() {
                let mut out = 0u64;
                for (k, &src) in map.iter().enumerate() {
                    let src = u32::from(src) - 1;
                    if src / 8 == j as u32 && v & (0x80 >> (src % 8)) != 0 {
                        out |= 1 << (out_bits - 1 - k as u32);
                    }
                }
                *slot = out;
            }
        }
        p
    }

    /// `x` holds the `8 * N` input bits, right-aligned.
    #[inline(always)]
    fn apply(&self, x: u64) -> u64 {
        let mut out = 0;
        for j in 0..N {
            out |= self.table[j][((x >> (8 * (N - 1 - j))) & 0xFF) as usize];
        }
        out
    }
}

struct Tables {
    pc1: Box<BytePerm<8>>,
    /// PC-2 reads 56 bits: 7 bytes.
    pc2: Box<BytePerm<7>>,
    /// S-box `i` and then P, for each 6-bit input, rotated left by one
    /// bit (the form the halves are kept in during the rounds, see
    /// [`Des::rounds`]).
    sp: [[u32; 64]; 8],
}

static TABLES: LazyLock<Tables> = LazyLock::new(|| {
    let p = BytePerm::<4>::new(&P);
    let mut sp = [[0u32; 64]; 8];
    for (i, s) in S.iter().enumerate() {
        for (x, slot) in sp[i].iter_mut().enumerate() {
            let row = ((x >> 4) & 2) | (x & 1);
            let col = (x >> 1) & 0xF;
            let nibble = u64::from(s[row][col]) << (28 - 4 * i);
            *slot = (p.apply(nibble) as u32).rotate_left(1);
        }
    }
    Tables {
        pc1: BytePerm::new(&PC1),
        pc2: BytePerm::new(&PC2),
        sp,
    }
});

/// Swaps the bits of `a >> n` selected by `mask` with those of `b`: one
/// step of a bit permutation done in registers.
#[inline(always)]
fn delta_swap(a: &mut u32, b: &mut u32, n: u32, mask: u32) {
    let t = ((*a >> n) ^ *b) & mask;
    *b ^= t;
    *a ^= t << n;
}

/// IP as five swaps between the halves (R. Outerbridge's arrangement),
/// each half then rotated left by one bit: the rounds' form.
#[inline(always)]
fn initial_permutation(block: u64) -> (u32, u32) {
    let (mut l, mut r) = ((block >> 32) as u32, block as u32);
    delta_swap(&mut l, &mut r, 4, 0x0F0F_0F0F);
    delta_swap(&mut l, &mut r, 16, 0x0000_FFFF);
    delta_swap(&mut r, &mut l, 2, 0x3333_3333);
    delta_swap(&mut r, &mut l, 8, 0x00FF_00FF);
    r = r.rotate_left(1);
    let t = (l ^ r) & 0xAAAA_AAAA;
    l ^= t;
    r ^= t;
    (l.rotate_left(1), r)
}

/// The inverse of [`initial_permutation`] (FP), of the halves in the
/// rounds' form, `x` the left one.
#[inline(always)]
fn final_permutation(x: u32, y: u32) -> u64 {
    let (mut x, mut y) = (x.rotate_right(1), y);
    let t = (x ^ y) & 0xAAAA_AAAA;
    x ^= t;
    y ^= t;
    y = y.rotate_right(1);
    delta_swap(&mut y, &mut x, 8, 0x00FF_00FF);
    delta_swap(&mut y, &mut x, 2, 0x3333_3333);
    delta_swap(&mut x, &mut y, 16, 0x0000_FFFF);
    delta_swap(&mut x, &mut y, 4, 0x0F0F_0F0F);
    (u64::from(x) << 32) | u64::from(y)
}

/// A DES key schedule, wiped on drop. Each round's 48-bit key is two
/// words laid out as the expansion E falls out of the rotated R (see
/// [`Des::rounds`]): the first holds S-boxes 1, 3, 5 and 7's six bits
/// at bits 24, 16, 8 and 0, the second S-boxes 2, 4, 6 and 8's.
pub struct Des {
    round_keys: [[u32; 2]; 16],
}

impl Drop for Des {
    fn drop(&mut self) {
        self.round_keys.zeroize();
    }
}

impl Des {
    /// From 8 key bytes (parity bits ignored, as DES does).
    pub fn new(key: &[u8; 8]) -> Des {
        let t = &*TABLES;
        let cd = t.pc1.apply(u64::from_be_bytes(*key));
        let (mut c, mut d) = ((cd >> 28) as u32, (cd & 0x0FFF_FFFF) as u32);
        let mut round_keys = [[0u32; 2]; 16];
        for (r, rk) in round_keys.iter_mut().enumerate() {
            let s = SHIFTS[r];
            c = ((c << s) | (c >> (28 - s))) & 0x0FFF_FFFF;
            d = ((d << s) | (d >> (28 - s))) & 0x0FFF_FFFF;
            let mut k = t.pc2.apply((u64::from(c) << 28) | u64::from(d));
            let piece = |i: u32| ((k >> (42 - 6 * i)) & 0x3F) as u32;
            rk[0] = (piece(0) << 24) | (piece(2) << 16) | (piece(4) << 8) | piece(6);
            rk[1] = (piece(1) << 24) | (piece(3) << 16) | (piece(5) << 8) | piece(7);
            k.zeroize();
        }
        Des { round_keys }
    }

    /// The sixteen rounds over the halves after IP, each rotated left by
    /// one bit: then E's six-bit groups for S-boxes 1, 3, 5, 7 lie at
    /// bits 24, 16, 8, 0 of R rotated right by 4, and those for 2, 4, 6,
    /// 8 at the same bits of R itself, so a round is two XORs with the
    /// key and eight lookups. Returns the halves FP takes (the last round
    /// does not swap), which are also the next block's IP domain.
    #[inline(always)]
    fn rounds(&self, mut l: u32, mut r: u32, decrypt: bool) -> (u32, u32) {
        let sp = &TABLES.sp;
        for n in 0..16 {
            let k = if decrypt {
                &self.round_keys[15 - n]
            } else {
                &self.round_keys[n]
            };
            let a = r.rotate_right(4) ^ k[0];
            let b = r ^ k[1];
            let f = sp[0][((a >> 24) & 0x3F) as usize]
                | sp[2][((a >> 16) & 0x3F) as usize]
                | sp[4][((a >> 8) & 0x3F) as usize]
                | sp[6][(a & 0x3F) as usize]
                | sp[1][((b >> 24) & 0x3F) as usize]
                | sp[3][((b >> 16) & 0x3F) as usize]
                | sp[5][((b >> 8) & 0x3F) as usize]
                | sp[7][(b & 0x3F) as usize];
            let next = l ^ f;
            l = r;
            r = next;
        }
        (r, l)
    }

    fn crypt(&self, block: &mut [u8; 8], decrypt: bool) {
        let (l, r) = initial_permutation(u64::from_be_bytes(*block));
        let (x, y) = self.rounds(l, r, decrypt);
        *block = final_permutation(x, y).to_be_bytes();
    }

    pub fn encrypt(&self, block: &mut [u8; 8]) {
        self.crypt(block, false);
    }

    pub fn decrypt(&self, block: &mut [u8; 8]) {
        self.crypt(block, true);
    }
}

/// A block in DES's internal form (after IP, halves rotated), so that
/// several DES operations in a row (a CBC chain, TDES's three passes, a
/// retail MAC's output transformation) pay for IP and FP once: IP is a
/// bit permutation, so IP(a ^ b) = IP(a) ^ IP(b), and FP then IP between
/// two operations cancel.
#[derive(Clone, Copy)]
pub struct Block {
    x: u32,
    y: u32,
}

impl Block {
    pub fn new(bytes: &[u8; 8]) -> Block {
        let (x, y) = initial_permutation(u64::from_be_bytes(*bytes));
        Block { x, y }
    }

    pub fn to_bytes(self) -> [u8; 8] {
        final_permutation(self.x, self.y).to_be_bytes()
    }

    /// XORs `bytes` in (CBC's chaining).
    pub fn xor(&mut self, bytes: &[u8; 8]) {
        let (x, y) = initial_permutation(u64::from_be_bytes(*bytes));
        self.x ^= x;
        self.y ^= y;
    }

    pub fn encrypt(&mut self, des: &Des) {
        (self.x, self.y) = des.rounds(self.x, self.y, false);
    }

    pub fn decrypt(&mut self, des: &Des) {
        (self.x, self.y) = des.rounds(self.x, self.y, true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use des::cipher::generic_array::GenericArray;
    use des::cipher::{BlockDecrypt, BlockEncrypt, KeyInit};
    use proptest::prelude::*;

    #[test]
    fn the_standard_worked_example() {
        // The example every DES text works through: key 133457799BBCDFF1,
        // plaintext 0123456789ABCDEF.
        let d = Des::new(&0x1334_5779_9BBC_DFF1u64.to_be_bytes());
        let mut b = 0x0123_4567_89AB_CDEFu64.to_be_bytes();
        d.encrypt(&mut b);
        assert_eq!(u64::from_be_bytes(b), 0x85E8_1354_0F0A_B405);
        d.decrypt(&mut b);
        assert_eq!(u64::from_be_bytes(b), 0x0123_4567_89AB_CDEF);
    }

    proptest! {
        #[test]
        fn the_register_permutations_are_the_standards_ip_and_fp(x: u64) {
            let ip = BytePerm::<8>::new(&IP);
            let (l, r) = initial_permutation(x);
            let want = ip.apply(x);
            prop_assert_eq!(l.rotate_right(1), (want >> 32) as u32);
            prop_assert_eq!(r.rotate_right(1), want as u32);
            prop_assert_eq!(final_permutation(l, r), x);
        }

        #[test]
        fn a_chain_of_blocks_is_cbc_and_tdes_with_the_des_crate(k1: [u8; 8], k2: [u8; 8], blocks: Vec<[u8; 8]>) {
            let (a, b) = (Des::new(&k1), Des::new(&k2));
            let (ta, tb) = (
                des::Des::new_from_slice(&k1).expect("8 bytes"),
                des::Des::new_from_slice(&k2).expect("8 bytes"),
            );
            let mut ours = Block::new(&[0; 8]);
            let mut theirs = GenericArray::clone_from_slice(&[0u8; 8]);
            for block in &blocks {
                ours.xor(block);
                ours.encrypt(&a);
                for (t, x) in theirs.iter_mut().zip(block) {
                    *t ^= x;
                }
                ta.encrypt_block(&mut theirs);
            }
            // The retail MAC's output transformation: D(K2), then E(K1).
            ours.decrypt(&b);
            ours.encrypt(&a);
            tb.decrypt_block(&mut theirs);
            ta.encrypt_block(&mut theirs);
            prop_assert_eq!(&ours.to_bytes()[..], &theirs[..]);
        }

        #[test]
        fn agrees_with_the_des_crate(key: [u8; 8], block: [u8; 8]) {
            let ours = Des::new(&key);
            let theirs = des::Des::new_from_slice(&key).expect("8 bytes");
            let mut a = block;
            let mut b = GenericArray::clone_from_slice(&block);
            ours.encrypt(&mut a);
            theirs.encrypt_block(&mut b);
            prop_assert_eq!(&a[..], &b[..]);
            ours.decrypt(&mut a);
            theirs.decrypt_block(&mut b);
            prop_assert_eq!(a, block);
            prop_assert_eq!(&b[..], &block[..]);
        }
    }
}
