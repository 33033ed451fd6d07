//! Seeds for randomized tests: printed first, replayable from an environment variable.
//!
//! Every randomized run calls [`seed`] before it draws anything; the seed is printed (cargo
//! shows it for a failing test) with the command line that replays it.

/// The environment variable that overrides the seed of every randomized test.
pub const SEED_ENV: &str = "KEN_SEED";

/// The seed for the run `label`: `KEN_SEED` if set (decimal or `0x` hex), otherwise a fresh
/// random one. Prints it either way.
///
/// # Panics
/// If `KEN_SEED` is set but not a number (a mistyped replay must not silently run a random
/// seed).
pub fn seed(label: &str) -> u64 {
    let seed = match std::env::var(SEED_ENV) {
        Ok(text) => parse(&text).unwrap_or_else(|| panic!("{SEED_ENV}={text:?} is not a u64")),
        Err(_) => rand::random(),
    };
    println!("{label}: seed {seed} (replay with {SEED_ENV}={seed})");
    seed
}

fn parse(text: &str) -> Option<u64> {
    let text = text.trim();
    match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => text.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_decimal_and_hex() {
        assert_eq!(super::parse("42"), Some(42));
        assert_eq!(super::parse(" 0x2a "), Some(42));
        assert_eq!(super::parse("forty-two"), None);
    }
}
