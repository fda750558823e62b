//! W3C trace context across the hop (pure): the `traceparent` of an input
//! names the remote parent of the record's processing; each output carries
//! a `traceparent` whose parent is that processing, and the input's
//! `tracestate` as it was.
//!
//! `traceparent` is `00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`
//! (lower case; all-zero ids are invalid; a later version may append
//! fields after the four, which version 00 readers ignore).

use std::hash::{BuildHasher, Hasher};

/// The header names.
pub(crate) const TRACEPARENT: &str = "traceparent";
pub(crate) const TRACESTATE: &str = "tracestate";

/// A parsed `traceparent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TraceParent {
    pub(crate) trace_id: [u8; 16],
    pub(crate) parent_id: [u8; 8],
    pub(crate) flags: u8,
}

fn hex_into(text: &[u8], out: &mut [u8]) -> Option<()> {
    if text.len() != out.len() * 2 {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    for (byte, pair) in out.iter_mut().zip(text.chunks_exact(2)) {
        *byte = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl TraceParent {
    /// Parses a header value; `None` when it is not a valid one.
    pub(crate) fn parse(value: &[u8]) -> Option<TraceParent> {
        let mut parts = value.split(|&c| c == b'-');
        let (version, trace, parent, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        let mut v = [0u8; 1];
        hex_into(version, &mut v)?;
        // Version ff is invalid; version 00 has exactly four fields.
        if v[0] == 0xff || (v[0] == 0 && parts.next().is_some()) {
            return None;
        }
        let mut parsed = TraceParent { trace_id: [0; 16], parent_id: [0; 8], flags: 0 };
        hex_into(trace, &mut parsed.trace_id)?;
        hex_into(parent, &mut parsed.parent_id)?;
        let mut f = [0u8; 1];
        hex_into(flags, &mut f)?;
        parsed.flags = f[0];
        if parsed.trace_id == [0; 16] || parsed.parent_id == [0; 8] {
            return None;
        }
        Some(parsed)
    }

    /// The trace id, as hex.
    pub(crate) fn trace_id_hex(&self) -> String {
        hex(&self.trace_id)
    }

    /// The parent's span id, as hex.
    pub(crate) fn parent_id_hex(&self) -> String {
        hex(&self.parent_id)
    }

    /// The `traceparent` of a child span `span_id` in the same trace.
    pub(crate) fn child(&self, span_id: [u8; 8]) -> String {
        format!("00-{}-{}-{:02x}", hex(&self.trace_id), hex(&span_id), self.flags)
    }
}

/// A new span id: random, never all zero.
pub(crate) fn new_span_id() -> [u8; 8] {
    loop {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u128(
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos(),
        );
        let id = hasher.finish().to_be_bytes();
        if id != [0; 8] {
            return id;
        }
    }
}

/// A span id, as hex.
pub(crate) fn span_id_hex(id: [u8; 8]) -> String {
    hex(&id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_specs_example_and_makes_a_child() {
        let parent = TraceParent::parse(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        assert_eq!(parent.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(parent.parent_id_hex(), "00f067aa0ba902b7");
        assert_eq!(parent.flags, 1);
        let child = parent.child([1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(child, "00-4bf92f3577b34da6a3ce929d0e0e4736-0102030405060708-01");
        assert_eq!(TraceParent::parse(child.as_bytes()).unwrap().parent_id, [1, 2, 3, 4, 5, 6, 7, 8]);
    }

    #[test]
    fn refuses_what_the_spec_refuses_and_reads_a_later_version() {
        for bad in [
            &b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"[..],
            b"00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            b"",
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{}", String::from_utf8_lossy(bad));
        }
        let later = TraceParent::parse(b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-comes").unwrap();
        assert_eq!(later.parent_id_hex(), "00f067aa0ba902b7");
    }

    #[test]
    fn span_ids_differ_and_are_never_zero() {
        let (a, b) = (new_span_id(), new_span_id());
        assert_ne!(a, b);
        assert_ne!(a, [0; 8]);
    }
}
