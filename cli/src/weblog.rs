//! The web-log example: each input value is a web-server log line that
//! starts with an IPv4 address; the output is keyed by the address's
//! country (from a small built-in table) and carries the line without the
//! address, so no personal data leaves the input topic.

use rill::Output;

/// Country of an IPv4 address, by its first octet: a stand-in for a geo
/// database, fixed so tests and demos are reproducible.
pub fn country(ip: &str) -> Option<&'static str> {
    const BY_FIRST_OCTET: [(u8, &str); 12] = [
        (0, "US"),
        (24, "CA"),
        (41, "ZA"),
        (58, "CN"),
        (77, "DE"),
        (81, "GB"),
        (90, "FR"),
        (103, "IN"),
        (133, "JP"),
        (151, "IT"),
        (177, "BR"),
        (203, "AU"),
    ];
    let mut octets = ip.split('.');
    let first: u8 = octets.next()?.parse().ok()?;
    // Exactly four octets, each 0-255.
    if octets.clone().count() != 3 || !octets.all(|o| o.parse::<u8>().is_ok()) {
        return None;
    }
    BY_FIRST_OCTET.iter().rev().find(|(from, _)| first >= *from).map(|(_, country)| *country)
}

/// The line's leading IPv4 address and the rest of the line.
pub fn split_address(line: &str) -> Option<(&str, &str)> {
    let (ip, rest) = line.split_once(' ')?;
    country(ip)?;
    Some((ip, rest.trim_start()))
}

/// The processor's function: `None` for a line without a leading IPv4
/// address (filtered), else country → the line without the address.
pub fn process(line: &str) -> Option<Output<String, String>> {
    let (ip, rest) = split_address(line)?;
    Some(Output::new(country(ip)?.to_owned(), rest.to_owned()))
}

/// A generated log line carrying `id` (for demos and crash tests).
pub fn line(id: u64) -> String {
    let octet = |shift: u32| (id.wrapping_mul(2_654_435_761) >> shift) as u8;
    format!(
        "{}.{}.{}.{} - - [27/Nov/2026:10:00:{:02} +0000] \"GET /item?id={id} HTTP/1.1\" 200 {}",
        octet(24),
        octet(16),
        octet(8),
        octet(0),
        id % 60,
        500 + id % 1500
    )
}

/// The id a generated line carries, from its output value.
pub fn id_of(value: &str) -> Option<u64> {
    let start = value.find("id=")? + 3;
    let end = value[start..].find(' ').map_or(value.len(), |e| start + e);
    value[start..end].parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_become_countries_and_leave_the_line() {
        assert_eq!(country("81.2.69.160"), Some("GB"));
        assert_eq!(country("8.8.8.8"), Some("US"));
        assert_eq!(country("203.0.113.9"), Some("AU"));
        assert_eq!(country("256.1.1.1"), None);
        assert_eq!(country("1.2.3"), None);
        assert_eq!(country("1.2.3.4.5"), None);
        let out = process("77.1.2.3 - - [x] \"GET / HTTP/1.1\" 200 5").unwrap();
        assert_eq!((out.key.as_str(), out.value.as_str()), ("DE", "- - [x] \"GET / HTTP/1.1\" 200 5"));
        assert!(process("no address here").is_none());
        assert!(process("").is_none());
    }

    #[test]
    fn generated_lines_carry_their_id() {
        for id in [0, 1, 42, 49_999, u64::from(u32::MAX)] {
            let out = process(&line(id)).expect("a generated line has an address");
            assert_eq!(id_of(&out.value), Some(id));
            assert!(!out.value.contains(split_address(&line(id)).unwrap().0));
        }
    }
}
