//! Zigzag varints, as record batches v2 use them for lengths and deltas.

use bytes::BufMut;

/// Bytes `value` takes as a zigzag varint.
pub(crate) fn varint_len(value: i32) -> usize {
    varlong_len(i64::from(value))
}

/// Bytes `value` takes as a zigzag varlong.
pub(crate) fn varlong_len(value: i64) -> usize {
    let zigzag = ((value << 1) ^ (value >> 63)) as u64;
    // 1 byte per 7 bits, at least one.
    (64 - (zigzag | 1).leading_zeros() as usize).div_ceil(7)
}

pub(crate) fn put_varint(out: &mut impl BufMut, value: i32) {
    put_varlong(out, i64::from(value));
}

pub(crate) fn put_varlong(out: &mut impl BufMut, value: i64) {
    let mut zigzag = ((value << 1) ^ (value >> 63)) as u64;
    while zigzag >= 0x80 {
        out.put_u8((zigzag as u8) | 0x80);
        zigzag >>= 7;
    }
    out.put_u8(zigzag as u8);
}

/// Reads a zigzag varlong from the front of `input`, advancing it. At most
/// ten bytes are read; a longer run is malformed.
pub(crate) fn get_varlong(input: &mut &[u8]) -> Result<i64, &'static str> {
    let mut value = 0u64;
    for i in 0..10 {
        let Some((&byte, rest)) = input.split_first() else {
            return Err("varint runs past the end");
        };
        *input = rest;
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte < 0x80 {
            return Ok(((value >> 1) as i64) ^ -((value & 1) as i64));
        }
    }
    Err("varint longer than ten bytes")
}

/// Reads a zigzag varint (must fit in an i32).
pub(crate) fn get_varint(input: &mut &[u8]) -> Result<i32, &'static str> {
    i32::try_from(get_varlong(input)?).map_err(|_| "varint out of the i32 range")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_encodings() {
        // From the Kafka protocol guide's zigzag table.
        let cases: [(i64, &[u8]); 6] =
            [(0, &[0]), (-1, &[1]), (1, &[2]), (-2, &[3]), (63, &[0x7e]), (64, &[0x80, 0x01])];
        for (value, bytes) in cases {
            let mut out = Vec::new();
            put_varlong(&mut out, value);
            assert_eq!(out, bytes, "{value}");
            assert_eq!(varlong_len(value), bytes.len());
        }
    }

    proptest! {
        #[test]
        fn round_trip(value in any::<i64>(), small in any::<i32>()) {
            let mut out = Vec::new();
            put_varlong(&mut out, value);
            prop_assert_eq!(out.len(), varlong_len(value));
            let mut input = &out[..];
            prop_assert_eq!(get_varlong(&mut input), Ok(value));
            prop_assert!(input.is_empty());

            let mut out = Vec::new();
            put_varint(&mut out, small);
            prop_assert_eq!(out.len(), varint_len(small));
            prop_assert_eq!(get_varint(&mut &out[..]), Ok(small));
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..12)) {
            let _ = get_varlong(&mut &bytes[..]);
        }
    }
}
