//! The web-log processor, written as a user of the `rill` library would:
//! each input value is a web-server log line that starts with an IPv4
//! address; the output is keyed by the address's country and carries the
//! line without the address. Lines that cannot be read go to a dead-letter
//! topic; the processor runs until Ctrl-C, then drains, commits and stops.
//!
//! ```sh
//! cargo run -p rill-examples --example weblog -- localhost:9092 weblog weblog-by-country instance-1
//! ```

use std::time::Duration;

use rill::{ErrorTolerance, Ignore, Output, Processor};

/// A stand-in for a geo database: the country of an address by its first
/// octet.
fn country(first_octet: u8) -> &'static str {
    match first_octet {
        0..=23 => "US",
        24..=40 => "CA",
        41..=57 => "ZA",
        58..=76 => "CN",
        77..=80 => "DE",
        81..=89 => "GB",
        90..=102 => "FR",
        103..=132 => "IN",
        133..=150 => "JP",
        151..=176 => "IT",
        177..=202 => "BR",
        _ => "AU",
    }
}

/// `"81.2.69.160 - - [...] GET / ..."` → `("GB", "- - [...] GET / ...")`;
/// `None` (filtered) for a line that does not start with an address.
fn by_country(line: &str) -> Option<Output<String, String>> {
    let (address, rest) = line.split_once(' ')?;
    let octets: Vec<u8> = address.split('.').map(|o| o.parse().ok()).collect::<Option<_>>()?;
    if octets.len() != 4 {
        return None;
    }
    Some(Output::new(country(octets[0]).to_owned(), rest.trim_start().to_owned()))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [brokers, input, output, instance] = &args[..] else {
        eprintln!("usage: weblog BROKERS INPUT_TOPIC OUTPUT_TOPIC INSTANCE_ID");
        std::process::exit(2);
    };

    // Keys are ignored, values are UTF-8 text; a value that is not is
    // forwarded, raw, to the dead-letter topic with headers saying why.
    let processor = Processor::<Ignore, String, String, String>::builder()
        .name("weblog")
        .bootstrap_servers(brokers)
        .input_topic(input)
        .output_topic(output)
        .auto_offset_reset("earliest")
        .consume_error_tolerance(ErrorTolerance::DeadLetter(format!("{input}-dead-letters")))
        .function(|input| by_country(&input.value))
        .build()?;

    // The numbers, every ten seconds, while it runs.
    let metrics = processor.metrics();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(10)).await;
            let m = metrics.snapshot();
            eprintln!(
                "consumed {}, produced {}, filtered {}, dead-lettered {}, p99 {:?}",
                m.consumed, m.produced, m.filtered, m.dead_lettered, m.latency.p99
            );
        }
    });

    processor
        .run(instance, async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_become_countries() {
        let out = by_country("81.2.69.160 - - [27/Nov/2026] \"GET / HTTP/1.1\" 200 5").unwrap();
        assert_eq!((out.key.as_str(), out.value.as_str()), ("GB", "- - [27/Nov/2026] \"GET / HTTP/1.1\" 200 5"));
        assert!(by_country("not a line").is_none());
        assert!(by_country("1.2.3 GET").is_none());
        assert!(by_country("1.2.3.400 GET").is_none());
    }
}
